"""split and batches: sizes, coverage, determinism, stratification."""

import pytest
import torch
from torch.utils.data import TensorDataset

from modelzip.data import batches, split
from modelzip.errors import ConfigError, DataError


def numbered(n: int = 100, classes: int = 10) -> TensorDataset:
    """Example i has feature i, so every split or batch can be traced back to its examples."""
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % classes)


def ids(dataset: TensorDataset) -> list[int]:
    return dataset.tensors[0][:, 0].long().tolist()


def test_split_sizes_coverage_and_stratification():
    rest, held_out = split(numbered(), 0.2, seed=0)
    assert (len(rest), len(held_out)) == (80, 20)
    assert sorted(ids(rest) + ids(held_out)) == list(range(100))
    assert torch.bincount(held_out.tensors[1]).tolist() == [2] * 10
    assert torch.equal(held_out.tensors[1], held_out.tensors[0][:, 0].long() % 10)  # rows stay paired


def test_split_is_deterministic_per_seed():
    data = numbered()
    assert ids(split(data, 0.2, seed=0)[1]) == ids(split(data, 0.2, seed=0)[1])
    assert ids(split(data, 0.2, seed=0)[1]) != ids(split(data, 0.2, seed=1)[1])


def test_split_without_stratification_accepts_a_singleton_class():
    data = TensorDataset(torch.arange(100.0)[:, None], torch.tensor([0] * 99 + [1]))
    with pytest.raises(DataError, match="cannot split 100 examples"):
        split(data, 0.5, seed=0)
    rest, held_out = split(data, 0.5, seed=0, stratify=False)
    assert (len(rest), len(held_out)) == (50, 50)
    assert sorted(ids(rest) + ids(held_out)) == list(range(100))


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_split_fraction_out_of_range(fraction):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        split(numbered(), fraction, seed=0)


def test_split_too_few_examples_per_class():
    with pytest.raises(DataError, match="cannot split 10 examples with fraction 0.5"):
        split(numbered(10, classes=10), 0.5, seed=0)


def test_batches_in_order_with_last_partial_batch():
    batch_list = list(batches(numbered(10), 4, shuffle=False))
    assert [len(y) for _, y in batch_list] == [4, 4, 2]
    assert [x[:, 0].long().tolist() for x, _ in batch_list] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(batch_list[1][1], torch.tensor([4, 5, 6, 7]) % 10)


def epochs(loader, n: int = 2) -> list[list[int]]:
    return [[i for x, _ in loader for i in x[:, 0].long().tolist()] for _ in range(n)]


def test_shuffled_batches_cover_every_example_once_per_epoch():
    loader = batches(numbered(10), 3, shuffle=True, seed=0)
    assert len(loader) == 4
    first, second = epochs(loader)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != list(range(10)) and first != second  # shuffled, and anew each epoch


def test_shuffled_batches_are_deterministic_per_seed():
    data = numbered(50)
    assert epochs(batches(data, 8, shuffle=True, seed=7)) == epochs(batches(data, 8, shuffle=True, seed=7))
    assert epochs(batches(data, 8, shuffle=True, seed=7)) != epochs(batches(data, 8, shuffle=True, seed=8))


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="batch_size must be at least 1, got 0"):
        batches(numbered(), 0, shuffle=False)
