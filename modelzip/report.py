"""The compression report: per layer like Table 2 of Deep Compression, totals counting every byte.

Built from the .mzip header alone, so `inspect` and `compress` print the same figures.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from rich.console import Console
from rich.table import Table

from . import codec
from .atomic import atomic_write
from .models import arch_label
from .profile import print_comparison


def layer_rows(header: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer (tensors grouped by module name): sizes, kept fraction, bits per weight and index.

    `weight_bits` and `index_bits` are the Huffman-coded bits per stored weight; the `_pq` twins are
    the fixed widths after pruning and quantization, before Huffman coding (the paper's two columns).
    """
    sections = header["sections"]
    groups: OrderedDict[str, list[tuple[str, dict[str, Any]]]] = OrderedDict()
    for name, entry in header["tensors"].items():
        groups.setdefault(name.rpartition(".")[0] or name, []).append((name, entry))
    rows = []
    for layer, members in groups.items():
        first, count = zip(*(entry["sections"] for _, entry in members))
        stored = sum(sections[i]["length"] for f, n in zip(first, count) for i in range(f, f + n))
        _, main = max(members, key=lambda m: m[1]["count"])
        elements = sum(entry["count"] for _, entry in members)
        rows.append({
            "name": layer,
            "weights": main["count"],
            "kept_fraction": main["nonzero"] / max(main["count"], 1),
            "encoding": main["encoding"],
            "weight_bits_pq": _fixed_value_bits(main),
            "weight_bits": _coded_bits(main, "value_bytes"),
            "index_bits_pq": main.get("index_bits", 0),
            "index_bits": _coded_bits(main, "index_bytes"),
            "bytes": stored,
            "compression_ratio": 4 * elements / max(stored, 1),
        })
    return rows


def build_report(blob: bytes, *, dense_bytes: int) -> dict[str, Any]:
    """The JSON report of a .mzip file's bytes against the model's dense fp32 size."""
    header = codec.read_header(blob)
    meta = header["meta"]
    arch = meta.get("arch") or {}
    return {
        "model": arch_label(arch) or "unknown",
        "data": meta.get("data"),
        "recipe": meta.get("recipe"),
        "metric": meta.get("metric"),
        "metric_before": meta.get("metric_before"),
        "metric_after": meta.get("metric_after"),
        "accuracy_before": meta.get("accuracy_before"),
        "accuracy_after": meta.get("accuracy_after"),
        "dense_bytes": dense_bytes,
        "file_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),  # pairs the report with the file it describes
        "compression_ratio": dense_bytes / len(blob),
        "layers": layer_rows(header),
    }


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The per-layer table and the totals, as a rich table on the terminal."""
    console = console or Console()
    if not console.is_terminal:  # pipes and logs get the full table, not one squeezed to 80 columns
        console.width = max(console.width, 110)
    table = Table(title=f"{report['model']} on {report['data']} — {report['recipe']}")
    for column in ("layer", "weights", "kept", "weight bits\nP+Q", "weight bits\nHuffman",
                   "index bits\nP+Q", "index bits\nHuffman", "bytes", "ratio"):
        table.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    for row in report["layers"]:
        table.add_row(row["name"], f"{row['weights']:,}", f"{row['kept_fraction']:.1%}",
                      str(row["weight_bits_pq"]), f"{row['weight_bits']:.2f}", str(row["index_bits_pq"] or "-"),
                      f"{row['index_bits']:.2f}" if row["index_bits"] else "-", f"{row['bytes']:,}",
                      f"{row['compression_ratio']:.1f}x")
    table.add_row("whole file", "", "", "", "", "", "", f"{report['file_bytes']:,}",
                  f"{report['compression_ratio']:.1f}x", style="bold")
    console.print(table)
    sizes = f"{report['dense_bytes']:,} dense fp32 bytes -> {report['file_bytes']:,} bytes on disk"
    before, after = report.get("accuracy_before"), report.get("accuracy_after")
    name = report.get("metric")
    if before is not None and after is not None:
        console.print(f"accuracy {before:.2%} -> {after:.2%} ({100 * (after - before):+.2f} points); {sizes}")
    elif name is not None and report.get("metric_before") is not None:
        before, after = report["metric_before"], report["metric_after"]
        console.print(f"{name} {before:.4f} -> {after:.4f} ({after - before:+.4f}); {sizes}")
    else:
        console.print(f"no metric measured (give test data or a metric); {sizes}")
    if "structure" in report:
        print_comparison(report["structure"], console)


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """The report as indented JSON, written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode() + b"\n"))


def _fixed_value_bits(entry: dict[str, Any]) -> int:
    return entry.get("value_bits_fixed", 8 * np.dtype(entry["dtype"]).itemsize)


def _coded_bits(entry: dict[str, Any], key: str) -> float:
    """Bits per stored weight of one stream; a raw tensor spends its full width on every element."""
    if entry["encoding"] == "raw":
        return 8 * entry["raw_bytes"] / max(entry["count"], 1) if key == "value_bytes" else 0.0
    return 8 * entry.get(key, 0) / max(entry.get("entries", entry["count"]), 1)
