"""The `modelzip` command: a thin layer over the Python API (parse, call, print)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch
from rich.console import Console

from . import distributed, io
from .codec.container import PREAMBLE
from .atomic import atomic_write
from .data import DataBundle, load_data, sample, split
from .distill import DistillConfig, adjust_bias_, distill, search_bias_offset, without_classes
from .errors import ConfigError, FormatError, ModelzipError
from .data.text import read_lines, text_batches
from .models import arch_label, build, input_shape_of
from .models.hf import HF_PREFIX, hf_tokenizer
from .pipeline import compress
from .prune.sparse_exec import SparseLayer
from .recipes import built_in, load_recipe
from .report import print_report
from .train import TrainConfig, evaluate, fit

DATA_HELP = "data set: mnist5k (built in, default), digits, mnist:DIR, idx:DIR; '@N' keeps N training examples"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for option in OUTPUTS:  # before any work: an unwritable output would waste all of it
            if getattr(args, option, None) is not None:
                check_output(getattr(args, option), f"--{option.replace('_', '-')}")
        with distributed.launched():  # under torchrun: one process group, training shared, rank 0 writes
            return args.run(args)
    except ModelzipError as exc:
        return _fail(str(exc))
    except OSError as exc:  # the file system refused: a missing input, a full disk, a vanished folder
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


OUTPUTS = ("out", "report", "plots", "out_dir")  # the options that name files or folders a command writes


def _fail(message: str) -> int:
    print(f"modelzip: error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return 2


def check_output(path: str | Path, option: str) -> None:
    """Refuse an output path that cannot be written, by creating (and removing) a file where it will go.

    Checked before any work starts; the folders that do not exist yet are not created here.
    """
    path = Path(path)
    folder = option in ("--out-dir", "--plots")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder")
    parent = path if folder else path.parent
    while not parent.exists():  # the folders atomic_write will create: the first existing one must take them
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".modelzip-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {parent}: {exc.strerror}") from None


def _number(kind: type, low: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite `kind` (int or float) >= low (> low with `above`)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    data = load_data(args.data)
    model = build("lenet-300-100", data.input_shape, data.num_classes)
    out = Path(args.out_dir)
    result = compress(model, data, "deep-compression", pretrained=False, out=out / "lenet-300-100.mzip",
                      report_out=out / "lenet-300-100.json")
    if distributed.is_main():
        print_report(result.report)
        print(f"wrote {out / 'lenet-300-100.mzip'} and {out / 'lenet-300-100.json'}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    recipe = load_recipe(args.recipe)
    outputs = {"out": args.out, "report_out": args.report, "keep_run_dir": args.keep_run,
               "run_dir": None if args.resume is None else args.resume or f"{args.out}.run"}
    if args.model.startswith(HF_PREFIX):  # a pretrained folder; its inputs are the lines of --calibration
        if args.calibration is None:
            raise ConfigError("an hf: model is calibrated on text: give --calibration FILE (one input per line)")
        model = build(args.model, weights=args.weights)
        batches = text_batches(read_lines(args.calibration), hf_tokenizer(args.model[len(HF_PREFIX):]))
        result = compress(model, batches, recipe, **outputs)
    else:
        data = load_data(args.data, seed=args.seed)
        model = build(args.model, data.input_shape, data.num_classes, weights=args.weights)
        pretrained = args.pretrained or args.weights is not None
        result = compress(model, data, recipe, pretrained=pretrained, **outputs)
    if not distributed.is_main():  # the other ranks of a torchrun trained along; rank 0 writes and prints
        return 0
    print_report(result.report)
    if result.soft_sharing is not None:
        from .soft_sharing.plots import write_plots  # matplotlib loads only when there is something to draw
        paths = write_plots(result.soft_sharing, args.plots or Path(args.out).parent, Path(args.out).stem)
        print(f"wrote {', '.join(map(str, paths))}")
    return 0


def _train(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    data = load_data(args.data, seed=args.seed)
    model = build(args.model, data.input_shape, data.num_classes)
    fit(model, data.train, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed), test=data.test)
    if not distributed.is_main():
        return 0
    atomic_write(args.out, lambda f: torch.save(model.state_dict(), f))
    print(f"test accuracy {evaluate(model, data.test):.2%}; wrote {args.out}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    data = load_data(args.data, seed=args.seed)
    names, weights = args.teacher.split(","), (args.teacher_weights or "").split(",")
    if len(weights) != len(names):
        raise ConfigError(f"--teacher-weights needs one state_dict file per teacher ({len(names)}), "
                          f"comma-separated; got {args.teacher_weights!r}")
    teachers = [build(n, data.input_shape, data.num_classes, weights=w) for n, w in zip(names, weights)]
    student = build(args.student, data.input_shape, data.num_classes, activation=args.activation)
    config = DistillConfig(temperature=args.temperature, alpha=args.alpha, jitter=args.jitter,
                           train=TrainConfig(epochs=args.epochs, min_steps=args.min_steps, lr=args.lr, seed=args.seed))
    transfer, held_out = data.train, None
    if args.omit:  # hold some training data back (with every class) to search the bias offset on
        rest, held_out = split(data.train, 1 / 12, seed=args.seed)
        transfer = without_classes(rest, args.omit)
    distill(student, teachers, transfer, config, test=data.test)
    accuracy = evaluate(student, data.test)
    if held_out is not None:
        offset = args.bias_offset
        if offset is None:
            offset, _ = search_bias_offset(student, args.omit, held_out)
        adjust_bias_(student, args.omit, offset)
        before, accuracy = accuracy, evaluate(student, data.test)
        print(f"bias of classes {args.omit} {offset:+g}: accuracy {before:.2%} -> {accuracy:.2%}")
    if not distributed.is_main():
        return 0
    atomic_write(args.out, lambda f: torch.save(student.state_dict(), f))
    for name, teacher in zip(names, teachers):
        print(f"teacher {name}: accuracy {evaluate(teacher, data.test):.2%}")
    print(f"student {args.student}: accuracy {accuracy:.2%}; wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.sparse and args.int8:
        raise ConfigError("--sparse and --int8 are two execution paths for the float layers: give one")
    data = load_data(args.data)
    _check_input_shape(args.file, data)  # from the header: before any weight is decoded
    model = io.load(args.file, allow_import=args.allow_import, sparse=args.sparse)
    if args.sparse:
        sparse = sum(isinstance(m, SparseLayer) for m in model.modules())
        dense = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.modules())
        print(f"sparse execution: {sparse} of {sparse + dense} Linear/Conv2d layers went sparse (measured faster)")
    print(f"{args.file}: accuracy {evaluate(model, data.test):.2%} on {len(data.test):,} test examples of {data.name}")
    if args.int8:
        from .profile import compare_latency
        from .quantize import int8_model  # torch's quantized kernels load only when asked for

        fast = int8_model(model, sample(data.train, args.calibration, seed=0))
        times = {b: compare_latency({"float": model, "int8": fast}, torch.randn(b, *data.input_shape))
                 for b in (1, 64)}
        print(f"int8 execution: accuracy {evaluate(fast, data.test):.2%}; CPU latency "
              + ", ".join(f"batch {b} {t['float'] / t['int8']:.2f}x lower" for b, t in times.items()))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    header = io.header(args.file)
    with open(args.file, "rb") as file:  # the sections are not decoded, but they must all be there
        declared = PREAMBLE.size + PREAMBLE.unpack(file.read(PREAMBLE.size))[2]
    declared += sum(section["length"] for section in header["sections"])
    found = Path(args.file).stat().st_size
    if found != declared:
        what = "ends early" if found < declared else "has trailing bytes"
        raise FormatError(f"{args.file} {what}: the header declares {declared:,} bytes, the file holds {found:,}")
    if args.json:
        print(json.dumps(header, indent=2))
        return 0
    console = Console()
    meta = dict(header["meta"])
    arch = meta.pop("arch", None)
    if isinstance(arch, dict):  # the rebuild record can be long: its builder and edit count, not every edit
        built = arch_label(arch) or "a model not made by modelzip.build"
        meta["arch"] = f"{built}, {len(arch.get('edits') or [])} structural edits (--json shows them)"
    console.print(meta)
    for name, entry in header["tensors"].items():
        details = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("sections",))
        console.print(f"[bold]{name}[/bold]: {details}")
    console.print(f"{Path(args.file).stat().st_size:,} bytes, {len(header['sections'])} sections")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .profile import compare, print_comparison, profile

    if len(args.files) > 2:
        raise ConfigError(f"profile takes one file, or two to compare; got {len(args.files)}")
    models = [io.load(f, allow_import=args.allow_import) for f in args.files]
    shape = tuple(args.input_shape) if args.input_shape else _input_shape(models[0], args.files[0])
    profiles = [profile(m, shape, repeats=args.repeats) for m in models]
    comparison = compare(profiles[0], profiles[-1])
    if args.json:
        print(json.dumps(comparison if len(models) == 2 else profiles[0].to_json(), indent=2))
    else:
        print_comparison(comparison)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import argmax_agreement, export_onnx  # onnx and onnxruntime load only when exporting

    data = load_data(args.data)
    _check_input_shape(args.file, data)
    model = io.load(args.file, allow_import=args.allow_import)
    calibration = sample(data.train, args.calibration, seed=0) if args.qdq else None
    written = export_onnx(model, args.out, data.input_shape, qdq=args.qdq, calibration=calibration)
    agreement = argmax_agreement(model, args.out, data.test.tensors[0])
    print(f"wrote {args.out}: {written:,} bytes ({'int8 QDQ' if args.qdq else 'float'}); ONNX Runtime predicts "
          f"the class PyTorch does on {agreement:.2%} of {len(data.test):,} test examples of {data.name}")
    return 0


def _check_input_shape(path: str, data: DataBundle) -> None:
    """A file records the input shape it was compressed for: other data is refused before any forward pass."""
    recorded = io.header(path)["meta"].get("input_shape")
    if recorded is not None and tuple(recorded) != tuple(data.input_shape):
        raise ConfigError(f"{path} was compressed for inputs {tuple(recorded)}, but {data.name} has "
                          f"{tuple(data.input_shape)}: evaluate it on data of that shape")


def _input_shape(model: torch.nn.Module, path: str) -> tuple[int, ...]:
    shape = input_shape_of(model)
    if shape is None:
        raise ConfigError(f"{path} does not record its input shape; give --input-shape C H W")
    return shape


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelzip", description="Make neural networks small: prune, "
                                     "quantize, Huffman-code and distill PyTorch models into .mzip files.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="train LeNet-300-100 on the built-in digits and compress it")
    demo.add_argument("--data", default="mnist5k", help=DATA_HELP)
    demo.add_argument("--out-dir", default=".", help="where to write lenet-300-100.mzip and .json")
    demo.set_defaults(run=_demo)

    comp = commands.add_parser("compress", help="compress a model with a recipe into a .mzip file")
    comp.add_argument("--model", required=True, help="built-in name (lenet-300-100, lenet-5, mlp-800-800, "
                      "mlp-1200-1200), package.module:function returning an nn.Module, or hf:DIR (a local Hugging "
                      "Face folder, read offline)")
    comp.add_argument("--weights", help="state_dict file (torch.save); without it (or --pretrained) the recipe "
                      "trains the model first")
    comp.add_argument("--pretrained", action="store_true", help="the model comes trained (a function returning "
                      "a trained network): skip the recipe's training stage")
    comp.add_argument("--data", default="mnist5k", help=DATA_HELP)
    comp.add_argument("--recipe", default="deep-compression",
                      help=f"built-in recipe ({', '.join(built_in())}) or a YAML file")
    comp.add_argument("--out", required=True, help="the .mzip file to write")
    comp.add_argument("--calibration", metavar="FILE", help="for hf: models, a text file of inputs (one per line, "
                      "tokenized by the folder's tokenizer): post-training recipes calibrate on it, and the report's "
                      "metric is the output cosine against the original on it")
    comp.add_argument("--report", help="write the JSON report here")
    comp.add_argument("--plots", help="folder for the soft weight-sharing pictures (default: beside --out)")
    comp.add_argument("--resume", nargs="?", const="", metavar="DIR", help="checkpoint every epoch and stage in "
                      "DIR (default: OUT.run beside --out) and continue there a run that was killed; the same command "
                      "again resumes it, to the same bytes. DIR is removed on success")
    comp.add_argument("--keep-run", action="store_true", help="with --resume: keep the run folder after success")
    comp.add_argument("--seed", type=_number(int, 0), default=0)
    comp.set_defaults(run=_compress)

    dist = commands.add_parser("distill", help="train a student on the soft targets of one or more teachers")
    dist.add_argument("--teacher", required=True, help="teacher model name(s), comma-separated for an ensemble")
    dist.add_argument("--teacher-weights", required=True, help="their state_dict files, comma-separated, in order")
    dist.add_argument("--student", required=True, help="student model name, e.g. mlp-800-800 or mlp-30-30")
    dist.add_argument("--activation", default="relu", help="the student's activation: relu or lma")
    dist.add_argument("--data", default="mnist5k", help=DATA_HELP)
    dist.add_argument("--temperature", type=_number(float, 0, above=True), default=20.0)
    dist.add_argument("--alpha", type=_number(float, 0), default=0.9, help="weight of the soft loss (1 - alpha: hard labels)")
    dist.add_argument("--jitter", type=_number(int, 0), default=0,
                      help="shift inputs by up to this many pixels (the teachers then run online)")
    dist.add_argument("--omit", type=_number(int, 0), nargs="*", default=[],
                      help="leave these classes out of the transfer set, then raise their output bias")
    dist.add_argument("--bias-offset", type=_number(float),
                      help="with --omit: the bias offset (default: searched on 1/12 of the training data held out)")
    dist.add_argument("--epochs", type=_number(int, 0), default=20)
    dist.add_argument("--min-steps", type=_number(int, 0), default=3000, help="at least this many optimizer steps")
    dist.add_argument("--lr", type=_number(float, 0, above=True), default=1e-3)
    dist.add_argument("--seed", type=_number(int, 0), default=0)
    dist.add_argument("--out", required=True, help="the student's state_dict (.pt) to write")
    dist.set_defaults(run=_distill)

    train = commands.add_parser("train", help="train a model and save its state_dict (input for compress)")
    train.add_argument("--model", required=True)
    train.add_argument("--data", default="mnist5k", help=DATA_HELP)
    train.add_argument("--epochs", type=_number(int, 0), default=10)
    train.add_argument("--lr", type=_number(float, 0, above=True), default=1e-3)
    train.add_argument("--seed", type=_number(int, 0), default=0)
    train.add_argument("--out", required=True, help="the .pt file to write")
    train.set_defaults(run=_train)

    ev = commands.add_parser("eval", help="accuracy of the model decoded from a .mzip file")
    ev.add_argument("file")
    ev.add_argument("--data", default="mnist5k", help=DATA_HELP)
    ev.add_argument("--allow-import", action="store_true", help="allow importing the user code the file names")
    ev.add_argument("--int8", action="store_true", help="also run it on int8 kernels (weights and activations): "
                    "accuracy and CPU latency against float")
    ev.add_argument("--calibration", type=_number(int, 1), default=256, metavar="N",
                    help="with --int8: training examples that set the activation ranges")
    ev.add_argument("--sparse", action="store_true", help="run pruned layers on sparse (CSR) kernels where "
                    "measured faster (modelzip.load(..., sparse=True))")
    ev.set_defaults(run=_eval)

    ins = commands.add_parser("inspect", help="header, per-tensor encodings and sizes, without decoding weights")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true", help="print the raw header as JSON")
    ins.set_defaults(run=_inspect)

    prof = commands.add_parser("profile", help="parameters, FLOPs, bytes and CPU latency per layer of one .mzip "
                               "file, or of two side by side (before -> after)")
    prof.add_argument("files", nargs="+", metavar="FILE", help="one .mzip file, or two to compare")
    prof.add_argument("--input-shape", type=_number(int, 1), nargs="+", help="C H W of one input (default: from the file)")
    prof.add_argument("--repeats", type=_number(int, 1), default=30, help="timed forward passes per batch size")
    prof.add_argument("--json", action="store_true", help="print the profile (or comparison) as JSON")
    prof.add_argument("--allow-import", action="store_true", help="allow importing the user code the file names")
    prof.set_defaults(run=_profile)

    exp = commands.add_parser("export", help="write the model of a .mzip file as ONNX (float, or int8 QDQ with "
                              "--qdq) and check ONNX Runtime's predictions against PyTorch's on the test set")
    exp.add_argument("file", help="the .mzip file")
    exp.add_argument("out", help="the .onnx file to write")
    exp.add_argument("--qdq", action="store_true", help="quantize weights and activations to int8 (QDQ format)")
    exp.add_argument("--data", default="mnist5k", help=DATA_HELP)
    exp.add_argument("--calibration", type=_number(int, 1), default=256, metavar="N",
                     help="with --qdq: training examples that set the activation ranges")
    exp.add_argument("--allow-import", action="store_true", help="allow importing the user code the file names")
    exp.set_defaults(run=_export)
    return parser


if __name__ == "__main__":
    sys.exit(main())
