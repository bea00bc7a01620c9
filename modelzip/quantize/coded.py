"""Layers whose weights are integer codes: what a quantized model is, in memory and in the .mzip file.

Fake quantization (QAT, Quant-Noise, a post-training pass) leaves float weights that happen to lie on a
grid; stored as floats they keep their size ("simulated quantization only"). `quantize_weights_` turns
each quantized layer into a coded one that holds only the codes and what decodes them, as buffers:

    uniform (int8/int4/binary/ternary)   codes (int8 or uint8), scale and zero point per channel, per group
                                         of `group_size` inputs of a channel, or per tensor
    product quantization (iPQ)           codes (uint8/int16, one per sub-vector) and the codebook (k, block)

so the state_dict, and therefore the .mzip file, holds the codes at their width (the codec bit-packs or
Huffman-codes integer tensors). The forward pass decodes the weight, bit for bit the value the model was
trained and evaluated with, and calls the float layer: a coded layer is an nn.Linear / nn.Conv2d with a
computed `weight`, so everything that reads layer attributes (profiling, export, int8 execution) works.
A "quantize" structural edit lets `modelzip.load` rebuild the coded layers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ModelError
from ..layers import Target, per_target, plain_type, targets
from ..models.edits import Edit, edit_op, record_edit, replace_module, swap_layer
from ..models.schema import MAX_DIM, boolean, choice, integer
from ..prune import Mask
from .pq import PQCodes, pq_decode
from .qat import Codes
from .uniform import Observer, QuantSpec, observer, qparams, quantize


class CodedLayer(nn.Module):
    """Mixin for an nn.Linear / nn.Conv2d subclass whose `weight` parameter is replaced by code buffers.

    The float layer's __init__ runs first and creates its weight (while the code buffers do not exist yet
    the `weight` property raises AttributeError, and nn.Module's __getattr__ finds the parameter); the
    parameter is then dropped, so neither the state_dict nor the optimizer sees it.
    """

    modelzip_weights: tuple[str, ...] = ()  # the codes are final: nothing left for other methods to compress
    code_buffers: tuple[str, ...] = ()  # the buffers that replace the weight

    def __init__(self, *args: Any, device: Any = None, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        super().__init__(*args, device=device, dtype=dtype, **kwargs)
        weight = self._parameters.pop("weight")
        self.weight_shape, self._device = tuple(weight.shape), weight.device

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight, kept until a code buffer changes (replaced, or modified in place): a forward
        pass then costs what the float layer's does, not a decode of the whole table each call."""
        buffers = [getattr(self, name) for name in self.code_buffers]  # AttributeError while __init__ runs
        key = (torch.is_inference_mode_enabled(), *((id(b), b._version) for b in buffers))
        cached = self.__dict__.get("_decoded")
        if cached is None or cached[0] != key:
            cached = (key, self._decode())
            self.__dict__["_decoded"] = cached
        return cached[1]

    def _decode(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def modelzip_coded_weights(self) -> int:
        """The weights the codes stand for, which `layers.parameter_count` counts as parameters."""
        return math.prod(self.weight_shape)

    def decoded(self) -> nn.Module:
        """The float layer (its own class: nn.Linear, nn.Conv2d, a user's subclass) computing what this
        layer does, its weight a real Parameter (for code that needs one, such as torch.ao's int8 conversion)."""
        plain = _shallow_copy(self, float_type(type(self)))
        for name in (*self.code_buffers, "weight_shape", "_device", "_decoded"):
            plain._buffers.pop(name, None)
            plain.__dict__.pop(name, None)
        plain.weight = nn.Parameter(self.weight.detach().clone())
        return plain

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=self._device))


class UniformCoded(CodedLayer):
    """Uniform codes: weight = (codes - zero_point) * scale, per output channel, per group or per tensor.

    With `group_size` g > 0 every run of g consecutive inputs of an output channel (a row of the weight
    flattened to (out, in)) has its own scale: the layout of group-wise int4/int3 post-training methods,
    which keeps one outlier from widening the step of a whole row.
    """

    code_buffers = ("codes", "scale", "zero_point")

    def __init__(self, *args: Any, bits: int = 8, per_channel: bool = True, signed: bool = True,
                 group_size: int = 0, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        super().__init__(*args, dtype=dtype, **kwargs)
        self._setup(bits, per_channel, signed, group_size, dtype or torch.get_default_dtype())

    @classmethod
    def converted(cls, layer: nn.Module, *, bits: int = 8, per_channel: bool = True, signed: bool = True,
                  group_size: int = 0) -> UniformCoded:
        """`layer` (any nn.Linear / nn.Conv2d / nn.Embedding subclass, its own forward and children kept)
        as a coded layer with empty codes: its class gains UniformCoded, its weight Parameter goes."""
        new = _shallow_copy(layer, uniform_class(type(layer)))
        weight = new._parameters.pop("weight")
        new.weight_shape, new._device = tuple(weight.shape), weight.device
        new._setup(bits, per_channel, signed, group_size, weight.dtype)
        return new

    def _setup(self, bits: int, per_channel: bool, signed: bool, group_size: int, dtype: torch.dtype) -> None:
        if not 1 <= bits <= 8:
            raise ConfigError(f"uniform codes take 1..8 bits, got {bits!r}")
        inputs = math.prod(self.weight_shape[1:])
        if group_size < 0 or (group_size and (not per_channel or inputs % group_size)):
            raise ConfigError(f"a group size must divide the {inputs} inputs of a channel, got {group_size}")
        self.bits, self.per_channel, self.group_size = bits, per_channel, group_size
        channels = (self.weight_shape[0],) if per_channel else ()
        if group_size:
            channels = (self.weight_shape[0], inputs // group_size)
        self._buffer("codes", self.weight_shape, torch.int8 if signed else torch.uint8)
        self._buffer("scale", channels, dtype)
        self._buffer("zero_point", channels, torch.int32)

    def _decode(self) -> torch.Tensor:
        if self.group_size:
            codes = self.codes.reshape(*self.scale.shape, self.group_size).to(torch.int32)
            return ((codes - self.zero_point[..., None]).to(self.scale.dtype)
                    * self.scale[..., None]).reshape(self.weight_shape)
        shape = (-1,) + (1,) * (len(self.weight_shape) - 1) if self.per_channel else ()  # along output channels
        return (self.codes.to(torch.int32) - self.zero_point.reshape(shape)).to(self.scale.dtype) \
            * self.scale.reshape(shape)

    def extra_repr(self) -> str:
        groups = f", group_size={self.group_size}" if self.group_size else ""
        return f"{super().extra_repr()}, bits={self.bits}, per_channel={self.per_channel}{groups}"


class PQCoded(CodedLayer):
    """Product-quantization codes: each `block_size` sub-vector of a row is one of `centroids` codewords."""

    code_buffers = ("codes", "codebook")

    def __init__(self, *args: Any, block_size: int = 8, centroids: int = 256, dtype: torch.dtype | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, dtype=dtype, **kwargs)
        cols = self.weight_shape[0] and int(torch.Size(self.weight_shape).numel() // self.weight_shape[0])
        if block_size < 1 or cols % block_size or not 1 <= centroids <= 2 ** 15:
            raise ConfigError(f"product quantization of a {list(self.weight_shape)} weight needs a block size "
                              f"dividing {cols} and 1..32768 codewords, got {block_size} and {centroids}")
        self.block_size = block_size
        self._buffer("codes", (self.weight_shape[0], cols // block_size), torch.uint8 if centroids <= 256
                     else torch.int16)
        self._buffer("codebook", (centroids, block_size), dtype or torch.get_default_dtype())

    def _decode(self) -> torch.Tensor:
        return pq_decode(self.codebook, self.codes.long(), self.weight_shape, self.block_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, centroids={self.codebook.shape[0]}"


class QuantizedLinear(UniformCoded, nn.Linear):
    """nn.Linear with uniform integer weight codes."""


class QuantizedConv2d(UniformCoded, nn.Conv2d):
    """nn.Conv2d with uniform integer weight codes."""


class QuantizedEmbedding(UniformCoded, nn.Embedding):
    """nn.Embedding with uniform integer codes, one scale per token (row): only the rows looked up are decoded."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None or not self.per_channel or self.group_size:
            return super().forward(input)
        codes = self.codes[input].to(torch.int32) - self.zero_point[input].unsqueeze(-1)
        return codes.to(self.scale.dtype) * self.scale[input].unsqueeze(-1)


class PQLinear(PQCoded, nn.Linear):
    """nn.Linear with product-quantized weights."""


class PQConv2d(PQCoded, nn.Conv2d):
    """nn.Conv2d with product-quantized weights."""


CODED = {("uniform", nn.Linear): QuantizedLinear, ("uniform", nn.Conv2d): QuantizedConv2d,
         ("uniform", nn.Embedding): QuantizedEmbedding,
         ("pq", nn.Linear): PQLinear, ("pq", nn.Conv2d): PQConv2d}
UNIFORM_CODED = (nn.Linear, nn.Conv2d, nn.Embedding)
_UNIFORM_CLASSES: dict[type[nn.Module], type[UniformCoded]] = {
    base: cls for (kind, base), cls in CODED.items() if kind == "uniform"}


def uniform_class(base: type[nn.Module]) -> type[UniformCoded]:
    """The coded class of a float layer class; a user's subclass (its own forward) gets one made for it."""
    if base not in _UNIFORM_CLASSES:
        if not issubclass(base, UNIFORM_CODED) or issubclass(base, CodedLayer):
            raise ModelError(f"{base.__name__} is not an nn.Linear, nn.Conv2d or nn.Embedding to hold integer codes")
        namespace = {"__module__": base.__module__, "__doc__": f"{base.__name__} with integer codes."}
        _UNIFORM_CLASSES[base] = type(f"Quantized{base.__name__}", (UniformCoded, base), namespace)
    return _UNIFORM_CLASSES[base]


def float_type(coded: type[CodedLayer]) -> type[nn.Module]:
    """The float layer class a coded class computes as (the first class after the coded mixins)."""
    return next(c for c in coded.__mro__[1:] if not issubclass(c, CodedLayer))


def _shallow_copy(layer: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A new module of class `cls` sharing `layer`'s tensors and children, with dicts of its own."""
    new = cls.__new__(cls)
    new.__dict__.update(layer.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(layer.__dict__[key])
    return new


def empty_uniform(layer: nn.Module, **layout: Any) -> UniformCoded:
    """The uniform coded layer for `layer`, codes still zero: built anew for the plain (or parametrized) types,
    converted in place of a user's subclass so that its own forward and children stay."""
    base = plain_type(layer)
    if ("uniform", base) in CODED:
        return CODED["uniform", base](**layer_args(layer), **layout)
    return UniformCoded.converted(layer, **layout)


def record_coded(model: nn.Module, name: str, new: CodedLayer) -> None:
    """Put a coded layer in place of the module `name` and record the edit that rebuilds it at load."""
    replace_module(model, name, new)
    record_edit(model, {"op": "quantize", "module": name, **_layout(new)})


def quantize_weights_(model: nn.Module, spec: QuantSpec | Mapping[str, QuantSpec] = QuantSpec(per_channel=True), *,
                      layers: Mapping[str, QuantSpec] | None = None, observe: Observer | str = Observer.MINMAX,
                      ) -> dict[str, str]:
    """Replace every nn.Linear / nn.Conv2d / nn.Embedding of `model` by its coded layer, in place; returns what
    each became.

    A layer trained with a quantizer (`prepare_qat`, `prepare_quant_noise` after `finish_quant_noise`,
    `pq_quantize_`) keeps exactly its quantizer's codes and the model computes what it computed. Any other
    layer (plain or pruned) is quantized after training: `spec` (one, or one per kind) with the range of
    `observe`, `layers` overriding by name pattern. Per-channel specs must use axis 0 (output channels).
    """
    found = [t for t in targets(model) if isinstance(t.module, UNIFORM_CODED) and not isinstance(t.module, CodedLayer)]
    if not found:
        raise ModelError(f"{type(model).__name__} has no nn.Linear, nn.Conv2d or nn.Embedding layer to quantize")
    wanted = per_target(model, found, spec, layers)
    encoded = [(t, _encode(t, wanted[t], observer(observe))) for t in found]  # all checked before any change
    done = {}
    for t, codes in encoded:
        record_coded(model, t.name, coded_layer(t.module, codes).train(t.module.training))
        done[t.name] = f"pq {len(codes.codebook)}x{codes.codebook.shape[1]}" if isinstance(codes, PQCodes) \
            else f"{codes.bits}-bit"
    return done


def _encode(t: Target, spec: QuantSpec, observe: Any) -> Codes | PQCodes:
    """The codes of the weight the layer computes with: from its quantizer if it has one, else by `spec`."""
    if spec.per_channel and spec.axis != 0:
        raise ConfigError(f"layer {t.name!r}: coded weights are per output channel (axis 0), got axis {spec.axis}")
    weight = t.weight.detach()
    if not torch.isfinite(weight).all():
        raise ModelError(f"layer {t.name!r} has NaN or infinite weights; refusing to quantize a broken layer")
    if not parametrize.is_parametrized(t.module, t.param):
        return _post_training(weight, spec, observe)
    chain = t.module.parametrizations[t.param]
    value = chain.original.detach()
    for p in chain:
        encode = getattr(p, "encode", None)
        if encode is not None:
            return encode(value)
        if not isinstance(p, Mask):
            raise ModelError(f"layer {t.name!r} has a {type(p).__name__} parametrization, which has no integer "
                             "codes; strip it first (k-means sharing is stored by the codec's codebook encoding)")
        value = p(value)
    return _post_training(value, spec, observe)


def _post_training(weight: torch.Tensor, spec: QuantSpec, observe: Any) -> Codes:
    lo, hi = observe(weight, spec)
    scale, zero_point = qparams(weight, spec, lo=lo, hi=hi)
    return Codes(quantize(weight, scale, zero_point, spec), scale, zero_point, spec.bits)


def layer_args(layer: nn.Module) -> dict[str, Any]:
    """The constructor arguments of an nn.Linear / nn.Conv2d / nn.Embedding (hyper-parameters, device, dtype)."""
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Embedding):
        return {"num_embeddings": layer.num_embeddings, "embedding_dim": layer.embedding_dim,
                "padding_idx": layer.padding_idx, "max_norm": layer.max_norm, "norm_type": layer.norm_type,
                "scale_grad_by_freq": layer.scale_grad_by_freq, "sparse": layer.sparse, **like}
    like["bias"] = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return {"in_features": layer.in_features, "out_features": layer.out_features, **like}
    return {"in_channels": layer.in_channels, "out_channels": layer.out_channels, "kernel_size": layer.kernel_size,
            "stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups,
            "padding_mode": layer.padding_mode, **like}


def coded_layer(layer: nn.Module, codes: Codes | PQCodes) -> CodedLayer:
    """The coded twin of a float layer holding `codes` (its bias copied). Uniform codes whose scale is
    (out, groups) are group-wise."""
    base = plain_type(layer)
    with torch.no_grad():
        if isinstance(codes, PQCodes):
            if ("pq", base) not in CODED:
                raise ModelError(f"product-quantized codes need a plain nn.Linear or nn.Conv2d, not {base.__name__}")
            new: CodedLayer = CODED["pq", base](**layer_args(layer), block_size=codes.codebook.shape[1],
                                            centroids=codes.codebook.shape[0])
            new.codes.copy_(codes.codes)
            new.codebook.copy_(codes.codebook)
        else:
            fits_int8 = codes.codes.numel() == 0 or int(codes.codes.max()) < 128  # asymmetric 8-bit codes do not
            group_size = codes.codes[0].numel() // codes.scale.shape[1] if codes.scale.dim() == 2 else 0
            layout = {"bits": codes.bits, "per_channel": codes.scale.dim() >= 1, "signed": fits_int8,
                      "group_size": group_size}
            new = empty_uniform(layer, **layout)
            new.codes.copy_(codes.codes)
            new.scale.copy_(codes.scale)
            new.zero_point.copy_(codes.zero_point)
        if getattr(layer, "bias", None) is not None:
            new.bias.copy_(layer.bias)
    return new


def _layout(layer: CodedLayer) -> Edit:
    """What the "quantize" edit records to rebuild `layer` empty: its kind and buffer layout."""
    if isinstance(layer, PQCoded):
        return {"kind": "pq", "block_size": layer.block_size, "centroids": layer.codebook.shape[0]}
    layout = {"kind": "uniform", "bits": layer.bits, "per_channel": layer.per_channel,
              "signed": layer.codes.dtype == torch.int8}
    return {**layout, "group_size": layer.group_size} if layer.group_size else layout


@edit_op("quantize", required={"kind": choice({kind for kind, _ in CODED})},
         optional={"bits": integer(1, 8), "per_channel": boolean, "signed": boolean, "group_size": integer(0, MAX_DIM),
                   "block_size": integer(1, MAX_DIM), "centroids": integer(1, 2**15)})
def _replay(model: nn.Module, edit: Edit) -> None:
    """Swap the float layer for an empty coded one; the state_dict fills its codes afterwards."""
    kind = edit.get("kind")
    options = {k: v for k, v in edit.items() if k not in ("op", "module", "kind")}

    def make(layer: nn.Module) -> nn.Module:
        try:
            if kind == "uniform":
                return empty_uniform(layer, **options)
            return CODED[kind, plain_type(layer)](**layer_args(layer), **options)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"unknown coded layer {kind!r} with {options}: {exc}") from None

    swap_layer(model, edit, lambda layer: isinstance(layer, UNIFORM_CODED) and not isinstance(layer, CodedLayer),
               make)
