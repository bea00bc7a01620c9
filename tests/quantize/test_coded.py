"""Coded layers: quantized weights held (and stored) as integer codes, computing what was trained, bit for bit."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip import io
from modelzip.errors import ConfigError, ModelError
from modelzip.layers import independent_copy, parameter_count, strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize import (PQConv2d, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, QuantSpec, coded_layer,
                               finish_quant_noise, pq_quantize_, prepare_qat, prepare_quant_noise, quantize_,
                               quantize_weights_)
from modelzip.quantize.qat import Codes

X = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build("lenet-5", (1, 28, 28), 10).eval()


def tensor_bytes(data: bytes, name: str) -> int:
    """Bytes the named tensor's sections take in a .mzip file."""
    header = io.codec.read_header(data)
    first, count = header["tensors"][name]["sections"]
    return sum(s["length"] for s in header["sections"][first:first + count])


@pytest.mark.parametrize(("method", "spec", "bits", "dtype"), [
    ("uniform", QuantSpec(4, per_channel=True), 4, torch.int8),
    ("lsq", QuantSpec(4, per_channel=True), 4, torch.int8),
    ("binary", QuantSpec(per_channel=True), 1, torch.int8),
    ("ternary", QuantSpec(per_channel=False), 2, torch.int8),
    ("uniform", QuantSpec(8, symmetric=False), 8, torch.uint8),
])
def test_qat_layers_become_codes_that_compute_the_same(lenet, method, spec, bits, dtype):
    model = copy.deepcopy(lenet)
    prepare_qat(model, spec, method=method)
    trained = model(X)
    stripped = strip(independent_copy(model))
    assert quantize_weights_(model) == dict.fromkeys(["conv1", "conv2", "fc1", "fc2"], f"{bits}-bit")
    assert isinstance(model.conv1, QuantizedConv2d) and isinstance(model.fc1, QuantizedLinear)
    assert model.fc1.codes.dtype == dtype and "weight" not in model.state_dict().keys() - {"fc1.bias"}
    assert torch.equal(model(X), trained)
    plain = model.fc1.decoded()  # the float layer it stands for: a real weight Parameter, same outputs
    assert type(plain) is nn.Linear and torch.equal(plain.weight, model.fc1.weight)
    features = torch.randn(4, 800)
    assert torch.equal(plain(features), model.fc1(features))
    assert parameter_count(model) == parameter_count(lenet) == 431_080  # codes count as the weights they are
    for name in ("conv1", "fc1"):
        assert torch.equal(getattr(model, name).weight, getattr(stripped, name).weight)
    codes = model.fc1.codes.long()
    assert codes.unique().numel() <= 2 ** bits if bits > 1 else set(codes.unique().tolist()) <= {-1, 1}
    data = io.dumps(model)
    loaded = io.loads(data)
    assert isinstance(loaded.fc1, QuantizedLinear) and torch.equal(loaded(X), trained)
    into_float = io.loads(data, build("lenet-5", (1, 28, 28), 10))  # the edits turn the user's model coded
    assert torch.equal(into_float(X), trained)
    # stored at the codes' width (or below, Huffman-coded): fc1's 400,000 codes
    assert tensor_bytes(data, "fc1.codes") <= 400_000 * bits / 8 + 300


def test_post_training_quantization_error_is_within_half_a_step(lenet):
    model = copy.deepcopy(lenet)
    quantize_weights_(model, QuantSpec(4, per_channel=True))
    for name in ("conv2", "fc1"):
        layer, float_weight = getattr(model, name), getattr(lenet, name).weight
        step = layer.scale.reshape(-1, *[1] * (float_weight.dim() - 1))
        assert ((layer.weight - float_weight).abs() <= step / 2 * (1 + 1e-6)).all()
        assert layer.codes.abs().max() == 7  # min-max range: the largest weight of each row is +-7
    assert len(io.dumps(model)) < len(io.dumps(lenet)) / 7


def test_per_layer_specs_and_pruned_zeros(lenet):
    model = copy.deepcopy(lenet)
    prune_(model, 0.8)
    kept = model.fc1.weight != 0
    done = quantize_weights_(model, QuantSpec(8, per_channel=True), layers={"fc1": QuantSpec(3, per_channel=True)})
    assert done == {"conv1": "8-bit", "conv2": "8-bit", "fc1": "3-bit", "fc2": "8-bit"}
    assert torch.equal(model.fc1.codes != 0, kept)  # pruned weights are code 0; kept ones never round to it here
    assert model.fc1.codes.abs().max() == 3
    plain = io.dumps(copy.deepcopy(model))
    assert io.codec.read_header(plain)["tensors"]["fc1.codes"]["encoding"] == "sparse"


def test_product_quantized_layers(lenet):
    model = copy.deepcopy(lenet)
    pq_quantize_(model, block_size=5, centroids=16, layers=["conv2"])
    expected = model(X)
    done = quantize_weights_(model, layers={"conv1": QuantSpec(8), "fc*": QuantSpec(8)})
    assert done["conv2"] == "pq 16x5" and isinstance(model.conv2, PQConv2d)
    assert model.conv2.codes.dtype == torch.uint8 and model.conv2.codes.shape == (50, 100)
    assert torch.equal(model.conv2.weight, strip(independent_copy(model)).conv2.weight)
    data = io.dumps(model)
    assert tensor_bytes(data, "conv2.codes") <= 5000 * 4 / 8 + 16  # 4 bits per 5 weights, plus the 16 code values
    assert torch.allclose(io.loads(data)(X), model(X)) and not torch.equal(model(X), expected)  # fc layers now 8-bit


def test_quant_noise_converts_once_finished(lenet):
    model = copy.deepcopy(lenet)
    prepare_quant_noise(model, 0.5, "pq", block_size=5, centroids=8, layers=["conv2"])
    with pytest.raises(ModelError, match="p = 0.5 is partly full precision; call finish_quant_noise"):
        quantize_weights_(model)
    assert not isinstance(model.conv1, QuantizedConv2d)  # nothing changed
    finish_quant_noise(model)
    expected = model(X)
    quantize_weights_(model, QuantSpec(8), layers={"conv1": QuantSpec(8)})
    assert isinstance(model.conv2, PQConv2d)
    assert torch.equal(model.conv2.weight, strip(independent_copy(model)).conv2.weight)
    assert not torch.equal(model(X), expected)  # the other layers were float and are now 8-bit


def test_errors(lenet):
    model = copy.deepcopy(lenet)
    quantize_(model, 3)
    with pytest.raises(ModelError, match="layer .conv1. has a SharedWeights parametrization, which has no integer"):
        quantize_weights_(model)
    with pytest.raises(ConfigError, match="per output channel \\(axis 0\\), got axis 1"):
        quantize_weights_(copy.deepcopy(lenet), QuantSpec(8, per_channel=True, axis=1))
    broken = copy.deepcopy(lenet)
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="layer 'fc1' has NaN or infinite weights"):
        quantize_weights_(broken)
    with pytest.raises(ModelError, match="no nn.Linear, nn.Conv2d or nn.Embedding"):
        quantize_weights_(nn.Sequential(nn.Bilinear(3, 3, 2)))


def test_embedding_tables_become_int_codes_per_token_and_decode_only_the_rows_looked_up(tmp_path):
    model = nn.Sequential(nn.Embedding(50, 12, padding_idx=0), nn.Linear(12, 3))
    ids = torch.randint(0, 50, (4, 7))
    before = model(ids)
    assert quantize_weights_(model, QuantSpec(8, per_channel=True)) == {"0": "8-bit", "1": "8-bit"}
    table = model[0]
    assert isinstance(table, QuantizedEmbedding) and table.codes.dtype == torch.int8 and table.scale.shape == (50,)
    assert torch.equal(table(ids), F.embedding(ids, table.weight))  # the gathered rows decode exactly
    assert (model(ids) - before).abs().max() < 0.02
    modelzip.save(model, tmp_path / "e.mzip")
    loaded = modelzip.load(tmp_path / "e.mzip", nn.Sequential(nn.Embedding(50, 12, padding_idx=0), nn.Linear(12, 3)))
    assert isinstance(loaded[0], QuantizedEmbedding) and torch.equal(loaded(ids), model(ids))
    stored = modelzip.header(tmp_path / "e.mzip")["tensors"]
    assert "0.weight" not in stored and stored["0.codes"]["dtype"] == "int8"


def test_group_wise_codes_decode_per_group_of_inputs():
    layer = nn.Linear(8, 2)
    codes = torch.arange(-8, 8, dtype=torch.int32).reshape(2, 8).clamp(-7, 7)
    scale = torch.tensor([[1.0, 10.0], [0.5, 2.0]])
    coded = coded_layer(layer, Codes(codes, scale, torch.zeros(2, 2, dtype=torch.int32), 4))
    assert coded.group_size == 4
    expected = codes.float() * scale.repeat_interleave(4, dim=1)
    assert torch.equal(coded.weight, expected)
    with pytest.raises(ConfigError, match="group size must divide the 8 inputs"):
        QuantizedLinear(8, 2, bits=4, group_size=3)


def test_a_bad_quantize_edit_is_refused(lenet):
    model = copy.deepcopy(lenet)
    quantize_weights_(model)
    model.modelzip_arch["edits"][0]["kind"] = "fp4"
    with pytest.raises(ModelError, match="quantize edit of layer 'conv1': arch.edits\\[0\\].kind must be one of "
                                         "'pq', 'uniform', found 'fp4'"):
        io.loads(io.dumps(model))


def test_code_buffers_live_where_the_layer_was_built():
    layer = QuantizedConv2d(3, 4, 3, bias=False, bits=4, device="meta")
    assert layer.codes.is_meta and layer.scale.is_meta and layer.weight.shape == (4, 3, 3, 3)
    assert "weight" not in dict(layer.named_parameters()) and layer.modelzip_coded_weights == 108


class PaddedConv(nn.Conv2d):
    """A user's Conv2d subclass with its own forward and a child module (as EfficientNet's same-padding conv)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, 4, 3)
        self.pad = nn.ZeroPad2d(1)

    def forward(self, x):
        return super().forward(self.pad(x))


def test_subclassed_layers_keep_their_forward_as_coded_layers(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(PaddedConv(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    x = torch.randn(3, 2, 5, 5)
    before = model(x)
    assert quantize_weights_(model) == {"0": "8-bit", "2": "8-bit"}
    coded = model[0]
    assert isinstance(coded, PaddedConv) and coded.codes.dtype == torch.int8 and "weight" not in coded._parameters
    assert type(coded).__name__ == "QuantizedPaddedConv" and (model(x) - before).abs().max() < 0.05
    plain = coded.decoded()
    assert type(plain) is PaddedConv and isinstance(plain.weight, nn.Parameter)
    assert torch.equal(plain(x), coded(x)) and not hasattr(plain, "codes")
    io.save(model, tmp_path / "p.mzip")
    fresh = nn.Sequential(PaddedConv(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    assert torch.equal(io.load(tmp_path / "p.mzip", fresh)(x), model(x))


def test_the_decoded_weight_is_kept_until_the_codes_change():
    layer = coded_layer(nn.Linear(4, 2), Codes(torch.ones(2, 4, dtype=torch.int32), torch.tensor([1.0, 2.0]),
                                               torch.zeros(2, dtype=torch.int32), 4))
    first = layer.weight
    assert layer.weight is first  # no decode per call
    layer.codes[0, 0] = 3  # in place
    assert layer.weight[0, 0] == 3 and layer.weight is not first
    layer.load_state_dict({**layer.state_dict(), "scale": torch.tensor([5.0, 5.0])})
    assert layer.weight[1, 1] == 5
    with torch.inference_mode():
        inside = layer.weight
    assert layer.weight is not inside  # inference tensors never leak into autograd
