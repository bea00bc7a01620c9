"""Knowledge distillation on MNIST: the experiments of Hinton, Vinyals & Dean (2015), side by side.

    .venv/bin/python benchmarks/distillation.py [--data mnist:../shared/data/mnist] [--only NAME ...]

Trained models are kept under benchmarks/results/files/distillation/<data>/ so a rerun (or an
interrupted run) picks up where it stopped; delete that folder to retrain from scratch. Writes
benchmarks/results/distillation.json (distillation-mnist5k.json for --data mnist5k), after every
experiment, with the issue's keys:
- teacher_errors, student_errors, distilled_errors: test errors of the 784-1200-1200 teacher (dropout,
  jitter), the 784-800-800 student trained alone and the same student distilled at T=20;
  gap_closed: (student - distilled) / (student - teacher);
- omitted3_*: a student distilled on a transfer set with no 3s, before/after the bias search;
- only78_error_before/after: distilled on 7s and 8s only, before/after lowering their biases;
- temperature_sweep: test errors of 30-30 and 800-800 students per T;
- ensemble: errors of 4 teachers, their ensemble and a student distilled from the ensemble;
- jittered_transfer: the 800-800 student distilled on a transfer set jittered by up to 2 px (teachers
  online), from the teacher and from the ensemble;
- specialists: generalist vs generalist + specialists accuracy;
- lma_accuracy, relu_accuracy: the most compact distilled student (784-5-5-10) with LMA and with ReLU
  (lma_students: every size);
- cached_epoch_ratio, uncached_epoch_ratio: distillation epoch / plain student epoch (median of 3,
  interleaved in one run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import modelzip
from modelzip.atomic import atomic_write
from modelzip.data import split
from modelzip.distill import (DistillConfig, adjust_bias_, cache_soft_logits, distill, only_classes,
                              search_bias_offset, without_classes)
from modelzip.distill.specialists import confusable_groups, train_specialists
from modelzip.models import load_weights
from modelzip.train import TrainConfig, evaluate, fit, jittered, predict

HERE = Path(__file__).resolve().parent
SHARED_MNIST = HERE.parent.parent / "shared" / "data" / "mnist"

TEACHER = dict(name="mlp-1200-1200", dropout=0.5, jitter=2, train=TrainConfig(epochs=40))
STUDENT_TRAIN = TrainConfig(epochs=60)  # every student, alone or distilled: same budget (30 left distillation short)
T_MAIN, ALPHA = 20.0, 0.9
MEMBER = dict(name="mlp-800-800", dropout=0.5, jitter=2, train=TrainConfig(epochs=20))  # ensemble members
SMALL_TEMPERATURES = (1.0, 2.0, 2.5, 3.0, 4.0, 8.0, 20.0)
LARGE_TEMPERATURES = (4.0, 8.0, 20.0)
LMA_STUDENTS = ("mlp-5-5", "mlp-10", "mlp-10-10", "mlp-30-30")  # LMA and ReLU, distilled at T=4, alpha 0.7


class Bench:
    """Shared state: the data, where trained models are kept, and the results so far."""

    def __init__(self, spec: str, out: Path) -> None:
        self.data = modelzip.load_data(spec)
        self.name = spec
        self.files = HERE / "results" / "files" / "distillation" / spec.split(":")[0]
        self.files.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.save("data", spec.replace(str(HERE.parent.parent), ".."))  # no machine-specific paths
        # a held-out part of the training set, for searching bias offsets (never the test set)
        self.rest, self.held_out = split(self.data.train, 1 / 12, seed=0)

    @staticmethod
    def config(train: TrainConfig) -> TrainConfig:
        """At least 3,000 steps: more epochs on the 5k subset; no change on the full set."""
        return TrainConfig(**{**vars(train), "min_steps": 3000})

    def model(self, key: str, spec: str, make: Callable[[nn.Module], Any], **kwargs: Any) -> nn.Module:
        """The model saved under `key`, or a new one built from `spec` and trained by `make`."""
        torch.manual_seed(0)
        model = modelzip.build(spec, self.data.input_shape, self.data.num_classes, **kwargs)
        path = self.files / f"{key}.pt"
        if path.exists():
            load_weights(model, path)
        else:
            began = time.perf_counter()
            make(model)
            self.save("train_seconds", {key: round(time.perf_counter() - began, 1)}, merge=True)
            atomic_write(path, lambda f: torch.save(model.state_dict(), f))
        return model.eval()

    def errors(self, model: nn.Module, dataset: TensorDataset | None = None) -> int:
        dataset = self.data.test if dataset is None else dataset
        return int((predict(model, dataset).argmax(1) != dataset.tensors[1]).sum())

    def distilled(self, key: str, spec: str, teachers: Any, transfer: TensorDataset, T: float = T_MAIN,
                  alpha: float = ALPHA, jitter: int = 0, **kwargs: Any) -> nn.Module:
        config = DistillConfig(temperature=T, alpha=alpha, jitter=jitter, train=self.config(STUDENT_TRAIN))
        return self.model(key, spec, lambda m: distill(m, teachers, transfer, config, desc=key), **kwargs)

    def save(self, key: str, value: Any, merge: bool = False) -> None:
        """Record one result in the JSON file (re-read first: experiments may run in parallel processes)."""
        results = json.loads(self.out.read_text()) if self.out.exists() else {}
        results[key] = {**results.get(key, {}), **value} if merge else value
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(self.out, lambda f: f.write(text.encode()))
        print(f"{key}: {json.dumps(value)}", flush=True)

    def teacher(self, key: str = "teacher", setup: dict = TEACHER, seed: int = 0) -> nn.Module:
        def make(model: nn.Module) -> None:
            torch.manual_seed(seed)
            fit(model, self.data.train, self.config(TrainConfig(**{**vars(setup["train"]), "seed": seed})),
                loss_fn=jittered(setup["jitter"]), desc=key)
        return self.model(key, setup["name"], make, dropout=setup["dropout"])

    def members(self) -> list[nn.Module]:
        """The ensemble: four 800-800 teachers with dropout and jitter, differing by seed."""
        return [self.teacher(f"member{i}", MEMBER, seed=i) for i in range(1, 5)]

    def alone(self, key: str, spec: str) -> nn.Module:
        """A model of `spec` trained on hard labels with the students' budget."""
        return self.model(key, spec, lambda m: fit(m, self.data.train, self.config(STUDENT_TRAIN), desc=key))

    def student(self) -> nn.Module:
        return self.alone("student", "mlp-800-800")


def main_trio(b: Bench) -> None:
    teacher, student = b.teacher(), b.student()
    dist = b.distilled("distilled", "mlp-800-800", teacher, b.data.train)
    t, s, d = b.errors(teacher), b.errors(student), b.errors(dist)
    b.save("teacher_errors", t)
    b.save("student_errors", s)
    b.save("distilled_errors", d)
    b.save("test_examples", len(b.data.test))
    b.save("gap_closed", round((s - d) / (s - t), 3) if s != t else None)


def omitted_three(b: Bench) -> None:
    student = b.distilled("omitted3", "mlp-800-800", b.teacher(), without_classes(b.rest, [3]))
    threes = only_classes(b.data.test, [3])
    before = (len(threes) - b.errors(student, threes)) / len(threes), b.errors(student)
    offset, _ = search_bias_offset(student, [3], b.held_out)
    adjust_bias_(student, [3], offset)
    after = (len(threes) - b.errors(student, threes)) / len(threes), b.errors(student)
    b.save("omitted3_threes_correct_before", round(before[0], 4))
    b.save("omitted3_threes_correct_after", round(after[0], 4))
    b.save("omitted3_errors_before", before[1])
    b.save("omitted3_errors_after", after[1])
    b.save("omitted3_bias_offset", offset)


def only_78(b: Bench) -> None:
    student = b.distilled("only78", "mlp-800-800", b.teacher(), only_classes(b.rest, [7, 8]))
    before = b.errors(student) / len(b.data.test)
    offset, _ = search_bias_offset(student, [7, 8], b.held_out)
    adjust_bias_(student, [7, 8], offset)
    b.save("only78_error_before", round(before, 4))
    b.save("only78_error_after", round(b.errors(student) / len(b.data.test), 4))
    b.save("only78_bias_offset", offset)


def temperature_sweep(b: Bench) -> None:
    teacher = b.teacher()
    sweep: dict[str, dict[str, int]] = {}
    for spec, temperatures in (("mlp-30-30", SMALL_TEMPERATURES), ("mlp-800-800", LARGE_TEMPERATURES)):
        alone = b.student() if spec == "mlp-800-800" else b.alone(f"alone-{spec}", spec)
        sweep[spec] = {"alone": b.errors(alone)}
        for T in temperatures:
            key = "distilled" if (spec, T) == ("mlp-800-800", T_MAIN) else f"{spec}-T{T:g}"
            sweep[spec][f"T={T:g}"] = b.errors(b.distilled(key, spec, teacher, b.data.train, T=T))
        b.save("temperature_sweep", sweep)


def ensemble(b: Bench) -> None:
    members = b.members()
    logits = torch.stack([predict(m, b.data.test) for m in members])  # (members, N, classes)
    ensemble_errors = int((logits.softmax(-1).mean(0).argmax(1) != b.data.test.tensors[1]).sum())
    student = b.distilled("from-ensemble", "mlp-800-800", members, b.data.train)
    member_errors = [b.errors(m) for m in members]
    b.save("ensemble", {"members": len(members), "member_errors": member_errors,
                        "single_teacher_errors_mean": statistics.mean(member_errors),
                        "ensemble_errors": ensemble_errors, "distilled_errors": b.errors(student),
                        "student_alone_errors": b.errors(b.student())})


def jittered_transfer(b: Bench) -> None:
    """The transfer set jittered like the teachers' training data: the teachers run online."""
    members = b.members()
    from_teacher = b.distilled("jittered-from-teacher", "mlp-800-800", b.teacher(), b.data.train, jitter=2)
    from_ensemble = b.distilled("jittered-from-ensemble", "mlp-800-800", members, b.data.train, jitter=2)
    b.save("jittered_transfer", {"from_teacher_errors": b.errors(from_teacher),
                                 "from_ensemble_errors": b.errors(from_ensemble)})


def specialists(b: Bench) -> None:
    generalist = b.alone("generalist", "mlp-30-30")
    probs = predict(generalist, b.held_out).softmax(-1)
    groups = confusable_groups(probs, 4, seed=0)
    began = time.perf_counter()
    combined = train_specialists(generalist, b.data.train, groups, b.config(TrainConfig(epochs=10)),
                                 T=2.0, alpha=0.5)
    b.save("specialists", {"generalist": "mlp-30-30", "groups": groups,
                           "generalist_accuracy": evaluate(generalist, b.data.test),
                           "with_specialists_accuracy": evaluate(combined, b.data.test),
                           "specialist_train_seconds": round(time.perf_counter() - began, 1)})


def lma(b: Bench) -> None:
    """Students from compact to wide; the headline keys are the most compact one (the LMA paper's case)."""
    teacher, rows = b.teacher(), {}
    for spec in LMA_STUDENTS:
        for act in ("relu", "lma"):
            model = b.distilled(f"{spec}-{act}", spec, teacher, b.data.train, T=4.0, alpha=0.7, activation=act)
            rows[f"{spec}-{act}"] = {"accuracy": evaluate(model, b.data.test),
                                     "parameters": sum(p.numel() for p in model.parameters())}
    b.save("lma_students", rows)
    b.save("lma_accuracy", rows[f"{LMA_STUDENTS[0]}-lma"]["accuracy"])
    b.save("relu_accuracy", rows[f"{LMA_STUDENTS[0]}-relu"]["accuracy"])


def speed(b: Bench) -> None:
    """One epoch of the 800-800 student: hard labels, cached soft targets, teacher run online."""
    teacher, one = b.teacher(), TrainConfig(epochs=1)
    config = DistillConfig(temperature=T_MAIN, alpha=ALPHA, train=one)
    began = time.perf_counter()
    targets = cache_soft_logits(teacher, b.data.train, T_MAIN)
    cache_seconds = time.perf_counter() - began
    runs: dict[str, Callable[[nn.Module], Any]] = {
        "plain": lambda m: fit(m, b.data.train, one, desc="plain"),
        "cached": lambda m: distill(m, targets, b.data.train, config, desc="cached"),
        "uncached": lambda m: distill(m, teacher, b.data.train, config, cache=False, desc="uncached"),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3):
        for key, run in runs.items():
            model = modelzip.build("mlp-800-800", b.data.input_shape, b.data.num_classes)
            began = time.perf_counter()
            run(model)
            times[key].append(time.perf_counter() - began)
    plain = statistics.median(times["plain"])
    b.save("epoch_seconds", {k: round(statistics.median(v), 2) for k, v in times.items()}
           | {"teacher_pass_for_cache": round(cache_seconds, 2)})
    b.save("cached_epoch_ratio", round(statistics.median(times["cached"]) / plain, 3))
    b.save("uncached_epoch_ratio", round(statistics.median(times["uncached"]) / plain, 3))


EXPERIMENTS = {"main": main_trio, "omitted3": omitted_three, "only78": only_78, "temperature": temperature_sweep,
               "ensemble": ensemble, "jittered": jittered_transfer, "specialists": specialists, "lma": lma, "speed": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=f"mnist:{SHARED_MNIST}")
    parser.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), help="run these experiments only")
    args = parser.parse_args()
    suffix = "" if args.data.startswith("mnist:") else f"-{args.data.split('@')[0]}"
    bench = Bench(args.data, HERE / "results" / f"distillation{suffix}.json")
    for name in args.only or EXPERIMENTS:
        began = time.perf_counter()
        EXPERIMENTS[name](bench)
        print(f"[{name}] {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
