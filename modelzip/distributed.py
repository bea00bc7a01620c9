"""Training on several processes (`torchrun`): one process group, who is who, and identical copies.

Every rank runs the same program on the same data. `fit` gives each rank its share of every batch
(of a user's own batches, every world_size-th one) and averages the gradients, so each optimizer step
sees the global batch. Whatever a stage
derives from the weights (masks, codebooks, priors, teacher targets) comes out the same on every rank
from identical weights, and is broadcast from rank 0 anyway where that is cheap: a different thread
count or library build on one rank then cannot make the copies drift apart. Only rank 0 writes files.

Outside `torchrun` (or with one process) every function here is a no-op and training is unchanged.
"""
from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")


def is_distributed() -> bool:
    """True inside a process group of more than one rank (one rank needs no communication)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """The rank that prints and writes files: rank 0, or the only process."""
    return rank() == 0


def init() -> bool:
    """Join the process group `torchrun` describes in its environment; True if this call created it.

    Nothing happens without torchrun's variables or when a group exists already (the user made it).
    CPU tensors go through gloo; where CUDA is present, CUDA tensors go through NCCL on this process's
    own GPU (LOCAL_RANK), so a model may sit on either.
    """
    if not dist.is_available() or dist.is_initialized() or not all(v in os.environ for v in TORCHRUN_VARS):
        return False
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        local = int(os.environ["LOCAL_RANK"])
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)
    dist.init_process_group(backend)
    return True


@contextmanager
def launched() -> Iterator[None]:
    """`init()` for the duration of a block; the group is destroyed after it if the block made it."""
    created = init()
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def warn_if_unjoined() -> None:
    """Several processes started by torchrun without a process group would each train alone, all of it."""
    if not dist.is_available() or not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            warnings.warn("launched by torchrun with WORLD_SIZE > 1 but no process group: every process trains "
                          "on all the data by itself; call modelzip.distributed.init() first", stacklevel=3)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_tensors_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite `tensors` in place with rank `src`'s values: one collective per device and dtype."""
    if is_distributed():
        _coalesced_(list(tensors), lambda flat: dist.broadcast(flat, src))


def broadcast_tensor_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """`tensor`, overwritten in place with rank `src`'s value (returned, to wrap a computation)."""
    broadcast_tensors_([tensor], src)
    return tensor


def broadcast_module_(module: nn.Module, *extra: torch.Tensor, src: int = 0) -> None:
    """Make the parameters and buffers of `module` (masks, codes and centroids included), and `extra`,
    identical to rank `src`'s."""
    if is_distributed():
        broadcast_tensors_(_unique([*module.parameters(), *module.buffers(), *extra]), src)


def agreed(value: int) -> bool:
    """Whether every rank holds the same `value` (a decision each rank made alone, such as a resume point)."""
    if not is_distributed():
        return True
    both = torch.tensor([value, -value], dtype=torch.int64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return both[0].item() == -both[1].item()


def shard(batches: Iterable[T], count: int) -> Iterator[T | None]:
    """This rank's share of one pass: batches rank, rank + world_size, ... of the same sequence every rank
    draws, padded with None to `count`, so all ranks take `count` steps however the batches divide."""
    mine = itertools.islice(batches, rank(), None, world_size())
    return itertools.islice(itertools.chain(mine, itertools.repeat(None)), count)


def average_gradients_(params: Sequence[torch.Tensor], *sums: float) -> list[float]:
    """Replace each gradient by its mean over the ranks that produced one; return `sums` summed over ranks.

    A rank without a batch in this step (see `shard`) or that did not use a parameter adds nothing to
    that parameter's mean; a parameter no rank produced a gradient for keeps None, so the optimizer
    skips it (no momentum or weight decay step), as it would in one process.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    counts = torch.tensor([float(p.grad is not None) for p in params] + list(sums), dtype=torch.float64,
                          device=params[0].device)
    _coalesced_(grads, dist.all_reduce)
    dist.all_reduce(counts)
    counted = counts.tolist()
    for p, grad, count in zip(params, grads, counted):
        p.grad = grad.div_(count) if count else None
    return counted[len(params):]


def _coalesced_(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], object]) -> None:
    """Run the in-place `collective` on one flat buffer per (device, dtype) of `tensors`, then copy back:
    a collective per tensor would cost a round trip for each of a model's dozens of tensors."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    with torch.no_grad():
        for (_, dtype), group in groups.items():
            wire = torch.uint8 if dtype is torch.bool else dtype  # gloo carries no bool
            flat = torch.cat([t.detach().reshape(-1).to(wire) for t in group])
            collective(flat)
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view(t.shape).to(dtype))


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor once (a parameter shared by two modules would be broadcast twice)."""
    return list({id(t): t for t in tensors}.values())
