import json
import subprocess
import sys

import pytest
import torch

import modelzip

from modelzip.cli import main

TINY = """name: tiny
train: {epochs: 8, min_steps: 600}
prune: {sparsity: 0.8, steps: 2, retrain: {epochs: 2, min_steps: 150}}
quantize: {bits: 4, finetune: {epochs: 1, min_steps: 50}}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_train_compress_eval_inspect(tmp_path, recipe, capsys):
    weights, out, report = tmp_path / "w.pt", tmp_path / "m.mzip", tmp_path / "m.json"
    assert main(["train", "--model", "lenet-300-100", "--data", "digits", "--epochs", "40", "--out", str(weights)]) == 0
    assert set(torch.load(weights, weights_only=True)) >= {"fc1.weight", "fc3.bias"}
    assert main(["compress", "--model", "lenet-300-100", "--weights", str(weights), "--data", "digits",
                 "--recipe", str(recipe), "--out", str(out), "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["model"] == "lenet-300-100" and rep["data"] == "digits" and rep["file_bytes"] == out.stat().st_size
    assert rep["compression_ratio"] == pytest.approx(rep["dense_bytes"] / rep["file_bytes"])
    assert rep["compression_ratio"] > 10 and rep["accuracy_after"] > 0.85
    assert [layer["name"] for layer in rep["layers"]] == ["fc1", "fc2", "fc3"]
    fc1 = rep["layers"][0]
    assert fc1["kept_fraction"] == pytest.approx(0.2, abs=1e-3) and fc1["weight_bits_pq"] == 4
    assert set(fc1) >= {"name", "weights", "kept_fraction", "weight_bits", "index_bits", "compression_ratio"}
    capsys.readouterr()

    assert main(["eval", str(out), "--data", "digits"]) == 0
    assert f"accuracy {100 * rep['accuracy_after']:.2f}%" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "fc1.weight" in shown and "sparse" in shown
    assert main(["inspect", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["recipe"] == "tiny"


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.mzip"
    bad.write_bytes(b"MZIP\x01\x00garbage")
    assert main(["eval", str(bad), "--data", "digits"]) == 2
    assert "modelzip: error:" in capsys.readouterr().err
    assert main(["compress", "--model", "nope", "--data", "digits", "--out", str(tmp_path / "x.mzip")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.mzip").exists()


def test_demo_writes_the_file_and_report(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "lenet-300-100.json").read_text())
    assert rep["file_bytes"] == (tmp_path / "lenet-300-100.mzip").stat().st_size
    assert rep["compression_ratio"] > 40 and rep["accuracy_after"] > rep["accuracy_before"] - 0.01
    assert "whole file" in capsys.readouterr().out


def test_distill_then_a_recipe_that_chains_distill_prune_quantize(tmp_path, capsys):
    teacher, student, out, report = (tmp_path / n for n in ("t.pt", "s.pt", "s.mzip", "s.json"))
    assert main(["train", "--model", "mlp-128", "--data", "digits", "--epochs", "40", "--out", str(teacher)]) == 0
    assert main(["distill", "--teacher", "mlp-128,mlp-128", "--teacher-weights", f"{teacher},{teacher}",
                 "--student", "mlp-24", "--activation", "lma", "--data", "digits", "--temperature", "4",
                 "--epochs", "1", "--min-steps", "400", "--omit", "3", "--out", str(student)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("teacher mlp-128") == 2 and "student mlp-24" in printed and "bias of classes [3] +" in printed
    assert torch.load(student, weights_only=True)["fc1.weight"].shape == (24, 64)

    recipe = tmp_path / "chain.yaml"
    recipe.write_text("name: chain\ndistill: {student: mlp-64, temperature: 4, train: {epochs: 1, min_steps: 400}}\n"
                      + TINY.split("\n", 2)[2])
    assert main(["compress", "--model", "mlp-128", "--weights", str(teacher), "--data", "digits",
                 "--recipe", str(recipe), "--out", str(out), "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["model"] == "mlp-64" and list(rep["stages"]) == ["after_distill", "after_prune", "after_quantize"]
    assert rep["dense_bytes"] == (64 * 128 + 128 + 128 * 10 + 10) * 4  # the ratio is against the teacher
    assert rep["compression_ratio"] > 15 and rep["accuracy_after"] > 0.8
    assert main(["eval", str(out), "--data", "digits"]) == 0


def test_distill_needs_one_weights_file_per_teacher(tmp_path, capsys):
    assert main(["distill", "--teacher", "mlp-8,mlp-8", "--teacher-weights", "a.pt", "--student", "mlp-4",
                 "--data", "digits", "--out", str(tmp_path / "s.pt")]) == 2
    assert "one state_dict file per teacher (2)" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


SWS = """name: tiny-sws
train: {epochs: 1, min_steps: 300, lr: 0.003}
soft_sharing:
  components: 9
  tau: 3.0
  lr_means: 0.001
  lr_log_precision: 0.1
  lr_mixing: 0.01
  train: {epochs: 6, batch_size: 64}
"""


def test_compress_with_soft_weight_sharing_writes_the_pictures(tmp_path, capsys):
    recipe, out = tmp_path / "sws.yaml", tmp_path / "net.mzip"
    recipe.write_text(SWS)
    assert main(["compress", "--model", "mlp-32", "--data", "digits", "--recipe", str(recipe), "--out", str(out),
                 "--plots", str(tmp_path / "pictures")]) == 0
    for name in ("net-joint.png", "net-mixture.png"):
        picture = tmp_path / "pictures" / name
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000, name
    assert "net-joint.png" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", "digits"]) == 0
    assert float(capsys.readouterr().out.split("accuracy ")[1].split("%")[0]) > 85


def test_int8_recipe_then_eval_on_int8_kernels(tmp_path, capsys):
    weights, out = tmp_path / "w.pt", tmp_path / "m.mzip"
    assert main(["train", "--model", "lenet-300-100", "--data", "digits", "--epochs", "20", "--out", str(weights)]) == 0
    assert main(["compress", "--model", "lenet-300-100", "--weights", str(weights), "--data", "digits",
                 "--recipe", "int8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "fc1.codes" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", "digits", "--int8", "--calibration", "128"]) == 0
    shown = capsys.readouterr().out
    accuracies = [float(line.split("accuracy ")[1].split("%")[0]) for line in shown.splitlines() if "accuracy" in line]
    assert len(accuracies) == 2 and abs(accuracies[0] - accuracies[1]) < 2.0  # int8 kernels keep the accuracy
    assert "batch 1" in shown and "batch 64" in shown


def one_line_failure(argv: list[str], capsys) -> str:
    """Run a command that must fail: exit 2 (from argparse or main) and one line on stderr."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    return error


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    existing = tmp_path / "old.mzip"
    existing.write_bytes(b"keep me")
    compress = ["compress", "--model", "lenet-300-100", "--data", "digits", "--recipe", "int8", "--pretrained"]
    monkeypatch.setattr("modelzip.cli.load_data", lambda *a, **k: pytest.fail("work started"))
    assert "is a directory" in one_line_failure([*compress, "--out", str(tmp_path)], capsys)
    assert "cannot write in /proc" in one_line_failure([*compress, "--out", "/proc/x.mzip"], capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is not a folder" in one_line_failure([*compress, "--out", str(blocker / "a" / "m.mzip")], capsys)
    assert "is a file; give a folder" in one_line_failure(["demo", "--out-dir", str(blocker)], capsys)
    assert "is a directory" in one_line_failure([*compress, "--out", str(existing), "--report", str(tmp_path)], capsys)
    assert existing.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "old.mzip"]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--model", "m", "--out", "x.pt", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["train", "--model", "m", "--out", "x.pt", "--lr", "0"], "argument --lr: must be > 0, got 0"),
    (["distill", "--teacher", "a", "--teacher-weights", "a", "--student", "s", "--out", "x", "--temperature", "inf"],
     "argument --temperature: expected a finite number"),
    (["profile", "f.mzip", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["compress", "--model", "m", "--out", "x.mzip", "--seed", "1.5"], "argument --seed: expected an integer, got '1.5'"),
])
def test_bad_numbers_are_one_line_errors(argv, message, capsys):
    assert message in one_line_failure(argv, capsys)


def test_missing_inputs_and_bad_recipes_are_one_line_errors(tmp_path, capsys):
    assert "No such file or directory" in one_line_failure(["inspect", str(tmp_path / "none.mzip")], capsys)
    assert "Is a directory" in one_line_failure(["inspect", str(tmp_path)], capsys)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    out = str(tmp_path / "m.mzip")
    compress = ["compress", "--model", "lenet-300-100", "--data", "digits", "--out", out, "--recipe"]
    assert "nests too deeply" in one_line_failure([*compress, str(deep)], capsys)
    negative = tmp_path / "negative.yaml"
    negative.write_text("prune: {sparsity: -0.5}\n")
    assert "prune.sparsity must be in [0, 1) (a fraction of weights removed), got -0.5" in one_line_failure(
        [*compress, str(negative)], capsys)
    layer = tmp_path / "layer.yaml"
    layer.write_text("prune: {layers: {fc3: 1.5}}\n")
    assert "prune.layers.fc3 must be in [0, 1)" in one_line_failure([*compress, str(layer)], capsys)


def test_a_failed_write_after_the_work_is_one_line(tmp_path):
    """A full disk (here: a file-size limit) fails the final write: one line, exit 2, no temporary left."""
    script = ("import resource, sys; from modelzip.cli import main; "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
              f"sys.exit(main(['compress', '--model', 'lenet-300-100', '--data', 'digits', '--recipe', 'int8', "
              f"'--pretrained', '--out', {str(tmp_path / 'm.mzip')!r}]))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "File too large" in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == []


def test_inspect_refuses_a_truncated_file(tmp_path, capsys):
    good = tmp_path / "m.mzip"
    modelzip.save(modelzip.build("lenet-300-100"), good)
    cut = tmp_path / "cut.mzip"
    cut.write_bytes(good.read_bytes()[:-100])
    assert "ends early: the header declares" in one_line_failure(["inspect", str(cut)], capsys)
    assert main(["inspect", str(good)]) == 0
