"""What "better" means for a compressed model: a metric is any `metric(model) -> float`, higher is better.

The user's own metric wins. Without one, a labelled test set gives top-1 accuracy, and unlabelled
batches give fidelity to the original model: the mean cosine between the two models' outputs per
example, which needs no labels and reads the same for classifiers and encoders (1.0: the same outputs).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data.feed import Data, call, output_tensor, take, to_device
from .errors import ConfigError
from .layers import device_of, eval_mode
from .train import evaluate

Metric = Callable[[nn.Module], float]


@dataclass(frozen=True)
class NamedMetric:
    """A metric and the name the report gives it."""

    name: str
    fn: Metric

    def __call__(self, model: nn.Module) -> float:
        value = self.fn(model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"metric {self.name!r} returned {type(value).__name__}, not a number") from None
        if value != value:
            raise ConfigError(f"metric {self.name!r} returned NaN")
        return value


def accuracy(test: Data) -> NamedMetric:
    """Top-1 accuracy on a labelled test set."""
    return NamedMetric("accuracy", lambda model: evaluate(model, test))


@torch.no_grad()
def outputs(model: nn.Module, data: Data, examples: int) -> list[torch.Tensor]:
    """The model's main output tensor for the first `examples` examples of `data`, batch by batch, on the CPU."""
    device = device_of(model)
    with eval_mode(model):
        return [output_tensor(call(model, to_device(b, device))).float().cpu() for b in take(data, examples)]


def fidelity(reference: nn.Module, data: Data, examples: int = 512) -> NamedMetric:
    """Mean cosine similarity, per example, between a model's outputs and `reference`'s on `data`.

    The reference outputs are computed once, here, so `reference` may change afterwards.
    """
    expected = outputs(reference, data, examples)
    if not expected:
        raise ConfigError("fidelity needs at least one batch of inputs")

    def cosine(model: nn.Module) -> float:
        got = outputs(model, data, examples)
        sims = [F.cosine_similarity(g.flatten(1), e.flatten(1), dim=1, eps=1e-12) for g, e in zip(got, expected)]
        return torch.cat(sims).mean().item()
    return NamedMetric("output cosine vs original", cosine)


def named(metric: Metric, name: str | None) -> NamedMetric:
    """A user's metric with its name: the one given, else the function's own."""
    if isinstance(metric, NamedMetric) and name is None:
        return metric
    return NamedMetric(name or getattr(metric, "__name__", "metric"), metric)
