import pytest
import torch
import torch.nn.functional as F

import modelzip
from modelzip.errors import ModelError
from modelzip.models import build
from modelzip.models.activations import LMA, lma


def eval_lma(slopes: list[float], mean: float, var: float, span: float = 1.0) -> LMA:
    """An LMA(1) in eval mode with hand-set slopes and running statistics (eps 0: exact numbers)."""
    act = LMA(1, segments=len(slopes), span=span, eps=0.0).eval()
    with torch.no_grad():
        act.slopes.copy_(torch.tensor(slopes))
        act.running_mean.fill_(mean)
        act.running_var.fill_(var)
    return act


def hinge_sum(x: torch.Tensor, slopes: torch.Tensor, mean: float, std: float, span: float) -> torch.Tensor:
    """The paper's form: f(x) = k_0 (x - b_0) + sum_j (k_{j+1} - k_j) max(0, x - b_j)."""
    b = mean + std * torch.linspace(-span, span, len(slopes) - 1, dtype=x.dtype)  # (S-1,)
    return slopes[0] * (x - b[0]) + ((slopes[1:] - slopes[:-1]) * (x[:, None] - b).clamp(min=0)).sum(1)


def test_slopes_and_breakpoints_by_hand():
    # breakpoints at mean + std * (-1, 0, 1); slope 0.25, 1, -1, 2 on the four segments; f(b_0) = 0
    act = eval_lma([0.25, 1.0, -1.0, 2.0], mean=0.0, var=1.0)
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])[:, None]
    assert act(x).squeeze(1).tolist() == [-0.5, 0.0, 0.5, 1.0, 0.5, 0.0, 2.0]
    # mean 1, std 2 move the breakpoints to -1, 1, 3 and stretch the same shape: f(x) = 2 g((x - 1) / 2)
    act = eval_lma([0.25, 1.0, -1.0, 2.0], mean=1.0, var=4.0)
    x = torch.tensor([-5.0, -1.0, 0.0, 2.0, 3.0, 5.0])[:, None]
    assert act(x).squeeze(1).tolist() == [-1.0, 0.0, 1.0, 1.0, 0.0, 4.0]
    out = act(torch.tensor([[float("nan")], [float("inf")], [0.0]]))  # NaN passes through, as with ReLU
    assert out.isnan().tolist() == [[True], [False], [False]] and out[1:].tolist() == [[float("inf")], [1.0]]


def test_continuous_at_the_breakpoints_and_equal_to_the_hinge_sum():
    slopes = torch.tensor([-0.5, 0.3, 1.7, -1.2, 0.8, 2.5, -0.4, 1.1])
    act = eval_lma(slopes.tolist(), mean=0.5, var=2.25, span=2.0)
    b = 0.5 + 1.5 * torch.linspace(-2.0, 2.0, 7)  # (7,) the breakpoints
    below, above = act((b - 1e-4)[:, None]), act((b + 1e-4)[:, None])
    assert (above - below).abs().max() < 1e-3  # a jump would be of order |k_j| ~ 1
    x = torch.linspace(-8.0, 9.0, 1001)
    assert torch.allclose(act(x[:, None]).squeeze(1), hinge_sum(x, slopes, 0.5, 1.5, 2.0), atol=1e-5)


def test_training_uses_batch_statistics_and_updates_the_running_ones():
    act = LMA(2, segments=4, span=1.0, eps=0.0, statistics="feature")  # slopes 0, 1/3, 2/3, 1; breakpoints at z = -1, 0, 1
    z = torch.tensor([-1.4, -0.2, 0.2, 1.4])  # mean 0, biased variance 1
    x = torch.stack([2.0 + z, -1.0 + 4.0 * z], 1)  # (4, 2): means 2, -1; stds 1, 4
    g = torch.tensor([0.0, 0.8 / 3, 1 / 3 + 0.4 / 3, 1.4])  # f(z) for std 1: 0, k_1 0.8, k_1 + 0.2 k_2, ...
    assert torch.allclose(act(x), torch.stack([g, 4.0 * g], 1), atol=1e-6)
    # running = 0.9 running + 0.1 batch, with the unbiased variance (4/3 of the biased one)
    assert torch.allclose(act.running_mean, torch.tensor([0.2, -0.1]))
    assert torch.allclose(act.running_var, torch.tensor([0.9 + 0.1 * 4 / 3, 0.9 + 0.1 * 64 / 3]))
    act.eval()
    out = act(x)  # now the running statistics: breakpoints at 0.2 + 1.0166 (-1, 0, 1), ...
    std = torch.tensor([0.9 + 0.4 / 3, 0.9 + 6.4 / 3]).sqrt()
    expected = torch.stack([hinge_sum(x[:, i], act.slopes.detach(), [0.2, -0.1][i], std[i].item(), 1.0)
                            for i in range(2)], 1)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(act.running_mean, torch.tensor([0.2, -0.1]))  # eval leaves them alone


def test_gradients_reach_input_and_slopes_but_not_the_statistics():
    act = LMA(2, segments=4, span=1.0, eps=0.0, statistics="feature")
    z = torch.tensor([-1.4, -0.2, 0.2, 1.4])
    x = torch.stack([2.0 + z, -1.0 + 4.0 * z], 1).requires_grad_()
    act(x).sum().backward()
    # df/dx is the slope of x's own segment: no terms through the batch mean and variance
    assert torch.allclose(x.grad, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])[:, None].expand(4, 2))
    # df/dk_i = length of segment i between b_0 and x (negative left of b_0), times std:
    # std 1 gives -0.4, 0.8 + 1 + 1, 0.2 + 1, 0.4; std 4 four times that
    assert torch.allclose(act.slopes.grad, 5 * torch.tensor([-0.4, 2.8, 1.2, 0.4]))
    assert act.running_mean.grad is None and not act.running_var.requires_grad


def test_gradients_match_finite_differences():
    x = (3 * torch.randn(6, 3, 2, 2, dtype=torch.double)).requires_grad_()  # (N, C, H, W)
    slopes = torch.randn(6, dtype=torch.double, requires_grad=True)
    mean = torch.tensor([0.5, -1.0, 0.0], dtype=torch.double)
    std = torch.tensor([1.0, 2.0, 0.5], dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x, k: lma(x, k, mean, std, 1.5), (x, slopes))


def test_images_get_per_channel_statistics_like_a_flat_batch():
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0])[:, None, None] + 1.0  # (N, C, H, W)
    image_act, flat_act = LMA(3, statistics="feature"), LMA(3, statistics="feature")
    out = image_act(x)
    flat = flat_act(x.permute(0, 2, 3, 1).reshape(-1, 3))  # (N H W, C)
    assert out.shape == x.shape
    assert torch.allclose(out, flat.reshape(4, 5, 5, 3).permute(0, 3, 1, 2), atol=1e-6)
    assert torch.allclose(image_act.running_var, flat_act.running_var)


def test_layer_statistics_share_the_breakpoints_across_features():
    act = LMA(2, segments=4, span=1.0, eps=0.0)  # statistics="layer"
    x = torch.tensor([[0.0, 4.0], [2.0, 6.0]])  # mean 3, biased variance 5 over all four values
    out = act(x)
    assert act.running_mean.shape == (1,) and torch.allclose(act.running_mean, torch.tensor([0.3]))
    assert torch.allclose(act.running_var, torch.tensor([0.9 + 0.1 * 5 * 4 / 3]))
    expected = hinge_sum(x.reshape(-1), act.slopes.detach(), 3.0, 5 ** 0.5, 1.0).view(2, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    # one feature shifted by a constant moves relative to the shared breakpoints (a unit's bias matters)
    assert not torch.allclose(LMA(2)(x + torch.tensor([0.0, 3.0])) - LMA(2)(x), torch.zeros(2, 2))


def test_lma_adds_only_its_slopes_as_parameters():
    assert [p.numel() for p in LMA(30).parameters()] == [8]
    with_lma, with_relu = build("mlp-30-30", activation="lma"), build("mlp-30-30")
    assert sum(p.numel() for p in with_lma.parameters()) - sum(p.numel() for p in with_relu.parameters()) == 2 * 8
    assert repr(LMA(30, segments=6)) == "LMA(30, segments=6, span=2.0, statistics=layer)"


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ModelError, match="segments >= 3"):
        LMA(4, segments=2)
    with pytest.raises(ValueError, match=r"inputs \(N, 4, ...\), got \(2, 3\)"):
        LMA(4)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="more than one value"):
        LMA(4, statistics="feature")(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="more than one value"):
        LMA(1)(torch.zeros(1, 1))
    with pytest.raises(ModelError, match="statistics 'layer' or 'feature'"):
        LMA(4, statistics="channel")
    with pytest.raises(ModelError, match=r"unknown activation 'nope' \(known: lma, relu\)"):
        build("mlp-30-30", activation="nope")


def test_an_lma_network_learns_digits(digits):
    torch.manual_seed(0)
    model = build("mlp-30-30", digits.input_shape, digits.num_classes, activation="lma")
    images, labels = digits.train.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = model.act1.slopes.detach().clone()
    losses = []
    for step in range(60):
        batch = slice(128 * (step % 11), 128 * (step % 11 + 1))
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and max(losses[-5:]) < 0.6
    model.eval()
    test_images, test_labels = digits.test.tensors
    assert (model(test_images).argmax(1) == test_labels).float().mean() > 0.85
    assert (model.act1.slopes - initial).abs().max() > 0.05  # the slopes learned too


def test_save_and_load_keep_slopes_and_running_statistics(tmp_path):
    model = build("mlp-30-30", (1, 8, 8), 10, activation="lma")
    with torch.no_grad():
        model.act1.slopes.add_(0.1 * torch.randn(8))
        for _ in range(3):
            model(2 * torch.randn(32, 1, 8, 8) + 1)  # training mode: moves the running statistics
    assert model.act1.running_mean.abs().min() > 0
    model.eval()
    x = torch.randn(16, 1, 8, 8)
    modelzip.save(model, tmp_path / "lma.mzip")
    loaded = modelzip.load(tmp_path / "lma.mzip")
    assert isinstance(loaded.act2, LMA)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded(x), model(x))
