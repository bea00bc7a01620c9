"""Quantization-aware training: weights are fake-quantized in every forward pass and train through it.

`prepare_qat` attaches a parametrization to each compressible weight, `modelzip.train.fit` trains the
model as usual, and `modelzip.layers.strip` bakes the quantized values into plain weights. Rounding
has zero gradient almost everywhere, so every method here uses a straight-through estimator (STE,
Bengio et al. 2013): the backward pass treats the quantizer as the identity where the weight lies
inside its clipping range and as a constant (zero gradient) outside (Jacob et al. 2018).

The forward value is the quantized weight exactly (not x + (q(x) - x), which can differ from q(x) in
the last bit), so the stripped weights equal `fake_quantize` of the trained weights bit for bit.
Prune masks are honoured: the Mask parametrization runs first, and every quantizer maps 0 to 0.
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..layers import per_target, targets
from .pq import refuse_parametrized
from .uniform import (Observer, QuantSpec, along, dequantize, fake_quantize, flatten_channels, granular, observer,
                      qparams, qrange, quantize)


class QATMethod(str, Enum):
    UNIFORM = "uniform"  # fake quantization on the observed range (Jacob et al. 2018)
    LSQ = "lsq"  # the step size is learned (Esser et al. 2020)
    BINARY = "binary"  # alpha * sign(w), 1 bit (BinaryConnect / XNOR-Net)
    TERNARY = "ternary"  # {-alpha, 0, alpha}, 2 bits (Li & Liu 2016, TWN)


def straight_through(x: torch.Tensor, value: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass; d out / d x = 1 where `inside`, 0 elsewhere (the STE).

    value + (x - x.detach()) * inside adds exactly zero (x - x is 0 for finite x), so the result is
    `value` itself, with -0.0 normalised to +0.0.
    """
    return value.detach() + (x - x.detach()) * inside


def fake_quantize_ste(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
                      ) -> torch.Tensor:
    """fake_quantize(x) whose gradient passes where qmin <= x / s + z <= qmax (the clipping range) and is 0 outside."""
    qmin, qmax = qrange(spec)
    codes = x.detach() / along(scale, x, spec) + along(zero_point, x, spec)
    return straight_through(x, fake_quantize(x.detach(), scale, zero_point, spec), (codes >= qmin) & (codes <= qmax))


class Codes(NamedTuple):
    """A weight as integer codes: value = (codes - zero_point) * scale, per channel along axis 0 or per tensor."""

    codes: torch.Tensor  # int32, the weight's shape
    scale: torch.Tensor  # () or (C,)
    zero_point: torch.Tensor  # int32, the shape of scale
    bits: int  # the code width: 1 for binary, 2 for ternary


def _no_zero(scale: torch.Tensor) -> torch.Tensor:
    return torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)


class FakeQuant(nn.Module):
    """Parametrization: uniform fake quantization on the range the observer finds in the current weight.

    The range follows the weight as it trains (re-observed every forward pass, as PyTorch's QAT weight
    observers do); with minmax nothing is clipped, with percentile or mse the clipped tail gets no gradient.
    """

    def __init__(self, spec: QuantSpec, observe: Observer | str = Observer.MINMAX) -> None:
        super().__init__()
        self.spec, self.observe = spec, observer(observe)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        lo, hi = self.observe(weight.detach(), self.spec)
        scale, zero_point = qparams(weight.detach(), self.spec, lo=lo, hi=hi)
        return fake_quantize_ste(weight, scale, zero_point, self.spec)

    def encode(self, weight: torch.Tensor) -> Codes:
        """The codes whose dequantized value is this forward's value, bit for bit."""
        lo, hi = self.observe(weight, self.spec)
        scale, zero_point = qparams(weight, self.spec, lo=lo, hi=hi)
        return Codes(quantize(weight, scale, zero_point, self.spec), scale, zero_point, self.spec.bits)


class LSQ(nn.Module):
    """Parametrization: Learned Step Size Quantization (Esser et al. 2020), symmetric, z = 0.

    w' = clamp(round(w / s), qmin, qmax) * s with the step s a Parameter, initialised to
    2 * mean|w| / sqrt(qmax). Its gradient is the paper's, with the STE on round:
        d w' / d s = round(w / s) - w / s  inside the range,   the clamped code qmin or qmax outside,
    scaled by g = 1 / sqrt(n * qmax), n the number of weights sharing the step, which keeps the step's
    updates in proportion to the weights' ones. The weights get the STE gradient inside the range.
    """

    def __init__(self, weight: torch.Tensor, spec: QuantSpec) -> None:
        super().__init__()
        if not spec.symmetric:
            raise ConfigError("LSQ learns the step of a symmetric quantizer; use QuantSpec(symmetric=True)")
        self.spec = spec
        rows = flatten_channels(weight.detach(), spec)  # (C, n) or (1, n)
        qmax = qrange(spec)[1]
        step = 2 * rows.abs().mean(1) / qmax ** 0.5
        self.step = nn.Parameter(step if spec.per_channel else step.reshape(()))
        self.grad_scale = 1 / (rows.shape[1] * qmax) ** 0.5

    def _step(self) -> torch.Tensor:
        # a step pushed to <= 0 would divide by zero; the smallest normal float keeps codes finite
        return self.step.clamp_min(torch.finfo(self.step.dtype).tiny)

    def encode(self, weight: torch.Tensor) -> Codes:
        step = self._step().detach()
        return Codes(quantize(weight, step, _no_zero(step), self.spec), step, _no_zero(step), self.spec.bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.spec)
        step = self._step()
        zero = _no_zero(step)
        q = quantize(weight.detach(), step.detach(), zero, self.spec)
        ratio = weight.detach() / along(step.detach(), weight, self.spec)
        inside = (ratio >= qmin) & (ratio <= qmax)
        d_step = (q - inside * ratio) * self.grad_scale
        s = along(step, weight, self.spec)
        value = straight_through(weight, dequantize(q, step.detach(), zero, self.spec), inside)
        return value + (s - s.detach()) * d_step  # adds exactly 0; carries d_step to the step


def _nonzero_mean_abs(weight: torch.Tensor, keep: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """mean |w| over the entries where `keep`, per channel (C,) or per tensor (1,); 0 where none are kept."""
    rows, kept = flatten_channels(weight.abs(), spec), flatten_channels(keep, spec)
    return (rows * kept).sum(1) / kept.sum(1).clamp_min(1)


class BinaryWeights(nn.Module):
    """Parametrization: w' = alpha * sign(w), alpha = mean |w| per channel (or tensor).

    sign(w) is BinaryConnect's (Courbariaux et al. 2015); alpha = mean |w| is XNOR-Net's optimal scale
    (Rastegari et al. 2016). The mean is over the nonzero (unpruned) weights, and sign(0) = 0 keeps
    pruned weights at zero. The STE gradient is clipped to |w| <= 1, BinaryConnect's hard-tanh
    derivative: a weight far beyond +-1 no longer changes its sign, so it stops getting updates.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach()
        alpha = _nonzero_mean_abs(w, w != 0, self.spec)
        return straight_through(weight, along(alpha, w, self.spec) * torch.sign(w), w.abs() <= 1)

    def encode(self, weight: torch.Tensor) -> Codes:
        """Codes sign(w) in {-1, +1} (0 where pruned) with scale alpha: 1 bit a weight."""
        alpha = granular(_nonzero_mean_abs(weight, weight != 0, self.spec), self.spec)
        return Codes(torch.sign(weight).to(torch.int32), alpha, _no_zero(alpha), 1)


class TernaryWeights(nn.Module):
    """Parametrization: Ternary Weight Networks (Li & Liu 2016), w' in {-alpha, 0, +alpha}.

    The threshold delta = 0.7 * mean |w| approximates the optimal one for Gaussian/uniform weights;
    w' = alpha * sign(w) where |w| > delta, 0 elsewhere, with alpha = mean |w| over |w| > delta (the
    optimal scale given the threshold). Means are per channel (or tensor) over the nonzero weights,
    so pruned zeros neither dilute delta nor leave zero. The STE passes every gradient (as in TWN).
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach()
        delta = along(0.7 * _nonzero_mean_abs(w, w != 0, self.spec), w, self.spec)
        large = w.abs() > delta
        alpha = along(_nonzero_mean_abs(w, large, self.spec), w, self.spec)
        return straight_through(weight, alpha * torch.sign(w) * large, torch.ones_like(large))

    def encode(self, weight: torch.Tensor) -> Codes:
        """Codes in {-1, 0, +1} with scale alpha: 2 bits a weight (less once entropy-coded)."""
        delta = along(0.7 * _nonzero_mean_abs(weight, weight != 0, self.spec), weight, self.spec)
        large = weight.abs() > delta
        alpha = granular(_nonzero_mean_abs(weight, large, self.spec), self.spec)
        return Codes((torch.sign(weight) * large).to(torch.int32), alpha, _no_zero(alpha), 2)


def prepare_qat(model: nn.Module, spec: QuantSpec | Mapping[str, QuantSpec] = QuantSpec(), *,
                layers: Mapping[str, QuantSpec] | None = None, method: QATMethod | str = QATMethod.UNIFORM,
                observe: Observer | str = Observer.MINMAX) -> dict[str, nn.Module]:
    """Attach a fake quantizer to every compressible weight of `model`, in place.

    `spec` is one QuantSpec or one per kind ({"linear": ..., "conv": ...}); `layers` overrides by
    module-name pattern. Binary and ternary use only the granularity of the spec (per_channel, axis).
    `observe` picks the uniform method's range. A weight may already be pruned (its Mask stays and
    runs first), but not otherwise parametrized. Returns the quantizer of each weight, by name.
    """
    try:
        method = QATMethod(method)
    except ValueError:
        raise ConfigError(f"unknown QAT method {method!r} (known: {', '.join(m.value for m in QATMethod)})") from None
    found = targets(model)
    wanted = per_target(model, found, spec, layers)
    attached = {}
    for t in found:
        refuse_parametrized(t, "QAT", pruned_ok=True)
        if method is QATMethod.LSQ:
            quantizer: nn.Module = LSQ(t.weight.detach(), wanted[t])
        elif method is QATMethod.UNIFORM:
            quantizer = FakeQuant(wanted[t], observe)
        else:
            quantizer = (BinaryWeights if method is QATMethod.BINARY else TernaryWeights)(wanted[t])
        parametrize.register_parametrization(t.module, t.param, quantizer)
        attached[f"{t.name}.{t.param}"] = quantizer
    return attached
