"""`batches`: a DataLoader that slices whole batches out of in-memory tensors; `calibration_batches`: the
input batches of whatever a user hands in as calibration data.

The default DataLoader calls __getitem__ once per example and then collates: for tensors that
already sit in memory that overhead dominates an epoch of a small model. Sampling batches of
indices and indexing the tensors once per batch gives the same batches several times faster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from modelzip.errors import ConfigError


def batches(dataset: TensorDataset, batch_size: int, *, shuffle: bool, seed: int | None = None) -> DataLoader:
    """Yield [images, labels] batches; the last, smaller batch is kept.

    With `shuffle`, each epoch draws a new order from a generator seeded with `seed`, so the
    sequence of epochs is reproducible (unseeded when `seed` is None). Without it, `seed` is unused.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if shuffle:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        order = RandomSampler(dataset, generator=generator)
    else:
        order = SequentialSampler(dataset)
    # batch_size=None turns off per-example collation: dataset[list_of_indices] already is a batch.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False))


Calibration = torch.Tensor | TensorDataset | Iterable[object]  # inputs (N, ...), a data set, or batches


def calibration_batches(calibration: Calibration, batch_size: int) -> Iterator[torch.Tensor]:
    """The input tensors of `calibration`, batch by batch, on the CPU.

    Inputs (N, ...) are split into `batch_size` rows, a TensorDataset gives its first tensor, and any other
    iterable (a DataLoader) gives tensors or (inputs, labels) pairs, of which the inputs are taken.
    """
    if isinstance(calibration, TensorDataset):
        calibration = calibration.tensors[0]
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() < 1 or not len(calibration):
            raise ConfigError("calibration inputs must be a non-empty batch (N, ...), "
                              f"got shape {tuple(calibration.shape)}")
        return (x.cpu() for x in calibration.split(batch_size))
    return (_inputs(item) for item in calibration)


def _inputs(item: object) -> torch.Tensor:
    """The input tensor of one calibration batch: the tensor itself, or the first of (inputs, labels)."""
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    if not isinstance(item, torch.Tensor):
        raise ConfigError(f"calibration batches must be tensors or (inputs, labels) pairs, got {type(item).__name__}")
    return item.cpu()
