"""Hugging Face folders as modelzip models: `hf:DIR` is a local folder (config.json + weights), read offline.

`transformers` is imported only here and only when such a model is asked for. The .mzip file records the
folder (`{"hf": DIR}`); rebuilding makes the architecture from its config alone, and the weights come from
the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError, first_line
from .edits import ARCH_ATTR

HF_PREFIX = "hf:"


def _transformers() -> Any:
    try:
        import transformers  # only for hf: models, never at import time of modelzip
    except ImportError:
        raise ModelError("hf: models need the transformers package: pip install 'modelzip[hf]'") from None
    return transformers


def hf_tokenizer(folder: str | Path) -> Any:
    """The tokenizer a local Hugging Face folder ships, offline."""
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"transformers cannot load the tokenizer of {folder}: {first_line(exc)}") from None


def hf_pretrained(folder: str | Path) -> nn.Module:
    """The model of a local Hugging Face folder with its weights, offline (no hub), in eval mode."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ModelError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        model = _transformers().AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"transformers cannot load {folder}: {first_line(exc)}") from None
    setattr(model, ARCH_ATTR, {"hf": str(path.resolve())})
    return model.eval()


def hf_architecture(folder: str) -> nn.Module:
    """The architecture alone (from config.json; the weights come from the .mzip file)."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"transformers cannot read the config of {folder}: {first_line(exc)}") from None
    return transformers.AutoModel.from_config(config)

