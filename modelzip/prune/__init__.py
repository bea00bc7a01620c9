"""Pruning: magnitude and OBD criteria, masks that keep pruned weights at zero, prune -> retrain schedules,
and sparse execution of the pruned layers."""
from .hessian import exact_diagonal, fisher_diagonal, hutchinson_diagonal
from .magnitude import Mask, Scope, keep_masks, magnitude, prune_
from .obd import HessianMethod, hessian_diagonal, obd_saliency, obd_score
from .schedule import Criterion, PruneConfig, iterative_prune, ramp
from .sparse_exec import SparseConv1x1, SparseLinear, sparsify_

__all__ = ["Criterion", "HessianMethod", "Mask", "PruneConfig", "Scope", "SparseConv1x1", "SparseLinear",
           "exact_diagonal", "fisher_diagonal", "hessian_diagonal", "hutchinson_diagonal", "iterative_prune",
           "keep_masks", "magnitude", "obd_saliency", "obd_score", "prune_", "ramp", "sparsify_"]
