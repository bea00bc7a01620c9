"""factorize_: replace Linear and Conv2d layers by low-rank factorized sequences, in place.

A Linear (out, in) of rank r becomes Sequential(first=Linear(in, r), second=Linear(r, out)) from the
truncated SVD (svd.py); a Conv2d becomes Sequential(first=1x1, core=kxk, last=1x1) from the Tucker-2
decomposition of Kim et al. 2016 (tucker.py). Ranks come from a kept fraction of the parameters or of
the singular-value energy (ranks.py). Each swap is recorded as a structural edit ("factorize"), so a
.mzip of the result rebuilds the same structure. Fine-tuning afterwards is an ordinary `fit`.
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..layers import Target, check_replaceable, per_target, plain_type, replacing, targets
from ..models.edits import Edit, edit_op, record_edit, replace_module, swap_layer
from ..models.schema import MAX_DIM, integer, sequence
from ..train import LossFn, TrainConfig, checkpoint_in, cross_entropy, fit
from .ranks import check_fraction, check_ranks, energy_ranks, factorized_count, rank_for_ratio
from .svd import svd_factors
from .tucker import tucker2_factors

Ranks = tuple[int, ...]
# Fully connected layers hold most of the redundancy (Denton et al. 2014 keep ~1/4 of them at no loss);
# convolutions, each weight used at every position, keep more (Kim et al. 2016: 2-4x on convs).
DEFAULT_RATIO: Mapping[str, float] = MappingProxyType({"linear": 0.25, "conv": 0.5})


def factorize_(model: nn.Module, ratio: float | Mapping[str, float | None] | None = None, *,
               energy: float | None = None, layers: Mapping[str, float] | None = None,
               exclude: Sequence[str] = (), min_weights: int = 0) -> dict[str, Ranks]:
    """Factorize the nn.Linear and nn.Conv2d (groups=1) layers of `model` in place; returns ranks by name.

    `ratio`: fraction of each layer's weights kept (one value, or per kind {"linear": .25, "conv": .5}; a
    kind mapped to None stays dense). `energy` instead: fraction of sum(s^2) kept. `layers`: module-name
    fnmatch patterns -> the same kind of value, overriding the default (with neither ratio nor energy,
    only these layers change). `exclude`: patterns left dense, even if `layers` names them, as are layers
    of fewer than `min_weights` weights that `layers` does not name. Layers whose
    factorized form would not be smaller are left dense and missing from the result. Other compressible
    layers (grouped convs, ConvTranspose, ...) stay dense unless `layers` names them: a ModelError.
    """
    plan = _plan(model, ratio, energy, layers, exclude, min_weights)
    for name, layer, ranks in plan:
        new = _structure(layer, ranks)
        _fill(new, layer, ranks)
        replace_module(model, name, new)
        record_edit(model, {"op": "factorize", "module": name, "ranks": list(ranks)})
    return {name: ranks for name, _, ranks in plan}


def _structure(layer: nn.Module, ranks: Sequence[int]) -> nn.Sequential:
    """The uninitialised factorized replacement of `layer` at `ranks`, on the layer's device and dtype."""
    weight = layer.weight
    like: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        (rank,) = check_ranks(weight.shape, ranks)
        return nn.Sequential(OrderedDict(first=nn.Linear(layer.in_features, rank, bias=False, **like),
                                         second=nn.Linear(rank, layer.out_features, bias=bias, **like)))
    r_out, r_in = check_ranks(weight.shape, ranks)
    # the 1x1 `first` is pointwise and bias-free, so padding its output equals padding the input (any mode)
    return nn.Sequential(OrderedDict(
        first=nn.Conv2d(layer.in_channels, r_in, 1, bias=False, **like),
        core=nn.Conv2d(r_in, r_out, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                       bias=False, padding_mode=layer.padding_mode, **like),
        last=nn.Conv2d(r_out, layer.out_channels, 1, bias=bias, **like)))


@edit_op("factorize", required={"ranks": sequence(integer(1, MAX_DIM), 1, 2)})
def _replay(model: nn.Module, edit: Edit) -> None:
    """Swap the layer for its empty factorized structure; the state_dict fills it in afterwards."""
    swap_layer(model, edit, _factorizable, lambda layer: _structure(layer, edit.get("ranks", [])))


def _plan(model: nn.Module, ratio: float | Mapping[str, float | None] | None, energy: float | None,
          layers: Mapping[str, float] | None, exclude: Sequence[str], min_weights: int
          ) -> list[tuple[str, nn.Module, Ranks]]:
    """(name, layer, ranks) of every layer to factorize; checks everything before the model changes."""
    _check_settings(ratio, energy, layers)
    if ratio is None and energy is None and not layers:
        raise ConfigError("nothing to factorize: give a ratio, an energy or per-layer values in `layers`")
    found = targets(model)
    values = per_target(model, found, energy if energy is not None else ratio, layers)
    named = {t.name for t in found if any(fnmatch.fnmatchcase(t.name, p) for p in layers or {})}
    skipped = _excluded(found, _patterns(exclude))
    for t in found:
        if t.name in skipped or (t.weight.numel() < min_weights and t.name not in named):
            values[t] = None
    plan = []
    for t, value in replacing(found, values, named, _factorizable,
                              "cannot be factorized: only nn.Linear and nn.Conv2d with groups=1 can"):
        check_replaceable(t.name, t.module, "factorizing")
        weight = t.module.weight
        ranks = energy_ranks(weight, value) if energy is not None else rank_for_ratio(weight.shape, value)
        if factorized_count(weight.shape, ranks) < prod(weight.shape):
            plan.append((t.name, t.module, ranks))
    return plan


def _check_settings(ratio: float | Mapping[str, float | None] | None, energy: float | None,
                    layers: Mapping[str, float] | None) -> None:
    if ratio is not None and energy is not None:
        raise ConfigError("give a parameter ratio or a singular-value energy, not both")
    what = "energy" if energy is not None else "ratio"
    defaults = ratio.items() if isinstance(ratio, Mapping) else [(None, ratio)]
    for kind, value in defaults:
        if value is not None:
            check_fraction(value, what if kind is None else f"{what} of {kind} layers")
    for pattern, value in (layers or {}).items():
        check_fraction(value, what, pattern)
    if energy is not None:
        check_fraction(energy, what)


def _factorizable(module: nn.Module) -> bool:
    # exact types: subclasses (MultiheadAttention's out_proj, say) may read .weight directly elsewhere;
    # parametrize swaps a module's class for a subclass of the original, so look through that one
    cls = plain_type(module)
    return cls is nn.Linear or (cls is nn.Conv2d and module.groups == 1)


def _patterns(exclude: Sequence[str]) -> tuple[str, ...]:
    return (exclude,) if isinstance(exclude, str) else tuple(exclude)  # one name is one pattern, not letters


def _excluded(found: list[Target], patterns: tuple[str, ...]) -> set[str]:
    """Names of the layers `patterns` leave dense; a pattern that matches none is a mistake worth an error."""
    names = {t.name for t in found}
    skipped = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise ConfigError(f"exclude pattern {pattern!r} matches no compressible layer "
                              f"(they are: {', '.join(t.name for t in found)})")
        skipped |= hits
    return skipped


@torch.no_grad()
def _fill(new: nn.Sequential, layer: nn.Module, ranks: Ranks) -> None:
    """Copy the decomposition of `layer`'s weight (and its bias, into the last factor) into `new`."""
    if isinstance(layer, nn.Linear):
        factors = svd_factors(layer.weight, *ranks)
    else:
        factors = tucker2_factors(layer.weight, ranks)
    for part, factor in zip(new, factors):
        part.weight.copy_(factor)
    if layer.bias is not None:
        new[-1].bias.copy_(layer.bias)
    new.train(layer.training)


@dataclass(frozen=True)
class LowRankConfig:
    """Which layers to factorize how far, and the fine-tuning that recovers the accuracy lost."""

    # Kept fraction of weights (see factorize_); None with no energy and no layers means DEFAULT_RATIO.
    ratio: Mapping[str, float | None] | float | None = None
    energy: float | None = None  # kept fraction of singular-value energy, instead of ratio
    layers: Mapping[str, float] | None = None  # module-name pattern -> ratio (or energy), e.g. {"fc3": 0.5}
    exclude: Sequence[str] = ()  # module-name patterns left dense, e.g. the small last layer ("fc3",)
    # Smaller layers stay dense: the classifier and the first convolution hold few weights, and a rank
    # low enough to save any of them costs accuracy (a 10-class output needs rank >= 9).
    min_weights: int = 10_000
    # A factorized network starts close to the original: a short, gentle fine-tune is enough.
    finetune: TrainConfig = TrainConfig(epochs=2, lr=5e-4)

    def __post_init__(self) -> None:
        if self.ratio is None and self.energy is None and not self.layers:
            object.__setattr__(self, "ratio", dict(DEFAULT_RATIO))
        object.__setattr__(self, "exclude", _patterns(self.exclude))
        _check_settings(self.ratio, self.energy, self.layers)


def low_rank(model: nn.Module, train: TensorDataset, config: LowRankConfig = LowRankConfig(),
             test: TensorDataset | None = None, *, loss_fn: LossFn = cross_entropy,
             checkpoints: str | Path | None = None) -> dict[str, Any]:
    """Factorize `model` in place as configured, then fine-tune it: {"ranks": {name: ranks}, "logs": [...]}.

    With `checkpoints` (a folder) the fine-tuning is checkpointed in it (see `fit`).
    """
    ranks = factorize_(model, config.ratio, energy=config.energy, layers=config.layers, exclude=config.exclude,
                       min_weights=config.min_weights)
    logs = fit(model, train, config.finetune, test=test, loss_fn=loss_fn,
               checkpoint=checkpoint_in(checkpoints, "fine-tune"), desc="low-rank fine-tune")
    return {"ranks": ranks, "logs": logs}
