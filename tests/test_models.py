import pytest
import torch

from modelzip.errors import ModelError
from modelzip.models import arch_of, build, load_weights, rebuild


@pytest.mark.parametrize("name, params", [
    ("lenet-300-100", 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
    ("lenet-5", 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10),
    ("mlp-1200-1200", 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10),
    ("mlp-800-800", 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10),
])
def test_reference_networks_have_the_papers_sizes(name, params):
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_models_size_themselves_to_the_data():
    model = build("lenet-300-100", (1, 8, 8), 7)
    assert model.fc1.in_features == 64 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    with pytest.raises(ModelError, match="at least 16x16"):
        build("lenet-5", (1, 8, 8), 10)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelError, match="lenet-300-100"):
        build("resnet-9000")


def test_import_reference_and_its_guard(tmp_path):
    model = build("torch.nn:Identity")
    assert model.modelzip_arch == {"import": "torch.nn:Identity"}
    with pytest.raises(ModelError, match="allow_import"):
        rebuild({"import": "torch.nn:Identity"})
    with pytest.raises(ModelError, match="cannot import"):
        build("no_such_package.mod:fn")


def test_weights_file_round_trip_and_mismatch(tmp_path):
    a, b = build("lenet-300-100"), build("lenet-300-100")
    torch.save(a.state_dict(), tmp_path / "w.pt")
    load_weights(b, tmp_path / "w.pt")
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    with pytest.raises(ModelError, match="does not fit"):
        load_weights(build("lenet-5"), tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(b, tmp_path / "junk.pt")


def test_any_mlp_name_builds_and_rebuilds_with_its_builder_arguments():
    model = build("mlp-30-20", (1, 8, 8), 10, dropout=0.25, activation="lma")
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [30, 20, 10]
    assert model.drop1.p == 0.25 and type(model.act2).__name__ == "LMA"
    arch = arch_of(model)
    assert arch == {"name": "mlp-30-20", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10,
                                                   "dropout": 0.25, "activation": "lma"}}
    again = rebuild(arch)
    assert [type(m).__name__ for m in again] == [type(m).__name__ for m in model]
    with pytest.raises(ModelError, match="unexpected keyword"):
        build("lenet-5", bogus=1)
    with pytest.raises(ModelError, match="unknown model 'mlp-0'"):
        build("mlp-0")
