import math

import pytest
import torch

from modelzip.soft_sharing import GaussianMixturePrior, kl_divergence, merge_components, quantize_to_means_


def _prior(means, stds, mixing, pi_zero=0.9, zero_std=0.01):
    return GaussianMixturePrior(torch.tensor(means), -2 * torch.tensor([zero_std, *stds]).log(), pi_zero=pi_zero,
                                mixing_logits=torch.tensor(mixing).log())


def test_kl_divergence_of_gaussians():
    one = torch.tensor(1.0)
    assert kl_divergence(one, one, one, one).item() == 0.0
    # KL(N(0, 1) || N(1, 4)) = 0.5 (log 4 + (1 + 1) / 4 - 1)
    got = kl_divergence(torch.tensor(0.0), one, one, torch.tensor(4.0)).item()
    assert got == pytest.approx(0.5 * (math.log(4) + 0.5 - 1))


def test_close_components_merge_with_summed_mixing_and_matched_moments():
    # components at 0.30 and 0.31 (std 0.02: symmetric KL 0.125) merge; the one at -0.5 stays
    prior = _prior([0.30, 0.31, -0.5], [0.02, 0.02, 0.02], [0.02, 0.06, 0.02])
    merged = merge_components(prior, threshold=1.0)
    assert merged.components == 3
    means, mixing = merged.all_means(), merged.mixing()
    torch.testing.assert_close(mixing, torch.tensor([0.9, 0.08, 0.02]))
    assert means[1].item() == pytest.approx((0.002 * 0.30 + 0.006 * 0.31) / 0.008, abs=1e-7)
    second = (0.002 * (0.0004 + 0.09) + 0.006 * (0.0004 + 0.31 ** 2)) / 0.008
    assert (-merged.log_precision[1]).exp().item() == pytest.approx(second - means[1].item() ** 2, rel=1e-4)
    assert means[2].item() == pytest.approx(-0.5)


def test_a_component_merged_into_zero_keeps_the_zero_mean():
    prior = _prior([0.005, 0.4], [0.01, 0.02], [0.5, 0.5])
    merged = merge_components(prior, threshold=1.0)
    assert merged.all_means().tolist() == pytest.approx([0.0, 0.4])
    assert merged.mixing()[0].item() == pytest.approx(0.95)


def test_threshold_zero_merges_nothing_and_a_huge_one_everything():
    prior = _prior([0.30, 0.31, -0.5], [0.02, 0.02, 0.02], [0.02, 0.06, 0.02])
    assert merge_components(prior, threshold=0.0).components == 4
    alone = merge_components(prior, threshold=1e9)
    assert alone.components == 1 and alone.mixing().tolist() == [1.0]


def test_quantization_gives_exactly_the_component_means():
    prior = _prior([0.3, -0.5], [0.05, 0.05], [0.5, 0.5], zero_std=0.05)
    a = torch.tensor([[0.31, -0.02], [-0.47, 0.29]])
    b = torch.tensor([0.0, 0.27, -0.0001, -0.56, 0.01])
    codes = quantize_to_means_([a, b], prior)
    values = set(torch.cat([a.flatten(), b]).tolist())
    assert values == {0.0, prior.means[0].item(), prior.means[1].item()}
    assert torch.equal(a, torch.tensor([[0.3, 0.0], [-0.5, 0.3]]))
    assert torch.bincount(torch.cat([c.flatten() for c in codes])).tolist() == [4, 3, 2]
    assert codes[0].shape == a.shape
    zeros = torch.cat([a.flatten(), b])[torch.cat([a.flatten(), b]) == 0]
    assert not torch.signbit(zeros).any()  # +0.0 only: -0.0 would be a second codebook entry


def test_pruned_weights_stay_zero_even_beside_a_narrow_component():
    # a narrow component at 0.001 has the higher density at w=0, yet exact zeros stay pruned
    prior = _prior([0.001], [0.0001], [1.0], pi_zero=0.5, zero_std=0.1)
    w = torch.tensor([0.0, 0.0011])
    quantize_to_means_([w], prior)
    assert w.tolist() == [0.0, pytest.approx(0.001)]
