"""Batch-norm folding: a BatchNorm that reads a convolution or linear layer becomes part of its weights.

In eval mode a batch norm is a per-channel affine map of its input, y = gamma (x - mean) / sqrt(var + eps)
+ beta with the running statistics, so it folds into the layer before it (Ioffe & Szegedy 2015; Jacob et
al. 2018, section 3.2): per output channel c,

    w'[c] = w[c] * gamma[c] / sqrt(var[c] + eps),    b'[c] = (b[c] - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c]

(gamma = 1, beta = 0 without affine; b = 0 for a layer without bias, which gains one). The norm becomes
nn.Identity. Folding before quantizing means the stored codes are the weights the network runs with:
torch.ao's int8 conversion folds Conv -> BN on its own, after the codes were made, and requantizes.

`fold_batch_norms_` records a "fold-bn" structural edit per pair, so .mzip files reload (rebuilt, or into
a fresh unfolded model).
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import ModelError
from ..layers import check_replaceable, plain_type
from ..models.edits import LAYER, Edit, edit_op, record_edit, replace_module, submodule, swap_layer
from .graph import NORMS, LeafTracer

# the batch norm each layer type is folded with: a BatchNorm1d after a Linear normalizes its features only
# on (batch, features) outputs, which is how every model here uses it
FOLDS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: nn.BatchNorm2d, nn.Conv1d: nn.BatchNorm1d, nn.Linear: nn.BatchNorm1d}
LAYERS = tuple(FOLDS)


def fold_batch_norms_(model: nn.Module) -> dict[str, str]:
    """Fold every batch norm that alone reads a Conv1d / Conv2d / Linear into it, in place; returns
    {layer name: batch-norm name} of the pairs folded.

    The model then computes in eval mode exactly what it computed before (in training mode the norms
    used batch statistics, which no weight can stand for); its training flag is left as it is. A pair is
    left alone when the layer's output has other readers, either module is called elsewhere or reached
    under a second name, or the norm keeps no running statistics (it normalizes by every batch's own,
    even in eval mode). Pruned or quantized layers raise ModelError: strip them, or fold before
    quantizing. Everything is checked before the model changes.
    """
    pairs = _pairs(model)
    for layer_name, norm_name in pairs:
        layer, norm = submodule(model, layer_name), submodule(model, norm_name)
        weight, bias = _folded(layer, norm)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if layer.bias is None:
                layer.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
            else:
                layer.bias.copy_(bias)
        replace_module(model, norm_name, nn.Identity().train(norm.training))
        record_edit(model, {"op": "fold-bn", "module": layer_name, "norm": norm_name})
    return dict(pairs)


@edit_op("fold-bn", required={"norm": LAYER})
def _replay(model: nn.Module, edit: Edit) -> None:
    """Give the layer an (uninitialised) bias if it has none and put nn.Identity where the norm was;
    the state_dict fills the folded weight and bias afterwards."""
    layer = submodule(model, edit.get("module", ""))
    if not isinstance(layer, LAYERS):
        raise ModelError(f"fold-bn edit names layer {edit.get('module')!r}, a {type(layer).__name__}, "
                         "which cannot take a batch norm")
    swap_layer(model, {**edit, "module": edit.get("norm", "")}, lambda m: isinstance(m, NORMS),
               lambda m: nn.Identity())
    if layer.bias is None:
        weight = layer.weight
        layer.bias = nn.Parameter(torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device),
                                  requires_grad=weight.requires_grad)


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, norm) names of the foldable pairs, in graph order, checked: ModelError for a pair that
    cannot be folded although it should (pruned, quantized, broken statistics)."""
    try:
        graph = LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        raise ModelError(f"cannot trace {type(model).__name__} with torch.fx to find its batch norms "
                         f"({type(exc).__name__}: {exc})") from None
    modules = dict(model.named_modules())
    names_of = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    attrs = [node.target for node in graph.nodes if node.op == "get_attr"]

    def shared(name: str) -> bool:
        """Called more than once, reached under a second name, or its tensors read directly by forward."""
        return calls[name] != 1 or names_of[id(modules[name])] > 1 or any(a.startswith(f"{name}.") for a in attrs)

    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and len(node.args) == 1 and not node.kwargs else None
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        layer, norm = modules[source.target], modules[node.target]
        if (not isinstance(layer, LAYERS) or type(norm) not in NORMS or shared(source.target) or shared(node.target)
                or not norm.track_running_stats or norm.running_mean is None):
            continue
        kind = plain_type(layer)
        if kind not in FOLDS:
            if hasattr(layer, "modelzip_coded_weights"):
                raise ModelError(f"layer {source.target!r} ({kind.__name__}) is quantized already; fold its batch "
                                 f"norm {node.target!r} before quantizing (fold_batch_norms_, then quantize)")
            continue  # a subclass with a forward of its own: its weight may not be what it computes with
        if FOLDS[kind] is not type(norm) or norm.num_features != layer.weight.shape[0]:
            continue
        check_replaceable(source.target, layer, f"folding batch norm {node.target!r} into it")
        _check_statistics(node.target, norm)
        pairs.append((source.target, node.target))
    return pairs


def _check_statistics(name: str, norm: nn.Module) -> None:
    tensors = [norm.running_mean, norm.running_var] + ([norm.weight, norm.bias] if norm.affine else [])
    if not all(torch.isfinite(t).all() for t in tensors) or not (norm.running_var + norm.eps > 0).all():
        raise ModelError(f"batch norm {name!r} has NaN, infinite or negative statistics or scales; "
                         "folding a broken norm makes no sense")


def _folded(layer: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight and bias with the norm folded in, computed in float64 and cast back.

    torch's fuse_conv_bn_weights scales dim 0 of any weight (a Linear's (out, in) included) and, unlike
    fuse_linear_bn_weights, takes a norm without affine parameters.
    """
    def wide(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().double()

    weight, bias = fuse_conv_bn_weights(wide(layer.weight), wide(layer.bias), wide(norm.running_mean),
                                        wide(norm.running_var), norm.eps, wide(norm.weight), wide(norm.bias))
    dtype = layer.weight.dtype
    return weight.detach().to(dtype), bias.detach().to(dtype)
