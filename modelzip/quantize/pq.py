"""Product quantization of weight matrices (Stock et al. 2020, "And the Bit Goes Down"; the iPQ of Fan et al. 2021).

A weight is viewed as the matrix (out, in) — a conv weight as (out, in * kh * kw) — and each row is cut
into sub-vectors of `block_size` consecutive columns. k-means clusters all sub-vectors of the layer into
k codewords, so the layer stores the codebook (k, block_size) and one code per sub-vector:

    bits = k * block_size * 32 + n_blocks * ceil(log2 k)          n_blocks = out * in / block_size

With block_size 8 and k = 256 that is 1 bit per weight plus the codebook, where scalar k-means sharing
needs log2 k bits for every single weight. The codebook then trains by gradient (`PQWeights`): the
backward of the gather `codebook[codes]` is a scatter-add, so a codeword's gradient is the sum of the
gradients of the sub-vectors that use it (Stock et al. §3.2, as trained sharing for scalars).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ModelError
from ..layers import Target, per_target, targets
from ..prune import Mask
from .uniform import check_finite


def blocks(weight: torch.Tensor, block_size: int, name: str = "weight") -> torch.Tensor:
    """The sub-vectors of `weight`: a view (out, cols / block_size, block_size), cols = numel / out."""
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    rows = weight.reshape(weight.shape[0], -1)  # (out, in * kh * kw)
    if rows.shape[1] % block_size:
        raise ConfigError(f"{name} of shape {tuple(weight.shape)} has {rows.shape[1]} columns per row, not divisible "
                          f"by block_size {block_size}; pick a divisor or leave the layer out")
    return rows.reshape(rows.shape[0], -1, block_size)


def pq_encode(weight: torch.Tensor, block_size: int, centroids: int, seed: int = 0, *, name: str = "weight"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the sub-vectors of `weight`: (codebook (k', block_size), codes (out, cols / block_size)).

    k' = min(centroids, number of distinct sub-vectors), so with enough codewords the decode is exact.
    k-means++ seeding with `seed`, one run; codewords are sorted lexicographically so that the result
    does not depend on the order k-means found them in.
    """
    if centroids < 1:
        raise ConfigError(f"product quantization needs centroids >= 1, got {centroids}")
    check_finite(weight, name)
    sub = blocks(weight.detach(), block_size, name)
    vectors = sub.reshape(-1, block_size).double().cpu().numpy()  # (n_blocks, block_size)
    k = min(centroids, np.unique(vectors, axis=0).shape[0])
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(vectors)
    order = np.lexsort(km.cluster_centers_.T[::-1])  # first column is the primary key
    rank = np.empty_like(order)
    rank[order] = np.arange(k)
    codebook = torch.from_numpy(km.cluster_centers_[order]).to(weight.device, weight.dtype)
    return codebook, torch.from_numpy(rank[km.labels_]).to(weight.device).long().reshape(sub.shape[:2])


def pq_decode(codebook: torch.Tensor, codes: torch.Tensor, shape: Sequence[int], block_size: int) -> torch.Tensor:
    """The weight of `shape` whose sub-vectors are codebook[codes]; differentiable in the codebook."""
    if codebook.dim() != 2 or codebook.shape[1] != block_size:
        raise ConfigError(f"a codebook for block_size {block_size} has shape (k, {block_size}), "
                          f"got {tuple(codebook.shape)}")
    return codebook[codes].reshape(shape)  # (out, n, block_size) -> shape


def nearest_codes(sub: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The code of the nearest codeword (Euclidean; lowest code on ties) of each sub-vector (..., block_size)."""
    flat = sub.detach().reshape(-1, codebook.shape[1])
    return torch.cdist(flat, codebook.detach()).argmin(1).reshape(sub.shape[:-1])


def code_bits(centroids: int) -> int:
    """Bits of one fixed-width code among `centroids` codewords: ceil(log2 k), 0 for a single codeword."""
    return (centroids - 1).bit_length()


def pq_bytes(shape: Sequence[int], block_size: int, centroids: int) -> int:
    """Stored bytes of a PQ layer: (k * block_size * 32 + n_blocks * ceil(log2 k)) bits, rounded up to bytes."""
    n_blocks = int(np.prod(shape)) // block_size
    return -(-(centroids * block_size * 32 + n_blocks * code_bits(centroids)) // 8)


class PQCodes(NamedTuple):
    """A weight as product-quantization codes: sub-vector j of row i is codebook[codes[i, j]]."""

    codebook: torch.Tensor  # (k, block_size)
    codes: torch.Tensor  # (out, cols / block_size), int64


class PQWeights(nn.Module):
    """Parametrization: weight = codebook[codes] by sub-vectors, the codebook a Parameter, the codes fixed."""

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.clone())
        self.register_buffer("codes", codes)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return pq_decode(self.codebook, self.codes, weight.shape, self.codebook.shape[1])

    def encode(self, weight: torch.Tensor) -> PQCodes:
        return PQCodes(self.codebook.detach(), self.codes)


def chosen(model: nn.Module, layers: Sequence[str] | None) -> list[Target]:
    """The compressible weights of the modules matching the name patterns `layers` (all, when None).

    A pattern that matches no compressible layer is an error, as everywhere in modelzip.
    """
    if isinstance(layers, str):
        raise ConfigError(f"layers takes a list of name patterns, got the string {layers!r}; write [{layers!r}]")
    found = targets(model)
    wanted = per_target(model, found, layers is None, dict.fromkeys(layers or (), True))
    return [t for t in found if wanted[t]]


def refuse_parametrized(t: Target, method: str, *, pruned_ok: bool = False) -> None:
    """ModelError if the target's weight already carries a parametrization (but a prune Mask, when `pruned_ok`)."""
    if parametrize.is_parametrized(t.module, t.param):
        other = [type(p).__name__ for p in t.module.parametrizations[t.param]
                 if not (pruned_ok and isinstance(p, Mask))]
        if other:
            raise ModelError(f"{t.name}.{t.param} already has a {other[0]} parametrization; {method} needs a "
                             f"{'plain or pruned' if pruned_ok else 'plain'} weight (strip the model first)")


def pq_quantize_(model: nn.Module, block_size: int = 8, centroids: int = 256, *, layers: Sequence[str] | None = None,
                 seed: int = 0) -> dict[str, int]:
    """Product-quantize every compressible weight of `model` (or those matching `layers`) in place.

    Defaults are Fan et al.'s: blocks of 8 with 256 codewords, 1-byte codes. A layer needing another
    block size (Stock et al. use kh * kw for 3x3 convs) gets its own call with `layers`. Pruned weights
    are refused: their zeros would not survive clustering. Returns the number of codewords per weight.
    `modelzip.layers.strip` bakes codebook[codes] into plain weights.
    """
    found = chosen(model, layers)
    for t in found:
        refuse_parametrized(t, "product quantization")
    # encode every layer before touching any: a bad block size leaves the model as it was
    encoded = [pq_encode(t.weight, block_size, centroids, seed, name=f"{t.name}.{t.param}") for t in found]
    sizes = {}
    for t, (codebook, codes) in zip(found, encoded):
        parametrize.register_parametrization(t.module, t.param, PQWeights(codebook, codes))
        # the weight underneath no longer matters: freeze it so optimizers and weight decay skip it
        t.module.parametrizations[t.param].original.requires_grad_(False)
        sizes[f"{t.name}.{t.param}"] = codebook.shape[0]
    return sizes
