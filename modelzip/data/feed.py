"""Batches as a PyTorch user has them: a TensorDataset, a DataLoader, or any re-iterable of batches.

A batch is a tensor (unlabelled inputs), a tuple/list whose first item is the model's input (and
whose second, if any, the labels), or a dict of keyword arguments for the model (a Hugging Face
encoder's `input_ids`, `attention_mask`, ...). Every training and measuring loop in modelzip goes
through these few functions, so none of them assumes images, labels or one input tensor.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from modelzip.data.batching import batches
from modelzip.errors import ConfigError, ModelError, first_line

Batch = Any  # torch.Tensor | Sequence[Any] | Mapping[str, Any]
Data = TensorDataset | Iterable[Batch]


def iterate(data: Data, batch_size: int, *, shuffle: bool = False, seed: int | None = None) -> Iterable[Batch]:
    """One pass over `data`: a TensorDataset is cut into batches here; anything else is used as given.

    A user's DataLoader keeps its own batch size and shuffling. A one-shot iterator (a generator) is
    refused: training and measuring pass over the data more than once.
    """
    if isinstance(data, TensorDataset):
        return batches(data, batch_size, shuffle=shuffle, seed=seed)
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise ConfigError(f"data must be a TensorDataset, a DataLoader or a list of batches, got {type(data).__name__}")
    if iter(data) is data:
        raise ConfigError("data is a one-shot iterator (it would be empty on the second pass); "
                          "pass a DataLoader or a list of batches")
    return data


def batch_count(data: Data, batch_size: int) -> int:
    """Batches in one pass: from the length where there is one, else by counting a pass."""
    if isinstance(data, TensorDataset):
        return -(-len(data) // batch_size)
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in iterate(data, batch_size))


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor in it (nested in tuples, lists and dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return [to_device(v, device) for v in batch]
    return batch


def batch_length(batch: Batch) -> int:
    """Examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, Sequence) else ()
    for value in values:
        if isinstance(value, torch.Tensor) or isinstance(value, (Mapping, list, tuple)):
            return batch_length(value)
    raise ConfigError(f"a batch must hold at least one tensor, got {type(batch).__name__}")


def inputs_of(batch: Batch) -> Batch:
    """What the model is called with: the tensor, the first item of a tuple/list, or the dict itself."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError("an empty tuple is not a batch")
        return batch[0]
    return batch


def labels_of(batch: Batch) -> torch.Tensor | None:
    """The labels of an (inputs, labels, ...) batch or a dict's "labels" entry, else None."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    if isinstance(batch, Mapping) and isinstance(batch.get("labels"), torch.Tensor):
        return batch["labels"]
    return None


def call(model: nn.Module, batch: Batch) -> Any:
    """`model(**batch)` for a dict, else `model(inputs)`; errors in the user's forward become ModelError."""
    x = inputs_of(batch)
    try:
        return model(**x) if isinstance(x, Mapping) else model(x)
    except ModelError:
        raise
    except Exception as exc:  # the user's own forward: one line that says where it failed
        raise ModelError(f"the model's forward raised {type(exc).__name__}: {first_line(exc)}") from exc


def output_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model's output: itself, `.logits` / `.last_hidden_state` / the first item.

    Hugging Face outputs are dict-like with `logits` (classifiers) or `last_hidden_state` (encoders).
    """
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "sentence_embedding", "last_hidden_state"):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"the model returned {type(output).__name__}; modelzip needs a tensor, a tuple starting with "
                     "one, or a dict with 'logits' or 'last_hidden_state' (or pass loss_fn / metric)")


def output_loss(output: Any) -> torch.Tensor | None:
    """The loss a model computed itself (Hugging Face models given `labels`), if it did."""
    value = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return value if isinstance(value, torch.Tensor) else None


def first(data: Data, batch_size: int = 8) -> Batch:
    """The first batch of `data` (for shape checks and tracing)."""
    for batch in iterate(data, batch_size):
        return batch
    raise ConfigError("the data holds no batches")


def take(data: Data, examples: int, batch_size: int = 256) -> Iterator[Batch]:
    """Batches from the start of `data` until at least `examples` examples were given."""
    seen = 0
    for batch in iterate(data, batch_size):
        if seen >= examples:
            return
        seen += batch_length(batch)
        yield batch

