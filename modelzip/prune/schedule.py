"""Iterative pruning (Han et al. 2015): prune a little, retrain, prune more, retrain.

Sparsity rises on the cubic ramp of Zhu & Gupta (2017): big steps first, while the network still has
slack, small ones near the target, where every weight matters.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..train import EpochLog, LossFn, TrainConfig, cross_entropy, fit
from .magnitude import Scope, prune_


@dataclass(frozen=True)
class PruneConfig:
    """Final sparsity per layer kind, per-layer overrides, and the prune -> retrain schedule."""

    # Fraction of weights removed. Deep Compression keeps ~8% of LeNet's fc weights; conv layers
    # (few weights, each used at every position) tolerate less pruning.
    sparsity: Mapping[str, float] | float = field(default_factory=lambda: {"linear": 0.92, "conv": 0.8})
    layers: Mapping[str, float] | None = None  # module-name pattern -> sparsity, e.g. {"fc3": 0.75}
    scope: Scope = Scope.LAYER
    steps: int = 3  # prune -> retrain rounds
    retrain: TrainConfig = TrainConfig(epochs=2, lr=5e-4)  # per round

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"prune.steps must be >= 1, got {self.steps}")
        object.__setattr__(self, "scope", Scope(self.scope))


def ramp(final: float, step: int, steps: int) -> float:
    """Sparsity after `step` of `steps` rounds on the cubic ramp: final * (1 - (1 - step/steps)^3)."""
    return final * (1 - (1 - step / steps) ** 3)


def iterative_prune(model: nn.Module, train: TensorDataset, config: PruneConfig = PruneConfig(), *,
                    test: TensorDataset | None = None, loss_fn: LossFn = cross_entropy) -> list[EpochLog]:
    """Prune `model` in place to the configured sparsity over `config.steps` retrained rounds."""
    logs: list[EpochLog] = []
    for step in range(1, config.steps + 1):
        prune_(model, _scaled(config.sparsity, step, config.steps),
               layers={k: ramp(v, step, config.steps) for k, v in (config.layers or {}).items()},
               scope=config.scope)
        logs += fit(model, train, config.retrain, test=test, loss_fn=loss_fn,
                    desc=f"prune {step}/{config.steps}")
    return logs


def _scaled(sparsity: Mapping[str, float] | float, step: int, steps: int) -> Mapping[str, float] | float:
    if isinstance(sparsity, Mapping):
        return {kind: ramp(s, step, steps) for kind, s in sparsity.items()}
    return ramp(sparsity, step, steps)
