import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip.errors import ConfigError, ModelError
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.structured import (ChannelPruneConfig, Segment, feature_index, prune_channels_, remove_channels_,
                                 trace)


class ResidualConcat(nn.Module):
    """A residual sum (stem + conv2 share channels), a concatenation, a pooled flatten into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 4, 1)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.head = nn.Linear(12 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        z = self.depthwise(torch.cat([x, self.branch(x)], 1))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(z, 2), 1))


def _randomise_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def _silence(model: nn.Module, graph, keep: dict[int, torch.Tensor]) -> None:
    """Make the channels outside `keep` exactly zero: zero scale and shift of their norms, or zero filters."""
    modules = dict(model.named_modules())
    for gid, kept in keep.items():
        group = graph.groups[gid]
        gone = torch.ones(group.size, dtype=torch.bool)
        gone[kept] = False
        for name in group.norms or group.producers:
            m = modules[name]
            if name == "select":
                continue
            with torch.no_grad():
                m.weight[gone] = 0
                if m.bias is not None:
                    m.bias[gone] = 0
        if group.producers == ["select"]:  # inputs: silence the norm behind the selector
            with torch.no_grad():
                modules["norm0"].weight[gone] = 0
                modules["norm0"].bias[gone] = 0


@pytest.mark.parametrize("make, shape", [
    (lambda: build("vgg-bn", widths=[8, "M", 12, "M", 16, "M"], hidden=20), (1, 28, 28)),
    (lambda: build("mlp-40-30", batch_norm=True), (1, 28, 28)),
    (ResidualConcat, (1, 12, 12)),
    (lambda: build("lenet-5"), (1, 28, 28)),
])
def test_removal_keeps_the_function_when_removed_channels_are_zero(make, shape):
    model = make().eval()
    _randomise_norms(model)
    graph = trace(model, shape)
    generator = torch.Generator().manual_seed(0)
    keep = {g.id: torch.randperm(g.size, generator=generator)[: max(1, g.size // 2)].sort().values
            for g in graph.prunable()}
    _silence(model, graph, keep)
    x = torch.randn(5, *shape, generator=generator)
    expected = model(x)
    before = sum(p.numel() for p in model.parameters())
    remove_channels_(model, graph, keep)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < 0.6 * before
    again = modelzip.loads(modelzip.dumps(model)) if hasattr(model, "modelzip_arch") and "name" in \
        model.modelzip_arch else None
    if again is not None:  # the .mzip rebuilds the smaller structure from the recorded edits
        assert torch.equal(again(x), model(x))


def test_groups_of_a_residual_and_concatenating_network():
    graph = trace(ResidualConcat(), (1, 12, 12))
    names = {g.name: g for g in graph.groups.values()}
    assert set(names) == {"group0", "stem+conv2", "conv1", "branch", "head"}
    assert names["stem+conv2"].norms == ["bn0", "bn2"] and names["stem+conv2"].size == 8
    assert names["group0"].locked == "model input" and names["head"].locked == "model output"
    merged, branch = names["stem+conv2"].id, names["branch"].id
    assert graph.per_channel["depthwise"] == (Segment(merged, 8), Segment(branch, 4))
    assert graph.inputs["head"] == (Segment(merged, 8, 4), Segment(branch, 4, 4))


def test_feature_index_by_hand():
    layout = (Segment(1, 3, 2), Segment(2, 2, 2))  # features: g1 c0 c0 c1 c1 c2 c2 | g2 c0 c0 c1 c1
    assert feature_index(layout, {1: torch.tensor([0, 2])}).tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    assert feature_index(layout, {2: torch.tensor([1])}).tolist() == [0, 1, 2, 3, 4, 5, 8, 9]
    assert feature_index(layout, {7: torch.tensor([0])}) is None


def test_global_threshold_on_scales_by_hand():
    model = build("vgg-bn", (1, 8, 8), widths=[4, "M", 4], hidden=3)
    with torch.no_grad():
        model.norm1.weight.copy_(torch.tensor([0.1, 0.9, 0.2, 0.8]))
        model.norm2.weight.copy_(torch.tensor([0.3, -0.05, 0.7, 0.6]))
        model.norm_fc1.weight.copy_(torch.tensor([0.5, 0.4, 0.01]))
    channels = prune_channels_(model, (1, 8, 8), ChannelPruneConfig(amount=5 / 11, normalize=False))  # |g| < 0.4
    assert channels == {"conv1": (4, 2), "conv2": (4, 2), "fc1": (3, 2)}
    assert model.norm1.weight.tolist() == pytest.approx([0.9, 0.8])
    assert model.norm2.weight.tolist() == pytest.approx([0.7, 0.6])
    assert model.conv2.weight.shape == (2, 2, 3, 3) and model.fc1.weight.shape == (2, 2 * 4 * 4)


def test_filter_pruning_by_l1_norm_per_layer_without_batch_norm():
    model = build("lenet-5")
    with torch.no_grad():
        model.conv1.weight.mul_(torch.arange(1, 21).view(20, 1, 1, 1))  # filter norms rise with the index
    channels = prune_channels_(model, (1, 28, 28), ChannelPruneConfig("l1", amount=0.5, scope="layer"))
    assert channels == {"conv1": (20, 10), "conv2": (50, 25), "fc1": (500, 250)}
    assert model.fc1.in_features == 25 * 16 and modelzip.layers.parameter_count(model) < 431_080 / 3
    with pytest.raises(ConfigError, match="batch norms"):
        prune_channels_(build("lenet-5"), (1, 28, 28), ChannelPruneConfig("bn"))


def test_overrides_and_floor():
    model = build("vgg-bn", (1, 8, 8), widths=[6, "M", 6], hidden=4)
    channels = prune_channels_(model, (1, 8, 8), ChannelPruneConfig(
        "l2", amount=0.5, scope="layer", layers={"conv2": 0.9}, min_channels=2))
    assert channels == {"conv1": (6, 3), "conv2": (6, 2), "fc1": (4, 2)}


def test_unsupported_structures_name_the_layer():
    grouped = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with pytest.raises(ModelError, match="layer '1'.*grouped"):
        trace(grouped, (1, 8, 8))
    unknown = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ModelError, match="layer '1' \\(GroupNorm\\)"):
        trace(unknown, (1, 8, 8))
    model = build("lenet-5")
    graph = trace(model, (1, 28, 28))
    with pytest.raises(ConfigError, match="model output"):
        remove_channels_(model, graph, {max(graph.groups): torch.tensor([0])})
    with pytest.raises(ConfigError, match="keep no channel"):
        remove_channels_(model, graph, {1: torch.tensor([], dtype=torch.long)})
    prune_(model, 0.5)
    with pytest.raises(ModelError, match="strip"):
        prune_channels_(model, (1, 28, 28), ChannelPruneConfig("l1", amount=0.5))
    with pytest.raises(ConfigError, match="exactly one"):
        ChannelPruneConfig(amount=0.5, threshold=0.1) and prune_channels_(
            build("vgg-bn"), (1, 28, 28), ChannelPruneConfig(amount=0.5, threshold=0.1))


class MeanHead(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6 if dims == (2, 3) else 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(self.dims))


def test_a_mean_over_positions_keeps_channels_and_one_over_channels_is_refused():
    graph = trace(MeanHead((2, 3)), (1, 6, 6))
    assert graph.inputs["fc"] == (Segment(1, 6),)
    with pytest.raises(ModelError, match="mean"):
        trace(MeanHead((1, 2)), (1, 6, 6))


def test_normalized_scores_compare_layers_by_relative_scale():
    model = build("vgg-bn", (1, 8, 8), widths=[4, "M", 4])
    with torch.no_grad():
        model.norm1.weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04]))  # a layer shrunk as a whole
        model.norm2.weight.copy_(torch.tensor([1.0, 0.1, 3.0, 4.0]))
    raw = prune_channels_(copy.deepcopy(model), (1, 8, 8), ChannelPruneConfig(amount=0.5, normalize=False))
    assert raw == {"conv1": (4, 1), "conv2": (4, 4)}  # min_channels saves one
    relative = prune_channels_(model, (1, 8, 8), ChannelPruneConfig(amount=0.5, normalize=True))
    assert relative == {"conv1": (4, 2), "conv2": (4, 2)}  # 0.75, 1.0 | 0.75, 1.0 stay


class Block(nn.Module):
    """torchvision's BasicBlock shape: two 3x3 convs, and a strided 1x1 conv + norm on the shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.downsample(x)
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Block(8, 12)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        return self.fc(x.view(x.size(0), -1))


def test_a_resnet_block_with_a_downsampling_shortcut():
    model = TinyResNet().eval()
    _randomise_norms(model)
    graph = trace(model, (1, 8, 8))
    names = sorted(g.name for g in graph.prunable())
    assert names == ["layer1.conv1", "layer1.conv2+layer1.downsample.0", "stem.0"]
    merged = next(g for g in graph.prunable() if "downsample" in g.name)
    assert merged.norms == ["layer1.bn2", "layer1.downsample.1"]
    keep = {g.id: torch.arange(0, g.size, 2) for g in graph.prunable()}
    _silence(model, graph, keep)
    x = torch.randn(3, 1, 8, 8)
    expected = model(x)
    remove_channels_(model, graph, keep)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert model.fc.in_features == 6 * 16 and model.layer1.downsample[0].weight.shape == (6, 4, 1, 1)
