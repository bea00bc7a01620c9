"""ONNX export of any modelzip model (dense float, or int8 QDQ), to run where PyTorch is not installed.

The TorchScript exporter (`dynamo=False`) traces the model in eval mode and folds parametrizations,
hashed and factorized weights into plain initializers. With `qdq=True` ONNX Runtime's static quantizer
then puts QuantizeLinear/DequantizeLinear pairs around each conv and matmul: int8 weights (symmetric,
per output channel) and int8 activations whose ranges come from min/max over calibration inputs.
"""
from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.utils.data import TensorDataset

from .atomic import atomic_write
from .data import Calibration, calibration_batches
from .errors import ConfigError, ModelError
from .layers import eval_mode, require_finite
from .models import input_shape_of
from .train import predict

CALIBRATION_BATCH = 64  # inputs per calibration run: the batch axis is dynamic, so any size works


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | None = None, *, qdq: bool = False,
                calibration: Calibration | None = None, per_channel: bool = True, opset: int = 17) -> int:
    """Write `model` as ONNX (input "input" of shape (batch, *input_shape), output "logits"); returns bytes written.

    `input_shape` defaults to the one the model was built for. With `qdq`, `calibration` (inputs (N, *input_shape),
    a TensorDataset or batches) sets the int8 activation ranges. The file is written atomically.
    """
    shape = _input_shape(model, input_shape)
    if qdq and calibration is None:
        raise ConfigError("a QDQ (int8) export needs calibration inputs to set its activation ranges")
    arrays = _calibration_arrays(calibration, shape) if qdq else []
    data = _export_float(model, shape, opset)
    if qdq:
        data = _quantize(data, arrays, per_channel)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU behind nn.Module's call: `evaluate`, `predict` and
    `profile.compare_latency` take it like any model (it has no parameters and ignores train/eval)."""

    def __init__(self, path_or_bytes: str | Path | bytes, *, threads: int = 1) -> None:
        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0])


def onnx_predict(path_or_bytes: str | Path | bytes, x: torch.Tensor, batch_size: int = 256, *,
                 threads: int = 1) -> torch.Tensor:
    """Logits ONNX Runtime (CPU) computes for inputs `x`, batch by batch: (N, classes)."""
    model = OnnxModel(path_or_bytes, threads=threads)
    return torch.cat([model(b) for b in x.split(batch_size)])


def argmax_agreement(model: nn.Module, path: str | Path | bytes, x: torch.Tensor) -> float:
    """Fraction of inputs `x` on which the ONNX file predicts the same class as `model`."""
    ours = predict(model, TensorDataset(x)).argmax(1)
    return (onnx_predict(path, x).argmax(1) == ours).float().mean().item()


def _input_shape(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else input_shape_of(model)
    if shape is None:
        raise ConfigError(f"{type(model).__name__} does not record its input shape; pass input_shape=(C, H, W)")
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be positive ints (one input without its batch axis), got {shape}")
    return tuple(shape)


def _export_float(model: nn.Module, shape: tuple[int, ...], opset: int) -> bytes:
    """The float ONNX bytes, traced on CPU in eval mode; the model's device and train/eval flags are restored."""
    require_finite(chain(model.named_parameters(), model.named_buffers()), "export")
    device = next(chain(model.parameters(), model.buffers()), torch.empty(0)).device
    example = torch.zeros(2, *shape)  # batch 2: a batch of 1 lets the tracer specialise reshapes to it
    buffer = io.BytesIO()
    try:
        with eval_mode(model.cpu()):
            try:
                with torch.no_grad():
                    model(example)
            except Exception as exc:  # shape mismatches surface as RuntimeError, ValueError, IndexError, ...
                raise ConfigError(f"{type(model).__name__} does not take inputs of shape {shape}: {exc}") from None
            try:
                with warnings.catch_warnings():  # TracerWarnings (the trace may not generalise) still show
                    warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's, as a whole
                    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            except Exception as exc:  # torch raises many types (UnsupportedOperatorError, RuntimeError, ...)
                raise ModelError(f"cannot export {type(model).__name__} to ONNX: {type(exc).__name__}: {exc}"
                                 ) from None
    finally:
        model.to(device)
    return buffer.getvalue()


def _calibration_arrays(calibration: Calibration, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Calibration inputs as float32 arrays of (batch, *shape), checked before the quantizer sees them."""
    arrays = [b.detach().float().numpy() for b in calibration_batches(calibration, CALIBRATION_BATCH)]
    for a in arrays:
        if a.shape[1:] != shape:
            raise ConfigError(f"calibration inputs must be (N, {', '.join(map(str, shape))}), got {a.shape}")
    if not arrays or not sum(len(a) for a in arrays):
        raise ConfigError("calibration holds no inputs")
    return arrays


class _Reader(CalibrationDataReader):
    """Hands the quantizer one {"input": batch} feed per call, then None."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{"input": a} for a in arrays if len(a)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _quantize(float_onnx: bytes, arrays: list[np.ndarray], per_channel: bool) -> bytes:
    """QDQ int8 bytes of a float model; the quantizer writes files, so it works in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="modelzip-qdq-") as folder:
        source, prepared, out = (Path(folder) / f"{stage}.onnx" for stage in ("float", "prepared", "qdq"))
        source.write_bytes(float_onnx)
        # shape inference and graph clean-up (e.g. a shared bias behind an Identity) so every weight is quantized
        quant_pre_process(source, prepared)
        quantize_static(prepared, out, _Reader(arrays), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True})
        return out.read_bytes()
