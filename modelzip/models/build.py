"""Build a model from a name or `package.module:function`, and record how, so a .mzip can rebuild it.

The recipe for rebuilding is a small JSON object (`arch`) stored on the module as `modelzip_arch`
and written into the .mzip header: `{"name": "lenet-5", "kwargs": {...}}` for built-in networks or
`{"import": "pkg.mod:fn"}` for user code. Importing user code named in a file runs that code, so
`rebuild` does it only when the caller allows it (the file itself never carries code).
"""
from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, first_line
from .edits import ARCH_ATTR, apply_edits, check_edits
from .hf import HF_PREFIX, hf_architecture, hf_pretrained
from .reference import MODELS
from .schema import (MAX_DIM, MAX_DIMS, Check, boolean, fail, fraction, integer, is_int, known, record,
                     sequence, shape, text)


MLP_NAME = re.compile(r"mlp(-[1-9][0-9]*)+")


def build(spec: str, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
          weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A model from a built-in name (sized for the data), `pkg.mod:fn`, or `hf:DIR` (a local Hugging Face
    folder: config + weights, read offline through `transformers`), with optional state_dict file.

    Any `mlp-H1-H2-...` name is a fully connected network with those hidden widths; `kwargs` go to
    the built-in builder (e.g. `activation="lma"`, `dropout=0.5`) and are recorded for rebuilding.
    """
    if spec.startswith(HF_PREFIX):
        model = hf_pretrained(spec[len(HF_PREFIX):])
        if weights is not None:
            load_weights(model, weights)
        return model
    if ":" in spec:
        if kwargs:
            raise ModelError(f"user models ({spec}) take no builder arguments, got {sorted(kwargs)}")
        arch: dict[str, Any] = {"import": spec}
    else:
        arch = {"name": spec, "kwargs": {"input_shape": list(input_shape), "num_classes": num_classes, **kwargs}}
    model = rebuild(arch, allow_import=True)
    if weights is not None:
        load_weights(model, weights)
    return model


def rebuild(arch: dict[str, Any], *, allow_import: bool = False, device: str | torch.device | None = None
            ) -> nn.Module:
    """Construct the module an `arch` record describes (on `device`, e.g. "meta" to skip initialisation).

    Structural edits in the record (channels removed, layers factorized) are replayed on the result. The
    record is checked first (`check_arch`), so a bad one raises a ModelError naming its field.
    """
    check_arch(arch)
    builder, kwargs = _builder(arch, allow_import)
    label = arch_label(arch)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            model = builder(**kwargs)
        except ModelError:
            raise
        except Exception as exc:  # the builder is often user code: one line that names it
            raise ModelError(f"building {label} raised {type(exc).__name__}: {first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
        apply_edits(model, arch.get("edits", []))
    setattr(model, ARCH_ATTR, arch)
    return model


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """The rebuild record of a model made by `build`, or None for a model built elsewhere."""
    return getattr(model, ARCH_ATTR, None)


def input_shape_of(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape a built-in model was built for (its arch record's), or None."""
    shape = ((arch_of(model) or {}).get("kwargs") or {}).get("input_shape")
    return tuple(shape) if shape else None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a plain state_dict file (torch.save of `model.state_dict()`), safely (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file {path} does not exist") from None
    except Exception as exc:  # torch raises several types for corrupt or non-tensor files
        raise ModelError(f"cannot read weights file {path}: {exc}") from None
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights file {path} does not fit the model: {exc}") from None


def check_arch(arch: object) -> None:
    """Check an `arch` record's fields and edits before anything is built from it: a ModelError naming the field.

    The arguments the built-in builders share are checked for type and range; others go to the builder as
    they are (it names the ones it does not take), since a user may register builders of their own.
    """
    _ARCH(arch, "arch")
    builders = [key for key in ("name", "import", "hf") if key in arch]
    if len(builders) > 1:
        raise ModelError(f"arch names {' and '.join(builders)}: a record has one builder")
    if "kwargs" in arch and "name" not in arch:
        raise ModelError("arch.kwargs are a built-in model's arguments, but arch has no 'name'")


def _model_name(value: Any, path: str) -> None:
    text()(value, path)
    if MLP_NAME.fullmatch(value) and not all(is_int(int(h), 1, MAX_DIM) for h in value.split("-")[1:]):
        fail(path, f"an mlp-H1-H2-... name with widths in [1, {MAX_DIM}]", value)


def _input_shape(value: Any, path: str) -> None:
    sequence(integer(1, MAX_DIM), 1, MAX_DIMS)(value, path)
    shape(value, path)


def _optional_width(value: Any, path: str) -> None:
    """vgg-bn's `hidden`: a width or None; mlp's: a list of widths."""
    if value is not None and not is_int(value, 1, MAX_DIM):
        sequence(integer(1, MAX_DIM), 1, 1024)(value, path)


def _vgg_width(value: Any, path: str) -> None:
    if value != "M" and not is_int(value, 1, MAX_DIM):
        fail(path, f"a width in [1, {MAX_DIM}] or 'M' (max-pool)", value)


BUILDER_ARGS: dict[str, Check] = {
    "input_shape": _input_shape,
    "num_classes": integer(1, MAX_DIM),
    "dropout": fraction,
    "activation": text(),  # a name; the registry says which exist
    "batch_norm": boolean,
    "widths": sequence(_vgg_width, 1, 1024),
    "hidden": _optional_width,
}
"""Checks of the built-in builders' arguments, by name."""
_ARCH = record({}, {"name": _model_name, "kwargs": known(BUILDER_ARGS), "import": text(r"[^:]+:[^:]+",
                    "a reference package.module:function"), "hf": text(), "edits": check_edits})


def _builder(arch: dict[str, Any], allow_import: bool) -> tuple[Callable[..., Any], dict[str, Any]]:
    if "name" in arch:
        kwargs = dict(arch.get("kwargs", {}))
        if "input_shape" in kwargs:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        name = arch["name"]
        if name not in MODELS and MLP_NAME.fullmatch(name):
            return MODELS.get("mlp"), {"hidden": [int(h) for h in name.split("-")[1:]], **kwargs}
        return MODELS.get(name), kwargs
    if "hf" in arch:
        if not allow_import:
            raise ModelError(f"the model is a Hugging Face folder ({arch['hf']}), rebuilt by transformers' code; pass "
                             "allow_import=True (CLI: --allow-import), or pass the model to load into")
        return partial(hf_architecture, arch["hf"]), {}
    if "import" in arch:
        ref = arch["import"]
        if not allow_import:
            raise ModelError(f"the model is user code ({ref}); pass allow_import=True (CLI: --allow-import) "
                             "to import and run it, or pass the model to load into")
        return _import(ref), {}
    raise ModelError("the file's architecture record names no builder (the model was not made by modelzip.build): "
                     "load it into your own module, modelzip.load(path, model)")


def arch_label(arch: dict[str, Any]) -> str | None:
    """What built the model a record describes: a built-in name, `pkg.mod:fn` or a Hugging Face folder."""
    built = arch.get("name") or arch.get("import") or arch.get("hf")
    return None if built is None else str(built)


def _import(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model reference {ref!r} must look like package.module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import model {ref!r}: {exc}") from None
    if not callable(fn):
        raise ModelError(f"model reference {ref!r} is not callable")
    return fn
