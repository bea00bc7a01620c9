"""The pictures of soft weight-sharing (the paper's Figure 1): where each weight went, and the mixture.

Drawn with matplotlib's Agg backend (no display needed) and written atomically as PNG files.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ..figures import save_png
from .retrain import SoftSharing

MAX_POINTS = 60_000  # a scatter of every weight of a large model says no more and takes minutes


def plot_joint(run: SoftSharing, path: str | Path) -> None:
    """Each weight before (x) against after (y) retraining under the prior; the learned components'
    means as lines, their +-2 std as bands, and the merged means (the codebook) in bold."""
    pick = _sample(len(run.pretrained))
    figure, axes = plt.subplots(figsize=(7, 7))
    means, std = run.prior.all_means().detach(), (-0.5 * run.prior.log_precision.detach()).exp()
    for mean, s in zip(means.tolist(), std.tolist()):
        axes.axhspan(mean - 2 * s, mean + 2 * s, color="tab:blue", alpha=0.08, lw=0)
    for mean in run.merged.all_means().tolist():
        axes.axhline(mean, color="tab:red", lw=0.8)
    axes.scatter(run.pretrained[pick], run.retrained[pick], s=1, alpha=0.3, color="black", rasterized=True)
    axes.set(xlabel="weight before retraining", ylabel="weight after retraining (red: shared values)",
             title=f"soft weight-sharing: {len(run.pretrained):,} weights, {len(run.merged.all_means())} values")
    save_png(figure, path)


def plot_mixture(run: SoftSharing, path: str | Path) -> None:
    """The histogram of the retrained weights (log counts) with the learned mixture density over it."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    weights = run.retrained
    counts, edges, _ = axes.hist(weights.numpy(), bins=200, color="gray", log=True, label="weights")
    grid = torch.linspace(float(edges[0]), float(edges[-1]), 2000)
    with torch.no_grad():
        density = torch.logsumexp(run.prior.log_joint(grid), 1).exp()
    axes.plot(grid, density * len(weights) * (edges[1] - edges[0]), color="tab:blue", lw=1, label="mixture prior")
    axes.set_ylim(0.5, max(counts.max(), 1) * 2)
    axes.set(xlabel="weight", ylabel="count", title="retrained weights and the learned Gaussian mixture")
    axes.legend()
    save_png(figure, path)


def write_plots(run: SoftSharing, folder: str | Path, stem: str) -> list[Path]:
    """Both pictures as `<stem>-joint.png` and `<stem>-mixture.png` in `folder`; returns the paths."""
    paths = [Path(folder) / f"{stem}-joint.png", Path(folder) / f"{stem}-mixture.png"]
    plot_joint(run, paths[0])
    plot_mixture(run, paths[1])
    return paths


def _sample(n: int) -> torch.Tensor:
    if n <= MAX_POINTS:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:MAX_POINTS]

