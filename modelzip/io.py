"""save / load / dumps / loads: an nn.Module to and from the .mzip format (no pickle anywhere).

The file holds the module's state_dict, each tensor in its smallest encoding (see modelzip.codec),
and an `arch` record saying how to rebuild the module, so `load(path)` needs nothing else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import codec
from .atomic import atomic_write
from .errors import FormatError, ModelError
from .layers import parameter_count, plain_state_dict, require_finite
from .models import apply_edits, arch_of, rebuild
from .models.edits import ARCH_ATTR
from .prune.sparse_exec import sparsify_

FORMAT_NAME = "modelzip"


def dumps(model: nn.Module, *, arch: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> bytes:
    """The .mzip bytes of `model` (parametrizations baked in; the model itself is left untouched).

    `arch` says how to rebuild the module (default: the record `modelzip.models.build` attached);
    `meta` is any JSON object to keep in the header (data set, accuracy, recipe, ...).
    """
    state = plain_state_dict(model)
    require_finite(state.items(), "save")
    tensors = {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in state.items()}
    header = {"format": FORMAT_NAME, "arch": arch if arch is not None else arch_of(model), **(meta or {})}
    return codec.dumps(tensors, header)


def save(model: nn.Module, path: str | Path, *, arch: dict[str, Any] | None = None,
         meta: dict[str, Any] | None = None) -> int:
    """Write `model` to `path` atomically (a crash never leaves half a file); returns the bytes written."""
    data = dumps(model, arch=arch, meta=meta)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def loads(data: bytes, model: nn.Module | None = None, *, allow_import: bool = False,
          sparse: bool = False) -> nn.Module:
    """The module stored in `data`: rebuilt from its `arch` record, or loaded into `model` if given.

    Rebuilding imports user code only with `allow_import=True` (built-in models need no import). With
    `sparse=True`, pruned layers that run faster from their nonzeros are swapped for sparse ones
    (`modelzip.sparsify_`, measured at batch 1 and 64): same outputs, inference only.
    """
    meta, arrays = codec.loads(data)
    state = {name: torch.from_numpy(a if a.flags.writeable else a.copy()) for name, a in arrays.items()}
    if model is None:
        arch = meta.get("arch")
        if not isinstance(arch, dict):
            raise ModelError("the file records no architecture to rebuild; pass the module to load into")
        model = _rebuild_fast(arch, state, allow_import)
    else:
        _fit_structure(model, meta.get("arch"), state)
        _assign(model, state)
    if sparse:
        sparsify_(model)
    return model.eval()


def _rebuild_fast(arch: dict[str, Any], state: dict[str, torch.Tensor], allow_import: bool) -> nn.Module:
    """Rebuild on the meta device (no time initialising weights that are overwritten at once), else on the CPU.

    A builder that reads its weights (`.item()`, an init from data) cannot run on meta; a module with
    state outside its state_dict is left with meta tensors: both are rebuilt for real.
    """
    try:
        model = rebuild(arch, allow_import=allow_import, device="meta")
    except ModelError:
        model = None
    if model is not None:
        _assign(model, state)
        if not any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
            return model
    model = rebuild(arch, allow_import=allow_import)
    _assign(model, state)
    return model


def load(path: str | Path, model: nn.Module | None = None, *, allow_import: bool = False,
         sparse: bool = False) -> nn.Module:
    """Read a .mzip file written by `save`; see `loads`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path} is a directory, not a .mzip file") from None
    return loads(data, model, allow_import=allow_import, sparse=sparse)


def header(path: str | Path) -> dict[str, Any]:
    """The parsed header of a .mzip file (encodings, sizes, meta) without decoding any weights."""
    return codec.read_header(path)


def _fit_structure(model: nn.Module, arch: Any, state: dict[str, torch.Tensor]) -> None:
    """Replay the file's structural edits on a given model that still has its original shapes."""
    edits = arch.get("edits") if isinstance(arch, dict) else None
    if not edits:
        return
    own = model.state_dict()
    if state.keys() != own.keys() or any(own[k].shape != t.shape for k, t in state.items()):
        apply_edits(model, edits)
        setattr(model, ARCH_ATTR, arch)


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"the stored tensors do not fit the model: {exc}") from None


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters as dense fp32: the baseline every compression ratio divides."""
    return 4 * parameter_count(model)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """True when the two modules' state_dicts are bit-identical (same names, shapes and bytes)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype
        and np.array_equal(_bytes(sa[k]), _bytes(sb[k])) for k in sa)


def _bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint8)
