"""Omitted classes (Hinton et al. 2015, section 3): move the output biases of chosen classes.

A student distilled on a transfer set without some class learns it from the soft targets alone, but
its bias for that class ends too low (the class is never the right answer in the transfer set).
Adding an offset to that class's output bias — or lowering the biases of the only classes the
transfer set held — fixes most errors. The offset is given, or searched on held-out data.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError, ModelError
from ..train import predict

# The paper's offsets: +3.5 for an omitted 3, -7.6 for the 7s and 8s of a 7-and-8 transfer set.
DEFAULT_OFFSETS = tuple(x / 4 for x in range(-48, 49))  # -12 .. +12 in steps of 0.25


def output_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The layer that produces the logits: `name`, or the last nn.Linear in module order."""
    if name is not None:
        layer = dict(model.named_modules()).get(name)
        if not isinstance(layer, nn.Linear):
            raise ModelError(f"output layer {name!r} is {type(layer).__name__ if layer else 'missing'}, "
                             "not an nn.Linear")
        return name, layer
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear output layer to adjust; name it")
    return linears[-1]


def adjust_bias_(model: nn.Module, classes: Sequence[int] | torch.Tensor, offset: float,
                 layer: str | None = None) -> nn.Module:
    """Add `offset` to the output bias of each class in `classes`, in place; other classes keep theirs."""
    name, linear = output_layer(model, layer)
    if linear.bias is None:
        raise ModelError(f"output layer {name!r} has no bias to adjust")
    index = class_index(classes, linear.out_features)
    with torch.no_grad():
        linear.bias[index] += offset
    return model


def search_bias_offset(model: nn.Module, classes: Sequence[int] | torch.Tensor, held_out: TensorDataset,
                       offsets: Sequence[float] = DEFAULT_OFFSETS) -> tuple[float, float]:
    """The offset for `classes` that maximises accuracy on `held_out`, and that accuracy.

    A bias offset adds the same amount to those classes' logits for every input, so one forward pass
    scores every candidate. Ties go to the offset closest to zero (the least change).
    """
    logits = predict(model, held_out)  # (N, classes)
    labels = held_out.tensors[1]
    shift = torch.zeros(logits.shape[1])
    shift[class_index(classes, logits.shape[1])] = 1.0
    accuracy = {o: ((logits + o * shift).argmax(1) == labels).float().mean().item() for o in offsets}
    best = max(offsets, key=lambda o: accuracy[o] - 1e-9 * abs(o))
    return float(best), accuracy[best]


def class_index(classes: Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """`classes` as a long tensor, checked: non-empty, distinct, within 0..num_classes - 1."""
    index = torch.as_tensor(classes, dtype=torch.long).flatten().cpu()
    if (index.numel() == 0 or index.unique().numel() != index.numel() or index.min() < 0
            or index.max() >= num_classes):
        raise ConfigError(f"classes {index.tolist()} must be non-empty, distinct and within 0..{num_classes - 1}")
    return index
