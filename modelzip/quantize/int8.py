"""Int8 execution on CPU: a model that runs with int8 weights and activations through PyTorch's quantized kernels.

Coded layers (coded.py) hold integer codes but decode them to float and compute in float: the file is
small, the model is not faster. `int8_model` lowers a model to torch.ao's quantized kernels (fbgemm /
oneDNN on x86, QNNPACK on ARM) with FX graph mode post-training static quantization (Jacob et al. 2018):

    y_q = z_y + round(s_x * s_w / s_y * sum_k (x_q[k] - z_x) * w_q[k])     (u8 x s8 products, int32 sums)

Weights are qint8, symmetric, per output channel; activations quint8, affine, per tensor, their range
found on calibration data by modelzip's observers (uniform.py: minmax, percentile, mse). Conv -> BatchNorm
-> ReLU and Linear -> ReLU run as one fused kernel. Where a layer already holds symmetric int8 codes
(QuantizedLinear / QuantizedConv2d from `quantize_weights_`: int8, int4, ternary, binary), the kernel
computes with exactly those codes and scales, so the int8 model's weights are the ones the coded model
was evaluated with; only its activations are newly rounded. A batch norm after a layer is folded into it
by FX, which changes the weight: fold them first (`modelzip.structured.fold_batch_norms_`), then quantize,
and the folded codes are the ones that run.

torch 2.13 marks torch.ao.quantization as deprecated in favour of torchao's PT2E flow; it still works,
and `modelzip export --qdq` (ONNX Runtime) is the route that does not depend on it.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, default_per_channel_weight_observer
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
from ..data import Calibration, calibration_batches
from ..errors import ConfigError, ModelError
from ..layers import independent_copy, strip
from ..models.edits import replace_module
from .coded import CodedLayer, UniformCoded
from .uniform import Observer, QuantSpec, observer

BACKENDS = ("x86", "fbgemm", "onednn", "qnnpack")
CALIBRATION_BATCH = 256  # inputs per forward pass when the calibration set is one tensor
SAMPLE = 2 ** 18  # activation values kept for percentile / mse: the 99.99th percentile rests on ~26 of them
INT8_LAYERS = (nnq.Linear, nnq.Conv2d)  # and their fused ReLU subclasses: what takes int8 weight codes
ACTIVATION = QuantSpec(bits=8, symmetric=False)  # quint8 affine: activations after ReLU are >= 0


class RangeObserver(MinMaxObserver):
    """A per-tensor activation observer whose range is modelzip's observer `observe` (uniform.py).

    minmax keeps the running min/max of everything seen (MinMaxObserver's own state). percentile and mse
    need the values themselves; they see a uniform random sample of at most `sample` of them over all
    calibration batches (reservoir sampling, Vitter's Algorithm R), seeded so calibration repeats.
    """

    def __init__(self, observe: Observer | str = Observer.MINMAX, sample: int = SAMPLE, seed: int = 0,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.range_fn = None if Observer(observe) is Observer.MINMAX else observer(observe)
        self.capacity, self.seen = sample, 0
        self.reservoir = torch.empty(0)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        x_orig = super().forward(x_orig)
        if self.range_fn is not None and x_orig.numel():
            self._sample(x_orig.detach().flatten().float().cpu())
        return x_orig

    def _sample(self, x: torch.Tensor) -> None:
        """Algorithm R, one batch at a time: the t-th value seen replaces a random slot with probability k / (t + 1)."""
        fill = min(max(self.capacity - self.seen, 0), len(x))
        self.reservoir = torch.cat([self.reservoir, x[:fill]])
        rest = x[fill:]
        if len(rest):
            t = self.seen + fill + torch.arange(len(rest), dtype=torch.float64)  # global positions of `rest`
            slot = (torch.rand(len(rest), generator=self.generator, dtype=torch.float64) * (t + 1)).long()
            kept = slot < self.capacity
            self.reservoir[slot[kept]] = rest[kept]
        self.seen += len(x)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.range_fn is None or not len(self.reservoir):
            return super().calculate_qparams()
        lo, hi = self.range_fn(self.reservoir, ACTIVATION)
        return self._calculate_qparams(lo, hi)


def int8_model(model: nn.Module, calibration: Calibration, *,
               observe: Observer | str = Observer.MINMAX, backend: str = "x86") -> nn.Module:
    """A new module (a torch.fx GraphModule) that runs `model` with int8 weights and activations on CPU.

    `calibration`: inputs (N, ...) run 256 at a time, a TensorDataset (its inputs), or an iterable of
    batches (tensors or (inputs, labels) pairs); each activation's range is `observe`'s on what it saw.
    `model` is not changed: a CPU copy in eval mode is quantized, with masks baked in and coded layers
    decoded to plain nn.Linear / nn.Conv2d. Coded layers with symmetric int8 codes keep exactly those
    codes and scales, unless FX folds a following BatchNorm into the weight (Conv -> BN in eval mode):
    the folded weight is new, and like every other layer (PQ, asymmetric, float) torch's per-channel
    min/max observer quantizes it. The names of the exact layers are in the result's
    `modelzip_exact_codes`.

    The quantized engine is process-wide state that the packed weights are made for:
    `torch.backends.quantized.engine` is set to `backend` and left so, for the returned model to run.
    """
    if backend not in BACKENDS or backend not in torch.backends.quantized.supported_engines:
        raise ConfigError(f"unknown int8 backend {backend!r} (this torch has: "
                          f"{', '.join(b for b in BACKENDS if b in torch.backends.quantized.supported_engines)})")
    observer(observe)  # ConfigError for an unknown name, before any work
    batches = calibration_batches(calibration, CALIBRATION_BATCH)
    first = next(batches, None)
    if first is None:
        raise ConfigError("int8 calibration needs at least one input batch; got none")
    plain, coded = _decoded_copy(model)
    torch.backends.quantized.engine = backend
    with _quiet_deprecations():
        try:
            prepared = prepare_fx(_without_identities(plain), _qconfig_mapping(observe, backend),
                                  example_inputs=(first,))
        except Exception as exc:  # FX raises TraceError, TypeError, ... from inside the user's forward
            raise ModelError(f"torch.fx cannot trace {type(model).__name__} for int8 execution "
                             f"({type(exc).__name__}: {exc}); data-dependent control flow or non-tensor "
                             "arguments in forward prevent symbolic tracing") from exc
        with torch.no_grad():
            for batch in chain([first], batches):
                prepared(batch)
        unfolded = [name for name, layer in coded.items() if _same_weight(prepared, name, layer)]
        quantized = convert_fx(prepared)
        exact = tuple(name for name in unfolded if isinstance(quantized.get_submodule(name), INT8_LAYERS))
        for name in exact:
            _set_codes(quantized.get_submodule(name), coded[name])
    quantized.modelzip_exact_codes = exact
    return quantized


def _without_identities(model: nn.Module) -> torch.fx.GraphModule:
    """`model` traced, with its nn.Identity calls bypassed: a batch norm folded away (`fold_batch_norms_`)
    leaves an Identity between a conv and its ReLU, which would keep FX from fusing them into one kernel."""
    traced = torch.fx.symbolic_trace(model)
    for node in list(traced.graph.nodes):
        if node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
    traced.recompile()
    return traced


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch 2.13's notices that torch.ao's eager/FX quantization (and its reduce_range and quantized
    tensor constructors) will go: this module is built on them while they work, and its docstring says so."""
    with warnings.catch_warnings():
        for message in ("torch.ao.quantization is deprecated", ".*reduce_range will be deprecated",
                        ".*quantized tensor creation functions"):
            warnings.filterwarnings("ignore", message=message)
        yield


def _decoded_copy(model: nn.Module) -> tuple[nn.Module, dict[str, UniformCoded]]:
    """A CPU eval copy of `model` with plain weights, and its coded layers whose codes an int8 kernel can take."""
    plain = strip(independent_copy(model)).cpu().eval()
    exact = {}
    for name, layer in list(plain.named_modules()):
        if not isinstance(layer, CodedLayer):
            continue
        if not name:
            raise ModelError(f"the model itself is a {type(layer).__name__}; wrap it (nn.Sequential) for int8")
        replace_module(plain, name, layer.decoded())
        if isinstance(layer, UniformCoded) and layer.codes.dtype == torch.int8 and not layer.zero_point.any() \
                and not layer.group_size:
            exact[name] = layer
    return plain, exact


def _qconfig_mapping(observe: Observer | str, backend: str) -> QConfigMapping:
    """The backend's default mapping with `observe`'s range wherever it observes activations by histogram.

    Fixed-range ops (sigmoid, softmax, tanh) keep their fixed quantization, and each activation keeps
    the code range the backend gives it (x86/fbgemm: 0..127, "reduce_range", so fbgemm's 16-bit sums
    of u8 x s8 pairs cannot overflow on CPUs without VNNI).
    """
    mapping = get_default_qconfig_mapping(backend)

    def ours(qconfig: QConfig) -> QConfig:
        default = qconfig.activation()
        if not isinstance(default, HistogramObserver):
            return qconfig
        return QConfig(activation=RangeObserver.with_args(observe=observe, quant_min=default.quant_min,
                                                          quant_max=default.quant_max), weight=qconfig.weight)

    mapping.set_global(QConfig(activation=ours(mapping.global_qconfig).activation,
                               weight=default_per_channel_weight_observer))  # qnnpack's default is per tensor
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig is not None:
            mapping.set_object_type(kind, ours(qconfig))
    return mapping


def _same_weight(prepared: nn.Module, name: str, layer: UniformCoded) -> bool:
    """Whether the layer FX will quantize under `name` computes with the decoded codes (no BatchNorm folded in)."""
    try:
        module = prepared.get_submodule(name)
    except AttributeError:
        return False
    if isinstance(module, nn.Sequential):  # a fused Linear/Conv + ReLU: the weight layer comes first
        module = module[0]
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and torch.equal(weight, layer.weight)


def _set_codes(module: nn.Module, layer: UniformCoded) -> None:
    """Give a quantized Linear/Conv the coded layer's int8 codes and scales, keeping its bias."""
    if layer.per_channel:
        weight = torch._make_per_channel_quantized_tensor(layer.codes, layer.scale.double(),
                                                          layer.zero_point.long(), 0)
    else:
        weight = torch._make_per_tensor_quantized_tensor(layer.codes, float(layer.scale), 0)
    module.set_weight_bias(weight, module.bias())
