"""Atomic file writes: a crash or an error midway never leaves a half-written output behind (a kill -9 leaves
a temporary beside it, which `remove_temporaries` finds by its name)."""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

SUFFIX = ".tmp"  # of the temporaries atomic_write makes; what remove_temporaries looks for


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename it into place.

    The file gets the permissions a plain `open(path, "wb")` would give it (an existing file's, or
    0o666 less the umask), not the owner-only mode of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=SUFFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | Path, name: str | None = None) -> None:
    """Delete the temporaries that writes of `folder/name` (of any file in `folder`, with None) left when
    killed midway. Only names of `atomic_write`'s exact pattern (`.NAME.` + mkstemp's 8 random characters
    + `.tmp`) go, never a user's own file."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    stem = r"\..+\." if name is None else re.escape(f".{name}.")
    pattern = re.compile(stem + r"[a-z0-9_]{8}" + re.escape(SUFFIX))
    for entry in folder.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
