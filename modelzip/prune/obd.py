"""Optimal Brain Damage (LeCun, Denker & Solla 1989): prune the weights whose removal costs the least loss.

A second-order Taylor expansion of the loss around trained weights w, dropping the gradient term
(w is at a minimum) and the off-diagonal Hessian terms, predicts that zeroing w_k raises the loss by
its saliency

    s_k = 1/2 * h_kk * w_k^2,    h_kk = d^2 L / dw_k^2,

so a large weight on an input that never varies (h_kk = 0) is free to remove, where magnitude pruning
would keep it. `obd_score` plugs s_k into `prune_` in place of |w|.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from ..data import batches, sample
from ..errors import ConfigError, DataError, ModelError
from ..layers import Target, targets
from ..train import LossFn, cross_entropy
from .hessian import Substituted, exact_diagonal, fisher_diagonal, hutchinson_diagonal
from .magnitude import Score


class HessianMethod(str, Enum):
    EXACT = "exact"  # one backward pass per weight: tiny models and tests only
    HUTCHINSON = "hutchinson"  # unbiased, `samples` Hessian-vector products per batch
    FISHER = "fisher"  # empirical Fisher: squared per-example gradients, cheap and never negative


def hessian_diagonal(model: nn.Module, data: TensorDataset, method: HessianMethod | str = HessianMethod.FISHER, *,
                     examples: int = 2048, batch_size: int = 256, samples: int = 16, seed: int = 0,
                     loss_fn: LossFn = cross_entropy) -> dict[Target, torch.Tensor]:
    """diag(H) of the mean loss over `examples` of `data` (a seeded random subset) for every compressible weight.

    The derivatives are taken w.r.t. the weight each module actually uses (after a mask or shared
    centroids), in eval mode: batch-norm then uses its running statistics, so each example's loss is
    its own (per-example gradients are defined) and no statistics are updated, and dropout is off, so the
    curvature is that of the deterministic network being pruned rather than of a random sub-network.
    Negative estimates (exact or Hutchinson away from a minimum, Hutchinson noise) are clamped to 0: OBD
    assumes a positive semi-definite Hessian at a minimum, and a negative h_kk says that assumption fails
    there, not that removing w_k lowers the loss. The model keeps its mode, and no .grad is written.
    """
    method = HessianMethod(method)
    if examples < 1 or batch_size < 1 or samples < 1:
        raise ConfigError(f"OBD needs examples, batch_size and samples >= 1, got {examples}, {batch_size}, {samples}")
    if len(data) == 0:
        raise DataError("OBD needs data to estimate the Hessian; the dataset is empty")
    found = targets(model)
    device = found[0].weight.device
    subset = sample(data, examples, seed=seed)
    loader = ([t.to(device) for t in batch] for batch in batches(subset, batch_size, shuffle=False))
    was_training = model.training
    model.eval()
    try:
        with _probed(found) as keys:
            zeros = {keys[t]: torch.zeros_like(t.weight.detach()) for t in found}
            if method is HessianMethod.FISHER:
                diagonal = fisher_diagonal(model, zeros, loader, loss_fn)
            else:
                names = [f"layer {t.name}.{t.param}" for t in found]
                diagonal = _averaged(model, zeros, names, loader, method, samples, seed, loss_fn, len(subset))
    finally:
        model.train(was_training)
    return {t: diagonal[keys[t]].clamp_min(0) for t in found}


def obd_saliency(model: nn.Module, data: TensorDataset, method: HessianMethod | str = HessianMethod.FISHER, *,
                 examples: int = 2048, batch_size: int = 256, samples: int = 16, seed: int = 0,
                 loss_fn: LossFn = cross_entropy) -> dict[Target, torch.Tensor]:
    """OBD saliency s_k = 1/2 h_kk w_k^2 of every compressible weight at its current (masked) value.

    A weight pruned already is 0 and so has saliency 0. Settings as in `hessian_diagonal`.
    """
    diagonal = hessian_diagonal(model, data, method, examples=examples, batch_size=batch_size, samples=samples,
                                seed=seed, loss_fn=loss_fn)
    return {t: 0.5 * h * t.weight.detach().square() for t, h in diagonal.items()}


def obd_score(model: nn.Module, data: TensorDataset, method: HessianMethod | str = HessianMethod.FISHER, *,
              examples: int = 2048, batch_size: int = 256, samples: int = 16, seed: int = 0,
              loss_fn: LossFn = cross_entropy) -> Score:
    """A `prune_(model, ..., score=...)` criterion: the OBD saliencies of `model`, computed now, by weight."""
    saliency = {(t.name, t.param): s for t, s in obd_saliency(
        model, data, method, examples=examples, batch_size=batch_size, samples=samples, seed=seed,
        loss_fn=loss_fn).items()}

    def score(target: Target) -> torch.Tensor:
        if (target.name, target.param) not in saliency:
            raise ModelError(f"no OBD saliency for {target.name}.{target.param}: the score was computed for another "
                             "model; compute obd_score on the model being pruned")
        return saliency[target.name, target.param]
    return score


class _Probe(nn.Module):
    """Parametrization adding a zero `delta` to a weight. Derivatives w.r.t. delta at 0 are those w.r.t. the
    weight the module uses (after its mask or shared centroids), which functional_call cannot substitute
    directly: a parametrized weight is only settable through a right_inverse that masks do not have."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("delta", torch.zeros_like(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta


@contextmanager
def _probed(found: list[Target]) -> Iterator[dict[Target, str]]:
    """Attach a `_Probe` to every target for the duration; yields the functional_call name of each delta."""
    keys: dict[Target, str] = {}
    try:
        for t in found:
            parametrize.register_parametrization(t.module, t.param, _Probe(t.weight.detach()))
            chain = t.module.parametrizations[t.param]
            keys[t] = f"{t.name + '.' if t.name else ''}parametrizations.{t.param}.{len(chain) - 1}.delta"
        yield keys
    finally:
        for t in reversed(list(keys)):
            chain = t.module.parametrizations[t.param]
            if len(chain) == 1:  # the probe was the only one: give back the original parameter object
                parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=False)
            else:
                del chain[-1]


def _averaged(model: nn.Module, zeros: dict[str, torch.Tensor], names: list[str], loader: Iterator[list[torch.Tensor]],
              method: HessianMethod, samples: int, seed: int, loss_fn: LossFn, total: int) -> dict[str, torch.Tensor]:
    """Exact or Hutchinson diagonal of the mean loss: the batch Hessians weighted by batch size."""
    generator = torch.Generator().manual_seed(seed)
    sums = {name: torch.zeros_like(z) for name, z in zeros.items()}
    for batch in loader:
        leaves = {name: z.clone().requires_grad_() for name, z in zeros.items()}
        bound = Substituted(model, leaves)

        def loss() -> torch.Tensor:
            return loss_fn(bound, batch)
        if method is HessianMethod.EXACT:
            diagonal = exact_diagonal(loss, list(leaves.values()), names=names)
        else:
            diagonal = hutchinson_diagonal(loss, list(leaves.values()), samples, generator)
        for name, h in zip(leaves, diagonal):
            sums[name] += h * (len(batch[0]) / total)
    return sums
