"""The workflow: run a recipe's stages on a model and data, write the .mzip, measure what it cost.

The data is what a PyTorch user has: a DataBundle (a built-in image set), or any re-iterable of batches
(a DataLoader of tensors, tuples or dicts), or nothing for post-training recipes. The metric after
compression is measured on the module decoded from the file's bytes, so the figure describes what a
user loads, not the model in memory before encoding.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .atomic import atomic_write, remove_temporaries
from .data import DataBundle
from .data.feed import Data, call, first, inputs_of, output_tensor
from .distributed import broadcast_module_, is_main
from .distill import teaching
from .errors import ConfigError, ModelError
from .io import dense_bytes, dumps, loads
from .layers import device_of, eval_mode, strip
from .metrics import Metric, NamedMetric, accuracy, fidelity, named
from .lowrank import low_rank
from .models import arch_of, build
from .profile import compare, profile
from .prune import iterative_prune
from .quantize import trained_quantization, uniform_quantization
from .recipes import Recipe, load_recipe
from .report import build_report, write_report
from .resume import close_run, fingerprint, open_run
from .second_order import Method, second_order_
from .soft_sharing import SoftSharing, soft_weight_sharing
from .structured import network_slimming
from .train import LossFn, checkpoint_in, cross_entropy, fit


@dataclass
class Compressed:
    """What `compress` returns: the decoded module, the file's bytes, and the report (JSON-able)."""

    model: nn.Module
    data: bytes
    report: dict[str, Any]
    soft_sharing: SoftSharing | None = None  # the priors and weight vectors of a soft weight-sharing stage


def compress(model: nn.Module, data: DataBundle | Data | None = None, recipe: Recipe | str = "deep-compression", *,
             pretrained: bool = True, out: str | Path | None = None, report_out: str | Path | None = None,
             loss_fn: LossFn | None = None, metric: Metric | None = None, metric_name: str | None = None,
             calibration: Data | None = None, run_dir: str | Path | None = None,
             keep_run_dir: bool = False) -> Compressed:
    """Compress a copy of `model` with `recipe` on `data`; optionally write the .mzip file to `out` and the
    JSON report to `report_out`.

    `data`: a DataBundle (its train split trains, its test split scores accuracy), or the training
    batches themselves (a DataLoader or list of tensors, tuples or dicts), or None for post-training
    recipes. `loss_fn(model, batch)` replaces the default loss (the model's own, or cross-entropy on
    labels). `metric(model) -> float` (higher is better; named `metric_name` in the report) replaces
    the default: accuracy on a DataBundle's test split, else the mean output cosine against the
    original model on `calibration` (unlabelled batches) or the first batches of `data`.

    With `pretrained=False` the model is first trained with the recipe's `train` stage. With a
    `distill` stage the model is the teacher: a new student learns from it and is what gets
    compressed (its pruning retraining and quantization fine-tuning keep the distillation loss), and
    the report's ratio and metric before are the teacher's. A `soft_sharing` stage retrains under
    a Gaussian-mixture prior and quantizes to its means; `Compressed.soft_sharing` then holds the
    priors and weight vectors the pictures are drawn from. A `uniform` stage leaves integer-coded layers,
    stored at their bit width. A `second_order` stage prunes and/or quantizes post-training with OBS
    compensation on `calibration` (else `data`); the report's `second_order` says what each layer became.
    A `slimming` or `low_rank` stage changes the network's structure; the
    report's `structure` then compares parameters, FLOPs and CPU latency per layer of the given and
    the decoded network.

    With `run_dir` (a folder; the CLI's `--resume` makes it OUT.run) every epoch of every training
    the recipe does is checkpointed there, and a rerun with the same folder, model, data and recipe
    continues a killed run where it stopped, redoing at most one epoch, and writes the bytes an
    uninterrupted run writes (see `modelzip.resume`); a folder of another run is refused. It is removed
    once the outputs are written, unless `keep_run_dir`. The report is written before the .mzip file,
    so a new .mzip file always has its report beside it (the report's `sha256` names the file's bytes);
    what killed writes of either left behind (temporaries) is removed first.

    Under `torchrun` (a process group: `modelzip.distributed.init()`) the training stages run
    data-parallel; only rank 0 writes `out`, `report_out` and the checkpoints, and every rank returns the
    same result.
    """
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    began = time.perf_counter()
    if is_main():
        for path in (Path(p) for p in (out, report_out) if p is not None):
            remove_temporaries(path.parent, path.name)
    bundle = data if isinstance(data, DataBundle) else None
    train = bundle.train if bundle is not None else data
    test = bundle.test if bundle is not None else None
    inputs = calibration if calibration is not None else train  # what post-training stages and fidelity read
    _check_stages(recipe, train, bundle, calibration)
    input_shape = bundle.input_shape if bundle is not None else _input_shape(inputs)
    if bundle is not None:
        check_outputs(model, bundle)
    run = None if run_dir is None else open_run(
        run_dir, fingerprint(model, data, recipe, pretrained=pretrained, calibration=calibration))

    def stage(name: str) -> Path | None:
        """The folder a stage's trainings checkpoint in (None: this run is not checkpointed)."""
        return None if run is None else run / name

    if not pretrained:
        fit(model, train, recipe.train, test=test, loss_fn=loss_fn or cross_entropy,
            checkpoint=checkpoint_in(run, "train"), desc="train")
    score = _metric(model, metric, metric_name, bundle, inputs)
    before = score(model) if score is not None else None
    stages: dict[str, float] = {}
    loss_fn = loss_fn or cross_entropy

    def measure(stage: str) -> None:
        if score is not None:
            stages[stage] = score(work)

    if recipe.distill is not None:  # the teacher keeps teaching through retraining and fine-tuning
        work = build(recipe.distill.student, bundle.input_shape, bundle.num_classes,
                     activation=recipe.distill.activation)
        train, loss_fn = teaching(model, bundle.train, recipe.distill)
        fit(work, train, recipe.distill.train, test=test, loss_fn=loss_fn, checkpoint=checkpoint_in(run, "distill"),
            desc="distill")
        measure("after_distill")
    else:
        work = copy.deepcopy(model)
    if recipe.slimming is not None:
        network_slimming(work, train, bundle.input_shape, recipe.slimming, loss_fn=loss_fn,
                         checkpoints=stage("slimming"))
        measure("after_slimming")
    if recipe.low_rank is not None:
        low_rank(work, train, recipe.low_rank, loss_fn=loss_fn, checkpoints=stage("low_rank"))
        measure("after_low_rank")
    if recipe.prune is not None:
        iterative_prune(work, train, recipe.prune, test=test, loss_fn=loss_fn, checkpoints=stage("prune"))
        measure("after_prune")
    compensated = None
    if recipe.second_order is not None:
        strip(work)  # an earlier prune's masks become zeros, which the stage keeps
        compensated = second_order_(work, inputs, recipe.second_order)
        measure("after_second_order")
    sharing = None
    if recipe.soft_sharing is not None:
        sharing = soft_weight_sharing(work, train, recipe.soft_sharing, test=test, loss_fn=loss_fn,
                                      checkpoints=stage("soft_sharing"))
        if bundle is not None and score is not None and score.name == "accuracy":
            stages["after_prior"] = sharing.accuracy_retrained
        measure("after_soft_sharing")
    if recipe.quantize is not None:
        trained_quantization(work, train, recipe.quantize, test=test, seed=recipe.seed, loss_fn=loss_fn,
                             checkpoints=stage("quantize"))
        measure("after_quantize")
    if recipe.uniform is not None:
        uniform_quantization(work, train, recipe.uniform, test=test, loss_fn=loss_fn, checkpoints=stage("uniform"))
        measure("after_uniform")
    strip(work)
    broadcast_module_(work)  # under torchrun: every rank encodes rank 0's network, the same bytes
    meta: dict[str, Any] = {"data": _data_name(data), "recipe": recipe.name}
    if input_shape is not None:
        meta["input_shape"] = list(input_shape)
    arch = arch_of(work)  # the student's, or the model's (a deep copy keeps the record)
    decoded = loads(dumps(work, arch=arch, meta=meta), copy.deepcopy(work))
    if score is not None:
        meta.update(metric=score.name, metric_before=before, metric_after=score(decoded))
        if score.name == "accuracy":  # the name every earlier report and benchmark reads
            meta.update(accuracy_before=before, accuracy_after=meta["metric_after"])
    blob = dumps(work, arch=arch, meta=meta)
    report = build_report(blob, dense_bytes=dense_bytes(model))
    report.update(stages=stages, seconds=round(time.perf_counter() - began, 1))
    if compensated is not None:
        report["second_order"] = compensated
    structural = recipe.slimming is not None or recipe.low_rank is not None
    if structural and input_shape is not None:  # the running network changed: measure it
        report["structure"] = compare(profile(model, input_shape), profile(decoded, input_shape))
    if is_main():  # under torchrun the other ranks return the same result unwritten
        if report_out is not None:
            write_report(report, report_out)
        if out is not None:
            atomic_write(out, lambda f: f.write(blob))
        if run is not None:  # only now: a kill before this point resumes and writes both again
            close_run(run, keep_run_dir)
    return Compressed(decoded, blob, report, sharing)


def check_outputs(model: nn.Module, bundle: DataBundle) -> None:
    """A classifier for a DataBundle must give one logit per class: catch a wrong model before any work.

    The bundle's images are float32 in [0, 1], shaped (N, C, H, W): a model with its own
    preprocessing (a normalization) must carry it in its forward.
    """
    probe = bundle.test.tensors[0][:2]
    device = device_of(model)
    with torch.no_grad(), eval_mode(model):
        logits = output_tensor(call(model, probe.to(device)))
    if logits.dim() != 2 or logits.shape[1] != bundle.num_classes:
        raise ModelError(f"the model maps inputs {tuple(probe.shape)} to outputs {tuple(logits.shape)}, but "
                         f"{bundle.name} has {bundle.num_classes} classes: it needs outputs (N, {bundle.num_classes})")


def _metric(model: nn.Module, metric: Metric | None, name: str | None, bundle: DataBundle | None,
            inputs: Data | None) -> NamedMetric | None:
    if metric is not None:
        return named(metric, name)
    if bundle is not None:
        return accuracy(bundle.test)
    if inputs is not None:
        return fidelity(model, inputs)
    return None  # nothing to measure on: the report says so


def _check_stages(recipe: Recipe, train: Data | None, bundle: DataBundle | None, calibration: Data | None) -> None:
    """Refuse up front, naming the stage, what the data given cannot feed (before any work is done)."""
    training = [name for name, stage in (("distill", recipe.distill), ("slimming", recipe.slimming),
                                         ("low_rank", recipe.low_rank), ("prune", recipe.prune),
                                         ("soft_sharing", recipe.soft_sharing), ("quantize", recipe.quantize))
                if stage is not None]
    if recipe.uniform is not None and (recipe.uniform.train is not None or recipe.uniform.mixed is not None):
        training.append("uniform")
    if train is None and training:
        raise ConfigError(f"recipe {recipe.name!r} trains in stage(s) {', '.join(training)}: give training data "
                          "(a DataLoader or list of batches), or use a post-training recipe such as int8")
    if train is None and calibration is None and recipe.second_order is not None \
            and recipe.second_order.method is Method.OBS:
        raise ConfigError("stage second_order measures each layer's inputs: give calibration batches (unlabelled "
                          "inputs are enough) or data, or use method: plain")
    if bundle is not None:
        return
    needs_bundle = [n for n, stage in (("distill", recipe.distill), ("slimming", recipe.slimming)) if stage]
    if needs_bundle:
        raise ConfigError(f"stage(s) {', '.join(needs_bundle)} build or trace the network for a known input shape "
                          "and class count: give a DataBundle (modelzip.load_data)")
    if not isinstance(train, TensorDataset):
        subsets = [n for n, on in (("prune with criterion obd or allocate", recipe.prune is not None and (
                       recipe.prune.criterion.value == "obd" or recipe.prune.allocate)),
                   ("soft_sharing", recipe.soft_sharing is not None),
                   ("uniform with mixed", recipe.uniform is not None and recipe.uniform.mixed is not None)) if on]
        if subsets:
            raise ConfigError(f"stage(s) {', '.join(subsets)} draw examples from a TensorDataset of (inputs, labels); "
                              f"got {type(train).__name__}")


def _input_shape(data: Data | None) -> tuple[int, ...] | None:
    """The shape of one input example, when the model takes one tensor (recorded in the file, checked at eval)."""
    if data is None:
        return None
    x = inputs_of(first(data))
    return tuple(x.shape[1:]) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 1 else None


def _data_name(data: DataBundle | Data | None) -> str | None:
    if isinstance(data, DataBundle):
        return data.name
    return None if data is None else type(data).__name__
