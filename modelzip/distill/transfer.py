"""Transfer sets: the data a student learns the teacher's soft targets on.

The paper distils on the training set, on sets with classes left out (section 3: no 3s; only 7s
and 8s), and notes that soft targets need no labels. These carve such sets out of a labeled one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from ..errors import DataError


def without_classes(dataset: TensorDataset, classes: Sequence[int]) -> TensorDataset:
    """The examples of `dataset` whose label is not in `classes`."""
    return _select(dataset, ~_member(dataset, classes), f"without classes {list(classes)}")


def only_classes(dataset: TensorDataset, classes: Sequence[int]) -> TensorDataset:
    """The examples of `dataset` whose label is in `classes`."""
    return _select(dataset, _member(dataset, classes), f"of only classes {list(classes)}")


def unlabeled(dataset: TensorDataset) -> TensorDataset:
    """The inputs alone: distillation then learns from the soft targets only."""
    return TensorDataset(dataset.tensors[0])


def _member(dataset: TensorDataset, classes: Sequence[int]) -> torch.Tensor:
    if len(dataset.tensors) < 2:
        raise DataError("selecting classes needs a labeled (inputs, labels) dataset")
    return torch.isin(dataset.tensors[1], torch.as_tensor(list(classes), dtype=dataset.tensors[1].dtype))


def _select(dataset: TensorDataset, keep: torch.Tensor, what: str) -> TensorDataset:
    if not keep.any():
        raise DataError(f"the transfer set {what} is empty")
    return TensorDataset(*(t[keep] for t in dataset.tensors))
