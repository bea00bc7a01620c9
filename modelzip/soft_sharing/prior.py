"""The Gaussian-mixture prior of soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017).

    p(w) = prod_i sum_j pi_j N(w_i | mu_j, 1/lambda_j),   lambda_j ~ Gamma(alpha, beta)

Component 0 is the pruning component: its mean is fixed at 0 and its mixing proportion at pi_zero
(about 0.99, most weights should end there); the other means, log-precisions and mixing proportions
are learned with the network. Retraining under -log p pulls every weight onto one of a few narrow
components, so the weights of the trained network form a shared codebook: the component means.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Gamma:
    """Gamma(alpha, beta) hyper-prior on a precision: density proportional to l^(alpha-1) exp(-beta l).

    Its mean alpha / beta is the precision it expects; the larger alpha and beta at that mean, the
    more firmly it holds the precision there.
    """

    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(f"a Gamma hyper-prior needs alpha > 0 and beta > 0, got {self}")

    def neg_log_prob(self, log_precision: torch.Tensor) -> torch.Tensor:
        """-log Gamma(exp(log_precision) | alpha, beta), elementwise, normalising constant included."""
        a, b = self.alpha, self.beta
        return (1 - a) * log_precision + b * log_precision.exp() + math.lgamma(a) - a * math.log(b)


class GaussianMixturePrior(nn.Module):
    """A J-component Gaussian mixture over weights; component 0 is fixed at mean 0, weight pi_zero.

    Parameters: `means` (J-1,), `log_precision` (J,), `mixing_logits` (J-1,) — the non-zero
    components' share of 1 - pi_zero is softmax(mixing_logits).
    """

    def __init__(self, means: torch.Tensor, log_precision: torch.Tensor, pi_zero: float = 0.99,
                 mixing_logits: torch.Tensor | None = None, hyper_zero: Gamma = Gamma(5000.0, 2.0),
                 hyper: Gamma = Gamma(250.0, 0.1)) -> None:
        super().__init__()
        # pi_zero = 1 only when merging left the zero component alone
        if not 0.0 < pi_zero <= 1.0 or pi_zero == 1.0 and len(means) or means.dim() != 1 \
                or log_precision.shape != (len(means) + 1,):
            raise ConfigError(f"a mixture prior needs 0 < pi_zero < 1 ({pi_zero}), J-1 means ({tuple(means.shape)}) "
                              f"and J log-precisions ({tuple(log_precision.shape)})")
        self.means = nn.Parameter(means.detach().clone().float())
        self.log_precision = nn.Parameter(log_precision.detach().clone().float())
        logits = torch.zeros(len(means)) if mixing_logits is None else mixing_logits.detach().clone().float()
        self.mixing_logits = nn.Parameter(logits)
        self.register_buffer("pi_zero", torch.tensor(float(pi_zero)))
        self.hyper_zero, self.hyper = hyper_zero, hyper

    @classmethod
    def initial(cls, weights: torch.Tensor, components: int = 17, pi_zero: float = 0.99, init_std: float = 0.25,
                hyper_zero: Gamma = Gamma(5000.0, 2.0), hyper: Gamma = Gamma(250.0, 0.1)) -> GaussianMixturePrior:
        """The paper's start: J-1 means evenly over [min, max] of the (pretrained) weights, equal widths
        `init_std`, equal shares of 1 - pi_zero."""
        if components < 2:
            raise ConfigError(f"a mixture prior needs at least 2 components (zero + one), got {components}")
        if init_std <= 0:
            raise ConfigError(f"init_std must be > 0, got {init_std}")
        w = weights.detach().flatten()
        means = torch.linspace(w.min().item(), w.max().item(), components - 1)
        log_precision = torch.full((components,), -2 * math.log(init_std))
        return cls(means, log_precision, pi_zero, hyper_zero=hyper_zero, hyper=hyper)

    @property
    def components(self) -> int:
        return len(self.log_precision)

    def all_means(self) -> torch.Tensor:
        """(J,) means, the fixed zero first."""
        return torch.cat([self.means.new_zeros(1), self.means])

    def mixing(self) -> torch.Tensor:
        """(J,) mixing proportions, pi_zero first; they sum to 1."""
        return self.log_mixing().exp()

    def log_mixing(self) -> torch.Tensor:
        rest = torch.log1p(-self.pi_zero) + torch.log_softmax(self.mixing_logits, 0)
        return torch.cat([self.pi_zero.log().reshape(1), rest])

    def log_joint(self, weights: torch.Tensor) -> torch.Tensor:
        """(n, J): log pi_j + log N(w_i | mu_j, 1/lambda_j) for the n weights flattened."""
        diff = weights.reshape(-1, 1) - self.all_means()
        gamma = self.log_precision
        return self.log_mixing() + 0.5 * (gamma - LOG_2PI) - 0.5 * gamma.exp() * diff * diff

    def log_prob(self, weights: torch.Tensor) -> torch.Tensor:
        """log p(w): the sum over every element of `weights` of the log mixture density."""
        return torch.logsumexp(self.log_joint(weights), 1).sum()

    def responsibilities(self, weights: torch.Tensor) -> torch.Tensor:
        """(n, J): the posterior probability of each component for each weight."""
        return torch.softmax(self.log_joint(weights), 1)

    def neg_log_hyperprior(self) -> torch.Tensor:
        """-log of the Gamma hyper-priors on the precisions (zero component's own, then the rest)."""
        zero, rest = self.log_precision[0], self.log_precision[1:]
        return self.hyper_zero.neg_log_prob(zero) + self.hyper.neg_log_prob(rest).sum()

    def forward(self, weights: Iterable[torch.Tensor]) -> torch.Tensor:
        """The complexity loss -log p(w, lambda) of the given weight tensors (the paper's L_C, tau aside)."""
        return self.neg_log_hyperprior() - sum(self.log_prob(w) for w in weights)

    def extra_repr(self) -> str:
        return f"components={self.components}, pi_zero={self.pi_zero.item():.4g}"

