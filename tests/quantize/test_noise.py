import pytest
import torch

from modelzip.errors import ConfigError, ModelError
from modelzip.layers import strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize.noise import (NearestCodeword, QuantNoise, block_mask, finish_quant_noise,
                                     prepare_quant_noise)
from modelzip.quantize.pq import blocks, nearest_codes, pq_decode
from modelzip.quantize.qat import FakeQuant
from modelzip.quantize.uniform import Observer, QuantSpec, fake_quantize, qparams
from modelzip.train import TrainConfig, evaluate, fit


def _quantized(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return fake_quantize(w, *qparams(w, spec), spec)


@pytest.mark.parametrize("bits", [8, 4])
def test_no_noise_is_the_weight_and_full_noise_the_quantized_weight(bits):
    spec = QuantSpec(bits)
    w = torch.randn(6, 16, requires_grad=True)
    assert torch.equal(QuantNoise(FakeQuant(spec), 0.0, 4)(w), w)
    assert torch.equal(QuantNoise(FakeQuant(spec), 1.0, 4)(w), _quantized(w.detach(), spec))


def test_half_the_blocks_are_quantized_exactly_where_the_mask_says():
    spec = QuantSpec(4)
    w = torch.randn(6, 20)
    torch.manual_seed(3)
    mask = block_mask(w, 4, 0.5)
    torch.manual_seed(3)
    out = QuantNoise(FakeQuant(spec), 0.5, 4)(w.requires_grad_())
    assert torch.equal(out, torch.where(mask, _quantized(w.detach(), spec), w.detach()))
    per_block = blocks(mask, 4)  # (6, 5, 4): a block is quantized as a whole
    assert bool((per_block == per_block[..., :1]).all())
    assert int(per_block[..., 0].sum()) == 19  # of 30 blocks, p = 0.5
    ragged = block_mask(torch.zeros(3, 20), 8, 0.5)  # blocks of 8, 8 and a last one of 4 per row
    assert bool((ragged[:, 16:] == ragged[:, 16:17]).all())


def test_gradient_is_identity_on_full_precision_blocks_and_the_ste_on_quantized_ones():
    w = torch.linspace(-1, 1, 64).reshape(4, 16)
    w[0, 0] = 50.0  # the percentile range clips this outlier
    w.requires_grad_()
    g = torch.randn(4, 16)
    torch.manual_seed(0)
    mask = block_mask(w, 4, 0.5)
    assert bool(mask[0, 0]) and not bool(mask.all())
    torch.manual_seed(0)
    (QuantNoise(FakeQuant(QuantSpec(8), Observer.PERCENTILE), 0.5, 4)(w) * g).sum().backward()
    inside = torch.ones(4, 16)
    inside[0, 0] = 0.0
    assert torch.equal(w.grad, torch.where(mask, g * inside, g))


def test_evaluation_sees_the_full_precision_weight_unless_p_is_one():
    w = torch.randn(4, 8)
    noise = QuantNoise(FakeQuant(QuantSpec(4)), 0.5, 4)
    with torch.no_grad():  # training mode, but no gradient to shape: no noise (this is what strip runs)
        assert torch.equal(noise(w), w)
    noise.eval()
    assert torch.equal(noise(w.requires_grad_()), w)
    noise.p = 1.0
    assert torch.equal(noise(w), _quantized(w.detach(), QuantSpec(4)))


def test_pq_noise_trains_the_codebook_and_passes_the_weight_gradient_straight_through():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    w = torch.tensor([[0.1, -0.2, 0.9, 1.2], [-0.8, 1.7, 0.2, 0.1], [1.1, 0.8, -1.2, 2.1]], requires_grad=True)
    g = torch.arange(12.0).reshape(3, 4)
    torch.manual_seed(1)
    mask = block_mask(w, 2, 0.5)
    torch.manual_seed(1)
    noise = QuantNoise(NearestCodeword(codebook), 0.5, 2)
    out = noise(w)
    codes = torch.tensor([[0, 1], [2, 0], [1, 2]])  # the nearest codeword of each pair, by hand
    assert torch.equal(nearest_codes(blocks(w, 2), codebook), codes)
    assert torch.equal(out, torch.where(mask, pq_decode(codebook, codes, (3, 4), 2), w.detach()))
    (out * g).sum().backward()
    assert torch.equal(w.grad, g)
    quantized = blocks(mask, 2)[..., 0]  # (3, 2)
    expected = torch.stack([blocks(g, 2)[(codes == c) & quantized].sum(0) for c in range(3)])
    assert 0 < int(quantized.sum()) < 6 and torch.equal(noise.quantizer.codebook.grad, expected)


def test_prepare_checks_its_settings_and_leaves_the_model_alone_on_error():
    model = build("lenet-300-100", (1, 8, 8))
    with pytest.raises(ConfigError, match="fc2.weight of shape \\(100, 300\\) has 300 columns"):
        prepare_quant_noise(model, 0.1, "pq", block_size=8, centroids=16)
    with pytest.raises(ConfigError, match="scalar, pq"):
        prepare_quant_noise(model, 0.1, "vector")
    with pytest.raises(ConfigError, match=r"p must be in \[0, 1\], got 1.5"):
        prepare_quant_noise(model, 1.5)
    with pytest.raises(ModelError, match="no Quant-Noise layers"):
        finish_quant_noise(model)
    assert not hasattr(model.fc1, "parametrizations")
    prune_(model, 0.5)
    with pytest.raises(ModelError, match="fc1.weight already has a Mask parametrization"):
        prepare_quant_noise(model, 0.1, "pq", block_size=4, centroids=16)
    assert list(prepare_quant_noise(model, 0.5, spec=QuantSpec(4), layers=["fc2"])) == ["fc2.weight"]
    masked = model.fc2.parametrizations.weight[0].mask.clone()
    strip(finish_quant_noise(model))
    assert bool((model.fc2.weight[~masked] == 0).all())  # pruned zeros stay zero through int4


def test_scalar_quant_noise_strips_to_exactly_the_quantized_weights(digits):
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    spec = QuantSpec(4, per_channel=True)
    assert list(prepare_quant_noise(model, 0.5, spec=spec)) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    fit(model, digits.train, TrainConfig(epochs=1, lr=3e-3))
    layers = [model.fc1, model.fc2, model.fc3]
    latent = [layer.parametrizations.weight.original.detach().clone() for layer in layers]
    with torch.no_grad():  # train mode but no autograd: full precision
        assert torch.equal(model.fc1.weight, latent[0])
    accuracy = evaluate(finish_quant_noise(model), digits.test)
    strip(model)
    assert evaluate(model, digits.test) == accuracy
    for layer, w in zip(layers, latent):
        assert torch.equal(layer.weight, _quantized(w, spec))


def _ipq_accuracy(base: torch.nn.Module, p: float, digits) -> float:
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    model.load_state_dict(base.state_dict())
    noises = prepare_quant_noise(model, p, "pq", block_size=4, centroids=16)
    fit(model, digits.train, TrainConfig(epochs=3, lr=1e-3))
    latent = model.fc2.parametrizations.weight.original.detach().clone()
    codebook = noises["fc2.weight"].quantizer.codebook.detach().clone()
    strip(finish_quant_noise(model))
    assert torch.equal(model.fc2.weight, pq_decode(codebook, nearest_codes(blocks(latent, 4), codebook), (100, 300), 4))
    assert blocks(model.fc2.weight, 4).reshape(-1, 4).unique(dim=0).shape[0] <= 16
    return evaluate(model, digits.test)


def test_ipq_quant_noise_end_to_end(digits):
    base = build("lenet-300-100", digits.input_shape, digits.num_classes)
    fit(base, digits.train, TrainConfig(epochs=5, lr=3e-3))
    noisy, qat = _ipq_accuracy(base, 0.1, digits), _ipq_accuracy(base, 1.0, digits)
    print(f"iPQ (block 4, 16 codewords) after strip: Quant-Noise p=0.1 {noisy:.3f}, p=1 (QAT) {qat:.3f}")
    assert noisy > 0.5 and qat > 0.5
