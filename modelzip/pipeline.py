"""The workflow: run a recipe's stages on a model and data, write the .mzip, measure what it cost.

Accuracy after compression is measured on the module decoded from the file's bytes, so the figure
describes what a user loads, not the model in memory before encoding.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .atomic import atomic_write
from .data import DataBundle
from .distill import teaching
from .io import dense_bytes, dumps, loads
from .layers import strip
from .lowrank import low_rank
from .models import arch_of, build
from .profile import compare, profile
from .prune import iterative_prune
from .quantize import trained_quantization, uniform_quantization
from .recipes import Recipe, load_recipe
from .report import build_report
from .soft_sharing import SoftSharing, soft_weight_sharing
from .structured import network_slimming
from .train import cross_entropy, evaluate, fit


@dataclass
class Compressed:
    """What `compress` returns: the decoded module, the file's bytes, and the report (JSON-able)."""

    model: nn.Module
    data: bytes
    report: dict[str, Any]
    soft_sharing: SoftSharing | None = None  # the priors and weight vectors of a soft weight-sharing stage


def compress(model: nn.Module, data: DataBundle, recipe: Recipe | str = "deep-compression", *,
             pretrained: bool = True, out: str | Path | None = None) -> Compressed:
    """Compress a copy of `model` with `recipe` on `data`; optionally write the .mzip file to `out`.

    With `pretrained=False` the model is first trained with the recipe's `train` stage. With a
    `distill` stage the model is the teacher: a new student learns from it and is what gets
    compressed (its pruning retraining and quantization fine-tuning keep the distillation loss), and
    the report's ratio and `accuracy_before` are the teacher's. A `soft_sharing` stage retrains under
    a Gaussian-mixture prior and quantizes to its means; `Compressed.soft_sharing` then holds the
    priors and weight vectors the pictures are drawn from. A `uniform` stage leaves integer-coded layers,
stored at their bit width. A `slimming` or `low_rank` stage changes the
    network's structure; the report's `structure` then compares parameters, FLOPs and CPU latency per
    layer of the given and the decoded network.
    """
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    began = time.perf_counter()
    if not pretrained:
        fit(model, data.train, recipe.train, test=data.test, desc="train")
    accuracy_before = evaluate(model, data.test)
    stages: dict[str, float] = {}
    train, loss_fn = data.train, cross_entropy
    if recipe.distill is not None:  # the teacher keeps teaching through retraining and fine-tuning
        work = build(recipe.distill.student, data.input_shape, data.num_classes, activation=recipe.distill.activation)
        train, loss_fn = teaching(model, data.train, recipe.distill)
        fit(work, train, recipe.distill.train, test=data.test, loss_fn=loss_fn, desc="distill")
        stages["after_distill"] = evaluate(work, data.test)
    else:
        work = copy.deepcopy(model)
    if recipe.slimming is not None:
        network_slimming(work, train, data.input_shape, recipe.slimming, loss_fn=loss_fn)
        stages["after_slimming"] = evaluate(work, data.test)
    if recipe.low_rank is not None:
        low_rank(work, train, recipe.low_rank, loss_fn=loss_fn)
        stages["after_low_rank"] = evaluate(work, data.test)
    if recipe.prune is not None:
        iterative_prune(work, train, recipe.prune, test=data.test, loss_fn=loss_fn)
        stages["after_prune"] = evaluate(work, data.test)
    sharing = None
    if recipe.soft_sharing is not None:
        sharing = soft_weight_sharing(work, train, recipe.soft_sharing, test=data.test, loss_fn=loss_fn)
        stages["after_prior"] = sharing.accuracy_retrained
        stages["after_soft_sharing"] = evaluate(work, data.test)
    if recipe.quantize is not None:
        trained_quantization(work, train, recipe.quantize, test=data.test, seed=recipe.seed, loss_fn=loss_fn)
        stages["after_quantize"] = evaluate(work, data.test)
    if recipe.uniform is not None:
        uniform_quantization(work, train, recipe.uniform, test=data.test, loss_fn=loss_fn)
        stages["after_uniform"] = evaluate(work, data.test)
    strip(work)
    meta = {"data": data.name, "recipe": recipe.name, "accuracy_before": accuracy_before}
    arch = arch_of(work)  # the student's, or the model's (a deep copy keeps the record)
    decoded = loads(dumps(work, arch=arch, meta=meta), copy.deepcopy(work))
    meta["accuracy_after"] = evaluate(decoded, data.test)
    blob = dumps(work, arch=arch, meta=meta)
    if out is not None:
        atomic_write(out, lambda f: f.write(blob))
    report = build_report(blob, dense_bytes=dense_bytes(model))
    report.update(stages=stages, seconds=round(time.perf_counter() - began, 1))
    if recipe.slimming is not None or recipe.low_rank is not None:  # the running network changed: measure it
        report["structure"] = compare(profile(model, data.input_shape), profile(decoded, data.input_shape))
    return Compressed(decoded, blob, report, sharing)
