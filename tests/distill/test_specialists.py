import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from modelzip.distill.specialists import (SpecialistEnsemble, collapse, combine, confusable_groups, enriched,
                                          make_specialist, train_specialists)
from modelzip.errors import ConfigError
from modelzip.models import arch_of, build
from modelzip.train import TrainConfig, evaluate, fit, predict


def fixed(logits: torch.Tensor) -> nn.Linear:
    """A model whose output for input eye(B)[i] is logits[i]: (B, K) logits from a bias-free nn.Linear."""
    layer = nn.Linear(len(logits), logits.shape[1], bias=False)
    with torch.no_grad():
        layer.weight.copy_(logits.T)
    return layer


def objective(log_q, log_pg, log_pms, groups):
    """KL(p_g || q) + sum_m KL(p_m || collapse_m(q)) per row, written out for the tests."""
    total = (log_pg.exp() * (log_pg - log_q)).sum(1)
    for log_pm, classes in zip(log_pms, groups):
        rest = [c for c in range(log_q.shape[1]) if c not in classes]
        collapsed = torch.cat([log_q[:, classes], log_q[:, rest].logsumexp(1, keepdim=True)], 1)
        total = total + (log_pm.exp() * (log_pm - collapsed)).sum(1)
    return total


def test_confusable_groups_pairs_classes_that_share_probability():
    g = torch.Generator().manual_seed(0)
    share = torch.rand(200, generator=g)  # how an example splits 0.9 between the two classes of its pair
    probs = torch.full((200, 5), 0.0)
    probs[0::2, 0], probs[0::2, 1] = 0.9 * share[0::2], 0.9 * (1 - share[0::2])  # {0, 1} predicted together
    probs[1::2, 2], probs[1::2, 3] = 0.9 * share[1::2], 0.9 * (1 - share[1::2])  # {2, 3} predicted together
    probs[:, 4] = 0.1  # class 4 never co-varies: its own cluster, a dropped singleton
    assert confusable_groups(probs, 3) == [[0, 1], [2, 3]]
    assert confusable_groups(probs[:, :4], 2) == [[0, 1], [2, 3]]
    assert confusable_groups(probs, 1) == []  # one group of all classes is the generalist itself
    for bad in (0, 6):
        with pytest.raises(ConfigError):
            confusable_groups(probs, bad)


def test_enriched_is_half_special_subset():
    labels = torch.arange(10).repeat(20)  # 20 examples of each class
    train = TensorDataset(torch.arange(200), labels)  # the "images" are the example ids
    ids, y = enriched(train, [1, 8], seed=3).tensors
    own = torch.isin(y, torch.tensor([1, 8]))
    assert len(y) == 80 and own.sum() == 40
    assert set(ids[own].tolist()) == set(torch.isin(labels, torch.tensor([1, 8])).nonzero().squeeze(1).tolist())
    assert len(set(ids.tolist())) == 80 and (labels[ids] == y).all()
    assert torch.equal(enriched(train, [1, 8], seed=3).tensors[0], ids)
    assert not torch.equal(enriched(train, [1, 8], seed=4).tensors[0], ids)
    assert len(enriched(train, list(range(8)), seed=0)) == 200  # the 40 others are fewer than 160: all taken


def test_make_specialist_copies_rows_and_adds_a_dustbin():
    generalist = build("mlp-16", (1, 8, 8), 10)
    before = {k: v.clone() for k, v in generalist.state_dict().items()}
    specialist = make_specialist(generalist, [3, 5])
    x = torch.rand(6, 1, 8, 8)
    z, out = generalist(x), specialist(x)  # (6, 10), (6, 3)
    assert out.shape == (6, 3)
    torch.testing.assert_close(out[:, :2], z[:, [3, 5]], atol=1e-6, rtol=0)
    others = [c for c in range(10) if c not in (3, 5)]
    # Dustbin: mean of the other logits + log 8, a lower bound of their logsumexp (Jensen).
    torch.testing.assert_close(out[:, 2], z[:, others].mean(1) + math.log(8), atol=1e-5, rtol=0)
    assert (out[:, 2] <= z[:, others].logsumexp(1) + 1e-5).all()
    assert generalist.fc2.out_features == 10 and arch_of(generalist) is not None and arch_of(specialist) is None
    assert all(torch.equal(v, before[k]) for k, v in generalist.state_dict().items())
    with pytest.raises(ConfigError, match="no dustbin"):
        make_specialist(generalist, range(10))


def test_make_specialist_swaps_a_nested_layer_by_name():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    net = Net()
    specialist = make_specialist(net, [4, 0])
    assert specialist.head[1].out_features == 3 and net.head[1].out_features == 5
    x = torch.randn(3, 4)
    torch.testing.assert_close(specialist(x)[:, :2], net(x)[:, [4, 0]], atol=1e-6, rtol=0)


def test_collapse_keeps_classes_and_sums_the_rest_into_the_dustbin():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.4, 0.1]])
    out = collapse(p.log(), [2, 0]).exp()  # (2, 3)
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.1, 0.6], [0.4, 0.25, 0.35]]))
    torch.testing.assert_close(out.sum(1), torch.ones(2))
    # As train_specialist's teacher logits: their softmax is the collapsed generalist distribution.
    z = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    teacher = collapse(F.log_softmax(z, 1), [1, 2])
    p_z = F.softmax(z, 1)
    torch.testing.assert_close(F.softmax(teacher, 1), torch.stack([p_z[:, 1], p_z[:, 2], p_z[:, 0] + p_z[:, 3]], 1))


def test_combine_by_hand_when_the_dustbin_is_one_class():
    # With classes {0, 1} of 3, collapse is the identity: q = (p_g + p_m) / 2 after one step.
    log_pg, log_pm = torch.tensor([[0.5, 0.3, 0.2]]).log(), torch.tensor([[0.1, 0.7, 0.2]]).log()
    q = combine(log_pg, [(torch.tensor([0]), torch.tensor([0, 1]), log_pm)], steps=1).exp()
    torch.testing.assert_close(q, torch.tensor([[0.3, 0.5, 0.2]]))


def test_ensemble_without_active_specialist_is_the_generalist_exactly():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 0.5, 2.0, 1.0]])  # top classes 0 and 2
    specialist = fixed(torch.tensor([[-2.0, 4.0, 0.0], [-2.0, 4.0, 0.0]]))  # sure of class 3: would move q
    ensemble = SpecialistEnsemble(fixed(z), [specialist], [[1, 3]])
    out = ensemble(torch.eye(2))
    assert torch.equal(out, F.log_softmax(z, 1))
    moved = SpecialistEnsemble(fixed(z), [specialist], [[1, 3]], top_n=2)(torch.eye(2))  # 1 and 3 now 2nd
    assert (moved.exp()[:, 3] > F.softmax(z, 1)[:, 3] + 0.2).all()


def test_ensemble_keeps_p_g_when_the_specialist_agrees():
    z = torch.tensor([[2.0, 1.5, 0.0, -1.0, 0.3], [0.1, 0.2, 1.0, 0.0, -2.0]])
    agreeing = fixed(collapse(F.log_softmax(z, 1), [1, 2]))
    out = SpecialistEnsemble(fixed(z), [agreeing], [[1, 2]], top_n=2)(torch.eye(2))
    torch.testing.assert_close(out.exp(), F.softmax(z, 1), atol=1e-4, rtol=0)


def test_ensemble_moves_towards_a_confident_specialist_and_lowers_the_objective():
    z = torch.tensor([[2.0, 1.5, 0.0, 0.0, -1.0]])  # the generalist prefers 0 over 1
    log_pm = torch.tensor([[0.05, 0.9, 0.05]]).log()  # the specialist for {0, 1} is sure it is 1
    out = SpecialistEnsemble(fixed(z), [fixed(log_pm)], [[0, 1]])(torch.eye(1))
    log_pg = F.log_softmax(z, 1)
    assert out.argmax(1).item() == 1 and out.exp().sum().item() == pytest.approx(1, abs=1e-6)
    start, end = objective(log_pg, log_pg, [log_pm], [[0, 1]]), objective(out, log_pg, [log_pm], [[0, 1]])
    # At q = p_g = (0.5189, 0.3148, 0.0702, 0.0702, 0.0258) only the specialist's term is non-zero:
    # 0.05 ln(0.05 / 0.5189) + 0.9 ln(0.9 / 0.3148) + 0.05 ln(0.05 / 0.1663) = 0.7685.
    assert start.item() == pytest.approx(0.7685, abs=1e-3) and end.item() < 0.6 * start.item()
    # A minimum: the objective's gradient with respect to the logits of q vanishes there.
    logits = out.clone().requires_grad_(True)
    objective(F.log_softmax(logits, 1), log_pg, [log_pm], [[0, 1]]).sum().backward()
    assert logits.grad.abs().max().item() < 1e-5


def test_specialists_end_to_end_on_digits(digits):
    generalist = build("mlp-16", digits.input_shape, digits.num_classes)
    fit(generalist, digits.train, TrainConfig(epochs=20, lr=2e-2, batch_size=256))
    base = evaluate(generalist, digits.test)
    ensemble = train_specialists(generalist, digits.train, 3, TrainConfig(epochs=5, lr=3e-3, batch_size=128),
                                 T=2.0, alpha=0.5)
    assert base > 0.85 and len(ensemble.specialists) >= 2
    assert all(2 <= len(g) < 10 for g in ensemble.groups)
    x = digits.test.tensors[0][:4]
    assert [s(x).shape for s in ensemble.specialists] == [(4, len(g) + 1) for g in ensemble.groups]
    log_q = predict(ensemble, digits.test)  # (360, 10)
    torch.testing.assert_close(log_q.exp().sum(1), torch.ones(len(log_q)))
    assert evaluate(ensemble, digits.test) >= base - 0.03
