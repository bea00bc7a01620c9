"""Pruning: magnitude criteria, masks that keep pruned weights at zero, prune -> retrain schedules."""
from .magnitude import Mask, Scope, keep_masks, magnitude, prune_
from .schedule import PruneConfig, iterative_prune, ramp

__all__ = ["Mask", "PruneConfig", "Scope", "iterative_prune", "keep_masks", "magnitude", "prune_", "ramp"]
