"""Tucker-2 decomposition of a Conv2d kernel into 1x1 -> kxk -> 1x1 convolutions (Kim et al. 2016).

"Compression of deep convolutional neural networks for fast and low power mobile applications"
decomposes a kernel K (out, in, kh, kw) only along its two channel modes:

    K[o, i, h, w] ~= sum_{a, b} U_out[o, a] U_in[i, b] C[a, b, h, w]

with U_out (out, r_out) and U_in (in, r_in) orthonormal and the core C (r_out, r_in, kh, kw). Applied to
an input, that is a 1x1 conv by U_in^T (in -> r_in channels), the kh x kw conv by C with the layer's
stride and padding (r_in -> r_out), and a 1x1 conv by U_out (r_out -> out). The paper picks ranks by
variational Bayesian matrix factorization; here they come from a parameter budget or energy (`ranks`).
The decomposition is tensorly's higher-order orthogonal iteration (HOOI), started from the HOSVD.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .ranks import check_ranks


def tucker2_factors(weight: torch.Tensor, ranks: Sequence[int]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first (r_in, in, 1, 1), core (r_out, r_in, kh, kw), last (out, r_out, 1, 1)) for `ranks` = (r_out, r_in).

    Convolving with first, then core (with the original stride/padding/dilation), then last equals
    convolving with the Tucker-2 approximation of `weight`; at full ranks (out, in) that is `weight`.
    Computed in float64 with tensorly's pytorch backend, returned in the weight's dtype.
    """
    # imported here: tensorly takes half a second to import, and only this function needs it
    import tensorly
    from tensorly.decomposition import partial_tucker

    r_out, r_in = check_ranks(weight.shape, ranks)
    # torch, not numpy: it runs on the weight's device and obeys torch.set_num_threads (numpy's BLAS
    # spawning a thread per core made the SVDs 30x slower on a busy machine)
    with tensorly.backend_context("pytorch"):
        # tensorly 0.10 returns ((core, factors), reconstruction errors)
        (core, (u_out, u_in)), _ = partial_tucker(weight.detach().to(torch.float64), rank=[r_out, r_in],
                                                  modes=[0, 1], random_state=0)
    first = u_in.T[:, :, None, None]  # (r_in, in, 1, 1)
    last = u_out[:, :, None, None]  # (out, r_out, 1, 1)
    return first.contiguous().to(weight.dtype), core.contiguous().to(weight.dtype), last.contiguous().to(weight.dtype)
