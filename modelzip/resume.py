"""A compress run's folder: what lets a killed `compress` continue where it stopped.

The folder holds one `fit` checkpoint per training call of the recipe (written atomically after every
epoch, by rank 0 only) and `run.json`, the fingerprint of the run that made it. A rerun replays the
recipe from the start: a training call whose checkpoint holds all its epochs loads the result instead of
training, the interrupted one continues after its last finished epoch, and the steps between trainings
(masks, k-means, factorizations, channel removal) are recomputed from the same weights and random state.
So the rerun redoes at most one epoch, and writes the uninterrupted run's bytes.

Completed stages are replayed, not restored from a snapshot of the module: torch refuses to pickle a
module with parametrizations (masks, shared centroids, quantizers), a snapshot of the weights alone
does not say how to rebuild the structure a stage changed, and replaying keeps every file read from
the folder a `weights_only` one, so nothing in it can run code.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .atomic import atomic_write, remove_temporaries
from .data import DataBundle
from .data.feed import Data
from .distributed import is_main
from .errors import ConfigError
from .models import arch_of
from .recipes import Recipe

FINGERPRINT = "run.json"


def fingerprint(model: nn.Module, data: DataBundle | Data | None, recipe: Recipe, *, pretrained: bool,
                calibration: Data | None) -> dict[str, Any]:
    """What makes two runs the same run: the recipe, the model's architecture and starting weights, and
    the data (tensor contents for a DataBundle or TensorDataset; only the type of a DataLoader or batch
    list, which is not read a second time for this). A user's loss or metric function is not covered."""
    return {"recipe": repr(recipe), "arch": arch_of(model), "pretrained": pretrained,
            "model": _digest(model.state_dict().items()), "data": _data_digest(data),
            "calibration": _data_digest(calibration)}


def open_run(folder: str | Path, expected: dict[str, Any]) -> Path:
    """The run folder, made (with its fingerprint) if new; refused if another run made it. Rank 0 removes
    what killed checkpoint writes left in it."""
    folder = Path(folder)
    path = folder / FINGERPRINT
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"run folder {folder}: cannot read {FINGERPRINT} ({exc}); delete the folder") from None
        differ = [key for key in expected if found.get(key) != _canonical(expected[key])]
        if differ:
            raise ConfigError(f"run folder {folder} holds another run (its {', '.join(differ)} differ): resume "
                              "with the same model, weights, data, recipe and seed, or delete the folder")
    elif is_main():
        atomic_write(path, lambda f: f.write(json.dumps(expected, indent=1).encode()))
    if is_main():  # the folder and its stages' folders
        for part in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
            remove_temporaries(part)
    return folder


def close_run(folder: Path, keep: bool) -> None:
    """After the outputs are written: the run folder goes (rank 0), unless the caller keeps it."""
    if is_main() and not keep:
        shutil.rmtree(folder)


def _canonical(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), to compare with a stored fingerprint."""
    return json.loads(json.dumps(value))


def _digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _data_digest(data: DataBundle | Data | None) -> str | None:
    if data is None:
        return None
    if isinstance(data, DataBundle):
        sets = {"train": data.train, "test": data.test}
    elif isinstance(data, TensorDataset):
        sets = {"data": data}
    else:
        return type(data).__name__
    return _digest((f"{key}{i}", t) for key, part in sets.items() for i, t in enumerate(part.tensors))
