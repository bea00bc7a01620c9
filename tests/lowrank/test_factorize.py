from collections import OrderedDict

import pytest
import torch
from torch import nn

import modelzip
from modelzip.errors import ConfigError, ModelError
from modelzip.layers import parameter_count, strip
from modelzip.lowrank import DEFAULT_RATIO, LowRankConfig, factorize_, low_rank
from modelzip.models import apply_edits, arch_of, build, rebuild
from modelzip.prune import prune_
from modelzip.train import TrainConfig


def test_lenet_300_100_fc_layers_keep_a_quarter():
    model = build("lenet-300-100")
    dense = sum(p.numel() for name in ("fc1", "fc2") for p in getattr(model, name).parameters())
    assert dense == 265_600
    assert factorize_(model, layers={"fc1": 0.25, "fc2": 0.25}) == {"fc1": (54,), "fc2": (18,)}
    assert (model.fc1.first.weight.shape, model.fc1.second.weight.shape) == ((54, 784), (300, 54))
    assert model.fc1.first.bias is None and model.fc1.second.bias.shape == (300,)
    assert isinstance(model.fc3, nn.Linear)  # not named, no default: left alone
    # fc1: 54 * 1,084 + 300 = 58,836; fc2: 18 * 400 + 100 = 7,300 (24.9% of 265,600); fc3: 1,010
    assert parameter_count(model) == 58_836 + 7_300 + 1_010
    assert 58_836 + 7_300 <= 0.3 * dense
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_same_ranks_through_a_default_and_exclude():
    model = build("lenet-300-100")
    assert factorize_(model, 0.25, exclude="fc3") == {"fc1": (54,), "fc2": (18,)}  # one name is one pattern


def test_lenet_5_per_kind_ratio():
    model = build("lenet-5")
    assert parameter_count(model) == 431_080
    ranks = factorize_(model, {"linear": 0.25, "conv": 0.5})
    assert ranks == {"conv1": (5, 1), "conv2": (32, 13), "fc1": (76,), "fc2": (2,)}
    assert [p.shape for p in model.conv2.parameters()] == [(13, 20, 1, 1), (32, 13, 5, 5), (50, 32, 1, 1), (50,)]
    # conv1 1 + 125 + 100 + 20, conv2 12,260 + 50, fc1 76 * 1,300 + 500, fc2 2 * 510 + 10
    assert parameter_count(model) == 246 + 12_310 + 99_300 + 1_030
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_kind_mapped_to_none_stays_dense():
    model = build("lenet-5")
    assert factorize_(model, {"linear": 0.25, "conv": None}) == {"fc1": (76,), "fc2": (2,)}
    assert isinstance(model.conv1, nn.Conv2d)


def test_layers_that_would_not_shrink_stay_dense():
    model = nn.Sequential(OrderedDict(square=nn.Linear(2, 2), wide=nn.Linear(30, 20)))
    # square: rank 1 costs 4 = 2 * 2; wide: full energy needs rank 20, 1,000 > 600 weights
    assert factorize_(model, 1.0, layers={"wide": 0.5}) == {"wide": (6,)}
    assert isinstance(model.square, nn.Linear)
    assert factorize_(nn.Sequential(nn.Linear(30, 20)), energy=1.0) == {}


def test_energy_finds_the_rank_of_a_low_rank_layer_and_keeps_its_outputs():
    model = build("lenet-300-100")
    with torch.no_grad():
        model.fc2.weight.copy_(torch.randn(100, 3) @ torch.randn(3, 300))
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    ranks = factorize_(model, energy=0.99, layers={"fc2": 0.9999}, exclude=["fc1", "fc3"])
    assert ranks == {"fc2": (3,)}
    assert torch.allclose(model(x), before, atol=1e-4)


def test_edits_are_recorded_and_replayed_on_meta():
    model = build("lenet-5")
    factorize_(model, layers={"conv2": 0.5, "fc1": 0.25})
    edits = [{"op": "factorize", "module": "conv2", "ranks": [32, 13]},
             {"op": "factorize", "module": "fc1", "ranks": [76]}]
    assert arch_of(model)["edits"] == edits
    empty = rebuild(arch_of(model), device="meta")
    assert empty.conv2.core.weight.is_meta and empty.conv2.core.weight.shape == (32, 13, 5, 5)
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, shape", [("lenet-5", (3, 1, 28, 28)), ("lenet-300-100", (3, 1, 28, 28))])
def test_mzip_round_trip_gives_identical_outputs(tmp_path, name, shape):
    model = build(name)
    factorize_(model, 0.3)
    path = tmp_path / "low.mzip"
    modelzip.save(model, path)
    x = torch.randn(shape)
    expected = model.eval()(x)
    assert torch.equal(modelzip.load(path)(x), expected)
    assert torch.equal(modelzip.load(path, build(name))(x), expected)  # into a fresh, unfactorized model


def test_setting_errors():
    model = build("lenet-300-100")
    with pytest.raises(ConfigError, match="not both"):
        factorize_(model, 0.5, energy=0.9)
    with pytest.raises(ConfigError, match="nothing to factorize"):
        factorize_(model)
    with pytest.raises(ConfigError, match="ratio of linear layers"):
        factorize_(model, {"linear": 1.5})
    with pytest.raises(ConfigError, match="'fc2'"):
        factorize_(model, 0.5, layers={"fc2": 0.0})
    with pytest.raises(ConfigError, match="no setting for conv"):
        factorize_(build("lenet-5"), {"linear": 0.5})
    with pytest.raises(ConfigError, match="fc1, fc2, fc3"):
        factorize_(model, 0.5, exclude=["conv*"])
    with pytest.raises(ConfigError, match="fc1, fc2, fc3"):
        factorize_(model, 0.5, layers={"conv*": 0.5})
    assert isinstance(model.fc1, nn.Linear) and "edits" not in arch_of(model)


def test_unsupported_layers_stay_dense_unless_named():
    model = nn.Sequential(OrderedDict(grouped=nn.Conv2d(4, 8, 3, groups=2), up=nn.ConvTranspose2d(8, 4, 3),
                                      pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 30)))
    assert factorize_(model, 0.5) == {"fc": (1,)}  # rank 1 costs 34 <= 60 weights, rank 2 costs 68
    assert isinstance(model.grouped, nn.Conv2d) and isinstance(model.up, nn.ConvTranspose2d)
    with pytest.raises(ModelError, match="'grouped'.*Conv2d"):
        factorize_(model, layers={"grouped": 0.5})
    with pytest.raises(ModelError, match="'up'.*ConvTranspose2d"):
        factorize_(model, layers={"u*": 0.5})


def test_broken_or_masked_weights_are_model_errors():
    model = build("lenet-300-100")
    prune_(model, 0.5)
    with pytest.raises(ModelError, match="'fc1'.*strip"):
        factorize_(model, 0.5)
    assert factorize_(strip(model), 0.5, exclude=["fc3"]) == {"fc1": (108,), "fc2": (37,)}
    broken = build("lenet-300-100")
    with torch.no_grad():
        broken.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="'fc2'.*NaN"):
        factorize_(broken, 0.5)
    with pytest.raises(ModelError, match="wrap it"):
        factorize_(nn.Linear(30, 30), 0.5)


def test_bad_recorded_edits_are_model_errors():
    with pytest.raises(ModelError, match="'fc1'.*between 1 and"):
        apply_edits(build("lenet-300-100"), [{"op": "factorize", "module": "fc1", "ranks": [301]}])
    with pytest.raises(ModelError, match="'act1'.*ReLU"):
        apply_edits(build("lenet-300-100"), [{"op": "factorize", "module": "act1", "ranks": [3]}])
    with pytest.raises(ModelError, match="no layer 'fc9'"):
        apply_edits(build("lenet-300-100"), [{"op": "factorize", "module": "fc9", "ranks": [3]}])


def test_config_defaults_and_checks():
    assert LowRankConfig().ratio == DEFAULT_RATIO and LowRankConfig(energy=0.9).ratio is None
    assert LowRankConfig(layers={"fc1": 0.2}).ratio is None
    assert LowRankConfig(exclude="fc3").exclude == ("fc3",)
    with pytest.raises(ConfigError, match="not both"):
        LowRankConfig(ratio=0.5, energy=0.9)
    with pytest.raises(ConfigError, match="energy"):
        LowRankConfig(energy=2.0)


def test_low_rank_factorizes_then_fine_tunes(digits):
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    config = LowRankConfig(ratio=0.25, exclude=("fc3",), finetune=TrainConfig(epochs=2, lr=1e-2))
    result = low_rank(model, digits.train, config, digits.test)
    # 64 inputs: fc1 floor(0.25 * 19,200 / 364) = 13; fc2 floor(0.25 * 30,000 / 400) = 18
    assert result["ranks"] == {"fc1": (13,), "fc2": (18,)}
    logs = result["logs"]
    assert [log.epoch for log in logs] == [1, 2] and logs[1].loss < logs[0].loss
    assert logs[1].test_accuracy > 0.5  # chance is 0.1
