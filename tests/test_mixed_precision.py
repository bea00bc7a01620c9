import fnmatch
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.data.subsets import split
from modelzip.errors import ConfigError, ModelError
from modelzip.layers import independent_copy, strip, targets
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize import QuantSpec, prepare_qat
from modelzip.quantize.mixed import bit_specs, mixed_precision
from modelzip.sensitivity import APPLIERS, sensitivity
from modelzip.train import TrainConfig, evaluate, fit

uniform_bits = APPLIERS.get("uniform-bits")


@pytest.fixture(scope="module")
def trained(digits):
    """mlp-64-32 (fc1 4096, fc2 2048, fc3 320 weights) at ~96% on digits; a quarter of train held out to score."""
    torch.manual_seed(0)
    rest, held_out = split(digits.train, 0.25, seed=0)
    model = build("mlp-64-32", digits.input_shape, digits.num_classes)
    fit(model, rest, TrainConfig(epochs=40, lr=3e-3))
    return model, held_out, digits.test


def applied(model: nn.Module, bits: dict[str, float]) -> nn.Module:
    work = independent_copy(model)
    for name, b in bits.items():
        uniform_bits(work, name, b)
    return work


def average_bits(model: nn.Module, bits: dict[str, float]) -> float:
    counts = {t.name: t.weight.numel() for t in targets(model)}
    return sum(b * counts[name] for name, b in bits.items()) / sum(counts[name] for name in bits)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def one_layer() -> nn.Sequential:
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -0.25, 0.5, 0.75], [2.0, -4.0, 1.0, 0.0]]))
    return nn.Sequential(OrderedDict(a=layer))


def test_uniform_bits_rounds_each_row_onto_its_own_grid():
    """Row 0 = [1, -.25, .5, .75], max |w| 1; row 1 = [2, -4, 1, 0], max 4. At 3 bits (qmax 3) the steps
    are 1/3 and 4/3: codes [3, -1, 2, 2] (-.75 and 2.25 round to -1 and 2, 1.5 to even 2) and [2, -3, 1, 0]
    (1.5 to 2, .75 to 1). At 2 bits (qmax 1) the steps are 1 and 4, and .5 rounds to even 0."""
    model = one_layer()
    bias = model.a.bias.clone()
    uniform_bits(model, "a", 3)
    grid = torch.tensor([[3.0, -1, 2, 2], [2, -3, 1, 0]]) * torch.tensor([[1 / 3], [4 / 3]])
    assert torch.allclose(model.a.weight, grid, rtol=0, atol=1e-7)
    assert torch.equal(model.a.bias, bias)
    assert type(model.a.weight) is nn.Parameter and not parametrize.is_parametrized(model.a)
    model = one_layer()
    uniform_bits(model, "a", 2.0)  # a whole float is a bit width too
    assert model.a.weight.tolist() == [[1.0, 0.0, 0.0, 1.0], [0.0, -4.0, 0.0, 0.0]]


def test_uniform_bits_changes_only_the_named_layer(trained):
    model, _, _ = trained
    work = independent_copy(model)
    uniform_bits(work, "fc2", 3)
    before, after = model.state_dict(), work.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["fc2.weight"]
    w, original = work.fc2.weight, model.fc2.weight
    assert type(w) is nn.Parameter and w.requires_grad
    assert max(len(torch.unique(row)) for row in w) <= 2 ** 3 - 1
    step = original.abs().amax(1, keepdim=True) / 3  # (32, 1): each row's own step
    assert ((w - original).abs() <= step / 2 + 1e-7).all()
    assert torch.allclose(w / step, torch.round(w / step), atol=1e-5)


def test_uniform_bits_keeps_a_prune_mask_and_its_zeros():
    model = build("mlp-64-32", (1, 8, 8), 10)
    prune_(model, 0.75)
    zeros = model.fc1.weight == 0
    uniform_bits(model, "fc1", 2)
    assert parametrize.is_parametrized(model.fc1, "weight")
    assert (model.fc1.weight[zeros] == 0).all()
    assert max(len(torch.unique(row)) for row in model.fc1.weight) <= 3


@pytest.mark.parametrize("bits", [1, 9, 3.5, math.nan])
def test_uniform_bits_needs_a_whole_width_in_2_to_8(bits):
    model = build("mlp-64-32", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="bits"):
        uniform_bits(model, "fc1", bits)


def test_uniform_bits_refuses_a_non_compressible_layer():
    model = nn.Sequential(OrderedDict(a=nn.Linear(2, 2), act=nn.ReLU()))
    with pytest.raises(ModelError, match="'act'"):
        uniform_bits(model, "act", 4)


def test_mixed_precision_stays_within_budget_and_leaves_the_model_untouched(trained):
    model, held_out, _ = trained
    model.train()
    before = snapshot(model)
    score = lambda m: evaluate(m, held_out)  # noqa: E731
    for budget in (2.0, 2.5, 3.0, 4.0):
        chosen = mixed_precision(model, score, budget)
        assert list(chosen.values) == ["fc1", "fc2", "fc3"] and set(chosen.values.values()) <= {2, 3, 4, 5, 6, 8}
        assert average_bits(model, chosen.values) <= budget
        assert chosen.cost == sum(b * getattr(model, n).weight.numel() for n, b in chosen.values.items())
    assert chosen.values == {"fc1": 3.0, "fc2": 5.0, "fc3": 5.0}  # 3.73 bits: the big layer gets the fewest
    assert mixed_precision(model, score, 2.0).values == {"fc1": 2.0, "fc2": 2.0, "fc3": 2.0}
    assert model.training and list(model.state_dict()) == list(before)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_mix_scores_at_least_the_uniform_width_within_the_same_budget(trained):
    """At 2.5 bits per weight the best uniform width that fits is 2 (test accuracy 0.794); the mix
    (fc1 2, fc2 3, fc3 5 bits: 2.47 on average) scores 0.928 on the test split, which the analysis never saw.
    At 3 bits the knapsack's predicted loss is never above the uniform 3 bits' (3 is a candidate): here it
    picks exactly that, so both score the same. Measured: a well-predicted mix is not guaranteed to beat
    the uniform width on held-out data, since losses of layers do not quite add up."""
    model, held_out, test = trained
    score = lambda m: evaluate(m, held_out)  # noqa: E731
    layers = ["fc1", "fc2", "fc3"]
    mix = mixed_precision(model, score, 2.5).values
    assert average_bits(model, mix) <= 2.5
    assert evaluate(applied(model, mix), test) >= evaluate(applied(model, dict.fromkeys(layers, 2)), test) + 0.1

    sens = sensitivity(model, score, layers, (2, 3, 4, 5, 6, 8), uniform_bits, kind="uniform-bits")
    at3 = mixed_precision(model, score, 3.0)
    assert at3.loss <= sum(sens.loss(name, 3) for name in layers)
    assert score(applied(model, at3.values)) >= score(applied(model, dict.fromkeys(layers, 3)))


def test_mixed_precision_rejects_impossible_budgets_and_widths(trained):
    model, held_out, _ = trained
    score = lambda m: evaluate(m, held_out)  # noqa: E731
    with pytest.raises(ConfigError, match="1.9 bits per weight is below .* 2"):
        mixed_precision(model, score, 1.9)
    with pytest.raises(ConfigError, match="below .* 4"):
        mixed_precision(model, score, 3.5, choices=(4, 8))
    for choices in ((1, 2), (4, 9), (2, 3.5), ()):
        with pytest.raises(ConfigError, match="whole numbers in 2..8"):
            mixed_precision(model, score, 4.0, choices=choices)


def test_bit_specs_feed_qat_the_same_grid_as_the_applier(trained):
    model, _, _ = trained
    chosen = {"fc1": 2.0, "fc2": 4.0, "fc3": 8.0}
    specs = bit_specs(chosen)
    assert specs == {n: QuantSpec(int(b), symmetric=True, per_channel=True) for n, b in chosen.items()}
    assert bit_specs(chosen, symmetric=False)["fc2"] == QuantSpec(4, symmetric=False, per_channel=True)
    qat = independent_copy(model)
    quantizers = prepare_qat(qat, QuantSpec(8, per_channel=True), layers=specs)
    assert {name: q.spec.bits for name, q in quantizers.items()} == {"fc1.weight": 2, "fc2.weight": 4, "fc3.weight": 8}
    strip(qat)
    reference = applied(model, chosen)
    assert all(torch.equal(getattr(qat, n).weight, getattr(reference, n).weight) for n in chosen)
    with pytest.raises(ConfigError, match="2..8, got 4.5"):
        bit_specs({"fc1": 4.5})
    (pattern,) = bit_specs({"blocks[0]*": 3})  # a layer name with wildcard characters matches only itself
    assert fnmatch.fnmatchcase("blocks[0]*", pattern) and not fnmatch.fnmatchcase("blocks0x", pattern)
