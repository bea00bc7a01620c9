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
from modelzip.quantize.hashing import (HashedConv2d, HashedLinear, HashStructure, bucket_means, hash_, hash_indices,
                                       product_factors, product_indices, product_shape)
from modelzip.train import TrainConfig, evaluate, fit


def fmix32(x: int) -> int:
    x ^= x >> 16
    x = x * 0x85EBCA6B % 2 ** 32
    x ^= x >> 13
    x = x * 0xC2B2AE35 % 2 ** 32
    return x ^ (x >> 16)


def salts(seed: int) -> tuple[int, int]:
    return fmix32((2 * seed + 1) * 0x9E3779B9 % 2 ** 32), fmix32((2 * seed + 2) * 0x9E3779B9 % 2 ** 32)


def reference_hash(k: int, buckets: int, seed: int) -> tuple[int, int]:
    """The documented hash in plain Python integers (no overflow possible): (bucket, sign) of flat entry k."""
    salt_index, salt_sign = salts(seed)
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


# structured multi-hashing: the hashed values are the entries of a rank-r product left @ right


def test_product_indices_match_the_plain_integer_definition_and_are_pinned():
    index, sign = product_indices((100, 30), 3025, seed=3)
    # like hash_indices', these values are part of the format and must never change
    assert index.flatten()[:8].tolist() == [1356, 1273, 2668, 1545, 2833, 2417, 1758, 472]
    salt_index, _ = salts(3)
    order = sorted(range(3025), key=lambda e: fmix32(e ^ salt_index))
    assert index.flatten().tolist() == order[:3000]  # distinct entries: no two weights share one
    assert torch.equal(sign, hash_indices((100, 30), 1, seed=3)[1])
    assert torch.equal(product_indices((100, 30), 3025, seed=3)[0], index)
    assert sorted(product_indices((4, 9), 36, seed=0)[0].flatten().tolist()) == list(range(36))  # a permutation
    assert [product_shape(n) for n in (1, 2, 36, 1000, 3000, 19_200, 30_000)] == [
        (1, 1), (2, 1), (6, 6), (32, 32), (55, 55), (139, 139), (174, 173)]
    with pytest.raises(ConfigError, match="product entries"):
        product_indices((100, 30), 2999)


def test_product_virtual_weight_forward_and_gradient_by_hand():
    layer = HashedLinear(5, 3, rank=2, seed=7, dtype=torch.float64)  # 15 weights in a (4, 4) product
    assert layer.buckets == 16 and layer.left.shape == (4, 2) and layer.right.shape == (2, 4)
    index, sign = product_indices((3, 5), 16, seed=7)
    weight = layer.virtual_weight()
    product = layer.left @ layer.right
    for i in range(3):
        for j in range(5):
            assert weight[i, j].item() == sign[i, j].item() * product[index[i, j] // 4, index[i, j] % 4].item()
    x = torch.randn(2, 5, dtype=torch.float64)
    assert torch.equal(layer(x), F.linear(x, weight, layer.bias))
    assert {k: v.shape for k, v in layer.state_dict().items()} == {"left": (4, 2), "right": (2, 4), "bias": (3,)}
    assert sum(p.numel() for p in layer.parameters()) == 2 * (4 + 4) + 3
    layer(x).square().sum().backward()
    dense = weight.detach().requires_grad_()
    F.linear(x, dense, layer.bias.detach()).square().sum().backward()
    entries = torch.zeros(16, dtype=torch.float64).index_add_(0, index.flatten(), (sign * dense.grad).flatten())
    assert torch.allclose(layer.left.grad, entries.view(4, 4) @ layer.right.T.detach(), atol=1e-12)
    assert torch.allclose(layer.right.grad, layer.left.T.detach() @ entries.view(4, 4), atol=1e-12)
    conv = HashedConv2d(4, 6, 3, rank=3, padding=1, groups=2, seed=1)  # 108 weights in an (11, 10) product
    assert conv.virtual_weight().shape == (6, 2, 3, 3) and conv.right.shape == (3, 10)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(conv(x), F.conv2d(x, conv.virtual_weight(), conv.bias, padding=1, groups=2))
    assert "buckets=110, rank=3" in repr(conv)


def test_product_fit_at_full_rank_reproduces_the_dense_layer():
    dense = nn.Linear(9, 4)  # 36 weights: a (6, 6) product, every entry used
    layer = HashedLinear(9, 4, rank=6, seed=2)
    layer.fit_(dense.weight)
    layer.bias.data.copy_(dense.bias)
    assert torch.allclose(layer.virtual_weight(), dense.weight, atol=1e-6)
    x = torch.randn(3, 9)
    assert torch.allclose(layer(x), dense(x), atol=1e-6)
    left, right = product_factors(dense.weight, layer.index, layer.sign, 2)  # rank 2: the SVD's best fit
    target = torch.zeros(36).index_put_((layer.index.flatten(),), (layer.sign * dense.weight).flatten().detach())
    s = torch.linalg.svdvals(target.view(6, 6))
    assert torch.allclose((left @ right - target.view(6, 6)).norm(), s[2:].norm(), atol=1e-5)


def test_hash_product_recovers_a_weight_that_is_already_a_hashed_product():
    source = HashedLinear(16, 9, rank=3, seed=5)  # 144 weights: a (12, 12) product
    model = nn.Sequential(OrderedDict(fc=nn.Linear(16, 9)))
    with torch.no_grad():
        model.fc.weight.copy_(source.virtual_weight())
        model.fc.bias.copy_(source.bias)
    assert hash_(model, 0.5, seed=5, structure="product") == {"fc": 3}  # 3 * (12 + 12) = 0.5 * 144
    assert model.fc.rank == 3 and parameter_count(model) == 72 + 9
    x = torch.randn(3, 16)
    assert torch.allclose(model(x), source(x), atol=1e-5)


def test_product_hashed_lenet_counts_saves_and_reloads():
    model = build("lenet-300-100", (1, 8, 8))
    dense = build("lenet-300-100", (1, 8, 8))
    assert hash_(model, layers={"fc1": 1 / 8}) == {"fc1": 2_400}  # buckets: an edit without "structure"
    assert hash_(model, layers={"fc2": 1 / 8, "fc3": 1 / 8}, structure="product") == {"fc2": 11, "fc3": 2}
    # fc2: 30,000 weights in a (174, 173) product, 11 * 347 = 3,817 ~ 3,750; fc3: 1,000 in (32, 32), 2 * 64 = 128
    for layer, numel in ((model.fc2, 30_000), (model.fc3, 1_000)):
        m, n = layer.left.shape[0], layer.right.shape[1]
        assert abs(layer.rank * (m + n) - numel / 8) <= (m + n) / 2
    assert parameter_count(model) == 2_400 + 300 + 3_817 + 100 + 128 + 10
    assert arch_of(model)["edits"] == [{"op": "hash", "module": "fc1", "buckets": 2_400, "seed": 0},
                                       {"op": "hash", "module": "fc2", "structure": "product", "rank": 11, "seed": 0},
                                       {"op": "hash", "module": "fc3", "structure": "product", "rank": 2, "seed": 0}]
    data = modelzip.dumps(model)
    x = torch.randn(5, 1, 8, 8)
    for loaded in modelzip.loads(data), modelzip.loads(data, dense):  # rebuilt, and into a fresh float model
        assert loaded.fc1.rank is None and loaded.fc2.rank == 11 and torch.equal(loaded.fc2.index, model.fc2.index)
        assert torch.equal(loaded(x), model.eval()(x))
    assert 4 * (2_400 + 3_817 + 128 + 410) < len(data) < 4 * 8_000
    empty = rebuild(arch_of(model), device="meta")
    assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_product_hashed_lenet_5_convolutions_reload(tmp_path):
    model = build("lenet-5")
    # conv1: 500 weights, (23, 22): rank round(250 / 45) = 6; conv2: 25,000, (159, 158): round(12,500 / 317) = 39
    assert hash_(model, {"conv": 0.5, "linear": None}, structure=HashStructure.PRODUCT) == {"conv1": 6, "conv2": 39}
    assert isinstance(model.conv2, HashedConv2d) and model.conv2.left.shape == (159, 39)
    modelzip.save(model, tmp_path / "smh.mzip")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(modelzip.load(tmp_path / "smh.mzip")(x), model.eval()(x))


def test_a_product_hashed_lenet_trains_on_digits(digits):
    torch.manual_seed(0)
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    assert hash_(model, 1 / 8, structure="product") == {"fc1": 9, "fc2": 11, "fc3": 2}
    fit(model, digits.train, TrainConfig(epochs=20, lr=3e-3))
    # 0.953 with 6,857 parameters (buckets at the same ratio: 0.964 with 6,685; dense: 0.964 with 50,610)
    assert evaluate(model, digits.test) > 0.85


def test_product_factors_are_compressible_weights():
    model = build("lenet-300-100", (1, 8, 8))
    hash_(model, layers={"fc1": 1 / 8}, structure="product")
    assert [(t.name, t.param) for t in targets(model)][:2] == [("fc1", "left"), ("fc1", "right")]
    prune_(model, 0.5)
    assert (model.fc1.left == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    modelzip.strip(model)
    quantize_(model, 3)  # structured multi-hashing, then pruning and k-means sharing of the factors
    assert model.fc1.left.unique().numel() <= 8 and model.fc1.right.unique().numel() <= 8
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(modelzip.loads(modelzip.dumps(model))(x), model.eval()(x))


def test_product_errors():
    with pytest.raises(ConfigError, match="structure must be one of 'buckets', 'product', got 'rank'"):
        hash_(build("lenet-300-100"), 0.5, structure="rank")
    with pytest.raises(ConfigError, match="not both"):
        HashedLinear(5, 3, buckets=4, rank=2)
    with pytest.raises(ConfigError, match=r"rank must be an integer in \[1, 4\]"):
        HashedLinear(5, 3, rank=5)
    for edit in ({"structure": "rank", "rank": 2}, {"structure": "product", "rank": 0}, {"structure": "product"}):
        with pytest.raises(ModelError, match="hash edit .*'fc1'"):
            rebuild({"name": "lenet-300-100", "edits": [{"op": "hash", "module": "fc1", "seed": 0, **edit}]})
