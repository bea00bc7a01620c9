"""Which channels go: importance per channel (batch-norm scale or filter norm) and the selection rule.

Network slimming (Liu et al. 2017) ranks channels by |gamma| of their batch norm, trained toward
zero by an L1 penalty, under one global threshold. Filter pruning (Li et al. 2017) ranks the output
filters of a layer by their L1 (or L2) norm, layer by layer, for networks without batch norm.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from enum import Enum

import torch
from torch import nn

from ..errors import ConfigError
from ..prune import Scope
from .graph import ChannelGraph, Group


class Criterion(str, Enum):
    BN = "bn"  # |gamma| of the group's batch norms (mean over them across a residual sum)
    L1 = "l1"  # sum of |w| of each output filter of the group's producing layers
    L2 = "l2"  # Euclidean norm of each output filter


def channel_scores(model: nn.Module, graph: ChannelGraph, criterion: Criterion | str, *,
                   normalize: bool = False) -> dict[int, torch.Tensor]:
    """Importance of every channel of every prunable group that the criterion can rank.

    With `normalize`, each group's scores are divided by its largest. A batch norm followed by ReLU and
    another batch-normalized layer can scale all its channels by any c > 0 without changing the
    network, so the L1 penalty shrinks such a layer as a whole and raw scales are not comparable
    across layers under one global threshold; relative scales are.
    """
    criterion = Criterion(criterion)
    modules = dict(model.named_modules())
    scores = {}
    for group in graph.prunable():
        if criterion is Criterion.BN:
            gammas = [modules[n].weight.detach().abs() for n in group.norms if modules[n].weight is not None]
            if gammas:
                scores[group.id] = torch.stack(gammas).mean(0)
        else:
            p = 1 if criterion is Criterion.L1 else 2
            norms = [modules[n].weight.detach().flatten(1).norm(p=p, dim=1) for n in group.producers
                     if isinstance(getattr(modules[n], "weight", None), torch.Tensor)]
            if norms:
                scores[group.id] = torch.stack(norms).sum(0)
    if normalize:
        scores = {gid: s / s.max().clamp_min(torch.finfo(s.dtype).tiny) for gid, s in scores.items()}
    if not scores:
        raise ConfigError(f"no channel group can be ranked by {criterion.value!r}"
                          + (" (slimming needs batch norms after the layers)" if criterion is Criterion.BN else ""))
    return scores


def select_channels(graph: ChannelGraph, scores: Mapping[int, torch.Tensor], amount: float | None = None, *,
                    threshold: float | None = None, scope: Scope | str = Scope.GLOBAL,
                    layers: Mapping[str, float] | None = None, min_channels: int = 1) -> dict[int, torch.Tensor]:
    """The channels each group keeps: those above one global threshold, or the best (1 - amount) per group.

    `amount` is the fraction of the ranked channels removed (all of them in global scope, each group's
    own in layer scope); `threshold` keeps scores >= it instead. `layers` overrides the amount of the
    groups whose producer names match a pattern (layer scope then applies to them). Every group keeps
    at least `min_channels` (its best ones), so no layer is cut through.
    """
    if (amount is None) == (threshold is None):
        raise ConfigError("give exactly one of amount (a fraction of channels) or threshold (a score)")
    if amount is not None and not 0.0 <= amount < 1.0:
        raise ConfigError(f"amount must be in [0, 1), got {amount}")
    scope = Scope(scope)
    own = _overrides(graph, scores, layers or {})
    shared = {gid: s for gid, s in scores.items() if gid not in own}
    if threshold is None and scope is Scope.GLOBAL and shared:
        flat = torch.cat(list(shared.values()))
        removed = round(amount * flat.numel())
        threshold = flat.sort().values[removed].item() if removed < flat.numel() else float("inf")
    keep = {}
    for gid, s in scores.items():
        if gid in own or threshold is None:
            count = s.numel() - round(own.get(gid, amount) * s.numel())
        else:
            count = int((s >= threshold).sum())
        count = min(s.numel(), max(count, min_channels))
        if count < s.numel():
            keep[gid] = torch.topk(s, count).indices.sort().values
    return keep


def _overrides(graph: ChannelGraph, scores: Mapping[int, torch.Tensor], layers: Mapping[str, float]
               ) -> dict[int, float]:
    own: dict[int, float] = {}
    for pattern, amount in layers.items():
        hits = [g for g in graph.groups.values() if g.id in scores and _matches(g, pattern)]
        if not hits:
            raise ConfigError(f"layer pattern {pattern!r} matches no prunable channel group "
                              f"(they are: {', '.join(graph.groups[g].name for g in scores)})")
        if not 0.0 <= amount < 1.0:
            raise ConfigError(f"amount for {pattern!r} must be in [0, 1), got {amount}")
        own.update({g.id: amount for g in hits})
    return own


def _matches(group: Group, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in group.producers)
