"""Uniform (affine) quantization primitives: ranges, scales and zero points, (fake) quantization, observers.

A real value x maps to the integer code q and back (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference"; the layout of pytorch/ao's
quant_primitives):

    q = clamp(round(x / s) + z, qmin, qmax)        x' = (q - z) * s

with step (scale) s > 0 and integer zero point z. `round` is half to even, as torch.round. Within the
range the error |x' - x| is at most s/2. Scales and zero points are 0-d tensors per tensor, or (C,)
tensors per channel along `axis` (the output channels of a Linear or Conv weight: each gets its own
range, which matters when channel magnitudes differ by orders). Codes are int32 tensors.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from ..errors import ConfigError, DataError

Range = tuple[torch.Tensor, torch.Tensor]
RangeFn = Callable[[torch.Tensor, "QuantSpec"], Range]


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor: bit width, symmetric (signed, z = 0) or asymmetric, granularity."""

    bits: int = 8  # 8 bits keep accuracy on most networks without retraining; 4 and below want QAT
    symmetric: bool = True  # weights are centred on 0: z = 0 saves the zero-point arithmetic
    per_channel: bool = False
    axis: int = 0  # the channel axis for per_channel: output channels of Linear/Conv weights

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"uniform quantization takes bits in 2..8, got {self.bits!r}")


def qrange(spec: QuantSpec) -> tuple[int, int]:
    """(qmin, qmax): symmetric [-(2^(b-1) - 1), 2^(b-1) - 1], asymmetric [0, 2^b - 1].

    The symmetric range is restricted (no -2^(b-1)): it is then symmetric itself, so -x quantizes to
    -q and zero is a code, at the cost of one level.
    """
    if spec.symmetric:
        return -(2 ** (spec.bits - 1) - 1), 2 ** (spec.bits - 1) - 1
    return 0, 2 ** spec.bits - 1


def flatten_channels(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """`x` as rows to reduce over: (C, numel / C) per channel along `spec.axis`, (1, numel) per tensor."""
    if not spec.per_channel:
        return x.reshape(1, -1)
    if not -x.dim() <= spec.axis < x.dim():
        raise ConfigError(f"channel axis {spec.axis} is out of range for a tensor of shape {tuple(x.shape)}")
    return x.movedim(spec.axis, 0).reshape(x.shape[spec.axis], -1)


def along(t: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A per-channel (C,) tensor shaped to broadcast against `x` along `spec.axis`; per tensor, as is."""
    if not spec.per_channel:
        return t
    shape = [1] * x.dim()
    shape[spec.axis] = -1
    return t.reshape(shape)


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    """DataError naming how many NaN and infinite values `x` holds, if any: they have no code."""
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    if nan or inf:
        raise DataError(f"{what} of shape {tuple(x.shape)} holds {nan} NaN and {inf} infinite values; "
                        "quantization needs finite values")


def qparams(x: torch.Tensor, spec: QuantSpec, *, lo: torch.Tensor | float | None = None,
            hi: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) mapping the range [lo, hi] (default: min/max of `x`) onto the codes.

    Symmetric: s = max(|lo|, |hi|) / qmax, z = 0. Asymmetric: the range is first extended to hold 0
    (so 0, the value of padding and pruned weights, is exact), s = (hi - lo) / (qmax - qmin),
    z = clamp(round(qmin - lo / s), qmin, qmax). A zero range (an all-zero tensor or channel) gets
    s = 1: every value is 0 and maps to z exactly, with no division by zero.
    """
    if (lo is None) != (hi is None):
        raise ConfigError("give both lo and hi, or neither (to use the min/max of the tensor)")
    if lo is None:
        lo, hi = minmax_range(x, spec)
    lo, hi = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (lo, hi))
    check_finite(lo, "quantization range lo")
    check_finite(hi, "quantization range hi")
    if bool((lo > hi).any()):
        raise ConfigError(f"quantization range needs lo <= hi, got lo={lo.tolist()} hi={hi.tolist()}")
    qmin, qmax = qrange(spec)
    if spec.symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if spec.symmetric:
        return scale, torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    return scale, torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int32)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes q = clamp(round(x / s) + z, qmin, qmax), int32, same shape as `x`."""
    check_finite(x, "input")
    return _quantize(x, scale, zero_point, spec)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Real values x' = (q - z) * s, in the dtype of `scale`."""
    return (q - along(zero_point, q, spec)).to(scale.dtype) * along(scale, q, spec)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """dequantize(quantize(x)): `x` rounded onto the quantization grid but kept in floating point."""
    return dequantize(quantize(x, scale, zero_point, spec), scale, zero_point, spec)


def _quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    qmin, qmax = qrange(spec)
    q = torch.round(x / along(scale, x, spec)) + along(zero_point, x, spec)
    return q.clamp(qmin, qmax).to(torch.int32)


# --- observers: the range [lo, hi] to quantize, per tensor (0-d) or per channel ((C,) tensors) ---

class Observer(str, Enum):
    MINMAX = "minmax"  # the whole range: no clipping, but one outlier stretches every step
    PERCENTILE = "percentile"  # drops the extreme tail (TensorRT's percentile calibration)
    MSE = "mse"  # the clipping that minimises the rounding + clipping error


def granular(t: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A per-row statistic as the spec's granularity: (C,) per channel, 0-d per tensor."""
    return t if spec.per_channel else t.reshape(())


def minmax_range(x: torch.Tensor, spec: QuantSpec) -> Range:
    """(min, max) of `x`, per tensor or per channel."""
    check_finite(x, "input")
    rows = flatten_channels(x, spec)
    return granular(rows.amin(1), spec), granular(rows.amax(1), spec)


def percentile_range(x: torch.Tensor, spec: QuantSpec, percentile: float = 99.99) -> Range:
    """The range holding `percentile` % of the values: outliers beyond it are clipped.

    Symmetric: (-a, a) with a the percentile of |x| (the range is symmetric anyway); asymmetric: the
    (100 - p)-th and p-th percentiles of x. Percentiles interpolate linearly between values.
    """
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    check_finite(x, "input")
    rows = flatten_channels(x, spec).to(torch.promote_types(x.dtype, torch.float32))  # quantile needs float32+
    p = percentile / 100
    if spec.symmetric:
        a = torch.quantile(rows.abs(), p, dim=1).to(x.dtype)
        return granular(-a, spec), granular(a, spec)
    lo, hi = torch.quantile(rows, torch.tensor([1 - p, p], device=x.device), dim=1).to(x.dtype)
    return granular(lo, spec), granular(hi, spec)


def mse_range(x: torch.Tensor, spec: QuantSpec, grid: int = 100) -> Range:
    """The clipping range minimising the mean squared error of fake_quantize, by direct search.

    Candidates are the min/max range shrunk by f = k / grid, k = grid, ..., 1, each end towards zero
    (the idea of PyTorch's HistogramObserver and TensorRT's calibration, searched on the values
    themselves rather than a histogram); each channel keeps its best f, the widest on ties. f = 1 is
    a candidate, so the error is never above that of minmax_range.
    """
    if grid < 1:
        raise ConfigError(f"mse_range needs grid >= 1 candidates, got {grid}")
    lo, hi = minmax_range(x, spec)
    best_lo, best_hi, best_err = lo, hi, torch.full(lo.shape, float("inf"), dtype=x.dtype, device=x.device)
    for k in range(grid, 0, -1):
        cand_lo, cand_hi = lo * (k / grid), hi * (k / grid)
        scale, zero_point = qparams(x, spec, lo=cand_lo, hi=cand_hi)
        q = _quantize(x, scale, zero_point, spec)
        err = granular(flatten_channels(dequantize(q, scale, zero_point, spec) - x, spec).square().mean(1), spec)
        better = err < best_err
        best_lo, best_hi = torch.where(better, cand_lo, best_lo), torch.where(better, cand_hi, best_hi)
        best_err = torch.where(better, err, best_err)
    return best_lo, best_hi


OBSERVERS: dict[Observer, RangeFn] = {
    Observer.MINMAX: minmax_range,
    Observer.PERCENTILE: percentile_range,
    Observer.MSE: mse_range,
}


def observer(name: Observer | str) -> RangeFn:
    """The range function of an observer by name ("minmax", "percentile", "mse"), with its defaults."""
    try:
        return OBSERVERS[Observer(name)]
    except ValueError:
        known = ", ".join(o.value for o in Observer)
        raise ConfigError(f"unknown observer {name!r} (known: {known})") from None
