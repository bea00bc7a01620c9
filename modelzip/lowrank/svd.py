"""Truncated SVD of a Linear weight: the best rank-r approximation as two thinner layers.

W (out, in) = U diag(S) V^T; keeping the r largest singular values gives W_r = U_r diag(S_r) V_r^T,
which by Eckart-Young (1936) has the smallest Frobenius error of any rank-r matrix,
||W - W_r||_F = sqrt(sum_{i>r} s_i^2). Splitting sqrt(S_r) into both factors gives them equal scale,
so fine-tuning with one learning rate moves both alike (Denton et al. 2014 factor fully connected
layers this way; Xue et al. 2013 for speech models).
"""
from __future__ import annotations

import torch

from .ranks import check_ranks


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first (rank, in), second (out, rank)) with second @ first the best rank-`rank` approximation of `weight`.

    `first` is sqrt(S_r) V_r^T and `second` is U_r sqrt(S_r); computed in float64 (half-precision SVD does
    not exist, and the truncation error should be the exact tail of the spectrum), returned in the
    weight's dtype and device.
    """
    (rank,) = check_ranks(weight.shape, (rank,))
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]  # (rank, in)
    second = u[:, :rank] * root  # (out, rank)
    return first.to(weight.dtype), second.to(weight.dtype)
