"""Budget allocation: one compression value per layer, least predicted loss within a size (or FLOP) budget.

With the additive model of per-layer losses (Han et al. 2015's sensitivity-driven pruning; the
budget-constrained search of AMC, He et al. 2018, solved here exactly instead of by RL), choosing
values v_l from each layer's measured ones is a multiple-choice knapsack:

    minimise  sum_l loss_l(v_l)   subject to   fixed_cost + sum_l cost(l, v_l) <= budget.

It is solved exactly by dynamic programming over Pareto-optimal partial choices (Nemhauser & Ullmann
1969): after each layer keep only the (cost, loss) pairs no other pair beats on both. The costs are
never rounded, so the answer is optimal and within budget to the last bit; the frontier stays small
(at most the number of distinct cost sums, expected polynomial on random instances: Beier & Vöcking
2004), and accuracy losses measured on N examples lie on a 1/N grid, which bounds it further.

Only measured values are chosen: a layer may stay uncompressed only if its uncompressed value
(sparsity 0) was in the sweep. Fixing the choices to the sweep keeps every prediction a measurement.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np
from torch import nn

from ..errors import ConfigError, ModelError
from ..layers import targets
from .analysis import Sensitivity

Cost = Callable[[str, float], float]  # (layer, value) -> what that choice spends: kept weights, bytes, FLOPs


@dataclass(frozen=True)
class Allocation:
    """The value chosen per layer, its total cost (fixed cost included) and the predicted loss of score."""

    values: dict[str, float]
    cost: float
    loss: float


def allocate(sens: Sensitivity, cost: Cost, budget: float, *, fixed_cost: float = 0.0) -> Allocation:
    """The values (one per layer of `sens`, from its measured ones) of least summed loss within `budget`.

    `fixed_cost` is what the layers outside `sens` spend (biases, unanalysed layers). Of equally good
    choices the cheapest wins. Raises ConfigError when even the cheapest values exceed the budget.
    """
    layers = list(sens.curves)
    options = [_options(sens, layer, cost) for layer in layers]
    floor = [float(c.min()) for _, c, _ in options]
    least = reduce(operator.add, floor, float(fixed_cost))  # added in the DP's order: same rounding
    if not least <= budget:
        cheapest = ", ".join(f"{layer}={vals[int(np.argmin(c))]:g}" for layer, (vals, c, _) in zip(layers, options))
        raise ConfigError(f"budget {budget:.10g} is infeasible: the least achievable cost is {least:.10g} "
                          f"(fixed cost {fixed_cost:.10g}; {sens.kind} {cheapest})")
    rest = np.cumsum([0.0, *floor[::-1]])[::-1][1:]  # rest[i]: the least the layers after i can cost
    slack = 1e-9 * max(1.0, abs(budget))  # pruning only: rounding must never drop a feasible state
    front_cost, front_loss = np.array([float(fixed_cost)]), np.array([0.0])
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: (parent state, option index) of each state
    for (_, c, l), after in zip(options, rest):
        total = (front_cost[:, None] + c[None, :]).ravel()  # (states * options,)
        loss = (front_loss[:, None] + l[None, :]).ravel()
        parent, option = np.divmod(np.arange(total.size), c.size)
        reach = np.flatnonzero(total + after <= budget + slack)
        keep = reach[_pareto(total[reach], loss[reach])]
        front_cost, front_loss = total[keep], loss[keep]
        steps.append((parent[keep], option[keep]))
    # the frontier is sorted by cost with strictly falling loss: the best is the last one within budget
    state = int(np.flatnonzero(front_cost <= budget)[-1])
    cost_total, loss_total = float(front_cost[state]), float(front_loss[state])
    chosen: dict[str, float] = {}
    for layer, (vals, _, _), (parent, option) in reversed(list(zip(layers, options, steps))):
        chosen[layer] = vals[int(option[state])]
        state = int(parent[state])
    return Allocation({layer: chosen[layer] for layer in layers}, cost_total, loss_total)


def kept_weights(model: nn.Module) -> Cost:
    """cost(layer, sparsity): the weights magnitude pruning keeps, round((1 - s) * numel) per weight tensor.

    The rounding is `prune_`'s own, so a budget of kept weights holds exactly after pruning.
    """
    sizes: dict[str, list[int]] = {}
    for t in targets(model):
        sizes.setdefault(t.name, []).append(t.weight.numel())

    def cost(layer: str, sparsity: float) -> float:
        if layer not in sizes:
            raise ModelError(f"no compressible layer {layer!r} (they are: {', '.join(sizes)})")
        return float(sum(round((1 - sparsity) * n) for n in sizes[layer]))

    return cost


def _options(sens: Sensitivity, layer: str, cost: Cost) -> tuple[list[float], np.ndarray, np.ndarray]:
    """A layer's measured values with their costs and losses, both checked to be finite numbers."""
    values = list(sens.curves[layer])
    if not values:
        raise ConfigError(f"layer {layer!r} has no measured {sens.kind} values")
    costs, losses = [], []
    for v in values:
        c, l = float(cost(layer, v)), sens.loss(layer, v)
        if not (math.isfinite(c) and math.isfinite(l)):
            raise ConfigError(f"layer {layer!r} at {sens.kind} {v:g} has cost {c} and loss {l}; both must be finite")
        costs.append(c)
        losses.append(l)
    return values, np.array(costs), np.array(losses)


def _pareto(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the states no other beats: sorted by cost, each with a loss below every cheaper one's."""
    order = np.lexsort((loss, cost))
    ordered = loss[order]
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], ordered[:-1]]))
    return order[ordered < best_before]
