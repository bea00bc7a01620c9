"""Sparse execution: a pruned layer computed from its nonzero weights alone, where that is measured faster.

A pruned model that `modelzip.load` returns holds dense weights that are mostly exact zeros, so it runs
at dense speed. `sparsify_` swaps each plain `nn.Linear` (and each 1x1, stride-1, unpadded, ungrouped
`nn.Conv2d`, the same matmul over pixels) whose weight has at least `threshold` zeros for a layer that
keeps W in compressed sparse row form (CSR: values, column indices, row offsets) and computes

    y = W x + b   as  torch.addmv(b, W, x)           for one input row  (MKL's sparse mat-vec)
                  and torch.addmm(b, W, X^T)^T       for several rows   (sparse x dense)

Measured on a 2-core CPU, one thread, torch 2.13, on a 2048 x 2048 layer with 92% zeros: addmv takes
0.25-0.3 of the dense time at batch 1 (addmm there about the dense time), addmm 0.35 at batch 64;
F.linear(x, W_csr) and x @ (W^T as CSC) run a dense x sparse kernel 5x slower than addmm at batch 64,
COO is 20-30x slower, and int32 indices beat int64 ones by 15-30% (fewer index bytes to stream). On
small layers the kernels' fixed cost and the Python around them decide: in LeNet-300-100 at Deep
Compression's sparsities the 784 x 300 layer is ~1.5x faster sparse, the 300 x 100 and 100 x 10 ones are
slower. Hence the measurement per layer.

The sparse layers are for inference: W and b are buffers, not parameters (no optimizer trains them;
`to_dense()` gives the float layer back for that). A sparsified model's state_dict holds a CSR tensor,
which `modelzip.save` does not take: save the model before sparsifying it (the .mzip format already
stores a pruned weight as sparse, see modelzip.codec).
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..models.edits import replace_module
from ..profile import compare_latency

ROUNDS = 15  # interleaved timing rounds per batch size when measuring a layer: medians steady to ~5%
SPARSE_DTYPES = (torch.float32, torch.float64)  # what the CPU sparse kernels (MKL) compute in


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) as a CSR tensor with int32 indices where they fit (faster to stream than int64)."""
    with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
        if csr.values().numel() < 2 ** 31:
            csr = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(),
                                          csr.shape)
    return csr


def csr_matmul(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """W @ x + b for a CSR `weight` (out, in): x (in,) -> (out,) by the mat-vec kernel (3x faster than
    addmm on one column), x (in, n) -> (out, n) by sparse x dense."""
    if x.dim() == 1:
        return torch.mv(weight, x) if bias is None else torch.addmv(bias, weight, x)
    return torch.mm(weight, x) if bias is None else torch.addmm(bias[:, None], weight, x)


class SparseLayer(nn.Module):
    """A float layer's weight as a CSR buffer (and its bias as a buffer): inference only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_shape = tuple(weight.shape)
        self.register_buffer("weight_csr", to_csr(weight.reshape(weight.shape[0], -1)))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def __deepcopy__(self, memo: dict[int, Any]) -> SparseLayer:
        """copy.deepcopy, which torch 2.13 refuses for a CSR tensor ("Cannot access storage"): it is cloned."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = {name: t.clone() if t is not None and t.layout == torch.sparse_csr
                                   else copy.deepcopy(t, memo) for name, t in value.items()} \
                if key == "_buffers" else copy.deepcopy(value, memo)
        return clone

    def dense_weight(self) -> torch.Tensor:
        """The weight as the dense layer held it (zeros included), in its original shape."""
        return self.weight_csr.to_dense().reshape(self.weight_shape)

    def empty_dense(self) -> nn.Module:
        """The dense layer of the same configuration, weights not yet set."""
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The equivalent dense layer (trainable again)."""
        dense = self.empty_dense()
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    @property
    def sparsity(self) -> float:
        """Fraction of the weight's entries that are zero (not stored)."""
        return 1.0 - self.weight_csr.values().numel() / math.prod(self.weight_shape)

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, sparsity={self.sparsity:.1%}, bias={self.bias is not None}"


class SparseLinear(SparseLayer):
    """nn.Linear on a CSR weight: x of shape (..., in_features) -> (..., out_features)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__(layer.weight, layer.bias)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one row takes as few tensor ops as can be: on a 784 x 300 layer each costs ~10% of the matmul
        if x.numel() == self.in_features:
            y = csr_matmul(self.weight_csr, self.bias, x.reshape(-1))  # (out,)
        else:
            y = csr_matmul(self.weight_csr, self.bias, x.reshape(-1, self.in_features).T).T.contiguous()  # (batch, out)
        return y.reshape(*x.shape[:-1], self.out_features)

    def empty_dense(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                         device=self.weight_csr.device, dtype=self.weight_csr.dtype)


class SparseConv1x1(SparseLayer):
    """A 1x1, stride-1, unpadded, ungrouped nn.Conv2d on a CSR weight: (N, C, H, W) or (C, H, W) inputs."""

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__(layer.weight, layer.bias)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x if x.dim() == 4 else x[None]
        n, c, h, w = batched.shape
        columns = batched.transpose(0, 1).reshape(c, n * h * w)  # (C, pixels): a view for one image
        y = csr_matmul(self.weight_csr, self.bias, columns[:, 0] if n * h * w == 1 else columns)  # (out, pixels)
        y = y.reshape(self.out_channels, n, h, w).transpose(0, 1).contiguous()
        return y if x.dim() == 4 else y[0]

    def empty_dense(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, 1, bias=self.bias is not None,
                         device=self.weight_csr.device, dtype=self.weight_csr.dtype)


def sparsify_(model: nn.Module, *, threshold: float = 0.5, batch_sizes: Sequence[int] = (1, 64),
              measure: bool = True) -> dict[str, str]:
    """Swap, in place, the plain float Linear / 1x1 Conv2d layers with >= `threshold` zeros for sparse ones.

    With `measure`, each candidate's dense and sparse forward are timed side by side (`ROUNDS` interleaved
    rounds, medians; random inputs of its in_features, (b, C, 1, 1) for a conv: b pixels) at every size in
    `batch_sizes`, under the current torch thread settings, and the sparse layer is kept only where it is
    faster at every one of them: pass the batch sizes the model serves. Without `measure` every candidate
    is converted (deterministic). Subclasses (modelzip's coded layers: their integer codes stay exact; a
    user's own forward), parametrized and non-float layers are left as they are.

    Returns, for every Linear / Conv2d, what was done and why ("sparse: 92.0% zeros, 3.10x at batch 1, ...").
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"sparsify threshold must be in [0, 1], got {threshold!r}")
    if measure and (not batch_sizes or any(b < 1 for b in batch_sizes)):
        raise ConfigError(f"sparsify needs positive batch sizes to measure, got {tuple(batch_sizes)}")
    decisions: dict[str, str] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        reason = _not_convertible(name, layer)
        if reason is None:
            zeros = (layer.weight == 0).double().mean().item()
            if zeros < threshold:
                reason = f"{zeros:.1%} zeros < threshold {threshold:.1%}"
        if reason is not None:
            decisions[name] = f"dense: {reason}"
            continue
        sparse = SparseLinear(layer) if isinstance(layer, nn.Linear) else SparseConv1x1(layer)
        speedups = _speedups(layer, sparse, batch_sizes) if measure else {}
        timed = "".join(f", {s:.2f}x at batch {b}" for b, s in speedups.items())
        if all(s > 1.0 for s in speedups.values()):
            replace_module(model, name, sparse)
            decisions[name] = f"sparse: {sparse.sparsity:.1%} zeros{timed}"
        else:
            decisions[name] = f"dense: sparse is not faster at every batch size ({timed[2:]})"
    return decisions


def _not_convertible(name: str, layer: nn.Module) -> str | None:
    """Why `layer` keeps its own forward, or None for a plain float Linear / 1x1 Conv2d."""
    if parametrize.is_parametrized(layer):
        return "parametrized weight (masks or shared centroids): call modelzip.strip(model) first"
    if type(layer) not in (nn.Linear, nn.Conv2d):
        return f"{type(layer).__name__} is not a plain nn.Linear / nn.Conv2d (coded layers stay exact)"
    if not name:
        return "the model itself is the layer: wrap it (nn.Sequential) to sparsify it"
    if layer.weight.dtype not in SPARSE_DTYPES:
        return f"{layer.weight.dtype} weight (sparse kernels take float32 / float64)"
    if isinstance(layer, nn.Conv2d) and (layer.kernel_size != (1, 1) or layer.stride != (1, 1) or layer.groups != 1
                                         or layer.padding not in ((0, 0), "valid")):
        return "only 1x1, stride-1, unpadded, ungrouped convolutions run as a sparse matmul"
    return None


def _speedups(dense: nn.Module, sparse: SparseLayer, batch_sizes: Sequence[int]) -> dict[int, float]:
    """Dense time / sparse time of one forward pass at each batch size (random normal inputs, seed 0)."""
    generator = torch.Generator().manual_seed(0)
    per_example = (sparse.weight_shape[1],) + ((1, 1) if isinstance(sparse, SparseConv1x1) else ())
    result = {}
    for b in batch_sizes:
        x = torch.randn(b, *per_example, generator=generator, dtype=sparse.weight_csr.dtype)
        times = compare_latency({"dense": dense, "sparse": sparse}, x.to(sparse.weight_csr.device), ROUNDS)
        result[b] = times["dense"] / times["sparse"]
    return result
