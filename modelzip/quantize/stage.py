"""Uniform quantization as one recipe stage: post-training, QAT (STE, LSQ, binary, ternary) or Quant-Noise.

Every path ends in `quantize_weights_`, so the model leaves the stage with coded layers and the .mzip
file holds the codes at their bit width. Without `train` the stage quantizes the trained weights as
they are (post-training); with it the quantizer is attached first and the model is fine-tuned through
it, so what is stored is exactly what was trained. `mixed` replaces the single width by per-layer
widths with that average, chosen from each layer's measured sensitivity (`mixed_precision`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from torch.utils.data import TensorDataset

from ..data import sample
from ..errors import ConfigError
from ..structured import fold_batch_norms_
from ..train import LossFn, TrainConfig, checkpoint_in, cross_entropy, evaluate, fit
from .coded import quantize_weights_
from .mixed import bit_specs, mixed_precision
from .noise import NoiseMode, finish_quant_noise, prepare_quant_noise
from .qat import QATMethod, prepare_qat
from .uniform import Observer, QuantSpec


@dataclass(frozen=True)
class UniformConfig:
    """How to quantize: the code width and grid, the method, and whether (and how) to fine-tune."""

    bits: int = 8  # 2..8; binary and ternary ignore it
    symmetric: bool = True
    per_channel: bool = True  # one scale per output channel: small channels keep their precision
    method: QATMethod = QATMethod.UNIFORM  # with `train`: uniform (STE), lsq, binary, ternary
    observe: Observer = Observer.MINMAX  # the weight range: minmax, percentile or mse
    layers: dict[str, int] = field(default_factory=dict)  # bits per layer-name pattern, overriding `bits`
    mixed: float | None = None  # average bits per weight: per-layer widths from sensitivity instead of `bits`
    noise: float | None = None  # Quant-Noise rate p: quantize only this fraction of blocks per step
    train: TrainConfig | None = None  # fine-tuning through the quantizer; none: post-training quantization
    examples: int = 2000  # training examples that score each layer's sensitivity for `mixed`
    fold: bool = False  # fold batch norms into their conv/linear first: the stored codes are what int8 kernels run

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", QATMethod(self.method))
        object.__setattr__(self, "observe", Observer(self.observe))
        if self.train is None and self.method is not QATMethod.UNIFORM:
            raise ConfigError(f"{self.method.value} weights need training: give the stage a `train` section")
        if self.noise is not None and (self.train is None or self.method is not QATMethod.UNIFORM):
            raise ConfigError("Quant-Noise is a training method for uniform codes: give `train`, keep method uniform")
        if self.mixed is not None and self.layers:
            raise ConfigError("give per-layer bits (`layers`) or a mixed-precision budget (`mixed`), not both")
        if self.noise is not None and (self.layers or self.mixed is not None):
            raise ConfigError("Quant-Noise takes one width for all layers; drop `layers` / `mixed`")
        if self.mixed is not None and self.method in (QATMethod.BINARY, QATMethod.TERNARY):
            raise ConfigError(f"{self.method.value} weights have one width; a mixed-precision budget needs uniform "
                              "or lsq")

    def spec(self, bits: int | None = None) -> QuantSpec:
        return QuantSpec(self.bits if bits is None else bits, self.symmetric, self.per_channel)


def uniform_quantization(model: nn.Module, train: TensorDataset, config: UniformConfig = UniformConfig(), *,
                         test: TensorDataset | None = None, loss_fn: LossFn = cross_entropy,
                         checkpoints: str | Path | None = None) -> dict[str, str]:
    """Quantize `model` in place as `config` says; returns what each layer became ("4-bit", ...).

    With `checkpoints` (a folder) the fine-tuning through the quantizer is checkpointed in it (see `fit`).
    """
    if config.fold:
        fold_batch_norms_(model)
    layers = {pattern: config.spec(bits) for pattern, bits in config.layers.items()}
    if config.mixed is not None:
        held_out = sample(train, config.examples, seed=config.train.seed if config.train else 0)
        chosen = mixed_precision(model, lambda m: evaluate(m, held_out), config.mixed)
        layers = bit_specs(chosen, symmetric=config.symmetric, per_channel=config.per_channel)
    if config.train is not None:
        if config.noise is not None:
            prepare_quant_noise(model, config.noise, NoiseMode.SCALAR, config.spec(), observe=config.observe)
        else:
            prepare_qat(model, config.spec(), layers=layers, method=config.method, observe=config.observe)
        fit(model, train, config.train, test=test, loss_fn=loss_fn, checkpoint=checkpoint_in(checkpoints, "train"),
            desc="quantization-aware training")
        if config.noise is not None:
            finish_quant_noise(model)
    return quantize_weights_(model, config.spec(), layers=layers, observe=config.observe)
