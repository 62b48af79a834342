"""Interactive explorers: controls that redraw one figure in place, with a static fallback.

Introduced in notebook 01. Each explorer is a pure drawing function (tested, usable without
widgets, e.g. :func:`draw_quantization`) inside an :class:`Explorer`, which shows

- where ipywidgets and a live kernel are at hand (JupyterLab, VS Code): the controls, a
  readout of the numbers and one image that each change redraws in place. The figure is a
  ``matplotlib.figure.Figure`` made once and cleared on each redraw, never registered with
  pyplot, so moving a slider neither flickers nor grows ``plt.get_fignums()``;
- elsewhere (a site that renders a stored notebook without a kernel, nbconvert, or
  ipywidgets not installed): a static PNG, a grid of bit widths, carried in the same output
  next to the widget view. A front end shows the richest type it can render.

A redraw that raises shows the error in the readout (in red) and keeps the last image; the
error is kept in ``Explorer.error``.

>>> ex = quantization_explorer(torch.linspace(-1, 1, 201), widgets=False)
>>> sorted(ex.values), ex.error is None, ex.png[:4] == b"\\x89PNG"
(['bits', 'clip', 'symmetric'], True, True)
>>> ex.update(bits=2); ex.last["codes"]
(-2, 1)
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..quant import choose_qparams, dequantize, fake_quantize, qrange, sqnr_db

__all__ = ["Explorer", "draw_quantization", "quantization_explorer", "FALLBACK_BITS"]

#: Bit widths of the static grid shown where the sliders cannot be.
FALLBACK_BITS = (2, 3, 4, 8)


def draw_quantization(weights: Tensor, bits: int, clip: float, *, symmetric: bool = True,
                      ax=None) -> dict:
    """Histogram of ``weights`` with every level of the quantization grid, and its error.

    The signed ``bits``-bit grid has 2^bits levels (codes qmin..qmax, see ``qrange``) over
    [-clip, clip] (symmetric: zero point 0, scale = clip / ((qmax - qmin) / 2)) or over the
    data's own [min, max] times clip / max|w| (asymmetric). Two's complement has one more
    code below zero than above, so a symmetric grid reaches one step further below zero.
    Draws on ``ax`` (a new pyplot figure when None). Returns ``{"scale", "zero_point",
    "codes": (qmin, qmax), "levels", "range": (lo, hi), "mse", "sqnr_db",
    "clipped_fraction"}``; ``range`` is where rounding stops reaching a level (the outermost
    levels plus half a step), and values outside it count as clipped.

    >>> out = draw_quantization(torch.linspace(-1, 1, 101), 2, 1.0)   # doctest: +SKIP
    >>> out["codes"], out["levels"]                                    # doctest: +SKIP
    ((-2, 1), 4)
    """
    w = weights.detach().flatten().float()
    if w.numel() == 0:
        raise ValueError("weights is empty: nothing to draw")
    if clip <= 0:
        raise ValueError(f"clip must be > 0 (the range [-clip, clip]), got {clip}")
    amax = w.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    lo = torch.tensor(-clip) if symmetric else w.min() * clip / amax
    hi = torch.tensor(clip) if symmetric else w.max() * clip / amax
    scale, zp = choose_qparams(lo, hi, bits, symmetric=symmetric)
    w_hat = fake_quantize(w, scale, zp, bits)
    qmin, qmax = qrange(bits)
    levels = dequantize(torch.arange(qmin, qmax + 1), scale, zp)
    lo, hi = float(levels[0] - scale / 2), float(levels[-1] + scale / 2)
    out = dict(scale=float(scale), zero_point=int(zp), codes=(qmin, qmax), levels=len(levels),
               range=(lo, hi), mse=float(((w - w_hat) ** 2).mean()), sqnr_db=sqnr_db(w, w_hat),
               clipped_fraction=float(((w < lo) | (w > hi)).float().mean()))
    if ax is None:
        import matplotlib.pyplot as plt  # optional heavy dependency, loaded when drawing

        _, ax = plt.subplots(figsize=(7, 3))
    _draw_histogram(ax, w, levels, lo, hi, out, bits, symmetric)
    return out


def _draw_histogram(ax, w: Tensor, levels: Tensor, lo: float, hi: float, out: dict,
                    bits: int, symmetric: bool) -> None:
    from matplotlib.lines import Line2D  # optional heavy dependency (legend handles)
    from matplotlib.patches import Patch  # (see above)

    ax.hist(w.numpy(), bins=120, color="tab:blue", alpha=0.7)
    thin = len(levels) > 64                       # many levels: thinner lines, all drawn
    ax.vlines(levels.numpy(), 0, 1, transform=ax.get_xaxis_transform(), color="tab:orange",
              lw=0.4 if thin else 0.9, alpha=0.8)
    ax.axvspan(min(float(w.min()), lo), lo, color="tab:red", alpha=0.15)
    ax.axvspan(hi, max(float(w.max()), hi), color="tab:red", alpha=0.15)
    kind = "symmetric" if symmetric else "asymmetric"
    ax.set_title(f"{bits}-bit {kind}: SQNR {out['sqnr_db']:.1f} dB, clipped "
                 f"{100 * out['clipped_fraction']:.2f}%", fontsize=9)
    ax.set_xlabel("value")
    ax.set_ylabel("count per bin")
    ax.legend(handles=[Line2D([], [], color="tab:orange", lw=1,
                              label=f"all {len(levels)} quantization levels"),
                       Patch(color="tab:red", alpha=0.15, label="clipped")],
              fontsize=7, loc="upper right")


class Explorer:
    """One figure redrawn from named values; shows as widgets where it can, else as a PNG.

    ``draw(figure, **values)`` clears nothing itself: the explorer clears ``figure`` first,
    and ``draw`` returns ``(readout_html, numbers)``. ``controls`` maps each value's name to
    its ipywidgets control (None: static only); ``fallback(figure)`` draws the static view.
    ``update(**changes)`` redraws; ``png`` holds the last image, ``last`` its numbers.
    """

    def __init__(self, draw: Callable[..., tuple[str, dict]], values: dict[str, Any], *,
                 controls: Mapping[str, Any] | None, fallback: Callable[[Any], None],
                 figsize: tuple[float, float] = (7.5, 3.2), note: str = "") -> None:
        from matplotlib.figure import Figure  # optional heavy dependency, loaded when shown

        self._draw, self._fallback, self.note = draw, fallback, note
        self.values = dict(values)
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.png, self.readout_html, self.last, self.error = b"", "", {}, None
        self.redraws = 0
        self.widget = self.image = self.readout = None
        if controls is not None:
            import ipywidgets as w  # optional heavy dependency, only with controls

            self.image = w.Image(format="png", layout=w.Layout(max_width="100%"))
            self.readout = w.HTML()
            self.widget = w.VBox([w.HBox(list(controls.values())), self.readout, self.image])
            for name, control in controls.items():
                control.observe(lambda change, name=name: self.update(**{name: change["new"]}),
                                names="value")
        self.update()

    def update(self, **changes: Any) -> None:
        """Redraw with ``changes`` applied; an error shows in the readout (kept in ``error``)."""
        unknown = set(changes) - set(self.values)
        if unknown:
            raise ValueError(f"unknown value(s) {sorted(unknown)}; allowed: {sorted(self.values)}")
        self.values.update(changes)
        try:
            self.figure.clear()
            readout, self.last = self._draw(self.figure, **self.values)
            buf = io.BytesIO()
            self.figure.savefig(buf, format="png", dpi=100)
        except Exception as exc:  # shown to the learner instead of a silent, stale figure
            self.error = exc
            self.readout_html = (f'<span class="qlib-explorer-error" style="color:#b00">'
                                 f"Error: {html.escape(type(exc).__name__)}: "
                                 f"{html.escape(str(exc))}</span>")
            if self.readout is None:
                raise
            self.readout.value = self.readout_html
            return
        self.error, self.png, self.redraws = None, buf.getvalue(), self.redraws + 1
        self.readout_html = f'<div class="qlib-explorer-readout">{readout}</div>'
        if self.widget is not None:
            self.readout.value = self.readout_html
            self.image.value = self.png

    def static_png(self) -> bytes:
        """The static view (drawn on a figure of its own, not registered with pyplot)."""
        from matplotlib.figure import Figure  # optional heavy dependency (see __init__)

        fig = Figure(figsize=(3 * len(FALLBACK_BITS), 2.8), layout="constrained")
        self._fallback(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        data = {"image/png": base64.b64encode(self.static_png()).decode("ascii")}
        if self.widget is not None:
            data.update(self.widget._repr_mimebundle_())
        data["text/plain"] = self.note or "explorer"
        return data


def _as_datasets(weights: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    data = {"weights": weights} if isinstance(weights, Tensor) else dict(weights)
    if not data:
        raise ValueError("weights is an empty mapping: give a tensor or {name: tensor}")
    for name, t in data.items():
        if not isinstance(t, Tensor) or t.numel() == 0:
            raise ValueError(f"data {name!r} must be a non-empty tensor, got {type(t).__name__}")
    return {name: t.detach().flatten().float() for name, t in data.items()}


def _readout(out: dict, bits: int, clip: float, symmetric: bool, x: Tensor) -> str:
    qmin, qmax = out["codes"]
    lo, hi = out["range"]
    line = (f"<b>{bits} bits</b> &rarr; {out['levels']} levels (codes {qmin}&hellip;{qmax}), "
            f"scale {out['scale']:.4g}, zero point {out['zero_point']}, clip {clip:.3f}, "
            f"range [{lo:.3f}, {hi:.3f}] &middot; SQNR {out['sqnr_db']:.1f} dB, "
            f"MSE {out['mse']:.3g}, clipped {100 * out['clipped_fraction']:.2f}%")
    if symmetric:
        why = (f"Symmetric, signed: {-qmin} levels below zero, {qmax} above (two's complement "
               f"has one more negative code), so the range reaches one step further below zero.")
    else:
        mn, mx = float(x.min()), float(x.max())
        why = (f"Asymmetric: the grid spans the data's own [min, max] = [{mn:.3f}, {mx:.3f}] "
               f"(times clip / max|x|); zero point {out['zero_point']}.")
        if abs(mn + mx) < 0.2 * max(abs(mn), abs(mx)):
            why += (" These values lie almost evenly around 0, so the grid barely moves: "
                    "one-sided data (ReLU outputs) shows the difference.")
    return f"{line}<br><small>{why}</small>"


def quantization_explorer(weights: Tensor | Mapping[str, Tensor], max_bits: int = 8, *,
                          widgets: bool | None = None) -> Explorer:
    """Bit width, clipping range and symmetric/asymmetric over :func:`draw_quantization`.

    ``weights``: a tensor, or ``{name: tensor}`` to choose between in a drop-down (e.g.
    weights and one-sided ReLU outputs). The clip slider is a fraction of max|x|.
    ``widgets``: None uses ipywidgets when installed, False shows the static grid only.
    """
    if not 2 <= max_bits <= 16:
        raise ValueError(f"max_bits must be in 2..16, got {max_bits}")
    datasets = _as_datasets(weights)
    first = next(iter(datasets))
    values = dict(bits=min(4, max_bits), clip=1.0, symmetric=True)
    if len(datasets) > 1:
        values["data"] = first

    def draw(fig, bits: int, clip: float, symmetric: bool, data: str = first):
        x = datasets[data]
        clip_abs = clip * float(x.abs().max())
        out = draw_quantization(x, bits, clip_abs, symmetric=symmetric, ax=fig.subplots())
        return _readout(out, bits, clip_abs, symmetric, x), out

    def fallback(fig) -> None:
        x = datasets[first]
        for ax, bits in zip(fig.subplots(1, len(FALLBACK_BITS)), FALLBACK_BITS):
            draw_quantization(x, bits, float(x.abs().max()), ax=ax)
        fig.suptitle("Static view (sliders need ipywidgets and a live kernel): bit widths "
                     f"{', '.join(map(str, FALLBACK_BITS))} at the full range", fontsize=10)

    controls = None
    if widgets is not False:
        try:
            import ipywidgets as w  # optional heavy dependency, the interactive front end
        except ImportError:
            if widgets:
                raise
            w = None
        if w is not None:
            controls = dict(
                bits=w.IntSlider(value=values["bits"], min=2, max=max_bits, description="bits",
                                 continuous_update=False),
                clip=w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.01,
                                   description="clip / max", readout_format=".2f",
                                   continuous_update=False),
                symmetric=w.Checkbox(value=True, description="symmetric", indent=False))
            if "data" in values:
                controls["data"] = w.Dropdown(options=list(datasets), value=first,
                                              description="data")
    note = ("Quantization explorer: sliders in a front end with ipywidgets and a live kernel, "
            "else a static grid of bit widths" + ("" if controls else
                                                   " (ipywidgets is off or not installed)"))
    return Explorer(draw, values, controls=controls, fallback=fallback, note=note)
