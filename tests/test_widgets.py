import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from qlib.course.widgets import draw_quantization, quantization_explorer  # noqa: E402


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


def test_draw_asymmetric_and_bad_input():
    w = torch.rand(100)
    assert draw_quantization(w, 3, 1.0, symmetric=False)["clipped_fraction"] == 0
    with pytest.raises(ValueError, match="clip must be > 0"):
        draw_quantization(w, 4, 0.0)
    with pytest.raises(ValueError, match="empty"):
        draw_quantization(torch.zeros(0), 4, 1.0)


def test_explorer_builds_and_redraws():
    box = quantization_explorer(torch.randn(200))
    names = {c.description for c in box.children if hasattr(c, "description")}
    assert {"bits", "clip", "symmetric"} <= names
    box.children[0].value = 3  # moving a slider redraws without error
    box.update()
