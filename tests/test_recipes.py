import pytest

from modelzip.errors import ConfigError
from modelzip.prune import Scope
from modelzip.quantize import Init
from modelzip.recipes import Recipe, built_in, from_mapping, load_recipe
from modelzip.train import OptimizerName


def test_built_in_deep_compression_maps_onto_typed_configs():
    assert "deep-compression" in built_in()
    recipe = load_recipe("deep-compression")
    assert recipe.quantize.init is Init.LINEAR
    assert recipe.quantize.bits == {"linear": 4, "conv": 6}
    assert recipe.prune.scope is Scope.GLOBAL and recipe.prune.retrain.min_steps == 300


def test_yaml_file_with_scalars_and_enums(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: mine\nprune: {sparsity: 0.5, scope: global}\n"
                    "quantize: {bits: 4, init: density, finetune: {optimizer: sgd, lr: 1}}\n")
    recipe = load_recipe(path)
    assert recipe.prune.sparsity == 0.5 and recipe.prune.scope is Scope.GLOBAL
    assert recipe.quantize.bits == 4 and recipe.quantize.finetune.optimizer is OptimizerName.SGD
    assert recipe.quantize.finetune.lr == 1.0 and isinstance(recipe.quantize.finetune.lr, float)


@pytest.mark.parametrize("text, message", [
    ("prune: {sparsty: 0.5}", "unknown key.*sparsty.*valid: sparsity"),
    ("prune: {scope: everywhere}", "not one of layer, global"),
    ("quantize: {bits: five}", "quantize.bits"),
    ("prune: [1, 2]", "expected a mapping"),
    ("train: {epochs: -1}", "epochs >= 0"),
    ("prune: {steps: true}", "expected int"),
    ("name: [unclosed", "not valid YAML"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


def test_unknown_recipe_lists_built_ins():
    with pytest.raises(ConfigError, match="deep-compression"):
        load_recipe("no-such-recipe")


def test_yaml_never_runs_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_from_mapping_defaults():
    assert from_mapping(Recipe, {}, "x") == Recipe()


def test_built_in_distill_recipe_chains_distill_prune_quantize():
    recipe = load_recipe("distill-deep-compression")
    assert recipe.distill.student == "lenet-300-100" and recipe.distill.temperature == 20.0
    assert recipe.distill.alpha == 0.9 and recipe.distill.train.min_steps == 3000
    assert recipe.prune.sparsity == 0.95 and recipe.quantize.bits == {"linear": 4, "conv": 6}


def test_distill_stage_keys_are_checked(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("distill: {student: mlp-30-30, temprature: 4}\n")
    with pytest.raises(ConfigError, match="temprature.*valid: temperature"):
        load_recipe(path)
    path.write_text("distill: {alpha: 2}\n")
    with pytest.raises(ConfigError, match="alpha"):
        load_recipe(path)
