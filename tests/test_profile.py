import copy
import io
import json
from collections import OrderedDict

import pytest
import torch
from rich.console import Console
from torch import nn

from modelzip.errors import ConfigError, ModelError
from modelzip.models import build, mlp
from modelzip.profile import compare, compare_latency, latency, print_comparison, profile
from modelzip.prune import prune_


def only_row(model, input_shape):
    (row,) = profile(model, input_shape, latency=False).rows
    return row


def test_strided_padded_conv_by_hand():
    row = only_row(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1)), (3, 16, 16))
    assert (row.name, row.type, row.output_shape) == ("0", "Conv2d", (8, 8, 8))
    assert row.macs == 8 * 8 * 8 * 3 * 9 and row.flops == 2 * 13_824
    assert row.params == 8 * 3 * 9 + 8 and row.bytes == 4 * 224


@pytest.mark.parametrize("layer, input_shape, macs", [
    (nn.Conv2d(8, 16, 3, padding=1, groups=4), (8, 10, 10), 16 * 10 * 10 * 2 * 9),  # 2 input channels per group
    (nn.Conv2d(8, 8, 3, groups=8), (8, 10, 10), 8 * 8 * 8 * 1 * 9),  # depthwise
    (nn.Conv1d(4, 6, 5, stride=2), (4, 21), 6 * 9 * 4 * 5),  # length (21 - 5) // 2 + 1 = 9
    (nn.ConvTranspose2d(4, 2, 3, stride=2), (4, 5, 5), 4 * 5 * 5 * 2 * 9),  # each input scattered to 2x3x3
    (nn.Linear(10, 7), (10,), 70),
    (nn.Linear(10, 7, bias=False), (5, 10), 5 * 70),  # per position of a sequence
])
def test_macs_of_layers_by_hand(layer, input_shape, macs):
    assert only_row(nn.Sequential(layer), input_shape).macs == macs


def test_bilinear_and_custom_layers():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.bilinear = nn.Bilinear(6, 6, 2)

        def forward(self, x):
            return self.bilinear(x, x)

    row = only_row(Pair(), (6,))
    assert (row.name, row.macs, row.params) == ("bilinear", 2 * 6 * 6, 2 * 36 + 2)

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(5))

        def forward(self, x):
            return x * self.weight

    with pytest.raises(ModelError, match=r"'0' \(Scale\).*modelzip_macs"):
        profile(nn.Sequential(Scale()), (5,), latency=False)
    Scale.modelzip_macs = lambda self, inputs, output: output.numel()
    assert only_row(nn.Sequential(Scale()), (5,)).macs == 5


def test_lenet5_totals_by_hand():
    result = profile(build("lenet-5"), (1, 28, 28), latency=False)
    macs = {"conv1": 24 * 24 * 20 * 25, "pool1": 0, "conv2": 8 * 8 * 50 * 20 * 25, "pool2": 0, "flatten": 0,
            "fc1": 800 * 500, "act1": 0, "fc2": 500 * 10}
    assert {r.name: r.macs for r in result.rows} == macs and [r.name for r in result.rows] == list(macs)
    assert result.macs == 2_293_000 and result.params == 431_080
    assert result.totals == {"params": 431_080, "macs": 2_293_000, "flops": 4_586_000, "bytes": 1_724_320,
                             "latency_s": {}}
    assert {r.name: r.output_shape for r in result.rows}["pool2"] == (50, 4, 4)


def test_pruned_model_counted_by_plain_shape():
    model = build("lenet-5")
    prune_(model, 0.9)
    assert sum(p.numel() for p in model.conv1.parameters(recurse=False)) == 20  # the weight hides in parametrizations
    result = profile(model, (1, 28, 28), latency=False)
    assert [r.name for r in result.rows][:2] == ["conv1", "pool1"]  # no row for the mask
    assert {r.name: r.params for r in result.rows}["conv1"] == 20 * 25 + 20
    assert result.params == 431_080 and result.macs == 2_293_000  # zeros keep the dense cost


def test_latency_per_layer_and_total_restores_training_mode():
    model = build("lenet-5").train()
    result = profile(model, (1, 28, 28), batch_sizes=(1, 4), repeats=2, warmup=1)
    assert model.training and model.conv1.training
    assert set(result.latency_s) == {1, 4} and all(s > 0 for s in result.latency_s.values())
    assert all(set(r.latency_s) == {1, 4} and min(r.latency_s.values()) > 0 for r in result.rows)
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    assert result.to_json()["totals"]["latency_s"].keys() == {"1", "4"}


def test_latency_and_interleaved_comparison():
    small, large = nn.Linear(8, 4).train(), nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 4))
    x = torch.randn(2, 8)
    assert latency(small, x, repeats=3, warmup=1) > 0 and small.training
    times = compare_latency({"small": small, "large": large}, x, rounds=3, warmup=1)
    assert set(times) == {"small", "large"} and min(times.values()) > 0
    with pytest.raises(ConfigError, match="repeats=0"):
        latency(small, x, repeats=0)
    with pytest.raises(ConfigError, match="at least one"):
        compare_latency({}, x)
    with pytest.raises(ConfigError, match="positive"):
        profile(small, (8,), batch_sizes=(0,))


def test_compare_groups_a_factorized_layer():
    before_model = mlp((1, 8, 8), 10, (30,))  # flatten, fc1 64->30, act1, fc2 30->10
    after_model = copy.deepcopy(before_model)
    after_model.fc1 = nn.Sequential(OrderedDict(first=nn.Linear(64, 5, bias=False), second=nn.Linear(5, 30)))
    del after_model.act1  # a layer that vanishes
    after_model.drop = nn.Dropout()  # and one that appears (runs last)
    kwargs = dict(batch_sizes=(1, 4), repeats=2, warmup=1)
    before, after = profile(before_model, (1, 8, 8), **kwargs), profile(after_model, (1, 8, 8), **kwargs)
    result = compare(before, after)

    rows = {r["name"]: r for r in result["layers"]}
    assert list(rows) == ["flatten", "fc1", "act1", "fc2", "drop"]
    fc1 = rows["fc1"]
    assert fc1["before"]["layers"] == ["fc1"] and fc1["after"]["layers"] == ["fc1.first", "fc1.second"]
    assert (fc1["before"]["params"], fc1["after"]["params"]) == (64 * 30 + 30, 64 * 5 + 5 * 30 + 30)
    assert (fc1["before"]["macs"], fc1["after"]["macs"]) == (64 * 30, 64 * 5 + 5 * 30)
    assert fc1["after"]["bytes"] == 4 * 500 and fc1["after"]["flops"] == 2 * 470
    parts = {r.name: r.latency_s[4] for r in after.rows}
    assert fc1["after"]["latency_s"]["4"] == parts["fc1.first"] + parts["fc1.second"]
    assert rows["act1"]["after"] == {"layers": [], "params": 0, "macs": 0, "flops": 0, "bytes": 0, "latency_s": {}}
    assert rows["drop"]["before"]["layers"] == [] and rows["drop"]["after"]["layers"] == ["drop"]

    assert result["params_ratio"] == (1950 + 310) / (500 + 310)
    assert result["flops_ratio"] == (1920 + 300) / (470 + 300) and result["bytes_ratio"] == result["params_ratio"]
    assert result["latency_ratio"]["1"] == before.latency_s[1] / after.latency_s[1]
    assert json.loads(json.dumps(result)) == result

    out = io.StringIO()
    print_comparison(result, Console(file=out, width=200))
    text = out.getvalue()
    assert "1,950 -> 500" in text and "0 -> -" in text and "- -> 0" in text
    assert "2,260 -> 810" in text and "0.004 -> 0.002" in text and "2.79x" in text and "2.88x" in text
    assert "latency b1" in text and "latency b4" in text
