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


LENET = {"name": "lenet-300-100", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10}}


@pytest.mark.parametrize(("change", "message"), [
    ({"kwargs": 1}, r"arch.kwargs must be an object .*found 1"),
    ({"name": {"a": 1}}, r"arch.name must be a non-empty string, found \{'a': 1\}"),
    ({"name": "mlp-99999999999"}, r"arch.name must be an mlp-H1-H2-... name with widths in \[1, 16777216\]"),
    ({"kwargs": {"num_classes": -1}}, r"arch.kwargs.num_classes must be an integer in \[1, 16777216\], found -1"),
    ({"kwargs": {"input_shape": [1, 0, 8]}}, r"arch.kwargs.input_shape\[1\] must be an integer in \[1, "),
    ({"kwargs": {"dropout": 1.5}}, r"arch.kwargs.dropout must be a number in \[0, 1\), found 1.5"),
    ({"kwargs": {"activation": ["relu"]}}, r"arch.kwargs.activation must be a non-empty string"),
    ({"import": "torch.nn:Identity"}, "arch names name and import: a record has one builder"),
    ({"extra": 1}, r"arch has an unknown key 'extra' \(allowed: name, kwargs, import, hf, edits\)"),
    ({"edits": 5}, r"arch.edits must be a list"),
    ({"edits": [{"module": "fc1"}]}, r"arch.edits\[0\] must be a structural edit: an object with an 'op'"),
    ({"edits": [{"op": {"a": 1}}]}, r"arch.edits\[0\].op must be a structural edit \(known: factorize, "),
    ({"edits": [{"op": "resize"}]}, r"resize edit: arch.edits\[0\] has no 'module' \(required: module\)"),
    ({"edits": [{"op": "resize", "module": ""}]}, r"arch.edits\[0\].module must be a module name"),
    ({"edits": [{"op": "resize", "module": "fc1", "shapes": {"weight": [2**40, 2**40]}}]},
     r"resize edit of layer 'fc1': arch.edits\[0\].shapes.weight\[0\] must be an integer in \[0, 16777216\]"),
    ({"edits": [{"op": "resize", "module": "fc1", "shapes": {"weight": [2**24, 2**24]}}]},
     r"arch.edits\[0\].shapes.weight must be a shape of at most 4294967296 elements"),
    ({"edits": [{"op": "resize", "module": "fc1", "attrs": {"forward": 1}}]},
     r"arch.edits\[0\].attrs has an unknown key 'forward' \(allowed: groups, in_channels, in_features, "),
    ({"edits": [{"op": "resize", "module": "fc1", "attrs": {"groups": 2}}]},
     "resize edit of layer 'fc1': a Linear has no size attribute 'groups'"),
    ({"edits": [{"op": "resize", "module": "fc1", "attrs": {"in_features": 10**6}}]},
     r"resize edit of layer 'fc1': its sizes describe a \[300, 1000000\] weight, its shapes give \[300, 64\]"),
    ({"edits": [{"op": "factorize", "module": "fc1", "ranks": "3"}]}, r"arch.edits\[0\].ranks must be a list"),
    ({"edits": [{"op": "factorize", "module": "fc1"}]}, r"arch.edits\[0\] has no 'ranks'"),
    ({"edits": [{"op": "hash", "module": "fc1", "buckets": 2.5}]}, r"arch.edits\[0\].buckets must be an integer"),
    ({"edits": [{"op": "quantize", "module": "fc1", "kind": "uniform", "bits": 9}]},
     r"quantize edit of layer 'fc1': arch.edits\[0\].bits must be an integer in \[1, 8\], found 9"),
    ({"edits": [{"op": "quantize", "module": "fc1", "kind": "uniform", "signed": "yes"}]},
     r"arch.edits\[0\].signed must be true or false"),
    ({"edits": [{"op": "fold-bn", "module": "fc1", "norm": 3}]}, r"arch.edits\[0\].norm must be a module name"),
])
def test_bad_arch_records_are_refused_naming_the_field(change, message):
    arch = {**LENET, **change}
    if "kwargs" in change and isinstance(change["kwargs"], dict):
        arch["kwargs"] = {**LENET["kwargs"], **change["kwargs"]}
    with pytest.raises(ModelError, match=message):
        rebuild(arch, device="meta")


def test_every_edit_the_transforms_write_passes_its_schema():
    """The records of channel removal, factorization, hashing, quantization and folding rebuild (on meta)."""
    from modelzip.lowrank import factorize_
    from modelzip.quantize import hash_, quantize_weights_
    from modelzip.structured import ChannelPruneConfig, fold_batch_norms_, prune_channels_

    torch.manual_seed(0)
    model = build("vgg-bn", (1, 16, 16), 10, widths=[8, "M", 8], hidden=16)
    for norm in (model.norm1, model.norm2, model.norm_fc1):
        norm.weight.data.uniform_()  # fresh scales all tie at 1: nothing would be removed
    assert prune_channels_(model, (1, 16, 16), ChannelPruneConfig(amount=0.5))["conv1"] == (8, 5)
    fold_batch_norms_(model.eval())
    factorize_(model, layers={"fc1": 0.5})
    hash_(model, layers={"fc2": 0.5})
    quantize_weights_(model)
    arch = arch_of(model)
    assert {edit["op"] for edit in arch["edits"]} == {"resize", "fold-bn", "factorize", "hash", "quantize"}
    again = rebuild(arch, device="meta")
    assert {k: (v.shape, v.dtype) for k, v in again.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
