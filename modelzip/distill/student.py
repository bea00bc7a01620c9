"""`distill`: train a student on a transfer set against its teachers' soft targets.

Built on the one training loop (`modelzip.train.fit`) through its `loss_fn` hook. Without
augmentation the soft targets ride along in the dataset as a third tensor, computed once, so a
distillation epoch costs about what a plain epoch of the student costs; with input jitter the
teachers see each jittered batch and run online.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..train import EpochLog, LossFn, TrainConfig, fit, jittered
from .loss import kd_loss
from .teachers import Teachers, cache_soft_logits, precomputed, soft_logits


@dataclass(frozen=True)
class DistillConfig:
    """How to distill. Defaults are the paper's MNIST setting."""

    temperature: float = 20.0  # the paper's MNIST value; T > 8 worked for students of >= 300 units/layer
    alpha: float = 0.9  # weight of the soft loss; the paper found a "considerably lower weight" on hard labels best
    jitter: int = 0  # random shifts of up to this many pixels; > 0 means the teacher runs on every batch
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 <= self.alpha <= 1 or self.jitter < 0:
            raise ConfigError(f"distillation needs temperature > 0, 0 <= alpha <= 1, jitter >= 0; got {self}")


def distill(student: nn.Module, teachers: Teachers, transfer: TensorDataset, config: DistillConfig = DistillConfig(),
            *, test: TensorDataset | None = None, cache: bool | str | Path = True,
            checkpoint: str | Path | None = None, desc: str = "distill") -> list[EpochLog]:
    """Train `student` in place on `transfer` to match the soft targets of `teachers`.

    teachers: a model, a sequence of models (an ensemble: their probabilities at T are averaged), or
    precomputed teacher logits for the transfer set, (N, classes) or (members, N, classes).
    transfer: (inputs, labels) or (inputs,) alone; without labels the loss is the soft term only.
    cache: True keeps the soft targets in memory, a path memory-maps them from a .npy file there,
    False runs the teachers on every batch (what augmentation needs anyway).
    """
    dataset, loss_fn = teaching(teachers, transfer, config, cache=cache)
    return fit(student, dataset, config.train, test=test, checkpoint=checkpoint, desc=desc, loss_fn=loss_fn)


def teaching(teachers: Teachers, transfer: TensorDataset, config: DistillConfig, *,
             cache: bool | str | Path = True) -> tuple[TensorDataset, LossFn]:
    """The dataset and loss that make any training loop distil: `fit`, pruning's retraining or
    quantization's fine-tuning all take them, so the teacher keeps teaching while a student is compressed.

    Cached: (inputs[, labels], soft-target logits) with a loss that reads the third tensor; online:
    the transfer set itself with a loss that runs the teachers (on the jittered batch, if any).
    """
    labeled = len(transfer.tensors) >= 2
    T = config.temperature
    if isinstance(teachers, torch.Tensor):
        if config.jitter:
            raise ConfigError("precomputed teacher logits cannot follow jittered inputs; pass the teacher models")
        targets = precomputed(teachers, len(transfer), T)
    elif cache is False or config.jitter:
        return transfer, _online_loss(teachers, config, labeled)
    else:
        targets = cache_soft_logits(teachers, transfer, T, path=None if cache is True else cache)
    return TensorDataset(*transfer.tensors[:2], targets), _cached_loss(config, labeled)


def _cached_loss(config: DistillConfig, labeled: bool) -> LossFn:
    def loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs, *labels, targets = batch
        return kd_loss(model(inputs), targets, labels[0] if labeled else None, config.temperature, config.alpha)
    return loss


def _online_loss(teachers: nn.Module | Sequence[nn.Module], config: DistillConfig, labeled: bool) -> LossFn:
    def loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        targets = soft_logits(teachers, batch[0], config.temperature)
        return kd_loss(model(batch[0]), targets, batch[1] if labeled else None, config.temperature, config.alpha)
    return jittered(config.jitter, loss) if config.jitter else loss
