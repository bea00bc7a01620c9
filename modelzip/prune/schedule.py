"""Iterative pruning (Han et al. 2015): prune a little, retrain, prune more, retrain.

Sparsity rises on the cubic ramp of Zhu & Gupta (2017): big steps first, while the network still has
slack, small ones near the target, where every weight matters. Each step ranks weights by |w| or, with
`criterion: obd`, by their Optimal Brain Damage saliency on the training data (see obd.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError
from ..train import EpochLog, LossFn, TrainConfig, checkpoint_in, cross_entropy, fit
from .magnitude import Scope, magnitude, prune_
from .obd import HessianMethod, obd_score


class Criterion(str, Enum):
    MAGNITUDE = "magnitude"  # |w| (Han et al. 2015): free, but blind to how much the loss depends on each weight
    OBD = "obd"  # 1/2 h_kk w_k^2 (LeCun et al. 1989): the loss increase a removal predicts; costs a Hessian pass


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
    criterion: Criterion = Criterion.MAGNITUDE
    hessian: HessianMethod = HessianMethod.FISHER  # OBD only: the Fisher is cheap, never negative, and fits any size
    hessian_examples: int = 2048  # OBD only: training examples the Hessian is averaged over, before each step
    # Per-layer sparsities from a sensitivity analysis (on training examples), keeping as many weights in
    # total as the sparsities above: layers that lose little give more (Han et al. 2015, section 3.3).
    allocate: bool = False
    sensitivity_examples: int = 5000

    def __post_init__(self) -> None:
        for key, values in (("sparsity", self.sparsity), ("layers", self.layers or {})):
            named = values.items() if isinstance(values, Mapping) else [(None, values)]
            for name, value in named:
                if not 0 <= value < 1:  # NaN fails too
                    where = f"prune.{key}" + (f".{name}" if name is not None else "")
                    raise ConfigError(f"{where} must be in [0, 1) (a fraction of weights removed), got {value!r}")
        if self.steps < 1:
            raise ConfigError(f"prune.steps must be >= 1, got {self.steps}")
        if self.hessian_examples < 1:
            raise ConfigError(f"prune.hessian_examples must be >= 1, got {self.hessian_examples}")
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        object.__setattr__(self, "hessian", HessianMethod(self.hessian))


def ramp(final: float, step: int, steps: int) -> float:
    """Sparsity after `step` of `steps` rounds on the cubic ramp: final * (1 - (1 - step/steps)^3)."""
    return final * (1 - (1 - step / steps) ** 3)


def iterative_prune(model: nn.Module, train: TensorDataset, config: PruneConfig = PruneConfig(), *,
                    test: TensorDataset | None = None, loss_fn: LossFn = cross_entropy,
                    checkpoints: str | Path | None = None) -> list[EpochLog]:
    """Prune `model` in place to the configured sparsity over `config.steps` retrained rounds.

    With the OBD criterion the saliencies are recomputed on `train` (under `loss_fn`, the objective being
    minimised) before every step, as the paper prescribes: retraining moves the weights and the curvature.
    With `checkpoints` (a folder) each round's retraining is checkpointed in it as `step-N.pt` (see `fit`).
    """
    logs: list[EpochLog] = []
    layers, scope = config.layers, config.scope
    if config.allocate:
        from ..sensitivity.budget import allocated_sparsity  # the analysis prunes with this package: import late

        layers = allocated_sparsity(model, train, config.sparsity, config.layers,
                                    examples=config.sensitivity_examples, seed=config.retrain.seed)
        scope = Scope.LAYER  # every layer has its own sparsity now
    for step in range(1, config.steps + 1):
        score = magnitude
        if config.criterion is Criterion.OBD:
            score = obd_score(model, train, config.hessian, examples=config.hessian_examples, loss_fn=loss_fn)
        prune_(model, _scaled(config.sparsity, step, config.steps),
               layers={k: ramp(v, step, config.steps) for k, v in (layers or {}).items()},
               scope=scope, score=score)
        logs += fit(model, train, config.retrain, test=test, loss_fn=loss_fn,
                    checkpoint=checkpoint_in(checkpoints, f"step-{step}"), desc=f"prune {step}/{config.steps}")
    return logs


def _scaled(sparsity: Mapping[str, float] | float, step: int, steps: int) -> Mapping[str, float] | float:
    if isinstance(sparsity, Mapping):
        return {kind: ramp(s, step, steps) for kind, s in sparsity.items()}
    return ramp(sparsity, step, steps)
