"""Pruning: magnitude and OBD criteria, masks that keep pruned weights at zero, prune -> retrain schedules."""
from .hessian import exact_diagonal, fisher_diagonal, hutchinson_diagonal
from .magnitude import Mask, Scope, keep_masks, magnitude, prune_
from .obd import HessianMethod, hessian_diagonal, obd_saliency, obd_score
from .schedule import Criterion, PruneConfig, iterative_prune, ramp

__all__ = ["Criterion", "HessianMethod", "Mask", "PruneConfig", "Scope", "exact_diagonal", "fisher_diagonal",
           "hessian_diagonal", "hutchinson_diagonal", "iterative_prune", "keep_masks", "magnitude", "obd_saliency",
           "obd_score", "prune_", "ramp"]
