"""Per-layer sensitivity analysis (Han et al. 2015, "Learning both Weights and Connections", Fig. 5).

Compress one layer at a time, leave the rest intact, and score the result: the curve score_l(v)
says how much layer l suffers at compression value v (a sparsity, a bit width, a rank ratio).
The curves pick per-layer settings by hand, or feed `allocate`, which assumes the losses of the
layers add up: loss(v_1..v_L) ~= sum_l baseline - score_l(v_l).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.table import Table
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..errors import ConfigError, ModelError
from ..layers import Target, independent_copy, literal_pattern, targets
from ..lowrank import factorize_
from ..models import input_shape_of
from ..prune import prune_
from ..quantize import quantize_
from ..quantize.pq import refuse_parametrized
from ..quantize.uniform import QuantSpec, fake_quantize, qparams
from ..registry import Registry
from ..structured import ChannelPruneConfig, prune_channels_

Score = Callable[[nn.Module], float]  # higher is better: accuracy, or minus a loss
Apply = Callable[[nn.Module, str, float], None]  # compress layer `name` of a model in place to `value`


@dataclass(frozen=True)
class Sensitivity:
    """Score of the model with one layer compressed: `curves[layer][value]`, against the untouched `baseline`."""

    kind: str  # what the values are: "sparsity", "bits", "uniform-bits", "rank-ratio", "channels"
    baseline: float
    curves: dict[str, dict[float, float]]

    def loss(self, layer: str, value: float) -> float:
        """How much compressing `layer` to `value` costs: baseline - score."""
        curve = self.curves.get(layer)
        if curve is None:
            raise ConfigError(f"no sensitivity curve for layer {layer!r} (there are: {', '.join(self.curves)})")
        if value not in curve:
            raise ConfigError(f"layer {layer!r} was not measured at {self.kind} {value} "
                              f"(measured: {', '.join(f'{v:g}' for v in curve)})")
        return self.baseline - curve[value]

    def to_json(self) -> dict[str, Any]:
        """Plain dicts for json.dumps; the values become string keys ("0.5"), `from_json` reads them back."""
        return {"kind": self.kind, "baseline": self.baseline,
                "curves": {layer: {repr(v): s for v, s in curve.items()} for layer, curve in self.curves.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sensitivity:
        try:
            return cls(str(data["kind"]), float(data["baseline"]),
                       {str(layer): {float(v): float(s) for v, s in curve.items()}
                        for layer, curve in data["curves"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"not a sensitivity record ({e!r}); it needs kind, baseline and curves") from None

    def table(self) -> Table:
        """Layers x values, the score in each cell ("-" where a layer was not measured at that value)."""
        values = list(dict.fromkeys(v for curve in self.curves.values() for v in curve))
        table = Table(title=f"sensitivity to {self.kind} (baseline score {self.baseline:.4f})")
        table.add_column("layer", no_wrap=True)
        for v in values:
            table.add_column(f"{v:g}", justify="right", no_wrap=True)
        for layer, curve in self.curves.items():
            table.add_row(layer, *(f"{curve[v]:.4f}" if v in curve else "-" for v in values))
        return table


def sensitivity(model: nn.Module, score: Score, layers: Sequence[str], values: Sequence[float], apply: Apply, *,
                kind: str) -> Sensitivity:
    """Score `model` with each layer alone compressed to each value: len(layers) * len(values) + 1 scores.

    Every score, the baseline included, runs on an `independent_copy`, so `model` is left exactly as
    it was (weights, parametrizations and training mode) whatever `apply` and `score` do.
    """
    if not layers or not values:
        raise ConfigError("a sensitivity analysis needs at least one layer and one value")
    for what, items in (("layer", layers), ("value", values)):
        repeated = [x for i, x in enumerate(items) if x in items[:i]]
        if repeated:
            raise ConfigError(f"{what} {repeated[0]!r} is listed twice")
    known = dict(model.named_modules())
    missing = [name for name in layers if name not in known]
    if missing:
        raise ModelError(f"the model has no layer {missing[0]!r}")
    baseline = float(score(independent_copy(model)))
    curves: dict[str, dict[float, float]] = {name: {} for name in layers}
    runs = [(name, v) for name in layers for v in values]
    for name, v in tqdm(runs, desc=f"sensitivity to {kind}", leave=False, disable=None):
        work = independent_copy(model)
        apply(work, name, v)
        curves[name][float(v)] = float(score(work))
    return Sensitivity(kind, baseline, curves)


APPLIERS: Registry[Apply] = Registry("sensitivity kind")  # kind -> the applier that compresses one layer


@APPLIERS.register("sparsity")
def prune_layer(model: nn.Module, layer: str, sparsity: float) -> None:
    """Magnitude-prune only `layer` to `sparsity` (`prune_` on that module: the name is exact, no pattern)."""
    prune_(_single_layer(model, layer), sparsity)


@APPLIERS.register("bits")
def quantize_layer(model: nn.Module, layer: str, bits: float) -> None:
    """k-means weight sharing of only `layer` with 2**bits codes (`quantize_`, linear init, no fine-tuning)."""
    quantize_(_single_layer(model, layer), _whole_bits(layer, bits))


@APPLIERS.register("uniform-bits")
def uniform_quantize_layer(model: nn.Module, layer: str, bits: float) -> None:
    """Round only `layer`'s weights onto a per-output-channel symmetric uniform grid of `bits` (2..8), in place.

    The ranges are each channel's min/max (no data needed, nothing clipped), so a row holds at most
    2**bits - 1 distinct values. The weights stay plain Parameters, now on the grid: what an integer
    kernel would compute. A pruned weight keeps its Mask: zero is a code, so its zeros stay zeros.
    """
    module = _single_layer(model, layer)
    spec = QuantSpec(_whole_bits(layer, bits), symmetric=True, per_channel=True)
    with torch.no_grad():
        for t in targets(module):
            refuse_parametrized(Target(layer, t.module, t.param, t.kind), "uniform quantization", pruned_ok=True)
            stored = (module.parametrizations[t.param].original if parametrize.is_parametrized(module, t.param)
                      else getattr(module, t.param))
            stored.copy_(fake_quantize(t.weight, *qparams(t.weight, spec), spec))


@APPLIERS.register("rank-ratio")
def factorize_layer(model: nn.Module, layer: str, ratio: float) -> None:
    """Low-rank factorization of only `layer`, keeping `ratio` of its weights (ratio 1: left as it is)."""
    _single_layer(model, layer)
    if ratio < 1:
        factorize_(model, layers={literal_pattern(layer): ratio})


@APPLIERS.register("channels")
def slim_layer(model: nn.Module, layer: str, amount: float) -> None:
    """Remove `amount` of the output channels of `layer` (and of what shares them), smallest L1 filters first.

    The channel groups are traced on the input shape the model was built for (`modelzip.build`).
    """
    _single_layer(model, layer)
    shape = input_shape_of(model)
    if shape is None:
        raise ConfigError("channel sensitivity needs the model's input shape: build it with modelzip.build")
    if amount > 0:
        prune_channels_(model, shape, ChannelPruneConfig("l1", amount=0.0, scope="layer",
                                                                layers={literal_pattern(layer): amount}))


def _whole_bits(layer: str, bits: float) -> int:
    if not math.isfinite(bits) or bits != int(bits):
        raise ConfigError(f"bits for layer {layer!r} must be a whole number, got {bits}")
    return int(bits)


def _single_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module named `layer` (exactly), which must be one compressible layer without compressible parts."""
    names = {t.name for t in targets(model)}
    if layer not in names:
        module = dict(model.named_modules()).get(layer)
        if module is None:
            raise ModelError(f"the model has no layer {layer!r}")
        raise ModelError(f"layer {layer!r} ({type(module).__name__}) is not compressible "
                         f"(compressible layers: {', '.join(sorted(names))})")
    module = model.get_submodule(layer)
    inner = sorted(t.name for t in targets(module) if t.name)
    if inner:
        raise ModelError(f"layer {layer!r} holds compressible layers of its own ({', '.join(inner)}); "
                         "analyse those one by one")
    return module
