import pytest
import torch

from modelzip.errors import ConfigError, ModelError
from modelzip.layers import strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize import quantize_
from modelzip.quantize.qat import (LSQ, BinaryWeights, FakeQuant, TernaryWeights, fake_quantize_ste,
                                   prepare_qat)
from modelzip.quantize.uniform import QuantSpec, fake_quantize, qparams
from modelzip.train import TrainConfig, evaluate, fit


def test_ste_passes_the_gradient_inside_the_clipping_range_only():
    spec = QuantSpec(8)
    w = torch.tensor([-2.0, -0.5, 0.0, 0.25, 0.9, 1.5, 3.0], requires_grad=True)
    scale, zero_point = qparams(w.detach(), spec, lo=-1.0, hi=1.0)
    c = torch.tensor([0.3, -1.7, 2.0, 0.1, -0.4, 5.0, 1.0])
    out = fake_quantize_ste(w, scale, zero_point, spec)
    (out * c).sum().backward()
    assert torch.equal(w.grad, torch.tensor([0.0, -1.7, 2.0, 0.1, -0.4, 0.0, 0.0]))
    assert torch.equal(out, fake_quantize(w.detach(), scale, zero_point, spec))
    assert out[0].item() == -1.0 and out[-1].item() == 1.0  # clipped to the range


def test_ste_with_asymmetric_per_channel_range():
    spec = QuantSpec(4, symmetric=False, per_channel=True)
    w = torch.tensor([[-1.5, 0.5, 2.5], [0.0, 1.2, -3.0]], requires_grad=True)
    scale, zero_point = qparams(w.detach(), spec, lo=torch.tensor([-1.0, 0.0]), hi=torch.tensor([2.0, 1.5]))
    assert scale.tolist() == pytest.approx([0.2, 0.1]) and zero_point.tolist() == [5, 0]
    fake_quantize_ste(w, scale, zero_point, spec).sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


def test_percentile_fake_quant_gives_no_gradient_to_the_clipped_outlier():
    w = torch.cat([torch.linspace(-1, 1, 99), torch.tensor([50.0])]).requires_grad_()
    FakeQuant(QuantSpec(8), "percentile")(w).sum().backward()
    assert w.grad[-1].item() == 0.0 and bool((w.grad[:-1] == 1).all())


def test_lsq_step_and_its_scaled_gradient_by_hand():
    w = torch.tensor([0.1, -0.5, 2.0, 0.3], requires_grad=True)
    lsq = LSQ(w.detach(), QuantSpec(2))  # qmax = 1
    assert lsq.step.item() == pytest.approx(2 * 0.725 / 1)  # 2 mean|w| / sqrt(qmax)
    out = lsq(w)
    assert torch.equal(out, fake_quantize(w.detach(), lsq.step.detach(), torch.tensor(0), QuantSpec(2)))
    out.sum().backward()
    # w / s = [0.069, -0.345, 1.379 (clipped to 1), 0.207]: round(w/s) - w/s inside, the code 1 outside;
    # sum = 1 + (-0.1 + 0.5 - 0.3) / 1.45, times g = 1 / sqrt(4 * 1)
    assert lsq.step.grad.item() == pytest.approx(0.5 * (1 + 0.1 / 1.45), rel=1e-6)
    assert w.grad.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_lsq_per_channel_scales_each_step_by_its_channel_size():
    w = torch.tensor([[1.0, -1.0, 0.5], [0.0, 0.0, 3.0]], requires_grad=True)
    lsq = LSQ(w.detach(), QuantSpec(8, per_channel=True))
    assert lsq.step.tolist() == pytest.approx([2 * (2.5 / 3) / 127 ** 0.5, 2 * 1.0 / 127 ** 0.5])
    assert lsq.grad_scale == pytest.approx(1 / (3 * 127) ** 0.5)
    lsq(w).sum().backward()
    assert lsq.step.grad.shape == (2,)
    with pytest.raises(ConfigError, match="symmetric"):
        LSQ(w.detach(), QuantSpec(symmetric=False))


def test_binary_weights_by_hand():
    w = torch.tensor([[0.5, -1.5, 1.0], [-0.2, 0.4, 0.0]], requires_grad=True)
    out = BinaryWeights(QuantSpec(per_channel=True))(w)
    # alpha = mean |w|: 1.0 for row 0, 0.3 over the nonzero weights of row 1 (the zero is pruned, stays 0)
    assert torch.allclose(out, torch.tensor([[1.0, -1.0, 1.0], [-0.3, 0.3, 0.0]]), rtol=1e-6, atol=0)
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]  # clipped where |w| > 1
    per_tensor = BinaryWeights(QuantSpec())(w.detach())  # alpha = 3.6 / 5 nonzero weights
    assert torch.allclose(per_tensor, torch.tensor([[0.72, -0.72, 0.72], [-0.72, 0.72, 0.0]]), rtol=1e-6, atol=0)


def test_ternary_weights_by_hand():
    w = torch.tensor([[0.1, -0.8, 0.9, 0.2], [1.0, -0.3, 0.0, 0.5]], requires_grad=True)
    out = TernaryWeights(QuantSpec(per_channel=True))(w)
    # row 0: delta = 0.7 * 0.5 = 0.35, alpha = (0.8 + 0.9) / 2; row 1: delta = 0.7 * 0.6 = 0.42, alpha = 0.75
    expected = torch.tensor([[0.0, -0.85, 0.85, 0.0], [0.75, 0.0, 0.0, 0.75]])
    assert torch.allclose(out, expected, rtol=1e-6, atol=0) and torch.equal(out == 0, expected == 0)
    out.sum().backward()
    assert bool((w.grad == 1).all())


def _lenet(digits):
    return build("lenet-300-100", digits.input_shape, digits.num_classes)


def test_qat_4_bits_trains_and_strips_to_the_quantized_values(digits):
    model = _lenet(digits)
    spec = QuantSpec(4)
    quantizers = prepare_qat(model, spec)
    assert list(quantizers) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    fit(model, digits.train, TrainConfig(epochs=8, lr=3e-3))
    accuracy = evaluate(model, digits.test)
    assert accuracy > 0.8
    layers = [model.fc1, model.fc2, model.fc3]
    latent = [layer.parametrizations.weight.original.detach().clone() for layer in layers]
    strip(model)
    assert evaluate(model, digits.test) == accuracy
    for layer, w in zip(layers, latent):
        assert torch.equal(layer.weight, fake_quantize(w, *qparams(w, spec), spec))
        assert layer.weight.unique().numel() <= 16


@pytest.mark.parametrize("method, levels", [("uniform", 16), ("lsq", 16), ("binary", 3), ("ternary", 3)])
def test_pruned_model_keeps_its_zeros(digits, method, levels):
    model = _lenet(digits)
    prune_(model, 0.8)
    masks = [layer.parametrizations.weight[0].mask.clone() for layer in (model.fc1, model.fc2, model.fc3)]
    prepare_qat(model, {"linear": QuantSpec(4, per_channel=True)}, layers={"fc3": QuantSpec(3, per_channel=True)},
                method=method)
    fit(model, digits.train, TrainConfig(epochs=1, lr=3e-3))
    strip(model)
    for layer, mask, bits in zip((model.fc1, model.fc2, model.fc3), masks, (4, 4, 3)):
        assert bool((layer.weight[~mask] == 0).all())
        assert max(row.unique().numel() for row in layer.weight) <= min(levels, 2 ** bits)


def test_prepare_refuses_what_it_cannot_quantize(digits):
    model = _lenet(digits)
    quantize_(model, 3)
    with pytest.raises(ModelError, match="fc1.weight already has a SharedWeights"):
        prepare_qat(model, QuantSpec(4))
    with pytest.raises(ConfigError, match="uniform, lsq, binary, ternary"):
        prepare_qat(_lenet(digits), method="dorefa")
    with pytest.raises(ConfigError, match="symmetric"):
        prepare_qat(_lenet(digits), QuantSpec(symmetric=False), method="lsq")
