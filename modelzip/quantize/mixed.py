"""Mixed precision: a uniform bit width per layer, picked from measured sensitivities within an exact budget.

Layers differ in how many bits they need: the first and last ones and the small ones are fragile, the
big middle ones (where most of the bits are) tolerate few. HAQ (Wang et al. 2019, "Hardware-Aware
Automated Quantization with Mixed Precision") searches the widths with reinforcement learning, HAWQ
(Dong et al. 2019, "Hessian AWare Quantization") ranks the layers by their Hessian spectrum. Here each
layer is quantized alone at each width and scored (`sensitivity`, kind "uniform-bits"), and `allocate`
solves the multiple-choice knapsack exactly: the widths of least summed loss whose weight bits fit the
budget. No agent to train, no second derivatives, and every prediction is a measurement.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import nn

from ..errors import ConfigError
from ..layers import literal_pattern, targets
from .uniform import QuantSpec

if TYPE_CHECKING:
    from ..sensitivity import Allocation, Score

CHOICES = (2, 3, 4, 5, 6, 8)  # 7 bits would save only 1/8 over 8


def mixed_precision(model: nn.Module, score: Score, budget_bits: float, *, choices: Sequence[int] = CHOICES,
                    layers: Sequence[str] | None = None) -> Allocation:
    """The bits per layer (of `choices`) of least predicted loss of `score`, `budget_bits` per weight on average.

    `layers` defaults to every Linear and Conv2d. A layer at b bits costs b * its weight count, and the
    budget is budget_bits * the weight count of all `layers` (scales, biases and other layers are not
    counted). Each candidate is the "uniform-bits" applier on a copy: `model` is left as it was.
    """
    from ..sensitivity import APPLIERS, allocate, sensitivity  # sensitivity quantizes with this package: import late

    if not choices or any(b not in range(2, 9) for b in choices):
        raise ConfigError(f"bit width choices must be whole numbers in 2..8, got {list(choices)}")
    if not budget_bits >= min(choices):
        raise ConfigError(f"a budget of {budget_bits} bits per weight is below the fewest bits on offer, "
                          f"{min(choices)}")
    if layers is None:
        layers = [t.name for t in targets(model) if isinstance(t.module, (nn.Linear, nn.Conv2d))]
    sens = sensitivity(model, score, layers, choices, APPLIERS.get("uniform-bits"), kind="uniform-bits")
    counts = {name: sum(t.weight.numel() for t in targets(model.get_submodule(name))) for name in layers}
    return allocate(sens, lambda layer, bits: bits * counts[layer], budget_bits * sum(counts.values()))


def bit_specs(chosen: Allocation | Mapping[str, float], *, symmetric: bool = True,
              per_channel: bool = True) -> dict[str, QuantSpec]:
    """A QuantSpec per layer at its chosen bits (axis 0: output channels), keyed by a pattern matching exactly
    that layer, for the `layers` of `prepare_qat` and `quantize_weights_`."""
    values = chosen if isinstance(chosen, Mapping) else chosen.values
    return {literal_pattern(name): QuantSpec(int(b) if float(b).is_integer() else b, symmetric, per_channel)
            for name, b in values.items()}
