"""Sparse execution: pruned Linear / 1x1 Conv2d layers on CSR kernels compute what the dense layers do."""
import copy

import pytest
import torch
from torch import nn

import modelzip
from modelzip.cli import main
from modelzip.errors import ConfigError
from modelzip.prune import SparseConv1x1, SparseLinear, prune_, sparsify_
from modelzip.quantize import QuantizedLinear, QuantSpec, quantize_weights_


def pruned_(layer: nn.Module, sparsity: float) -> nn.Module:
    """`layer` with a random `sparsity` fraction of its weights set to exact zeros."""
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    return layer


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.is_contiguous()
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 5, 48), (1, 1, 48), (48,)])
def test_sparse_linear_computes_the_dense_layer(bias, shape):
    dense = pruned_(nn.Linear(48, 30, bias=bias), 0.8)
    sparse = SparseLinear(dense)
    x = torch.randn(shape)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))
    assert sparse.weight_csr.layout == torch.sparse_csr and sparse.weight_csr.col_indices().dtype == torch.int32
    assert sparse.weight_csr.values().numel() == (dense.weight != 0).sum()
    assert not list(sparse.parameters())  # inference only: nothing for an optimizer to train
    clone = copy.deepcopy(sparse)  # torch cannot deepcopy a CSR tensor itself
    assert clone.weight_csr.values().data_ptr() != sparse.weight_csr.values().data_ptr()
    with torch.no_grad():
        assert torch.equal(clone(x), sparse(x))
    back = sparse.to_dense()
    assert type(back) is nn.Linear and torch.equal(back.weight, dense.weight)
    assert (back.bias is None) == (not bias) and (not bias or torch.equal(back.bias, dense.bias))


@pytest.mark.parametrize("shape", [(3, 16, 5, 4), (1, 16, 1, 1), (16, 5, 4)])
def test_sparse_1x1_conv_computes_the_dense_conv(shape):
    dense = pruned_(nn.Conv2d(16, 24, 1), 0.9)
    sparse = SparseConv1x1(dense)
    x = torch.randn(shape)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))
    assert torch.equal(sparse.dense_weight(), dense.weight) and sparse.dense_weight().shape == (24, 16, 1, 1)
    assert torch.equal(sparse.to_dense().weight, dense.weight)


def test_threshold_decides_which_layers_convert():
    torch.manual_seed(0)
    model = nn.Sequential(pruned_(nn.Linear(40, 40), 0.9), nn.ReLU(), pruned_(nn.Linear(40, 40), 0.3),
                          pruned_(nn.Conv2d(40, 8, 1), 0.9))
    zeros = (model[2].weight == 0).float().mean().item()
    reference = copy.deepcopy(model)
    decisions = sparsify_(model, measure=False)
    assert decisions["0"].startswith("sparse: ") and decisions["3"].startswith("sparse: ")
    assert decisions["2"] == f"dense: {zeros:.1%} zeros < threshold 50.0%"
    assert [type(m) for m in model] == [SparseLinear, nn.ReLU, nn.Linear, SparseConv1x1]
    x = torch.randn(4, 40)
    with torch.no_grad():
        assert_close(model[:3](x), reference[:3](x))
    assert sparsify_(reference, threshold=0.2, measure=False)["2"].startswith("sparse: ")


def test_coded_parametrized_and_other_layers_are_left_as_they_are():
    coded, masked = nn.Sequential(pruned_(nn.Linear(20, 20), 0.9)), nn.Sequential(nn.Linear(20, 20))
    quantize_weights_(coded, QuantSpec(8))  # integer codes, 90% of them zero
    prune_(masked, 0.95)  # a mask parametrization, not yet stripped
    model = nn.Sequential(coded[0], masked[0], pruned_(nn.Conv2d(20, 20, 3), 0.9),
                          pruned_(nn.Conv2d(20, 20, 1, stride=2), 0.9), pruned_(nn.Linear(20, 20), 0.9).half())
    codes = model[0].codes.clone()
    decisions = sparsify_(model, measure=False)
    assert decisions["0"] == "dense: QuantizedLinear is not a plain nn.Linear / nn.Conv2d (coded layers stay exact)"
    assert decisions["1"].startswith("dense: parametrized weight")
    assert decisions["2"] == decisions["3"] == \
        "dense: only 1x1, stride-1, unpadded, ungrouped convolutions run as a sparse matmul"
    assert decisions["4"] == "dense: torch.float16 weight (sparse kernels take float32 / float64)"
    assert type(model[0]) is QuantizedLinear and torch.equal(model[0].codes, codes)
    assert not any(isinstance(m, (SparseLinear, SparseConv1x1)) for m in model.modules())


def test_unmeasured_conversion_is_deterministic_and_measured_keeps_what_it_says():
    torch.manual_seed(0)
    model = modelzip.strip(_pruned_mlp())
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    assert sparsify_(one, measure=False) == sparsify_(two, measure=False)
    assert torch.equal(one.fc2.weight_csr.values(), two.fc2.weight_csr.values())
    measured = sparsify_(model, batch_sizes=(1, 8))
    for name, decision in measured.items():  # a layer is sparse exactly when the summary says it went sparse
        assert decision.startswith("sparse: ") == isinstance(model.get_submodule(name), SparseLinear)
        assert "x at batch 1, " in decision and "x at batch 8" in decision
    assert measured["fc2"].startswith("sparse: 99.0% zeros")  # 1% of 1024 x 1024: far faster on any CPU
    with pytest.raises(ConfigError, match="threshold"):
        sparsify_(model, threshold=1.5)


def _pruned_mlp() -> nn.Module:
    """A 64-1024-1024-10 MLP whose middle layer is 99% zeros (so sparse wins by a wide margin), the rest 50%."""
    model = modelzip.build("mlp-1024-1024", (1, 8, 8), 10)
    prune_(model, 0.5, layers={"fc2": 0.99})
    return model


def test_load_sparse_gives_the_outputs_of_load(tmp_path):
    path = tmp_path / "pruned.mzip"
    modelzip.save(_pruned_mlp(), path)
    dense, sparse = modelzip.load(path), modelzip.load(path, sparse=True)
    assert isinstance(sparse.fc2, SparseLinear) and type(dense.fc2) is nn.Linear
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))
        assert_close(sparse(x[:1]), dense(x[:1]))


def test_cli_eval_sparse_reports_the_sparse_layers_and_the_same_accuracy(tmp_path, capsys):
    path = tmp_path / "pruned.mzip"
    modelzip.save(_pruned_mlp(), path)
    assert main(["eval", str(path), "--data", "digits"]) == 0
    accuracy = capsys.readouterr().out.split("accuracy ")[1]
    assert main(["eval", str(path), "--data", "digits", "--sparse"]) == 0
    shown = capsys.readouterr().out
    went = int(shown.split("sparse execution: ")[1].split(" of 3 ")[0])
    assert 1 <= went <= 3 and shown.split("accuracy ")[1] == accuracy
    assert main(["eval", str(path), "--data", "digits", "--sparse", "--int8"]) == 2
    assert "--sparse and --int8" in capsys.readouterr().err
