"""The sensitivity picture (as Han et al. 2015's Figure 5): score against compression value, one line per layer.

Drawn with matplotlib's Agg backend (no display needed) and written atomically as a PNG file.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..figures import save_png
from .analysis import Sensitivity


def plot_sensitivity(sens: Sensitivity, path: str | Path) -> None:
    """Each layer's score curve over its measured values, and the uncompressed baseline dashed."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for layer, curve in sens.curves.items():
        values = sorted(curve)
        axes.plot(values, [curve[v] for v in values], marker="o", ms=3, lw=1, label=layer)
    axes.axhline(sens.baseline, color="black", ls="--", lw=0.8, label=f"baseline {sens.baseline:.4f}")
    axes.set(xlabel=sens.kind, ylabel="score", title=f"sensitivity of each layer to {sens.kind}")
    axes.legend(fontsize="small")
    save_png(figure, path)
