"""The uniform quantization stage of recipes: post-training, QAT, Quant-Noise and mixed precision, end to end."""
import copy
import dataclasses

import pytest
import torch

import modelzip
from modelzip.errors import ConfigError
from modelzip.quantize import QuantizedLinear, UniformConfig, int8_model, uniform_quantization
from modelzip.second_order import SecondOrderConfig
from modelzip.recipes import Recipe, from_mapping, load_recipe
from modelzip.train import TrainConfig, evaluate, fit


def test_int8_recipe_keeps_accuracy_at_a_quarter_of_the_size(digits, trained_lenet):
    result = modelzip.compress(trained_lenet, digits, "int8")
    report = result.report
    assert abs(report["accuracy_after"] - report["accuracy_before"]) <= 0.01
    assert report["compression_ratio"] > 3.5
    assert all(isinstance(result.model.get_submodule(n), QuantizedLinear) for n in ("fc1", "fc2", "fc3"))
    assert [row["name"] for row in report["layers"] if row["weight_bits"] <= 8] == ["fc1", "fc2", "fc3"]


def test_qat_int4_recipe_recovers_what_post_training_int4_loses(digits, trained_lenet):
    recipe = load_recipe("qat-int4")
    assert recipe.uniform.bits == 4 and recipe.uniform.train is not None
    post = copy.deepcopy(trained_lenet)
    uniform_quantization(post, digits.train, UniformConfig(bits=2))
    qat = copy.deepcopy(trained_lenet)
    uniform_quantization(qat, digits.train, UniformConfig(bits=2, train=TrainConfig(epochs=3, lr=3e-4)))
    assert evaluate(qat, digits.test) > evaluate(post, digits.test) + 0.02
    assert qat.fc1.codes.abs().max() == 1  # 2-bit symmetric codes: -1, 0, 1


@pytest.mark.parametrize("method", ["binary", "ternary", "lsq"])
def test_trained_methods(digits, trained_lenet, method):
    model = copy.deepcopy(trained_lenet)
    done = uniform_quantization(model, digits.train, UniformConfig(bits=4, method=method, train=TrainConfig(epochs=2)))
    assert set(done.values()) == {{"binary": "1-bit", "ternary": "2-bit", "lsq": "4-bit"}[method]}
    assert evaluate(model, digits.test) > 0.8


def test_quant_noise_stage(digits, trained_lenet):
    model = copy.deepcopy(trained_lenet)
    config = UniformConfig(bits=4, noise=0.5, train=TrainConfig(epochs=2))
    assert set(uniform_quantization(model, digits.train, config).values()) == {"4-bit"}
    assert evaluate(model, digits.test) > 0.85


def test_mixed_precision_stage_meets_its_budget(digits, trained_lenet):
    model = copy.deepcopy(trained_lenet)
    uniform_quantization(model, digits.train, UniformConfig(mixed=3.0, examples=500))
    layers = [model.fc1, model.fc2, model.fc3]
    average = sum(m.bits * m.codes.numel() for m in layers) / sum(m.codes.numel() for m in layers)
    assert average <= 3.0 and len({m.bits for m in layers}) > 1


@pytest.mark.parametrize(("config", "message"), [
    ({"method": "binary"}, "binary weights need training"),
    ({"noise": 0.1}, "Quant-Noise is a training method"),
    ({"mixed": 4.0, "layers": {"fc1": 8}}, "not both"),
    ({"noise": 0.1, "mixed": 3.0, "train": {"epochs": 1}}, "Quant-Noise takes one width for all layers"),
    ({"method": "binary", "mixed": 3.0, "train": {"epochs": 1}}, "binary weights have one width"),
    ({"bits": 9}, "uniform quantization takes bits in 2..8"),
    ({"method": "fp8"}, "'fp8' is not one of uniform, lsq, binary, ternary"),
])
def test_config_errors(digits, trained_lenet, config, message):
    with pytest.raises(ConfigError, match=message):
        uniform = from_mapping(UniformConfig, config, "uniform")
        uniform_quantization(copy.deepcopy(trained_lenet), digits.train, uniform)


def test_a_recipe_quantizes_one_way():
    with pytest.raises(ConfigError, match="quantizing second_order, got quantize and uniform"):
        dataclasses.replace(load_recipe("deep-compression"), uniform=UniformConfig())
    with pytest.raises(ConfigError, match="got uniform and second_order"):
        Recipe(uniform=UniformConfig(), second_order=SecondOrderConfig(bits=4))
    assert Recipe(uniform=UniformConfig(), second_order=SecondOrderConfig(sparsity=0.5)).second_order.sparsity == 0.5
    assert Recipe(uniform=UniformConfig(bits=6)).uniform.spec().bits == 6


def test_folding_first_makes_the_stored_codes_the_ones_int8_kernels_run(digits):
    model = modelzip.build("vgg-bn", digits.input_shape, digits.num_classes, widths=[8, "M", 16], hidden=16)
    fit(model, digits.train, TrainConfig(epochs=3))
    plain, folded = copy.deepcopy(model), copy.deepcopy(model)
    uniform_quantization(plain, digits.train, UniformConfig(bits=8))
    uniform_quantization(folded, digits.train, UniformConfig(bits=8, fold=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert abs(evaluate(folded, digits.test) - evaluate(plain, digits.test)) < 0.02
    calibration = digits.train.tensors[0][:256]
    assert "conv1" not in int8_model(plain, calibration).modelzip_exact_codes
    assert {"conv1", "conv2"} <= set(int8_model(folded, calibration).modelzip_exact_codes)


def test_a_second_order_grid_or_table_codebook_also_counts_as_a_quantizer():
    for options in ({"step": 0.5}, {"embedding_codebook": 4}, {"embedding_step": 0.5}):
        with pytest.raises(ConfigError, match="got uniform and second_order"):
            Recipe(uniform=UniformConfig(), second_order=SecondOrderConfig(**options))
