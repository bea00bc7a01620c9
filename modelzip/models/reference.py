"""The reference networks of the papers modelzip reproduces.

Layers carry the papers' names (fc1, conv1, ...) so recipes and reports can address them.
Every builder takes the data's `input_shape` (C, H, W) and `num_classes`, so the same network
runs on MNIST (1, 28, 28) or scikit-learn's digits (1, 8, 8).
"""
from __future__ import annotations

from collections import OrderedDict
from math import prod

import torch
from torch import nn

from ..errors import ModelError
from ..registry import Registry
from .activations import ACTIVATIONS

MODELS: Registry = Registry("model", ModelError)


class Select(nn.Module):
    """Keeps the input features listed in `index` (all of them when built): the removable inputs of a network.

    Neuron-level slimming (Liu et al. 2017, MNIST MLP) removes input pixels as well as hidden units; the
    pixels a network keeps are then this layer's index, and the first layer shrinks with it.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("index", torch.arange(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | list[int],
        dropout: float = 0.0, activation: str = "relu", batch_norm: bool = False) -> nn.Sequential:
    """A fully connected network; `dropout` (after each hidden layer) for teachers, `activation` by name.

    `build("mlp-30-30")` makes one of these with hidden=(30, 30). With `batch_norm`, the inputs pass a
    `Select` and a BatchNorm1d (norm0) and every hidden layer has one (norm1, ...): their scales are what
    network slimming prunes, inputs included.
    """
    act = ACTIVATIONS.get(activation)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = prod(input_shape)
    if batch_norm:
        layers["select"] = Select(width)
        layers["norm0"] = nn.BatchNorm1d(width)
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        if batch_norm:
            layers[f"norm{i}"] = nn.BatchNorm1d(h)
        layers[f"act{i}"] = act(h)
        if dropout:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        width = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


@MODELS.register("lenet-300-100")
def lenet_300_100(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
                  activation: str = "relu") -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of Deep Compression's Table 2: 266,610 parameters."""
    return mlp(input_shape, num_classes, (300, 100), activation=activation)


@MODELS.register("mlp-1200-1200")
def mlp_1200_1200(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
                  dropout: float = 0.0, activation: str = "relu") -> nn.Sequential:
    """The distillation paper's MNIST teacher, 784-1200-1200-10 (trained there with dropout)."""
    return mlp(input_shape, num_classes, (1200, 1200), dropout, activation)


@MODELS.register("mlp-800-800")
def mlp_800_800(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
                dropout: float = 0.0, activation: str = "relu") -> nn.Sequential:
    """The distillation paper's MNIST student, 784-800-800-10."""
    return mlp(input_shape, num_classes, (800, 800), dropout, activation)


@MODELS.register("lenet-5")
def lenet_5(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
            activation: str = "relu") -> nn.Sequential:
    """LeNet-5 as in Caffe's examples: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10 (431,080 params).

    Caffe's variant has no activation between the convolutions; ReLU (or `activation`) sits only after fc1.
    """
    channels, height, width = _image_shape(input_shape)
    side = min(height, width)
    if side < 16:
        raise ModelError(f"lenet-5 needs images of at least 16x16 pixels, got {height}x{width}")
    flat_h, flat_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(channels, 20, 5),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc1=nn.Linear(50 * flat_h * flat_w, 500),
        act1=ACTIVATIONS.get(activation)(500),
        fc2=nn.Linear(500, num_classes),
    ))


@MODELS.register("vgg-bn")
def vgg_bn(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
           widths: tuple[int | str, ...] | list[int | str] = (32, "M", 64, "M", 128, 128, "M"),
           hidden: int | None = None) -> nn.Sequential:
    """A VGG-style CNN with batch norm (Simonyan & Zisserman 2015), shaped as network slimming's (Liu et al. 2017).

    `widths` lists 3x3 conv widths ("M" = 2x2 max-pool); each conv is conv -> BatchNorm2d -> ReLU. As in
    the slimming paper's VGG, global average pooling feeds one linear classifier (fc); with `hidden`,
    the last feature map is flattened into a hidden layer (fc1, with batch norm) before it instead.
    Default widths are VGG-11's first three blocks at half width, sized for MNIST: 241,898 parameters,
    14.7M multiply-adds per 28x28 image.
    """
    channels, height, width = _image_shape(input_shape)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    conv = pool = 0
    for w in widths:
        if w == "M":
            pool += 1
            layers[f"pool{pool}"] = nn.MaxPool2d(2)
            height, width = height // 2, width // 2
            continue
        if not isinstance(w, int) or w < 1:
            raise ModelError(f"vgg-bn widths are positive ints or 'M', got {w!r}")
        conv += 1
        layers[f"conv{conv}"] = nn.Conv2d(channels, w, 3, padding=1, bias=False)
        layers[f"norm{conv}"] = nn.BatchNorm2d(w)
        layers[f"act{conv}"] = nn.ReLU()
        channels = w
    if height < 1 or width < 1:
        raise ModelError(f"vgg-bn: {pool} pools shrink the {input_shape} input to nothing")
    if hidden is None:
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(channels, num_classes)
        return nn.Sequential(layers)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(channels * height * width, hidden, bias=False)
    layers["norm_fc1"] = nn.BatchNorm1d(hidden)
    layers["act_fc1"] = nn.ReLU()
    layers["fc2"] = nn.Linear(hidden, num_classes)
    return nn.Sequential(layers)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelError(f"a convolutional model needs (channels, height, width) inputs, got {input_shape}")
    c, h, w = input_shape
    return c, h, w
