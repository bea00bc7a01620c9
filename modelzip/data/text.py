"""Text as calibration batches: lines of a file, tokenized by the model's own tokenizer into dict batches."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read text file {path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path} holds no text")
    return lines


def text_batches(lines: list[str], tokenizer: Any, batch_size: int = 32, max_length: int = 128
                 ) -> list[dict[str, Any]]:
    """Batches of tokenizer outputs (`input_ids`, `attention_mask`, ...), each padded to its longest line."""
    return [dict(tokenizer(lines[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(lines), batch_size)]
