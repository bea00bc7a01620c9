"""Structural edits: how a pruned or factorized network differs from the one its builder makes.

Channel removal shrinks layers and low-rank factorization replaces them, so the builder's record
(`modelzip_arch`) alone no longer rebuilds the module. Every such transform appends a small JSON
edit to the record (`arch["edits"]`); `rebuild` and `modelzip.load` replay the edits on a freshly
built (or meta-device) module, and the state_dict then fits it. An edit is data, never code: its
`op` names a function in `EDITS`, registered next to the transform that writes it.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import Registry

ARCH_ATTR = "modelzip_arch"
Edit = dict[str, Any]
EDITS: Registry[Callable[[nn.Module, Edit], None]] = Registry("structural edit", ModelError)


def record_edit(model: nn.Module, edit: Edit) -> None:
    """Append `edit` to the model's rebuild record (a fresh record for models built elsewhere)."""
    arch = copy.deepcopy(getattr(model, ARCH_ATTR, None) or {})
    arch.setdefault("edits", []).append(edit)
    setattr(model, ARCH_ATTR, arch)


def apply_edits(model: nn.Module, edits: list[Edit]) -> nn.Module:
    """Replay recorded edits on `model` in order (weights come later, from the state_dict)."""
    for edit in edits:
        if not isinstance(edit, dict) or "op" not in edit:
            raise ModelError(f"structural edit {edit!r} has no 'op'")
        EDITS.get(edit["op"])(model, edit)
    return model


def submodule(model: nn.Module, name: str) -> nn.Module:
    """`model.get_submodule(name)` with an error that says which edit or layer is missing."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"the model has no layer {name!r}") from None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` is (in its parent, under the same attribute)."""
    parent_name, _, child = name.rpartition(".")
    submodule(model, name)
    setattr(submodule(model, parent_name) if parent_name else model, child, new)


def swap_layer(model: nn.Module, edit: Edit, accepts: Callable[[nn.Module], bool],
               make: Callable[[nn.Module], nn.Module]) -> None:
    """Replay an edit that replaced a layer: check the named layer, build its empty replacement, swap it in.

    The state_dict fills the replacement's tensors afterwards, so `make` only shapes it.
    """
    name = edit.get("module", "")
    layer = submodule(model, name)
    if not accepts(layer):
        raise ModelError(f"{edit['op']} edit names layer {name!r}, a {type(layer).__name__}, which cannot take it")
    try:
        new = make(layer)
    except ConfigError as exc:
        raise ModelError(f"{edit['op']} edit of layer {name!r}: {exc}") from None
    replace_module(model, name, new.train(layer.training))


def resize_edit(name: str, module: nn.Module, attrs: dict[str, Any]) -> Edit:
    """The edit that gives layer `name` its current attributes and tensor shapes (after slicing)."""
    shapes = {k: list(t.shape) for k, t in [*module.named_parameters(recurse=False),
                                             *module.named_buffers(recurse=False)] if t is not None}
    return {"op": "resize", "module": name, "attrs": attrs, "shapes": shapes}


@EDITS.register("resize")
def _resize(model: nn.Module, edit: Edit) -> None:
    """Set the layer's size attributes and give each tensor its recorded shape (uninitialised)."""
    module = submodule(model, edit["module"])
    for attr, value in edit.get("attrs", {}).items():
        setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for key, shape in edit.get("shapes", {}).items():
        old = getattr(module, key, None)
        if not isinstance(old, torch.Tensor):
            raise ModelError(f"layer {edit['module']!r} has no tensor {key!r} to resize")
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, key, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(key, new, persistent=key not in module._non_persistent_buffers_set)
