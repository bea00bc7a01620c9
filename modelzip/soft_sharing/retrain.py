"""The three steps of soft weight-sharing: (pre)trained model -> retrain under the prior -> merge + quantize.

The prior enters training the way every method here does, through `fit`'s `loss_fn` (task loss +
tau/N * -log p(w)) and `param_groups` (the mixture's means, precisions and mixing proportions get
their own learning rates, as in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from ..distributed import broadcast_module_
from ..errors import ConfigError
from ..layers import strip, targets
from ..train import EpochLog, LossFn, TrainConfig, checkpoint_in, cross_entropy, evaluate, fit
from .merge import assign, merge_components, quantize_to_means_
from .prior import Gamma, GaussianMixturePrior


@dataclass(frozen=True)
class SoftSharingConfig:
    """The prior's settings, with the paper's values for MNIST LeNets as defaults."""

    components: int = 17  # J: 16 learned + the zero component
    pi_zero: float = 0.99  # the zero component's fixed mixing proportion
    # loss = task loss + tau / N * (-log p(w, lambda)), N = training examples: tau weighs the whole
    # data set's likelihood against the prior, independent of the batch size
    tau: float = 0.003
    init_std: float = 0.25  # every component starts this wide
    # Gamma hyper-priors on the precisions, both expecting std ~0.02: firm for the zero component
    # (it holds most weights), looser for the others
    hyper_zero: Gamma = Gamma(5000.0, 2.0)
    hyper: Gamma = Gamma(250.0, 0.1)
    lr_means: float = 1e-4
    lr_log_precision: float = 3e-3
    lr_mixing: float = 3e-3
    merge_kl: float = 1.0  # merge components whose symmetric KL divergence is below this
    biases: bool = True  # the prior (and so quantization) covers the compressible layers' biases too
    train: TrainConfig = TrainConfig(epochs=30, batch_size=256, lr=5e-4)
    # after quantization: train on with every kept weight snapped to its nearest mean (straight-through
    # gradients) and the means trained too, as Deep Compression trains its centroids; None keeps the
    # paper's procedure, which stops at quantization
    finetune: TrainConfig | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.pi_zero < 1.0 or self.tau < 0 or self.merge_kl < 0:
            raise ConfigError(f"soft weight-sharing needs 0 < pi_zero < 1, tau >= 0 and merge_kl >= 0, got {self}")
        if min(self.lr_means, self.lr_log_precision, self.lr_mixing) <= 0:
            raise ConfigError(f"the prior's learning rates must be > 0, got {self}")


@dataclass
class SoftSharing:
    """What a run gives besides the quantized model: the learned and merged priors, and the flat
    vectors of the covered weights before and after retraining (for the plots)."""

    prior: GaussianMixturePrior
    merged: GaussianMixturePrior
    pretrained: torch.Tensor  # (n,)
    retrained: torch.Tensor  # (n,), before quantization
    counts: torch.Tensor  # (J',) elements per merged component, the zero component's first
    logs: list[EpochLog] = field(default_factory=list)
    accuracy_retrained: float | None = None


def covered(model: nn.Module, biases: bool = True) -> dict[str, tuple[nn.Module, str]]:
    """The tensors under the prior: every compressible weight, and (if `biases`) those layers' biases."""
    found: dict[str, tuple[nn.Module, str]] = {}
    for t in targets(model):
        found[f"{t.name}.{t.param}"] = (t.module, t.param)
        if biases and isinstance(getattr(t.module, "bias", None), torch.Tensor):
            found[f"{t.name}.bias"] = (t.module, "bias")
    return found


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).cpu().clone()


def soft_weight_sharing(model: nn.Module, train: TensorDataset, config: SoftSharingConfig = SoftSharingConfig(), *,
                        test: TensorDataset | None = None, loss_fn: LossFn = cross_entropy,
                        checkpoints: str | Path | None = None) -> SoftSharing:
    """Retrain `model` (in place) under a Gaussian-mixture prior, merge its components, quantize.

    The model should come trained: the prior's means start spread over its weights' range. Existing
    prune masks are baked in first (pruned weights stay exactly zero, in the zero component). On
    return every covered tensor holds only the merged prior's means, 0 included. With `checkpoints` (a
    folder) the retraining under the prior (`prior.pt`, the prior's parameters included) and the snapped
    fine-tuning (`snapped.pt`) are checkpointed in it (see `fit`).
    """
    strip(model)
    where = covered(model, config.biases)

    def tensors() -> list[torch.Tensor]:
        return [getattr(module, name) for module, name in where.values()]

    pretrained = _flat(tensors())
    device = tensors()[0].device
    prior = GaussianMixturePrior.initial(pretrained, config.components, config.pi_zero, config.init_std,
                                         config.hyper_zero, config.hyper).to(device)
    scale = config.tau / len(train)

    def loss(m: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return loss_fn(m, batch) + scale * prior(tensors())

    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad]},
        {"params": [prior.means], "lr": config.lr_means},
        {"params": [prior.log_precision], "lr": config.lr_log_precision},
        {"params": [prior.mixing_logits], "lr": config.lr_mixing},
    ]
    logs = fit(model, train, config.train, test=test, loss_fn=loss, param_groups=groups,
               checkpoint=checkpoint_in(checkpoints, "prior"), desc="soft sharing")
    retrained = _flat(tensors())
    accuracy = evaluate(model, test) if test is not None else None
    merged = merge_components(prior.cpu(), config.merge_kl).to(device)
    broadcast_module_(merged)  # under torchrun every rank snaps to rank 0's means
    if config.finetune is None or merged.components == 1:  # (nothing to snap to when all merged into zero)
        codes = quantize_to_means_(tensors(), merged)
    else:  # the weights keep their retrained values underneath: snapping decides afresh at every step
        codes = _snapped_training(model, list(where.values()), assign(tensors(), merged), merged, train,
                                  config.finetune, test, loss_fn, checkpoint_in(checkpoints, "snapped"))
    counts = torch.bincount(torch.cat([c.flatten() for c in codes]).cpu(), minlength=merged.components)
    return SoftSharing(prior.cpu(), merged.cpu(), pretrained, retrained, counts, logs, accuracy)


class SnapToMeans(nn.Module):
    """Parametrization for training with the codebook in place: each kept weight is replaced by the
    nearest shared mean in the forward pass, while the gradient passes straight through to the weight
    underneath (and, summed over the weights that use it, to each mean). Pruned weights stay +0.0."""

    def __init__(self, means: nn.Parameter, keep: torch.Tensor) -> None:
        super().__init__()
        self.means = means  # one Parameter shared by every covered tensor: a single codebook
        self.register_buffer("keep", keep)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        nearest = (weight.detach().reshape(-1, 1) - self.means.detach()).abs().argmin(1).view_as(weight)
        snapped = self.means[nearest] + (weight - weight.detach())  # the value of the mean, the weight's gradient
        return torch.where(self.keep, snapped, torch.zeros((), dtype=weight.dtype, device=weight.device))


def _snapped_training(model: nn.Module, where: list[tuple[nn.Module, str]], codes: list[torch.Tensor],
                      merged: GaussianMixturePrior, train: TensorDataset, config: TrainConfig,
                      test: TensorDataset | None, loss_fn: LossFn, checkpoint: Path | None) -> list[torch.Tensor]:
    """Train the network with its weights snapped to the merged means (straight-through), and the
    means themselves; the zero component stays pruned. Returns the final component of every element."""
    means = nn.Parameter(merged.means.detach().clone())
    for (module, name), code in zip(where, codes):
        parametrize.register_parametrization(module, name, SnapToMeans(means, code != 0))
    fit(model, train, config, test=test, loss_fn=loss_fn, checkpoint=checkpoint, desc="soft sharing: snapped")
    strip(model)
    with torch.no_grad():
        merged.means.copy_(means)
    all_means = merged.all_means().detach()
    return [(getattr(module, name).detach().reshape(-1, 1) == all_means).float().argmax(1).view_as(code)
            for (module, name), code in zip(where, codes)]
