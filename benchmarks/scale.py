"""Scale: time and memory of prune -> 5-bit k-means -> save -> load on MLPs of 0.27M to 40M weights,
beside torch.save / torch.load; exact 1-D k-means; sparse execution; two-process training.

    make scale        # installs kmeans1d (the exact optimum's yardstick), then runs this
    .venv/bin/python benchmarks/scale.py [--only sizes kmeans sparse ddp] [--force]

Each stage runs in this process with the peak-RSS mark reset before it (/proc/self/clear_refs), so
`*_extra_rss_bytes` is the stage's own peak above what was resident when it started. One thread.
Resumable: the sizes already in the results file and the exact k-means optimum (minutes) are kept
unless --force; each size is written as it finishes. Writes benchmarks/results/scale.json with the keys issue 14 names.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import modelzip
from modelzip.layers import plain_state_dict
from modelzip.prune import prune_
from modelzip.quantize import kmeans_codebook, quantize_

RESULTS = Path(__file__).parent / "results" / "scale.json"
MODELS = {  # ~weights: builder name (784 inputs, 10 classes)
    "0.27M": "mlp-300-100", "2.5M": "mlp-1600-800", "10M": "mlp-2048-2048-2048", "40M": "mlp-4300-4300-4300",
}
SPARSITY, BITS = 0.92, 5
# glibc returns a freed block above this size to the system at once (no adaptive threshold), so the
# RSS a stage starts from holds no freed memory for it to reuse unseen
MMAP_THRESHOLD = str(128 << 10)
REPEATS = {"0.27M": 7, "2.5M": 5, "10M": 5, "40M": 3}  # interleaved save/load repeats (medians)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def measured(step: Callable[[], object]) -> tuple[object, float, int]:
    """(result, seconds, peak RSS above the RSS at the start) of one call."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    out = step()
    seconds = time.perf_counter() - start
    return out, seconds, _status("VmHWM") - before


def one_size(label: str, folder: Path) -> dict:
    torch.manual_seed(0)
    model = modelzip.build(MODELS[label])
    params = sum(p.numel() for p in model.parameters())
    _, prune_s, prune_rss = measured(lambda: prune_(model, SPARSITY))
    _, kmeans_s, kmeans_rss = measured(lambda: quantize_(model, BITS))
    path, torch_path = folder / f"{label}.mzip", folder / f"{label}.pt"
    dense = plain_state_dict(model)
    times: dict[str, list[float]] = {"save": [], "load": [], "torch_save": [], "torch_load": []}
    rss: dict[str, int] = {}
    steps = {
        "save": lambda: modelzip.save(model, path),
        "torch_save": lambda: torch.save(dense, torch_path),
        "load": lambda: modelzip.load(path),
        "torch_load": lambda: torch.load(torch_path),
    }
    for step in steps.values():  # warm-up, not timed: the first call of each pays one-off page and cache costs
        step()
    for _ in range(REPEATS[label]):  # interleaved: the machine's drift hits all four alike
        for name, step in steps.items():
            _, seconds, extra = measured(step)
            times[name].append(seconds)
            rss[name] = max(rss.get(name, 0), extra)
    loaded = modelzip.load(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x)), "the loaded model must compute what was saved"
    entry = {"label": label, "params": params, "fp32_bytes": 4 * params, "file_bytes": path.stat().st_size,
             "prune_s": prune_s, "kmeans_s": kmeans_s, "prune_extra_rss_bytes": prune_rss,
             "kmeans_extra_rss_bytes": kmeans_rss}
    for name, values in times.items():
        entry[f"{name}_s"] = statistics.median(values)
        entry[f"{name}_extra_rss_bytes"] = rss[name]
    return entry


def sizes_section(results: dict, force: bool) -> None:
    done = {entry["label"]: entry for entry in results.get("sizes", []) if not force}
    with tempfile.TemporaryDirectory() as folder:
        for label in MODELS:
            if label not in done:
                done[label] = one_size(label, Path(folder))
                print(json.dumps(done[label]))
                results["sizes"] = [done[name] for name in MODELS if name in done]
                save(results)
    big = done["40M"]
    results["save_over_torch_save_40m"] = big["save_s"] / big["torch_save_s"]
    results["load_over_torch_load_40m"] = big["load_s"] / big["torch_load_s"]
    results["save_extra_rss_over_fp32_40m"] = big["save_extra_rss_bytes"] / big["fp32_bytes"]
    results["growth_exponents"] = growth(list(done.values()))


def growth(entries: list[dict]) -> dict[str, float]:
    """Slope of log(seconds) on log(weights) from 2.5M to 40M, per stage (1.0 = linear; the 0.27M
    model is left out: its times are fixed costs)."""
    big = [e for e in entries if e["params"] > 1e6]
    logs = np.log([e["params"] for e in big])
    return {stage: float(np.polyfit(logs, np.log([e[f"{stage}_s"] for e in big]), 1)[0])
            for stage in ("prune", "kmeans", "save", "load", "torch_save", "torch_load")}


def kmeans_section(results: dict, force: bool) -> None:
    """One 10M-weight layer (bell-shaped, like trained weights), 32 centroids: seconds and the
    within-cluster error over the exact optimum (kmeans1d's O(kn) dynamic program)."""
    values = np.random.default_rng(0).normal(0, 0.02, 10_000_000).astype(np.float32)
    weights = torch.from_numpy(values)
    (centroids, assignment), seconds, _ = measured(lambda: kmeans_codebook(weights, 2 ** BITS))
    x = values.astype(np.float64)
    sse = float(((x - centroids.double().numpy()[assignment.numpy()]) ** 2).sum())
    previous = results.get("kmeans_10m", {})
    optimum = None if force else previous.get("optimum_sse")
    if optimum is None:
        import kmeans1d  # benchmark-only dependency (make scale installs it)
        start = time.perf_counter()
        clusters, means = kmeans1d.cluster(x, 2 ** BITS)
        means = np.asarray(means)
        optimum = float(((x - means[np.asarray(clusters)]) ** 2).sum())
        previous = {"optimum_seconds": time.perf_counter() - start}
    results["kmeans_10m"] = {**previous, "seconds": seconds, "sse": sse, "optimum_sse": optimum,
                             "sse_over_optimum": sse / optimum}


def sparse_section(results: dict, force: bool) -> None:
    from sparse_speed import speedups
    results["sparse"] = speedups()


def ddp_section(results: dict, force: bool) -> None:
    from ddp import ddp_figures
    results["ddp"] = ddp_figures()


SECTIONS = {"sizes": sizes_section, "kmeans": kmeans_section, "sparse": sparse_section, "ddp": ddp_section}
KEYS = {"sizes": "sizes", "kmeans": "kmeans_10m", "sparse": "sparse", "ddp": "ddp"}


def save(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # before any allocation: re-run with it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--force", action="store_true", help="recompute the sizes and the optimum already in the file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.only:
        SECTIONS[name](results, args.force)
        save(results)
        print(name, json.dumps(results[KEYS[name]], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
