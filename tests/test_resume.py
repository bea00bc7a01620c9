"""A killed `compress` resumes from its run folder to the uninterrupted run's bytes, redoing at most one epoch."""
import hashlib
import json

import pytest
import torch
from torch import nn

import modelzip
import modelzip.train as train_module
from modelzip.atomic import remove_temporaries
from modelzip.cli import main
from modelzip.errors import ConfigError
from modelzip.lowrank import LowRankConfig
from modelzip.models import build
from modelzip.prune import PruneConfig
from modelzip.quantize import QuantizeConfig, UniformConfig
from modelzip.recipes import DistillStage, Recipe
from modelzip.soft_sharing import SoftSharingConfig
from modelzip.structured import ChannelPruneConfig, SlimmingConfig
from modelzip.train import TrainConfig, fit, jittered

# 4 + 2 x 2 + 2 = 10 epochs of 12 steps on the digits: trained from scratch, pruned in two rounds, quantized
RECIPE = Recipe(name="resumable", train=TrainConfig(epochs=4),
                prune=PruneConfig(sparsity=0.8, steps=2, retrain=TrainConfig(epochs=2, lr=5e-4)),
                quantize=QuantizeConfig(bits=4, finetune=TrainConfig(epochs=2, lr=1e-4)))
EPOCHS = 10


class Killed(BaseException):
    """What a kill -9 is to the run: nothing after it happens (not an Exception: nothing catches it)."""


@pytest.fixture
def epochs(monkeypatch):
    """The epochs trained (fit prints one line per finished epoch): a list of their labels."""
    trained = []
    progress = train_module._progress
    monkeypatch.setattr(train_module, "_progress", lambda desc, n, log: (trained.append(f"{desc} {log.epoch}"),
                                                                         progress(desc, n, log)))
    return trained


def kill_after(monkeypatch, saves: int, *, before_saving: bool = False) -> None:
    """Kill the run when the `saves`-th epoch checkpoint has been written (or, `before_saving`, just before)."""
    save, count = train_module._save_checkpoint, []

    def saving(*args):
        count.append(1)
        if before_saving and len(count) == saves:
            raise Killed
        save(*args)
        if len(count) == saves:
            raise Killed
    monkeypatch.setattr(train_module, "_save_checkpoint", saving)


def run(digits, folder, recipe=RECIPE, seed=0, **kwargs):
    torch.manual_seed(seed)  # the CLI's seed: the model's starting weights
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    return modelzip.compress(model, digits, recipe, pretrained=False, out=folder / "m.mzip",
                             report_out=folder / "m.json", **kwargs)


@pytest.fixture(scope="session")
def straight(digits, tmp_path_factory):
    """The uninterrupted run's file bytes."""
    return run(digits, tmp_path_factory.mktemp("straight")).data


@pytest.mark.parametrize("saves, before_saving", [(2, False), (5, False), (9, True), (10, False)])
def test_a_killed_run_resumes_to_the_same_bytes_redoing_at_most_one_epoch(digits, tmp_path, monkeypatch, epochs,
                                                                        straight, saves, before_saving):
    run_dir = tmp_path / "m.mzip.run"
    with monkeypatch.context() as patch:
        kill_after(patch, saves, before_saving=before_saving)
        with pytest.raises(Killed):
            run(digits, tmp_path, run_dir=run_dir)
    assert not (tmp_path / "m.mzip").exists() and not (tmp_path / "m.json").exists()
    killed = len(epochs)
    assert killed == saves
    resumed = run(digits, tmp_path, run_dir=run_dir)
    assert resumed.data == straight == (tmp_path / "m.mzip").read_bytes()
    redone = killed + (len(epochs) - killed) - EPOCHS
    assert redone == (1 if before_saving else 0)  # only an epoch finished but not yet saved is trained again
    assert not run_dir.exists()  # a finished run leaves no folder behind


def test_every_stage_trains_once_with_its_own_checkpoint(digits, tmp_path, monkeypatch, epochs):
    run_dir = tmp_path / "run"
    kill_after(monkeypatch, EPOCHS)  # the last epoch's checkpoint is written: then the kill
    with pytest.raises(Killed):
        run(digits, tmp_path, run_dir=run_dir)
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert files == ["prune/step-1.pt", "prune/step-2.pt", "quantize/fine-tune.pt", "run.json", "train.pt"]
    assert epochs == ["train 1", "train 2", "train 3", "train 4", "prune 1/2 1", "prune 1/2 2", "prune 2/2 1",
                      "prune 2/2 2", "quantize 1", "quantize 2"]
    state = torch.load(run_dir / "prune" / "step-2.pt", weights_only=True)
    assert [log["epoch"] for log in state["logs"]] == [1, 2] and state["rng"].dtype == torch.uint8


def test_the_report_is_written_before_the_file_and_pairs_with_it(digits, tmp_path, monkeypatch, epochs):
    run_dir = tmp_path / "m.mzip.run"
    (tmp_path / "m.mzip").write_bytes(b"an older file")
    write = modelzip.pipeline.atomic_write

    def killed_writing_the_file(path, writer):
        if str(path).endswith(".mzip"):
            raise Killed
        write(path, writer)
    with monkeypatch.context() as patch:
        patch.setattr(modelzip.pipeline, "atomic_write", killed_writing_the_file)
        with pytest.raises(Killed):
            run(digits, tmp_path, run_dir=run_dir)
    assert json.loads((tmp_path / "m.json").read_text())["file_bytes"] > 0  # the report went first
    assert run_dir.exists()  # kept until both are written: the rerun writes them again
    trained = len(epochs)
    result = run(digits, tmp_path, run_dir=run_dir)
    assert len(epochs) == trained == EPOCHS  # the rerun only replays: nothing is trained twice
    data, report = (tmp_path / "m.mzip").read_bytes(), json.loads((tmp_path / "m.json").read_text())
    assert data == result.data and report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["file_bytes"] == len(data)


def test_stale_temporaries_of_the_outputs_and_checkpoints_are_removed(digits, tmp_path, monkeypatch):
    run_dir = tmp_path / "m.mzip.run"
    with monkeypatch.context() as patch:
        kill_after(patch, 5)
        with pytest.raises(Killed):
            run(digits, tmp_path, run_dir=run_dir)
    stale = [tmp_path / ".m.mzip.k3_9xq0z.tmp", tmp_path / ".m.json.a1b2c3d4.tmp",
             run_dir / ".train.pt.zzzzzzzz.tmp", run_dir / "prune" / ".step-1.pt.0000_000.tmp"]
    users = [tmp_path / ".m.mzip.backup.tmp", tmp_path / "m.mzip.tmp", tmp_path / ".other.mzip.k3_9xq0z.tmp",
             tmp_path / ".m.mzip.K3_9XQ0Z.tmp", tmp_path / "notes.txt"]
    for path in stale + users:
        path.write_bytes(b"x")
    with monkeypatch.context() as patch:  # the rerun looks (and cleans) before it trains: stop it at its first save
        kill_after(patch, 1)
        with pytest.raises(Killed):
            run(digits, tmp_path, run_dir=run_dir)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in users)


def test_remove_temporaries_matches_only_atomic_writes_of_the_name(tmp_path):
    names = [".a.bin.abcdefgh.tmp", ".a.bin.abcdefg.tmp", ".a.bin.abcdefgh.tmp.x", ".b.bin.abcdefgh.tmp", "a.bin"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    remove_temporaries(tmp_path, "a.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:3] + names[4:])
    remove_temporaries(tmp_path / "absent")  # nothing to clean: no error


@pytest.mark.parametrize("change, differs", [
    ({"recipe": Recipe(name="resumable", train=TrainConfig(epochs=4), prune=RECIPE.prune,
                       quantize=QuantizeConfig(bits=3, finetune=RECIPE.quantize.finetune))}, "recipe"),
    ({"seed": 1}, "model"),
])
def test_a_run_folder_of_another_run_is_refused(digits, tmp_path, monkeypatch, change, differs):
    run_dir = tmp_path / "m.mzip.run"
    with monkeypatch.context() as patch:
        kill_after(patch, 3)
        with pytest.raises(Killed):
            run(digits, tmp_path, run_dir=run_dir)
    with pytest.raises(ConfigError, match=f"run folder .* holds another run \\(its {differs} differ\\)"):
        run(digits, tmp_path, run_dir=run_dir, **change)
    assert (run_dir / "train.pt").exists()  # refused before anything is touched


def test_keep_run_dir_keeps_the_folder(digits, tmp_path):
    run(digits, tmp_path, run_dir=tmp_path / "kept", keep_run_dir=True)
    assert (tmp_path / "kept" / "run.json").exists() and (tmp_path / "kept" / "quantize" / "fine-tune.pt").exists()


def test_cli_resume_defaults_to_a_folder_beside_out(tmp_path, monkeypatch, epochs):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ntrain: {epochs: 3}\nprune: {sparsity: 0.8, steps: 1, retrain: {epochs: 2}}\n"
                      "quantize: {bits: 4, finetune: {epochs: 1}}\n")
    straight, out, report = tmp_path / "straight.mzip", tmp_path / "m.mzip", tmp_path / "m.json"
    command = ["compress", "--model", "lenet-300-100", "--data", "digits", "--recipe", str(recipe)]
    assert main([*command, "--out", str(straight)]) == 0
    with monkeypatch.context() as patch:
        kill_after(patch, 4)
        with pytest.raises(Killed):
            main([*command, "--out", str(out), "--report", str(report), "--resume"])
    assert (tmp_path / "m.mzip.run" / "prune" / "step-1.pt").exists()
    del epochs[:]
    assert main([*command, "--out", str(out), "--report", str(report), "--resume"]) == 0
    assert out.read_bytes() == straight.read_bytes() and len(epochs) == 2
    assert json.loads(report.read_text())["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not (tmp_path / "m.mzip.run").exists()


def test_fit_resumes_its_random_state_and_the_parameters_outside_the_model(digits, tmp_path):
    """Jitter draws from torch's generator, and a prior's parameters train beside the model's."""
    config = TrainConfig(epochs=3)
    steps = -(-len(digits.train) // config.batch_size)

    def trained(checkpoint=None, crash_after=None):
        torch.manual_seed(0)
        model = build("lenet-300-100", digits.input_shape, digits.num_classes)
        prior = nn.Parameter(torch.zeros(3))
        calls = []

        def loss(m, batch):
            calls.append(1)
            if crash_after is not None and len(calls) > crash_after:
                raise Killed
            return jittered(1)(m, batch) + (prior - 1).pow(2).sum()
        groups = [{"params": list(model.parameters())}, {"params": [prior], "lr": 0.1}]
        fit(model, digits.train, config, loss_fn=loss, param_groups=groups, checkpoint=checkpoint)
        return [*model.state_dict().values(), prior.detach()]

    reference = trained()
    with pytest.raises(Killed):
        trained(tmp_path / "c.pt", crash_after=steps + 3)
    resumed = trained(tmp_path / "c.pt")
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed))


def test_soft_sharing_resumes_to_the_same_bytes(digits, tmp_path, monkeypatch):
    """The prior's means, precisions and mixing proportions train outside the model: the checkpoint holds them."""
    recipe = Recipe(name="sws", soft_sharing=SoftSharingConfig(
        components=9, tau=3.0, lr_means=1e-3, lr_log_precision=0.1, lr_mixing=0.01,
        train=TrainConfig(epochs=3, batch_size=64), finetune=TrainConfig(epochs=1, batch_size=256)))

    def compressed(folder, **kwargs):
        torch.manual_seed(0)
        model = build("mlp-32", digits.input_shape, digits.num_classes)
        fit(model, digits.train, TrainConfig(epochs=1, min_steps=300, lr=3e-3))
        return modelzip.compress(model, digits, recipe, out=folder / "m.mzip", **kwargs)

    straight = compressed(tmp_path / "a")
    assert straight.soft_sharing.merged.components > 5  # a prior that did not collapse into zero
    with monkeypatch.context() as patch:
        kill_after(patch, 2)  # in the retraining under the prior
        with pytest.raises(Killed):
            compressed(tmp_path / "b", run_dir=tmp_path / "run")
    assert compressed(tmp_path / "b", run_dir=tmp_path / "run").data == straight.data


STAGES = {  # stages that change the structure between their trainings (then QAT), and a distilled student
    "slimming": ("vgg-bn", {"widths": [8, "M", 16], "hidden": 16}, Recipe(name="slim", slimming=SlimmingConfig(
        channels=ChannelPruneConfig(amount=0.5), train=TrainConfig(epochs=2), finetune=TrainConfig(epochs=2)),
        uniform=UniformConfig(bits=4, train=TrainConfig(epochs=2)))),
    "low_rank": ("lenet-300-100", {}, Recipe(name="low", low_rank=LowRankConfig(
        ratio=0.25, min_weights=5000, finetune=TrainConfig(epochs=2)),
        uniform=UniformConfig(bits=4, method="lsq", train=TrainConfig(epochs=2)))),
    "distill": ("lenet-300-100", {}, Recipe(name="distill", distill=DistillStage(
        student="mlp-32", train=TrainConfig(epochs=3)), prune=PruneConfig(sparsity=0.5, steps=1))),
}


@pytest.mark.parametrize("stage, saves", [("slimming", 3), ("slimming", 5), ("low_rank", 1), ("low_rank", 3),
                                          ("distill", 2)])
def test_stages_resume_to_the_same_bytes(digits, tmp_path, monkeypatch, stage, saves):
    name, kwargs, recipe = STAGES[stage]

    def compressed(folder, **options):
        torch.manual_seed(0)
        model = build(name, digits.input_shape, **kwargs)
        return modelzip.compress(model, digits, recipe, out=folder / "m.mzip", **options).data

    straight = compressed(tmp_path / "a")
    with monkeypatch.context() as patch:
        kill_after(patch, saves)  # in the training after the structure changed, in QAT, in distillation
        with pytest.raises(Killed):
            compressed(tmp_path / "b", run_dir=tmp_path / "run")
    assert compressed(tmp_path / "b", run_dir=tmp_path / "run") == straight
