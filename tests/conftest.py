from pathlib import Path

import pytest
import torch

from modelzip.data import load_data

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: real data small enough to train on in a second."""
    return load_data("digits")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests train tiny models, where a second intra-op thread costs more in synchronisation than
    it gains (on a busy 2-core machine, 10x more): one thread makes the suite fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
