"""One-shot post-training compression of a trained model with second-order error compensation.

No retraining and no labels: a few hundred calibration inputs give each layer's input Hessian, and each
layer is pruned (unstructured or N:M) and/or quantized (uniform int codes per group, or a k-means
codebook) with the OBS update compensating every decision (see `solver`). `method: plain` makes the same
choices without compensation (rounding to the grid, magnitude pruning): the baseline it is measured
against, at the same file size.

Layers are taken in order and, with `sequential`, each one's Hessian is measured on the model whose
earlier layers are already compressed, so later layers also absorb the error arriving from below.
Embedding tables have no inputs to compensate with (each row is looked up alone): they are rounded,
per token or to a codebook of their own; small tables (positions, token types) get 8 bits. Layers the
path cannot take, and layers excluded by name, stay as they are; the summary names every one and why.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from ..data.feed import Data
from ..errors import ConfigError
from ..layers import per_target, targets
from ..quantize import coded_layer, record_coded
from ..quantize.coded import UNIFORM_CODED
from ..quantize.qat import Codes
from .grids import Codebook, UniformGrid
from .hessian import hessians, names_in_order, supported
from .solver import Pruning, obs_compress, output_error


class Method(str, Enum):
    OBS = "obs"  # second-order compensation (needs calibration inputs)
    PLAIN = "plain"  # the same grid and sparsity, rounded and magnitude-pruned: the baseline


@dataclass(frozen=True)
class SecondOrderConfig:
    """What each layer becomes, and how the compensation is computed."""

    sparsity: float = 0.0  # fraction of each layer's weights removed (unstructured)
    pattern: str | None = None  # "N:M": N of every M consecutive inputs of a row removed (e.g. "2:4")
    bits: int | None = None  # uniform symmetric integer codes (2..8)
    group_size: int = 128  # inputs per scale for `bits` (0: one scale per output channel)
    codebook: int | None = None  # bits of a per-layer k-means codebook (non-uniform; 1..8), instead of `bits`
    # instead of `bits` or `codebook`: a uniform grid of this step (times the layer's weight std), as many
    # values as the layer needs, Huffman-coded in the file: the step sets the error, the entropy the size
    step: float | None = None
    embeddings: bool = True  # quantize Embedding tables too (by rounding: they have nothing to compensate with)
    # bits of a k-means codebook for Embedding tables, whatever the other layers get: on a sentence encoder's
    # word table 64 values Huffman-code to 4.2 bits a weight at the error of 6-bit per-token codes (5.5 bits)
    embedding_codebook: int | None = None
    embedding_step: float | None = None  # a uniform grid for Embedding tables, as `step` (on the same table:
    # 3.6 bits a weight at the error of 32 k-means values, which code to 3.9)
    # tables of at most this many rows (positions, token types) are added to every token: an error there is
    # an error everywhere, and they are small, so they get 8 bits
    small_table: int = 1024
    exclude: tuple[str, ...] = ()  # module-name patterns left as they are (e.g. a classifier head)
    # module-name pattern -> bits of `bits` or `codebook` (whichever is set) for those layers, e.g. wider
    # codes for the first and last layers or depthwise convolutions, which hold few weights and matter most
    layers: Mapping[str, float] | None = None
    method: Method = Method.OBS
    examples: int = 256  # calibration examples for the Hessians
    damp: float = 0.01  # added to H's diagonal, relative to its mean
    block: int = 128  # columns updated together
    sequential: bool = True
    # take each layer's inputs in order of decreasing H diagonal (GPTQ's act-order): the weights that
    # matter most are decided first, while the most weights remain to compensate them (not with `pattern`)
    act_order: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        chosen = self.grids
        if len(chosen) > 1:
            raise ConfigError(f"second_order takes one of bits (uniform codes), codebook (k-means) and step "
                              f"(an entropy-coded grid), got {' and '.join(chosen)}")
        for key in ("step", "embedding_step"):
            if getattr(self, key) is not None and not 0 < getattr(self, key) < math.inf:
                raise ConfigError(f"second_order.{key} must be a positive number, got {getattr(self, key)}")
        if self.bits is not None and not 2 <= self.bits <= 8:
            raise ConfigError(f"second_order.bits must be in 2..8, got {self.bits}")
        for key in ("codebook", "embedding_codebook"):
            if getattr(self, key) is not None and not 1 <= getattr(self, key) <= 8:
                raise ConfigError(f"second_order.{key} must be in 1..8 bits, got {getattr(self, key)}")
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"second_order.sparsity must be in [0, 1), got {self.sparsity}")
        if self.pattern is not None and self.sparsity:
            raise ConfigError("second_order takes sparsity or pattern, not both")
        n, m = self.nm
        if self.pattern is not None and not 0 < n < m:
            raise ConfigError(f"second_order.pattern must be 'N:M' with 0 < N < M, got {self.pattern!r}")
        if self.examples < 1 or self.block < 1 or self.group_size < 0 or not self.damp >= 0:
            raise ConfigError("second_order needs examples >= 1, block >= 1, group_size >= 0 and damp >= 0, "
                              f"got {self.examples}, {self.block}, {self.group_size}, {self.damp}")
        if m and self.block % m:
            raise ConfigError(f"second_order.block ({self.block}) must be a multiple of the pattern's M ({m})")
        if self.layers and not chosen:
            raise ConfigError("second_order.layers gives bits (or a step) per layer: set bits, codebook or step too")
        if not self.quantizes and not self.sparsity and self.pattern is None:
            raise ConfigError("second_order does nothing: give sparsity, pattern, bits or codebook")

    @property
    def grids(self) -> list[str]:
        """Which of bits, codebook and step (the values the layers take) are set."""
        return [k for k in ("bits", "codebook", "step") if getattr(self, k) is not None]

    @property
    def quantizes(self) -> bool:
        """Whether any layer's values change (not only pruning): then no other quantizer may follow."""
        return bool(self.grids) or self.embedding_codebook is not None or self.embedding_step is not None

    @property
    def nm(self) -> tuple[int, int]:
        if self.pattern is None:
            return 0, 0
        try:
            n, m = (int(v) for v in self.pattern.split(":"))
        except ValueError:
            raise ConfigError(f"second_order.pattern must be 'N:M', got {self.pattern!r}") from None
        return n, m

    @property
    def pruning(self) -> Pruning:
        n, m = self.nm
        return Pruning(self.sparsity, n, m)

    def describe(self) -> str:
        parts = [self.method.value]
        if self.bits is not None:
            parts.append(f"{self.bits}-bit" + (f" g{self.group_size}" if self.group_size else ""))
        if self.codebook is not None:
            parts.append(f"{2 ** self.codebook}-value codebook")
        if self.step is not None:
            parts.append(f"grid step {self.step:g} std")
        if self.sparsity:
            parts.append(f"{self.sparsity:.0%} pruned")
        if self.pattern:
            parts.append(f"{self.pattern} sparse")
        return ", ".join(parts)


def second_order_(model: nn.Module, calibration: Data | None, config: SecondOrderConfig) -> dict[str, dict[str, Any]]:
    """Compress `model` in place, layer by layer; returns, per compressible layer, what it became
    (`action`) and its relative output error on the calibration inputs (`error`, OBS method only)."""
    if config.method is Method.OBS and calibration is None:
        raise ConfigError("second_order with method obs needs calibration batches (unlabelled inputs are enough)")
    summary: dict[str, dict[str, Any]] = {}
    chosen: dict[str, nn.Module] = {}
    shared = _shared_weights(model)
    for t in targets(model):
        reason = _skip_reason(t.name, t.module, config, shared)
        if reason is not None:
            summary[t.name] = {"action": f"kept: {reason}"}
        else:
            chosen[t.name] = t.module
    names = names_in_order(model, chosen)
    widths = _widths(model, chosen, config)
    if config.method is Method.OBS and not config.sequential:
        found = hessians(model, {n: chosen[n] for n in names if not isinstance(chosen[n], nn.Embedding)},
                         calibration, config.examples)
    for name in names:
        module = chosen[name]
        layer_config = widths[name]
        if isinstance(module, nn.Embedding):
            summary[name] = _round_table(model, name, module, layer_config)
            continue
        if config.method is Method.PLAIN:
            h = None
        elif config.sequential:
            h = hessians(model, {name: module}, calibration, config.examples).get(name)
        else:
            h = found.get(name)
        if config.method is Method.OBS and h is None:
            summary[name] = {"action": "kept: the calibration batches never reach it"}
            continue
        summary[name] = _compress_layer(model, name, module, h, layer_config)
    return summary


def _widths(model: nn.Module, chosen: dict[str, nn.Module], config: SecondOrderConfig
            ) -> dict[str, SecondOrderConfig]:
    """Each chosen layer's own config: `layers` overrides the bit width by name pattern."""
    if not config.layers:
        return dict.fromkeys(chosen, config)
    found = [t for t in targets(model) if t.name in chosen]
    (key,) = config.grids
    values = per_target(model, found, getattr(config, key), config.layers)
    cast = float if key == "step" else int
    return {t.name: dataclasses.replace(config, layers=None, **{key: cast(values[t])}) for t in found}


def _skip_reason(name: str, module: nn.Module, config: SecondOrderConfig, shared: set[str]) -> str | None:
    if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
        return "excluded by name"
    if name in shared:
        return "its weight is shared with another layer (tied)"
    if isinstance(module, nn.Embedding):
        if not config.embeddings or not config.quantizes:
            return "embedding tables are only quantized"
        return None
    return supported(module)


def _shared_weights(model: nn.Module) -> set[str]:
    """Modules whose weight Parameter another module also holds (tied input/output embeddings)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None:
            owners.setdefault(id(weight), []).append(name)
    return {name for names in owners.values() if len(names) > 1 for name in names}


def _compress_layer(model: nn.Module, name: str, module: nn.Module, h: torch.Tensor | None,
                    config: SecondOrderConfig) -> dict[str, Any]:
    weight = module.weight.detach()
    groups = getattr(module, "groups", 1)
    rows = weight.reshape(groups, weight.shape[0] // groups, -1)  # (groups, out per group, in per group * k)
    cols = rows.shape[2]
    hs = torch.eye(cols).expand(groups, cols, cols) if h is None else h
    codebook = Codebook.grid(weight, config.step) if config.step is not None else None
    if config.codebook is not None:
        importance = None if h is None else torch.cat([hg.diagonal() for hg in hs])
        flat = weight.reshape(weight.shape[0], -1)
        codebook = Codebook.fit(flat, config.codebook, None if importance is None else
                                importance.reshape(groups, cols).repeat_interleave(weight.shape[0] // groups, 0),
                                config.sparsity or config.nm[0] / max(config.nm[1], 1))
    new_rows, codes, scales = [], [], []
    for g in range(groups):
        w, hg, zero = rows[g], hs[g], rows[g] == 0  # weights pruned by an earlier stage stay pruned
        order = hg.diagonal().argsort(descending=True) if config.act_order and h is not None \
            and not config.nm[1] else None
        grid = UniformGrid(config.bits, rows.shape[1], cols, config.group_size, order=order, weight=w) \
            if config.bits else None
        if order is not None:
            w, hg, zero = w[:, order], hg[order][:, order], zero[:, order]
        new = obs_compress(w, hg, quantize=grid or codebook, pruning=config.pruning,
                           zero=zero if zero.any() else None, damp=config.damp if h is not None else 0.0,
                           block=config.block)
        if order is not None:
            new = new[:, order.argsort()]
        new_rows.append(new)
        if grid is not None:
            c, s = grid.codes(new)
            codes.append(c)
            scales.append(s)
    new_weight = torch.cat(new_rows).reshape(weight.shape)
    error = output_error(rows, torch.stack(new_rows), hs) if h is not None else None
    result = {"action": config.describe(), "error": error,
              "kept_fraction": float(new_weight.count_nonzero()) / max(new_weight.numel(), 1)}
    if config.bits is None or not isinstance(module, UNIFORM_CODED):
        with torch.no_grad():
            module.weight.copy_(new_weight)
        if config.bits is not None:  # a Conv1d: the grid's values stay floats
            result["action"] += " (float values: no integer layer for this type)"
        return result
    scale = torch.cat(scales)
    record_coded(model, name, coded_layer(module, Codes(torch.cat(codes).reshape(weight.shape), scale,
                                                        torch.zeros(scale.shape, dtype=torch.int32), config.bits)))
    return result


def _round_table(model: nn.Module, name: str, table: nn.Embedding, config: SecondOrderConfig) -> dict[str, Any]:
    """An Embedding table rounded row by row (per-token scales, or the table's k-means codebook)."""
    weight = table.weight.detach()
    bits, book, action = config.bits, None, ""
    step = config.embedding_step or (config.step if config.embedding_codebook is None else None)
    values = config.embedding_codebook or config.codebook
    if table.num_embeddings <= config.small_table:
        bits = 8
    elif step is not None:
        book, action = Codebook.grid(weight, step), f"grid step {step:g} std (rounded)"
    elif values is not None:
        book, action = Codebook.fit(weight, values), f"{2 ** values}-value codebook (rounded)"
    if book is not None:
        with torch.no_grad():
            table.weight.copy_(book.round(weight))
        return {"action": action, "error": None}
    grid = UniformGrid(bits, weight.shape[0], weight.shape[1], 0)
    grid.set_scales(weight)
    codes, scale = grid.codes(weight)
    record_coded(model, name, coded_layer(table, Codes(codes, scale, torch.zeros(scale.shape, dtype=torch.int32),
                                                       bits)))
    return {"action": f"{bits}-bit per token (rounded)", "error": None}
