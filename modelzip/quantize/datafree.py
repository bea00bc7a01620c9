"""Data-free calibration: inputs distilled from a model's batch-norm statistics, and activation ranges.

A trained network remembers its training data in the running statistics of its batch norms. ZeroQ
(Cai et al., CVPR 2020) optimises Gaussian noise x, the model frozen, until the batch statistics of
every BatchNorm layer's input match what the layer recorded:

    L_BN(x) = sum_l ||mu_l(x) - running_mean_l||_2 + ||sigma_l^2(x) - running_var_l||_2

with mu_l, sigma_l^2 the per-channel mean and (biased, as BN normalises with) variance over the batch
and every other non-channel axis. The Knowledge Within (Haroush et al., CVPR 2020) adds the
cross-entropy of the model's output toward random target labels, so each input also looks like one
class to the model; a small image prior (total variation + L2, as in DeepInversion, Yin et al. 2020)
keeps the inputs smooth and bounded. The result stands in for real data where only the model ships:
`calibrate_activations` finds int8 activation ranges on it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from ..layers import device_of, eval_mode
from .uniform import Observer, QuantSpec, Range
from .uniform import observer as range_fn

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CALIBRATED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class Labels(str, Enum):
    RANDOM = "random"  # a uniformly drawn class per input, fixed for the run (The Knowledge Within)


def synthesize(model: nn.Module, input_shape: tuple[int, ...], count: int, *, steps: int = 500, lr: float = 0.1,
               batch_size: int = 64, labels: Labels | str | None = None, seed: int = 0,
               prior_weight: float = 1e-3) -> torch.Tensor:
    """`count` inputs of `input_shape` distilled from the model's batch norms: (count, *input_shape).

    Each batch starts as N(0, 1) noise and takes `steps` Adam steps on L_BN + [CE toward random labels]
    + prior_weight * (TV + L2) (module docstring), the learning rate `lr` cosine-annealed to 0 so the
    inputs settle instead of oscillating around the optimum. The model runs in eval mode with its
    parameters frozen, so running statistics and weights never change; its modes, requires_grad flags
    and hooks are restored even if the forward pass fails. Deterministic given `seed` (noise and
    labels come from a generator seeded with it).
    """
    if count < 1 or steps < 0 or batch_size < 1 or not lr > 0 or not prior_weight >= 0:
        raise ConfigError(f"synthesize needs count >= 1, steps >= 0, batch_size >= 1, lr > 0 and prior_weight >= 0, "
                          f"got count={count}, steps={steps}, batch_size={batch_size}, lr={lr}, "
                          f"prior_weight={prior_weight}")
    if not input_shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in input_shape):
        raise ConfigError(f"input_shape must be positive ints, e.g. (1, 28, 28), got {input_shape!r}")
    label_term = _labels(labels)
    norms = _batch_norms(model)
    device = device_of(model)
    generator = torch.Generator().manual_seed(seed)
    out = []
    with _frozen(model):
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            x = torch.randn((n, *input_shape), generator=generator).to(device).requires_grad_()
            target = None
            optimizer = torch.optim.Adam([x], lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
            for _ in range(steps):
                loss, logits = _statistics_loss(model, norms, x)
                if label_term:
                    if target is None:
                        target = _draw_labels(logits, generator).to(device)
                    loss = loss + F.cross_entropy(logits, target)
                loss = loss + prior_weight * _prior(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            out.append(x.detach())
    return torch.cat(out)


def statistics_loss(model: nn.Module, inputs: torch.Tensor) -> float:
    """L_BN of `inputs` taken as one batch (module docstring): 0 when every batch norm sees its running stats."""
    norms = _batch_norms(model)
    with _frozen(model), torch.no_grad():
        return _statistics_loss(model, norms, inputs)[0].item()


def calibrate_activations(model: nn.Module, inputs: torch.Tensor, observer: Observer | str = Observer.MINMAX,
                          spec: QuantSpec = QuantSpec(bits=8, symmetric=False), *,
                          batch_size: int = 256) -> dict[str, Range]:
    """The range (lo, hi) of the input of every Linear/Conv layer on `inputs`, by module name.

    `inputs` (N, ...) run through the model in eval mode, `batch_size` at a time; each layer's input
    activations over all N are then reduced by the observer of uniform.py (minmax, percentile, mse), so
    percentile and mse see the whole calibration set, not per-batch ranges. Ranges are per tensor, as
    int8 kernels take one scale per activation tensor; `qparams(x, spec, lo=lo, hi=hi)` turns them
    into a scale and zero point. The default spec is asymmetric: activations after ReLU are >= 0.
    """
    observe = range_fn(observer)
    if spec.per_channel:
        raise ConfigError("activation ranges are per tensor (one scale per activation tensor); give per_channel=False")
    if batch_size < 1 or inputs.dim() < 1 or len(inputs) < 1:
        raise ConfigError(f"calibration needs batch_size >= 1 and at least one input, got batch_size={batch_size} "
                          f"and inputs of shape {tuple(inputs.shape)}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, CALIBRATED)]
    if not layers:
        raise ModelError(f"{type(model).__name__} has no Linear or Conv layer whose input activations to calibrate")
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}

    def recorder(name: str):
        return lambda module, args: seen[name].append(args[0].detach().cpu())

    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in layers]
    device = device_of(model)
    try:
        with _frozen(model), torch.no_grad():
            for batch in inputs.split(batch_size):
                model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: observe(torch.cat(xs), spec) for name, xs in seen.items()}


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    norms = [m for m in model.modules() if isinstance(m, NORMS) and m.running_mean is not None]
    if not norms:
        raise ModelError(f"{type(model).__name__} has no batch norm with running statistics; data-free synthesis "
                         "needs batch norms (their running mean and variance are what the inputs are fitted to); "
                         "for a LayerNorm transformer, calibrate on a few hundred unlabelled inputs of your own "
                         "(second_order), or use post-training weight-only codes that need none (int8)")
    return norms


def _labels(labels: Labels | str | None) -> bool:
    if labels is None:
        return False
    try:
        return Labels(labels) is Labels.RANDOM
    except ValueError:
        raise ConfigError(f"labels must be None or 'random', got {labels!r}") from None


def _draw_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if logits.dim() != 2:
        raise ModelError(f"random target labels need (batch, classes) logits, got shape {tuple(logits.shape)}")
    return torch.randint(logits.shape[1], (len(logits),), generator=generator)


def _statistics_loss(model: nn.Module, norms: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_BN, logits) of one forward pass of `x`, the batch statistics taken by pre-hooks on the norms."""
    terms: list[torch.Tensor] = []

    def hook(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        h = args[0]  # (N, C, *spatial)
        dims = [d for d in range(h.dim()) if d != 1]
        mean, var = h.mean(dims), h.var(dims, unbiased=False)  # (C,)
        terms.append(torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var))

    handles = [bn.register_forward_pre_hook(hook) for bn in norms]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not terms:
        raise ModelError(f"no batch norm of {type(model).__name__} ran in the forward pass; nothing to match")
    return torch.stack(terms).sum(), logits


def _prior(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbours along each axis after the channel one (TV), plus mean x^2 (L2)."""
    tv = sum((x.diff(dim=d).square().mean() for d in range(2, x.dim()) if x.shape[d] > 1), x.new_zeros(()))
    return tv + x.square().mean()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode with no parameter requiring grad; every module's mode and flag restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
