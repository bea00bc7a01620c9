"""Trained quantization (Deep Compression §3.3): weights share centroids, and the centroids train.

A shared weight is `centroids[code]` through a parametrization. Autograd's backward of that gather
is a scatter-add, so the gradient of a centroid is exactly the sum of the gradients of the weights
that share it — the paper's update rule, with no special code.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from ..distributed import broadcast_tensors_
from ..errors import ConfigError
from ..layers import parametrization, per_target, targets
from ..prune import Mask
from ..train import EpochLog, LossFn, TrainConfig, checkpoint_in, cross_entropy, fit
from .kmeans import Init, kmeans_codebook


@dataclass(frozen=True)
class QuantizeConfig:
    """Bits per weight index (zero included as one code), codebook initialisation and fine-tuning."""

    # The paper's widths: 8 bits for conv layers, 5 for fully connected layers, no accuracy loss.
    bits: Mapping[str, int] | int = field(default_factory=lambda: {"linear": 5, "conv": 8})
    layers: Mapping[str, int] | None = None  # module-name pattern -> bits
    init: Init = Init.LINEAR
    finetune: TrainConfig = TrainConfig(epochs=2, lr=1e-4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "init", Init(self.init))


class SharedWeights(nn.Module):
    """Parametrization: weight = [0, centroids...][codes]; code 0 is the pruned zero, fixed."""

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("codes", codes)
        self.register_buffer("zero", torch.zeros(1, dtype=centroids.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.zero, self.centroids])[self.codes]


def quantize_(model: nn.Module, bits: Mapping[str, int] | int = 5, *, layers: Mapping[str, int] | None = None,
              init: Init | str = Init.LINEAR, seed: int = 0) -> dict[str, int]:
    """Replace every compressible weight by shared centroids in place (prune masks are honoured).

    A pruned layer spends one of its 2**bits codes on zero, so 2**bits - 1 centroids are trained.
    Returns the number of centroids per weight, by name.
    """
    found = targets(model)
    wanted = per_target(model, found, bits, layers)
    sizes = {}
    for t in found:
        b = wanted[t]
        if not 1 <= b <= 8:
            raise ConfigError(f"bits for {t.name!r} must be in 1..8 (the .mzip codebook holds <= 256 values), got {b}")
        mask = parametrization(t, Mask)
        weight = t.weight.detach()
        keep = mask.mask if mask is not None else torch.ones_like(weight, dtype=torch.bool)
        k = 2 ** b - (1 if mask is not None else 0)
        centroids, assignment = kmeans_codebook(weight[keep], k, init, seed)
        codes = torch.zeros(weight.shape, dtype=torch.long)
        codes[keep] = assignment + 1
        broadcast_tensors_([centroids, codes])  # under torchrun every rank keeps rank 0's codebook
        if parametrize.is_parametrized(t.module, t.param):
            parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=True)
        parametrize.register_parametrization(t.module, t.param, SharedWeights(centroids.to(weight.dtype), codes))
        # the weight underneath no longer matters: freeze it so optimizers and weight decay skip it
        t.module.parametrizations[t.param].original.requires_grad_(False)
        sizes[f"{t.name}.{t.param}"] = len(centroids)
    return sizes


def trained_quantization(model: nn.Module, train: TensorDataset, config: QuantizeConfig = QuantizeConfig(), *,
                         test: TensorDataset | None = None, seed: int = 0,
                         loss_fn: LossFn = cross_entropy, checkpoints: str | Path | None = None) -> list[EpochLog]:
    """k-means weight sharing, then fine-tuning of the centroids (and of the unshared parameters);
    with `checkpoints` (a folder) the fine-tuning is checkpointed in it (see `fit`)."""
    quantize_(model, config.bits, layers=config.layers, init=config.init, seed=seed)
    return fit(model, train, config.finetune, test=test, loss_fn=loss_fn,
               checkpoint=checkpoint_in(checkpoints, "fine-tune"), desc="quantize")
