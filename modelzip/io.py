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
from .errors import FormatError, LimitError, ModelError
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
          sparse: bool = False, max_decoded_bytes: int | None = None) -> nn.Module:
    """The module stored in `data`: rebuilt from its `arch` record, or loaded into `model` if given.

    Rebuilding imports user code only with `allow_import=True` (built-in models need no import). With
    `sparse=True`, pruned layers that run faster from their nonzeros are swapped for sparse ones
    (`modelzip.sparsify_`, measured at batch 1 and 64): same outputs, inference only. A file is untrusted
    input: what it decodes to, and a rebuilt model's tensors, may take at most `max_decoded_bytes` (default
    `codec.decoded_cap`: max(256 MiB, 2000 x the file's size)), checked before anything is allocated
    (LimitError); every stored tensor must have the dtype and shape of the module's (ModelError).
    """
    meta, arrays = codec.loads(data, max_decoded_bytes=max_decoded_bytes)
    state = {name: torch.from_numpy(a if a.flags.writeable else a.copy()) for name, a in arrays.items()}
    if model is None:
        arch = meta.get("arch")
        if not isinstance(arch, dict):
            raise ModelError("the file records no architecture to rebuild; pass the module to load into")
        limit = codec.decoded_cap(len(data)) if max_decoded_bytes is None else max_decoded_bytes
        model = _rebuild_fast(arch, state, allow_import, limit)
    else:
        _fit_structure(model, meta.get("arch"), state)
        _assign(model, state)
    if sparse:
        sparsify_(model)
    return model.eval()


def _rebuild_fast(arch: dict[str, Any], state: dict[str, torch.Tensor], allow_import: bool,
                  limit: int) -> nn.Module:
    """Rebuild on the meta device (nothing allocated or initialised, and the stored tensors checked against the
    record's sizes before anything is), else on the CPU.

    A module with state outside its state_dict (a hashed layer's index) is left with meta tensors and rebuilt
    for real if all its tensors fit in `limit` bytes. A user's builder that reads its weights (`.item()`, an
    init from data) cannot run on meta and is rebuilt for real at once; a built-in one that fails on meta
    would fail on the CPU too, after allocating.
    """
    try:
        model = rebuild(arch, allow_import=allow_import, device="meta")
    except ModelError:
        if "name" in arch:
            raise
        model = None
    if model is not None:
        _assign(model, state)
        tensors = [*model.parameters(), *model.buffers()]
        if not any(t.is_meta for t in tensors):
            return model
        needed = sum(t.nbytes for t in tensors)
        if needed > limit:
            raise LimitError(f"the rebuilt model's tensors take {needed} bytes (those outside its state_dict "
                             f"included), over the limit of {limit}; if the file is trusted, pass a larger "
                             "max_decoded_bytes to modelzip.load / loads")
    model = rebuild(arch, allow_import=allow_import)
    _assign(model, state)
    return model


def load(path: str | Path, model: nn.Module | None = None, *, allow_import: bool = False,
         sparse: bool = False, max_decoded_bytes: int | None = None) -> nn.Module:
    """Read a .mzip file written by `save`; see `loads`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path} is a directory, not a .mzip file") from None
    return loads(data, model, allow_import=allow_import, sparse=sparse, max_decoded_bytes=max_decoded_bytes)


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
    """Put the stored tensors in the module's place, each first checked against the module's own: `assign=True`
    would take int8 codes stored as uint8 (or any other dtype or shape) without a word."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ModelError(f"the stored tensors do not fit the model: the file lacks {_few(missing)} and has "
                         f"{_few(unexpected)} the model does not")
    for name, tensor in state.items():
        expected = own[name]
        if (tensor.dtype, tensor.shape) != (expected.dtype, expected.shape):
            raise ModelError(f"the stored tensors do not fit the model: {name!r} is stored as {tensor.dtype} "
                             f"{list(tensor.shape)}, the model's is {expected.dtype} {list(expected.shape)}")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"the stored tensors do not fit the model: {exc}") from None


def _few(names: list[str]) -> str:
    return "nothing" if not names else ", ".join(map(repr, names[:5])) + (f" (+{len(names) - 5})" if names[5:] else "")


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
