import pytest
import torch
from torch import nn

import modelzip
from modelzip.errors import ModelError
from modelzip.layers import parameter_count
from modelzip.models import apply_edits, build
from modelzip.quantize import int8_model, quantize_weights_
from modelzip.structured import fold_batch_norms_
from modelzip.train import TrainConfig, evaluate, fit

SMALL_VGG = {"widths": [8, "M", 16], "hidden": 16}
VGG_PAIRS = {"conv1": "norm1", "conv2": "norm2", "fc1": "norm_fc1"}


@pytest.fixture(scope="module")
def _vgg_state(digits) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build("vgg-bn", digits.input_shape, digits.num_classes, **SMALL_VGG)
    fit(model, digits.train, TrainConfig(epochs=4, batch_size=64))
    return model.state_dict()


@pytest.fixture
def vgg(digits, _vgg_state) -> nn.Module:
    """The small vgg-bn trained on the digits: running statistics far from (0, 1)."""
    model = build("vgg-bn", digits.input_shape, digits.num_classes, **SMALL_VGG)
    model.load_state_dict(_vgg_state)
    return model.eval()


def _randomize_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.normal_()
                m.running_var.uniform_(0.2, 3.0)
                if m.affine:
                    m.weight.normal_()
                    m.bias.normal_()


def test_folding_vgg_keeps_its_outputs_and_drops_the_norms(vgg, digits):
    x = digits.test.tensors[0]
    before, params = vgg(x), parameter_count(vgg)
    vgg.train()  # the flag is not the fold's business: it folds running statistics and leaves the flag alone
    assert fold_batch_norms_(vgg) == VGG_PAIRS
    assert vgg.training and vgg.norm1.training and isinstance(vgg.norm1, nn.Identity)
    assert torch.allclose(vgg.eval()(x), before, atol=1e-5)
    # each norm had 2C parameters; its bias-free conv/linear gained a C bias
    assert params - parameter_count(vgg) == 8 + 16 + 16
    assert vgg.conv1.bias.shape == (8,) and vgg.conv1.bias.requires_grad
    assert [e["op"] for e in vgg.modelzip_arch["edits"]] == ["fold-bn"] * 3
    assert fold_batch_norms_(vgg) == {}  # nothing left to fold


def test_folded_models_save_and_load_rebuilt_or_into_a_fresh_unfolded_model(vgg, digits):
    x = digits.test.tensors[0]
    fold_batch_norms_(vgg)
    data = modelzip.dumps(vgg)
    rebuilt = modelzip.loads(data)
    assert isinstance(rebuilt.norm2, nn.Identity) and torch.equal(rebuilt(x), vgg(x))
    fresh = build("vgg-bn", digits.input_shape, digits.num_classes, **SMALL_VGG)
    assert torch.equal(modelzip.loads(data, fresh)(x), vgg(x))
    assert isinstance(fresh.norm_fc1, nn.Identity) and fresh.fc1.bias is not None
    with pytest.raises(ModelError, match="fold-bn edit names layer 'act1', a ReLU"):
        apply_edits(build("vgg-bn", digits.input_shape, digits.num_classes, **SMALL_VGG),
                    [{"op": "fold-bn", "module": "conv1", "norm": "act1"}])


def test_quantizing_after_folding_runs_int8_with_exactly_the_stored_codes(vgg, digits):
    calibration = digits.train.tensors[0][:512]
    unfolded = modelzip.loads(modelzip.dumps(vgg))
    quantize_weights_(unfolded)
    assert int8_model(unfolded, calibration).modelzip_exact_codes == ("fc2",)  # FX folded the norms itself
    fold_batch_norms_(vgg)
    quantize_weights_(vgg)
    int8 = int8_model(vgg, calibration)
    assert int8.modelzip_exact_codes == ("conv1", "conv2", "fc1", "fc2")
    assert evaluate(int8, digits.test) == pytest.approx(evaluate(vgg, digits.test), abs=0.02)
    assert evaluate(int8, digits.test) > 0.8
    x = digits.test.tensors[0]
    assert torch.equal(modelzip.loads(modelzip.dumps(vgg))(x), vgg(x))  # fold-bn, then quantize edits replay


def test_batch_norm_mlp_folds_hidden_norms_and_leaves_the_input_norm(digits):
    model = build("mlp-32-16", digits.input_shape, digits.num_classes, batch_norm=True).eval()
    _randomize_norms(model)
    x = digits.test.tensors[0]
    before, params = model(x), parameter_count(model)
    assert fold_batch_norms_(model) == {"fc1": "norm1", "fc2": "norm2"}
    assert isinstance(model.norm0, nn.BatchNorm1d)  # after the input selector: no layer to fold it into
    assert torch.allclose(model(x), before, atol=1e-5)
    assert params - parameter_count(model) == 2 * (32 + 16)
    assert torch.equal(modelzip.loads(modelzip.dumps(model))(x), model(x))


class _Branches(nn.Module):
    """conv1's output feeds its norm and a residual sum; conv2 -> norm2 (no running statistics);
    conv3 (Conv1d) -> norm3 (running statistics, no affine)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
        self.conv2, self.norm2 = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)
        self.conv3, self.norm3 = nn.Conv1d(3, 4, 3, padding=1, bias=False), nn.BatchNorm1d(4, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h = self.norm2(self.conv2(self.norm1(h) + h))
        return self.norm3(self.conv3(h.flatten(2)))


def test_only_layers_read_by_their_norm_alone_with_running_statistics_fold():
    model = _Branches().eval()
    _randomize_norms(model)
    x = torch.randn(5, 2, 3, 3)
    before = model(x)
    assert fold_batch_norms_(model) == {"conv3": "norm3"}
    assert isinstance(model.norm1, nn.BatchNorm2d) and isinstance(model.norm2, nn.BatchNorm2d)
    assert torch.allclose(model(x), before, atol=1e-5)


def test_a_pruned_layer_must_be_stripped_and_keeps_its_zeros(vgg, digits):
    modelzip.prune_(vgg, 0.5)
    with pytest.raises(ModelError, match=r"layer 'conv1' has parametrized weights .*modelzip.strip\(model\) "
                                         r"before folding batch norm 'norm1'"):
        fold_batch_norms_(vgg)
    assert isinstance(vgg.norm1, nn.BatchNorm2d)  # checked before any change
    modelzip.strip(vgg)
    zeros = {name: (getattr(vgg, name).weight == 0) for name in VGG_PAIRS}
    assert all(z.float().mean().item() == pytest.approx(0.5, abs=0.01) for z in zeros.values())
    x = digits.test.tensors[0]
    before = vgg(x)
    fold_batch_norms_(vgg)
    assert all(torch.equal(getattr(vgg, name).weight == 0, z) for name, z in zeros.items())
    assert torch.allclose(vgg(x), before, atol=1e-5)


def test_quantized_layers_broken_norms_and_untraceable_models_are_refused(vgg):
    quantized = modelzip.loads(modelzip.dumps(vgg))
    quantize_weights_(quantized)
    with pytest.raises(ModelError, match="'conv1' .* quantized already; fold its batch norm 'norm1' before"):
        fold_batch_norms_(quantized)
    with torch.no_grad():
        vgg.norm2.running_var[3] = -1.0
    with pytest.raises(ModelError, match="batch norm 'norm2' has NaN, infinite or negative"):
        fold_batch_norms_(vgg)
    assert isinstance(vgg.norm1, nn.BatchNorm2d)

    class Branchy(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="cannot trace Branchy with torch.fx"):
        fold_batch_norms_(Branchy(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
