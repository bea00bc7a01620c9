"""Quant-Noise (Fan, Stock et al. 2021, "Training with Quantization Noise for Extreme Model Compression").

QAT quantizes every weight in every forward pass, so every gradient goes through the biased straight-
through estimator. Quant-Noise quantizes only a random fraction p of blocks in each training step:

    W' = where(M, q(W), W),    M ~ Bernoulli(p), one draw per block of `block_size` consecutive weights of a row

(rows of the (out, in * kh * kw) matrix, as in product quantization; a row's last block may be shorter
in scalar mode). The other blocks stay full precision and get their true gradient; the quantized ones
get the STE gradient of q. p = 1 is plain QAT; fairseq recommends p = 0.05..0.2 for iPQ.

`q` is one of (the `mode`):
- scalar: uniform fake quantization to int8/int4 (`qat.FakeQuant`, a QuantSpec), on the range observed
  on the whole current weight, so a block is quantized exactly as it will be after training;
- pq: iPQ, each sub-vector replaced by its nearest codeword. What we do (re-running k-means on the weight
  at every step would be too costly): the codebook is fitted once at prepare time by k-means of the
  pretrained weights and then trains by gradient (its codewords get the summed gradients of the quantized
  sub-vectors using them); the codes follow the weight, re-assigned each step to the nearest codeword
  (its "current centroid"; fairseq instead zeroes the chosen blocks, which its authors found to work as well).
  For the paper's last stage, strip and run `pq.pq_quantize_` to re-cluster and fine-tune the codebook.

The random mask comes from the global torch RNG, which `train.fit` seeds with TrainConfig.seed: a run is
reproducible, and there is no per-layer generator state to save or to move between devices.

Inference: Quant-Noise is a training method. In eval mode (and without autograd) a layer with p < 1
returns its full-precision weight — the network before quantization (fairseq's scalar layers quantize
fully in eval mode instead). The paper deploys the network fully
quantized after training: `finish_quant_noise` sets p = 1 everywhere, after which `evaluate` measures the
quantized network and `modelzip.layers.strip` bakes exactly q(W) into plain weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ModelError
from .pq import PQCodes, blocks, chosen, nearest_codes, pq_decode, pq_encode, refuse_parametrized
from .qat import Codes, FakeQuant
from .uniform import Observer, QuantSpec


class NoiseMode(str, Enum):
    SCALAR = "scalar"  # uniform int8 / int4 fake quantization
    PQ = "pq"  # iterative product quantization (iPQ)


def block_mask(weight: torch.Tensor, block_size: int, p: float) -> torch.Tensor:
    """A bool mask of `weight`'s shape, True on a random fraction ~p of its blocks (global torch RNG)."""
    rows = weight.reshape(weight.shape[0], -1)  # (out, cols)
    n_blocks = -(-rows.shape[1] // block_size)
    drawn = torch.rand(rows.shape[0], n_blocks, device=weight.device) < p  # (out, n_blocks)
    return drawn.repeat_interleave(block_size, 1)[:, :rows.shape[1]].reshape(weight.shape)


class NearestCodeword(nn.Module):
    """Quantizer: each sub-vector of the weight becomes its nearest codeword (codebook a Parameter).

    The value is codebook[codes] exactly; the gradient reaches the codebook through the gather and the
    weight through the straight-through estimator (identity).
    """

    def __init__(self, codebook: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        size = self.codebook.shape[1]
        codes = nearest_codes(blocks(weight, size), self.codebook)
        return pq_decode(self.codebook, codes, weight.shape, size) + (weight - weight.detach())  # + exactly 0

    def encode(self, weight: torch.Tensor) -> PQCodes:
        return PQCodes(self.codebook.detach(), nearest_codes(blocks(weight, self.codebook.shape[1]), self.codebook))


class QuantNoise(nn.Module):
    """Parametrization: a random fraction `p` of the blocks takes the value of `quantizer`, the rest stays.

    `quantizer` maps the weight to its fully quantized value with an STE gradient (FakeQuant,
    NearestCodeword, or any QAT quantizer). Noise is drawn only while training with autograd on; otherwise
    the weight is returned as is, unless p = 1 (fully quantized in every mode).
    """

    def __init__(self, quantizer: nn.Module, p: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"the Quant-Noise rate p must be in [0, 1], got {p}")
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        self.quantizer, self.p, self.block_size = quantizer, float(p), block_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.p == 1.0:
            return self.quantizer(weight)
        if self.p == 0.0 or not (self.training and torch.is_grad_enabled()):
            return weight
        return torch.where(block_mask(weight, self.block_size, self.p), self.quantizer(weight), weight)

    def encode(self, weight: torch.Tensor) -> Codes | PQCodes:
        """The quantizer's codes: only a fully quantized layer (p = 1, `finish_quant_noise`) has them."""
        if self.p != 1.0:
            raise ModelError(f"a Quant-Noise layer with p = {self.p} is partly full precision; "
                             "call finish_quant_noise before converting it to codes")
        return self.quantizer.encode(weight)


def prepare_quant_noise(model: nn.Module, p: float = 0.1, mode: NoiseMode | str = NoiseMode.SCALAR,
                        spec: QuantSpec = QuantSpec(bits=8), block_size: int = 8, centroids: int = 256, *,
                        layers: Sequence[str] | None = None, observe: Observer | str = Observer.MINMAX,
                        seed: int = 0) -> dict[str, QuantNoise]:
    """Attach Quant-Noise to every compressible weight of `model` (or those matching `layers`), in place.

    scalar: `spec` (bits, granularity) and `observe` (the range) define q, as in `prepare_qat`; a pruned
    weight keeps its mask (q maps 0 to 0). pq: blocks of `block_size` (which must divide each row) and
    `centroids` codewords, k-means seeded with `seed`; the weight must be plain. Train with `train.fit`,
    then `finish_quant_noise` and `strip`. Returns the QuantNoise of each weight, by name.
    """
    try:
        mode = NoiseMode(mode)
    except ValueError:
        raise ConfigError(f"unknown Quant-Noise mode {mode!r} (known: {', '.join(m.value for m in NoiseMode)})"
                          ) from None
    found = chosen(model, layers)
    noises = {}
    for t in found:  # build every quantizer before attaching any: a bad setting leaves the model as it was
        name = f"{t.name}.{t.param}"
        if mode is NoiseMode.PQ:
            refuse_parametrized(t, "Quant-Noise with product quantization")
            quantizer: nn.Module = NearestCodeword(pq_encode(t.weight, block_size, centroids, seed, name=name)[0])
        else:
            refuse_parametrized(t, "Quant-Noise", pruned_ok=True)
            quantizer = FakeQuant(spec, observe)
        noises[name] = QuantNoise(quantizer, p, block_size)
    for t, noise in zip(found, noises.values()):
        parametrize.register_parametrization(t.module, t.param, noise)
    return noises


def finish_quant_noise(model: nn.Module) -> nn.Module:
    """Quantize every block from now on (p = 1), in place: the deployed, fully quantized network.

    Evaluate it to measure the quantized accuracy; `strip` then bakes the quantized weights. Returns model.
    """
    noises = [m for m in model.modules() if isinstance(m, QuantNoise)]
    if not noises:
        raise ModelError(f"{type(model).__name__} has no Quant-Noise layers; call prepare_quant_noise first")
    for noise in noises:
        noise.p = 1.0
    return model
