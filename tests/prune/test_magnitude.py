import pytest
import torch
from torch import nn

from modelzip.errors import ConfigError, ModelError
from modelzip.layers import strip
from modelzip.models import build
from modelzip.prune import PruneConfig, Scope, iterative_prune, keep_masks, prune_, ramp
from modelzip.train import TrainConfig, fit


def test_keep_masks_by_hand():
    scores = [torch.tensor([0.1, 0.5, 0.3, 0.9]), torch.tensor([0.2, 0.05])]
    layer = keep_masks(scores, [0.5, 0.5], Scope.LAYER)
    assert layer[0].tolist() == [False, True, False, True] and layer[1].tolist() == [True, False]
    glob = keep_masks(scores, [0.5, 0.5], Scope.GLOBAL)  # keep 3 of 6: 0.9, 0.5, 0.3
    assert glob[0].tolist() == [False, True, True, True] and glob[1].tolist() == [False, False]
    with pytest.raises(ConfigError):
        keep_masks(scores, [1.0, 0.5], Scope.LAYER)


def test_prune_per_kind_and_override():
    model = build("lenet-5")
    kept = prune_(model, {"linear": 0.9, "conv": 0.5}, layers={"fc2": 0.2})
    assert kept["conv1.weight"] == pytest.approx(0.5, abs=1e-3)
    assert kept["fc1.weight"] == pytest.approx(0.1, abs=1e-4)
    assert kept["fc2.weight"] == pytest.approx(0.8, abs=1e-3)
    assert (model.fc1.weight == 0).float().mean().item() == pytest.approx(0.9, abs=1e-4)


def test_override_errors_name_the_problem():
    model = build("lenet-300-100")
    with pytest.raises(ConfigError, match="fc1, fc2, fc3"):
        prune_(model, 0.5, layers={"conv*": 0.1})
    with pytest.raises(ModelError, match="modelzip_weights"):
        prune_(model, 0.5, layers={"act1": 0.1})


def test_pruned_weights_stay_exactly_zero_through_retraining(digits):
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    prune_(model, 0.8)
    zeros = model.fc1.weight == 0
    before = model.fc1.weight.detach().clone()
    fit(model, digits.train, TrainConfig(epochs=1, lr=1e-2, weight_decay=1e-3))
    after = model.fc1.weight.detach()
    assert torch.equal(after == 0, zeros)  # same zeros, none revived
    assert not torch.equal(after[~zeros], before[~zeros])  # the survivors did train
    strip(model)
    assert not hasattr(model.fc1, "parametrizations") and torch.equal(model.fc1.weight == 0, zeros)
    assert torch.signbit(model.fc1.weight[zeros]).sum() == 0  # +0.0, never -0.0


def test_pruning_again_only_tightens():
    model = build("lenet-300-100")
    prune_(model, 0.5)
    first = model.fc2.weight != 0
    prune_(model, 0.8)
    second = model.fc2.weight != 0
    assert not (second & ~first).any() and second.float().mean().item() == pytest.approx(0.2, abs=1e-3)


def test_iterative_schedule_reaches_target(digits):
    assert [round(ramp(0.9, s, 3), 4) for s in (1, 2, 3)] == [0.6333, 0.8667, 0.9]
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    fit(model, digits.train, TrainConfig(epochs=2))
    iterative_prune(model, digits.train, PruneConfig(sparsity=0.9, layers={"fc3": 0.5}, steps=2,
                                                     retrain=TrainConfig(epochs=1)))
    assert (model.fc1.weight == 0).float().mean().item() == pytest.approx(0.9, abs=1e-3)
    assert (model.fc3.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-2)


def test_custom_layer_opts_in_through_the_protocol():
    class Scale(nn.Module):
        modelzip_weights = ("gain",)

        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.arange(1.0, 11.0))

        def forward(self, x):
            return x * self.gain

    model = nn.Sequential(Scale())
    prune_(model, 0.3)
    assert model[0].gain.tolist() == [0, 0, 0, 4, 5, 6, 7, 8, 9, 10]
