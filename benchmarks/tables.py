"""Print the README's results tables (Markdown) from benchmarks/results/*.json.

    .venv/bin/python benchmarks/tables.py
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"lenet-300-100": ("1.64% -> 1.58%", "40x"), "lenet-5": ("0.80% -> 0.74%", "39x")}


def main() -> None:
    dc = json.loads((RESULTS / "deep_compression.json").read_text())
    print("| model (full MNIST) | error before -> after | dense -> file | ratio | paper |")
    print("|---|---|---|---|---|")
    for name in ("lenet-300-100", "lenet-5"):
        r = dc[name]
        print(f"| {name} | {100 * (1 - r['accuracy_before']):.2f}% -> {100 * (1 - r['accuracy_after']):.2f}% "
              f"| {r['dense_bytes']:,} B -> {r['file_bytes']:,} B | **{r['compression_ratio']:.1f}x** "
              f"| {PAPER[name][0]}, {PAPER[name][1]} |")
    for spec in sorted(RESULTS.glob("mnist5k-*.json")):
        r = json.loads(spec.read_text())
        print(f"| {r['model']} (built-in mnist5k, CLI) | {100 * (1 - r['accuracy_before']):.2f}% -> "
              f"{100 * (1 - r['accuracy_after']):.2f}% | {r['dense_bytes']:,} B -> {r['file_bytes']:,} B "
              f"| **{r['compression_ratio']:.1f}x** | |")
    print()
    for name in ("lenet-300-100", "lenet-5"):
        print(f"{name}, per layer:\n")
        print("| layer | weights | kept | weight bits P+Q / Huffman | index bits P+Q / Huffman | bytes | ratio |")
        print("|---|---|---|---|---|---|---|")
        for row in dc[name]["layers"]:
            index = f"{row['index_bits_pq']} / {row['index_bits']:.2f}" if row["index_bits"] else "- (dense)"
            print(f"| {row['name']} | {row['weights']:,} | {100 * row['kept_fraction']:.1f}% "
                  f"| {row['weight_bits_pq']} / {row['weight_bits']:.2f} | {index} | {row['bytes']:,} "
                  f"| {row['compression_ratio']:.1f}x |")
        print()
    stock, ours = dc["stock_route"], dc["lenet-300-100"]
    print("| LeNet-300-100, same sparsity and bits | file | ratio | accuracy |")
    print("|---|---|---|---|")
    print(f"| stock: torch.nn.utils.prune + sklearn KMeans + lzma(state_dict) | {stock['file_bytes']:,} B "
          f"| {stock['compression_ratio']:.1f}x | {100 * stock['accuracy_after']:.2f}% |")
    print(f"| modelzip deep-compression | {ours['file_bytes']:,} B | {ours['compression_ratio']:.1f}x "
          f"| {100 * ours['accuracy_after']:.2f}% |")
    print(f"\nmodelzip's file is {stock['file_bytes'] / ours['file_bytes']:.2f}x smaller. Huffman: "
          f"{dc['huffman_bits_over_entropy']:.4f}x the entropy per symbol "
          f"({dc['huffman_stream_bits_over_entropy']:.4f}x with the code tables). "
          f"`modelzip.load` takes {dc['load_time_ratio']:.2f}x the time of `torch.load` of the dense state_dict.")


if __name__ == "__main__":
    main()
