import pytest
import torch
from torch import nn

import modelzip
from modelzip.errors import ConfigError, ModelError
from modelzip.quantize.datafree import calibrate_activations, statistics_loss, synthesize
from modelzip.quantize.uniform import QuantSpec, fake_quantize, percentile_range, qparams
from modelzip.train import TrainConfig, evaluate, fit

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def trained(digits):
    """A small batch-norm CNN, 5 quick epochs on the digits: ~92% test accuracy in about a second."""
    torch.manual_seed(0)
    model = modelzip.build("vgg-bn", SHAPE, widths=[8, "M", 16])
    fit(model, digits.train, TrainConfig(epochs=5, batch_size=32, lr=0.01))
    return model.eval()


def noise(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((count, *SHAPE), generator=torch.Generator().manual_seed(seed))


def quantized_accuracy(model: nn.Module, ranges: dict, spec: QuantSpec, test) -> float:
    """Test accuracy with every calibrated layer's input fake-quantized on its recorded range."""
    def hook(lo, hi):
        return lambda module, args: fake_quantize(args[0], *qparams(args[0], spec, lo=lo, hi=hi), spec)
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(hook(lo, hi)) for name, (lo, hi) in ranges.items()]
    try:
        return evaluate(model, test)
    finally:
        for handle in handles:
            handle.remove()


def test_statistics_loss_by_hand():
    bn = nn.BatchNorm1d(2)
    # batch mean (2, 0), biased variance (1, 0) against running (0, 0), (1, 1): |(2, 0)| + |(0, -1)| = 3
    assert statistics_loss(nn.Sequential(bn), torch.tensor([[1.0, 0.0], [3.0, 0.0]])) == pytest.approx(3.0)
    bn2 = nn.BatchNorm2d(1)
    bn2.running_mean.fill_(0.5)
    bn2.running_var.fill_(2.0)
    # one channel reduced over batch and both spatial axes: mean 2.5, variance 1.25 -> |2| + |-0.75|
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert statistics_loss(nn.Sequential(bn2, nn.Flatten()), x) == pytest.approx(2.75)
    assert bn2.num_batches_tracked.item() == 0 and bn2.running_mean.item() == 0.5  # eval mode: nothing updated


def test_synthesis_matches_batch_norm_statistics_and_leaves_the_model_alone(trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.train()
    trained.norm2.eval()  # a mixed-mode model comes back mixed
    trained.fc.bias.requires_grad_(False)
    trained.zero_grad(set_to_none=True)  # fit leaves the last step's gradients
    try:
        x = synthesize(trained, SHAPE, 128, steps=200)
        assert x.shape == (128, *SHAPE) and not x.requires_grad
        # the starting noise (same seed) is far from the statistics; the distilled inputs are close
        start, end = statistics_loss(trained, noise(64)), statistics_loss(trained, x)
        assert start > 10.0 and end < start / 10
        assert trained.training and trained.conv1.training and not trained.norm2.training
        assert [p.requires_grad for p in trained.parameters()] == [True] * 7 + [False]  # fc.bias is last
        assert all(p.grad is None for p in trained.parameters())
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in trained.modules())
        after = trained.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    finally:
        trained.eval()
        trained.fc.bias.requires_grad_(True)


def test_synthesis_is_seeded_and_starts_from_gaussian_noise(trained):
    assert torch.equal(synthesize(trained, SHAPE, 8, steps=0, seed=3), noise(8, seed=3))
    a, b = synthesize(trained, SHAPE, 10, steps=5, batch_size=4, seed=1), synthesize(
        trained, SHAPE, 10, steps=5, batch_size=4, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, synthesize(trained, SHAPE, 10, steps=5, batch_size=4, seed=2))


def test_random_labels_make_confident_inputs(trained):
    confidence = {}
    for labels in (None, "random"):
        x = synthesize(trained, SHAPE, 64, steps=200, labels=labels)
        with torch.no_grad():
            confidence[labels] = trained(x).softmax(1).amax(1).mean().item()
    assert confidence["random"] > 0.9 and confidence[None] < 0.6


def test_failed_synthesis_restores_the_model(trained):
    trained.train()
    try:
        with pytest.raises(RuntimeError):  # 3 channels into a 1-channel conv
            synthesize(trained, (3, 8, 8), 4, steps=1)
        assert all(m.training for m in trained.modules()) and all(p.requires_grad for p in trained.parameters())
        assert all(not m._forward_pre_hooks for m in trained.modules())
    finally:
        trained.eval()


def test_calibration_ranges_on_every_linear_and_conv_input(trained, digits):
    x = synthesize(trained, SHAPE, 128, steps=200)
    ranges = calibrate_activations(trained, x, batch_size=50)
    assert list(ranges) == ["conv1", "conv2", "fc"]
    assert ranges["conv1"][0].item() == x.min().item() and ranges["conv1"][1].item() == x.max().item()
    assert ranges["conv2"][0].item() == 0.0 and ranges["fc"][0].item() == 0.0  # after ReLU
    assert ranges["conv2"][1].item() > 0 and ranges["fc"][1].item() > 0
    # percentile over the whole set, not per batch of 50
    lo, hi = calibrate_activations(trained, x, "percentile", batch_size=50)["conv1"]
    assert (lo, hi) == percentile_range(x, QuantSpec(8, symmetric=False))
    real = calibrate_activations(trained, digits.train.tensors[0][:128])
    assert (real["conv1"][0].item(), real["conv1"][1].item()) == (0.0, 1.0)  # pixels in [0, 1]


def test_data_free_calibration_is_as_accurate_as_real_data(trained, digits):
    real, fake, raw = digits.train.tensors[0][:128], synthesize(trained, SHAPE, 128, steps=200), noise(128)
    accuracy = {}
    for bits in (8, 4):
        spec = QuantSpec(bits, symmetric=False)
        for name, x in (("real", real), ("synthetic", fake), ("noise", raw)):
            accuracy[bits, name] = quantized_accuracy(trained, calibrate_activations(trained, x, spec=spec), spec,
                                                      digits.test)
    assert accuracy[8, "real"] > 0.85 and abs(accuracy[8, "synthetic"] - accuracy[8, "real"]) <= 0.02
    # at 4 bits the range matters: distilled inputs stay within 5 points, the starting noise loses > 20
    assert accuracy[4, "synthetic"] >= accuracy[4, "real"] - 0.05
    assert accuracy[4, "noise"] < accuracy[4, "real"] - 0.2


def test_errors(trained):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ModelError, match="needs batch norms"):
        synthesize(plain, SHAPE, 4)
    with pytest.raises(ModelError, match="needs batch norms"):
        statistics_loss(plain, noise(4))
    with pytest.raises(ModelError, match="no Linear or Conv"):
        calibrate_activations(nn.Sequential(nn.BatchNorm2d(1)), noise(4))
    bad = [dict(count=0), dict(steps=-1), dict(batch_size=0), dict(lr=0.0), dict(prior_weight=-1.0),
           dict(labels="bogus"), dict(input_shape=(1, 0, 8))]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            synthesize(trained, **{"input_shape": SHAPE, "count": 4, **kwargs})
    with pytest.raises(ConfigError, match="unknown observer"):
        calibrate_activations(trained, noise(4), "bogus")
    with pytest.raises(ConfigError, match="per tensor"):
        calibrate_activations(trained, noise(4), spec=QuantSpec(8, per_channel=True))
