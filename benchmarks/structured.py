"""Structured compression on the full MNIST: slimming, low-rank, OBD, sensitivity-driven budgets.

    .venv/bin/python benchmarks/structured.py [--data mnist:../shared/data/mnist] [--only SECTION ...]

Sections (each adds its key to benchmarks/results/structured.json; run them in parallel with --only):
- slimming: network slimming of a VGG-style CNN with batch norm (vgg-bn): sparsity training
  (L1 on the batch-norm scales), removal of 60% of the channels under one global threshold on the
  scales relative to each layer's largest, fine-tuning (and, side by side, the paper's threshold on
  the raw scales: accuracy_after_raw_threshold). Keys
  channels_removed_fraction, accuracy_before (the trained network, unpruned), accuracy_after
  (slimmed and fine-tuned), file_ratio (.mzip bytes of the unpruned / the slimmed network),
  latency_ratio_b1 / _b64 (CPU forward time unpruned / slimmed, interleaved in one run), plus the
  params, FLOPs, a network trained without the penalty, and the per-layer comparison.
- mlp_slimming: neuron-level slimming of the paper's MNIST MLP 784-500-300-10 (input pixels
  included): params_removed_fraction, error_before, error_after, the widths kept.
- lowrank: LeNet-300-100 and LeNet-5 factorized (SVD / Tucker-2) to 2x, 4x, 8x fewer parameters,
  fine-tuned: accuracy and latency ratio per model and factor.
- obd_vs_magnitude: LeNet-300-100 pruned at equal sparsity by OBD saliency and by |w|, no retraining.
- sensitivity_vs_uniform: LeNet-300-100 pruned to the same total size by per-layer sparsities from the
  sensitivity analysis and by one uniform sparsity.
Trained networks are cached in benchmarks/results/files/structured/.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import modelzip
from sections import Section, run
from modelzip.data import split
from modelzip.layers import targets
from modelzip.lowrank import factorize_
from modelzip.profile import compare, compare_latency, profile
from modelzip.prune import magnitude, obd_score, prune_
from modelzip.sensitivity import allocate, kept_weights, plot_sensitivity, prune_layer, sensitivity
from modelzip.structured import ChannelPruneConfig, prune_channels_, scale_penalty
from modelzip.train import TrainConfig, evaluate, fit

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "structured.json"
CACHE = HERE / "results" / "files" / "structured"
TRAIN = TrainConfig(epochs=8, batch_size=128, lr=1e-3)
SECTIONS: dict[str, Section] = {}


def section(fn: Section) -> Section:
    """Register `fn` as a section whose result is the results file's entry of its name."""
    SECTIONS[fn.__name__] = lambda data: {fn.__name__: fn(data)}
    return fn


def cached(key: str, spec: str, data: modelzip.DataBundle, train: Callable[[nn.Module], object],
           **build_kwargs: object) -> nn.Module:
    """Network `spec` (built with seed 0), trained: from the cache, or trained now and cached (a state_dict)."""
    torch.manual_seed(0)
    model = modelzip.build(spec, data.input_shape, data.num_classes, **build_kwargs)
    path = CACHE / f"{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def latency_ratios(dense: nn.Module, small: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Forward time of `dense` / `small` at batch 1 and 64, interleaved round by round."""
    out = {}
    for batch, rounds in ((1, 400), (64, 60)):
        example = torch.randn(batch, *input_shape)
        times = compare_latency({"dense": dense, "small": small}, example, rounds=rounds)
        out[f"latency_ratio_b{batch}"] = times["dense"] / times["small"]
    return out


def sizes(dense: nn.Module, small: nn.Module, input_shape: tuple[int, ...]) -> dict:
    before, after = profile(dense, input_shape, latency=False), profile(small, input_shape, latency=False)
    totals = compare(before, after)
    return {"file_bytes_before": len(modelzip.dumps(dense)), "file_bytes_after": len(modelzip.dumps(small)),
            "params_before": before.totals["params"], "params_after": after.totals["params"],
            "flops_before": before.totals["flops"], "flops_after": after.totals["flops"], "layers": totals["layers"]}


@section
def slimming(data: modelzip.DataBundle) -> dict:
    penalty, amount = 3e-3, 0.6
    shape = data.input_shape
    sparse = cached(f"vgg-bn-l1-{penalty}", "vgg-bn", data, lambda m: fit(
        m, data.train, TRAIN, loss_fn=scale_penalty(m, penalty), desc="vgg-bn sparsity"))
    finetune = TrainConfig(epochs=3, batch_size=128, lr=1e-3)
    raw = copy.deepcopy(sparse)  # the paper's rule: one threshold on the raw scales
    raw_channels = prune_channels_(raw, shape, ChannelPruneConfig(amount=amount, normalize=False))
    fit(raw, data.train, finetune, desc="fine-tune")
    slim = copy.deepcopy(sparse)
    began = time.perf_counter()
    channels = prune_channels_(slim, shape, ChannelPruneConfig(amount=amount, normalize=True))
    removed = evaluate(slim, data.test)
    fit(slim, data.train, finetune, desc="fine-tune")
    seconds = time.perf_counter() - began
    before, after = sum(b for b, _ in channels.values()), sum(a for _, a in channels.values())
    conv = [v for k, v in channels.items() if k.startswith("conv")]
    out = {"channels_removed_fraction": 1 - after / before,
           "conv_channels_removed_fraction": 1 - sum(a for _, a in conv) / sum(b for b, _ in conv),
           "accuracy_before": evaluate(sparse, data.test), "accuracy_after": evaluate(slim, data.test),
           "accuracy_removed_before_finetune": removed, "accuracy_after_raw_threshold": evaluate(raw, data.test),
           "channels_raw_threshold": raw_channels,
           "penalty": penalty, "amount": amount, "channels": channels, "prune_finetune_seconds": seconds}
    out.update(sizes(sparse, slim, shape))
    out["file_ratio"] = out["file_bytes_before"] / out["file_bytes_after"]
    modelzip.save(sparse, CACHE / "slimming-before.mzip")
    modelzip.save(slim, CACHE / "slimming-after.mzip")
    return out


@section
def mlp_slimming(data: modelzip.DataBundle) -> dict:
    penalty, target = 1e-4, 0.844  # the paper removes 84.4% of the parameters
    config = TrainConfig(epochs=30, batch_size=128, lr=1e-3)
    sparse = cached(f"mlp-500-300-bn-l1-{penalty}", "mlp-500-300", data, lambda m: fit(
        m, data.train, config, loss_fn=scale_penalty(m, penalty), desc="mlp sparsity"), batch_norm=True)
    dense_params = modelzip.layers.parameter_count(sparse)
    amount = _amount_for(sparse, data.input_shape, target, dense_params)
    slim = copy.deepcopy(sparse)
    channels = prune_channels_(slim, data.input_shape, ChannelPruneConfig(amount=amount, normalize=False))
    fit(slim, data.train, TrainConfig(epochs=20, batch_size=128, lr=1e-3), desc="fine-tune")
    return {"params_removed_fraction": 1 - modelzip.layers.parameter_count(slim) / dense_params,
            "error_before": 1 - evaluate(sparse, data.test), "error_after": 1 - evaluate(slim, data.test),
            "widths": {k: v for k, v in channels.items()}, "amount": amount, "penalty": penalty,
            "params_before": dense_params, "params_after": modelzip.layers.parameter_count(slim)}


def lenet(name: str, data: modelzip.DataBundle) -> nn.Module:
    return cached(name, name, data, lambda m: fit(m, data.train, TRAIN, desc=name))


@section
def obd_vs_magnitude(data: modelzip.DataBundle) -> dict:
    """One-shot pruning of the trained LeNet-300-100, no retraining: OBD saliency against |w|."""
    model = lenet("lenet-300-100", data)
    sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.97]
    scores: dict[str, Callable] = {"magnitude": magnitude}
    began = time.perf_counter()
    scores["obd_fisher"] = obd_score(model, data.train, "fisher", examples=10_000)
    fisher_seconds = time.perf_counter() - began
    scores["obd_hutchinson"] = obd_score(model, data.train, "hutchinson", examples=10_000, samples=16)
    out: dict = {"sparsity": sparsities, "accuracy_dense": evaluate(model, data.test), "hessian_examples": 10_000,
                 "fisher_seconds": fisher_seconds}
    for scope in ("layer", "global"):
        for name, score in scores.items():
            accuracies = []
            for s in sparsities:
                trial = copy.deepcopy(model)
                prune_(trial, s, scope=scope, score=score)
                accuracies.append(evaluate(trial, data.test))
            out[f"{name}_{scope}"] = accuracies
    return out


@section
def sensitivity_vs_uniform(data: modelzip.DataBundle) -> dict:
    """Per-layer sparsities allocated from a sensitivity analysis vs one sparsity for all, same kept weights.

    The analysis scores on 5,000 training examples (never the test set); both pruned networks are
    then measured on the test set as pruned, and after one epoch of retraining with the masks.
    """
    model = lenet("lenet-300-100", data)
    _, held_out = split(data.train, 5_000 / len(data.train), seed=0)
    layers = [t.name for t in targets(model)]
    values = [0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99]
    sens = sensitivity(model, lambda m: evaluate(m, held_out), layers, values, prune_layer, kind="sparsity")
    plot_sensitivity(sens, HERE / "results" / "structured-sensitivity.png")
    Console(width=120).print(sens.table())
    cost = kept_weights(model)
    out: dict = {"sensitivity": sens.to_json(), "budgets": []}
    for uniform in (0.9, 0.95, 0.97):
        budget = sum(cost(layer, uniform) for layer in layers)
        allocation = allocate(sens, cost, budget)
        entry = {"uniform_sparsity": uniform, "kept_weights": budget, "allocated": allocation.values,
                 "allocated_kept_weights": allocation.cost}
        for name, sparsity in (("uniform", {layer: uniform for layer in layers}), ("allocated", allocation.values)):
            trial = copy.deepcopy(model)
            for layer, s in sparsity.items():
                prune_layer(trial, layer, s)
            entry[f"accuracy_{name}"] = evaluate(trial, data.test)
            fit(trial, data.train, TrainConfig(epochs=1, lr=5e-4), desc="retrain")
            entry[f"accuracy_{name}_retrained"] = evaluate(trial, data.test)
        out["budgets"].append(entry)
    return out


LOWRANK_DENSE = {"lenet-300-100": ["fc3"], "lenet-5": ["conv1", "fc2"]}  # too small to gain from factors


@section
def lowrank(data: modelzip.DataBundle) -> dict:
    """LeNets factorized to 2x, 4x, 8x fewer parameters (one kept ratio for the large layers), fine-tuned."""
    out: dict = {}
    for name, dense_layers in LOWRANK_DENSE.items():
        model = lenet(name, data)
        params = modelzip.layers.parameter_count(model)
        out[name] = {"accuracy_dense": evaluate(model, data.test), "params": params}
        modelzip.save(model, CACHE / f"lowrank-{name}-dense.mzip")
        for factor in (2, 4, 8):
            small, ratio = _factorized(model, params / factor, dense_layers)
            entry = {"ratio": ratio, "params": modelzip.layers.parameter_count(small),
                     "ranks": factorize_ranks(small), "accuracy_factorized": evaluate(small, data.test)}
            began = time.perf_counter()
            fit(small, data.train, TrainConfig(epochs=3, lr=5e-4), desc=f"{name} {factor}x")
            entry.update(accuracy=evaluate(small, data.test), finetune_seconds=time.perf_counter() - began)
            entry["params_ratio"] = params / entry["params"]
            out[name][f"{factor}x"] = entry
            modelzip.save(small, CACHE / f"lowrank-{name}-{factor}x.mzip")
    return out


def _factorized(model: nn.Module, budget: float, dense_layers: list[str]) -> tuple[nn.Module, float]:
    """The model factorized with the largest kept ratio (in steps of 0.1%) that fits `budget` parameters."""
    def trial(step: int) -> nn.Module:
        work = copy.deepcopy(model)
        factorize_(work, step / 1000, exclude=dense_layers)
        return work

    step = _smallest(lambda s: modelzip.layers.parameter_count(trial(s)) > budget, 999) - 1
    if step == 0:
        raise RuntimeError("no kept ratio fits the parameter budget")
    return trial(step), step / 1000


def factorize_ranks(model: nn.Module) -> dict[str, list[int]]:
    edits = (modelzip.models.arch_of(model) or {}).get("edits", [])
    return {e["module"]: e["ranks"] for e in edits if e["op"] == "factorize"}


def _amount_for(model: nn.Module, shape: tuple[int, ...], target: float, dense: int) -> float:
    """The smallest fraction of neurons (in steps of 0.5%) whose removal takes away `target` of the parameters."""
    def reaches(step: int) -> bool:
        trial = copy.deepcopy(model)
        prune_channels_(trial, shape, ChannelPruneConfig(amount=step / 200, normalize=False))
        return 1 - modelzip.layers.parameter_count(trial) / dense >= target

    step = _smallest(reaches, 199)
    if step == 200:
        raise RuntimeError("no neuron fraction reaches the parameter target")
    return step / 200


def _smallest(holds: Callable[[int], bool], high: int) -> int:
    """The smallest step in [1, high] where `holds` (false below it, true from it on) is true; high + 1 if none.

    Parameters only grow with the kept ratio and only shrink with the removed fraction, so both searches
    bisect.
    """
    low, high = 0, high + 1  # holds(low) is false, holds(high) is taken as true
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle, high)
    return high


def latency(data: modelzip.DataBundle) -> dict:
    """CPU latency ratios of the saved networks of the other sections, measured on a quiet machine.

    Run it alone, after the others: timings taken while other sections train are noise.
    """
    out: dict = {"slimming": latency_ratios(modelzip.load(CACHE / "slimming-before.mzip"),
                                            modelzip.load(CACHE / "slimming-after.mzip"), data.input_shape)}
    for name in LOWRANK_DENSE:
        dense = modelzip.load(CACHE / f"lowrank-{name}-dense.mzip")
        out.setdefault("lowrank", {})[name] = {
            f"{factor}x": latency_ratios(dense, modelzip.load(CACHE / f"lowrank-{name}-{factor}x.mzip"),
                                         data.input_shape) for factor in (2, 4, 8)}
    return out


SECTIONS["latency"] = latency  # adds its keys to the entries of the sections above

if __name__ == "__main__":
    raise SystemExit(run(__doc__, SECTIONS, RESULTS))
