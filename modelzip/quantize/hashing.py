"""HashedNets (Chen et al., ICML 2015): a layer's weights are a few shared values picked by a hash.

The virtual weight of a layer is V[i, j] = xi(i, j) * w[h(i, j)]: h hashes each position into one of
`buckets` shared values w, and the sign hash xi in {-1, +1} makes the inner products of hashed
features unbiased (the paper's sign factor). Only w (and the bias) are parameters, so a layer keeps
buckets / (out * in) of its weights (compression 1 / ratio) with no index stored at all: (h, xi) are
recomputed from the seed and the shape. Autograd's backward of the gather w[h] is a scatter-add,
dL/dw[b] = sum over h(i, j) = b of xi(i, j) * dL/dV[i, j], which is exactly the paper's update.

`hash_` swaps nn.Linear and nn.Conv2d layers for hashed ones in place, each bucket starting at the
least-squares fit of the dense weight, and records a "hash" structural edit so .mzip files reload.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from math import prod, sqrt
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError
from ..layers import check_replaceable, per_target, plain_type, replacing, targets
from ..models.edits import EDITS, Edit, record_edit, replace_module, swap_layer

_MASK32 = 0xFFFF_FFFF
_GOLDEN = 0x9E37_79B9  # 2**32 / golden ratio: spreads consecutive salts over the 32-bit range


def _mul32(x: Any, c: int) -> Any:
    """(x * c) mod 2**32 for x in [0, 2**32): c split in 16-bit halves keeps every product below 2**49.

    A plain int64 product of two 32-bit values overflows (undefined in C++); this form gives the same
    bits on every machine and device, which the file format relies on (the hash is never stored).
    """
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _fmix32(x: Any) -> Any:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2**32) in which each input bit flips each
    output bit with probability ~1/2 (works on Python ints and int64 tensors alike)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EB_CA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2_AE35)
    return x ^ (x >> 16)


def hash_indices(shape: Sequence[int], buckets: int, seed: int = 0,
                 device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, sign) of a virtual weight of `shape`: index in [0, buckets) (int64), sign in {-1, +1} (int64).

    Entry k (row-major flat position) gets h = fmix32(k ^ s1) mod buckets and xi = 1 - 2 * (fmix32(k ^ s2) & 1),
    with salts s1, s2 hashed from the seed: two independent hashes, as the paper's h and xi.
    """
    numel = prod(shape)
    _check_int(buckets, "buckets", 1, numel)
    _check_int(seed, "hash seed", 0, 2 ** 31 - 1)
    if numel > 2 ** 32:
        raise ConfigError(f"a hashed weight of shape {list(shape)} has over 2**32 entries; the hash is 32-bit")
    k = torch.arange(numel, dtype=torch.int64, device=device)
    salt_index, salt_sign = (_fmix32(_mul32(2 * seed + part + 1, _GOLDEN)) for part in (0, 1))
    index = _fmix32(k ^ salt_index) % buckets
    sign = 1 - 2 * (_fmix32(k ^ salt_sign) & 1)
    return index.reshape(*shape), sign.reshape(*shape)


@torch.no_grad()
def bucket_means(weight: torch.Tensor, index: torch.Tensor, sign: torch.Tensor, buckets: int) -> torch.Tensor:
    """The `buckets` values w minimising sum_ij (sign_ij * w[index_ij] - weight_ij)^2.

    As sign^2 = 1 the problem splits per bucket: w[b] = mean of sign * weight over the entries hashed
    into b (0 for a bucket no entry uses). Summed in float64 so the mean is exact to the weight's dtype.
    """
    flat = index.reshape(-1)
    sums = torch.zeros(buckets, dtype=torch.float64, device=weight.device)
    sums.index_add_(0, flat, (sign * weight).reshape(-1).to(torch.float64))
    counts = torch.bincount(flat, minlength=buckets)
    return (sums / counts.clamp(min=1)).to(weight.dtype)


class _Hashed(nn.Module):
    """The shared storage of a hashed layer: `shared` (buckets,) values, an optional bias, and the
    non-persistent `index` / `sign` buffers of the virtual weight (recomputed from the seed, never saved).

    `modelzip_weights` opts `shared` into modelzip.layers.targets on purpose: the bucket values are
    ordinary weights, so k-means sharing or magnitude pruning can compress a hashed net further
    (HashedNets then Deep Compression), and a fully hashed model still has compressible layers.
    """

    modelzip_weights = ("shared",)

    def __init__(self, shape: tuple[int, ...], buckets: int, bias: bool, seed: int, fan_in: int,
                 device: str | torch.device | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        _check_int(buckets, "buckets", 1, prod(shape))
        self.buckets, self.seed = buckets, seed
        self.shared = nn.Parameter(torch.empty(buckets, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(shape[0], device=device, dtype=dtype)) if bias else None
        index, sign = hash_indices(shape, buckets, seed, device=self.shared.device)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign.to(self.shared.dtype), persistent=False)
        # nn.Linear / nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); V then has the same law
        bound = 1 / sqrt(fan_in)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def virtual_weight(self) -> torch.Tensor:
        """V = sign * shared[index], the dense weight the layer computes with (out, in[, kh, kw])."""
        return self.sign * self.shared[self.index]


class HashedLinear(_Hashed):
    """y = x V^T + b with V (out, in) hashed into `buckets` shared values (see the module docstring)."""

    modelzip_kind = "linear"

    def __init__(self, in_features: int, out_features: int, buckets: int, bias: bool = True, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__((out_features, in_features), buckets, bias, seed, in_features, device, dtype)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.virtual_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}, "
                f"bias={self.bias is not None}, seed={self.seed}")


class HashedConv2d(_Hashed):
    """nn.Conv2d (zero padding) whose kernel V (out, in / groups, kh, kw) is hashed into `buckets` values."""

    modelzip_kind = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], buckets: int,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"{groups} groups do not divide {in_channels} input and {out_channels} output channels")
        kh, kw = _pair(kernel_size)
        fan_in = in_channels // groups * kh * kw
        super().__init__((out_channels, in_channels // groups, kh, kw), buckets, bias, seed, fan_in, device, dtype)
        self.in_channels, self.out_channels, self.kernel_size, self.groups = in_channels, out_channels, (kh, kw), groups
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.virtual_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, buckets={self.buckets}, "
                f"bias={self.bias is not None}, seed={self.seed}")


def hash_(model: nn.Module, ratio: float | Mapping[str, float | None] | None = None, *,
          layers: Mapping[str, float] | None = None, exclude: Sequence[str] = (), seed: int = 0) -> dict[str, int]:
    """Replace the nn.Linear and nn.Conv2d layers of `model` by hashed ones in place; returns buckets by name.

    A layer of n weights gets buckets = round(ratio * n) (at least 1): compression 1 / ratio. `ratio` is
    one value in (0, 1] or one per kind ({"linear": 1/8, "conv": None}; None stays dense); `layers` maps
    module-name fnmatch patterns to ratios, overriding it (with no ratio only these layers change);
    `exclude` patterns stay dense, even if `layers` names them. Buckets start at the least-squares fit of
    the dense weight (`bucket_means`). Other compressible layers stay dense unless `layers` names them.
    """
    plan = _plan(model, ratio, layers, exclude, seed)
    for name, layer, buckets in plan:
        new = _structure(layer, buckets, seed)
        with torch.no_grad():
            new.shared.copy_(bucket_means(layer.weight, new.index, new.sign, buckets))
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        replace_module(model, name, new.train(layer.training))
        record_edit(model, {"op": "hash", "module": name, "buckets": buckets, "seed": seed})
    return {name: buckets for name, _, buckets in plan}


@EDITS.register("hash")
def _replay(model: nn.Module, edit: Edit) -> None:
    """Swap the layer for an empty hashed one; the state_dict fills `shared` and the bias afterwards."""
    swap_layer(model, edit, _hashable, lambda layer: _structure(layer, edit.get("buckets"), edit.get("seed", 0)))


def _structure(layer: nn.Module, buckets: Any, seed: Any) -> _Hashed:
    """The hashed layer computing what `layer` computes, with `buckets` values, on its device and dtype."""
    like: dict[str, Any] = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return HashedLinear(layer.in_features, layer.out_features, buckets, bias, seed, **like)
    return HashedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, buckets, layer.stride,
                        layer.padding, layer.dilation, layer.groups, bias, seed, **like)


def _plan(model: nn.Module, ratio: float | Mapping[str, float | None] | None, layers: Mapping[str, float] | None,
          exclude: Sequence[str], seed: int) -> list[tuple[str, nn.Module, int]]:
    """(name, layer, buckets) of every layer to hash; checks everything before the model changes."""
    defaults = ratio.items() if isinstance(ratio, Mapping) else [(None, ratio)]
    for kind, value in defaults:
        if value is not None:
            _check_ratio(value, "" if kind is None else f" of {kind} layers")
    for pattern, value in (layers or {}).items():
        _check_ratio(value, f" for layer {pattern!r}")
    _check_int(seed, "hash seed", 0, 2 ** 31 - 1)
    if ratio is None and not layers:
        raise ConfigError("nothing to hash: give a ratio or per-layer ratios in `layers`")
    overrides: dict[str, float | None] = dict(layers or {})
    for pattern in (exclude,) if isinstance(exclude, str) else exclude:  # one name is one pattern, not letters
        overrides.pop(pattern, None)
        overrides[pattern] = None  # inserted last, so it wins over every `layers` pattern
    found = targets(model)
    values = per_target(model, found, ratio, overrides)
    named = {t.name for t in found if any(fnmatch.fnmatchcase(t.name, p) for p in layers or {})}
    plan = []
    for t, value in replacing(found, values, named, _hashable,
                              "cannot be hashed: only nn.Linear and nn.Conv2d with zero padding can"):
        check_replaceable(t.name, t.module, "hashing")
        plan.append((t.name, t.module, max(1, round(value * t.module.weight.numel()))))
    return plan


def _hashable(module: nn.Module) -> bool:
    # exact types (a subclass may read .weight elsewhere); parametrize subclasses the layer's class: look through
    cls = plain_type(module)
    return cls is nn.Linear or (cls is nn.Conv2d and module.padding_mode == "zeros")


def _check_ratio(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"hashing ratio{where} must be a number in (0, 1] (kept fraction of weights), got {value!r}")


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
