"""Per-layer sparsities for a pruning schedule, chosen by sensitivity instead of one ratio for all.

The schedule's own sparsities (per kind, per layer, or one global value) fix the total number of
weights kept; each layer is then pruned alone at a grid of sparsities and scored on held-out
training examples, and `allocate` spreads the same total over the layers where it costs least.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torch.utils.data import TensorDataset

from ..data import sample
from ..layers import per_target, targets
from ..train import evaluate
from .allocate import allocate, kept_weights
from .analysis import prune_layer, sensitivity

GRID = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)  # dense where layers are sensitive


def allocated_sparsity(model: nn.Module, data: TensorDataset, sparsity: Mapping[str, float] | float,
                       layers: Mapping[str, float] | None = None, *, examples: int = 5000,
                       seed: int = 0) -> dict[str, float]:
    """Sparsity per layer keeping as many weights in total as `sparsity` (+ `layers` overrides) would.

    Layers are scored by accuracy on `examples` random training examples (one-shot magnitude pruning,
    no retraining); the grid holds the requested sparsities too, so the uniform choice is always a
    candidate and the allocation is never predicted worse than it.
    """
    found = [t for t in targets(model) if t.param == "weight"]
    wanted = per_target(model, found, sparsity, layers)
    cost = kept_weights(model)
    budget = sum(cost(t.name, wanted[t]) for t in found)
    held_out = sample(data, examples, seed=seed)
    values = sorted({*GRID, *wanted.values()})
    sens = sensitivity(model, lambda m: evaluate(m, held_out), [t.name for t in found], values, prune_layer,
                       kind="sparsity")
    return allocate(sens, cost, budget).values
