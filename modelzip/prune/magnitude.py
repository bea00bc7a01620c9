"""Magnitude pruning (Han et al. 2015): zero the weights of smallest |w|, keep them zero through training.

A pruned weight is `where(mask, w, 0)` through a parametrization, so its value is exactly +0.0 in
every forward pass however the optimizer moves the underlying parameter; `strip` makes it permanent.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..distributed import broadcast_tensors_
from ..errors import ConfigError
from ..layers import Target, parametrization, per_target, targets

Score = Callable[[Target], torch.Tensor]


class Scope(str, Enum):
    LAYER = "layer"  # each layer loses its own fraction: the paper's per-layer sensitivity choice
    GLOBAL = "global"  # one threshold over all layers: small layers lose less automatically


class Mask(nn.Module):
    """Parametrization multiplying a weight by a fixed 0/1 mask (stored as a bool buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # where, not multiply: a negative weight times 0 would be -0.0, a 33rd value for the codec
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def magnitude(target: Target) -> torch.Tensor:
    """The pruning score of Deep Compression: |w|."""
    return target.weight.detach().abs()


def keep_masks(scores: list[torch.Tensor], sparsity: list[float], scope: Scope) -> list[torch.Tensor]:
    """Masks keeping the highest scores: per tensor (`layer`) or by one threshold over all (`global`).

    Exactly round((1 - s) * n) entries survive per tensor in layer scope (ties broken by position),
    and round((1 - s) * total) in global scope, where s is the single requested sparsity.
    """
    for s in sparsity:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {s}")
    if scope is Scope.GLOBAL:
        if len(set(sparsity)) != 1:
            raise ConfigError("global pruning takes one sparsity for all layers, not per-layer values")
        flat = torch.cat([s.flatten() for s in scores])
        keep = _top(flat, round((1 - sparsity[0]) * flat.numel()))
        return [m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores)]
    return [_top(s.flatten(), round((1 - f) * s.numel())).view_as(s) for s, f in zip(scores, sparsity)]


def prune_(model: nn.Module, sparsity: float | Mapping[str, float] = 0.9, *,
           layers: Mapping[str, float] | None = None, scope: Scope | str = Scope.LAYER,
           score: Score = magnitude) -> dict[str, float]:
    """Prune `model` in place to `sparsity` (one value, or per kind: {"linear": .9, "conv": .6}).

    `layers` overrides by module-name pattern. Pruning again tightens the existing masks (a pruned
    weight never comes back). Returns the kept fraction of each pruned weight, by module name.
    """
    scope = Scope(scope)
    found = targets(model)
    wanted = per_target(model, found, sparsity, layers)
    masks = keep_masks([score(t) for t in found], [wanted[t] for t in found], scope)
    broadcast_tensors_(masks)  # under torchrun every rank keeps rank 0's weights, ties and all
    kept = {}
    for t, keep in zip(found, masks):
        existing = parametrization(t, Mask)
        if existing is not None:
            existing.mask &= keep
            keep = existing.mask
        else:
            parametrize.register_parametrization(t.module, t.param, Mask(keep))
        kept[f"{t.name}.{t.param}"] = keep.float().mean().item()
    return kept


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        keep[torch.topk(scores, count, sorted=False).indices] = True
    return keep
