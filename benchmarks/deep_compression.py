"""Deep Compression on the full MNIST: LeNet-300-100 and LeNet-5, against the paper and a stock route.

    .venv/bin/python benchmarks/deep_compression.py [--data mnist:../shared/data/mnist]

Both models are trained from scratch and compressed with the built-in deep-compression recipe.
Writes benchmarks/results/deep_compression.json:
- "lenet-300-100", "lenet-5": the compression report of each model (the keys of `modelzip compress`);
- "stock_route": torch.nn.utils.prune + scikit-learn KMeans + lzma of the state_dict, on the same
  trained LeNet-300-100, at the same per-layer sparsity and bits, with the same retraining epochs;
- "huffman_bits_over_entropy": mean Huffman code length per coded symbol / the symbols' empirical
  entropy, over every stream of the LeNet-300-100 file ("huffman_stream_bits_over_entropy": the same
  with the streams' stored code-length tables counted too);
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
from modelzip.prune import ramp
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
    """What a user gets from off-the-shelf parts, matched to our run: same per-layer sparsity reached
    on the same prune -> retrain schedule, same codebook size, k-means without centroid training."""
    model = copy.deepcopy(model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    final = {row["name"]: 1 - row["kept_fraction"] for row in report["layers"]}
    steps = recipe.prune.steps
    for step in range(1, steps + 1):
        for name, module in layers.items():
            n = module.weight.numel()
            more = round(ramp(final[name], step, steps) * n) - round(ramp(final[name], step - 1, steps) * n)
            torch_prune.l1_unstructured(module, "weight", amount=more)  # counts among the unpruned
        fit(model, data.train, recipe.prune.retrain, desc=f"stock prune {step}/{steps}")
    bits = recipe.quantize.bits if isinstance(recipe.quantize.bits, int) else recipe.quantize.bits["linear"]
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


def huffman_overhead(blob: bytes) -> tuple[float, float]:
    """Huffman's bits over the empirical entropy of the symbols it codes, over every stream in the file.

    Returns (payload ratio, stream ratio): the mean code length per symbol over the entropy (Huffman's
    own redundancy), and the whole streams, code-length tables included, over the entropy.
    """
    header = codec.read_header(blob)
    _, tensors = codec.loads(blob)
    payload = stream = entropy = 0.0
    for name, entry in header["tensors"].items():
        if entry["encoding"] not in ("sparse", "dense"):
            continue
        flat = tensors[name].reshape(-1)
        bits = flat.view(np.uint32 if flat.itemsize == 4 else np.uint64)
        symbols = np.searchsorted(np.unique(bits), bits)
        streams = [(symbols, entry["value_bytes"])]
        if entry["encoding"] == "sparse":
            gaps, where = codec.relative_indices(np.flatnonzero(bits), entry["index_bits"])
            streams = [(symbols[where], entry["value_bytes"]), (gaps, entry["index_bytes"])]
        for coded, size in streams:
            counts = np.bincount(coded, minlength=257)
            counts[256] = 1  # end-of-block, coded once per stream
            payload += float(counts @ codec.code_lengths(counts))
            stream += 8 * size
            entropy += codec.entropy_bits(coded)
    return payload / entropy, stream / entropy


def load_time_ratio(model: torch.nn.Module, path: Path, tmp: Path, repeats: int = 300) -> float:
    dense = tmp / "dense.pt"
    torch.save(model.state_dict(), dense)  # the trained dense model, before any compression
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        t = time.perf_counter(); modelzip.load(path); ours.append(time.perf_counter() - t)
        t = time.perf_counter(); torch.load(dense, weights_only=True); theirs.append(time.perf_counter() - t)
    return statistics.median(ours) / statistics.median(theirs)


def lenet_arguments(doc: str, results: Path) -> argparse.Namespace:
    """The options of the benchmarks on the two LeNets: data, models, results file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=f"mnist:{SHARED_MNIST}")
    parser.add_argument("--models", nargs="+", default=["lenet-300-100", "lenet-5"])
    parser.add_argument("--out", type=Path, default=results)
    return parser.parse_args()


def main() -> int:
    args = lenet_arguments(__doc__, RESULTS)
    data = modelzip.load_data(args.data)
    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    tmp = args.out.parent / "files"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        recipe = load_recipe("deep-compression")
        model = trained(name, data, recipe)
        result = modelzip.compress(model, data, recipe, out=tmp / f"{name}.mzip")
        result.report["data"] = args.data.replace(str(SHARED_MNIST), "../shared/data/mnist")
        print_report(result.report)
        results[name] = result.report
        if name == "lenet-300-100":
            results["stock_route"] = stock_route(model, data, result.report, recipe)
            payload, stream = huffman_overhead(result.data)
            results["huffman_bits_over_entropy"] = payload
            results["huffman_stream_bits_over_entropy"] = stream
            results["load_time_ratio"] = load_time_ratio(model, tmp / f"{name}.mzip", tmp)
            print({k: results[k] for k in ("stock_route", "huffman_bits_over_entropy",
                                           "huffman_stream_bits_over_entropy", "load_time_ratio")})
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
