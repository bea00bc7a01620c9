"""`batches`: a DataLoader that slices whole batches out of in-memory tensors.

The default DataLoader calls __getitem__ once per example and then collates: for tensors that
already sit in memory that overhead dominates an epoch of a small model. Sampling batches of
indices and indexing the tensors once per batch gives the same batches several times faster.
"""

from __future__ import annotations

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
