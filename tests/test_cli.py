import json

import pytest
import torch

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
