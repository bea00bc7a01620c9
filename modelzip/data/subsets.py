"""`split`: carve a held-out set (validation, calibration) out of a dataset, reproducibly."""

from __future__ import annotations

import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from modelzip.errors import ConfigError, DataError


def sample(dataset: TensorDataset, examples: int, *, seed: int) -> TensorDataset:
    """At most `examples` examples, drawn without replacement by a seeded permutation (data may be sorted by class)."""
    if examples >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:examples]
    return TensorDataset(*(t[order] for t in dataset.tensors))


def split(
    dataset: TensorDataset, fraction: float, *, seed: int, stratify: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """Split into (rest, held_out) with `fraction` of the examples held out.

    Stratified by the last tensor (the labels) by default, so a small validation set still
    has every class in proportion; the same seed always gives the same split.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"split fraction must be strictly between 0 and 1, got {fraction}")
    labels = dataset.tensors[-1]
    try:
        rest, held_out = train_test_split(
            torch.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels if stratify else None
        )
    except ValueError as e:  # too few examples overall or in some class for this fraction
        raise DataError(f"cannot split {len(labels)} examples with fraction {fraction}: {e}") from e
    return TensorDataset(*(t[rest] for t in dataset.tensors)), TensorDataset(*(t[held_out] for t in dataset.tensors))
