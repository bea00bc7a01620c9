"""Quantization on the full MNIST: real bytes and real speed, side by side in one run.

    .venv/bin/python benchmarks/quantization.py [--data mnist:../shared/data/mnist] [--only SECTION ...]

Sections (each adds its keys to benchmarks/results/quantization.json; run them in parallel with --only,
and `latency` alone, after `weights`, on a quiet machine):
- weights: LeNet-5 (float accuracy_before) stored with int8 and int4 codes after training (post-training,
  per-channel symmetric min-max), with binary codes (BinaryConnect/XNOR scale, trained) and with int4
  codes from quantization-aware training. Keys int8, int4, binary, qat_int4, each with file_ratio
  (float .mzip bytes / coded .mzip bytes), accuracy_before, accuracy_after (the model decoded from the
  file) and accuracy_int8_execution (weights and activations int8, activations calibrated on 1,000
  training images).
- latency: latency_ratio_b1 / _b64 of each (float PyTorch forward time / the int8 execution path's, all
  interleaved in one run; int4 and binary codes run in int8 kernels, as no CPU kernel takes fewer bits).
- data_free: a batch-norm CNN (the VGG-BN of the structured benchmark) run in int8 with activation ranges
  calibrated on 512 real training images or on 512 images synthesized from its batch-norm statistics:
  data_free_int8 {accuracy_float, accuracy_real_calibration, accuracy_data_free, accuracy_noise_calibration}.
- data_free_qat: the same network at 3-bit weights, post-training, and after QAT by distillation from the
  float network (soft targets only) on 1,024 synthesized images or on 1,024 real ones: data_free_qat.
- quant_noise: LeNet-5's conv2 and fc1 product-quantized (iPQ: blocks of 5, 256 codewords, 1.6 bits a
  weight; and `extreme`: blocks of 10, 32 codewords, 0.5 bits) and fine-tuned with Quant-Noise (p = 0.1)
  or with plain iPQ QAT (p = 1), then both re-clustered and their codebooks fine-tuned, same size:
  quant_noise {accuracy_quant_noise, accuracy_plain_qat, file bytes, and each before the final stage}.
- hashing: LeNet-300-100 with every layer hashed into 1/8 and 1/64 of its weights, as shared buckets
  (HashedNets) or as the entries of a product of two thin matrices (structured multi-hashing, per
  layer), fitted to the trained network by least squares, then trained 4 epochs: accuracy, file bytes.
- onnx: LeNet-5 exported to ONNX (float, and QDQ int8 calibrated on 1,000 training images); ONNX Runtime's
  predictions on the 10,000 test images against PyTorch's: onnx_argmax_agreement (float), onnx_qdq (its
  agreement, accuracy, and ONNX Runtime's latency float / QDQ; run it alone too, it times).
- mixed: LeNet-5 post-training at 2.5 and 3 bits per weight on average: per-layer widths from the
  sensitivity analysis (on 5,000 training images) against the widest single width within the budget.
Trained networks are cached in benchmarks/results/files/.
"""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import modelzip
from modelzip.data import sample
from modelzip.distill import DistillConfig, distill
from modelzip.export import OnnxModel, argmax_agreement, export_onnx
from modelzip.profile import compare_latency
from modelzip.layers import independent_copy, strip
from modelzip.quantize import (QuantSpec, bit_specs, finish_quant_noise, hash_, int8_model, mixed_precision,
                               pq_quantize_, prepare_qat, prepare_quant_noise, quantize_weights_, synthesize)
from modelzip.structured import scale_penalty
from modelzip.train import TrainConfig, evaluate, fit
from sections import Section, run
from structured import TRAIN, cached, lenet

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quantization.json"
CACHE = HERE / "results" / "files" / "quantization"
CODED = ("int8", "int4", "binary", "qat_int4")
QAT = TrainConfig(epochs=2, batch_size=128, lr=1e-4)  # fine-tuning through the quantizer, from the trained net
BINARY = TrainConfig(epochs=4, batch_size=128, lr=1e-3)  # 1 bit is far from the float net: train longer
HASHED = TrainConfig(epochs=4, batch_size=128, lr=1e-3)  # shared buckets: the net has to re-learn
SECTIONS: dict[str, Section] = {}


def section(fn: Section) -> Section:
    SECTIONS[fn.__name__] = fn
    return fn


def decoded(model: nn.Module) -> tuple[nn.Module, int]:
    """The model as a user loads it from its .mzip bytes, and the number of bytes."""
    data = modelzip.dumps(model)
    return modelzip.loads(data), len(data)


@section
def weights(data: modelzip.DataBundle) -> dict:
    float_model = lenet("lenet-5", data)
    float_bytes = len(modelzip.dumps(float_model))
    before = evaluate(float_model, data.test)
    calibration = sample(data.train, 1000, seed=0).tensors[0]
    coded: dict[str, nn.Module] = {}
    for name, spec in (("int8", QuantSpec(8, per_channel=True)), ("int4", QuantSpec(4, per_channel=True))):
        coded[name] = copy.deepcopy(float_model)
        quantize_weights_(coded[name], spec)
    for name, method, spec, train in (("binary", "binary", QuantSpec(per_channel=True), BINARY),
                                      ("qat_int4", "uniform", QuantSpec(4, per_channel=True), QAT)):
        model = copy.deepcopy(float_model)
        prepare_qat(model, spec, method=method)
        fit(model, data.train, train, desc=name)
        quantize_weights_(model)
        coded[name] = model
    results = {}
    for name, model in coded.items():
        size = modelzip.save(model, CACHE / f"lenet-5-{name}.mzip")
        loaded = modelzip.load(CACHE / f"lenet-5-{name}.mzip")
        results[name] = {"file_ratio": float_bytes / size, "file_bytes": size, "float_file_bytes": float_bytes,
                         "accuracy_before": before, "accuracy_after": evaluate(loaded, data.test),
                         "accuracy_int8_execution": evaluate(int8_model(loaded, calibration), data.test)}
    return results


@section
def latency(data: modelzip.DataBundle) -> dict:
    """CPU forward time of the float LeNet-5 / each coded one's int8 execution, interleaved in one run.

    Run it alone, after `weights`: timings taken while other sections train are noise.
    """
    results = json.loads(RESULTS.read_text())
    calibration = sample(data.train, 1000, seed=0).tensors[0]
    runners = {"float": lenet("lenet-5", data).eval()}
    for name in CODED:
        runners[name] = int8_model(modelzip.load(CACHE / f"lenet-5-{name}.mzip"), calibration)
    for batch, rounds in ((1, 400), (64, 60)):
        times = compare_latency(runners, torch.randn(batch, *data.input_shape), rounds=rounds)
        for name in CODED:
            results[name][f"latency_ratio_b{batch}"] = times["float"] / times[name]
    return {name: results[name] for name in CODED}


def vgg_bn(data: modelzip.DataBundle) -> nn.Module:
    """The slimming benchmark's batch-norm CNN (trained with its L1 penalty on the scales, not pruned)."""
    penalty = 3e-3
    return cached(f"vgg-bn-l1-{penalty}", "vgg-bn", data, lambda m: fit(
        m, data.train, TRAIN, loss_fn=scale_penalty(m, penalty), desc="vgg-bn sparsity")).eval()


@section
def data_free(data: modelzip.DataBundle) -> dict:
    model = vgg_bn(data)
    real = sample(data.train, 512, seed=0).tensors[0]
    synthetic = synthesize(model, data.input_shape, 512, steps=300, seed=0)
    noise = torch.randn(512, *data.input_shape, generator=torch.Generator().manual_seed(0))
    return {"data_free_int8": {
        "accuracy_float": evaluate(model, data.test),
        "accuracy_real_calibration": evaluate(int8_model(model, real), data.test),
        "accuracy_data_free": evaluate(int8_model(model, synthetic), data.test),
        "accuracy_noise_calibration": evaluate(int8_model(model, noise), data.test),
        "calibration_images": 512, "synthesis_steps": 300}}


@section
def data_free_qat(data: modelzip.DataBundle) -> dict:
    """3-bit weights, where post-training quantization costs points: QAT by distillation from the float net
    (soft targets only, no labels) on 1,024 synthesized images, against the same on 1,024 real ones."""
    model = vgg_bn(data)
    out = {"bits": 3, "images": 1024, "accuracy_float": evaluate(model, data.test)}
    post = copy.deepcopy(model)
    quantize_weights_(post, QuantSpec(3, per_channel=True))
    out["accuracy_post_training"] = evaluate(post, data.test)
    synthetic = synthesize(model, data.input_shape, 1024, steps=300, seed=1)
    for key, images in (("data_free", synthetic), ("real_images", sample(data.train, 1024, seed=0).tensors[0])):
        student = copy.deepcopy(model)
        prepare_qat(student, QuantSpec(3, per_channel=True))
        distill(student, model, TensorDataset(images), DistillConfig(temperature=4.0, alpha=1.0, train=TrainConfig(
            epochs=10, batch_size=64, lr=1e-4)), desc=f"3-bit QAT, {key}")
        quantize_weights_(student)
        out[f"accuracy_distilled_{key}"] = evaluate(student, data.test)
    return {"data_free_qat": out}


@section
def quant_noise(data: modelzip.DataBundle) -> dict:
    """Fan et al.'s procedure for both: train with the noise rate p, then iPQ of the trained weights (k-means
    anew) and one epoch fine-tuning the codebooks; `_before_final_stage` is the net right after training,
    fully quantized with the codebook it trained (`finish_quant_noise`)."""
    float_model = lenet("lenet-5", data)
    out = {"accuracy_float": evaluate(float_model, data.test)}
    layers = ["conv2", "fc1"]  # conv1 and fc2 (1.3% of the weights): int8
    for setting, block_size, centroids in (("", 5, 256), ("extreme", 10, 32)):
        entry = out.setdefault(setting, {}) if setting else out
        entry.update(block_size=block_size, centroids=centroids)
        for key, p in (("quant_noise", 0.1), ("plain_qat", 1.0)):
            model = copy.deepcopy(float_model)
            prepare_quant_noise(model, p, "pq", block_size=block_size, centroids=centroids, layers=layers)
            fit(model, data.train, TrainConfig(epochs=2, lr=3e-4), desc=key)
            trained = strip(independent_copy(model).eval())  # p < 1: the full-precision weights; p = 1: quantized
            entry[f"accuracy_{key}_before_final_stage"] = evaluate(finish_quant_noise(model), data.test)
            pq_quantize_(trained, block_size, centroids, layers=layers)
            fit(trained, data.train, TrainConfig(epochs=1, lr=1e-4), desc=f"{key} codebooks")
            quantize_weights_(trained, QuantSpec(8, per_channel=True))
            loaded, size = decoded(trained)
            entry[f"accuracy_{key}"], entry[f"file_bytes_{key}"] = evaluate(loaded, data.test), size
    return {"quant_noise": out}


@section
def hashing(data: modelzip.DataBundle) -> dict:
    dense = lenet("lenet-300-100", data)
    out = {"accuracy_dense": evaluate(dense, data.test), "file_bytes_dense": len(modelzip.dumps(dense))}
    for structure in ("buckets", "product"):
        for ratio in (1 / 8, 1 / 64):
            model = copy.deepcopy(dense)
            hash_(model, ratio, structure=structure)  # every layer, fitted to the dense weight by least squares
            hashed = evaluate(model, data.test)
            fit(model, data.train, HASHED, desc=f"{structure} 1/{round(1 / ratio)}")
            loaded, size = decoded(model)
            out[f"{structure} 1/{round(1 / ratio)}"] = {
                "accuracy_hashed": hashed, "accuracy_trained": evaluate(loaded, data.test), "file_bytes": size,
                "file_ratio": out["file_bytes_dense"] / size, "params": modelzip.layers.parameter_count(model)}
    return {"hashing": out}


@section
def onnx(data: modelzip.DataBundle) -> dict:
    model = lenet("lenet-5", data)
    calibration = sample(data.train, 1000, seed=0).tensors[0]
    images = data.test.tensors[0]
    with tempfile.TemporaryDirectory() as tmp:
        path, qdq = Path(tmp) / "lenet-5.onnx", Path(tmp) / "lenet-5-qdq.onnx"
        float_bytes = export_onnx(model, path)
        qdq_bytes = export_onnx(model, qdq, qdq=True, calibration=calibration)
        runners = {"pytorch": model, "ort": OnnxModel(path), "ort_qdq": OnnxModel(qdq)}
        out = {"onnx_argmax_agreement": argmax_agreement(model, path, images),
               "onnx_qdq": {"argmax_agreement": argmax_agreement(model, qdq, images), "float_bytes": float_bytes,
                            "qdq_bytes": qdq_bytes, "accuracy_pytorch": evaluate(model, data.test),
                            "accuracy_qdq": evaluate(runners["ort_qdq"], data.test)}}
        for batch, rounds in ((1, 400), (64, 60)):  # ONNX Runtime's int8 kernels against its float ones
            times = compare_latency(runners, torch.randn(batch, *data.input_shape), rounds=rounds)
            out["onnx_qdq"][f"latency_ratio_b{batch}"] = times["ort"] / times["ort_qdq"]
            out["onnx_qdq"][f"ort_over_pytorch_b{batch}"] = times["pytorch"] / times["ort"]
        return out


@section
def mixed(data: modelzip.DataBundle) -> dict:
    model = lenet("lenet-5", data)
    held_out = sample(data.train, 5000, seed=1)
    out = {"accuracy_float": evaluate(model, data.test)}
    for budget in (2.5, 3.0):
        chosen = mixed_precision(model, lambda m: evaluate(m, held_out), budget)
        entry = {"bits": chosen.values, "uniform_bits": int(budget)}  # the widest single width within the budget
        for key, layers in (("accuracy_mixed", bit_specs(chosen)), ("accuracy_uniform", None)):
            coded = copy.deepcopy(model)
            quantize_weights_(coded, QuantSpec(int(budget), per_channel=True), layers=layers)
            entry[key] = evaluate(coded, data.test)
        out[f"{budget:g}_bits"] = entry
    return {"mixed_precision": out}


if __name__ == "__main__":
    raise SystemExit(run(__doc__, SECTIONS, RESULTS))
