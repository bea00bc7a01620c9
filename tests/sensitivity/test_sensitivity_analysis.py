import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from modelzip.errors import ConfigError, ModelError
from modelzip.layers import independent_copy, strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.sensitivity import (APPLIERS, Sensitivity, plot_sensitivity, prune_layer,
                                  quantize_layer, sensitivity)


def two_layers() -> nn.Sequential:
    """a: 2->2, b: 2->1 reading only a's first output; score = the output on x = (1, 1).

    a = [[3, 1], [2, 4]] gives h = (4, 6) and score 4. Pruning a keeps its largest |w|: at 25% {4, 3, 2}
    and at 50% {4, 3}, both drop the 1 of row 0, so the score falls to 3. b = [1, 0] keeps the 1 at
    25% (2 of 2 kept) and 50% (1 of 2 kept): b's curve is flat.
    """
    model = nn.Sequential(OrderedDict(a=nn.Linear(2, 2, bias=False), b=nn.Linear(2, 1, bias=False)))
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([[3.0, 1.0], [2.0, 4.0]]))
        model.b.weight.copy_(torch.tensor([[1.0, 0.0]]))
    return model


def output(model: nn.Module) -> float:
    return model(torch.ones(1, 2)).item()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_curves_of_a_hand_worked_model():
    model = two_layers()
    before = snapshot(model)
    sens = sensitivity(model, output, ["a", "b"], [0, 0.25, 0.5], prune_layer, kind="sparsity")
    assert sens.kind == "sparsity" and sens.baseline == 4.0
    assert sens.curves == {"a": {0.0: 4.0, 0.25: 3.0, 0.5: 3.0}, "b": {0.0: 4.0, 0.25: 4.0, 0.5: 4.0}}
    assert sens.loss("a", 0.5) == 1.0 and sens.loss("b", 0.5) == 0.0
    assert_identical(model, before)
    assert not hasattr(model.a, "parametrizations") and output(model) == 4.0


def test_a_pruned_model_survives_quantizing_copies_of_its_layers():
    """quantize_ removes the mask parametrization before sharing: on a plain deepcopy that would delete
    the weight property from the class the original shares, and the original would lose its weights."""
    model = two_layers()
    prune_(model, 0.5)  # a keeps {4, 3}, b keeps the 1: score 3
    model.train()
    before = snapshot(model)
    sens = sensitivity(model, output, ["a", "b"], [1, 2], quantize_layer, kind="bits")
    # 1 bit on a pruned layer: zero plus one centroid, the mean of the kept weights
    assert sens.curves["a"][1.0] == 3.5 and sens.curves["a"][2.0] == 3.0
    assert sens.curves["b"] == {1.0: 3.0, 2.0: 3.0}
    assert_identical(model, before)
    assert model.training and output(model) == 3.0
    assert model.a.weight.tolist() == [[3.0, 0.0], [0.0, 4.0]]


def test_stripping_an_independent_copy_leaves_the_original_parametrized():
    model = two_layers()
    prune_(model, 0.5)
    strip(independent_copy(model))
    assert model.a.weight.tolist() == [[3.0, 0.0], [0.0, 4.0]]
    assert type(model.a).__name__ == "ParametrizedLinear"


def test_json_round_trip_keeps_float_values():
    sens = Sensitivity("sparsity", 0.975, {"fc1": {0.0: 0.975, 0.9: 0.5}, "fc2": {0.0: 0.975, 1e-05: 0.25}})
    text = json.dumps(sens.to_json())
    assert json.loads(text)["curves"]["fc2"] == {"0.0": 0.975, "1e-05": 0.25}
    again = Sensitivity.from_json(json.loads(text))
    assert again == sens and all(type(v) is float for curve in again.curves.values() for v in curve)
    with pytest.raises(ConfigError, match="kind, baseline and curves"):
        Sensitivity.from_json({"kind": "bits", "curves": {}})


def test_table_has_one_row_per_layer_and_the_baseline_in_the_title():
    sens = Sensitivity("bits", 0.75, {"a": {2.0: 0.5, 4.0: 0.75}, "b": {2.0: 0.25}, "c": {4.0: 0.125}})
    table = sens.table()
    assert table.row_count == 3 and [c.header for c in table.columns] == ["layer", "2", "4"]
    assert "0.7500" in str(table.title)
    assert list(table.columns[2].cells) == ["0.7500", "-", "0.1250"]


def test_loss_names_an_unmeasured_layer_or_value():
    sens = Sensitivity("sparsity", 1.0, {"a": {0.5: 0.5}})
    with pytest.raises(ConfigError, match="'b'"):
        sens.loss("b", 0.5)
    with pytest.raises(ConfigError, match="0.9"):
        sens.loss("a", 0.9)


def test_prune_layer_touches_the_named_layer_only_by_exact_name():
    """'fc[1]' as an fnmatch pattern would match 'fc1', not itself; 'fc1' must not reach 'fc10'."""
    model = nn.Sequential(OrderedDict([("fc[1]", nn.Linear(4, 4)), ("fc1", nn.Linear(4, 4)),
                                       ("fc10", nn.Linear(4, 4))]))
    prune_layer(model, "fc[1]", 0.5)
    assert (model.get_submodule("fc[1]").weight == 0).sum().item() == 8
    assert not hasattr(model.fc1, "parametrizations") and not hasattr(model.fc10, "parametrizations")
    prune_layer(model, "fc1", 0.75)
    assert (model.fc1.weight == 0).sum().item() == 12 and not hasattr(model.fc10, "parametrizations")


def test_quantize_layer_shares_the_named_layer_only():
    model = build("lenet-300-100", (1, 8, 8))
    before = snapshot(model)
    quantize_layer(model, "fc2", 2)
    assert model.fc2.weight.unique().numel() == 4
    for name in ("fc1", "fc3"):
        assert not hasattr(getattr(model, name), "parametrizations")
        assert torch.equal(getattr(model, name).weight, before[f"{name}.weight"])
    with pytest.raises(ConfigError, match="whole number"):
        quantize_layer(model, "fc1", 2.5)


def test_appliers_reject_what_is_not_one_compressible_layer():
    model = build("lenet-300-100", (1, 8, 8))
    with pytest.raises(ModelError, match="no layer 'fc4'"):
        prune_layer(model, "fc4", 0.5)
    with pytest.raises(ModelError, match="'act1' .*not compressible"):
        prune_layer(model, "act1", 0.5)
    gated = nn.Sequential(OrderedDict(inner=build("lenet-300-100", (1, 8, 8))))
    gated.inner.gate = nn.Parameter(torch.ones(3))
    gated.inner.modelzip_weights = ("gate",)  # a compressible layer with compressible layers inside
    with pytest.raises(ModelError, match="'inner' holds compressible layers of its own \\(fc1, fc2, fc3\\)"):
        prune_layer(gated, "inner", 0.5)
    with pytest.raises(ModelError, match="no layer 'fc9'"):
        sensitivity(model, output, ["fc9"], [0.5], prune_layer, kind="sparsity")
    with pytest.raises(ConfigError, match="listed twice"):
        sensitivity(model, output, ["fc1"], [0.5, 0.5], prune_layer, kind="sparsity")
    assert APPLIERS.get("sparsity") is prune_layer and APPLIERS.get("bits") is quantize_layer


def test_plot_writes_a_png(tmp_path):
    sens = Sensitivity("sparsity", 0.9, {"fc1": {0.0: 0.9, 0.5: 0.8}, "fc2": {0.0: 0.9, 0.5: 0.85}})
    path = tmp_path / "plots" / "sensitivity.png"
    plot_sensitivity(sens, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_channel_and_rank_appliers_change_only_the_named_layer():

    vgg = build("vgg-bn", (1, 8, 8), widths=[8, "M", 16])
    APPLIERS.get("channels")(vgg, "conv1", 0.5)
    assert (vgg.conv1.out_channels, vgg.conv2.in_channels, vgg.conv2.out_channels) == (4, 4, 16)
    mlp = build("lenet-300-100", (1, 8, 8))
    APPLIERS.get("rank-ratio")(mlp, "fc1", 1.0)
    assert isinstance(mlp.fc1, torch.nn.Linear)
    APPLIERS.get("rank-ratio")(mlp, "fc1", 0.25)
    assert isinstance(mlp.fc1, torch.nn.Sequential) and isinstance(mlp.fc2, torch.nn.Linear)

