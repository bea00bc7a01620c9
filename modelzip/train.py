"""The one fit/evaluate loop every method uses: seeded, with progress bars and resumable checkpoints.

Methods customise training through `loss_fn(model, batch) -> loss` (distillation and priors add
terms there) and `param_groups` (own learning rates for extra parameters), not by copying the loop.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import distributed
from .atomic import atomic_write
from .layers import device_of, eval_mode
from .data import jitter
from .data.feed import (Batch, Data, batch_count, batch_length, call, iterate, labels_of, output_loss,
                        output_tensor, to_device)
from .errors import ConfigError, ModelError

LossFn = Callable[[nn.Module, Batch], torch.Tensor]


class OptimizerName(str, Enum):
    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults train the papers' MNIST networks well on a CPU in a few epochs."""

    epochs: int = 10
    # At least this many optimizer steps, adding epochs on small data sets: one recipe then trains
    # both the 4,000 built-in digits and the 60,000 of MNIST long enough.
    min_steps: int = 0
    batch_size: int = 128
    lr: float = 1e-3  # Adam's usual step; SGD wants ~0.05 with momentum 0.9
    optimizer: OptimizerName = OptimizerName.ADAM
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # L2, as in the papers' Caffe solvers when set to 5e-4
    cosine: bool = True  # anneal the learning rate to zero over the run: better final accuracy per epoch
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.min_steps < 0 or self.batch_size < 1 or not 0 < self.lr < math.inf:
            raise ConfigError(f"training needs epochs >= 0, min_steps >= 0, batch_size >= 1 and lr > 0, got {self}")
        object.__setattr__(self, "optimizer", OptimizerName(self.optimizer))


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    seconds: float
    test_accuracy: float | None


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The default loss: the loss the model computes itself (a Hugging Face model given `labels`), else
    hard-label cross-entropy of its logits on (inputs, labels) batches."""
    output = call(model, batch)
    own = output_loss(output)
    if own is not None:
        return own
    labels = labels_of(batch)
    if labels is None:
        raise ConfigError("these batches carry no labels to train on: give (inputs, labels) batches, a model that "
                          "returns its own loss, or loss_fn(model, batch)")
    logits = output_tensor(output)
    return F.cross_entropy(logits.flatten(0, -2) if logits.dim() > 2 else logits, labels.flatten())


def jittered(max_shift: int, loss_fn: LossFn = cross_entropy) -> LossFn:
    """`loss_fn` on inputs shifted by up to `max_shift` pixels (a fresh shift per example and step)."""
    def loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return loss_fn(model, [jitter(batch[0], max_shift), *batch[1:]])
    return loss


def fit(model: nn.Module, train: Data, config: TrainConfig = TrainConfig(), *,
        test: Data | None = None, loss_fn: LossFn = cross_entropy,
        param_groups: list[dict[str, Any]] | None = None, checkpoint: str | Path | None = None,
        desc: str = "train") -> list[EpochLog]:
    """Train `model` in place on `train` for `config.epochs`; returns one log line per epoch.

    `train` is a TensorDataset (batched and shuffled here by `config`) or any re-iterable of batches
    (a DataLoader: its own batch size and order); `loss_fn(model, batch)` gives each step's loss.

    With `checkpoint`, the model and optimizer state are written there (atomically) after every epoch,
    and a later call with the same path resumes after the last finished epoch, bit for bit as if never
    stopped: the file also holds the random number generator's state (dropout, jitter and a DataLoader's
    shuffling draw from it) and the values of `param_groups` parameters outside the model (a prior's). A
    call whose checkpoint holds every epoch trains none: it only loads the result, so a whole workflow
    can be replayed up to where it stopped.

    Under `torchrun` (a process group, see `modelzip.distributed`) each rank trains on every
    world_size-th batch (of a TensorDataset, batches of batch_size / world_size: one step of all ranks
    covers the batch one process would take) and the gradients are averaged, not wrapped in DistributedDataParallel, so
    `loss_fn` and `param_groups` work unchanged. The model comes from rank 0 at the start and after each
    epoch; only rank 0 prints and writes the checkpoint, which any number of ranks can resume from.
    """
    torch.manual_seed(config.seed)
    distributed.warn_if_unjoined()
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = _optimizer(groups, config)
    # A TensorDataset is cut here: under torchrun each rank takes its share of every batch, so the ranks
    # together take the steps of one process on the same global batches (same schedule, same accuracy).
    # A user's own batches cannot be cut: they are dealt out whole, world_size of them to a step.
    cut = isinstance(train, TensorDataset) and distributed.is_distributed()
    batch_size = -(-config.batch_size // distributed.world_size()) if cut else config.batch_size
    per_epoch = batch_count(train, batch_size)
    if per_epoch == 0:
        raise ConfigError("the training data holds no batches")
    synced = distributed.is_distributed()
    per_rank = -(-per_epoch // distributed.world_size())  # each rank's steps per epoch
    epochs = max(config.epochs, -(-config.min_steps // per_rank))
    steps = max(1, epochs * per_rank)
    device = device_of(model)
    start, logs = _resume(checkpoint, model, optimizer, device)
    done = start * per_rank  # the schedule follows the epochs done, whatever the world size that did them
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda s: 0.5 * (1 + math.cos(math.pi * min(done + s, steps) / steps)))
        if config.cosine else (lambda s: 1.0))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if synced:
        if not distributed.agreed(start):
            raise ModelError(f"checkpoint {checkpoint} is not the same file on every rank (this one resumes after "
                             f"epoch {start}): put it where every rank reads it")
        distributed.broadcast_module_(model, *params)
    for epoch in range(start, epochs):
        model.train()
        began, total, seen = time.perf_counter(), 0.0, 0
        loader = iterate(train, batch_size, shuffle=True, seed=config.seed + epoch)
        if synced:  # the same seeded order on every rank, each taking every world_size-th batch
            loader = distributed.shard(loader, per_rank)
        for batch in tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                          disable=None if distributed.is_main() else True, total=per_rank):
            optimizer.zero_grad(set_to_none=True)
            loss_sum, count = _backward(model, batch, loss_fn, device)
            if synced:  # the optimizer's own parameters: a prior's in `param_groups` or a penalty's are averaged too
                loss_sum, count = distributed.average_gradients_(params, loss_sum, count)
            if not math.isfinite(loss_sum):
                raise ModelError(f"training diverged: loss is {loss_sum} in epoch {epoch + 1}; lower the lr")
            optimizer.step()
            schedule.step()
            total += loss_sum
            seen += count
        if synced:  # buffers (BatchNorm statistics) saw each rank's own batches: rank 0's are kept, as DDP does
            distributed.broadcast_module_(model, *params)
        accuracy = evaluate(model, test) if test is not None else None
        logs.append(EpochLog(epoch + 1, total / max(seen, 1), time.perf_counter() - began, accuracy))
        if distributed.is_main():
            _progress(desc, epochs, logs[-1])
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, optimizer, logs, device)
    return logs


def checkpoint_in(folder: str | Path | None, name: str) -> Path | None:
    """The checkpoint file of one `fit` call of a stage that trains more than once (`folder/name.pt`), or
    None when the stage is not checkpointed: each call needs its own file to resume from."""
    return None if folder is None else Path(folder) / f"{name}.pt"


def _backward(model: nn.Module, batch: Batch | None, loss_fn: LossFn, device: torch.device) -> tuple[float, int]:
    """Accumulate the gradients of one batch; returns its loss summed over its examples and their count.

    A diverged loss is not backpropagated (the caller stops); a rank whose share of the epoch ran out
    (None) adds nothing but still takes the step with the others.
    """
    if batch is None:
        return 0.0, 0
    batch = to_device(batch, device)
    loss = loss_fn(model, batch)
    count = batch_length(batch)
    loss_sum = loss.item() * count
    if math.isfinite(loss_sum):
        loss.backward()
    return loss_sum, count


@torch.no_grad()
def predict(model: nn.Module, dataset: Data, batch_size: int = 256) -> torch.Tensor:
    """Outputs (logits) of `model` for every example of `dataset`, in order: (N, classes)."""
    with eval_mode(model):
        device = device_of(model)
        out = [output_tensor(call(model, to_device(b, device))).cpu() for b in iterate(dataset, batch_size)]
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Data, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on labelled `dataset` (fraction in [0, 1]), batch by batch."""
    correct = seen = 0
    with eval_mode(model):
        device = device_of(model)
        for batch in iterate(dataset, batch_size):
            labels = labels_of(batch)
            if labels is None:
                raise ConfigError("accuracy needs labelled batches (inputs, labels); pass a metric for unlabelled data")
            logits = output_tensor(call(model, to_device(batch, device))).cpu()
            correct += (logits.argmax(-1) == labels.cpu()).sum().item()
            seen += labels.numel()
    if not seen:
        raise ConfigError("the evaluation data holds no examples")
    return correct / seen


def _progress(desc: str, epochs: int, log: EpochLog) -> None:
    """One line per epoch where no progress bar is drawn (a log file, CI): long runs still show they run."""
    if sys.stderr.isatty():
        return
    score = f", test accuracy {log.test_accuracy:.2%}" if log.test_accuracy is not None else ""
    print(f"{desc} {log.epoch}/{epochs}: loss {log.loss:.4f}{score} ({log.seconds:.1f} s)", file=sys.stderr, flush=True)


def _optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def _resume(path: str | Path | None, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device) -> tuple[int, list[EpochLog]]:
    """The epochs a checkpoint finished and their logs, its model, optimizer, outside parameters and random
    state loaded (every rank reads the file, and continues from rank 0's random state). The learning rate
    schedule is not stored: it follows from the epochs done."""
    if path is None or not Path(path).exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        outside = _outside(model, optimizer)
        if len(outside) != len(state["outside"]):
            raise ValueError(f"{len(state['outside'])} parameters outside the model, this run has {len(outside)}")
        with torch.no_grad():
            for param, value in zip(outside, state["outside"]):
                param.copy_(value)
        torch.set_rng_state(state["rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["device_rng"], device)
    except Exception as exc:  # a checkpoint of another model or run, or a damaged file
        raise ModelError(f"checkpoint {path} does not fit this run: {exc}") from None
    logs = [EpochLog(**log) for log in state["logs"]]
    return len(logs), logs


def _save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     logs: list[EpochLog], device: torch.device) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "logs": [vars(log) for log in logs],
             "outside": [p.detach() for p in _outside(model, optimizer)], "rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["device_rng"] = torch.cuda.get_rng_state(device)
    atomic_write(path, lambda f: torch.save(state, f))


def _outside(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimizer's parameters that are not the model's (a prior's means and precisions): the model's
    state_dict misses them, and the optimizer's holds only their moments."""
    own = {id(p) for p in model.parameters()}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) not in own]
