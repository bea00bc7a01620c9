"""ONNX export: ONNX Runtime must predict what PyTorch predicts, for every kind of model modelzip decodes."""
import re

import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import modelzip
from modelzip.cli import main
from modelzip.data import batches
from modelzip.export import OnnxModel, argmax_agreement, export_onnx, onnx_predict
from modelzip.quantize import hash_, quantize_weights_
from modelzip.structured import ChannelPruneConfig, prune_channels_
from modelzip.train import evaluate, predict


def assert_same_logits(model: nn.Module, path, x: torch.Tensor) -> None:
    """ORT's logits equal PyTorch's to float rounding, at batch sizes 1 and 7 (the batch axis is dynamic)."""
    ours = predict(model, TensorDataset(x))
    for batch_size in (1, 7):
        theirs = onnx_predict(path, x, batch_size=batch_size)
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max().item() < 1e-4
    assert argmax_agreement(model, path, x) == 1.0


@pytest.mark.parametrize("name, shape", [("lenet-5", (1, 28, 28)), ("vgg-bn", (1, 8, 8))])
def test_float_export_matches_pytorch(name, shape, digits, tmp_path):
    model = modelzip.build(name, shape, 10)
    x = digits.test.tensors[0] if shape == digits.input_shape else torch.rand(40, *shape)
    if name == "vgg-bn":
        with torch.no_grad():
            model(digits.train.tensors[0])  # batch-norm statistics that are not the identity, to fold into the convs
    model.train()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    path = tmp_path / f"{name}.onnx"
    written = export_onnx(model, path)
    assert written == path.stat().st_size
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())  # no batch-norm statistics moved
    assert model.training and all(m.training for m in model.modules())  # flags restored, export ran in eval mode
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert_same_logits(model, path, x)


def _prune_and_strip(model: nn.Module) -> None:
    modelzip.prune_(model, 0.8)
    modelzip.strip(model)


COMPRESSIONS = {  # in-place transforms whose results .mzip files hold
    "dense": ("lenet-300-100", lambda m: None),
    "pruned": ("lenet-300-100", lambda m: modelzip.prune_(m, 0.8)),  # still parametrized in memory
    "pruned-stripped": ("lenet-300-100", _prune_and_strip),
    "hashed": ("lenet-300-100", lambda m: hash_(m, 1 / 8)),
    "factorized": ("lenet-300-100", lambda m: modelzip.factorize_(m, 0.25)),
    "channels-removed": ("vgg-bn", lambda m: prune_channels_(m, (1, 8, 8), ChannelPruneConfig("l1", amount=0.5))),
    "int8-codes": ("vgg-bn", quantize_weights_),  # QuantizedConv2d / QuantizedLinear decode their codes in forward
}


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_compressed_and_decoded_models_export(compression, digits, tmp_path):
    name, compress = COMPRESSIONS[compression]
    model = modelzip.build(name, digits.input_shape, digits.num_classes)
    compress(model)
    for i, each in enumerate([model, modelzip.loads(modelzip.dumps(model))]):  # in memory, then as decoded
        path = tmp_path / f"{i}.onnx"
        export_onnx(each, path)
        assert_same_logits(each, path, digits.test.tensors[0])


def test_qdq_export_is_int8_smaller_and_agrees(trained_lenet, digits, tmp_path):
    x = digits.test.tensors[0]
    dense = export_onnx(trained_lenet, tmp_path / "float.onnx")
    small = export_onnx(trained_lenet, tmp_path / "int8.onnx", qdq=True, calibration=digits.train)
    assert dense / small > 2.5
    weights = {i.name: i for i in onnx.load(tmp_path / "int8.onnx").graph.initializer}
    for layer, out_features in [("fc1", 300), ("fc2", 100), ("fc3", 10)]:
        assert weights[f"{layer}.weight_quantized"].data_type == onnx.TensorProto.INT8
        assert list(weights[f"{layer}.weight_scale"].dims) == [out_features]  # per output channel
        assert not any(weights[f"{layer}.weight_zero_point"].int32_data)  # symmetric
    agreement = argmax_agreement(trained_lenet, tmp_path / "int8.onnx", x)
    onnx_accuracy = evaluate(OnnxModel(tmp_path / "int8.onnx"), digits.test)  # ORT behind nn.Module's call
    assert onnx_accuracy == (onnx_predict(tmp_path / "int8.onnx", x).argmax(1) == digits.test.tensors[1]).float().mean()
    assert agreement > 0.95 and onnx_accuracy > evaluate(trained_lenet, digits.test) - 0.02
    # the same inputs as a tensor or as batches give the same file (same batches, deterministic MinMax calibration)
    for calibration in digits.train.tensors[0], batches(digits.train, 64, shuffle=False):
        export_onnx(trained_lenet, tmp_path / "again.onnx", qdq=True, calibration=calibration)
        assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "int8.onnx").read_bytes()


class _Unexportable(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(super().forward(x), 1).values  # no ONNX symbolic for aten::cummax


def test_errors_name_the_problem_and_leave_no_file(digits, tmp_path):
    model = modelzip.build("mlp-30-30", digits.input_shape, digits.num_classes)
    path = tmp_path / "m.onnx"
    with pytest.raises(modelzip.ConfigError, match="needs calibration inputs"):
        export_onnx(model, path, qdq=True)
    with pytest.raises(modelzip.ConfigError, match="calibration inputs must be"):
        export_onnx(model, path, qdq=True, calibration=torch.rand(5, 1, 9, 9))
    with pytest.raises(modelzip.ConfigError, match="calibration batches must be tensors .* got str"):
        export_onnx(model, path, qdq=True, calibration=["images"])
    with pytest.raises(modelzip.ConfigError, match=re.escape("inputs of shape (1, 9, 9)")):
        export_onnx(model, path, (1, 9, 9))
    with pytest.raises(modelzip.ConfigError, match="does not record its input shape"):
        export_onnx(nn.Sequential(nn.Linear(4, 2)), path)
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    with pytest.raises(modelzip.ModelError, match="'fc2.weight' holds NaN"):
        export_onnx(model, path)
    path.write_bytes(b"old")
    with pytest.raises(modelzip.ModelError, match="aten::cummax"):
        export_onnx(_Unexportable(nn.Flatten(), nn.Linear(64, 10)), path, (1, 8, 8))
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_export(trained_lenet, digits, tmp_path, capsys):
    mzip, out = tmp_path / "m.mzip", tmp_path / "m.onnx"
    modelzip.save(trained_lenet, mzip)
    assert main(["export", str(mzip), str(out), "--data", "digits"]) == 0
    shown = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes (float)" in shown and "on 100.00% of 360 test examples" in shown
    assert main(["export", str(mzip), str(out), "--data", "digits", "--qdq", "--calibration", "128"]) == 0
    shown = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes (int8 QDQ)" in shown
    assert float(re.search(r"on ([0-9.]+)% of", shown)[1]) > 95
    with pytest.raises(SystemExit) as exit:
        main(["export", str(mzip), str(tmp_path / "x.onnx"), "--data", "digits", "--qdq", "--calibration", "0"])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1 and "argument --calibration: must be >= 1, got 0" in error
    assert not (tmp_path / "x.onnx").exists()
