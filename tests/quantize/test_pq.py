import pytest
import torch
from torch import nn

from modelzip.errors import ConfigError, ModelError
from modelzip.layers import strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize.pq import PQWeights, blocks, code_bits, pq_bytes, pq_decode, pq_encode, pq_quantize_


def test_four_sub_vectors_two_codewords_by_hand():
    w = torch.tensor([[0.0, 0.0, 0.0, 1.0], [4.0, 4.0, 4.0, 5.0]])
    codebook, codes = pq_encode(w, 2, 2)
    # sub-vectors (0, 0), (0, 1) | (4, 4), (4, 5): two clusters with means (0, .5) and (4, 4.5)
    assert codebook.tolist() == [[0.0, 0.5], [4.0, 4.5]]
    assert codes.tolist() == [[0, 0], [1, 1]]
    assert pq_decode(codebook, codes, w.shape, 2).tolist() == [[0.0, 0.5, 0.0, 0.5], [4.0, 4.5, 4.0, 4.5]]


def test_decode_is_exact_with_a_codeword_per_distinct_sub_vector():
    distinct = torch.randn(5, 4)
    picks = torch.randint(0, 5, (6, 2))
    picks[0] = torch.tensor([0, 1])
    picks[1] = torch.tensor([2, 3])
    picks[2, 0] = 4  # every distinct sub-vector is used
    w = distinct[picks].reshape(6, 8)
    codebook, codes = pq_encode(w, 4, 8)
    assert codebook.shape == (5, 4) and codes.shape == (6, 2)
    assert torch.equal(pq_decode(codebook, codes, w.shape, 4), w)
    codebook, codes = pq_encode(w, 4, 3)
    assert codebook.shape == (3, 4) and int(codes.min()) >= 0 and int(codes.max()) == 2


def test_conv_weight_is_cut_along_in_times_kernel():
    w = torch.randn(4, 2, 3, 3)
    assert blocks(w, 9).shape == (4, 2, 9)  # one sub-vector per 3x3 kernel
    assert torch.equal(blocks(w, 9)[1, 1], w[1, 1].flatten())
    codebook, codes = pq_encode(w, 9, 8)
    assert codes.shape == (4, 2) and torch.equal(pq_decode(codebook, codes, w.shape, 9), w)
    with pytest.raises(ConfigError, match=r"conv of shape \(4, 2, 3, 3\) has 18 columns.*block_size 4"):
        pq_encode(w, 4, 8, name="conv")


def test_stored_size_by_hand():
    assert [code_bits(k) for k in (1, 2, 16, 17, 256)] == [0, 1, 4, 5, 8]
    # 300 x 64, blocks of 4: 4800 codes of 4 bits + 16 codewords of 4 floats = 19200 + 2048 bits
    assert pq_bytes((300, 64), 4, 16) == 2656
    # 270 weights in blocks of 9: 30 codes of 3 bits + 5 * 9 * 32 bits = 1530 bits -> 192 bytes (rounded up)
    assert pq_bytes((10, 3, 3, 3), 9, 5) == 192


def test_codeword_gradient_is_the_sum_of_its_sub_vectors_gradients():
    layer = nn.Linear(8, 3)
    assert pq_quantize_(layer, 2, 3) == {".weight": 3}
    pq = layer.parametrizations.weight[0]
    assert isinstance(pq, PQWeights) and not layer.parametrizations.weight.original.requires_grad
    x = torch.randn(5, 8)
    plain = nn.Linear(8, 3)
    plain.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
    plain(x).square().sum().backward()
    layer(x).square().sum().backward()
    grads = blocks(plain.weight.grad, 2)  # (3, 4, 2)
    expected = torch.stack([grads[pq.codes == c].sum(0) for c in range(3)])
    assert torch.allclose(pq.codebook.grad, expected, rtol=1e-5, atol=1e-6)


def test_quantize_selected_layers_and_strip_bakes_the_codebook():
    model = build("lenet-300-100", (1, 8, 8))
    assert pq_quantize_(model, 4, 16, layers=["fc1", "fc3"]) == {"fc1.weight": 16, "fc3.weight": 16}
    pq = model.fc1.parametrizations.weight[0]
    decoded = pq_decode(pq.codebook.detach(), pq.codes, (300, 64), 4)
    strip(model)
    assert torch.equal(model.fc1.weight, decoded)
    assert blocks(model.fc1.weight, 4).reshape(-1, 4).unique(dim=0).shape[0] == 16
    assert not hasattr(model.fc2, "parametrizations")


def test_bad_settings_name_the_layer_and_leave_the_model_alone():
    model = build("lenet-300-100", (1, 8, 8))
    with pytest.raises(ConfigError, match="fc2.weight of shape \\(100, 300\\) has 300 columns"):
        pq_quantize_(model, 8, 16)
    assert not hasattr(model.fc1, "parametrizations")  # fc1 (64 columns) was not quantized either
    with pytest.raises(ConfigError, match="'conv' matches no compressible layer"):
        pq_quantize_(model, 4, 16, layers=["conv"])
    with pytest.raises(ConfigError, match="list of name patterns"):
        pq_quantize_(model, 4, 16, layers="fc1")
    with pytest.raises(ConfigError, match="centroids >= 1"):
        pq_quantize_(model, 4, 0)
    prune_(model, 0.5)
    with pytest.raises(ModelError, match="fc1.weight already has a Mask parametrization"):
        pq_quantize_(model, 4, 16)
