import pytest
import torch

from modelzip.errors import ConfigError, DataError
from modelzip.quantize.uniform import (Observer, QuantSpec, dequantize, fake_quantize, minmax_range, mse_range,
                                       observer, percentile_range, qparams, qrange, quantize)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_error_is_at_most_half_a_step_inside_the_range(bits, symmetric, per_channel):
    spec = QuantSpec(bits, symmetric, per_channel)
    # channels of very different magnitudes, one of them all positive (asymmetric must still hold 0)
    x = torch.randn(5, 200) * torch.tensor([[0.01], [0.3], [1.0], [7.0], [2.0]])
    x[4] = x[4].abs() + 3
    scale, zero_point = qparams(x, spec)
    q = quantize(x, scale, zero_point, spec)
    qmin, qmax = qrange(spec)
    assert q.dtype == torch.int32 and qmin <= int(q.min()) and int(q.max()) <= qmax
    err = (dequantize(q, scale, zero_point, spec) - x).abs()
    step = scale.reshape(-1, 1) if per_channel else scale
    assert bool((err <= step / 2 + 1e-6 * x.abs()).all())
    assert torch.equal(fake_quantize(x, scale, zero_point, spec), dequantize(q, scale, zero_point, spec))


def test_qparams_by_hand():
    x = torch.tensor([-1.0, 0.0, 0.5])
    spec = QuantSpec(8, symmetric=False)
    scale, zero_point = qparams(x, spec)
    assert scale.item() == pytest.approx(1.5 / 255, rel=1e-7) and zero_point.item() == 170  # round(255 / 1.5)
    assert quantize(x, scale, zero_point, spec).tolist() == [0, 170, 255]
    # an all-positive tensor: the range is extended to 0, which stays exact
    scale, zero_point = qparams(torch.tensor([2.0, 4.0]), QuantSpec(2, symmetric=False))
    assert scale.item() == pytest.approx(4 / 3) and zero_point.item() == 0
    assert fake_quantize(torch.tensor([0.0, 1.0, 4.0]), scale, zero_point, QuantSpec(2, symmetric=False)
                         ).tolist() == pytest.approx([0.0, 4 / 3, 4.0])


def test_symmetric_range_is_restricted_and_odd():
    assert qrange(QuantSpec(8)) == (-127, 127) and qrange(QuantSpec(4)) == (-7, 7)
    assert qrange(QuantSpec(8, symmetric=False)) == (0, 255) and qrange(QuantSpec(2, symmetric=False)) == (0, 3)
    spec = QuantSpec(4)
    x = torch.tensor([-3.5, -1.0, 0.0, 0.26, 2.0])
    scale, zero_point = qparams(x, spec)
    assert scale.item() == pytest.approx(0.5) and zero_point.item() == 0
    q = quantize(x, scale, zero_point, spec)
    assert q.tolist() == [-7, -2, 0, 1, 4]
    assert torch.equal(quantize(-x, scale, zero_point, spec), -q)


def test_round_half_to_even():
    spec = QuantSpec(8)
    q = quantize(torch.tensor([0.5, 1.5, 2.5, -0.5]), torch.tensor(1.0), torch.tensor(0), spec)
    assert q.tolist() == [0, 2, 2, 0]


def test_per_channel_along_another_axis():
    x = torch.tensor([[1.0, -20.0], [-0.5, 10.0], [0.25, 5.0]])  # channels are columns
    spec = QuantSpec(8, per_channel=True, axis=1)
    scale, zero_point = qparams(x, spec)
    assert scale.tolist() == pytest.approx([1 / 127, 20 / 127]) and zero_point.tolist() == [0, 0]
    assert quantize(x, scale, zero_point, spec)[:, 0].tolist() == [127, -64, 32]  # -63.5 rounds to even
    with pytest.raises(ConfigError, match="axis 2"):
        qparams(x, QuantSpec(per_channel=True, axis=2))


def test_zero_range_gives_scale_one():
    x = torch.zeros(2, 3)
    x[1] = torch.tensor([1.0, -2.0, 0.5])
    for symmetric in (True, False):
        spec = QuantSpec(4, symmetric, per_channel=True)
        scale, zero_point = qparams(x, spec)
        assert scale[0].item() == 1.0 and torch.isfinite(scale).all()
        assert torch.equal(fake_quantize(x, scale, zero_point, spec)[0], torch.zeros(3))
    scale, zero_point = qparams(torch.zeros(4), QuantSpec(3, symmetric=False))
    assert scale.item() == 1.0 and zero_point.item() == 0


def test_bad_input_and_settings():
    for bits in (1, 9, 2.5):
        with pytest.raises(ConfigError, match="bits in 2..8"):
            QuantSpec(bits)
    spec = QuantSpec()
    with pytest.raises(DataError, match="1 NaN and 0 infinite"):
        qparams(torch.tensor([1.0, float("nan")]), spec)
    with pytest.raises(DataError, match="0 NaN and 2 infinite"):
        quantize(torch.tensor([float("inf"), -float("inf")]), torch.tensor(1.0), torch.tensor(0), spec)
    with pytest.raises(DataError, match="NaN"):
        mse_range(torch.tensor([float("nan")]), spec)
    with pytest.raises(ConfigError, match="lo <= hi"):
        qparams(torch.ones(2), spec, lo=1.0, hi=-1.0)
    with pytest.raises(ConfigError, match="both"):
        qparams(torch.ones(2), spec, lo=1.0)
    with pytest.raises(ConfigError, match="percentile"):
        percentile_range(torch.ones(2), spec, percentile=0)


def test_percentile_clips_an_outlier():
    x = torch.cat([torch.arange(1.0, 101.0), torch.tensor([1000.0])])  # 1..100 and one outlier
    lo, hi = percentile_range(x, QuantSpec(symmetric=False), percentile=99)
    assert (lo.item(), hi.item()) == (2.0, 100.0)  # the 1st and 99th percentiles of 101 values, exactly
    lo, hi = percentile_range(x, QuantSpec(), percentile=99)
    assert (lo.item(), hi.item()) == (-100.0, 100.0)
    assert minmax_range(x, QuantSpec())[1].item() == 1000.0


def test_mse_range_is_within_minmax_and_no_worse():
    x = torch.randn(4, 500)
    x[1, 7] = 8.0  # an outlier in channel 1: clipping it costs less than the coarse steps it causes
    spec = QuantSpec(4, per_channel=True)
    ranges = {"minmax": minmax_range(x, spec), "mse": mse_range(x, spec)}
    errors = {}
    for name, (lo, hi) in ranges.items():
        scale, zero_point = qparams(x, spec, lo=lo, hi=hi)
        errors[name] = (fake_quantize(x, scale, zero_point, spec) - x).square().mean(1)
    (lo, hi), (mlo, mhi) = ranges["mse"], ranges["minmax"]
    assert bool((lo >= mlo).all() and (hi <= mhi).all()) and bool((errors["mse"] <= errors["minmax"]).all())
    assert hi[1].item() < 5 and errors["mse"][1].item() < errors["minmax"][1].item() / 1.5
    # one candidate: exactly the minmax range
    assert all(torch.equal(a, b) for a, b in zip(mse_range(x, spec, grid=1), ranges["minmax"]))


def test_observer_by_name():
    assert observer("mse") is mse_range and observer(Observer.PERCENTILE) is percentile_range
    with pytest.raises(ConfigError, match="minmax, percentile, mse"):
        observer("histogram")
