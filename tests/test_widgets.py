import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from qlib.course.widgets import (FALLBACK_BITS, Explorer, draw_quantization,  # noqa: E402
                                 quantization_explorer)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_draw_quantization_figures():
    torch.manual_seed(0)
    w = torch.randn(5000) * 0.1
    full = draw_quantization(w, 4, float(w.abs().max()))
    clipped = draw_quantization(w, 4, 3 * float(w.std()))
    assert full["clipped_fraction"] == 0 and clipped["clipped_fraction"] > 0
    # for a bell-shaped weight at 4 bits, clipping at 3 sigma beats the full range
    assert clipped["mse"] < full["mse"]
    assert abs(full["scale"] - float(w.abs().max()) / 7.5) < 1e-6
    assert draw_quantization(w, 8, 0.3)["sqnr_db"] > draw_quantization(w, 4, 0.3)["sqnr_db"]
    plt.close("all")


def test_every_level_is_drawn_and_axes_are_labelled():
    fig, ax = plt.subplots()
    out = draw_quantization(torch.randn(1000), 8, 2.0, ax=ax)
    assert out["levels"] == 256 and out["codes"] == (-128, 127)
    lines = [c for c in ax.collections if len(c.get_segments()) == 256]
    assert len(lines) == 1                        # all 256 levels, not every 4th
    assert ax.get_ylabel() and ax.get_xlabel()
    assert "256 quantization levels" in [t.get_text() for t in ax.get_legend().get_texts()][0]
    plt.close(fig)


def test_symmetric_two_bits_is_lopsided_by_one_level():
    fig, ax = plt.subplots()
    out = draw_quantization(torch.linspace(-1, 1, 101), 2, 1.0, ax=ax)
    s = out["scale"]
    assert out["codes"] == (-2, 1) and out["zero_point"] == 0
    lo, hi = out["range"]
    assert lo == pytest.approx(-2.5 * s) and hi == pytest.approx(1.5 * s)
    plt.close(fig)


def test_draw_asymmetric_and_bad_input():
    w = torch.rand(100)
    assert draw_quantization(w, 3, 1.0, symmetric=False)["clipped_fraction"] == 0
    with pytest.raises(ValueError, match="clip must be > 0"):
        draw_quantization(w, 4, 0.0)
    with pytest.raises(ValueError, match="empty"):
        draw_quantization(torch.zeros(0), 4, 1.0)
    plt.close("all")


def _control(ex: Explorer, description: str):
    return next(c for c in ex.widget.children[0].children if c.description == description)


def test_explorer_redraws_in_place_without_new_figures():
    torch.manual_seed(0)
    ex = quantization_explorer(torch.randn(2000))
    names = {c.description for c in ex.widget.children[0].children}
    assert names == {"bits", "clip / max", "symmetric"}
    figures, axes = plt.get_fignums(), len(ex.figure.axes)
    before = (ex.image.value, ex.readout.value)
    for bits in (3, 5, 6, 7, 8, 2, 3, 4, 5, 6):
        _control(ex, "bits").value = bits
    assert ex.last["levels"] == 2 ** 6 and ex.redraws == 11 and ex.error is None
    _control(ex, "clip / max").value = 0.5
    assert ex.last["clipped_fraction"] > 0
    assert (ex.image.value, ex.readout.value) != before and ex.image.value == ex.png
    assert plt.get_fignums() == figures          # no pyplot figure per redraw
    assert len(ex.figure.axes) == axes           # the one figure is cleared, not stacked


def test_readout_explains_symmetric_and_asymmetric():
    torch.manual_seed(0)
    acts = torch.relu(torch.randn(5000))
    ex = quantization_explorer({"weights": torch.randn(5000), "ReLU outputs": acts})
    _control(ex, "bits").value = 2
    assert "one more negative code" in ex.readout.value and "codes -2&hellip;1" in ex.readout.value
    symmetric_png = ex.png
    _control(ex, "symmetric").value = False
    assert "almost evenly around 0" in ex.readout.value     # why nothing much changes
    _control(ex, "data").value = "ReLU outputs"
    assert ex.last["zero_point"] == -2 and "almost evenly" not in ex.readout.value
    assert ex.png != symmetric_png


def test_error_in_a_redraw_shows_in_the_readout():
    def draw(fig, x: int):
        if x < 0:
            raise ValueError("x must be >= 0")
        fig.subplots().plot([0, x])
        return f"x = {x}", {"x": x}

    import ipywidgets as w

    slider = w.IntSlider(value=1, min=-5, max=5)
    ex = Explorer(draw, {"x": 1}, controls={"x": slider}, fallback=lambda fig: None)
    good = ex.png
    slider.value = -1
    assert isinstance(ex.error, ValueError) and "x must be &gt;= 0" in ex.readout.value
    assert ex.image.value == good                  # the last good image stays
    slider.value = 2
    assert ex.error is None and ex.readout.value.endswith("x = 2</div>")
    with pytest.raises(ValueError, match="unknown value"):
        ex.update(y=3)
    static = Explorer(draw, {"x": 1}, controls=None, fallback=lambda fig: None)
    with pytest.raises(ValueError, match="x must be >= 0"):
        static.update(x=-1)                        # no readout to show it in: raise


def test_output_carries_widget_and_static_png():
    bundle = quantization_explorer(torch.randn(300))._repr_mimebundle_()
    assert WIDGET_VIEW in bundle and bundle["image/png"] and "explorer" in bundle["text/plain"]


def test_static_fallback_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)     # import ipywidgets -> ImportError
    figures = plt.get_fignums()
    ex = quantization_explorer(torch.randn(300))
    assert ex.widget is None and ex.error is None
    bundle = ex._repr_mimebundle_()
    assert WIDGET_VIEW not in bundle and "not installed" in bundle["text/plain"]
    png = bundle["image/png"]
    assert isinstance(png, str) and len(png) > 1000          # base64 of a real image
    assert plt.get_fignums() == figures
    with pytest.raises(ImportError):
        quantization_explorer(torch.randn(300), widgets=True)
    assert len(FALLBACK_BITS) >= 3


def test_explorer_bad_input():
    with pytest.raises(ValueError, match="max_bits"):
        quantization_explorer(torch.randn(10), max_bits=1)
    with pytest.raises(ValueError, match="empty mapping"):
        quantization_explorer({})
    with pytest.raises(ValueError, match="non-empty tensor"):
        quantization_explorer({"a": torch.zeros(0)})
