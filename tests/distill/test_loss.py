import math

import pytest
import torch
import torch.nn.functional as F

from modelzip.distill import ensemble_logits, kd_loss
from modelzip.errors import ConfigError

LN3 = math.log(3)


def test_at_T1_soft_only_it_is_the_cross_entropy_with_soft_labels():
    student = torch.tensor([[0.0, LN3]])  # p = (1/4, 3/4)
    teacher = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))  # 0.836988
    assert kd_loss(student, teacher, T=1, alpha=1).item() == pytest.approx(expected, abs=1e-6)
    assert kd_loss(student, teacher, torch.tensor([1]), T=1, alpha=1).item() == pytest.approx(expected, abs=1e-6)
    assert kd_loss(student, teacher, T=1, alpha=0.3).item() == pytest.approx(expected, abs=1e-6)  # no labels: soft only


def test_hard_label_term_is_mixed_in_with_weight_one_minus_alpha():
    student, teacher, y = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    soft = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    hard = -math.log(0.75)
    assert kd_loss(student, teacher, y, T=1, alpha=0.25).item() == pytest.approx(0.25 * soft + 0.75 * hard, abs=1e-6)
    assert kd_loss(student, teacher, y, T=1, alpha=0.0).item() == pytest.approx(hard, abs=1e-6)


def test_soft_term_at_temperature_T_is_scaled_by_T_squared():
    student, teacher = torch.tensor([[2.0, 0.0, -2.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    T = 5.0
    p_t = F.softmax(teacher / T, -1)
    expected = -(p_t * F.log_softmax(student / T, -1)).sum() * T * T
    assert kd_loss(student, teacher, T=T, alpha=1).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_is_T_times_the_softmax_difference_and_keeps_its_size_as_T_grows():
    teacher = torch.tensor([[0.3, -0.2, 0.1, 0.0], [0.0, 0.1, -0.3, 0.2]])
    grads = {}
    for T in (1.0, 10.0, 20.0):
        student = torch.tensor([[0.1, 0.2, -0.1, 0.0], [0.2, -0.2, 0.0, 0.1]], requires_grad=True)
        kd_loss(student, teacher, T=T, alpha=1).backward()
        exact = T * (F.softmax(student.detach() / T, -1) - F.softmax(teacher / T, -1)) / 2
        torch.testing.assert_close(student.grad, exact)
        grads[T] = student.grad
    # high-T limit: grad -> (s - t - mean) / (classes * batch), independent of T thanks to the T^2 factor
    torch.testing.assert_close(grads[10.0], grads[20.0], rtol=0.01, atol=1e-4)
    assert grads[20.0].norm() > 0.1 * grads[1.0].norm()  # without T^2 it would be 400x smaller


def test_teacher_gets_no_gradient_and_kl_is_zero_at_a_perfect_match():
    teacher = torch.randn(3, 5, requires_grad=True)
    kd_loss(torch.randn(3, 5, requires_grad=True), teacher, T=4).backward()
    assert teacher.grad is None
    same = torch.randn(3, 5)
    assert kd_loss(same, same, T=3, kl=True).item() == pytest.approx(0.0, abs=1e-6)
    entropy = -(F.softmax(same / 3, -1) * F.log_softmax(same / 3, -1)).sum(-1).mean() * 9
    assert kd_loss(same, same, T=3).item() == pytest.approx(entropy.item(), rel=1e-5)


def test_ensemble_soft_targets_average_the_members_probabilities():
    members = torch.tensor([[[0.0, LN3]], [[LN3, 0.0]]])  # p = (1/4, 3/4) and (3/4, 1/4)
    torch.testing.assert_close(F.softmax(ensemble_logits(members, 1.0), -1), torch.tensor([[0.5, 0.5]]))
    members = torch.tensor([[[0.0, 0.0, 6.0]], [[6.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
    T = 2.0
    expected = F.softmax(members / T, -1).mean(0)
    torch.testing.assert_close(F.softmax(ensemble_logits(members, T) / T, -1), expected)
    one = torch.tensor([[1.0, -2.0, 0.5]])
    torch.testing.assert_close(F.softmax(ensemble_logits(one[None], 7.0) / 7, -1), F.softmax(one / 7, -1))


@pytest.mark.parametrize("kwargs, message", [
    ({"T": 0}, "T > 0"), ({"alpha": 1.5}, "alpha"),
])
def test_bad_settings_are_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), **kwargs)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="differ in shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="members, batch, classes"):
        ensemble_logits(torch.zeros(2, 3), 1.0)
