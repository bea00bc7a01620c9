import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from modelzip.distill import adjust_bias_, only_classes, output_layer, search_bias_offset, unlabeled, without_classes
from modelzip.errors import ConfigError, DataError, ModelError


def _dataset():
    x = torch.arange(12, dtype=torch.float32).view(6, 1, 1, 2)
    return TensorDataset(x, torch.tensor([0, 1, 2, 3, 3, 1]))


def test_transfer_sets_keep_or_drop_classes_and_labels():
    data = _dataset()
    assert without_classes(data, [3]).tensors[1].tolist() == [0, 1, 2, 1]
    assert only_classes(data, [1, 3]).tensors[1].tolist() == [1, 3, 3, 1]
    torch.testing.assert_close(only_classes(data, [2]).tensors[0], data.tensors[0][2:3])
    assert len(unlabeled(data).tensors) == 1
    with pytest.raises(DataError, match="empty"):
        only_classes(data, [7])
    with pytest.raises(DataError, match="labeled"):
        without_classes(unlabeled(data), [1])


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))


def test_output_layer_is_the_last_linear_or_the_named_one():
    model = _model()
    assert output_layer(model) == ("3", model[3])
    assert output_layer(model, "1") == ("1", model[1])
    with pytest.raises(ModelError, match="not an nn.Linear"):
        output_layer(model, "2")
    with pytest.raises(ModelError, match="no nn.Linear"):
        output_layer(nn.Sequential(nn.ReLU()))


def test_adjust_bias_moves_only_the_chosen_classes():
    model = _model()
    before = model[3].bias.detach().clone()
    weight = model[3].weight.detach().clone()
    adjust_bias_(model, [1, 3], 2.5)
    torch.testing.assert_close(model[3].bias.detach() - before, torch.tensor([0.0, 2.5, 0.0, 2.5]))
    torch.testing.assert_close(model[3].weight.detach(), weight)
    with pytest.raises(ConfigError, match="within 0..3"):
        adjust_bias_(model, [4], 1.0)


def test_bias_search_finds_the_offset_that_restores_a_suppressed_class():
    # logits = one-hot of the label * 2, but class 3's logit is pushed down by 3: its examples are
    # all wrong until class 3 gets back at least +1 (and at most < +3, or it wins everywhere)
    labels = torch.tensor([0, 1, 2, 3, 3, 3, 0, 1])
    inputs = nn.functional.one_hot(labels, 4).float()
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.copy_(2 * torch.eye(4))
        model[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -3.0]))
    offsets = [-1, 0, 0.5, 1.5, 2.5, 3.5]
    offset, accuracy = search_bias_offset(model, [3], TensorDataset(inputs, labels), offsets=offsets)
    assert (offset, accuracy) == (1.5, 1.0)  # 1.5 and 2.5 both fix it; ties go to the smaller change
    adjust_bias_(model, [3], offset)
    assert (model(inputs).argmax(1) == labels).all()
