from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import ConfigError
from modelzip.lowrank import factorize_, svd_factors, tucker2_factors


def test_svd_at_full_rank_reproduces_the_linear_layer():
    layer = nn.Linear(7, 5)
    first, second = svd_factors(layer.weight, 5)
    assert first.shape == (5, 7) and second.shape == (5, 5)
    x = torch.randn(4, 7)
    assert torch.allclose(F.linear(F.linear(x, first), second, layer.bias), layer(x), atol=1e-5)


def test_svd_by_hand():
    first, second = svd_factors(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), 1)
    # sqrt(4) = 2 goes into each factor (up to a shared sign)
    assert torch.allclose(first.abs(), torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(second.abs(), torch.tensor([[2.0], [0.0]]))
    assert torch.allclose(second @ first, torch.tensor([[4.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_truncation_error_is_the_dropped_spectrum(rank):
    weight = torch.randn(6, 9)
    s = torch.linalg.svdvals(weight.double())
    first, second = svd_factors(weight, rank)
    error = torch.linalg.matrix_norm(weight.double() - (second @ first).double())
    assert error.item() == pytest.approx(s[rank:].square().sum().sqrt().item(), rel=1e-4)
    # the singular values are split evenly: first first^T = second^T second = diag(s[:rank])
    assert torch.allclose((first @ first.T).double(), torch.diag(s[:rank]), atol=1e-4)
    assert torch.allclose((second.T @ second).double(), torch.diag(s[:rank]), atol=1e-4)


def test_bad_ranks_are_config_errors():
    with pytest.raises(ConfigError, match="between 1 and"):
        svd_factors(torch.randn(3, 4), 4)
    with pytest.raises(ConfigError, match="between 1 and"):
        tucker2_factors(torch.randn(3, 4, 3, 3), (0, 2))


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_tucker2_at_full_ranks_reproduces_the_conv(stride, padding):
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding)
    first, core, last = tucker2_factors(conv.weight, (5, 3))
    assert (first.shape, core.shape, last.shape) == ((3, 3, 1, 1), (5, 3, 3, 3), (5, 5, 1, 1))
    x = torch.randn(2, 3, 9, 9)
    y = F.conv2d(F.conv2d(F.conv2d(x, first), core, stride=stride, padding=padding), last, conv.bias)
    assert torch.allclose(y, conv(x), atol=1e-5)


def test_truncated_tucker2_has_orthonormal_factors_and_beats_the_hosvd_bound():
    kernel = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    first, core, last = tucker2_factors(kernel, (4, 3))
    u_in, u_out = first.flatten(1).T, last.flatten(1)  # (in, r_in), (out, r_out)
    assert torch.allclose(u_in.T @ u_in, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(u_out.T @ u_out, torch.eye(4, dtype=torch.float64), atol=1e-10)
    approx = torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in)
    # HOOI starts from the truncated HOSVD, whose squared error is at most the dropped s^2 of each unfolding
    s0, s1 = torch.linalg.svdvals(kernel.flatten(1)), torch.linalg.svdvals(kernel.transpose(0, 1).flatten(1))
    bound = s0[4:].square().sum() + s1[3:].square().sum()
    error = (kernel - approx).square().sum()
    assert 0 < error <= bound + 1e-9


def test_factorized_modules_compute_the_approximation():
    """The 1x1 -> core -> 1x1 sequence equals one conv by the reconstructed kernel, stride, dilation,
    reflect padding and bias included; the two Linears equal one by second @ first."""
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, dilation=2, padding_mode="reflect")
    linear = nn.Linear(12, 10)
    model = nn.Sequential(OrderedDict(conv=conv, pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                      linear=nn.Linear(16, 12), fc=linear))
    assert factorize_(model, 0.5, exclude=["linear"]) == {"conv": (8, 4), "fc": (2,)}
    f = model.conv
    kernel = torch.einsum("oa,abhw,bi->oihw", f.last.weight.flatten(1), f.core.weight, f.first.weight.flatten(1))
    x = torch.randn(2, 8, 11, 11)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, conv.bias, stride=2, dilation=2)
    assert torch.allclose(f(x), expected, atol=1e-5)
    h = torch.randn(3, 12)
    expected = F.linear(h, model.fc.second.weight @ model.fc.first.weight, linear.bias)
    assert torch.allclose(model.fc(h), expected, atol=1e-5)
