"""Bad command lines: every one must fail in one line on stderr, exit status 2, no traceback, and leave
an existing output file as it was.

    .venv/bin/python benchmarks/cli_inputs.py

Runs each case as its own `python -m modelzip` process (two at a time). Merges `cli_cases`,
`cli_tracebacks`, `cli_failures` (the cases that broke a rule, with what they printed) into
benchmarks/results/fuzz.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import modelzip

RESULTS = Path(__file__).parent / "results" / "fuzz.json"
OLD = b"an earlier output, which a failed run must leave alone"


def fixtures(root: Path) -> dict[str, str]:
    """The files and folders the cases name."""
    torch.manual_seed(0)
    good = root / "good.mzip"
    modelzip.save(modelzip.build("lenet-300-100"), good)
    five = root / "lenet5.mzip"
    modelzip.save(modelzip.build("lenet-5"), five, meta={"input_shape": [1, 28, 28]})
    weights = root / "lenet5.pt"
    torch.save(modelzip.build("lenet-5").state_dict(), weights)
    blob = good.read_bytes()
    files = {"garbage.mzip": b"MZIP\x01\x00garbage", "empty.mzip": b"", "truncated.mzip": blob[: len(blob) // 2],
             "text.txt": b"hello\n", "bad.pt": b"not a pickle", "bad.yaml": b"prune: [1, 2\n",
             "unknown.yaml": b"prune: {sparsty: 0.5}\n", "negative.yaml": b"prune: {sparsity: -0.5}\n",
             "deep.yaml": b"[" * 5000 + b"]" * 5000, "list.yaml": b"- 1\n- 2\n", "bits.yaml": b"quantize: {bits: x}\n",
             "bits9.yaml": b"quantize: {bits: 9}\n", "steps.yaml": b"prune: {steps: 0}\n",
             "lr.yaml": b"train: {lr: .nan}\n", "layers.yaml": b"prune: {layers: {fc1: 2}}\n"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "folder").mkdir()
    (root / "old.mzip").write_bytes(OLD)
    return {"good": str(good), "five": str(five), "w5": str(weights), "dir": str(root / "folder"),
            "old": str(root / "old.mzip"), "file": str(root / "text.txt"),
            **{name.split(".")[0]: str(root / name) for name in files}}


def cases(f: dict[str, str]) -> list[list[str]]:
    comp = ["compress", "--model", "lenet-300-100", "--data", "digits", "--recipe", "int8", "--pretrained"]
    out = ["--out", f["old"]]
    return [
        # command lines argparse refuses
        [], ["frobnicate"], ["compress"], ["compress", "--model", "lenet-300-100"], [*comp, *out, "--bogus"],
        [*comp, *out, "--seed", "x"], [*comp, *out, "--seed", "-1"], [*comp, *out, "--seed", "1.5"],
        ["train", "--model", "lenet-300-100", "--out", f["old"], "--lr", "nan"],
        ["train", "--model", "lenet-300-100", "--out", f["old"], "--lr", "inf"],
        ["train", "--model", "lenet-300-100", "--out", f["old"], "--lr", "-1"],
        ["train", "--model", "lenet-300-100", "--out", f["old"], "--lr", "0"],
        ["train", "--model", "lenet-300-100", "--out", f["old"], "--epochs", "-1"],
        ["train", "--model", "lenet-300-100", "--out", f["old"], "--epochs", "2.5"],
        *[["distill", "--teacher", "lenet-5", "--teacher-weights", f["w5"], "--student", "mlp-30-30", "--out",
           f["old"], option, value] for option, value in
          [("--temperature", "0"), ("--temperature", "nan"), ("--alpha", "-1"), ("--alpha", "inf"),
           ("--jitter", "-2"), ("--epochs", "-3"), ("--min-steps", "-1"), ("--lr", "nan"), ("--bias-offset", "inf"),
           ("--omit", "-1")]],
        ["eval", f["good"], "--calibration", "0"], ["eval", f["good"], "--calibration", "nan"],
        ["profile", f["good"], "--repeats", "0"], ["profile", f["good"], "--input-shape", "0", "28", "28"],
        ["export", f["good"], f["old"], "--calibration", "0"],
        # outputs that cannot be written, refused before the work
        [*comp, "--out", f["dir"]], [*comp, "--out", "/proc/x.mzip"], [*comp, "--out", f["file"] + "/m.mzip"],
        [*comp, *out, "--report", f["dir"]], [*comp, *out, "--plots", f["file"]], ["demo", "--out-dir", f["file"]],
        ["train", "--model", "lenet-300-100", "--out", f["dir"]], ["export", f["good"], f["dir"]],
        ["export", f["good"], "/proc/x.onnx"],
        ["distill", "--teacher", "lenet-5", "--teacher-weights", f["w5"], "--student", "mlp-30-30", "--out", f["dir"]],
        # models, weights, data
        ["compress", "--model", "nope", "--data", "digits", *out],
        ["compress", "--model", "no.such.module:fn", "--data", "digits", *out],
        ["compress", "--model", "os:getcwd", "--data", "digits", *out],
        ["compress", "--model", "hf:/nonexistent", "--calibration", f["file"], *out],
        ["compress", "--model", "hf:" + f["dir"], *out],
        [*comp[:-1], "--weights", f["w5"], *out], [*comp[:-1], "--weights", f["bad"], *out],
        [*comp[:-1], "--weights", "/nonexistent.pt", *out],
        [*comp, "--data", "nope", *out], [*comp, "--data", "mnist:/nonexistent", *out],
        [*comp, "--data", "digits@0", *out], [*comp, "--data", "digits@-5", *out], [*comp, "--data", "idx:" + f["dir"], *out],
        # recipes
        *[[*comp[:-2], "--recipe", f[name], *out] for name in
          ("bad", "unknown", "negative", "deep", "list", "bits", "bits9", "steps", "lr", "layers", "text")],
        [*comp[:-2], "--recipe", "no-such-recipe", *out], [*comp[:-2], "--recipe", "/nonexistent.yaml", *out],
        # files to read
        *[[command, f[name], *extra] for command, extra in (("eval", []), ("inspect", []), ("profile", []),
                                                             ("export", [f["old"]]))
          for name in ("garbage", "empty", "truncated", "dir", "text")],
        ["eval", "/nonexistent.mzip"], ["inspect", "/nonexistent.mzip"], ["profile", "/nonexistent.mzip"],
        ["eval", f["five"], "--data", "digits"], ["export", f["five"], f["old"], "--data", "digits"],
        ["eval", f["good"], "--sparse", "--int8"], ["profile", f["good"], f["good"], f["good"]],
        ["distill", "--teacher", "lenet-5,lenet-5", "--teacher-weights", f["w5"], "--student", "mlp-30-30",
         "--out", f["old"]],
        ["distill", "--teacher", "lenet-5", "--teacher-weights", "/nonexistent.pt", "--student", "mlp-30-30",
         "--out", f["old"]],
        ["distill", "--teacher", "lenet-5", "--teacher-weights", f["w5"], "--student", "nope", "--out", f["old"]],
    ]


def run(argv: list[str], old: Path) -> dict:
    old.write_bytes(OLD)
    done = subprocess.run([sys.executable, "-m", "modelzip", *argv], capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    case = {"argv": argv, "exit": done.returncode, "stderr": done.stderr.strip()[-2000:],
            "traceback": "Traceback" in done.stderr, "one_line": len(lines) == 1,
            "output_untouched": old.read_bytes() == OLD}
    case["ok"] = case["exit"] == 2 and case["one_line"] and not case["traceback"] and case["output_untouched"]
    return case


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        files = fixtures(Path(folder))
        argvs = cases(files)
        # each case gets its own copy of old.mzip to watch, so two running side by side do not share it
        olds = [Path(folder) / f"old-{i}.mzip" for i in range(len(argvs))]
        argvs = [[str(old) if arg == files["old"] else arg for arg in argv] for argv, old in zip(argvs, olds)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(run, argvs, olds))
    for case in results:
        print("ok  " if case["ok"] else "FAIL", " ".join(case["argv"])[:140], "|", case["stderr"][-160:])
    failures = [case for case in results if not case["ok"]]
    summary = {"cli_cases": len(results), "cli_tracebacks": sum(c["traceback"] for c in results),
               "cli_failures": failures}
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**merged, **summary}, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "cli_failures"}), f"{len(failures)} broke a rule")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
