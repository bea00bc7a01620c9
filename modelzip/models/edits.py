"""Structural edits: how a pruned or factorized network differs from the one its builder makes.

Channel removal shrinks layers and low-rank factorization replaces them, so the builder's record
(`modelzip_arch`) alone no longer rebuilds the module. Every such transform appends a small JSON
edit to the record (`arch["edits"]`); `rebuild` and `modelzip.load` replay the edits on a freshly
built (or meta-device) module, and the state_dict then fits it. An edit is data, never code: its
`op` names a function in `EDITS`, registered next to the transform that writes it.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..registry import Registry
from .schema import MAX_DIM, Check, fail, integer, is_int, record, sequence, shape, table, text

ARCH_ATTR = "modelzip_arch"
Edit = dict[str, Any]
Replay = Callable[[nn.Module, Edit], None]
SIZE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")
"""The attributes a `resize` edit may set (those a layer has): the sizes channel removal changes."""
LAYER = text(r"[^.]+(\.[^.]+)*", "a module name such as 'fc1' or 'features.0'")


class EditOp(NamedTuple):
    """A registered edit: the function that replays it and the schema of its fields (`schema.record`)."""

    replay: Replay
    fields: Check


EDITS: Registry[EditOp] = Registry("structural edit", ModelError)


def edit_op(name: str, required: Mapping[str, Check] | None = None,
            optional: Mapping[str, Check] | None = None) -> Callable[[Replay], Replay]:
    """Register the replay of edits whose `op` is `name`, with the checks of their fields: every edit names its
    "module"; `required` and `optional` check the others, and no other key is allowed."""
    fields = record({"module": LAYER, **(required or {})}, optional)

    def add(replay: Replay) -> Replay:
        EDITS.register(name)(EditOp(replay, fields))
        return replay

    return add


def record_edit(model: nn.Module, edit: Edit) -> None:
    """Append `edit` to the model's rebuild record (a fresh record for models built elsewhere)."""
    arch = copy.deepcopy(getattr(model, ARCH_ATTR, None) or {})
    arch.setdefault("edits", []).append(edit)
    setattr(model, ARCH_ATTR, arch)


def check_edits(edits: object, path: str = "arch.edits") -> None:
    """Check recorded edits against their ops' schemas (a ModelError naming the edit and the field), so that
    none is replayed from a bad record."""
    sequence(_check_edit)(edits, path)


def _check_edit(edit: object, path: str) -> None:
    if not (isinstance(edit, dict) and "op" in edit):
        fail(path, "a structural edit: an object with an 'op'", edit)
    op = edit["op"]
    if not (isinstance(op, str) and op in EDITS):
        fail(f"{path}.op", f"a structural edit (known: {', '.join(EDITS)})", op)
    layer = edit.get("module")
    try:
        EDITS.get(op).fields({k: v for k, v in edit.items() if k != "op"}, path)
    except ModelError as exc:
        raise ModelError(f"{op} edit{f' of layer {layer!r:.60}' if isinstance(layer, str) else ''}: {exc}") from None


def apply_edits(model: nn.Module, edits: list[Edit]) -> nn.Module:
    """Replay recorded edits on `model` in order, all checked first (weights come later, from the state_dict)."""
    check_edits(edits)
    for edit in edits:
        EDITS.get(edit["op"]).replay(model, edit)
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


@edit_op("resize", optional={"attrs": table(integer(1, MAX_DIM), SIZE_ATTRS), "shapes": table(shape)})
def _resize(model: nn.Module, edit: Edit) -> None:
    """Set the layer's size attributes and give each of its tensors its recorded shape (uninitialised).

    Only size attributes the layer has are set (a record cannot replace `forward` or give a Linear `groups`),
    and a Linear's or convolution's must then describe its weight: later edits build layers from them.
    """
    name = edit["module"]
    module = submodule(model, name)
    for attr, value in edit.get("attrs", {}).items():
        if not is_int(getattr(module, attr, None), 0, 2**63):
            raise ModelError(f"resize edit of layer {name!r}: a {type(module).__name__} has no size attribute {attr!r}")
        setattr(module, attr, value)
    for key, size in edit.get("shapes", {}).items():
        old = module._parameters.get(key, module._buffers.get(key))
        if old is None:
            raise ModelError(f"layer {name!r} has no tensor {key!r} to resize")
        new = torch.empty(size, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(module, key, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(key, new, persistent=key not in module._non_persistent_buffers_set)
    described = _described_weight(name, module)
    weight = module._parameters.get("weight")
    if described is not None and weight is not None and tuple(weight.shape) != described:
        raise ModelError(f"resize edit of layer {name!r}: its sizes describe a {list(described)} weight, "
                         f"its shapes give {list(weight.shape)}")


def _described_weight(name: str, module: nn.Module) -> tuple[int, ...] | None:
    """The weight shape a Linear's or convolution's size attributes imply (None for other layers)."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if not isinstance(module, nn.modules.conv._ConvNd):
        return None
    channels, groups = (module.in_channels, module.out_channels), module.groups
    if any(c % groups for c in channels):
        raise ModelError(f"resize edit of layer {name!r}: {groups} groups do not divide its {channels[0]} input and "
                         f"{channels[1]} output channels")
    first, second = channels[::-1] if not module.transposed else channels
    return (first, second // groups, *module.kernel_size)
