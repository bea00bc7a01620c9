import pytest
import torch
from torch import nn

import modelzip
from modelzip.cli import main
from modelzip.errors import ConfigError
from modelzip.models import build
from modelzip.prune import PruneConfig, iterative_prune
from modelzip.recipes import Recipe, from_mapping
from modelzip.structured import ChannelPruneConfig, SlimmingConfig, network_slimming, scale_penalty
from modelzip.train import TrainConfig, cross_entropy, evaluate

SMALL_VGG = {"widths": [8, "M", 16], "hidden": 16}


def test_scale_penalty_adds_lambda_times_the_l1_norm_of_the_scales():
    model = build("vgg-bn", (1, 8, 8), **SMALL_VGG)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.fill_(-0.5)
    batch = [torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])]
    torch.manual_seed(0)
    plain = cross_entropy(model, batch)
    torch.manual_seed(0)
    penalised = scale_penalty(model, 0.01)(model, batch)
    assert (penalised - plain).item() == pytest.approx(0.01 * 0.5 * (8 + 16 + 16), rel=1e-5)
    with pytest.raises(ConfigError, match="batch norms"):
        scale_penalty(build("lenet-5"), 1e-4)


def test_network_slimming_trains_removes_and_finetunes(digits):
    model = build("vgg-bn", digits.input_shape, **SMALL_VGG)
    config = SlimmingConfig(penalty=1e-4, channels=ChannelPruneConfig(amount=0.5, scope="layer"),
                            train=TrainConfig(epochs=4, batch_size=64), finetune=TrainConfig(epochs=2, batch_size=64))
    result = network_slimming(model, digits.train, digits.input_shape, config, test=digits.test)
    assert result.removed_fraction == pytest.approx(0.5, abs=0.02)
    assert sum(a for _, a in result.channels.values()) == model.conv1.out_channels + model.conv2.out_channels + \
        model.fc1.out_features
    assert result.accuracy_trained > 0.8 and result.accuracy_finetuned > 0.6
    assert evaluate(modelzip.loads(modelzip.dumps(model)), digits.test) == result.accuracy_finetuned


def test_recipes_with_structured_stages_report_the_smaller_network(digits):
    slim = from_mapping(Recipe, {"name": "slim", "slimming": {
        "channels": {"amount": 0.5}, "train": {"epochs": 2}, "finetune": {"epochs": 1}}}, "test")
    result = modelzip.compress(build("vgg-bn", digits.input_shape, **SMALL_VGG), digits, slim)
    structure = result.report["structure"]
    assert structure["params_ratio"] > 2 and structure["flops_ratio"] > 2
    assert set(result.report["stages"]) == {"after_slimming"}
    low = from_mapping(Recipe, {"name": "low", "low_rank": {
        "ratio": 0.25, "min_weights": 5000, "finetune": {"epochs": 1}}}, "test")
    result = modelzip.compress(build("lenet-300-100", digits.input_shape), digits, low)
    names = [row["name"] for row in result.report["structure"]["layers"]]
    assert names == ["flatten", "fc1", "fc2", "act2", "fc3"] or "fc1" in names
    assert isinstance(result.model.fc1, nn.Sequential) and isinstance(result.model.fc3, nn.Linear)
    assert result.report["structure"]["params_ratio"] > 2


def test_allocated_sparsity_keeps_the_total_and_differs_per_layer(digits):
    model = build("lenet-300-100", digits.input_shape)
    modelzip.fit(model, digits.train, TrainConfig(epochs=3))
    config = PruneConfig(sparsity=0.9, scope="global", steps=1, retrain=TrainConfig(epochs=0), allocate=True,
                         sensitivity_examples=500)
    iterative_prune(model, digits.train, config)
    kept = {n: (getattr(model, n).weight != 0).sum().item() for n in ("fc1", "fc2", "fc3")}
    sizes = {n: getattr(model, n).weight.numel() for n in kept}
    assert sum(kept.values()) <= round(0.1 * sum(sizes.values())) + 3
    assert len({round(kept[n] / sizes[n], 2) for n in kept}) > 1  # not one uniform ratio


def test_cli_profile_compares_two_files(tmp_path, capsys):
    dense = build("vgg-bn", (1, 8, 8), **SMALL_VGG)
    modelzip.save(dense, tmp_path / "a.mzip")
    modelzip.prune_channels_(dense, (1, 8, 8), ChannelPruneConfig("l1", amount=0.5, scope="layer"))
    modelzip.save(dense, tmp_path / "b.mzip")
    assert main(["profile", str(tmp_path / "a.mzip"), str(tmp_path / "b.mzip"), "--repeats", "2"]) == 0
    shown = capsys.readouterr().out
    assert "conv2" in shown and "1,152 -> 288" in shown
    assert main(["profile", str(tmp_path / "b.mzip"), "--json", "--repeats", "1"]) == 0
    assert '"params": ' in capsys.readouterr().out
    assert main(["profile", *(str(tmp_path / "a.mzip") for _ in range(3))]) == 2
