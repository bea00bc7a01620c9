"""Pictures: matplotlib with the Agg backend (no display needed), saved atomically as PNG files."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_write  # noqa: E402


def save_png(figure: plt.Figure, path: str | Path) -> None:
    """Write `figure` to `path` as a PNG (a crash never leaves half a picture) and close it."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
