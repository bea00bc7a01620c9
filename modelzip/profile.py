"""The cost of a model per layer: parameters, MACs/FLOPs, dense bytes and measured latency, before vs after.

Magnitude pruning leaves dense shapes (and the dense cost); structured compression (channel pruning,
low-rank factorization) changes shapes, and this is where its savings show.

Conventions, those of fvcore/ptflops-like counters:
- one MAC is one multiply-accumulate of a convolution, linear or bilinear layer, and FLOPs = 2 * MACs;
  bias adds, normalization, activations and pooling are elementwise: 0 MACs, not reported separately.
  MACs are per example (counted on a batch of one). A leaf with weights that is neither counted nor
  elementwise (an LSTM, a custom layer) raises ModelError rather than pass as free; see MACS_HINT. Work a
  module with children does itself (MultiheadAttention's projections) is not counted.
- parameters are counted as `strip` would leave them (a mask's or codebook's state not counted),
  bytes as dense fp32, 4 per parameter.
- latency is wall-clock seconds on the model's device with the caller's thread count, the median over
  repeats, in eval mode under inference_mode. Per-layer figures come from forward pre/post hooks, which
  add overhead of their own, so whole-model latency is measured separately, without hooks.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from math import prod
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from .data.feed import Batch, call
from .errors import ConfigError, ModelError
from .layers import eval_mode, parameter_count
from .models.activations import LMA

MacCounter = Callable[[nn.Module, tuple[Any, ...], torch.Tensor], int]


def _conv_macs(m: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """Each output element sums in_channels/groups * prod(kernel) products, whatever the stride or padding."""
    return output.numel() * (m.in_channels // m.groups) * prod(m.kernel_size)


def _transposed_macs(m: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """Each input element is scattered through out_channels/groups * prod(kernel) weights."""
    return inputs[0].numel() * (m.out_channels // m.groups) * prod(m.kernel_size)


def _linear_macs(m: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    return output.numel() * m.in_features


def _bilinear_macs(m: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """x1^T A_k x2 costs in1 * in2 MACs per output (as ptflops counts it; the final in1 dot ignored)."""
    return output.numel() * m.in1_features * m.in2_features


MAC_COUNTERS: dict[type[nn.Module], MacCounter] = {
    nn.Conv1d: _conv_macs, nn.Conv2d: _conv_macs, nn.Conv3d: _conv_macs,
    nn.ConvTranspose1d: _transposed_macs, nn.ConvTranspose2d: _transposed_macs, nn.ConvTranspose3d: _transposed_macs,
    nn.Linear: _linear_macs, nn.Bilinear: _bilinear_macs,
}
# layers with parameters whose work is elementwise (or a lookup): 0 MACs by the convention above
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.PReLU, nn.Embedding, nn.EmbeddingBag, LMA,
)
MACS_HINT = ("register the layer type in modelzip.profile.MAC_COUNTERS, or give the class a "
             "`modelzip_macs(inputs, output) -> int` method")


@dataclass(frozen=True)
class LayerProfile:
    """One leaf module's cost: own parameters, MACs per example, output shape per example, latency per batch size."""

    name: str
    type: str
    params: int
    macs: int
    output_shape: tuple[int, ...] | None  # None when the output is not one tensor
    latency_s: Mapping[int, float]  # batch size -> median seconds; empty without latency

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def bytes(self) -> int:
        return 4 * self.params

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "params": self.params, "macs": self.macs, "flops": self.flops,
                "bytes": self.bytes, "output_shape": None if self.output_shape is None else list(self.output_shape),
                "latency_s": {str(b): s for b, s in self.latency_s.items()}}


@dataclass(frozen=True)
class Profile:
    """Rows for the leaf modules that ran, in named_modules order, and whole-model totals.

    `params` counts every parameter of the model, also those of modules that did not run or are not
    leaves; MACs sum the rows. `latency_s` is the whole forward without hooks, per batch size.
    """

    input_shape: tuple[int, ...]
    rows: tuple[LayerProfile, ...]
    params: int
    latency_s: Mapping[int, float]

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def totals(self) -> dict[str, Any]:
        return {"params": self.params, "macs": self.macs, "flops": 2 * self.macs, "bytes": 4 * self.params,
                "latency_s": {str(b): s for b, s in self.latency_s.items()}}

    def to_json(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "layers": [r.to_json() for r in self.rows],
                "totals": self.totals}


def profile(model: nn.Module, input_shape: tuple[int, ...], *, batch_sizes: Sequence[int] = (1, 64),
            repeats: int = 30, warmup: int = 5, latency: bool = True) -> Profile:
    """The cost profile of `model` on random normal inputs of shape (batch, *input_shape), seed 0.

    One forward pass on a batch of one finds the leaves that run, their MACs and output shapes; with
    `latency`, each batch size then gets `warmup` + `repeats` hooked passes (per-layer medians) and as
    many plain ones (the total). A module called twice in a forward pass adds up both calls.
    """
    _check(repeats, warmup)
    if any(b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive, got {tuple(batch_sizes)}")
    # leaves: modules without children, a parametrized weight's container (and what it holds) aside
    leaves = {name: m for name, m in model.named_modules() if "parametrizations" not in name.split(".")
              and all(c == "parametrizations" for c, _ in m.named_children())}
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}

    def count(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        macs[name] = macs.get(name, 0) + _macs(name, module, inputs, output)
        shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None

    with _inference(model):
        with _hooked(leaves, post=count):
            model(_example(model, input_shape, 1))
        ran = {name: m for name, m in leaves.items() if name in macs}
        sizes = tuple(batch_sizes) if latency else ()
        examples = {b: _example(model, input_shape, b) for b in sizes}
        per_layer = {b: _layer_latency(model, ran, examples[b], repeats, warmup) for b in sizes}
        totals = {b: _median_latency(model, examples[b], repeats, warmup) for b in sizes}
    rows = tuple(LayerProfile(name, type(m).__name__, parameter_count(m), macs[name], shapes[name],
                              {b: per_layer[b][name] for b in sizes}) for name, m in ran.items())
    return Profile(tuple(input_shape), rows, parameter_count(model), totals)


def latency(model: nn.Module, example: torch.Tensor, *, repeats: int = 30, warmup: int = 5) -> float:
    """Median seconds of one forward pass of `example`, after `warmup` untimed ones (eval, inference_mode)."""
    _check(repeats, warmup)
    with _inference(model):
        return _median_latency(model, example, repeats, warmup)


def compare_latency(models: Mapping[str, nn.Module], example: Batch, rounds: int = 30, *,
                    warmup: int = 5) -> dict[str, float]:
    """Median seconds per forward pass of each model on `example` (a tensor, or a dict of keyword inputs),
    timed side by side.

    Each round times every model once, starting one model later than the previous round, so a noisy
    spell of a shared machine (or the cache left by the model before) hits all of them alike and their
    ratios hold even when the absolute numbers drift.
    """
    _check(rounds, warmup)
    names = list(models)
    if not names:
        raise ConfigError("compare_latency needs at least one model")
    times: dict[str, list[float]] = {n: [] for n in names}
    with ExitStack() as stack:
        for m in models.values():
            stack.enter_context(_inference(m))
        for m in models.values():
            for _ in range(warmup):
                call(m, example)
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                times[n].append(_timed(models[n], example))
    return {n: statistics.median(t) for n, t in times.items()}


def compare(before: Profile, after: Profile) -> dict[str, Any]:
    """Per-layer and total costs of two profiles, with ratios before/after (JSON-able).

    Layers are grouped by the shortest dotted prefix of their name that is a layer of either profile,
    so a layer "fc1" factorized into "fc1.first" and "fc1.second" compares with their sum. A layer that
    vanished (or appeared) has an empty side: no layers, zero cost.
    """
    sides = {"before": [r.to_json() for r in before.rows], "after": [r.to_json() for r in after.rows]}
    known = {row["name"] for rows in sides.values() for row in rows}
    groups = list(dict.fromkeys(_group(row["name"], known) for rows in sides.values() for row in rows))
    summed = {side: {g: _sum([r for r in rows if _group(r["name"], known) == g]) for g in groups}
              for side, rows in sides.items()}
    b, a = before.totals, after.totals
    return {
        "layers": [{"name": g, "before": summed["before"][g], "after": summed["after"][g]} for g in groups],
        "before": b, "after": a,
        **{f"{k}_ratio": _ratio(b[k], a[k]) for k in ("params", "flops", "bytes")},
        "latency_ratio": {n: _ratio(s, a["latency_s"][n]) for n, s in b["latency_s"].items() if n in a["latency_s"]},
    }


def print_comparison(comparison: dict[str, Any], console: Console | None = None) -> None:
    """The comparison as a rich table: params, MFLOPs and latency per batch size, before -> after."""
    console = console or Console()
    if not console.is_terminal:  # pipes and logs get the full table, not one squeezed to 80 columns
        console.width = max(console.width, 110)
    sizes = list(comparison["latency_ratio"])
    table = Table(title="cost per layer, before -> after (MFLOPs per example, latency in ms)")
    for column in ["layer", "params", "MFLOPs"] + [f"latency b{n}" for n in sizes]:
        table.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    for row in comparison["layers"]:
        table.add_row(row["name"], *_cells(row["before"], row["after"], sizes))
    table.add_row("whole model", *_cells(comparison["before"], comparison["after"], sizes), style="bold")
    ratios = [comparison["params_ratio"], comparison["flops_ratio"]] + [comparison["latency_ratio"][n] for n in sizes]
    table.add_row("before/after", *("-" if r is None else f"{r:.2f}x" for r in ratios), style="bold")
    console.print(table)


def _cells(before: dict[str, Any], after: dict[str, Any], sizes: list[str]) -> list[str]:
    """Cells "before -> after"; a side without layers (a vanished or a new layer) shows "-"."""
    def pair(fmt: Callable[[dict[str, Any]], str]) -> str:
        return " -> ".join(fmt(s) if s.get("layers", True) else "-" for s in (before, after))

    return ([pair(lambda s: f"{s['params']:,}"), pair(lambda s: f"{s['flops'] / 1e6:.3f}")]
            + [pair(lambda s, n=n: f"{s['latency_s'][n] * 1e3:.3f}") for n in sizes])


def _macs(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    custom = getattr(module, "modelzip_macs", None)
    if custom is not None:
        return int(custom(inputs, output))
    counter = next((MAC_COUNTERS[c] for c in type(module).__mro__ if c in MAC_COUNTERS), None)
    if counter is not None:
        return counter(module, inputs, output)
    if isinstance(module, ELEMENTWISE) or parameter_count(module) == 0:
        return 0
    # silently counting a layer with weights as free would flatter the model
    raise ModelError(f"cannot count the MACs of layer {name!r} ({type(module).__name__}); {MACS_HINT}")


def _group(name: str, known: set[str]) -> str:
    parts = name.split(".")
    return next(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in known)


def _sum(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = rows[0]["latency_s"] if rows else {}
    return {"layers": [r["name"] for r in rows],
            **{k: sum(r[k] for r in rows) for k in ("params", "macs", "flops", "bytes")},
            "latency_s": {n: sum(r["latency_s"][n] for r in rows) for n in sizes}}


def _ratio(before: float, after: float) -> float | None:
    return before / after if after else None


def _check(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"timing needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def _example(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> torch.Tensor:
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    first = next(model.parameters(), None)
    return x if first is None else x.to(first.device, first.dtype)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode under inference_mode, restoring each module's own training flag afterwards."""
    with eval_mode(model), torch.inference_mode():
        yield


@contextmanager
def _hooked(modules: Mapping[str, nn.Module], pre: Callable[..., None] | None = None,
            post: Callable[..., None] | None = None) -> Iterator[None]:
    """Forward pre/post hooks called with the module's name first; removed however the block ends."""
    handles = []
    try:
        for name, m in modules.items():
            if pre is not None:
                handles.append(m.register_forward_pre_hook(partial(pre, name)))
            if post is not None:
                handles.append(m.register_forward_hook(partial(post, name)))
        yield
    finally:
        for h in handles:
            h.remove()


def _timed(model: nn.Module, example: Batch) -> float:
    start = time.perf_counter()
    call(model, example)
    return time.perf_counter() - start


def _median_latency(model: nn.Module, example: torch.Tensor, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        model(example)
    return statistics.median(_timed(model, example) for _ in range(repeats))


def _layer_latency(model: nn.Module, layers: Mapping[str, nn.Module], example: torch.Tensor, repeats: int,
                   warmup: int) -> dict[str, float]:
    """Median seconds each layer spends per forward pass (all its calls in the pass added up)."""
    started: dict[str, float] = {}
    spent: dict[str, float] = {}
    samples: dict[str, list[float]] = {name: [] for name in layers}

    def pre(name: str, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        started[name] = time.perf_counter()

    def post(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]

    with _hooked(layers, pre, post):
        for i in range(warmup + repeats):
            spent.clear()
            model(example)
            if i >= warmup:
                for name, seconds in spent.items():
                    samples[name].append(seconds)
    return {name: statistics.median(s) for name, s in samples.items()}
