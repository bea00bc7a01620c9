"""Which channels must be removed together: the channel groups of a network, found by tracing it.

Removing output channel c of a convolution also removes input channel c of every layer that reads it,
the matching entries of its batch norm, and, across a residual sum, channel c of every tensor added to
it. `torch.fx` traces the forward pass; each tensor gets a *layout*: the list of channel groups it is
made of along dim 1 (several after a concatenation), with the features per channel after flattening.
Residual sums merge groups (union-find); the model's input and output are locked.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ModelError
from ..models.reference import Select

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_CALLS: frozenset[Any] = frozenset({
    F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.dropout, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh,
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"})
SUMS: frozenset[Any] = frozenset({operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, torch.add,
                                  torch.sub, torch.mul, "add", "add_", "sub", "mul", "mul_"})
FLATTENS: frozenset[Any] = frozenset({torch.flatten, "flatten", "view", "reshape", torch.reshape})
SPATIAL_MEANS: frozenset[Any] = frozenset({torch.mean, "mean", torch.amax, "amax"})
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
EXTENSION_HINT = "modelzip.structured.graph knows its layers in ELEMENTWISE_MODULES / ELEMENTWISE_CALLS"


@dataclass(frozen=True)
class Segment:
    """`channels` channels of group `group`, each `spatial` consecutive features wide (after flattening)."""

    group: int
    channels: int
    spatial: int = 1


Layout = tuple[Segment, ...]


@dataclass
class Group:
    """Channels that live or die together: the outputs of `producers`, read by `consumers`."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)  # layers whose dim-0 outputs are these channels
    norms: list[str] = field(default_factory=list)  # batch norms over them: the slimming scale factors
    locked: str | None = None  # why these channels cannot go (model input or output, ...)

    @property
    def name(self) -> str:
        return "+".join(self.producers) or f"group{self.id}"


@dataclass
class ChannelGraph:
    """The groups of a traced model, and for each layer the layouts it reads (`inputs`) and slices."""

    groups: dict[int, Group]
    inputs: dict[str, Layout]  # consumer layer -> layout of its input (its weight's dim 1 is sliced by it)
    per_channel: dict[str, Layout]  # batch norms, depthwise convs: dim 0 sliced by this layout

    def prunable(self) -> list[Group]:
        """Groups that may lose channels, in trace order."""
        return [g for g in self.groups.values() if g.locked is None]


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """Trace `model` on one example of `input_shape` (C, H, W or F) and find its channel groups."""
    return _Tracer(model, input_shape).run()


class LeafTracer(fx.Tracer):
    """An FX tracer that keeps every module without children whole: compressed and custom layers (a
    parametrized Linear, a coded or hashed layer) stay one call_module node, named as in the model."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not any(True for _ in m.children()) or super().is_leaf_module(m, qualname)


class _Tracer:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.parent: dict[int, int] = {}
        self.groups: dict[int, Group] = {}
        self.inputs: dict[str, Layout] = {}
        self.per_channel: dict[str, Layout] = {}

    def run(self) -> ChannelGraph:
        try:
            graph = LeafTracer().trace(self.model)
        except Exception as exc:  # fx raises many types for data-dependent control flow
            raise ModelError(f"cannot trace {type(self.model).__name__} with torch.fx: {exc}") from None
        gm = fx.GraphModule(self.model, graph)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(2, *self.input_shape))
        finally:
            self.model.train(was_training)
        modules = dict(self.model.named_modules())
        layouts: dict[fx.Node, Layout | None] = {}
        for node in gm.graph.nodes:
            layouts[node] = self._visit(node, layouts, modules)
        return self._resolve()

    # --- groups ---------------------------------------------------------------------------------
    def _new(self, size: int, producer: str | None = None, locked: str | None = None) -> Layout:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = Group(gid, size, [producer] if producer else [], locked=locked)
        return (Segment(gid, size),)

    def _find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def _merge(self, a: Layout, b: Layout, where: str) -> Layout:
        if [(s.channels, s.spatial) for s in a] != [(s.channels, s.spatial) for s in b]:
            raise ModelError(f"{where}: adds tensors whose channels come from differently split sources; "
                             "channel removal supports sums of tensors with the same channel groups")
        for sa, sb in zip(a, b):
            ra, rb = self._find(sa.group), self._find(sb.group)
            if ra != rb:
                self.parent[rb] = ra
                ga, gb = self.groups[ra], self.groups[rb]
                ga.producers += gb.producers
                ga.norms += gb.norms
                ga.locked = ga.locked or gb.locked
        return a

    def _lock(self, layout: Layout | None, why: str) -> None:
        for s in layout or ():
            group = self.groups[self._find(s.group)]
            group.locked = group.locked or why

    def _resolve(self) -> ChannelGraph:
        def canon(layout: Layout) -> Layout:
            return tuple(Segment(self._find(s.group), s.channels, s.spatial) for s in layout)

        roots = {gid: g for gid, g in self.groups.items() if self._find(gid) == gid}
        return ChannelGraph(roots, {k: canon(v) for k, v in self.inputs.items()},
                            {k: canon(v) for k, v in self.per_channel.items()})

    # --- nodes ------------------------------------------------------------------------------------
    def _visit(self, node: fx.Node, layouts: dict[fx.Node, Layout | None],
               modules: dict[str, nn.Module]) -> Layout | None:
        shape = _shape(node)
        in_shape = _shape(node.args[0]) if node.args else None
        args = [layouts.get(a) if isinstance(a, fx.Node) else None for a in node.args]
        first = args[0] if args else None
        where = f"layer {node.target!r}" if node.op == "call_module" else f"operation {node.name!r}"
        if node.op == "placeholder":
            return self._new(self.input_shape[0], locked="model input")
        if node.op == "output":
            for a in node.all_input_nodes:
                self._lock(layouts.get(a), "model output")
            return None
        if node.op == "get_attr" or shape is None:
            return None
        if node.op == "call_module":
            return self._module(node.target, modules[node.target], first, shape, in_shape)
        target = node.target
        if target in (torch.cat, torch.concat, torch.concatenate):
            return self._cat(node, layouts, shape, where)
        if first is None and not any(args):
            return None  # computes on constants only
        if target in ELEMENTWISE_CALLS:
            return first
        if target in SUMS:
            present = [a for a in args if a is not None]
            return present[0] if len(present) == 1 else self._merge(present[0], present[1], where)
        if target in FLATTENS and len(shape) == 2 and in_shape and shape[0] == in_shape[0] and first is not None:
            return _flatten(first, in_shape)
        if target in SPATIAL_MEANS and _over_positions(node, in_shape) and all(s.spatial == 1 for s in first or ()):
            return first
        if target == "size" or target == getattr:
            return None
        raise ModelError(f"{where} ({getattr(target, '__name__', target)}) is not known to keep channels; "
                         f"channel removal cannot follow it ({EXTENSION_HINT})")

    def _module(self, name: str, module: nn.Module, first: Layout | None, shape: tuple[int, ...],
                in_shape: tuple[int, ...] | None) -> Layout | None:
        if first is None:
            raise ModelError(f"layer {name!r} reads no traced tensor")
        kind = type(module).__name__
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if module.groups == 1:
                self._need_channels(name, first, kind)
                self.inputs[name] = first
                return self._new(module.out_channels, name)
            if module.groups == module.in_channels == module.out_channels:
                self._need_channels(name, first, kind)
                self.per_channel[name] = first
                return first
            raise ModelError(f"layer {name!r}: grouped convolution ({module.groups} groups) is not supported by "
                             "channel removal (only groups=1 and depthwise)")
        if isinstance(module, nn.Linear):
            if len(shape) != 2:
                raise ModelError(f"layer {name!r}: channel removal supports Linear layers on (batch, features) only")
            carried = sum(s.channels * s.spatial for s in first)
            if carried != module.in_features:
                raise ModelError(f"layer {name!r} reads {module.in_features} features but its input carries {carried}")
            self.inputs[name] = first
            return self._new(module.out_features, name)
        if isinstance(module, NORMS):
            self._need_channels(name, first, kind)
            self.per_channel[name] = first
            for s in first:
                self.groups[self._find(s.group)].norms.append(name)
            return first
        if isinstance(module, Select):
            self._lock(first, f"read through the input selector {name!r}")
            return self._new(module.index.numel(), name)
        if isinstance(module, ELEMENTWISE_MODULES):
            return first
        if isinstance(module, nn.Flatten):
            return _flatten(first, in_shape)
        raise ModelError(f"layer {name!r} ({kind}) is not known to keep channels; channel removal cannot follow "
                         f"it ({EXTENSION_HINT})")

    def _need_channels(self, name: str, layout: Layout, kind: str) -> None:
        if any(s.spatial != 1 for s in layout):
            raise ModelError(f"layer {name!r} ({kind}) reads a flattened tensor; channel removal cannot map it")

    def _cat(self, node: fx.Node, layouts: dict[fx.Node, Layout | None], shape: tuple[int, ...],
             where: str) -> Layout:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (1, 1 - len(shape)):
            raise ModelError(f"{where}: concatenation along dim {dim}; channel removal supports dim 1 only")
        parts = [layouts.get(t) for t in tensors]
        if any(p is None for p in parts):
            raise ModelError(f"{where}: concatenates a tensor of unknown channels")
        return tuple(s for p in parts for s in p)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _over_positions(node: fx.Node, in_shape: tuple[int, ...] | None) -> bool:
    """True for a mean/max over spatial positions only (x.mean((2, 3))): the channels pass through."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if in_shape is None or dims is None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return all(isinstance(d, int) and d % len(in_shape) >= 2 for d in dims)


def _flatten(layout: Layout, before: tuple[int, ...] | None) -> Layout:
    """Layout after flattening (N, C, *spatial) to (N, C * prod(spatial)): each channel spans its positions."""
    if before is None:
        raise ModelError("cannot map channels through a flatten of a tensor of unknown shape")
    per_channel = 1
    for d in before[2:]:
        per_channel *= d
    return tuple(Segment(s.group, s.channels, s.spatial * per_channel) for s in layout)
