"""The values a weight may take after post-training quantization: a uniform grid per channel or per group of
inputs, or a non-uniform codebook (k-means) per layer. Each is a `Quantizer` for `obs_compress`."""
from __future__ import annotations

import numpy as np
import torch

from ..quantize import lloyd_1d

SHRINK = torch.linspace(1.0, 0.5, 11, dtype=torch.float64)  # clipping ranges tried per scale (1.0: min-max)


class UniformGrid:
    """Symmetric codes in [-(2^(b-1) - 1), 2^(b-1) - 1] times a scale per output channel, or per `group_size`
    inputs of a channel. A scale is chosen when the solver reaches its first column, from the weights as
    compensated so far, clipping the range where that lowers the rounding error (an MSE search). When the
    solver takes the columns in another `order` (the largest Hessian diagonal first), the groups stay runs
    of consecutive inputs, so every scale is set up front from the original `weight` (static groups)."""

    def __init__(self, bits: int, rows: int, cols: int, group_size: int = 0, *, order: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None) -> None:
        self.qmax = 2 ** (bits - 1) - 1
        self.group = group_size if group_size and cols % group_size == 0 and group_size < cols else cols
        self.scale = torch.ones(rows, cols // self.group, dtype=torch.float64)
        self.order = order
        if order is not None:  # columns come permuted: every group's scale is set up front, on `weight`
            self.set_scales(weight)

    def set_scales(self, weight: torch.Tensor) -> None:
        """Every group's scale from `weight` at once (static groups; or a table rounded with nothing to compensate)."""
        w = weight.double()
        for g in range(self.scale.shape[1]):
            self.scale[:, g] = self._scale(w[:, g * self.group : (g + 1) * self.group])

    def __call__(self, w: torch.Tensor, j: int) -> torch.Tensor:
        if self.order is not None:
            g = int(self.order[j]) // self.group
        else:
            g = j // self.group
            if j % self.group == 0:
                self.scale[:, g] = self._scale(w[:, j : j + self.group])
        s = self.scale[:, g]
        return (w[:, j] / s).round().clamp(-self.qmax, self.qmax) * s

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        top = w.abs().amax(dim=1).clamp(min=1e-12) / self.qmax
        candidates = top[:, None] * SHRINK[None, :]  # (rows, tries)
        q = (w[:, None, :] / candidates[..., None]).round().clamp(-self.qmax, self.qmax) * candidates[..., None]
        best = (q - w[:, None, :]).pow(2).sum(-1).argmin(dim=1)
        return candidates.gather(1, best[:, None]).squeeze(1)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The integer codes of a weight this grid produced, and the scales: per channel (rows,) or (rows, groups)."""
        scale = self.scale.repeat_interleave(self.group, dim=1)
        codes = (w.double() / scale).round().clamp(-self.qmax, self.qmax).to(torch.int32)
        return codes, (self.scale[:, 0] if self.scale.shape[1] == 1 else self.scale).float()


class Codebook:
    """The nearest of a few shared values (a layer's k-means codebook, with 0 among them when pruning)."""

    def __init__(self, centroids: torch.Tensor) -> None:
        self.centroids = centroids.double().sort().values
        self.edges = (self.centroids[1:] + self.centroids[:-1]) / 2

    def __call__(self, w: torch.Tensor, j: int) -> torch.Tensor:
        return self.round(w[:, j])

    def round(self, w: torch.Tensor) -> torch.Tensor:
        """Every value of `w` replaced by its nearest codebook value."""
        return self.centroids[torch.bucketize(w.double().contiguous(), self.edges)].to(w.dtype)

    @classmethod
    def grid(cls, weight: torch.Tensor, step: float) -> Codebook:
        """The uniform grid k * unit, k = -L..L reaching the largest weight, unit = step * std(weight) (coarser
        where 127 such steps would not reach it: the file holds at most 256 values per tensor, and clipping an
        outlier weight costs more than a coarser step). Entropy-coded, a uniform grid is within a quarter bit
        of the best rate at its error, where a fixed count of k-means values (Lloyd-Max) pays for its flat
        code lengths."""
        w = weight.detach().double()
        top = float(w.abs().max()) if w.numel() else 0.0
        unit = max(step * float(w.std()) if w.numel() > 1 else 0.0, top / 127) or 1.0
        levels = max(1, int(np.ceil(top / unit - 1e-9)))
        return cls(torch.arange(-levels, levels + 1, dtype=torch.float64) * unit)

    @classmethod
    def fit(cls, weight: torch.Tensor, bits: int, importance: torch.Tensor | None = None,
            sparsity: float = 0.0) -> Codebook:
        """2^bits values by weighted 1-D k-means on `weight` (rows, cols), each input weighted by its
        `importance` (the Hessian diagonal); with pruning, one value is 0 and the rest fit the weights kept."""
        w = weight.detach().double()
        weights = None if importance is None else importance.double().clamp(min=0).expand_as(w)
        k = 2 ** bits
        if sparsity > 0:
            magnitude = w.abs().flatten().numpy()
            keep = torch.from_numpy(magnitude >= np.quantile(magnitude, min(sparsity, 1.0)))
            values = w.flatten()[keep]
            weights = None if weights is None else weights.flatten()[keep]
            k -= 1
        else:
            values = w.flatten()
        centroids = lloyd_1d(values.numpy(), k, None if weights is None else weights.flatten().numpy())
        if sparsity > 0:
            centroids = np.concatenate([[0.0], centroids])
        return cls(torch.from_numpy(centroids))
