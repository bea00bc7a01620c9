"""Deep Compression on the full MNIST: LeNet-300-100 and LeNet-5, against the paper and a stock route.

    .venv/bin/python benchmarks/deep_compression.py [--data mnist:../shared/data/mnist]

Writes benchmarks/results/deep_compression.json:
- "lenet-300-100", "lenet-5": the compression report of each model (the keys of `modelzip compress`);
- "stock_route": torch.nn.utils.prune + scikit-learn KMeans + lzma of the state_dict, on the same
  trained LeNet-300-100, at the same per-layer sparsity and bits, with the same retraining epochs;
- "huffman_bits_over_entropy": Huffman-coded bits of every coded stream / their empirical entropy;
- "load_time_ratio": median time of modelzip.load of the LeNet-300-100 file / torch.load of its dense
  state_dict, interleaved in one run.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import lzma
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch.nn.utils import prune as torch_prune

import modelzip
from modelzip import codec
from modelzip.quantize import initial_centroids
from modelzip.recipes import load_recipe
from modelzip.report import print_report
from modelzip.train import evaluate, fit

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "deep_compression.json"
SHARED_MNIST = HERE.parent.parent / "shared" / "data" / "mnist"


def trained(name: str, data: modelzip.DataBundle, recipe: modelzip.Recipe) -> torch.nn.Module:
    torch.manual_seed(recipe.seed)
    model = modelzip.build(name, data.input_shape, data.num_classes)
    fit(model, data.train, recipe.train, test=data.test, desc=f"train {name}")
    return model


def stock_route(model: torch.nn.Module, data: modelzip.DataBundle, report: dict, recipe: modelzip.Recipe) -> dict:
    """What a user gets from off-the-shelf parts, matched to our run's per-layer sparsity and bits."""
    model = copy.deepcopy(model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = {row["name"]: row["kept_fraction"] for row in report["layers"]}
    for name, module in layers.items():
        torch_prune.l1_unstructured(module, "weight", amount=1 - kept[name])
    prune_cfg, quant_cfg = recipe.prune, recipe.quantize
    fit(model, data.train, prune_cfg.retrain.__class__(**{**vars(prune_cfg.retrain),
        "epochs": prune_cfg.retrain.epochs * prune_cfg.steps}), desc="stock retrain")
    bits = quant_cfg.bits if isinstance(quant_cfg.bits, int) else quant_cfg.bits["linear"]
    for module in layers.values():
        torch_prune.remove(module, "weight")
        w = module.weight.detach()
        nz = w != 0
        values = w[nz].double().numpy().reshape(-1, 1)
        start = initial_centroids(values.ravel(), 2 ** bits - 1, "linear").reshape(-1, 1)
        km = KMeans(2 ** bits - 1, init=start, n_init=1).fit(values)
        with torch.no_grad():
            module.weight[nz] = torch.from_numpy(km.cluster_centers_[km.labels_, 0]).float()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    packed = lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)
    return {"file_bytes": len(packed), "compression_ratio": report["dense_bytes"] / len(packed),
            "accuracy_after": evaluate(model, data.test)}


def huffman_overhead(blob: bytes) -> float:
    """Coded bits of every Huffman stream in the file over the empirical entropy of its symbols."""
    header = codec.read_header(blob)
    _, tensors = codec.loads(blob)
    coded = entropy = 0.0
    for name, entry in header["tensors"].items():
        if entry["encoding"] not in ("sparse", "dense"):
            continue
        flat = tensors[name].reshape(-1)
        bits = flat.view(np.uint32 if flat.itemsize == 4 else np.uint64)
        codebook = np.unique(bits)
        symbols = np.searchsorted(codebook, bits)
        if entry["encoding"] == "sparse":
            gaps, where = codec.relative_indices(np.flatnonzero(bits), entry["index_bits"])
            symbols = symbols[where]
            entropy += codec.entropy_bits(gaps)
            coded += 8 * entry["index_bytes"]
        entropy += codec.entropy_bits(symbols)
        coded += 8 * entry["value_bytes"]
    return coded / entropy


def load_time_ratio(model: torch.nn.Module, path: Path, tmp: Path, repeats: int = 300) -> float:
    dense = tmp / "dense.pt"
    torch.save(modelzip.strip(copy.deepcopy(model)).state_dict(), dense)
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        t = time.perf_counter(); modelzip.load(path); ours.append(time.perf_counter() - t)
        t = time.perf_counter(); torch.load(dense, weights_only=True); theirs.append(time.perf_counter() - t)
    return statistics.median(ours) / statistics.median(theirs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=f"mnist:{SHARED_MNIST}")
    parser.add_argument("--models", nargs="+", default=["lenet-300-100", "lenet-5"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = modelzip.load_data(args.data)
    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    tmp = args.out.parent / "files"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        recipe = load_recipe(HERE / "recipes" / f"{name}.yaml")
        model = trained(name, data, recipe)
        result = modelzip.compress(model, data, recipe, out=tmp / f"{name}.mzip")
        result.report["data"] = args.data.replace(str(SHARED_MNIST), "../shared/data/mnist")
        print_report(result.report)
        results[name] = result.report
        if name == "lenet-300-100":
            results["stock_route"] = stock_route(model, data, result.report, recipe)
            results["huffman_bits_over_entropy"] = huffman_overhead(result.data)
            results["load_time_ratio"] = load_time_ratio(model, tmp / f"{name}.mzip", tmp)
            print({k: results[k] for k in ("stock_route", "huffman_bits_over_entropy", "load_time_ratio")})
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
