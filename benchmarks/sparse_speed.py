"""Sparse execution (modelzip.sparsify_): CPU latency of magnitude-pruned models, dense / sparse, one thread.

    .venv/bin/python benchmarks/sparse_speed.py        # about 15 s; writes benchmarks/results/sparse_speed.json

`speedups()` (importable from this folder: `from sparse_speed import speedups`) returns the whole-model
forward time dense / sparsified, median of interleaved rounds, at batch 1 and 64:
- mlp10m_p92_*, mlp10m_p97_*: mlp-2048-2048-1024 on 1024 inputs with 1024 outputs (9,437,184 weights),
  random init, each layer pruned by |w| to 92% / 97% zeros;
- lenet_*: LeNet-300-100 at Deep Compression's per-layer sparsities (fc1 92%, fc2 91%, fc3 74%: 92% overall).
Each model is sparsified as `modelzip.load(..., sparse=True)` does (measured per layer at batch 1 and 64:
a layer goes sparse only where that is faster at both). `max_abs_diff` is the largest |dense - sparse|
output difference over all of them, `max_rel_diff` the same over the largest |dense output|.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

import modelzip
from modelzip.profile import compare_latency

RESULTS = Path(__file__).parent / "results" / "sparse_speed.json"
BATCHES = (1, 64)
ROUNDS = 30
LENET_SPARSITY = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}  # Han et al. 2016, Table 2: 8% / 9% / 26% kept


def pruned(spec: str, input_shape: tuple[int, ...], num_classes: int, sparsity: dict[str, float]) -> nn.Module:
    """A built-in model, seed 0, with each listed layer's weight magnitude-pruned to its sparsity."""
    torch.manual_seed(0)
    model = modelzip.build(spec, input_shape, num_classes)
    modelzip.prune_(model, 0.0, layers=sparsity)
    return modelzip.strip(model).eval()


def compare(dense: nn.Module, input_shape: tuple[int, ...]) -> tuple[dict[int, float], float, float, dict]:
    """Speedup per batch size, max abs and max relative output difference, and the per-layer decisions."""
    sparse = copy.deepcopy(dense)
    decisions = modelzip.sparsify_(sparse, batch_sizes=BATCHES)
    speed, diff, rel = {}, 0.0, 0.0
    generator = torch.Generator().manual_seed(1)
    for b in BATCHES:
        x = torch.randn(b, *input_shape, generator=generator)
        with torch.inference_mode():
            want, got = dense(x), sparse(x)
        diff = max(diff, (want - got).abs().max().item())
        rel = max(rel, ((want - got).abs().max() / want.abs().max()).item())
        times = compare_latency({"dense": dense, "sparse": sparse}, x, ROUNDS)
        speed[b] = times["dense"] / times["sparse"]
    return speed, diff, rel, decisions


def speedups(*, details: bool = False) -> dict:
    """Dense / sparse forward time of the three pruned models at batch 1 and 64 (see the module docstring).

    With `details`, also the per-layer decisions of `sparsify_` under `layers`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the single-core latency every other benchmark here reports
    try:
        mlp_layers = ("fc1", "fc2", "fc3", "fc4")
        models = {f"mlp10m_p{round(100 * s)}": (pruned("mlp-2048-2048-1024", (1, 32, 32), 1024,
                                                       dict.fromkeys(mlp_layers, s)), (1, 32, 32))
                  for s in (0.92, 0.97)}
        models["lenet"] = (pruned("lenet-300-100", (1, 28, 28), 10, LENET_SPARSITY), (1, 28, 28))
        result: dict = {"max_abs_diff": 0.0, "max_rel_diff": 0.0}
        layers = {}
        for key, (model, shape) in models.items():
            speed, diff, rel, layers[key] = compare(model, shape)
            result.update({f"{key}_b{b}": round(s, 3) for b, s in speed.items()})
            result["max_abs_diff"] = max(result["max_abs_diff"], diff)
            result["max_rel_diff"] = max(result["max_rel_diff"], rel)
        return {**result, "layers": layers} if details else result
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    found = speedups(details=True)
    print(json.dumps(found, indent=1))
    RESULTS.write_text(json.dumps(found, indent=2) + "\n")
