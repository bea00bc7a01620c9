import dataclasses

import numpy as np
import pytest
import torch

import modelzip
from modelzip import codec
from modelzip.errors import ConfigError
from modelzip.prune import prune_
from modelzip.recipes import Recipe, load_recipe
from modelzip.soft_sharing import Gamma, SoftSharingConfig, covered, merge_components, soft_weight_sharing
from modelzip.train import TrainConfig, evaluate, fit

# a strong prior and fast precisions, so a few epochs on 1,400 digits already share weights
FAST = SoftSharingConfig(components=9, tau=3.0, lr_log_precision=0.1, lr_mixing=0.01, lr_means=1e-3,
                         train=TrainConfig(epochs=6, batch_size=64, lr=1e-3))


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    model = modelzip.build("mlp-32", digits.input_shape, digits.num_classes)
    fit(model, digits.train, TrainConfig(epochs=1, min_steps=300, lr=3e-3))
    return model


@pytest.fixture(scope="module")
def shared(pretrained, digits):
    model = modelzip.build("mlp-32", digits.input_shape, digits.num_classes)
    model.load_state_dict(pretrained.state_dict())
    return model, soft_weight_sharing(model, digits.train, FAST, test=digits.test)


def _values(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_zero_component_stays_fixed_while_the_others_learn(shared, pretrained):
    _, run = shared
    assert run.prior.all_means()[0].item() == 0.0
    assert run.prior.mixing()[0].item() == pytest.approx(0.99, abs=1e-7)
    assert run.prior.pi_zero.item() == pytest.approx(0.99) and not run.prior.pi_zero.requires_grad
    start = modelzip.soft_sharing.GaussianMixturePrior.initial(run.pretrained, 9)
    assert not torch.allclose(run.prior.means, start.means)  # learned
    assert (run.prior.log_precision > start.log_precision).all()  # components narrowed


def test_every_weight_and_bias_holds_a_merged_mean(shared):
    model, run = shared
    means = set(run.merged.all_means().tolist())
    assert set(_values(model).tolist()) <= means
    assert 2 <= len(set(_values(model).tolist())) <= 9
    assert run.counts.sum().item() == len(run.pretrained) == sum(p.numel() for p in model.parameters())
    nonzero = (_values(model) != 0).float().mean().item()
    assert nonzero < 0.5  # most weights went to the zero component


def test_the_quantized_model_still_classifies(shared, pretrained, digits):
    model, run = shared
    assert run.accuracy_retrained > 0.85
    assert evaluate(model, digits.test) > 0.85


def test_round_trip_through_mzip_stores_the_means_as_codebook(shared):
    model, run = shared
    blob = modelzip.dumps(model)
    back = modelzip.loads(blob)
    for a, b in zip(model.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    header = codec.read_header(blob)
    means = run.merged.all_means().detach().numpy()
    for name, entry in header["tensors"].items():
        if entry["count"] >= 256:  # small biases may be cheaper raw than with a codebook
            assert entry["encoding"] in ("sparse", "dense"), name
            assert entry["codebook_size"] <= len(means)
    _, arrays = codec.loads(blob)
    stored = np.unique(np.concatenate([a.ravel() for a in arrays.values()]))
    assert set(stored.tolist()) <= set(means.tolist())
    dense = sum(p.numel() for p in model.parameters()) * 4
    assert dense / len(blob) > 5  # the header is a good part of so small a file


def test_biases_can_stay_out_of_the_prior(pretrained, digits):
    model = modelzip.build("mlp-32", digits.input_shape, digits.num_classes)
    model.load_state_dict(pretrained.state_dict())
    names = set(covered(model, biases=False))
    assert names == {n for n, p in model.named_parameters() if n.endswith("weight")}
    quick = dataclasses.replace(FAST, biases=False, train=TrainConfig(epochs=1, batch_size=64))
    run = soft_weight_sharing(model, digits.train, quick)
    assert len(run.pretrained) == sum(model.state_dict()[n].numel() for n in names)


def test_pruned_weights_stay_zero_through_soft_sharing(pretrained, digits):
    model = modelzip.build("mlp-32", digits.input_shape, digits.num_classes)
    model.load_state_dict(pretrained.state_dict())
    prune_(model, 0.8)
    pruned = {n: (w == 0) for n, w in modelzip.layers.plain_state_dict(model).items() if n.endswith("weight")}
    soft_weight_sharing(model, digits.train, dataclasses.replace(FAST, train=TrainConfig(epochs=1, batch_size=64)))
    for name, zero in pruned.items():
        assert (model.state_dict()[name][zero] == 0).all(), name


def test_recipe_takes_the_prior_settings_from_yaml():
    recipe = load_recipe("soft-weight-sharing")
    assert recipe.soft_sharing.components == 17 and recipe.soft_sharing.pi_zero == 0.99
    assert recipe.soft_sharing.hyper_zero == Gamma(5000.0, 2.0) and recipe.quantize is None


def test_soft_sharing_and_quantize_in_one_recipe_is_an_error():
    with pytest.raises(ConfigError, match="second_order, got soft_sharing and quantize"):
        Recipe(soft_sharing=SoftSharingConfig(), quantize=modelzip.QuantizeConfig())


@pytest.mark.parametrize("kwargs", [dict(pi_zero=1.0), dict(tau=-1.0), dict(merge_kl=-1.0), dict(lr_means=0.0)])
def test_bad_soft_sharing_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        SoftSharingConfig(**kwargs)


def test_compress_with_a_soft_sharing_recipe(pretrained, digits, tmp_path):
    recipe = Recipe(name="sws-test", soft_sharing=FAST)
    result = modelzip.compress(pretrained, digits, recipe, out=tmp_path / "m.mzip")
    assert (tmp_path / "m.mzip").read_bytes() == result.data
    report = result.report
    assert set(report["stages"]) == {"after_prior", "after_soft_sharing"}
    assert report["accuracy_after"] == pytest.approx(report["stages"]["after_soft_sharing"])
    assert report["compression_ratio"] > 5
    assert result.soft_sharing is not None and len(result.soft_sharing.retrained) == len(result.soft_sharing.pretrained)
    assert any(not torch.equal(a, b) for a, b in zip(pretrained.parameters(), result.model.parameters()))


def test_training_the_means_keeps_one_codebook_for_the_model(shared, pretrained, digits):
    model = modelzip.build("mlp-32", digits.input_shape, digits.num_classes)
    model.load_state_dict(pretrained.state_dict())
    config = dataclasses.replace(FAST, finetune=TrainConfig(epochs=2, batch_size=64, lr=1e-3))
    run = soft_weight_sharing(model, digits.train, config, test=digits.test)
    assert not modelzip.layers.parametrize.is_parametrized(model.fc1)
    assert set(_values(model).tolist()) <= set(run.merged.all_means().tolist())
    untuned = merge_components(run.prior, config.merge_kl)
    assert untuned.components == run.merged.components
    assert not torch.allclose(untuned.means, run.merged.means)  # the means moved
    # the same assignment as without fine-tuning: the model holds the same pattern of components
    quantized, _ = shared
    assert torch.equal(_values(model) == 0, _values(quantized) == 0)
    x, y = digits.train.tensors
    loss = [torch.nn.functional.cross_entropy(m(x), y).item() for m in (quantized, model)]
    assert loss[1] < 0.9 * loss[0]  # training the codebook lowers the loss quantization raised
