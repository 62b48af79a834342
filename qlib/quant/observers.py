"""Observers: watch tensors during calibration and choose the range [lo, hi] to quantize.

Introduced in notebook 02. An observer is a module that passes its input through
unchanged while recording statistics; :meth:`Observer.calculate_qparams` then turns the
chosen range into (scale, zero_point) with :func:`~qlib.quant.affine.choose_qparams`.
Min-max keeps every value representable but spends levels on rare outliers; percentile,
MSE and KL clip the range to spend the few levels of a low bit width where the values are.

    MinMaxObserver               lo, hi = min x, max x over all batches
    MovingAverageMinMaxObserver  lo <- lo + c (min x_batch - lo)  (same for hi)
    PercentileObserver           lo, hi = P_(100-p)(x), P_p(x)
    MSEObserver                  a* = argmin_a E[(x - fq(x; a lo, a hi))^2]
    KLObserver                   t* = argmin_t KL(P_t || Q_t) on a histogram of |x|

``axis=None`` observes per tensor; ``axis=k`` keeps one range per slice along axis k
(per-channel), except for :class:`KLObserver` which is per-tensor only.

>>> obs = MinMaxObserver(bits=8, signed=False)
>>> _ = obs(torch.tensor([-1.0, 3.0]))
>>> obs.calculate_qparams()
(tensor(0.0157), tensor(64))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._util import check_bits
from .affine import choose_qparams, fake_quantize

__all__ = ["Observer", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
           "MSEObserver", "KLObserver", "OBSERVERS", "make_observer"]


class Observer(nn.Module):
    """Base class: records running min / max (per tensor or per channel along ``axis``).

    Subclasses override :meth:`range` to pick [lo, hi] from what they saw. ``forward(x)``
    returns x unchanged. A random subsample of the values (at most ``max_samples`` per
    batch, seeded) is kept for the observers that need the distribution.
    """

    keeps_samples = False

    def __init__(self, bits: int = 8, *, symmetric: bool = False, signed: bool = False,
                 axis: int | None = None, max_samples: int = 1 << 15, seed: int = 0) -> None:
        super().__init__()
        self.bits, self.symmetric, self.signed, self.axis = check_bits(bits), symmetric, \
            signed, axis
        self.max_samples = max_samples
        self.min_val: Tensor | None = None  # 0-d, or (C,) per channel
        self.max_val: Tensor | None = None
        self.samples: list[Tensor] = []     # each (n,) or (C, n)
        self.batches = 0
        self._gen = torch.Generator().manual_seed(seed)

    def _rows(self, x: Tensor) -> Tensor:
        """x -> (n,) per tensor, or (C, n) with C = x.shape[axis] per channel."""
        x = x.detach().float()
        return x.reshape(-1) if self.axis is None else x.movedim(self.axis, 0).reshape(
            x.shape[self.axis], -1)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{type(self).__name__} got NaN or Inf; only finite values can "
                             "be observed")
        r = self._rows(x)
        self.update(r.amin(-1), r.amax(-1))
        if self.keeps_samples:
            n = r.shape[-1]
            if n > self.max_samples:
                r = r[..., torch.randperm(n, generator=self._gen)[:self.max_samples]]
            self.samples.append(r)
        self.batches += 1
        return x

    def update(self, lo: Tensor, hi: Tensor) -> None:
        """Running min / max over batches."""
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), \
                torch.maximum(self.max_val, hi)

    def _check_seen(self) -> None:
        if self.batches == 0:
            raise ValueError(f"{type(self).__name__} has observed no data: run at least one "
                             "calibration batch (calibrate(model, batches)) first")

    def values(self) -> Tensor:
        """All kept samples: (n,) per tensor or (C, n) per channel (at most 2^24 values)."""
        v = torch.cat(self.samples, -1)
        if v.numel() > 1 << 24:  # torch.quantile's limit
            keep = (1 << 24) // max(1, v.numel() // v.shape[-1])
            v = v[..., torch.randperm(v.shape[-1], generator=self._gen)[:keep]]
        return v

    def range(self) -> tuple[Tensor, Tensor]:
        """The chosen clipping range (lo, hi), 0-d or (C,)."""
        return self.min_val, self.max_val

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) for the chosen range; ValueError if nothing was observed."""
        self._check_seen()
        lo, hi = self.range()
        return choose_qparams(lo, hi, self.bits, symmetric=self.symmetric, signed=self.signed)

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val = self.max_val = None
        self.samples, self.batches = [], 0

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, symmetric={self.symmetric}, signed={self.signed}, "
                f"axis={self.axis}")


class MinMaxObserver(Observer):
    """Min-max: lo = min over all batches of min x, hi = max over all batches of max x."""


class MovingAverageMinMaxObserver(Observer):
    """Moving average: lo <- lo + c (min x_batch - lo), hi likewise (the first batch sets
    them). Smooths the range over batches; c = ``averaging_constant`` (0.01, as PyTorch)."""

    def __init__(self, bits: int = 8, *, averaging_constant: float = 0.01, **kw) -> None:
        super().__init__(bits, **kw)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def update(self, lo: Tensor, hi: Tensor) -> None:
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)


class PercentileObserver(Observer):
    """Percentile: lo = P_(100-p)(x), hi = P_p(x) over the kept samples (p = 99.99 default).

    Clips the rarest (100 - p)% at each end."""

    keeps_samples = True

    def __init__(self, bits: int = 8, *, percentile: float = 99.99, **kw) -> None:
        super().__init__(bits, **kw)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[Tensor, Tensor]:
        v = self.values()
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
        lo, hi = torch.quantile(v, q, dim=-1)
        return lo, hi


class MSEObserver(Observer):
    """MSE-optimal clipping: a* = argmin_a mean (x - fq(x; a lo, a hi))^2 over a grid of
    ``grid`` ratios a in [``min_ratio``, 1] of the min-max range (per channel if axis)."""

    keeps_samples = True

    def __init__(self, bits: int = 8, *, grid: int = 64, min_ratio: float = 0.2, **kw) -> None:
        super().__init__(bits, **kw)
        if grid < 1 or not 0.0 < min_ratio <= 1.0:
            raise ValueError(f"need grid >= 1 and min_ratio in (0, 1], got {grid}, {min_ratio}")
        self.grid, self.min_ratio = grid, min_ratio

    def range(self) -> tuple[Tensor, Tensor]:
        v = self.values()
        lo, hi = self.min_val, self.max_val
        best_err = torch.full(lo.shape, math.inf)
        best_lo, best_hi = lo.clone(), hi.clone()
        for a in torch.linspace(self.min_ratio, 1.0, self.grid).tolist():
            scale, zp = choose_qparams(a * lo, a * hi, self.bits, symmetric=self.symmetric,
                                       signed=self.signed)
            axis = None if self.axis is None else 0
            err = ((fake_quantize(v, scale, zp, self.bits, signed=self.signed, axis=axis)
                    - v) ** 2).mean(-1)                            # 0-d or (C,)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, a * lo, best_lo), \
                torch.where(better, a * hi, best_hi)
        return best_lo, best_hi


class KLObserver(Observer):
    """Histogram / KL (entropy) calibration, as TensorRT: build a ``bins``-bin histogram of
    |x|, and pick the threshold t that minimises KL(P_t || Q_t), P_t the histogram clipped
    at t (outliers added to its last bin), Q_t the same quantized to the available levels,
    for t from max|x| / 16 up. The range is [max(-t, min x), min(t, max x)]. Per-tensor.

    KL is blind to how far clipped values move: on an input dominated by one value (an
    image background) it clips far too much; keep min-max there, e.g.
    ``qmodel.features[0].act_observer = make_observer("minmax", bits)``."""

    def __init__(self, bits: int = 8, *, bins: int = 2048, stride: int = 4, **kw) -> None:
        super().__init__(bits, **kw)
        if self.axis is not None:
            raise ValueError("KLObserver is per-tensor only; use axis=None")
        if bins < 16 or bins % 2 or stride < 1:
            raise ValueError(f"bins must be an even number >= 16 and stride >= 1, got "
                             f"{bins}, {stride}")
        self.bins, self.stride = bins, stride
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.width = 0.0  # bin width; the histogram covers [0, bins * width]

    def forward(self, x: Tensor) -> Tensor:
        super().forward(x)
        if x.numel() == 0:
            return x
        a = x.detach().abs().reshape(-1).double()
        top = float(a.max())
        if self.width == 0.0:
            self.width = max(top, 1e-12) / self.bins
        while top > self.width * self.bins:  # double the bin width: merge neighbour pairs
            merged = self.hist.view(-1, 2).sum(1)
            self.hist = torch.cat([merged, torch.zeros_like(merged)])
            self.width *= 2.0
        self.hist += torch.histc(a, self.bins, 0.0, self.width * self.bins)
        return x

    def reset(self) -> None:
        super().reset()
        self.hist.zero_()
        self.width = 0.0

    def kl_curve(self) -> tuple[Tensor, Tensor]:
        """Thresholds t (T,) and their KL(P_t || Q_t) (T,), for plotting."""
        self._check_seen()
        h = self.hist
        # levels available to [0, t]: all of them for an asymmetric range on x >= 0, half
        # when the range is [-t, t] (or a symmetric quantizer spends half on negatives).
        one_sided = float(self.min_val) >= 0 and not self.symmetric
        levels = min(2 ** self.bits if one_sided else 2 ** (self.bits - 1), self.bins)
        # TensorRT starts at 128 of 2048 bins (t >= max / 16): tiny thresholds, where Q
        # has as many levels as P has bins, would otherwise look lossless.
        ts, kls = [], []
        for i in range(max(levels, self.bins // 16), self.bins + 1, self.stride):
            p = h[:i].clone()
            p[-1] += h[i:].sum()
            nz = (p > 0).double()
            lvl = torch.arange(i) * levels // i            # quantization level of each bin
            tot = torch.bincount(lvl, weights=h[:i], minlength=levels)
            cnt = torch.bincount(lvl, weights=nz, minlength=levels)
            q = torch.where(nz > 0, tot[lvl] / cnt[lvl].clamp(min=1), torch.zeros_like(p))
            p, q = p / p.sum(), q / q.sum().clamp(min=1e-300)
            m = p > 0
            kls.append(float((p[m] * torch.log(p[m] / q[m].clamp(min=1e-12))).sum()))
            ts.append(i * self.width)
        return torch.tensor(ts), torch.tensor(kls)

    def range(self) -> tuple[Tensor, Tensor]:
        ts, kls = self.kl_curve()
        t = ts[int(torch.argmin(kls))].float()
        # never wider than what was seen: [max(-t, min x), min(t, max x)]
        return torch.maximum(-t, self.min_val), torch.minimum(t, self.max_val)


#: Observers by the names ``quantize_model(observer=...)`` accepts.
OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver, "mse": MSEObserver, "kl": KLObserver,
}

ObserverSpec = str | Callable[..., Observer]


def make_observer(spec: ObserverSpec, bits: int, *, symmetric: bool = False,
                  signed: bool = False, axis: int | None = None) -> Observer:
    """Build an observer from a name in :data:`OBSERVERS`, a class, or a factory such as
    ``functools.partial(PercentileObserver, percentile=99.9)``.

    >>> make_observer("mse", 4)
    MSEObserver(bits=4, symmetric=False, signed=False, axis=None)
    """
    if isinstance(spec, str):
        if spec not in OBSERVERS:
            raise ValueError(f"unknown observer {spec!r}; allowed: {sorted(OBSERVERS)} or an "
                             "Observer class / factory")
        spec = OBSERVERS[spec]
    if not callable(spec):
        raise TypeError(f"observer must be a name, an Observer class or a factory, got "
                        f"{type(spec).__name__}")
    obs = spec(bits, symmetric=symmetric, signed=signed, axis=axis)
    if not isinstance(obs, Observer):
        raise TypeError(f"the observer factory returned {type(obs).__name__}, not an Observer")
    return obs
