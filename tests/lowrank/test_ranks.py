import pytest
import torch

from modelzip.errors import ConfigError
from modelzip.lowrank import energy_ranks, factorized_count, rank_for_energy, rank_for_ratio


def test_factorized_count_by_hand():
    assert factorized_count((100, 300), (18,)) == 18 * 400
    # 1x1 (20 -> 13): 260, core 13 -> 32 at 5x5: 10,400, 1x1 (32 -> 50): 1,600
    assert factorized_count((50, 20, 5, 5), (32, 13)) == 12_260


def test_rank_for_ratio_linear_by_hand():
    assert rank_for_ratio((100, 300), 0.25) == (18,)  # 18 * 400 = 7,200 <= 7,500 < 19 * 400
    assert rank_for_ratio((300, 784), 0.25) == (54,)  # 0.25 * 235,200 / 1,084 = 54.2
    assert rank_for_ratio((10, 10), 1.0) == (5,)  # 5 * 20 = 100 = the dense count
    assert rank_for_ratio((10, 10), 0.01) == (1,)  # never below rank 1, even over budget
    assert rank_for_ratio((3, 1000), 1.0) == (2,)  # 3 * 1,003 > 3,000: rank 3 would not pay


def test_rank_for_ratio_tucker_by_hand():
    # in = 1, out = 20: r_in stays 1; 1 + 25 r + 20 r <= 250 gives r_out = 5
    assert rank_for_ratio((20, 1, 5, 5), 0.5) == (5, 1)
    # out = 50 leads, r_in = round(r_out * 20 / 50): (32, 13) costs 12,260 <= 12,500; (33, 13) costs 12,635
    assert rank_for_ratio((50, 20, 5, 5), 0.5) == (32, 13)
    # in leads when larger: r_in = t, r_out = round(t * 4 / 8) half up; budget 0.5 * 288 = 144
    # t = 4: (2, 4) costs 32 + 72 + 8 = 112; t = 5: (3, 5) costs 40 + 135 + 12 = 187
    assert rank_for_ratio((4, 8, 3, 3), 0.5) == (2, 4)
    assert rank_for_ratio((4, 4, 3, 3), 1.0) == (3, 3)  # 12 + 81 + 12 = 105 <= 144; (4, 4) costs 176


def test_rank_for_energy_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9/14 = .643, 13/14 = .929, 1
    assert [rank_for_energy(s, e) for e in (0.5, 9 / 14, 0.65, 0.9, 13 / 14, 0.93, 1.0)] == [1, 1, 2, 2, 2, 3, 3]
    assert rank_for_energy(torch.zeros(4), 0.9) == 1


def test_energy_ranks_of_tucker_unfoldings():
    # a kernel built from a (2, 1, 3, 3) core: its mode-0 unfolding has rank 2, its mode-1 unfolding rank 1
    core, a, b = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64), \
        torch.randn(4, 1, dtype=torch.float64)
    kernel = torch.einsum("abhw,oa,ib->oihw", core, a, b)
    assert energy_ranks(kernel, 0.999) == (2, 1)
    assert energy_ranks(kernel, 1e-3) == (1, 1)
    low = torch.randn(7, 2) @ torch.randn(2, 9)
    assert energy_ranks(low, 0.9999) == (2,)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, True, "half"])
def test_fractions_out_of_range_are_config_errors(bad):
    with pytest.raises(ConfigError, match="ratio"):
        rank_for_ratio((4, 4), bad)
    with pytest.raises(ConfigError, match="energy"):
        rank_for_energy(torch.ones(3), bad)


def test_other_shapes_are_config_errors():
    with pytest.raises(ConfigError, match=r"\[4, 4, 3\]"):
        rank_for_ratio((4, 4, 3), 0.5)
