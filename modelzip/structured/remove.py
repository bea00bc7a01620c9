"""Channel removal: slice the layers of a traced network so the removed channels no longer exist.

The result is a smaller dense module (fewer parameters, fewer multiply-adds, faster on any backend),
not a masked one. Every changed layer gets a `resize` edit in the model's rebuild record, so the
pruned network saves to .mzip and loads back like any other.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ModelError
from ..models.edits import SIZE_ATTRS, record_edit, resize_edit
from ..models.reference import Select
from .graph import ChannelGraph, Layout

def feature_index(layout: Layout, keep: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Positions along dim 1 that survive when each group keeps the channels `keep[group]`.

    A flattened channel spans `spatial` consecutive features; segments follow each other (concatenation).
    None when no group of the layout loses channels.
    """
    parts, offset = [], 0
    for s in layout:
        kept = keep.get(s.group)
        if kept is None:
            parts.append(torch.arange(offset, offset + s.channels * s.spatial))
        else:
            parts.append(offset + (kept[:, None] * s.spatial + torch.arange(s.spatial)).flatten())
        offset += s.channels * s.spatial
    if not any(s.group in keep for s in layout):
        return None
    return torch.cat(parts)


def remove_channels_(model: nn.Module, graph: ChannelGraph, keep: Mapping[int, torch.Tensor]) -> nn.Module:
    """Keep only the channels `keep[group]` (sorted indices) of each named group, in place; returns model."""
    modules = dict(model.named_modules())
    keep = {gid: _checked(graph, gid, idx) for gid, idx in keep.items()}
    changed: set[str] = set()
    for gid, idx in keep.items():
        for name in graph.groups[gid].producers:
            _slice_outputs(name, modules[name], idx)
            changed.add(name)
    for name, layout in graph.per_channel.items():
        idx = feature_index(layout, keep)
        if idx is not None:
            _slice_outputs(name, modules[name], idx)
            changed.add(name)
    for name, layout in graph.inputs.items():
        idx = feature_index(layout, keep)
        if idx is not None:
            _slice_inputs(name, modules[name], idx)
            changed.add(name)
    for name in sorted(changed, key=list(modules).index):
        module = modules[name]
        attrs = {a: getattr(module, a) for a in SIZE_ATTRS if hasattr(module, a)}
        record_edit(model, resize_edit(name, module, attrs))
    return model


def _checked(graph: ChannelGraph, gid: int, idx: torch.Tensor) -> torch.Tensor:
    group = graph.groups.get(gid)
    if group is None:
        raise ConfigError(f"no channel group {gid} (groups: {sorted(graph.groups)})")
    if group.locked:
        raise ConfigError(f"channels of {group.name} cannot be removed: {group.locked}")
    idx = torch.as_tensor(idx, dtype=torch.long).flatten()
    if idx.numel() == 0:
        raise ConfigError(f"{group.name} would keep no channel; keep at least one")
    if idx.min() < 0 or idx.max() >= group.size or idx.unique().numel() != idx.numel():
        raise ConfigError(f"{group.name}: kept channels must be distinct indices in [0, {group.size})")
    return idx.sort().values


def _slice_outputs(name: str, module: nn.Module, idx: torch.Tensor) -> None:
    """Keep rows `idx` of every per-channel tensor (weights, biases, running statistics, selected inputs)."""
    _plain(name, module)
    if isinstance(module, Select):
        module.index = module.index[idx]
        return
    for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if tensor is not None and tensor.dim() >= 1:
            _set(module, key, tensor.detach()[idx])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        depthwise = module.groups > 1
        module.out_channels = len(idx)
        if depthwise:
            module.in_channels = module.groups = len(idx)
    elif isinstance(module, nn.Linear):
        module.out_features = len(idx)
    elif hasattr(module, "num_features"):
        module.num_features = len(idx)


def _slice_inputs(name: str, module: nn.Module, idx: torch.Tensor) -> None:
    """Keep input columns `idx` of a convolution or linear layer."""
    _plain(name, module)
    _set(module, "weight", module.weight.detach()[:, idx])
    if isinstance(module, nn.Linear):
        module.in_features = len(idx)
    else:
        module.in_channels = len(idx)


def _set(module: nn.Module, key: str, value: torch.Tensor) -> None:
    old = getattr(module, key)
    if isinstance(old, nn.Parameter):
        setattr(module, key, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        module.register_buffer(key, value.clone(), persistent=key not in module._non_persistent_buffers_set)


def _plain(name: str, module: nn.Module) -> None:
    if parametrize.is_parametrized(module):
        raise ModelError(f"layer {name!r} has masks or shared weights attached; strip the model "
                         "(modelzip.strip) before removing channels")
