import math

import pytest
import scipy.stats
import torch

from modelzip.errors import ConfigError
from modelzip.soft_sharing import Gamma, GaussianMixturePrior


def _prior() -> GaussianMixturePrior:
    """pi = (0.9, 0.075, 0.025), means (0, 0.5, -0.5), precisions (100, 4, 16)."""
    return GaussianMixturePrior(torch.tensor([0.5, -0.5]), torch.tensor([100.0, 4.0, 16.0]).log(), pi_zero=0.9,
                                mixing_logits=torch.tensor([0.75, 0.25]).log())


def test_log_prior_of_a_few_weights_matches_the_hand_computed_value():
    # sum_i log sum_j pi_j sqrt(l_j / 2 pi) exp(-l_j (w_i - mu_j)^2 / 2), worked out by hand:
    # w=0: 0.9*3.98942 + 0.075*0.79788*e^-0.5 + 0.025*1.59577*e^-2 = 3.632175 -> log 1.289832
    # w=0.5 -> log -2.815611, w=-0.3 -> log -2.459310
    prior = _prior()
    assert prior.log_prob(torch.tensor([0.0])).item() == pytest.approx(1.289832, abs=1e-5)
    total = prior.log_prob(torch.tensor([[0.0, 0.5], [-0.3, 0.0]]))  # any shape: every element counts
    assert total.item() == pytest.approx(2 * 1.289832 - 2.815611 - 2.459310, abs=1e-5)


def test_mixing_proportions_keep_the_zero_component_share():
    mixing = _prior().mixing()
    torch.testing.assert_close(mixing, torch.tensor([0.9, 0.075, 0.025]))
    assert _prior().all_means().tolist() == [0.0, 0.5, -0.5]


def test_gamma_hyperprior_is_the_gamma_log_density_of_the_precision():
    for alpha, beta, precision in [(5000.0, 2.0, 2400.0), (250.0, 0.1, 900.0), (2.0, 1.0, 0.5)]:
        got = Gamma(alpha, beta).neg_log_prob(torch.tensor(math.log(precision), dtype=torch.float64))
        assert got.item() == pytest.approx(-scipy.stats.gamma.logpdf(precision, alpha, scale=1 / beta), rel=1e-9)


def test_complexity_loss_is_minus_log_prior_plus_hyperpriors():
    prior = _prior()
    weights = [torch.tensor([0.0, 0.5]), torch.tensor([[-0.3]])]
    hyper = (prior.hyper_zero.neg_log_prob(torch.tensor(math.log(100.0)))
             + prior.hyper.neg_log_prob(torch.tensor([math.log(4.0), math.log(16.0)])).sum())
    expected = -(1.289832 - 2.815611 - 2.459310) + hyper
    assert prior(weights).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_pulls_each_weight_towards_its_responsible_means():
    # d(-log p)/dw = sum_j r_j l_j (w - mu_j): the paper's soft k-means pull
    prior = _prior()
    w = torch.tensor([0.05, 0.4, -0.45], requires_grad=True)
    (-prior.log_prob(w)).backward()
    r = prior.responsibilities(w.detach())
    precision, means = prior.log_precision.exp().detach(), prior.all_means().detach()
    expected = (r * precision * (w.detach()[:, None] - means)).sum(1)
    torch.testing.assert_close(w.grad, expected)
    torch.testing.assert_close(r.sum(1), torch.ones(3))


def test_initial_means_spread_over_the_weights_range():
    prior = GaussianMixturePrior.initial(torch.tensor([-0.4, 0.1, 0.8]), components=5, init_std=0.25)
    torch.testing.assert_close(prior.all_means(), torch.tensor([0.0, -0.4, 0.0, 0.4, 0.8]))
    torch.testing.assert_close(prior.log_precision.exp(), torch.full((5,), 16.0))
    torch.testing.assert_close(prior.mixing()[1:], torch.full((4,), 0.0025))
    assert prior.mixing()[0].item() == pytest.approx(0.99)


@pytest.mark.parametrize("kwargs", [dict(pi_zero=1.0), dict(pi_zero=0.0), dict(components=1), dict(init_std=0.0)])
def test_bad_prior_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        GaussianMixturePrior.initial(torch.randn(10), **kwargs)


def test_bad_gamma_is_a_config_error():
    with pytest.raises(ConfigError, match="alpha > 0"):
        Gamma(0.0, 1.0)

