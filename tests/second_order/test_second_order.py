"""second_order_ on whole models: depthwise/grouped convs, Embedding tables, tied weights, sequential Hessians,
and the file that holds the result."""
import copy

import pytest
import torch
from torch import nn

import modelzip
from modelzip.quantize import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear
from modelzip.second_order import SecondOrderConfig, hessians, second_order_


class MobileBlock(nn.Module):
    """conv -> depthwise 3x3 -> grouped 1x1 -> pooled linear head: the layer types of a mobile CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 1, groups=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.depthwise(x))
        return self.head(torch.relu(self.grouped(x)).mean((2, 3)))


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return MobileBlock().eval()


def images(n=128):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_grouped_hessians_match_unfolded_inputs(cnn):
    x = images(4)
    h = hessians(cnn, {"depthwise": cnn.depthwise, "head": cnn.head}, [x], examples=4)
    assert h["depthwise"].shape == (16, 9, 9) and h["head"].shape == (1, 32, 32)
    inner = torch.relu(cnn.stem(x))
    patches = nn.functional.unfold(inner, 3, padding=1).reshape(4, 16, 9, 64).permute(1, 0, 3, 2).reshape(16, -1, 9)
    torch.testing.assert_close(h["depthwise"][3], (patches[3].T @ patches[3]) / patches.shape[1])


@pytest.mark.parametrize("sequential", [True, False])
def test_int4_codes_of_a_mobile_cnn_beat_rounding_and_survive_the_file(cnn, sequential, tmp_path):
    x = images()
    reference = cnn(x)

    def agreement(model):
        return (model(x).argmax(1) == reference.argmax(1)).float().mean().item()

    results = {}
    for method in ("obs", "plain"):
        model = copy.deepcopy(cnn)
        summary = second_order_(model, [x[:64], x[64:]], SecondOrderConfig(bits=3, group_size=0, method=method,
                                                                          sequential=sequential))
        assert set(summary) == {"stem", "depthwise", "grouped", "head"}
        results[method] = (model, nn.functional.mse_loss(model(x), reference).item())
    model, obs_mse = results["obs"]
    assert obs_mse < 0.8 * results["plain"][1]
    assert all(isinstance(model.get_submodule(n), QuantizedConv2d) for n in ("stem", "depthwise", "grouped"))
    assert isinstance(model.head, QuantizedLinear) and model.head.codes.abs().max() <= 3
    modelzip.save(model, tmp_path / "m.mzip")
    loaded = modelzip.load(tmp_path / "m.mzip", MobileBlock())
    assert torch.equal(loaded(x), model(x)) and agreement(loaded) > 0.5


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.mix = nn.Linear(16, 16)
        self.out = nn.Linear(16, 30, bias=False)
        self.out.weight = self.embed.weight  # a language model's tied output projection

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.embed(ids))))


def test_embeddings_are_rounded_per_token_and_tied_weights_are_named_and_kept():
    torch.manual_seed(0)
    model = Tied()
    ids = torch.randint(0, 30, (8, 5))
    summary = second_order_(model, [ids], SecondOrderConfig(bits=4, group_size=0))
    assert summary["embed"]["action"].startswith("kept: its weight is shared")
    assert summary["out"]["action"].startswith("kept: its weight is shared")
    assert summary["mix"]["action"] == "obs, 4-bit"
    assert model.out.weight is model.embed.weight and isinstance(model.mix, QuantizedLinear)
    untied = nn.Sequential(nn.Embedding(30, 16), nn.Linear(16, 4))
    summary = second_order_(untied, [ids], SecondOrderConfig(codebook=3, sparsity=0.5, small_table=0))
    assert summary["0"]["action"] == "8-value codebook (rounded)"
    assert untied[0].weight.unique().numel() <= 8 and (untied[1].weight == 0).float().mean() >= 0.5
    tables = nn.Sequential(nn.Embedding(2000, 16), nn.Embedding(30, 16))
    summary = second_order_(tables, None, SecondOrderConfig(bits=4, embedding_codebook=2, method="plain"))
    assert summary == {"0": {"action": "4-value codebook (rounded)", "error": None},
                       "1": {"action": "8-bit per token (rounded)", "error": None}}  # a small table: 8 bits
    assert tables[0].weight.unique().numel() == 4 and isinstance(tables[1], QuantizedEmbedding)


def test_weights_already_pruned_stay_pruned(cnn):
    modelzip.prune_(cnn, 0.7)
    modelzip.strip(cnn)
    zeros = cnn.head.weight == 0
    second_order_(cnn, [images()], SecondOrderConfig(bits=4, group_size=0))
    assert (cnn.head.weight[zeros] == 0).all()


def test_layers_override_the_width_by_name(cnn):
    summary = second_order_(cnn, [images()], SecondOrderConfig(bits=4, group_size=0, layers={"depth*": 8, "head": 6}))
    assert (cnn.depthwise.bits, cnn.head.bits, cnn.stem.bits) == (8, 6, 4)
    assert summary["depthwise"]["action"] == "obs, 8-bit"
    with pytest.raises(modelzip.ConfigError, match="matches no compressible layer"):
        second_order_(MobileBlock(), [images()], SecondOrderConfig(bits=4, layers={"nope": 8}))


def test_an_entropy_coded_grid_is_a_uniform_step_times_the_layers_std(cnn, tmp_path):
    std = cnn.head.weight.std().item()
    second_order_(cnn, [images()], SecondOrderConfig(step=0.5))
    values = cnn.head.weight.unique()
    steps = (values / (0.5 * std)).double()
    assert torch.allclose(steps, steps.round(), atol=1e-4) and len(values) <= 255
    table = nn.Sequential(nn.Embedding(4000, 8))
    summary = second_order_(table, None, SecondOrderConfig(embedding_step=1.0, method="plain"))
    assert summary["0"]["action"] == "grid step 1 std (rounded)" and table[0].weight.unique().numel() <= 15
