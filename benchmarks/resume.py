"""Kill -9 of `modelzip compress --resume` at 25%, 50% and 90% of its time, then the same command again.

    .venv/bin/python benchmarks/resume.py     # about 4 minutes on 2 cores; sets `resume` in results/fuzz.json

`resume_figures()` (importable from this folder: `from resume import resume_figures`) runs
`modelzip compress` of LeNet-300-100 on the built-in mnist5k digits with the built-in deep-compression
recipe (204 epochs on these 4,000 digits: train from scratch, prune in 10 retrained rounds, trained k-means;
seed 0; about 40 s, a sixth of it starting up) once uninterrupted, then for each fraction f starts it
with `--resume`, sends SIGKILL at f x the uninterrupted wall time, and reruns the same command to its end.
The kill lands at the point of the work the uninterrupted run had reached at that time (its epoch, and as
far into the next), so a slower start on a busy machine does not move it. Each entry:
- kill_at: f;
- same_bytes: the resumed run's .mzip equals the uninterrupted one's, byte for byte;
- redone_fraction: epochs trained twice / epochs of the whole run. Epochs are counted from the lines
  `fit` prints per finished epoch (T for the whole run, F before the kill, R in the rerun); the epoch
  under way at the kill is lost and counted as one whole epoch redone (an upper bound): (F + R - T + 1) / T
  (without the 1 when the kill came after the last epoch);
- redone_wall_fraction: (wall time killed + wall time of the rerun - uninterrupted wall time) / the
  uninterrupted wall time: what the redone epoch, the replay of the finished stages and a second start
  of the interpreter (imports, data loading) cost together;
- epochs_total, epochs_before_kill, epochs_after_resume: T, F, R; killed: the kill struck a running process
  (false: the run ended first).
Every process runs one thread (OMP_NUM_THREADS=1), as light as it gets on a shared machine.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "fuzz.json"
FRACTIONS = (0.25, 0.5, 0.9)
EPOCH_LINE = re.compile(r"^.+ \d+/\d+: loss ")  # what fit prints per finished epoch


def _command(folder: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "modelzip", "compress", "--model", "lenet-300-100", "--data", "mnist5k",
            "--recipe", "deep-compression", "--seed", "0", "--out", str(folder / "m.mzip"),
            "--report", str(folder / "m.json"), *options]


def _run(command: list[str], kill: tuple[int, float] | None = None) -> tuple[list[float], float, bool]:
    """Seconds from the start at which each epoch finished, wall seconds, and whether it was killed, of one
    command; with `kill` (k, s) it gets SIGKILL s seconds after its k-th epoch (after its start if k is 0)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's modelzip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(kill[1], process.kill) if kill is not None else None
    marks: list[float] = []
    if timer is not None and kill[0] == 0:
        timer.start()
    for line in process.stderr:
        if EPOCH_LINE.match(line):
            marks.append(time.perf_counter() - began)
            if timer is not None and len(marks) == kill[0]:
                timer.start()
    process.wait()
    seconds = time.perf_counter() - began
    if timer is not None:
        timer.cancel()
    killed = process.returncode == -signal.SIGKILL
    if not killed and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}")
    return marks, seconds, killed


def _kill_point(marks: list[float], at: float) -> tuple[int, float]:
    """Where the uninterrupted run was at `at` seconds: (epochs finished, seconds since the last of them).

    Killing the same point of the work, not the same second, keeps a slow start (imports, data loading on a
    busy machine) from moving the kill into another stage."""
    done = sum(mark <= at for mark in marks)
    return done, at - (marks[done - 1] if done else 0.0)


def resume_figures() -> list[dict[str, float | int | bool]]:
    """For each kill point: the work redone (in epochs and in wall time) and whether the bytes match."""
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        marks, seconds, _ = _run(_command(folder))
        total, straight = len(marks), (folder / "m.mzip").read_bytes()
        for fraction in FRACTIONS:
            for output in (folder / "m.mzip", folder / "m.json"):
                output.unlink()
            point = _kill_point(marks, fraction * seconds)
            before, killed_seconds, killed = _run(_command(folder, "--resume"), kill=point)
            after, resumed_seconds, _ = _run(_command(folder, "--resume"))
            interrupted = 1 if killed and point[0] < total else 0  # the epoch under way, lost
            figures.append({
                "kill_at": fraction,
                "redone_fraction": round((len(before) + len(after) - total + interrupted) / total, 4),
                "same_bytes": (folder / "m.mzip").read_bytes() == straight,
                "redone_wall_fraction": round((killed_seconds + resumed_seconds - seconds) / seconds, 3),
                "epochs_total": total, "epochs_before_kill": len(before), "epochs_after_resume": len(after),
                "killed": killed,
            })
    return figures


if __name__ == "__main__":
    figures = resume_figures()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["resume"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
