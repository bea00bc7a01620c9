"""Two gloo ranks on the CPU (torch.multiprocessing.spawn): fit, pruning, k-means, compress and the CLI.

One spawned run does every distributed part (each process start costs seconds); each rank saves what it
ended with, and the parent compares the ranks and resumes the two ranks' checkpoint in one process.
"""
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

import modelzip
from modelzip import distributed
from modelzip.cli import main
from modelzip.data import load_data
from modelzip.distill import cache_soft_logits
from modelzip.models import build
from modelzip.prune import PruneConfig, prune_
from modelzip.quantize import QuantizeConfig, quantize_
from modelzip.recipes import Recipe
from modelzip.train import TrainConfig, cross_entropy, fit

SGD = TrainConfig(epochs=1, lr=0.1, optimizer="sgd", momentum=0.0, cosine=False)
RESUMED = TrainConfig(epochs=3, lr=1e-2)
TINY = Recipe(name="tiny", train=TrainConfig(epochs=10, lr=3e-3), prune=PruneConfig(sparsity=0.8, steps=2,
              retrain=TrainConfig(epochs=2)), quantize=QuantizeConfig(bits=4, finetune=TrainConfig(epochs=1)))
TINY_YAML = ("name: tiny\ntrain: {epochs: 1}\nprune: {sparsity: 0.8, steps: 1, retrain: {epochs: 1}}\n"
             "quantize: {bits: 4, finetune: {epochs: 1}}\n")


def three_batches() -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)] for _ in range(3)]


def batch_norm_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def _rank(rank: int, ports: tuple[int, int], tmp: Path) -> None:
    """One rank of the run; every model starts from a seed of its own rank, so only broadcasts make them agree."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    digits = load_data("digits")
    kept: dict[str, object] = {}
    with distributed.launched():
        assert distributed.is_distributed() and distributed.rank() == rank and distributed.world_size() == 2
        torch.manual_seed(rank)
        linear = nn.Linear(4, 3)
        logs = fit(linear, three_batches(), SGD)  # rank 0: batches 0 and 2, rank 1: batch 1, then nothing
        kept["linear"], kept["linear_loss"] = linear.state_dict(), logs[0].loss

        torch.manual_seed(rank)
        cut = nn.Linear(4, 3)
        fit(cut, TensorDataset(*three_batches()[0]), replace(SGD, batch_size=4, epochs=2))  # 2 + 2 a step
        kept["cut"] = cut.state_dict()

        torch.manual_seed(rank)
        net, calls = batch_norm_net(), []

        def crash_in_epoch_3(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
            # 1,437 examples in 23 batches of 64 (half of 128): 12 an epoch for rank 0, 11 for rank 1 (which
            # pads its 12th step), so both ranks crash at the first step of epoch 3
            calls.append(1)
            if len(calls) > 2 * (12 - rank):
                raise KeyboardInterrupt
            return cross_entropy(model, batch)

        try:
            fit(net, digits.train, RESUMED, checkpoint=tmp / "run.pt", loss_fn=crash_in_epoch_3)
        except KeyboardInterrupt:
            kept["batch_norm"] = net.state_dict()

        torch.manual_seed(rank)  # different weights on each rank: masks and codebooks must still be rank 0's
        shared = build("mlp-32", digits.input_shape, digits.num_classes)
        prune_(shared, 0.5)
        kept["masks"] = {k: v.clone() for k, v in shared.state_dict().items() if k.endswith(".mask")}
        quantize_(shared, 3)
        kept["shared"] = shared.state_dict()

        torch.manual_seed(rank)  # a teacher of each rank's own: the soft targets must be rank 0's
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        transfer = TensorDataset(digits.train.tensors[0][:50])
        kept["soft"] = cache_soft_logits(teacher, transfer, 4.0)
        kept["soft_file"] = cache_soft_logits(teacher, transfer, 4.0, path=tmp / "soft.npy").clone()

        torch.manual_seed(rank)
        result = modelzip.compress(build("lenet-300-100", digits.input_shape, digits.num_classes), digits, TINY,
                                   pretrained=False, out=tmp / f"out{rank}.mzip")
        kept["blob"], kept["accuracy"] = result.data, result.report["accuracy_after"]
    assert not distributed.is_distributed()  # the group the block made is gone
    os.environ["MASTER_PORT"] = str(ports[1])
    assert main(["compress", "--model", "mlp-32", "--data", "digits", "--recipe", str(tmp / "tiny.yaml"),
                 "--out", str(tmp / f"cli{rank}.mzip"), "--report", str(tmp / f"cli{rank}.json")]) == 0
    torch.save(kept, tmp / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("ranks")
    (tmp / "tiny.yaml").write_text(TINY_YAML)
    mp.spawn(_rank, args=((_free_port(), _free_port()), tmp), nprocs=2, join=True)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradients_are_averaged_over_the_ranks_batches(ranks):
    _, (zero, one) = ranks
    assert identical(zero["linear"], one["linear"])
    torch.manual_seed(0)  # rank 0's start, which fit broadcast
    alone = nn.Linear(4, 3)
    b0, b1, b2 = three_batches()
    # step 1: the mean of two equal-sized batches' mean losses is the mean over both; step 2: batch 2 alone
    logs = fit(alone, [[torch.cat([b0[0], b1[0]]), torch.cat([b0[1], b1[1]])], b2], SGD)
    assert logs[0].loss == pytest.approx(zero["linear_loss"]) == one["linear_loss"]  # over all 24 examples
    assert all(torch.allclose(v, zero["linear"][k], atol=1e-6) for k, v in alone.state_dict().items())


def test_a_tensor_dataset_is_cut_so_two_ranks_train_as_one_process(ranks):
    """Each rank takes half of every batch: the same steps on the same global batches as one process."""
    _, (zero, one) = ranks
    torch.manual_seed(0)
    alone = nn.Linear(4, 3)
    fit(alone, TensorDataset(*three_batches()[0]), replace(SGD, batch_size=4, epochs=2))
    assert identical(zero["cut"], one["cut"])
    assert all(torch.allclose(v, zero["cut"][k], atol=1e-6) for k, v in alone.state_dict().items())


def test_parameters_and_batch_norm_statistics_agree(ranks):
    _, (zero, one) = ranks
    assert identical(zero["batch_norm"], one["batch_norm"])
    assert zero["batch_norm"]["2.num_batches_tracked"] == 2 * 12  # rank 0's count: 12 steps an epoch


def test_masks_and_codebooks_are_rank_0s(ranks):
    _, (zero, one) = ranks
    assert len(zero["masks"]) == 2 and identical(zero["masks"], one["masks"])  # mlp-32's two layers
    chosen = [k for k in zero["shared"] if k.endswith((".codes", ".centroids"))]
    assert len(chosen) == 2 * 2 and all(torch.equal(zero["shared"][k], one["shared"][k]) for k in chosen)
    assert not torch.equal(zero["shared"]["fc1.bias"], one["shared"]["fc1.bias"])  # the ranks did differ
    assert zero["shared"]["fc1.parametrizations.weight.0.centroids"].numel() == 2 ** 3 - 1


def test_cached_teacher_targets_are_rank_0s(ranks):
    tmp, (zero, one) = ranks
    assert zero["soft"].shape == (50, 10)
    assert torch.equal(zero["soft"], one["soft"]) and torch.equal(zero["soft_file"], one["soft_file"])
    assert torch.equal(zero["soft"], zero["soft_file"])  # the file rank 0 wrote holds what it computed
    assert [p.name for p in tmp.glob("*soft*")] == ["soft.npy"]


def test_compress_gives_every_rank_the_bytes_only_rank_0_wrote(ranks):
    tmp, (zero, one) = ranks
    assert zero["blob"] == one["blob"] == (tmp / "out0.mzip").read_bytes()
    assert not (tmp / "out1.mzip").exists()
    assert zero["accuracy"] == one["accuracy"] > 0.8
    assert (tmp / "cli0.mzip").exists() and not (tmp / "cli1.mzip").exists()
    assert json.loads((tmp / "cli0.json").read_text())["file_bytes"] == (tmp / "cli0.mzip").stat().st_size
    assert not (tmp / "cli1.json").exists()


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(ranks):
    tmp, _ = ranks
    written = torch.load(tmp / "run.pt", weights_only=True)
    assert [log["epoch"] for log in written["logs"]] == [1, 2]
    # the cosine schedule stands at 2 of 3 epochs, whatever the number of ranks: lr (1 + cos(2 pi / 3)) / 2
    assert written["optimizer"]["param_groups"][0]["lr"] == pytest.approx(RESUMED.lr * 0.25)
    digits = load_data("digits")
    net = batch_norm_net()
    logs = fit(net, digits.train, RESUMED, checkpoint=tmp / "run.pt")
    assert [log.epoch for log in logs] == [1, 2, 3]
    assert [vars(log) for log in logs[:2]] == written["logs"]
    after = torch.load(tmp / "run.pt", weights_only=True)
    assert after["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule's end
    assert not identical(after["model"], written["model"])
    assert not list(tmp.glob(".*.tmp"))


def test_outside_torchrun_everything_is_one_process(monkeypatch):
    for var in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not distributed.init() and not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.arange(3.0)
    assert distributed.broadcast_tensor_(t) is t and torch.equal(t, torch.arange(3.0))
    assert list(distributed.shard(iter("abc"), 3)) == ["a", "b", "c"]
