"""Teachers: one model, an ensemble, or precomputed logits — and their soft targets, online or cached.

Whatever the teacher, its soft targets are logits at temperature T (see `ensemble_logits`), so the
student's loss never needs to know how many teachers there were. Without augmentation the transfer
set's inputs never change, so the targets are computed once: in memory, or in a memory-mapped .npy
file for sets too large to hold twice.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..data import batches
from ..distributed import barrier, broadcast_tensor_, is_main
from ..errors import ConfigError
from ..layers import device_of
from .loss import ensemble_logits

Teachers = nn.Module | Sequence[nn.Module] | torch.Tensor


def members(teachers: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """The teacher models as a list (one model is an ensemble of one)."""
    found = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
    if not found or not all(isinstance(m, nn.Module) for m in found):
        raise ConfigError("teachers must be an nn.Module, a non-empty sequence of them, or a tensor of logits")
    return found


@torch.no_grad()
def soft_logits(teachers: nn.Module | Sequence[nn.Module], inputs: torch.Tensor, T: float) -> torch.Tensor:
    """The teachers' soft targets for one batch, as logits at temperature T: (batch, classes).

    Teachers run in eval mode (no dropout: soft targets come from the full model), and are put
    back in the mode they were in.
    """
    models = members(teachers)
    outputs = []
    for model in models:
        was_training = model.training
        model.eval()
        outputs.append(model(inputs))
        model.train(was_training)
    return ensemble_logits(torch.stack(outputs), T)  # (batch, classes)


def precomputed(logits: torch.Tensor, size: int, T: float) -> torch.Tensor:
    """Soft-target logits from logits the user computed: (N, classes) or (members, N, classes)."""
    stacked = logits if logits.dim() == 3 else logits.unsqueeze(0)
    if stacked.dim() != 3 or stacked.shape[1] != size:
        raise ConfigError(f"precomputed teacher logits must be (N, classes) or (members, N, classes) with "
                          f"N = {size} transfer examples, got {tuple(logits.shape)}")
    if not torch.isfinite(stacked).all():
        raise ConfigError("precomputed teacher logits hold NaN or infinite values")
    return ensemble_logits(stacked.float(), T)


def cache_soft_logits(teachers: nn.Module | Sequence[nn.Module], dataset: TensorDataset, T: float, *,
                      path: str | Path | None = None, batch_size: int = 1000) -> torch.Tensor:
    """The soft targets of every example of `dataset`, in order: (N, classes).

    In memory by default; with `path`, written batch by batch to a .npy file (atomically: under a
    temporary name, then renamed) and returned memory-mapped, so only the batches in use are in RAM.
    Under torchrun every rank holds rank 0's targets: computed there and broadcast, or read from the
    file rank 0 wrote (on a file system all ranks share).
    """
    device = device_of(members(teachers)[0])
    if path is None:
        loader = batches(dataset, batch_size, shuffle=False)
        return broadcast_tensor_(torch.cat([soft_logits(teachers, b[0].to(device), T).cpu() for b in loader]))
    path = Path(path)
    if is_main():
        _write_soft_logits(teachers, dataset, T, path, batch_size, device)
    barrier()
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def _write_soft_logits(teachers: nn.Module | Sequence[nn.Module], dataset: TensorDataset, T: float, path: Path,
                       batch_size: int, device: torch.device) -> None:
    loader = batches(dataset, batch_size, shuffle=False)
    classes = soft_logits(teachers, dataset.tensors[0][:1].to(device), T).shape[1]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(dataset), classes))
        start = 0
        for batch in loader:
            chunk = soft_logits(teachers, batch[0].to(device), T).cpu().numpy()
            out[start:start + len(chunk)] = chunk
            start += len(chunk)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
