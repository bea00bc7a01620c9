"""Fuzzing the reader: mutated .mzip files in memory-capped worker processes, and decompression bombs.

    .venv/bin/python benchmarks/fuzz.py                  # 200,000 mutations on 2 workers: a few minutes
    .venv/bin/python benchmarks/fuzz.py --cases 2000     # a quick rate check

Seeds (built, not trained, in a second): LeNet-300-100 pruned to 92% with 5-bit k-means sharing (Deep
Compression's pipeline: sparse, dense and raw tensors); an MLP with int4 codes and an int8 asymmetric layer
(coded layers, uint8 and int8 codes, dense-packed and Huffman-coded); LeNet-300-100 factorized to rank 1/4 of
its weights; a channel-pruned VGG-BN with folded batch norms, a factorized and a hashed layer (resize, fold-bn,
factorize and hash edits). Case i mutates seed and mutation drawn from random.Random(i) (modelzip.codec.mutate:
byte and bit flips, truncations, splices, section edits and header JSON edits with the CRCs recomputed) and
calls `modelzip.loads` in a worker whose address space is capped at its footprint + 1 GiB (RLIMIT_AS). Outcomes:
- loaded: `loaded_unchanged` (the original's weights, bit for bit: the mutation changed no meaning, e.g. an
  informational header field; `loaded_unchanged_fields` counts them by field) or `loaded_changed` (a valid
  file with other weights: only a checksum-recomputing mutation can make one); `unchecked_loaded` counts files
  loaded after a mutation that did not recompute the checksums (corruption accepted: must be 0);
- library_errors: modelzip's own error classes (by class in `library_error_classes`);
- other_exceptions: anything else (MemoryError included), with samples;
- hangs: no answer within CASE_TIMEOUT seconds (the worker is killed and restarted after the case);
- crashes: the worker died.
Chunks of CHUNK cases are checkpointed in --state, so a killed run resumes where it stopped.

Bombs: files that declare more than the reader's limits (256 MiB decoded for a small file, the schema's sizes,
the header's size and nesting), each refused in a fresh process; `bomb_max_seconds` and `bomb_max_rss_bytes` are
the worst time and peak-RSS growth to refuse one (VmHWM reset before the call).

Results are merged into benchmarks/results/fuzz.json (keys written by other benchmarks are kept).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import re
import resource
import time
import traceback
import zlib
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

import modelzip
from modelzip.atomic import atomic_write
from modelzip.codec import huffman
from modelzip.codec.mutate import CHECKED, MUTATIONS, join, split
from modelzip.io import same_weights

RESULTS = Path(__file__).parent / "results" / "fuzz.json"
KINDS = {"header": 4, "section": 2, "byte": 1, "bit": 1, "truncate": 1, "splice": 1}  # relative frequencies
CHUNK = 5000  # cases per checkpoint
CASE_TIMEOUT = 10.0  # seconds; a load takes milliseconds
STARTUP = 120.0  # seconds a fresh worker may take to import torch and load the seeds
HEADROOM = 1 << 30  # address space a worker may add to its footprint
SAMPLES = 20


def seed_files() -> dict[str, bytes]:
    """The seed files, by name (see the module docstring)."""
    from modelzip.lowrank import factorize_
    from modelzip.quantize import QuantSpec, hash_, quantize_weights_
    from modelzip.structured import ChannelPruneConfig, fold_batch_norms_, prune_channels_

    torch.manual_seed(0)
    deep = modelzip.build("lenet-300-100")
    modelzip.prune_(deep, 0.92)
    modelzip.quantize_(deep, 5)
    coded = modelzip.build("mlp-64-32", (1, 8, 8), 10)
    quantize_weights_(coded, {"linear": QuantSpec(bits=4)}, layers={"fc1": QuantSpec(bits=8, symmetric=False)})
    low = modelzip.build("lenet-300-100", (1, 8, 8), 10)
    factorize_(low, 0.25)
    slim = modelzip.build("vgg-bn", (1, 16, 16), 10, widths=[8, "M", 16], hidden=32)
    for norm in (slim.norm1, slim.norm2, slim.norm_fc1):
        norm.weight.data.uniform_()  # fresh scales all tie at 1
    prune_channels_(slim, (1, 16, 16), ChannelPruneConfig(amount=0.5))
    fold_batch_norms_(slim.eval())
    factorize_(slim, layers={"fc1": 0.5})
    hash_(slim, layers={"fc2": 0.5})
    models = {"lenet-300-100 pruned + 5-bit sharing": deep, "mlp int4 + int8 codes": coded,
              "lenet-300-100 low-rank": low, "vgg-bn resized + folded + factorized + hashed": slim}
    return {name: modelzip.dumps(model) for name, model in models.items()}


def case(i: int, seeds: int) -> tuple[int, int, str, random.Random]:
    """Seed, donor, mutation and random source of case i: the same on every run."""
    rng = random.Random(i)
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    return rng.randrange(seeds), rng.randrange(seeds), kind, rng


def _cap_memory() -> int:
    """Cap this process's address space at its present size + HEADROOM; returns the cap."""
    size = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + HEADROOM, size + HEADROOM))
    return size + HEADROOM


def worker(conn: Connection, files: list[bytes]) -> None:
    """Run the ranges of cases the parent sends: ("cap", bytes) first, ("case", i, outcome, detail) per case and
    ("done",) after each range."""
    torch.set_num_threads(1)
    originals = [modelzip.loads(data) for data in files]
    conn.send(("cap", _cap_memory()))
    while (task := conn.recv()) is not None:
        for i in range(*task):
            seed, donor, kind, rng = case(i, len(files))
            data, description = MUTATIONS[kind](files[seed], rng, files[donor])
            try:
                loaded = modelzip.loads(data)
                outcome = "loaded_unchanged" if same_weights(loaded, originals[seed]) else "loaded_changed"
                detail: Any = description
            except modelzip.ModelzipError as exc:
                outcome, detail = "library_error", type(exc).__name__
            except Exception as exc:  # what the benchmark is looking for
                outcome = "other_exception"
                detail = {"case": i, "kind": kind, "mutation": description, "exception": type(exc).__name__,
                          "message": str(exc)[:300], "where": traceback.format_exc().splitlines()[-4:-1]}
            conn.send(("case", i, outcome, detail))
        conn.send(("done",))


Chunk = tuple[int, int]


class Slot:
    """One worker process, the chunk it works on and the next case of the chunk it runs."""

    def __init__(self, files: list[bytes]) -> None:
        self.conn, child = mp.get_context("spawn").Pipe()
        self.process = mp.get_context("spawn").Process(target=worker, args=(child, files), daemon=True)
        self.process.start()
        child.close()
        self.chunk: Chunk | None = None
        self.next = 0
        self.deadline = time.monotonic() + STARTUP

    def give(self, chunk: Chunk, start: int) -> None:
        """Run cases [start, chunk's end) of `chunk`."""
        self.chunk, self.next = chunk, start
        self.conn.send((start, chunk[1]))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()


def _tally(summary: dict, i: int, kind: str, outcome: str, detail: Any) -> None:
    summary["by_kind"].setdefault(kind, Counter())[outcome] += 1
    summary["outcomes"][outcome] += 1
    if outcome == "library_error":
        summary["library_error_classes"][detail] += 1
    elif outcome == "loaded_unchanged" and kind == "header":
        summary["loaded_unchanged_fields"][_field(detail)] += 1
    elif outcome == "loaded_changed":
        summary["loaded_changed_kinds"][kind] += 1
    if outcome.startswith("loaded") and kind not in CHECKED:
        summary["unchecked_loaded"].append({"case": i, "kind": kind, "mutation": detail})
    if outcome in ("other_exception", "hang", "crash"):
        summary[outcome].append(detail)


def _field(description: str) -> str:
    """The header field a mutation touched, tensor names and list indices generalized (tensors.*.nonzero)."""
    path = description.split(" ")[2]
    return re.sub(r"\.\d+(?=\.|$)", "[]", re.sub(r"^tensors\.[^.]+(\.\w+)*?\.(\w+)$", r"tensors.*.\2", path))


def _new_summary() -> dict:
    return {"outcomes": Counter(), "by_kind": {}, "library_error_classes": Counter(),
            "loaded_unchanged_fields": Counter(), "loaded_changed_kinds": Counter(), "unchecked_loaded": [],
            "other_exception": [], "hang": [], "crash": []}


def fuzz(files: list[bytes], total: int, workers: int, state: Path) -> dict:
    """Run cases [0, total) in chunks on `workers` processes; chunks done in `state` are not run again."""
    done: dict[str, dict] = json.loads(state.read_text()) if state.exists() else {}
    pending = [(s, min(s + CHUNK, total)) for s in range(0, total, CHUNK) if f"{s}:{min(s + CHUNK, total)}" not in done]
    summaries = {chunk: _new_summary() for chunk in pending}
    slots = [Slot(files) for _ in range(min(workers, len(pending)))]
    for slot in slots:
        chunk = pending.pop(0)
        slot.give(chunk, chunk[0])
    cap, start = 0, time.monotonic()
    while slots:
        ready = wait([s.conn for s in slots], timeout=max(0.0, min(s.deadline for s in slots) - time.monotonic()))
        for slot in [s for s in slots if s.conn in ready]:
            try:
                message = slot.conn.recv()
            except EOFError:
                _restart(slots, slot, files, summaries, "crash")
                continue
            slot.deadline = time.monotonic() + CASE_TIMEOUT
            if message[0] == "cap":
                cap = message[1]
            elif message[0] == "case":
                _, i, outcome, detail = message
                _tally(summaries[slot.chunk], i, case(i, len(files))[2], outcome, detail)
                slot.next = i + 1
            else:  # done: checkpoint the chunk, take the next
                done[f"{slot.chunk[0]}:{slot.chunk[1]}"] = json.loads(json.dumps(summaries.pop(slot.chunk)))
                atomic_write(state, lambda f: f.write(json.dumps(done).encode()))
                print(f"{len(done)} of {-(-total // CHUNK)} chunks, {time.monotonic() - start:.0f} s", flush=True)
                if pending:
                    chunk = pending.pop(0)
                    slot.give(chunk, chunk[0])
                else:
                    slot.conn.send(None)
                    slot.process.join()
                    slots.remove(slot)
        for slot in [s for s in slots if time.monotonic() > s.deadline]:
            _restart(slots, slot, files, summaries, "hang")
    return _merge([done[f"{s}:{min(s + CHUNK, total)}"] for s in range(0, total, CHUNK)], total, cap,
                  time.monotonic() - start)


def _restart(slots: list[Slot], slot: Slot, files: list[bytes], summaries: dict, what: str) -> None:
    """Record the case a worker hung or died on, and give the rest of its chunk to a fresh worker."""
    slot.kill()
    slots.remove(slot)
    i = slot.next
    seed, donor, kind, rng = case(i, len(files))
    description = MUTATIONS[kind](files[seed], rng, files[donor])[1]
    detail = {"case": i, "kind": kind, "mutation": description, "exit": slot.process.exitcode}
    _tally(summaries[slot.chunk], i, kind, what, detail)
    fresh = Slot(files)
    fresh.give(slot.chunk, i + 1)  # an empty rest answers "done" at once
    slots.append(fresh)


def _merge(chunks: list[dict], total: int, cap: int, seconds: float) -> dict:
    """The figures of all chunks together."""
    outcomes, kinds, errors, fields, changed = Counter(), {}, Counter(), Counter(), Counter()
    lists: dict[str, list] = {"unchecked_loaded": [], "other_exception": [], "hang": [], "crash": []}
    for chunk in chunks:
        outcomes.update(chunk["outcomes"])
        errors.update(chunk["library_error_classes"])
        fields.update(chunk["loaded_unchanged_fields"])
        changed.update(chunk["loaded_changed_kinds"])
        for kind, counts in chunk["by_kind"].items():
            kinds.setdefault(kind, Counter()).update(counts)
        for key in lists:
            lists[key] += chunk[key]
    assert sum(outcomes.values()) == total, (sum(outcomes.values()), total)
    return {
        "mutations": total,
        "loaded": outcomes["loaded_unchanged"] + outcomes["loaded_changed"],
        "loaded_unchanged": outcomes["loaded_unchanged"],
        "loaded_changed": outcomes["loaded_changed"],
        "unchecked_loaded": len(lists["unchecked_loaded"]),
        "library_errors": outcomes["library_error"],
        "other_exceptions": outcomes["other_exception"],
        "hangs": outcomes["hang"],
        "crashes": outcomes["crash"],
        "library_error_classes": dict(errors.most_common()),
        "by_kind": {kind: dict(counts) for kind, counts in sorted(kinds.items())},
        "loaded_unchanged_fields": dict(fields.most_common(40)),
        "loaded_changed_kinds": dict(changed),
        "other_exception_samples": lists["other_exception"][:SAMPLES],
        "other_exception_classes": dict(Counter(e["exception"] for e in lists["other_exception"]).most_common()),
        "hang_cases": lists["hang"][:SAMPLES],
        "crash_cases": lists["crash"][:SAMPLES],
        "unchecked_loaded_cases": lists["unchecked_loaded"][:SAMPLES],
        "worker_memory_cap_bytes": cap,
        "case_timeout_s": CASE_TIMEOUT,
        "seconds": round(seconds, 1),
    }


def bombs(base: bytes) -> dict[str, bytes]:
    """Files declaring more than the reader's limits, each CRC-valid (see the module docstring)."""
    empty = huffman.encode(np.zeros(0, np.uint8))

    def tensor(dtype: str, count: int, entry: dict, sections: list[bytes]) -> bytes:
        header = {"meta": {}, "tensors": {"t": {"dtype": dtype, "shape": [count], "count": count, **entry,
                                                "sections": [0, len(sections)]}}, "sections": [{} for _ in sections]}
        return join(header, sections)

    constant = {"encoding": "dense-packed", "codebook_size": 1, "value_bytes": 0}
    found = {
        "dense-packed, codebook 1, 1e8 float32": tensor("float32", 10**8, {**constant, "codebook_bytes": 4},
                                                        [bytes(4), b""]),
        "dense-packed, codebook 1, 2^31 float32": tensor("float32", 2**31, {**constant, "codebook_bytes": 4},
                                                         [bytes(4), b""]),
        "dense-packed, codebook 1, 2^31 int8": tensor("int8", 2**31, {**constant, "codebook_bytes": 1},
                                                      [bytes(1), b""]),
        "sparse, 0 entries, 2^40 float32": tensor(
            "float32", 2**40, {"encoding": "sparse", "codebook_size": 1, "codebook_bytes": 4, "entries": 0,
                               "index_bytes": len(empty), "value_bytes": len(empty)}, [bytes(4), empty, empty]),
        "sparse-raw, 0 entries, 2^40 float32": tensor(
            "float32", 2**40, {"encoding": "sparse-raw", "entries": 0, "index_bytes": len(empty), "value_bytes": 0},
            [empty, b""]),
        "dense (Huffman), 1e8 symbols in 12 bytes": tensor(
            "float32", 10**8, {"encoding": "dense", "codebook_size": 1, "codebook_bytes": 4, "value_bytes": 12},
            [bytes(4), bytes(12)]),
        "raw, 1e8 float32 in 4 bytes": tensor("float32", 10**8, {"encoding": "raw", "raw_bytes": 4}, [bytes(4)]),
    }
    arch_bombs = {
        "resize fc1 to [2^40, 2^40]": {"edits": [{"op": "resize", "module": "fc1",
                                                  "shapes": {"weight": [2**40, 2**40]}}]},
        "resize fc1 to [2^16, 2^16] (within the schema)": {"edits": [{"op": "resize", "module": "fc1",
                                                                      "shapes": {"weight": [2**16, 2**16]}}]},
        "num_classes 2^24": {"kwargs": {"input_shape": [1, 28, 28], "num_classes": 2**24}},
        "input_shape [1, 2^24, 2^24]": {"kwargs": {"input_shape": [1, 2**24, 2**24], "num_classes": 10}},
        "name mlp-16777216-16777216": {"name": "mlp-16777216-16777216"},
        "hashed fc1 of 2^23 x 300 virtual weights": {
            "kwargs": {"input_shape": [1, 4096, 2048], "num_classes": 10},
            "edits": [{"op": "hash", "module": "fc1", "buckets": 300 * 784, "seed": 0}]},
    }
    header, sections = split(base)
    for name, change in arch_bombs.items():
        edited = json.loads(json.dumps(header))
        edited["meta"]["arch"].update(change)
        if name.startswith("hashed"):  # the hashed layer's storage replaces fc1's weight in the file
            weight = edited["tensors"].pop("fc1.weight")
            edited["tensors"]["fc1.shared"] = {**weight, "shape": [300 * 784]}
        found[f"arch: {name}"] = join(edited, list(sections))
    deep = b'{"meta":' + b"[" * 600 + b"]" * 600 + b',"tensors":{},"sections":[]}'
    zeros = b'{"meta":{"x":[' + b"0," * (30 << 20) + b'0]},"tensors":{},"sections":[]}'
    for name, text in {"header nested 600 deep": deep, "header of 60 MiB JSON in 61 kB": zeros}.items():
        packed = zlib.compress(text, 9)
        found[name] = base[:6] + len(packed).to_bytes(4, "little") + zlib.crc32(packed).to_bytes(4, "little") + packed
    return found


def _refuse(data: bytes, warm: bytes) -> dict:
    """In a fresh process: the error, seconds and peak-RSS growth of loading a bomb (after a warm-up load)."""
    modelzip.loads(warm)
    status = Path("/proc/self/status")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to the present RSS
    before = int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))
    start = time.perf_counter()
    try:
        modelzip.loads(data)
        error, message = None, "loaded"
    except Exception as exc:
        error, message = exc, str(exc)[:200]
    seconds = time.perf_counter() - start
    peak = int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1))
    return {"error": type(error).__name__ if error else None, "library_error": isinstance(error, modelzip.ModelzipError),
            "message": message, "seconds": round(seconds, 5), "rss_bytes": (peak - before) * 1024}


def measure_bombs(files: dict[str, bytes]) -> dict:
    base = files["lenet-300-100 pruned + 5-bit sharing"]
    found = {}
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for name, data in bombs(base).items():
            found[name] = {"file_bytes": len(data), **pool.apply(_refuse, (data, base))}
            print(f"{name}: {found[name]}", flush=True)
    return {"bombs": found, "bomb_max_seconds": max(b["seconds"] for b in found.values()),
            "bomb_max_rss_bytes": max(b["rss_bytes"] for b in found.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--state", type=Path, default=Path("/tmp/modelzip-fuzz-state.json"),
                        help="chunk checkpoints: delete it to start over")
    args = parser.parse_args()
    files = seed_files()
    figures = {**measure_bombs(files), **fuzz(list(files.values()), args.cases, args.workers, args.state)}
    figures["seeds"] = {name: len(data) for name, data in files.items()}
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, (dict, list))}, indent=1))
    merged = {**(json.loads(RESULTS.read_text()) if RESULTS.exists() else {}), **figures}
    atomic_write(RESULTS, lambda f: f.write((json.dumps(merged, indent=2) + "\n").encode()))


if __name__ == "__main__":
    main()
