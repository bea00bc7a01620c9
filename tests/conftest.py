from pathlib import Path

import pytest
import torch

from modelzip.data import load_data

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: real data small enough to train on in a second."""
    return load_data("digits")


@pytest.fixture(scope="session")
def _trained_lenet_state(digits, _one_thread) -> dict[str, torch.Tensor]:
    from modelzip.models import build
    from modelzip.train import TrainConfig, fit

    torch.manual_seed(0)
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    fit(model, digits.train, TrainConfig(epochs=15))
    return model.state_dict()


@pytest.fixture
def trained_lenet(digits, _trained_lenet_state):
    """LeNet-300-100 trained on the digits (94% test accuracy, in a fraction of a second); a fresh copy per test."""
    from modelzip.models import build

    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    model.load_state_dict(_trained_lenet_state)
    return model


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
