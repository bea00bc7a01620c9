"""The diagonal of the Hessian of a loss, three ways: exact, Hutchinson's estimate, the empirical Fisher.

Second-order pruning (Optimal Brain Damage) needs h_kk = d^2 L / dw_k^2 for every weight. The full Hessian
is out of reach (n^2 entries), and so, past a few thousand weights, is even its exact diagonal:

- `exact_diagonal`: one Hessian-vector product per weight (double backward). Exact; n backward passes,
  so only for small tensors (a test, a tiny layer).
- `hutchinson_diagonal`: diag(H) = E[z * (H z)] for Rademacher z (Bekas, Kokiopoulou & Saad 2007; used
  by AdaHessian, Yao et al. 2021). Unbiased, `samples` products whatever n is; the variance of one
  probe at k is sum_{j != k} H_kj^2, so it is exact for a diagonal H and noisy where weights interact.
- `fisher_diagonal`: the empirical Fisher mean_i (dl_i/dw_k)^2 over per-example gradients with the
  true labels. One vmapped backward per batch, never negative. Near a minimum of a log-likelihood loss
  it approximates the Gauss-Newton matrix, hence the Hessian (the Levenberg-Marquardt approximation
  OBD itself used); away from one, or for other losses, it is only a curvature proxy (Kunstner et al. 2019).

Exact and Hutchinson take any closure over leaf tensors; the Fisher needs examples one by one, so it
takes a model, the tensors to substitute into it by name (torch.func.functional_call), and batches.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError, DataError
from ..train import LossFn, cross_entropy


def exact_diagonal(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], max_elements: int = 4096, *,
                   names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """diag(H) of `loss_fn()` w.r.t. each of `params` (leaves with requires_grad), exactly.

    Row k of the Hessian is the gradient of g_k = dL/dw_k; its k-th entry is h_kk. That costs one
    backward pass per weight, so a tensor of more than `max_elements` is refused (name it in `names`).
    """
    for i, p in enumerate(params):
        if p.numel() > max_elements:
            label = names[i] if names is not None else f"parameter {i}"
            raise ConfigError(f"{label} has {p.numel()} weights, more than max_elements={max_elements} for the "
                              "exact Hessian diagonal (one backward pass each); use hutchinson or fisher")
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True, materialize_grads=True)
    diagonals = []
    for p, g in zip(params, grads):
        flat = g.flatten()
        diag = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        if flat.requires_grad:  # else L is linear in p: zero curvature
            for k in range(flat.numel()):
                row = torch.autograd.grad(flat[k], p, retain_graph=True, materialize_grads=True)[0]
                diag[k] = row.flatten()[k]
        diagonals.append(diag.view_as(p))
    return diagonals


def hutchinson_diagonal(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], samples: int = 16,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Hutchinson's estimate of diag(H): the mean of z * (H z) over `samples` Rademacher (+-1) probes z.

    E[z_k (Hz)_k] = sum_j H_kj E[z_k z_j] = H_kk, as E[z_k z_j] = [k == j]. Each probe is one
    Hessian-vector product (a double backward), so the cost does not grow with the number of weights.
    """
    if samples < 1:
        raise ConfigError(f"hutchinson needs samples >= 1, got {samples}")
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True, materialize_grads=True)
    curved = [i for i, g in enumerate(grads) if g.requires_grad]  # the others: L linear in them, diagonal 0
    sums = [torch.zeros_like(p) for p in params]
    for _ in range(samples if curved else 0):
        probes = [_rademacher(params[i], generator) for i in curved]
        products = torch.autograd.grad([grads[i] for i in curved], [params[i] for i in curved], probes,
                                       retain_graph=True, materialize_grads=True)
        for i, z, hz in zip(curved, probes, products):
            sums[i] += z * hz
    return [s.detach() / samples for s in sums]


def fisher_diagonal(model: nn.Module, params: Mapping[str, torch.Tensor], batches: Iterable[Sequence[torch.Tensor]],
                    loss_fn: LossFn = cross_entropy) -> dict[str, torch.Tensor]:
    """The empirical Fisher diagonal: mean over examples of the squared per-example gradient, F_kk = mean_i g_ik^2.

    `params` maps functional_call names ("fc1.weight") to the values to differentiate at; the model
    supplies everything else. `loss_fn(model, batch)` is a batch-mean loss, called here on batches of
    one example each inside torch.func.vmap (a loss that draws random numbers draws them per example).
    Call it in eval mode: batch-norm with batch statistics would couple the examples of a batch.
    """
    values = {name: value.detach() for name, value in params.items()}

    def example_loss(theta: dict[str, torch.Tensor], example: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return loss_fn(Substituted(model, theta), [t.unsqueeze(0) for t in example])

    per_example = vmap(grad(example_loss), in_dims=(None, 0), randomness="different")
    sums = {name: torch.zeros_like(value) for name, value in values.items()}
    seen = 0
    with torch.no_grad():  # torch.func.grad still differentiates; this only stops graphs through the model's own
        for batch in batches:
            grads = per_example(values, tuple(batch))  # name -> (batch, *shape)
            for name, g in grads.items():
                sums[name] += g.square().sum(0)
            seen += len(batch[0])
    if seen == 0:
        raise DataError("the empirical Fisher needs at least one example; the batches were empty")
    return {name: s / seen for name, s in sums.items()}


class Substituted(nn.Module):
    """`model` run with some of its tensors replaced by `values` (torch.func.functional_call, names as in
    named_parameters/named_buffers), so a loss written for modules differentiates w.r.t. those values."""

    def __init__(self, model: nn.Module, values: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a submodule: this wrapper owns nothing
        self.values = dict(values)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return functional_call(self.inner, self.values, args)


def _rademacher(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    signs = torch.randint(0, 2, like.shape, generator=generator, device=device).to(like.device, like.dtype)
    return 2 * signs - 1
