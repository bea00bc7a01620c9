from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip.errors import ConfigError, ModelError
from modelzip.layers import parameter_count, targets
from modelzip.models import arch_of, build, rebuild
from modelzip.prune import prune_
from modelzip.quantize import quantize_
from modelzip.quantize.hashing import HashedConv2d, HashedLinear, bucket_means, hash_, hash_indices
from modelzip.train import TrainConfig, evaluate, fit


def reference_hash(k: int, buckets: int, seed: int) -> tuple[int, int]:
    """The documented hash in plain Python integers (no overflow possible): (bucket, sign) of flat entry k."""
    def fmix32(x: int) -> int:
        x ^= x >> 16
        x = x * 0x85EBCA6B % 2 ** 32
        x ^= x >> 13
        x = x * 0xC2B2AE35 % 2 ** 32
        return x ^ (x >> 16)
    salt_index, salt_sign = (fmix32((2 * seed + part + 1) * 0x9E3779B9 % 2 ** 32) for part in (0, 1))
    return fmix32(k ^ salt_index) % buckets, 1 - 2 * (fmix32(k ^ salt_sign) & 1)


def test_hash_matches_the_plain_integer_definition_and_is_pinned():
    index, sign = hash_indices((300, 100), 3750, seed=0)
    # the file stores no index: these values are part of the format and must never change
    assert index.flatten()[:8].tolist() == [3345, 2342, 360, 3339, 3716, 2296, 3138, 2511]
    assert sign.flatten()[:8].tolist() == [1, -1, 1, -1, -1, 1, -1, 1]
    flat_index, flat_sign = index.flatten(), sign.flatten()
    for k in [*range(50), 12_345, 29_999]:
        assert (flat_index[k].item(), flat_sign[k].item()) == reference_hash(k, 3750, 0)
    big_index, big_sign = hash_indices((70_000, 1), 1000, seed=2 ** 31 - 1)
    for k in (0, 65_535, 65_536, 69_999):
        assert (big_index[k, 0].item(), big_sign[k, 0].item()) == reference_hash(k, 1000, 2 ** 31 - 1)


def test_hash_properties():
    index, sign = hash_indices((300, 100), 3750, seed=0)
    again, again_sign = hash_indices((300, 100), 3750, seed=0)
    assert torch.equal(index, again) and torch.equal(sign, again_sign)
    assert index.shape == (300, 100) and index.dtype == torch.int64
    assert index.min() == 0 and index.max() == 3749
    assert set(sign.unique().tolist()) == {-1, 1}
    assert abs(sign.float().mean().item()) < 0.02  # 30,000 fair coins: std 0.006
    counts = torch.bincount(index.flatten(), minlength=3750).float()
    assert counts.mean() == 8 and 2.5 < counts.std() < 3.2  # Poisson-like loads: std ~ sqrt(8) = 2.83
    other, other_sign = hash_indices((300, 100), 3750, seed=1)
    assert (other == index).float().mean() < 0.002  # independent hashes agree with probability 1/3750
    assert 0.48 < (other_sign == sign).float().mean() < 0.52
    for bad in (0, 30_001, 2.0):
        with pytest.raises(ConfigError, match="buckets"):
            hash_indices((300, 100), bad)
    with pytest.raises(ConfigError, match="seed"):
        hash_indices((3, 3), 2, seed=-1)


def test_virtual_weight_and_forward_by_hand():
    layer = HashedLinear(5, 3, buckets=4, seed=7)
    weight = layer.virtual_weight()
    index, sign = hash_indices((3, 5), 4, seed=7)
    for i in range(3):
        for j in range(5):
            assert weight[i, j].item() == sign[i, j].item() * layer.shared[index[i, j]].item()
    x = torch.randn(2, 5)
    expected = torch.stack([torch.stack([sum(x[n, j] * weight[i, j] for j in range(5)) + layer.bias[i]
                                         for i in range(3)]) for n in range(2)])
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {"shared": (4,), "bias": (3,)}
    assert sum(p.numel() for p in layer.parameters()) == 4 + 3
    assert sum(p.numel() for p in HashedLinear(5, 3, 4, bias=False).parameters()) == 4


def test_bucket_gradient_is_the_signed_sum_of_its_entries_gradients():
    layer = HashedLinear(6, 4, buckets=5, seed=3, dtype=torch.float64)
    x = torch.randn(7, 6, dtype=torch.float64)
    layer(x).square().sum().backward()
    dense = layer.virtual_weight().detach().requires_grad_()
    F.linear(x, dense, layer.bias.detach()).square().sum().backward()
    expected = torch.zeros(5, dtype=torch.float64)
    for (i, j), b in zip(torch.cartesian_prod(torch.arange(4), torch.arange(6)).tolist(), layer.index.flatten()):
        expected[b] += layer.sign[i, j] * dense.grad[i, j]
    assert torch.allclose(layer.shared.grad, expected, rtol=1e-12, atol=1e-12)
    assert expected.abs().min() > 0  # every bucket is used and moves


def test_bucket_means_is_the_least_squares_fit():
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    index = torch.tensor([[0, 1], [0, 1]])
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    # bucket 0: mean(1, -3) = -1; bucket 1: mean(-2, 4) = 1; bucket 2 holds nothing
    assert bucket_means(weight, index, sign, 3).tolist() == [-1.0, 1.0, 0.0]


def test_hash_recovers_a_weight_that_is_already_hashed():
    source = HashedLinear(16, 8, buckets=16, seed=5)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(16, 8)))
    with torch.no_grad():
        model.fc.weight.copy_(source.virtual_weight())
        model.fc.bias.copy_(source.bias)
    x = torch.randn(3, 16)
    assert hash_(model, 1 / 8, seed=5) == {"fc": 16}  # 128 weights / 8
    assert isinstance(model.fc, HashedLinear) and model.fc.seed == 5
    used = torch.bincount(source.index.flatten(), minlength=16) > 0
    assert torch.allclose(model.fc.shared[used], source.shared[used], atol=1e-7)
    assert torch.allclose(model(x), source(x), atol=1e-6)


def test_conv_kernel_is_hashed():
    layer = HashedConv2d(4, 6, 3, buckets=20, padding=1, groups=2, seed=1)
    assert layer.virtual_weight().shape == (6, 2, 3, 3)
    index, sign = hash_indices((6, 2, 3, 3), 20, seed=1)
    assert torch.equal(layer.virtual_weight(), sign * layer.shared[index])
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(x), F.conv2d(x, layer.virtual_weight(), layer.bias, padding=1, groups=2))
    with pytest.raises(ConfigError, match="groups"):
        HashedConv2d(4, 6, 3, buckets=20, groups=4)


def test_lenet_5_per_kind_ratio_and_exclude():
    model = build("lenet-5")
    x = torch.randn(2, 1, 28, 28)
    # conv1 500, conv2 25,000, fc1 400,000, fc2 5,000 weights; fc2 excluded
    assert hash_(model, {"conv": 0.5, "linear": 1 / 16}, exclude="fc2") == {"conv1": 250, "conv2": 12_500,
                                                                             "fc1": 25_000}
    assert isinstance(model.conv2, HashedConv2d) and model.conv2.kernel_size == (5, 5)
    assert isinstance(model.fc2, nn.Linear)
    assert parameter_count(model) == 250 + 20 + 12_500 + 50 + 25_000 + 500 + 5_010
    assert model(x).shape == (2, 10)


def test_layers_only_and_exclusion_wins():
    model = build("lenet-300-100", (1, 8, 8))
    assert hash_(model, layers={"fc*": 0.5, "fc1": 0.25}, exclude=["fc3"]) == {"fc1": 4_800, "fc2": 15_000}
    assert isinstance(model.fc3, nn.Linear)


def test_hashed_lenet_file_is_small_and_reloads_identically(tmp_path):
    model = build("lenet-300-100", (1, 8, 8))
    dense = modelzip.save(model, tmp_path / "dense.mzip")
    assert hash_(model, 1 / 8) == {"fc1": 2_400, "fc2": 3_750, "fc3": 125}
    assert [e["op"] for e in arch_of(model)["edits"]] == ["hash"] * 3
    assert arch_of(model)["edits"][0] == {"op": "hash", "module": "fc1", "buckets": 2_400, "seed": 0}
    hashed = modelzip.save(model, tmp_path / "hashed.mzip")
    # 6,275 buckets + 410 biases = 26,740 bytes of floats, against 50,610 parameters
    assert 26_740 < hashed < dense / 6
    loaded = modelzip.load(tmp_path / "hashed.mzip")
    assert isinstance(loaded.fc2, HashedLinear) and torch.equal(loaded.fc2.index, model.fc2.index)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    empty = rebuild(arch_of(model), device="meta")
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_a_hashed_lenet_trains_on_digits(digits):
    model = build("lenet-300-100", (1, 8, 8))
    assert hash_(model, layers={"fc1": 1 / 8, "fc2": 1 / 8}) == {"fc1": 2_400, "fc2": 3_750}
    fit(model, digits.train, TrainConfig(epochs=20, lr=3e-3))
    assert evaluate(model, digits.test) > 0.9  # 0.956 (dense: 0.964) with 8x fewer fc1/fc2 weights


def test_bucket_values_are_compressible_weights():
    model = build("lenet-300-100", (1, 8, 8))
    hash_(model, layers={"fc1": 1 / 8})
    assert [(t.name, t.param, t.kind) for t in targets(model)][:1] == [("fc1", "shared", "linear")]
    quantize_(model, 3)  # HashedNets, then Deep Compression's k-means on the buckets
    assert model.fc1.shared.shape == (2_400,) and model.fc1.shared.unique().numel() <= 8
    assert model.fc1.virtual_weight().abs().unique().numel() <= 8


def test_errors():
    with pytest.raises(ConfigError, match="nothing to hash"):
        hash_(build("lenet-300-100"))
    for bad in (0, 1.5, True, "1/8"):
        with pytest.raises(ConfigError, match="ratio"):
            hash_(build("lenet-300-100"), bad)
    with pytest.raises(ConfigError, match="'fc9'"):
        hash_(build("lenet-300-100"), 0.5, exclude=["fc9"])
    with pytest.raises(ConfigError, match="no setting for conv"):
        hash_(build("lenet-5"), {"linear": 0.5})
    with pytest.raises(ConfigError, match="seed"):
        hash_(build("lenet-300-100"), 0.5, seed=2 ** 31)
    pruned = build("lenet-300-100")
    prune_(pruned, 0.5)
    with pytest.raises(ModelError, match="strip"):
        hash_(pruned, 0.5)
    embedded = nn.Sequential(OrderedDict(emb=nn.Embedding(10, 4), fc=nn.Linear(4, 2)))
    assert hash_(embedded, 0.5) == {"fc": 4}  # an embedding stays dense...
    with pytest.raises(ModelError, match="'emb'.*cannot be hashed"):
        hash_(embedded, layers={"emb": 0.5})  # ...unless named
    with pytest.raises(ModelError, match="wrap it"):
        hash_(nn.Linear(4, 2), 0.5)
    with pytest.raises(ModelError, match="hash edit .*'fc1'"):
        rebuild({"name": "lenet-300-100", "edits": [{"op": "hash", "module": "fc1", "buckets": 0, "seed": 0}]})
