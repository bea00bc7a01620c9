"""The Hessian of each layer's output error: H = X^T X over the inputs the layer sees on calibration batches.

A Linear sees its last dimension; a Conv sees its unfolded patches (one row per output position), and
a grouped or depthwise Conv one H per group, since a group's weights only ever meet that group's inputs.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.feed import Data, call, take, to_device
from ..layers import device_of, eval_mode

HESSIAN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as (groups, rows, features): what each group's weight rows multiply."""
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x, kernel = x.unsqueeze(2), (1, *module.kernel_size)
        padding, stride, dilation = (0, *module.padding), (1, *module.stride), (1, *module.dilation)
    else:
        kernel, padding, stride, dilation = module.kernel_size, module.padding, module.stride, module.dilation
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C*k, L)
    n, features, positions = patches.shape
    groups = module.groups
    return patches.reshape(n, groups, features // groups, positions).permute(1, 0, 3, 2).reshape(groups, -1,
                                                                                               features // groups)


def supported(module: nn.Module) -> str | None:
    """Why the second-order path cannot take `module` (None when it can)."""
    if not isinstance(module, HESSIAN_LAYERS):
        return f"{type(module).__name__} has no input Hessian here"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and (isinstance(module.padding, str)
                                                       or module.padding_mode != "zeros"):
        return "convolution with string or non-zero padding"
    return None


@torch.no_grad()
def hessians(model: nn.Module, modules: dict[str, nn.Module], calibration: Data, examples: int
             ) -> dict[str, torch.Tensor]:
    """H (groups, d, d) of each named module, averaged over its input rows on `examples` calibration examples."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(modules, 0)

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            rows = layer_rows(module, args[0].detach().float())
            gram = torch.bmm(rows.transpose(1, 2), rows).double()
            sums[name] = gram if name not in sums else sums[name] + gram
            counts[name] += rows.shape[1]
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    device = device_of(model)
    try:
        with eval_mode(model):
            for batch in take(calibration, examples):
                call(model, to_device(batch, device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).float() for name in sums}


def names_in_order(model: nn.Module, wanted: Iterable[str]) -> list[str]:
    """`wanted` module names in the order the model's modules are registered (a forward order in most models)."""
    chosen = set(wanted)
    return [name for name, _ in model.named_modules() if name in chosen]
