"""Per-layer sensitivity analysis (compress one layer, score the model) and the budget allocation it drives."""
from .allocate import Allocation, Cost, allocate, kept_weights
from .analysis import APPLIERS, Apply, Score, Sensitivity, prune_layer, quantize_layer, sensitivity
from .plot import plot_sensitivity

__all__ = ["APPLIERS", "Allocation", "Apply", "Cost", "Score", "Sensitivity", "allocate",
           "kept_weights", "plot_sensitivity", "prune_layer", "quantize_layer", "sensitivity"]
