"""The Optimal Brain Surgeon update, column by column: prune and/or quantize a weight matrix so that the
layer's outputs on the calibration inputs change as little as possible.

For a layer y = W x with inputs X (one example per row), the squared output error of a changed weight
W' is tr((W' - W) H (W' - W)^T) with H = X^T X: each row of W is an independent least-squares problem
sharing the same H. Fixing weight j of a row to a value q (0 when pruned, a grid point when quantized)
and re-solving the free weights gives the OBS update (Hassibi & Stork 1993)

    delta = (q - w_j) / [H^-1]_jj * H^-1[j, :]

Processing the columns left to right, every decision is compensated by the columns not yet decided,
and the rows of the upper Cholesky factor U of H^-1 (H^-1 = U^T U) are exactly the updates of the
successive eliminations (Frantar & Alistarh 2022; GPTQ, Frantar et al. 2023; SparseGPT 2023). The
columns are taken in blocks: inside a block updates are applied at once per column, the rest of the
matrix gets the block's accumulated error in one matrix product. Which weights are pruned is decided
every 16 columns, on the weights as compensated so far (on random correlated inputs, 50% unstructured:
0.042 relative output error against 0.049 deciding 128 columns at once and 0.071 for magnitude pruning).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ModelError

# (the weights as compensated so far, column index j) -> the allowed values of column j. Seeing the whole
# matrix lets a group-wise quantizer set a group's scale from the compensated weights when it reaches it.
Quantizer = Callable[[torch.Tensor, int], torch.Tensor]
MASK_BLOCK = 16  # columns whose pruning is decided together: small enough that the choice sees the compensation


@dataclass(frozen=True)
class Pruning:
    """Which weights become zero: a fraction of each block (the smallest w^2 / [H^-1]_jj^2, the OBS saliency),
    or `n` of every `m` consecutive inputs of a row (the N:M pattern sparse tensor cores run)."""

    sparsity: float = 0.0
    n: int = 0
    m: int = 0

    def mask(self, w: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
        """The pruned positions of a block `w` (rows, columns) whose inverse-Hessian diagonal is `d`."""
        saliency = w.pow(2) / d.pow(2)
        if self.m:
            rows, cols = w.shape
            groups = saliency[:, : cols - cols % self.m].reshape(rows, -1, self.m)
            lowest = groups.topk(self.n, dim=2, largest=False).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, lowest, True).reshape(rows, -1)
            return torch.cat([mask, torch.zeros(rows, cols % self.m, dtype=torch.bool)], dim=1)
        count = int(round(self.sparsity * w.numel()))
        if count == 0:
            return None
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[saliency.flatten().argsort()[:count]] = True
        return mask.reshape(w.shape)


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """U, the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, in float64.

    The damping keeps H positive definite when the calibration inputs span fewer dimensions than the
    layer has inputs (a few hundred examples, correlated features).
    """
    h = h.double().clone()
    h.diagonal().add_(damp * h.diagonal().mean().clamp(min=1e-12))
    try:
        lower = torch.linalg.cholesky(h)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except torch.linalg.LinAlgError:
        raise ModelError("the layer's input Hessian is not positive definite even with damping; "
                         "give more calibration examples or a larger damp") from None


def obs_compress(weight: torch.Tensor, hessian: torch.Tensor, *, quantize: Quantizer | None = None,
                 pruning: Pruning = Pruning(), zero: torch.Tensor | None = None, damp: float = 0.01,
                 block: int = 128) -> torch.Tensor:
    """`weight` (rows, columns) pruned and/or quantized column by column with OBS compensation.

    `quantize(w, j)` maps the (compensated) weights of input j, `w[:, j]`, onto their allowed values; pruned
    weights are exactly 0, and so are the weights `zero` marks (pruned earlier, they stay pruned). Inputs
    the calibration never exercised (a zero diagonal) are pruned for free.
    Returns the new weight in `weight`'s dtype; `weight` is not modified.
    """
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = inverse_cholesky(h, damp)
    cols = w.shape[1]
    step = pruning.m * -(-MASK_BLOCK // pruning.m) if pruning.m else MASK_BLOCK
    for start in range(0, cols, block):
        end = min(start + block, cols)
        ub = u[start:end, start:end]
        wb = w[:, start:end]  # a view: updated in place
        errors = torch.empty_like(wb)
        mask = None
        for i in range(end - start):
            if i % step == 0:  # chosen on the weights as compensated so far (SparseGPT's adaptive mask)
                mask = pruning.mask(wb[:, i : i + step], ub.diagonal()[i : i + step])
            column = wb[:, i]
            value = quantize(w, start + i).double() if quantize is not None else column.clone()
            if mask is not None:
                value[mask[:, i % step]] = 0.0
            if zero is not None:
                value[zero[:, start + i]] = 0.0
            errors[:, i] = (column - value) / ub[i, i]
            wb[:, i:] -= errors[:, i : i + 1] * ub[i : i + 1, i:]
            wb[:, i] = value  # exact: no rounding drift from the update
        w[:, end:] -= errors @ u[start:end, end:]
    return w.to(weight.dtype)


def output_error(original: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the layer's squared output error on the calibration inputs, relative.

    Batched over groups: weights (groups, rows, cols) with one H (groups, cols, cols) each.
    """
    w, delta, h = original.double(), (new - original).double(), hessian.double()
    base = torch.einsum("gij,gjk,gik->", w, h, w)
    return float(torch.einsum("gij,gjk,gik->", delta, h, delta) / base.clamp(min=1e-30))
