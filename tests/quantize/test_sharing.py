import numpy as np
import pytest
import torch

from modelzip.layers import plain_state_dict, strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize import Init, SharedWeights, initial_centroids, kmeans_codebook, quantize_


def test_kmeans_on_five_points():
    centroids, assignment = kmeans_codebook(torch.tensor([0.0, 0.1, 0.2, 1.0, 1.2]), 2)
    assert centroids.tolist() == pytest.approx([0.1, 1.1])
    assert assignment.tolist() == [0, 0, 0, 1, 1]


def test_initialisations():
    w = np.array([-1.0, -0.1, 0.0, 0.05, 0.1, 2.0])
    assert initial_centroids(w, 4, Init.LINEAR).tolist() == pytest.approx([-1, 0, 1, 2])
    assert initial_centroids(w, 2, Init.DENSITY).tolist() == pytest.approx(np.quantile(w, [0.25, 0.75]))
    random = initial_centroids(w, 3, Init.RANDOM, seed=1)
    assert set(random) <= set(w) and len(set(random)) == 3


def test_fewer_distinct_weights_than_codes():
    centroids, assignment = kmeans_codebook(torch.tensor([1.0, 1.0, 2.0]), 8)
    assert centroids.tolist() == [1.0, 2.0] and assignment.tolist() == [0, 0, 1]


def test_centroid_gradient_is_the_sum_of_member_gradients():
    model = build("lenet-300-100")
    prune_(model, 0.7)
    quantize_(model, 4)
    shared = model.fc2.parametrizations.weight[0]
    assert isinstance(shared, SharedWeights) and shared.centroids.numel() == 15
    x = torch.randn(8, 1, 28, 28)
    # the gradient each shared weight would get if it were free: d loss / d W, through a plain copy
    plain = strip(build("lenet-300-100"))
    plain.load_state_dict(plain_state_dict(model))
    plain(x).square().sum().backward()
    model(x).square().sum().backward()
    codes = shared.codes
    expected = torch.stack([plain.fc2.weight.grad[codes == c + 1].sum() for c in range(15)])
    assert torch.allclose(shared.centroids.grad, expected, rtol=1e-4, atol=1e-6)


def test_quantized_layer_has_the_codebook_and_zeros():
    model = build("lenet-5")
    prune_(model, {"linear": 0.9, "conv": 0.5})
    sizes = quantize_(model, {"linear": 5, "conv": 8}, layers={"fc2": 3})
    assert sizes == {"conv1.weight": 250, "conv2.weight": 255, "fc1.weight": 31, "fc2.weight": 7}
    strip(model)
    fc1 = model.fc1.weight
    assert fc1.unique().numel() == 32 and (fc1 == 0).float().mean().item() == pytest.approx(0.9, abs=1e-4)
    assert model.fc2.weight.unique().numel() == 8


def test_plain_state_dict_leaves_the_model_working():
    model = build("lenet-300-100")
    prune_(model, 0.5)
    quantize_(model, 3)
    state = plain_state_dict(model)
    assert list(state) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]
    assert state["fc1.weight"].unique().numel() == 8
    model(torch.zeros(1, 1, 28, 28))  # still parametrized and working
    assert torch.equal(strip(model).fc1.weight, state["fc1.weight"])
