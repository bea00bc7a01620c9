"""The runner of the benchmarks split into sections: run side by side (--only), merged into one JSON file."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

import modelzip
from deep_compression import SHARED_MNIST

Section = Callable[[modelzip.DataBundle], dict]  # data -> the keys it adds to the results file


def merge(into: dict, update: dict) -> dict:
    """`update` merged into `into`, nested dicts key by key: a section may add keys to another's entries."""
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(into.get(key), dict)
        into[key] = merge(into[key], value) if both else value
    return into


def run(doc: str, sections: dict[str, Section], results: Path) -> int:
    """Parse --data / --only / --out, run the chosen sections in order, merge each into the results file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=f"mnist:{SHARED_MNIST}")
    parser.add_argument("--only", nargs="+", choices=list(sections), default=list(sections))
    parser.add_argument("--out", type=Path, default=results)
    args = parser.parse_args()
    data = modelzip.load_data(args.data)
    torch.set_num_threads(1)  # one core each: sections run side by side, and latency is single-threaded
    for name in args.only:
        entry = sections[name](data)
        print(name, json.dumps(entry, indent=1))
        merged = json.loads(args.out.read_text()) if args.out.exists() else {}  # re-read: others may have written
        args.out.write_text(json.dumps(merge(merged, entry), indent=2) + "\n")
    return 0
