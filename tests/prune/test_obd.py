import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from modelzip.errors import ConfigError, DataError, ModelError
from modelzip.layers import plain_state_dict, targets
from modelzip.models import build
from modelzip.prune import (Criterion, HessianMethod, Mask, PruneConfig, hessian_diagonal, iterative_prune,
                            obd_saliency, obd_score, prune_)
from modelzip.recipes import load_recipe
from modelzip.train import TrainConfig, evaluate


def mse(model: nn.Module, batch) -> torch.Tensor:
    """1/2 squared error summed over outputs, mean over the batch: Hessian in W[o, j] is mean_i x_ij^2."""
    return 0.5 * (model(batch[0]) - batch[1]).square().sum(1).mean()


def dead_input_layer() -> tuple[nn.Linear, TensorDataset]:
    """A layer whose third input is always 0, where the biggest weights sit: OBD and magnitude disagree."""
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 5.0], [0.5, 1.0, -3.0]]))
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    return layer, TensorDataset(x, torch.zeros(2, 2))


def test_saliency_by_hand():
    layer, data = dead_input_layer()
    # h = mean_i x_ij^2 = (1 + 9) / 2, (4 + 0) / 2, 0 = 5, 2, 0; s = h w^2 / 2
    expected = torch.tensor([[2.5, 4.0, 0.0], [0.625, 1.0, 0.0]])
    for batch_size in (2, 1):  # batch Hessians are averaged by batch size
        (saliency,) = obd_saliency(layer, data, HessianMethod.EXACT, batch_size=batch_size, loss_fn=mse).values()
        assert torch.allclose(saliency, expected, atol=1e-6)
    # a maximum, not a minimum: h = -5, -2, 0 is outside OBD's assumptions and clamped to 0
    (saliency,) = obd_saliency(layer, data, "exact", loss_fn=lambda m, b: -mse(m, b)).values()
    assert saliency.tolist() == [[0.0] * 3] * 2


@pytest.mark.parametrize("method", list(HessianMethod))
def test_obd_prunes_a_big_weight_on_a_dead_input_that_magnitude_keeps(method):
    layer, data = dead_input_layer()
    prune_(layer, 0.5, score=obd_score(layer, data, method, loss_fn=mse))
    assert (layer.weight[:, 2] == 0).all()  # h = 0 there, so saliency 0 for weights 5 and -3
    if method is HessianMethod.EXACT:
        assert (layer.weight != 0).tolist() == [[True, True, False], [False, True, False]]  # saliencies 4, 2.5, 1
    magnitude_pruned, _ = dead_input_layer()
    prune_(magnitude_pruned, 0.5)
    assert (magnitude_pruned.weight != 0).tolist() == [[False, True, True], [False, False, True]]


def test_linear_regression_hessian_is_xtx_and_the_fisher_matches_it_at_the_optimum():
    torch.manual_seed(1)
    n = 4096
    x = torch.randn(n, 3) * torch.tensor([1.0, 2.0, 0.5])
    y = x @ torch.tensor([[1.0], [-0.5], [2.0]]) + torch.randn(n, 1)  # unit noise: mse is its neg. log-likelihood
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    data = TensorDataset(x, y)
    (exact,) = hessian_diagonal(model, data, "exact", examples=n, batch_size=1000, loss_fn=mse).values()
    xtx = (x.T @ x).diagonal() / n
    assert torch.allclose(exact.flatten(), xtx, rtol=1e-5)
    # empirical Fisher mean_i r_i^2 x_ij^2 -> sigma^2 E[x_j^2] = h_jj: equal up to sampling (std ~4% at n = 4096)
    (fisher,) = hessian_diagonal(model, data, "fisher", examples=n, loss_fn=mse).values()
    assert torch.allclose(fisher.flatten(), xtx, rtol=0.15)


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))


def test_saliency_of_a_masked_model_in_train_mode_leaves_it_as_it_was():
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    model = small_net()
    model[1].running_mean.fill_(0.3)
    prune_(model, 0.5)
    params = dict(model.named_parameters())
    first = obd_saliency(model, data, batch_size=16)
    second = obd_saliency(model, data, batch_size=16)  # eval mode inside: dropout off, so no randomness
    assert all(torch.equal(first[t], second[t]) for t in first)
    pruned = model[0].weight == 0
    assert (first[targets(model)[0]][pruned] == 0).all() and (first[targets(model)[0]][~pruned] > 0).any()
    # the curvature of a pruned weight is the masked network's, not zero as w.r.t. the masked-out original
    (h, _) = hessian_diagonal(model, data, batch_size=16).values()
    assert (h[pruned] > 0).any()
    assert model.training and dict(model.named_parameters()) == params and all(p.grad is None for p in params.values())
    assert torch.equal(model[1].running_mean, torch.full((6,), 0.3))  # no batch statistics were taken
    assert [type(p) for p in model[0].parametrizations.weight] == [Mask]  # the probe is gone, the mask stays
    plain = small_net()  # the same network without parametrizations: the same saliencies
    plain.load_state_dict(plain_state_dict(model))
    for a, b in zip(first.values(), obd_saliency(plain, data, batch_size=16).values()):
        assert torch.allclose(a, b, atol=1e-7)


def test_an_unparametrized_layer_gets_its_own_parameter_back():
    layer, data = dead_input_layer()
    weight = layer.weight
    obd_saliency(layer, data, "hutchinson", loss_fn=mse)
    assert type(layer) is nn.Linear and layer.weight is weight and weight.grad is None


def test_bad_settings_and_foreign_targets():
    layer, data = dead_input_layer()
    with pytest.raises(ConfigError, match="examples, batch_size and samples >= 1"):
        obd_saliency(layer, data, examples=0, loss_fn=mse)
    with pytest.raises(DataError, match="dataset is empty"):
        obd_saliency(layer, TensorDataset(torch.zeros(0, 3), torch.zeros(0, 2)), loss_fn=mse)
    with pytest.raises(ConfigError, match="layer fc1.weight has 19200 weights"):
        obd_saliency(build("lenet-300-100", (1, 8, 8)), TensorDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2).long()),
                     "exact")
    score = obd_score(layer, data, loss_fn=mse)
    with pytest.raises(ModelError, match="no OBD saliency for fc1.weight"):
        prune_(build("mlp-4", (3,), 2), 0.5, score=score)


def test_iterative_prune_with_obd_uses_the_saliency_and_reaches_the_sparsity(digits):
    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build("mlp-32", digits.input_shape, digits.num_classes)
    config = PruneConfig(sparsity=0.8, steps=1, retrain=TrainConfig(epochs=0), criterion="obd",
                         hessian_examples=512)
    obd, by_hand, by_magnitude = fresh(), fresh(), fresh()
    iterative_prune(obd, digits.train, config)
    prune_(by_hand, 0.8, score=obd_score(by_hand, digits.train, examples=512))
    prune_(by_magnitude, 0.8)
    for a, b, c in zip(targets(obd), targets(by_hand), targets(by_magnitude)):
        assert (a.weight == 0).float().mean().item() == pytest.approx(0.8, abs=2e-3)
        assert torch.equal(a.weight == 0, b.weight == 0) and not torch.equal(a.weight == 0, c.weight == 0)
    retrained = fresh()
    iterative_prune(retrained, digits.train, PruneConfig(sparsity=0.8, steps=2, retrain=TrainConfig(epochs=1, lr=1e-2),
                                                         criterion="obd", hessian_examples=256))
    assert all((t.weight == 0).float().mean().item() == pytest.approx(0.8, abs=2e-3) for t in targets(retrained))
    assert evaluate(retrained, digits.test) > 0.5  # chance is 0.1


def test_yaml_recipe_selects_obd(tmp_path):
    path = tmp_path / "obd.yaml"
    path.write_text("prune: {sparsity: 0.9, criterion: obd, hessian: hutchinson, hessian_examples: 512}\n")
    prune = load_recipe(path).prune
    assert prune.criterion is Criterion.OBD and prune.hessian is HessianMethod.HUTCHINSON
    assert prune.hessian_examples == 512
    assert PruneConfig().criterion is Criterion.MAGNITUDE and PruneConfig().hessian is HessianMethod.FISHER
    path.write_text("prune: {criterion: taylor}\n")
    with pytest.raises(ConfigError, match="not one of magnitude, obd"):
        load_recipe(path)
