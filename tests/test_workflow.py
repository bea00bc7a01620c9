"""A user's own model, batches, loss and metric through `compress`, `load` and the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import modelzip
from modelzip.cli import main
from modelzip.data.feed import call, output_tensor
from modelzip.errors import ConfigError, ModelError
from modelzip.prune import PruneConfig
from modelzip.quantize import QuantizeConfig
from modelzip.recipes import Recipe
from modelzip.train import TrainConfig, fit

VOCAB, CLASSES = 40, 3


class TextClassifier(nn.Module):
    """A Hugging Face-shaped model: keyword inputs, a dict output with `logits` and, given labels, `loss`."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden = nn.Linear(16, 64)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.head(torch.relu(self.hidden(pooled)))
        return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}


def text_batches(n_batches: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """The class is which third of the vocabulary most tokens come from; padding varies per sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, CLASSES, (32,), generator=g)
        own = labels[:, None] * (VOCAB // CLASSES) + torch.randint(0, VOCAB // CLASSES, (32, 12), generator=g)
        ids = torch.where(torch.rand(32, 12, generator=g) < 0.7, own, torch.randint(0, VOCAB, (32, 12), generator=g))
        mask = (torch.arange(12)[None] < torch.randint(4, 13, (32, 1), generator=g)).long()
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def batch_accuracy(batches):
    def score(model: nn.Module) -> float:
        with torch.no_grad():
            hits = [(output_tensor(call(model, b)).argmax(1) == b["labels"]).float().mean() for b in batches]
        return torch.stack(hits).mean().item()
    return score


SMALL = Recipe(name="small", prune=PruneConfig(sparsity=0.7, steps=2, retrain=TrainConfig(epochs=2)),
               quantize=QuantizeConfig(bits=5, finetune=TrainConfig(epochs=1, lr=1e-4)))


def test_dict_batches_own_loss_and_metric_through_deep_compression(tmp_path):
    train, held_out = text_batches(20, seed=0), text_batches(8, seed=1)
    model = TextClassifier()
    fit(model, train, TrainConfig(epochs=15, lr=3e-3))  # the default loss is the model's own
    metric = batch_accuracy(held_out)
    assert metric(model) > 0.9
    result = modelzip.compress(model, train, SMALL, metric=metric, metric_name="held-out accuracy",
                               out=tmp_path / "text.mzip")
    report = result.report
    assert report["metric"] == "held-out accuracy" and report["metric_before"] == pytest.approx(metric(model))
    assert report["metric_after"] > report["metric_before"] - 0.03
    assert report["metric_after"] == pytest.approx(metric(result.model))
    assert "accuracy_after" not in report or report["accuracy_after"] is None
    assert result.model.hidden.weight.count_nonzero() <= 0.31 * result.model.hidden.weight.numel()
    assert report["file_bytes"] == (tmp_path / "text.mzip").stat().st_size
    again = modelzip.load(tmp_path / "text.mzip", TextClassifier())
    assert metric(again) == pytest.approx(report["metric_after"])


def test_a_user_loss_fn_replaces_the_default():
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return F.cross_entropy(output_tensor(call(model, batch)), batch["labels"])

    recipe = Recipe(name="p", prune=PruneConfig(sparsity=0.5, steps=1, retrain=TrainConfig(epochs=1)))
    modelzip.compress(TextClassifier(), text_batches(4, seed=0), recipe, loss_fn=loss_fn)
    assert len(calls) == 4  # one epoch of retraining over the four batches


def test_post_training_needs_no_data(trained_lenet, capsys):
    result = modelzip.compress(trained_lenet, None, "int8")
    assert result.report["metric"] is None and result.report["compression_ratio"] > 3.5
    modelzip.report.print_report(result.report)
    assert "no metric measured" in capsys.readouterr().out


def test_unlabelled_batches_give_fidelity_to_the_original(digits, trained_lenet):
    result = modelzip.compress(trained_lenet, TensorDataset(digits.train.tensors[0]), "int8")
    report = result.report
    assert report["metric"] == "output cosine vs original"
    assert report["metric_before"] == pytest.approx(1.0, abs=1e-6)
    assert 0.99 < report["metric_after"] < 1.0


def test_a_training_recipe_without_data_is_refused_before_any_work(trained_lenet):
    with pytest.raises(ConfigError, match="stage.s. prune, quantize: give training data"):
        modelzip.compress(trained_lenet, None, "deep-compression")


def test_a_model_with_the_wrong_number_of_outputs_is_refused(digits):
    model = modelzip.build("lenet-300-100", digits.input_shape, num_classes=3)
    with pytest.raises(ModelError, match=r"outputs \(2, 3\), but digits has 10 classes"):
        modelzip.compress(model, digits, "int8")


def test_one_shot_iterators_and_failing_forwards_are_named(trained_lenet, digits):
    with pytest.raises(ConfigError, match="one-shot iterator"):
        modelzip.compress(trained_lenet, (b for b in [digits.train.tensors[0][:8]]), "int8")

    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("bad input\nsecond line")

    with pytest.raises(ModelError, match=r"^the model's forward raised ValueError: bad input$"):
        modelzip.compress(Broken(), [torch.zeros(2, 3)], "int8")


def test_a_metric_that_returns_nan_is_refused(trained_lenet, digits):
    with pytest.raises(ConfigError, match="metric 'nan_metric' returned NaN"):
        def nan_metric(model):
            return float("nan")
        modelzip.compress(trained_lenet, digits, "int8", metric=nan_metric)


def test_a_file_of_a_model_not_built_by_modelzip_loads_into_the_users_module(tmp_path):
    model = TextClassifier()
    modelzip.save(model, tmp_path / "m.mzip", arch={"edits": []})
    with pytest.raises(ModelError) as info:
        modelzip.load(tmp_path / "m.mzip")
    assert "modelzip.load(path, model)" in str(info.value) and len(str(info.value)) < 200
    loaded = modelzip.load(tmp_path / "m.mzip", TextClassifier())
    assert torch.equal(loaded.embed.weight, model.embed.weight)


def weight_touching_lenet() -> nn.Module:
    """A builder that reads a weight while building (meta tensors have no values)."""
    model = modelzip.build("lenet-300-100", (1, 8, 8), 10)
    model.fc1.weight.data.mul_(1 + model.fc1.weight.abs().max().item())
    return model


def failing_builder() -> nn.Module:
    raise RuntimeError("no GPU here\ntraceback text")


def zero_lenet() -> nn.Module:
    """A 'trained' model every class ties on: accuracy is the share of class 0 unless it is retrained."""
    model = modelzip.build("lenet-300-100", (1, 8, 8), 10)
    for p in model.fc3.parameters():
        nn.init.zeros_(p)
    return model


def test_builders_that_touch_weights_or_raise(tmp_path):
    model = modelzip.build("test_workflow:weight_touching_lenet")
    modelzip.save(model, tmp_path / "m.mzip")
    loaded = modelzip.load(tmp_path / "m.mzip", allow_import=True)
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)
    with pytest.raises(ModelError, match=r"^building test_workflow:failing_builder raised RuntimeError: no GPU here$"):
        modelzip.build("test_workflow:failing_builder")


def test_cli_pretrained_skips_training_and_eval_checks_the_input_shape(tmp_path, digits, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ntrain: {epochs: 3}\nuniform: {bits: 8}\n")
    reports = {}
    for flag in ([], ["--pretrained"]):
        report = tmp_path / f"r{len(flag)}.json"
        assert main(["compress", "--model", "test_workflow:zero_lenet", "--data", "digits", "--recipe", str(recipe),
                     "--out", str(tmp_path / "m.mzip"), "--report", str(report), *flag]) == 0
        reports[bool(flag)] = json.loads(report.read_text())
    share_of_zero = (digits.test.tensors[1] == 0).float().mean().item()
    assert reports[True]["accuracy_before"] == pytest.approx(share_of_zero)
    assert reports[False]["accuracy_before"] > 0.5
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.mzip"), "--data", "mnist5k", "--allow-import"]) == 2
    assert "was compressed for inputs (1, 8, 8), but mnist5k has (1, 28, 28)" in capsys.readouterr().err
    assert main(["compress", "--model", "test_workflow:failing_builder", "--data", "digits",
                 "--out", str(tmp_path / "x.mzip")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_second_order_recipe_on_unlabelled_batches_beats_plain_rounding(digits, trained_lenet):
    calibration = TensorDataset(digits.train.tensors[0][:512])
    plain = Recipe(name="plain", second_order=modelzip.SecondOrderConfig(bits=3, group_size=0, method="plain"))
    obs = Recipe(name="obs", second_order=modelzip.SecondOrderConfig(bits=3, group_size=0))
    reports = {r.name: modelzip.compress(trained_lenet, digits, r, calibration=calibration).report
               for r in (plain, obs)}
    assert reports["obs"]["second_order"]["fc1"]["action"] == "obs, 3-bit"
    assert reports["obs"]["second_order"]["fc1"]["error"] < 0.01
    assert abs(reports["obs"]["file_bytes"] - reports["plain"]["file_bytes"]) < 0.05 * reports["plain"]["file_bytes"]
    assert reports["obs"]["compression_ratio"] > 8
    assert reports["obs"]["accuracy_after"] >= reports["plain"]["accuracy_after"] - 0.005
    with pytest.raises(ConfigError, match="second_order measures each layer's inputs"):
        modelzip.compress(trained_lenet, None, obs)


@pytest.fixture
def hf_folder(tmp_path):
    """A tiny BERT saved as a Hugging Face folder (config, safetensors weights, tokenizer)."""
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path / "tiny-bert"
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(vocab=str(vocab)).save_pretrained(folder)
    return folder


def test_cli_compresses_a_hugging_face_folder_on_text_lines(hf_folder, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    g = torch.Generator().manual_seed(0)
    lines.write_text("\n".join(" ".join(f"w{i}" for i in torch.randint(0, 60, (int(n),), generator=g).tolist())
                               for n in torch.randint(3, 12, (96,), generator=g)) + "\n")
    out, report = tmp_path / "bert.mzip", tmp_path / "bert.json"
    assert main(["compress", "--model", f"hf:{hf_folder}", "--recipe", "obs-int4", "--calibration", str(lines),
                 "--out", str(out), "--report", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["metric"] == "output cosine vs original" and rep["metric_after"] > 0.95
    assert rep["model"] == str(hf_folder.resolve())  # the report names the folder the file rebuilds from
    assert rep["second_order"]["encoder.layer.0.attention.self.query"]["action"] == "obs, 4-bit g128"
    assert rep["second_order"]["embeddings.position_embeddings"]["action"] == "8-bit per token (rounded)"
    loaded = modelzip.load(out, allow_import=True)
    assert isinstance(loaded.embeddings.word_embeddings, modelzip.quantize.QuantizedEmbedding)
    assert main(["inspect", str(out)]) == 0
    assert "structural edits (--json shows them)" in capsys.readouterr().out
    assert main(["compress", "--model", f"hf:{hf_folder}", "--out", str(tmp_path / "x.mzip")]) == 2
    assert "give --calibration FILE" in capsys.readouterr().err
    with pytest.raises(ModelError, match="is not a Hugging Face model folder"):
        modelzip.build(f"hf:{tmp_path}")
