"""qlib.quant.observers: range setting against PyTorch / NumPy references and its purpose."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from qlib.quant import (OBSERVERS, KLObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                        MSEObserver, PercentileObserver, choose_qparams, fake_quantize,
                        make_observer)


def _batches(seed=0, n=4, shape=(32, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * (i + 1) for i in range(n)]


def _torch_observer(cls_name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as tq
        return getattr(tq, cls_name)(**kw)


def test_minmax_matches_torch_over_batches():
    ref = _torch_observer("MinMaxObserver", dtype=torch.quint8)
    obs = MinMaxObserver(8)
    for b in _batches():
        ref(b)
        assert obs(b) is b  # passes its input through
    s, z = obs.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert torch.equal(s.reshape(1), rs) and torch.equal(z.reshape(1), rz.long())


def test_per_channel_minmax_matches_torch():
    ref = _torch_observer("PerChannelMinMaxObserver", ch_axis=1, dtype=torch.qint8,
                          qscheme=torch.per_channel_symmetric)
    obs = MinMaxObserver(8, symmetric=True, signed=True, axis=1)
    for b in _batches(1):
        ref(b)
        obs(b)
    s, z = obs.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert s.shape == (8,) and torch.equal(s, rs.float()) and torch.equal(z, rz.long())


def test_moving_average_matches_torch():
    ref = _torch_observer("MovingAverageMinMaxObserver", averaging_constant=0.1,
                          dtype=torch.quint8)
    obs = MovingAverageMinMaxObserver(8, averaging_constant=0.1)
    for b in _batches(2):
        ref(b)
        obs(b)
    assert torch.allclose(obs.min_val, ref.min_val, atol=1e-6)
    assert torch.allclose(obs.max_val, ref.max_val, atol=1e-6)
    s, z = obs.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert torch.allclose(s.reshape(1), rs) and abs(int(z) - int(rz)) <= 1


def test_percentile_matches_numpy():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    obs = PercentileObserver(8, percentile=99.0, max_samples=20_000)
    obs(x)
    lo, hi = obs.range()
    ref_lo, ref_hi = np.percentile(x.numpy(), [1.0, 99.0])
    assert lo.item() == pytest.approx(ref_lo, abs=1e-5)
    assert hi.item() == pytest.approx(ref_hi, abs=1e-5)
    per_ch = PercentileObserver(8, percentile=90.0, axis=0)
    per_ch(torch.arange(40.0).view(2, 20))
    lo, hi = per_ch.range()
    assert torch.allclose(hi, torch.tensor([17.1, 37.1]))


@pytest.mark.parametrize("axis", [None, 0])
def test_mse_clipping_beats_minmax_on_heavy_tails(axis):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 2000, generator=g)
    x[:, :5] = 12.0 * torch.sign(x[:, :5])  # a few outliers per channel
    x = x if axis is not None else x.reshape(-1)
    mse, mm = MSEObserver(4, axis=axis, symmetric=True, signed=True), \
        MinMaxObserver(4, axis=axis, symmetric=True, signed=True)
    mse(x)
    mm(x)

    def err(obs):
        s, z = obs.calculate_qparams()
        return ((fake_quantize(x, s, z, 4, axis=axis) - x) ** 2).mean()

    assert err(mse) < 0.8 * err(mm)
    for a in (0.3, 0.5, 0.8, 1.0):  # no other clipping ratio does better
        s, z = choose_qparams(a * mm.min_val, a * mm.max_val, 4, symmetric=True)
        assert err(mse) <= ((fake_quantize(x, s, z, 4, axis=axis) - x) ** 2).mean() + 1e-6
    lo, hi = mse.range()
    assert (hi <= mm.max_val).all() and (lo >= mm.min_val).all()


def test_kl_clips_long_tail_and_keeps_counts():
    g = torch.Generator().manual_seed(5)
    obs = KLObserver(4, bins=256, stride=1)
    x1 = torch.relu(torch.randn(20_000, generator=g))
    x2 = torch.relu(torch.randn(20_000, generator=g)) * 3  # wider: the histogram rebins
    obs(x1)
    w1 = obs.width
    obs(x2)
    assert obs.width > w1 and obs.hist.sum().item() == 40_000
    lo, hi = obs.range()
    assert lo.item() == 0.0 and 0 < hi.item() < obs.max_val.item()
    ts, kls = obs.kl_curve()
    assert ts.shape == kls.shape and (kls >= -1e-9).all()
    with pytest.raises(ValueError, match="per-tensor only"):
        KLObserver(8, axis=0)


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_empty_calibration_raises(name):
    obs = make_observer(name, 8)
    with pytest.raises(ValueError, match="observed no data"):
        obs.calculate_qparams()
    with pytest.raises(ValueError, match="NaN or Inf"):
        obs(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_every_observer_gives_valid_qparams(name):
    obs = make_observer(name, 4)
    for b in _batches(6):
        obs(b)
    s, z = obs.calculate_qparams()
    assert s.item() > 0 and 0 <= z.item() <= 15
    obs.reset()
    with pytest.raises(ValueError):
        obs.calculate_qparams()


def test_make_observer_specs():
    obs = make_observer(functools.partial(PercentileObserver, percentile=99.9), 6,
                        signed=True, axis=0)
    assert isinstance(obs, PercentileObserver) and obs.percentile == 99.9 and obs.axis == 0
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("max", 8)
    with pytest.raises(TypeError):
        make_observer(3, 8)
    # min-max is exactly choose_qparams of the running range
    obs = make_observer("minmax", 3)
    obs(torch.tensor([-2.0, 5.0]))
    assert obs.calculate_qparams() == choose_qparams(torch.tensor(-2.0), torch.tensor(5.0),
                                                     3, signed=False)
