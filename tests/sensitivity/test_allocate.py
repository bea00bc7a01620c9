import itertools
import random

import pytest

from modelzip.errors import ConfigError, ModelError
from modelzip.models import build
from modelzip.sensitivity import Sensitivity, allocate, kept_weights


def brute_force(sens: Sensitivity, cost, budget: float, fixed_cost: float) -> float | None:
    """The least loss over every combination within budget (None if there is none)."""
    layers = list(sens.curves)
    best = None
    for combo in itertools.product(*(sens.curves[layer] for layer in layers)):
        total = fixed_cost
        for layer, v in zip(layers, combo):
            total += cost(layer, v)
        if total <= budget:
            loss = sum(sens.loss(layer, v) for layer, v in zip(layers, combo))
            best = loss if best is None else min(best, loss)
    return best


def test_hand_worked_allocation():
    """Costs 100/50/10 for sparsity 0/.5/.9 on both layers. a is sensitive (loss .3 at .9), b barely.
    Budget 70: the only fits are (.5, .9): 60, loss .05 + .01 and (.9, .5): 60, loss .3 + 0 and
    (.9, .9): 20 -> (.5, .9) wins. Budget 110 adds (0, .9) at loss .01 and (.9, 0) at .3."""
    sens = Sensitivity("sparsity", 1.0, {"a": {0.0: 1.0, 0.5: 0.95, 0.9: 0.7}, "b": {0.0: 1.0, 0.5: 1.0, 0.9: 0.99}})
    cost = lambda layer, s: {0.0: 100.0, 0.5: 50.0, 0.9: 10.0}[s]  # noqa: E731
    tight = allocate(sens, cost, 70.0)
    assert tight.values == {"a": 0.5, "b": 0.9} and tight.cost == 60.0 and tight.loss == pytest.approx(0.06)
    loose = allocate(sens, cost, 110.0)
    assert loose.values == {"a": 0.0, "b": 0.9} and loose.cost == 110.0 and loose.loss == pytest.approx(0.01)
    # room for everything (250 of 260 with the fixed 50): b still gets 0.5, as good as 0 and cheaper
    roomy = allocate(sens, cost, 260.0, fixed_cost=50.0)
    assert roomy.values == {"a": 0.0, "b": 0.5} and roomy.cost == 200.0 and roomy.loss == 0.0


def test_matches_brute_force_on_random_instances():
    rng = random.Random(0)
    for _ in range(30):
        layers = [f"l{i}" for i in range(rng.randint(3, 4))]
        values = sorted(rng.sample([0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95], rng.randint(3, 5)))
        curves = {layer: {v: rng.choice([1.0, rng.random()]) for v in values} for layer in layers}
        sens = Sensitivity("sparsity", 1.0, curves)
        table = {(layer, v): rng.choice([float(rng.randint(1, 20)), rng.uniform(0.1, 20.0)])
                 for layer in layers for v in values}
        cost = lambda layer, v: table[(layer, v)]  # noqa: E731
        fixed = rng.choice([0.0, 3.3])
        low = fixed + sum(min(table[(layer, v)] for v in values) for layer in layers)
        high = fixed + sum(max(table[(layer, v)] for v in values) for layer in layers)
        budget = rng.uniform(low, high)
        result = allocate(sens, cost, budget, fixed_cost=fixed)
        spent = fixed
        for layer in layers:
            spent += cost(layer, result.values[layer])
        assert result.cost == spent <= budget
        assert result.loss == pytest.approx(sum(sens.loss(layer, v) for layer, v in result.values.items()))
        assert result.loss == pytest.approx(brute_force(sens, cost, budget, fixed), abs=1e-12)


def test_a_budget_met_exactly_is_feasible_and_infeasible_ones_name_the_minimum():
    sens = Sensitivity("sparsity", 1.0, {"a": {0.0: 1.0, 0.5: 0.9}, "b": {0.0: 1.0, 0.5: 0.8}})
    cost = lambda layer, s: (0.5 if s == 0.0 else 0.2 if layer == "a" else 0.3)  # noqa: E731
    least = 0.1 + 0.2 + 0.3  # floating point: 0.6000000000000001
    assert allocate(sens, cost, least, fixed_cost=0.1).values == {"a": 0.5, "b": 0.5}
    with pytest.raises(ConfigError, match=r"least achievable cost is 0.6 .*a=0.5, b=0.5"):
        allocate(sens, cost, 0.6, fixed_cost=0.1)
    with pytest.raises(ConfigError, match="must be finite"):
        allocate(sens, lambda layer, s: float("nan"), 1.0)


def test_kept_weights_of_lenet():
    model = build("lenet-300-100", (1, 8, 8))  # fc1 64x300, fc2 300x100, fc3 100x10
    cost = kept_weights(model)
    assert cost("fc1", 0.0) == 19200 and cost("fc1", 0.9) == 1920 and cost("fc3", 0.95) == 50
    with pytest.raises(ModelError, match="'fc4'"):
        cost("fc4", 0.5)
