"""Interactive explorers (ipywidgets): sliders that redraw a figure.

Introduced in notebook 01. Each explorer has a pure drawing function (tested, usable
without widgets) and a thin ``ipywidgets.interactive`` wrapper around it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant import choose_qparams, dequantize, fake_quantize, qrange, sqnr_db

__all__ = ["draw_quantization", "quantization_explorer"]


def draw_quantization(weights: Tensor, bits: int, clip: float, *, symmetric: bool = True,
                      ax=None) -> dict:
    """Histogram of ``weights`` with the quantization grid for a clipping range, and its error.

    The grid has 2^bits levels over [-clip, clip] (symmetric) or [min, clip * max / max|w|]
    (asymmetric, the upper end clipped by the same factor). Returns the figures shown:
    ``{"scale", "mse", "sqnr_db", "clipped_fraction"}``.

    >>> draw_quantization(torch.randn(1000), 4, 2.0)["clipped_fraction"] > 0   # doctest: +SKIP
    True
    """
    import matplotlib.pyplot as plt  # optional heavy dependency, loaded when drawing

    w = weights.detach().flatten().float()
    if w.numel() == 0:
        raise ValueError("weights is empty: nothing to draw")
    if clip <= 0:
        raise ValueError(f"clip must be > 0 (the range [-clip, clip]), got {clip}")
    lo = torch.tensor(-clip) if symmetric else w.min() * clip / w.abs().max()
    hi = torch.tensor(clip) if symmetric else w.max() * clip / w.abs().max()
    scale, zp = choose_qparams(lo, hi, bits, symmetric=symmetric)
    w_hat = fake_quantize(w, scale, zp, bits)
    qmin, qmax = qrange(bits)
    levels = dequantize(torch.arange(qmin, qmax + 1), scale, zp)
    # clipped: beyond the outermost level by more than half a step (rounding cannot reach)
    lo, hi = levels[0] - scale / 2, levels[-1] + scale / 2
    out = dict(scale=float(scale), mse=float(((w - w_hat) ** 2).mean()),
               sqnr_db=sqnr_db(w, w_hat), clipped_fraction=float(((w < lo) | (w > hi))
                                                                   .float().mean()))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    ax.hist(w.numpy(), bins=120, color="tab:blue", alpha=0.7)
    for level in levels[:: max(1, len(levels) // 64)]:  # at most 64 lines
        ax.axvline(float(level), color="tab:orange", lw=0.6, alpha=0.8)
    ax.axvspan(min(float(w.min()), float(lo)), float(lo), color="tab:red", alpha=0.15)
    ax.axvspan(float(hi), max(float(w.max()), float(hi)), color="tab:red", alpha=0.15)
    ax.set_title(f"{bits}-bit, range [{float(lo):.3f}, {float(hi):.3f}]: scale "
                 f"{out['scale']:.4f}, SQNR {out['sqnr_db']:.1f} dB, clipped "
                 f"{100 * out['clipped_fraction']:.2f}%", fontsize=9)
    ax.set_xlabel("weight value (orange: quantization levels, red: clipped)")
    return out


def quantization_explorer(weights: Tensor, max_bits: int = 8):
    """Sliders for bit width and clipping range that redraw :func:`draw_quantization`."""
    # lazy: optional heavy dependencies, loaded only when an explorer is shown
    import ipywidgets as w
    import matplotlib.pyplot as plt  # (see above)

    amax = float(weights.detach().abs().max())

    def show(bits: int, clip: float, symmetric: bool) -> None:
        fig, ax = plt.subplots(figsize=(7, 3))
        draw_quantization(weights, bits, clip, symmetric=symmetric, ax=ax)
        plt.show()

    return w.interactive(
        show,
        bits=w.IntSlider(value=4, min=2, max=max_bits, description="bits"),
        clip=w.FloatSlider(value=amax, min=amax / 20, max=amax, step=amax / 100,
                           description="clip", readout_format=".3f"),
        symmetric=w.Checkbox(value=True, description="symmetric"))
