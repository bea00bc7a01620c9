from pathlib import Path

import pytest
import torch

from modelzip.data import load_data

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: real data small enough to train on in a second."""
    return load_data("digits")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
