"""HashedNets (Chen et al., ICML 2015): a layer's weights are a few shared values picked by a hash.

The virtual weight of a layer is V[i, j] = xi(i, j) * w[h(i, j)]: h hashes each position into one of
`buckets` shared values w, and the sign hash xi in {-1, +1} makes the inner products of hashed
features unbiased (the paper's sign factor). Only w (and the bias) are parameters, so a layer keeps
buckets / (out * in) of its weights (compression 1 / ratio) with no index stored at all: (h, xi) are
recomputed from the seed and the shape. Autograd's backward of the gather w[h] is a scatter-add,
dL/dw[b] = sum over h(i, j) = b of xi(i, j) * dL/dV[i, j], which is exactly the paper's update.

Structured multi-hashing (Eban et al., "Structured Multi-Hashing for Model Compression", CVPR 2020)
takes the hashed values from the entries of a product of two small matrices instead of a free vector:
V[i, j] = xi(i, j) * (L R)[p(i, j)] with L (m, r), R (r, n) and m * n >= out * in, where p is a seeded
pseudo-random injection of the positions into the m * n entries (no two weights share an entry). The
layer keeps r * (m + n) parameters, and, with m ~ n ~ sqrt(out * in), r sets its size in steps of about
2 sqrt(out * in); the paper draws a whole network from one such product, here each layer gets its own.

`hash_` swaps nn.Linear and nn.Conv2d layers for hashed ones in place, their storage starting at the
least-squares fit of the dense weight, and records a "hash" structural edit so .mzip files reload.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from enum import Enum
from math import isqrt, prod, sqrt
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError
from ..layers import check_replaceable, per_target, plain_type, replacing, targets
from ..lowrank.svd import svd_factors
from ..models.edits import Edit, edit_op, record_edit, replace_module, swap_layer
from ..models.schema import MAX_DIM, MAX_ELEMENTS, choice, integer

_MASK32 = 0xFFFF_FFFF
_GOLDEN = 0x9E37_79B9  # 2**32 / golden ratio: spreads consecutive salts over the 32-bit range


class HashStructure(str, Enum):
    BUCKETS = "buckets"  # HashedNets: the hash picks one of `buckets` free values
    PRODUCT = "product"  # structured multi-hashing: the values are the entries of a rank-r product

    @property
    def size(self) -> str:
        """The number that sizes this storage: the layers' argument and the "hash" edit's field."""
        return "rank" if self is HashStructure.PRODUCT else "buckets"


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
    index = _salted(numel, seed, 0, device) % buckets
    return index.reshape(*shape), _signs(shape, seed, device)


def product_shape(numel: int) -> tuple[int, int]:
    """(m, n) of the product a weight of `numel` entries is hashed into: m = ceil(sqrt(numel)),
    n = ceil(numel / m), the near-square shape with m * n >= numel (less than m entries to spare)."""
    m = isqrt(numel - 1) + 1
    return m, -(-numel // m)


def product_indices(shape: Sequence[int], entries: int, seed: int = 0,
                    device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, sign) of a weight of `shape` hashed into `entries` >= its size: index distinct in [0, entries).

    Position k gets the entry with the k-th smallest key fmix32(e ^ s1) (e in [0, entries)), a seeded
    pseudo-random injection: fmix32 is a bijection, so keys never tie and every device sorts them alike.
    The sign is hash_indices' sign for the same seed.
    """
    numel = prod(shape)
    _check_int(entries, "product entries", numel, 2 ** 32)
    _check_int(seed, "hash seed", 0, 2 ** 31 - 1)
    index = torch.argsort(_salted(entries, seed, 0, device))[:numel]
    return index.reshape(*shape), _signs(shape, seed, device)


def _salted(count: int, seed: int, part: int, device: str | torch.device | None) -> torch.Tensor:
    """fmix32(k ^ s) for k in [0, count) (int64): hash number `part` of the seed, its salt s hashed from both."""
    salt = _fmix32(_mul32(2 * seed + part + 1, _GOLDEN))
    return _fmix32(torch.arange(count, dtype=torch.int64, device=device) ^ salt)


def _signs(shape: Sequence[int], seed: int, device: str | torch.device | None) -> torch.Tensor:
    """The sign hash xi = 1 - 2 * (fmix32(k ^ s2) & 1) of each position, int64 in {-1, +1}."""
    return (1 - 2 * (_salted(prod(shape), seed, 1, device) & 1)).reshape(*shape)


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


@torch.no_grad()
def product_factors(weight: torch.Tensor, index: torch.Tensor, sign: torch.Tensor,
                    rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left (m, rank), right (rank, n)) whose product fits sign * weight in the hashed entries `index`.

    The target T (m, n) holds sign * weight where `index` puts it and 0 in the entries no position uses;
    its truncated SVD, left = U_r sqrt(S_r), right = sqrt(S_r) V_r^T, is the least-squares fit at rank r
    (Eckart-Young). That is exact least squares on the used entries when m * n = numel; otherwise the fewer
    than m spare entries are pulled to 0 too, a small extra constraint.
    """
    m, n = product_shape(weight.numel())
    target = weight.new_zeros(m * n)
    target[index.reshape(-1)] = (sign * weight).reshape(-1)
    right, left = svd_factors(target.reshape(m, n), rank)
    return left, right


class _Hashed(nn.Module):
    """The shared storage of a hashed layer: the values the hash picks from, an optional bias, and the
    non-persistent `index` / `sign` buffers of the virtual weight (recomputed from the seed, never saved).

    The values are `shared` (buckets,) parameters (HashedNets), or with `rank` the m * n = `buckets`
    entries of `left` (m, rank) @ `right` (rank, n) (structured multi-hashing; see the module docstring).
    `modelzip_weights` opts them into modelzip.layers.targets on purpose: they are ordinary weights, so
    k-means sharing or magnitude pruning can compress a hashed net further (HashedNets then Deep
    Compression), and a fully hashed model still has compressible layers.
    """

    def __init__(self, shape: tuple[int, ...], buckets: int | None, rank: int | None, bias: bool, seed: int,
                 fan_in: int, device: str | torch.device | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        like: dict[str, Any] = {"device": device, "dtype": dtype}
        # nn.Linear / nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); V then has the same variance
        bound = 1 / sqrt(fan_in)
        if rank is None:
            _check_int(buckets, "buckets", 1, prod(shape))
            first = self.shared = nn.Parameter(torch.empty(buckets, **like).uniform_(-bound, bound))
            index, sign = hash_indices(shape, buckets, seed, device=first.device)
        else:
            if buckets is not None:
                raise ConfigError(f"give buckets or rank, not both (got buckets={buckets}, rank={rank})")
            m, n = product_shape(prod(shape))
            _check_int(rank, "rank", 1, min(m, n))
            # U(-a, a) factors: an entry of left @ right sums `rank` products of variance (a^2 / 3)^2
            a = sqrt(bound) * (3 / rank) ** 0.25
            first = self.left = nn.Parameter(torch.empty(m, rank, **like).uniform_(-a, a))
            self.right = nn.Parameter(torch.empty(rank, n, **like).uniform_(-a, a))
            buckets = m * n
            index, sign = product_indices(shape, buckets, seed, device=first.device)
        self.buckets, self.rank, self.seed = buckets, rank, seed
        self.bias = nn.Parameter(torch.empty(shape[0], **like).uniform_(-bound, bound)) if bias else None
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign.to(first.dtype), persistent=False)

    @property
    def modelzip_weights(self) -> tuple[str, ...]:
        return ("shared",) if self.rank is None else ("left", "right")

    def virtual_weight(self) -> torch.Tensor:
        """V = sign * values[index], the dense weight the layer computes with (out, in[, kh, kw])."""
        values = self.shared if self.rank is None else (self.left @ self.right).flatten()
        return self.sign * values[self.index]

    @torch.no_grad()
    def fit_(self, weight: torch.Tensor) -> None:
        """Set the storage to the least-squares fit of a dense `weight`: `bucket_means` or `product_factors`."""
        if self.rank is None:
            self.shared.copy_(bucket_means(weight, self.index, self.sign, self.buckets))
        else:
            left, right = product_factors(weight, self.index, self.sign, self.rank)
            self.left.copy_(left)
            self.right.copy_(right)

    def _storage_repr(self) -> str:
        return f"buckets={self.buckets}" + ("" if self.rank is None else f", rank={self.rank}")


class HashedLinear(_Hashed):
    """y = x V^T + b with V (out, in) hashed into `buckets` shared values, or into the entries of a
    rank-`rank` product (give one of the two; see the module docstring)."""

    modelzip_kind = "linear"

    def __init__(self, in_features: int, out_features: int, buckets: int | None = None, bias: bool = True,
                 seed: int = 0, device: str | torch.device | None = None, dtype: torch.dtype | None = None, *,
                 rank: int | None = None) -> None:
        super().__init__((out_features, in_features), buckets, rank, bias, seed, in_features, device, dtype)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.virtual_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self._storage_repr()}, "
                f"bias={self.bias is not None}, seed={self.seed}")


class HashedConv2d(_Hashed):
    """nn.Conv2d (zero padding) whose kernel V (out, in / groups, kh, kw) is hashed into `buckets` values
    or into the entries of a rank-`rank` product (give one of the two)."""

    modelzip_kind = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 buckets: int | None = None, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1, groups: int = 1,
                 bias: bool = True, seed: int = 0, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, *, rank: int | None = None) -> None:
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"{groups} groups do not divide {in_channels} input and {out_channels} output channels")
        kh, kw = _pair(kernel_size)
        fan_in = in_channels // groups * kh * kw
        super().__init__((out_channels, in_channels // groups, kh, kw), buckets, rank, bias, seed, fan_in, device,
                         dtype)
        self.in_channels, self.out_channels, self.kernel_size, self.groups = in_channels, out_channels, (kh, kw), groups
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.virtual_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {self._storage_repr()}, "
                f"bias={self.bias is not None}, seed={self.seed}")


def hash_(model: nn.Module, ratio: float | Mapping[str, float | None] | None = None, *,
          layers: Mapping[str, float] | None = None, exclude: Sequence[str] = (), seed: int = 0,
          structure: HashStructure | str = HashStructure.BUCKETS) -> dict[str, int]:
    """Replace the nn.Linear and nn.Conv2d layers of `model` by hashed ones in place; returns buckets by name
    (ranks for the "product" structure).

    A layer of n weights gets buckets = round(ratio * n) (at least 1): compression 1 / ratio. `ratio` is
    one value in (0, 1] or one per kind ({"linear": 1/8, "conv": None}; None stays dense); `layers` maps
    module-name fnmatch patterns to ratios, overriding it (with no ratio only these layers change);
    `exclude` patterns stay dense, even if `layers` names them. Buckets start at the least-squares fit of
    the dense weight (`bucket_means`). Other compressible layers stay dense unless `layers` names them.
    With structure="product" (structured multi-hashing) a layer instead gets rank
    r = round(ratio * n / (m + n')) (at least 1) for its (m, n') product, so r * (m + n') ~ ratio * n
    parameters, starting at the truncated SVD of its hashed dense weight (`product_factors`).
    """
    structure = _parse_structure(structure)
    plan = _plan(model, ratio, layers, exclude, seed, structure)
    for name, layer, size in plan:
        new = _hashed(layer, structure, size, seed)
        new.fit_(layer.weight)
        with torch.no_grad():
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        replace_module(model, name, new.train(layer.training))
        edit: Edit = {"op": "hash", "module": name, structure.size: size, "seed": seed}
        if structure is not HashStructure.BUCKETS:  # bucket edits keep the format they had before
            edit["structure"] = structure.value
        record_edit(model, edit)
    return {name: size for name, _, size in plan}


@edit_op("hash", optional={"buckets": integer(1, MAX_ELEMENTS), "rank": integer(1, MAX_DIM),
                            "seed": integer(0, 2**31 - 1), "structure": choice([s.value for s in HashStructure])})
def _replay(model: nn.Module, edit: Edit) -> None:
    """Swap the layer for an empty hashed one; the state_dict fills its storage and bias afterwards.

    Edits written before structured multi-hashing have no "structure": they are buckets.
    """
    def make(layer: nn.Module) -> _Hashed:
        structure = _parse_structure(edit.get("structure", HashStructure.BUCKETS))
        return _hashed(layer, structure, edit.get(structure.size), edit.get("seed", 0))

    swap_layer(model, edit, _hashable, make)


def _hashed(layer: nn.Module, structure: HashStructure, size: Any, seed: Any) -> _Hashed:
    """The hashed layer computing what `layer` computes, with `size` buckets (or rank), on its device and dtype."""
    common: dict[str, Any] = {structure.size: size, "bias": layer.bias is not None, "seed": seed,
                              "device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        return HashedLinear(layer.in_features, layer.out_features, **common)
    return HashedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, dilation=layer.dilation, groups=layer.groups, **common)


def _plan(model: nn.Module, ratio: float | Mapping[str, float | None] | None, layers: Mapping[str, float] | None,
          exclude: Sequence[str], seed: int, structure: HashStructure) -> list[tuple[str, nn.Module, int]]:
    """(name, layer, buckets or rank) of every layer to hash; checks everything before the model changes."""
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
        numel = t.module.weight.numel()
        unit = sum(product_shape(numel)) if structure is HashStructure.PRODUCT else 1  # parameters per rank or bucket
        plan.append((t.name, t.module, max(1, round(value * numel / unit))))
    return plan


def _hashable(module: nn.Module) -> bool:
    # exact types (a subclass may read .weight elsewhere); parametrize subclasses the layer's class: look through
    cls = plain_type(module)
    return cls is nn.Linear or (cls is nn.Conv2d and module.padding_mode == "zeros")


def _parse_structure(value: object) -> HashStructure:
    try:
        return HashStructure(value)
    except ValueError:
        choices = ", ".join(repr(s.value) for s in HashStructure)
        raise ConfigError(f"hashing structure must be one of {choices}, got {value!r}") from None


def _check_ratio(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"hashing ratio{where} must be a number in (0, 1] (kept fraction of weights), got {value!r}")


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
