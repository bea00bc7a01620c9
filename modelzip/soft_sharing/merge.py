"""After retraining: merge components that have become alike, then set each weight to its component's mean.

Merging by KL divergence is the paper's post-processing step: two components that describe the
same cluster of weights would otherwise cost two codebook entries for one value.
"""
from __future__ import annotations

import torch

from .prior import GaussianMixturePrior


def kl_divergence(mean_p: torch.Tensor, var_p: torch.Tensor, mean_q: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, var_p) || N(mean_q, var_q)), elementwise (broadcasting)."""
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mean_p - mean_q) ** 2) / var_q - 1)


@torch.no_grad()
def merge_components(prior: GaussianMixturePrior, threshold: float) -> GaussianMixturePrior:
    """A new prior in which, repeatedly, the two components of smallest symmetric KL divergence
    (the mean of both directions) are merged while it is below `threshold`.

    A merged component keeps the summed mixing proportion and the pair's first two moments; merged
    into component 0 it keeps the zero mean, so pruned weights stay exactly zero.
    """
    mix = prior.mixing().double().tolist()
    means = prior.all_means().double().tolist()
    var = (-prior.log_precision).exp().double().tolist()
    while len(mix) > 1:
        m, v = torch.tensor(means), torch.tensor(var)
        kl = kl_divergence(m[:, None], v[:, None], m[None, :], v[None, :])
        sym = ((kl + kl.T) / 2).fill_diagonal_(float("inf"))  # (J, J), no self-pairs
        i, j = sorted(divmod(int(sym.argmin()), len(mix)))
        if sym[i, j] >= threshold:
            break
        total = mix[i] + mix[j]
        second = (mix[i] * (var[i] + means[i] ** 2) + mix[j] * (var[j] + means[j] ** 2)) / total
        mean = 0.0 if i == 0 else (mix[i] * means[i] + mix[j] * means[j]) / total
        mix[i], means[i], var[i] = total, mean, second - mean ** 2
        del mix[j], means[j], var[j]
    rest = torch.tensor(mix[1:])
    return GaussianMixturePrior(
        torch.tensor(means[1:]), -torch.tensor(var).log(), pi_zero=min(mix[0], 1.0),
        mixing_logits=rest.log(), hyper_zero=prior.hyper_zero, hyper=prior.hyper)


@torch.no_grad()
def assign(weights: list[torch.Tensor], prior: GaussianMixturePrior) -> list[torch.Tensor]:
    """The index of each element's most responsible component, shaped like each tensor (long).

    Weights that are exactly zero (already pruned) stay with the zero component, index 0.
    """
    codes = []
    for w in weights:
        flat = w.detach().reshape(-1)
        component = prior.log_joint(flat).argmax(1)
        component[flat == 0] = 0
        codes.append(component.view_as(w))
    return codes


@torch.no_grad()
def quantize_to_means_(weights: list[torch.Tensor], prior: GaussianMixturePrior) -> list[torch.Tensor]:
    """Set every element of `weights` (in place) to the mean of its most responsible component.

    The values written are the prior's means bit for bit (the zero component's is +0.0), so the
    tensors' codebook is the mixture's means. Returns the component indices (see `assign`).
    """
    means = prior.all_means().detach()
    codes = assign(weights, prior)
    for w, code in zip(weights, codes):
        w.copy_(means[code].to(w.dtype))
    return codes
