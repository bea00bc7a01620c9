"""Activations the reference networks can use, by name (names, not classes, go into .mzip headers).

Each entry builds the activation for a layer of `features` outputs: statistics-based activations
(LMA) keep per-feature buffers, ReLU ignores the count.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..errors import ModelError
from ..registry import Registry

ACTIVATIONS: Registry[Callable[[int], nn.Module]] = Registry("activation", ModelError)


@ACTIVATIONS.register("relu")
def relu(features: int) -> nn.Module:
    return nn.ReLU()


def lma(x: torch.Tensor, slopes: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, span: float) -> torch.Tensor:
    """The LMA function (see `LMA`) of `x` (N, F, ...), for per-feature `mean` and `std` (F,).

    With S = len(slopes) >= 3 and breakpoints b_j = mean + std (-span + j 2 span / (S - 2)), j = 0..S-2:
        f(x) = k_0 (x - b_0) + sum_j (k_{j+1} - k_j) max(0, x - b_j)
    i.e. slope k_i on segment i, continuous, f(b_0) = 0. Gradients flow to `x` and `slopes` only.
    """
    shape = (-1,) + (1,) * (x.dim() - 2)  # (F, 1, ...): broadcasts along dim 1
    return _LMAFunction.apply(x, slopes, mean.view(shape), std.view(shape), span)


class _LMAFunction(torch.autograd.Function):
    """`lma` with one segment lookup per element instead of S-1 hinges, and a hand-written backward.

    Autograd through `slopes[idx]` would accumulate 10^5 gradients into S slots with index_put,
    which made a (128, 800) forward + backward 2x slower on one CPU thread and far slower on several;
    here the slopes' gradient is two per-segment sums (scatter_add).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, slopes: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                span: float) -> torch.Tensor:
        s = slopes.numel()
        scale = std * (2 * span / (s - 2))  # (F, 1, ...) the gap between breakpoints, in units of x
        u = torch.addcmul((s - 2) / 2 - mean / scale, x, 1 / scale)  # (N, F, ...) breakpoint j at u = j
        # (N, F, ...) segment 0..S-1: truncation floors values >= 0; NaN goes to segment 0 and stays
        # NaN in the output (as through ReLU) instead of becoming an invalid index
        idx = (u + 1).clamp_(0, s - 1).nan_to_num_(0.0).long()
        # segment i starts at u = max(i - 1, 0) (b_0 for segment 0) where f is 0 for i <= 1, else
        # k_1 + ... + k_{i-1}; on it f = scale (intercept_i + k_i u)
        start = torch.cat([slopes.new_zeros(2), slopes[1:-1].cumsum(0)])  # (S,)
        intercept = start - slopes * torch.arange(-1, s - 1, device=slopes.device).clamp_(min=0)  # (S,)
        flat = idx.view(-1)
        k = slopes.index_select(0, flat).view_as(idx)  # (N, F, ...) slope of each element's segment
        ctx.save_for_backward(idx, u, k, scale)
        ctx.segments = s
        return scale * torch.addcmul(intercept.index_select(0, flat).view_as(idx), k, u)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        idx, u, k, scale = ctx.saved_tensors
        grad_x = grad * k if ctx.needs_input_grad[0] else None  # df/dx is the slope of x's segment
        grad_slopes = None
        if ctx.needs_input_grad[1]:
            w, flat = grad * scale, idx.view(-1)  # (N, F, ...) df/dk_i per unit of u spent in segment i
            r = u - (idx - 1).clamp_(min=0)  # (N, F, ...) distance into the element's own segment
            inside = w.new_zeros(ctx.segments).scatter_add_(0, flat, (w * r).reshape(-1))  # (S,)
            total = w.new_zeros(ctx.segments).scatter_add_(0, flat, w.reshape(-1))  # (S,)
            # an element of segment m crossed each segment 0 < i < m whole: width 1 in units of u
            beyond = total.flip(0).cumsum(0).flip(0)[2:]  # (S-2,) sums over segments > i, i = 1..S-2
            grad_slopes = inside + F.pad(beyond, (1, 1))
        return grad_x, grad_slopes, None, None, None


@ACTIVATIONS.register("lma")
class LMA(nn.Module):
    """Light Multi-segment Activation: a continuous piecewise-linear activation with `segments` pieces.

    Xu, Ke, Zhang, Bian & Liu, "Light Multi-segment Activation for Model Compression", AAAI 2020
    (arXiv:1907.06870). With slopes k_0..k_{S-1} and, per feature, breakpoints
        b_j = mean + std (-span + j 2 span / (S - 2)),  j = 0..S-2,
        f(x) = k_0 (x - b_0) + sum_j (k_{j+1} - k_j) max(0, x - b_j)
    (slope k_i on segment i, continuous, so intercepts follow from the slopes; f(b_0) = 0).
    Why statistics: a small student has few units, so each should cut its inputs into many linear
    regions; placing breakpoints at mean + c std puts every segment where the inputs actually are,
    so S shared slopes (the only parameters: S per layer) buy S linear regions per unit.

    `statistics="layer"` (default) takes one mean and std over the whole input, so the breakpoints are
    common to the layer and each unit's bias places its input relative to them, as a ReLU unit's bias
    sets its threshold; `"feature"` takes them per feature (dim 1), which pins every unit's kinks to
    the same quantiles of its own input and was 1.5 points worse on MNIST students (94.2% vs 92.7%,
    30-30 MLP, 10 epochs). Like BatchNorm, training uses the batch's mean and (biased) variance,
    detached (no gradient through them), and updates `running_mean` / `running_var` (unbiased) by
    `momentum`; eval mode uses the running values. Inputs: (N, F) or (N, F, H, W) etc.
    """

    def __init__(self, num_features: int, segments: int = 8, span: float = 2.0, momentum: float = 0.1,
                 eps: float = 1e-5, statistics: str = "layer") -> None:
        super().__init__()
        if segments < 3 or span <= 0 or not 0 < momentum <= 1 or statistics not in ("layer", "feature"):
            raise ModelError(f"LMA needs segments >= 3, span > 0, 0 < momentum <= 1 and statistics 'layer' or "
                             f"'feature', got segments={segments}, span={span}, momentum={momentum}, "
                             f"statistics={statistics!r}")
        self.num_features, self.segments, self.span, self.statistics = num_features, segments, span, statistics
        self.momentum, self.eps = momentum, eps
        # slopes 0 -> 1: flat left of b_0, identity far right, convex in between, a smoothed ReLU,
        # so a network starts where ReLU networks train well and the slopes learn from there
        self.slopes = nn.Parameter(torch.linspace(0.0, 1.0, segments))  # (S,)
        size = num_features if statistics == "feature" else 1
        self.register_buffer("running_mean", torch.zeros(size))  # (F,) or (1,)
        self.register_buffer("running_var", torch.ones(size))  # (F,) or (1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"LMA({self.num_features}) expects inputs (N, {self.num_features}, ...), "
                             f"got {tuple(x.shape)}")
        if self.training:
            mean, var = self._batch_stats(x)
        else:
            mean, var = self.running_mean, self.running_var
        return lma(x, self.slopes, mean, (var + self.eps).sqrt(), self.span)

    @torch.no_grad()
    def _batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased variance of `x` (per feature or over all), and the running averages' update."""
        dims = [0, *range(2, x.dim())] if self.statistics == "feature" else list(range(x.dim()))
        n = x.numel() // self.running_mean.numel()
        if n < 2:
            raise ValueError(f"LMA needs more than one value per statistic in training, got {tuple(x.shape)}")
        mean = x.mean(dims).view(-1)  # (F,) or (1,)
        var = (x - mean.view((-1,) + (1,) * (x.dim() - 2))).square().mean(dims).view(-1)  # two-pass: accurate
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(var * (n / (n - 1)), self.momentum)
        return mean, var

    def extra_repr(self) -> str:
        return f"{self.num_features}, segments={self.segments}, span={self.span}, statistics={self.statistics}"
