"""Data-parallel training under torchrun: the same Deep Compression run on one process and on two.

    .venv/bin/python benchmarks/ddp.py        # about 3 minutes on 2 cores; writes benchmarks/results/ddp.json

`ddp_figures()` (importable from this folder: `from ddp import ddp_figures`) runs `modelzip compress`
of LeNet-300-100 on the built-in mnist5k digits with the built-in deep-compression recipe (train, prune
and retrain, trained k-means, seed 0) once as one process and once under
`torchrun --nproc_per_node 2`, and returns:
- processes: 2;
- accuracy_1, accuracy_2: test accuracy of the decoded .mzip of each run (the report's accuracy_after);
  each rank takes half of every batch, so two ranks take the steps one process takes on the same batches;
- wall_ratio: wall-clock time of the two-process run / the one-process run, each from the command's
  start to its end (interpreter start and imports included). Every process runs one thread
  (OMP_NUM_THREADS=1, what torchrun gives each rank), so two processes use two cores where one uses one.
  For a network this small a step computes for a few milliseconds, about what the gradient all-reduce
  over gloo costs on a busy machine: expect no speed-up here, only on larger networks or more cores.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "ddp.json"
PROCESSES = 2


def _compress(launcher: list[str], folder: Path, name: str) -> tuple[float, float]:
    """Accuracy after compression and wall seconds of one `modelzip compress` run under `launcher`."""
    report = folder / f"{name}.json"
    command = [*launcher, "-m", "modelzip", "compress", "--model", "lenet-300-100", "--data", "mnist5k",
               "--recipe", "deep-compression", "--seed", "0", "--out", str(folder / f"{name}.mzip"),
               "--report", str(report)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's modelzip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    began = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    return json.loads(report.read_text())["accuracy_after"], seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_figures() -> dict[str, float | int]:
    """Accuracy of one and of two processes, and the two-process run's wall time over the one's."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        accuracy_1, seconds_1 = _compress([sys.executable], folder, "one")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
        accuracy_2, seconds_2 = _compress(torchrun, folder, "two")
    return {"processes": PROCESSES, "accuracy_1": accuracy_1, "accuracy_2": accuracy_2,
            "wall_ratio": round(seconds_2 / seconds_1, 3)}


if __name__ == "__main__":
    figures = ddp_figures()
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
