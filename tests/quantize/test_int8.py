import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.intrinsic.quantized import ConvReLU2d
from torch.ao.nn.quantized import Linear as QLinear
from torch.utils.data import DataLoader, TensorDataset

import modelzip
from modelzip.errors import ConfigError, ModelError
from modelzip.profile import compare_latency
from modelzip.quantize import QuantSpec, quantize_weights_
from modelzip.quantize.int8 import ACTIVATION, RangeObserver, int8_model
from modelzip.quantize.uniform import mse_range, percentile_range
from modelzip.train import TrainConfig, evaluate, fit

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def _engine():
    """int8_model sets the process-wide quantized engine on purpose; other tests get theirs back."""
    engine = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = engine


def trained(name, digits, **kwargs):
    torch.manual_seed(0)
    model = modelzip.build(name, SHAPE, 10, **kwargs)
    fit(model, digits.train, TrainConfig(epochs=5, batch_size=32, lr=0.01))
    return model.eval()


@pytest.fixture(scope="module")
def mlp(digits):
    """LeNet-300-100 on the 8x8 digits: ~97% test accuracy after 5 epochs (about a second)."""
    return trained("lenet-300-100", digits)


@pytest.fixture(scope="module")
def vgg(digits):
    """conv -> BN -> ReLU twice, global pooling, fc: ~92% test accuracy."""
    return trained("vgg-bn", digits, widths=[8, "M", 16])


def input_scale(q: nn.Module) -> float:
    """The scale the int8 model quantizes its input (or flattened input) with."""
    return next(float(v) for name, v in q.named_buffers() if name.endswith("_scale_0"))


@pytest.mark.parametrize("observe", ["minmax", "percentile", "mse"])
def test_int8_accuracy_is_within_two_points_of_float(mlp, vgg, digits, observe):
    for model in (mlp, vgg):
        q = int8_model(model, digits.train, observe=observe)
        assert evaluate(q, digits.test) >= evaluate(model, digits.test) - 0.02
    # the layers really run on int8 kernels, ReLU fused in, and the batch norms are folded away
    assert isinstance(q.conv1, ConvReLU2d) and isinstance(q.fc, QLinear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert q.conv1.weight().dtype == torch.qint8 and q.conv1.weight().qscheme() == torch.per_channel_affine


def test_exact_codes_of_a_coded_linear_model(mlp, digits):
    coded = copy.deepcopy(mlp)
    quantize_weights_(coded, QuantSpec(4, per_channel=True))
    q = int8_model(coded, digits.train)
    assert q.modelzip_exact_codes == ("fc1", "fc2", "fc3")
    for name in q.modelzip_exact_codes:
        weight, layer = q.get_submodule(name).weight(), coded.get_submodule(name)
        assert torch.equal(weight.int_repr(), layer.codes)
        assert torch.equal(weight.q_per_channel_scales(), layer.scale.double())
    assert int(q.fc1.weight().int_repr().abs().max()) <= 7  # 4-bit codes; torch's own observer would use 127
    assert evaluate(q, digits.test) >= evaluate(coded, digits.test) - 0.02


def test_per_tensor_codes_are_exact_and_asymmetric_ones_fall_back(mlp, digits):
    per_tensor = copy.deepcopy(mlp)
    quantize_weights_(per_tensor, QuantSpec(8))
    q = int8_model(per_tensor, digits.train)
    assert q.modelzip_exact_codes == ("fc1", "fc2", "fc3")
    assert torch.equal(q.fc2.weight().int_repr(), per_tensor.fc2.codes)
    assert q.fc2.weight().q_scale() == pytest.approx(float(per_tensor.fc2.scale))
    asymmetric = copy.deepcopy(mlp)
    quantize_weights_(asymmetric, QuantSpec(8, symmetric=False, per_channel=True))
    q = int8_model(asymmetric, digits.train)
    assert q.modelzip_exact_codes == ()
    assert evaluate(q, digits.test) >= evaluate(asymmetric, digits.test) - 0.02


def test_batch_norm_folded_layers_are_requantized(vgg, digits):
    coded = copy.deepcopy(vgg)
    quantize_weights_(coded, QuantSpec(4, per_channel=True))
    q = int8_model(coded, digits.train)
    assert q.modelzip_exact_codes == ("fc",)  # conv1, conv2 carry their batch norm now: new weights
    assert torch.equal(q.fc.weight().int_repr(), coded.fc.codes)
    assert int(q.conv2.weight().int_repr().abs().max()) == 127


def test_input_model_is_untouched(mlp, digits):
    model = copy.deepcopy(mlp).train()
    modelzip.prune_(model, 0.5)
    quantize_weights_(model, QuantSpec(8, per_channel=True), layers={"fc1": QuantSpec(4, per_channel=True)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    int8_model(model, digits.train, observe="percentile")
    assert model.training and all(m.training for m in model.modules())
    assert type(model.fc1).__name__ == "QuantizedLinear" and model.fc1.bits == 4
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_calibration_forms_give_the_same_ranges(mlp, digits):
    x = digits.train.tensors[0]
    forms = [x, digits.train, DataLoader(digits.train, batch_size=100), [x[:1000], x[1000:]]]
    scales = [input_scale(int8_model(mlp, form)) for form in forms]
    assert scales == pytest.approx([(float(x.max()) - min(float(x.min()), 0.0)) / 127] * 4)


def test_range_observer_matches_modelzip_ranges():
    x = torch.cat([torch.linspace(0, 1, 9999), torch.tensor([100.0])])
    observers = {name: RangeObserver(name, quant_min=0, quant_max=255) for name in ("minmax", "percentile", "mse")}
    for obs in observers.values():
        for batch in x.split(3000):
            obs(batch)
    assert float(observers["minmax"].calculate_qparams()[0]) == pytest.approx(100 / 255)
    for name, range_fn in (("percentile", percentile_range), ("mse", mse_range)):
        scale, zero_point = observers[name].calculate_qparams()
        want = observers[name]._calculate_qparams(*range_fn(x, ACTIVATION))
        assert torch.equal(scale, want[0]) and torch.equal(zero_point, want[1])
    assert float(observers["percentile"].calculate_qparams()[0]) < 1.01 / 255  # the outlier is clipped


def test_range_observer_samples_all_batches_alike():
    obs = RangeObserver("percentile", sample=400)
    for value in (0.0, 1.0, 2.0, 3.0):
        obs(torch.full((1000,), value))
    assert obs.seen == 4000 and len(obs.reservoir) == 400
    counts = torch.bincount(obs.reservoir.long(), minlength=4)
    assert counts.tolist() == pytest.approx([100] * 4, abs=40)  # a "first 400" sample would be all zeros


def test_int8_lenet5_has_exact_conv_codes_and_is_faster_than_float():
    model = modelzip.build("lenet-5", (1, 28, 28), 10).eval()
    coded = copy.deepcopy(model)
    quantize_weights_(coded, QuantSpec(8, per_channel=True))
    exact = int8_model(coded, torch.rand(64, 1, 28, 28))
    assert exact.modelzip_exact_codes == ("conv1", "conv2", "fc1", "fc2")
    assert torch.equal(exact.conv2.weight().int_repr(), coded.conv2.codes)
    q = int8_model(model, torch.rand(64, 1, 28, 28))
    assert torch.backends.quantized.engine == "x86"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = compare_latency({"float": model, "int8": q}, torch.rand(64, 1, 28, 28), rounds=15)
    finally:
        torch.set_num_threads(threads)
    assert times["float"] / times["int8"] >= 1.5  # ~4x measured on one thread


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) if x.sum() > 0 else -self.fc(x.flatten(1))


def test_errors(mlp, digits):
    x = digits.train.tensors[0][:10]
    with pytest.raises(ConfigError, match="backend 'tpu'"):
        int8_model(mlp, x, backend="tpu")
    with pytest.raises(ConfigError, match="unknown observer 'kl'"):
        int8_model(mlp, x, observe="kl")
    with pytest.raises(ConfigError, match="non-empty batch"):
        int8_model(mlp, x[:0])
    with pytest.raises(ConfigError, match="at least one input batch"):
        int8_model(mlp, [])
    with pytest.raises(ConfigError, match="got str"):
        int8_model(mlp, ["not a tensor"])
    with pytest.raises(ModelError, match="cannot trace Branchy .*TraceError"):
        int8_model(Branchy(), x)
    coded = nn.Sequential(nn.Linear(64, 10))
    quantize_weights_(coded, QuantSpec())
    with pytest.raises(ModelError, match="wrap it"):
        int8_model(coded[0], TensorDataset(x.flatten(1)))
