"""Tests for qlib.runtime.onnx: export round trip against PyTorch, ORT static / dynamic int8
quantization checked against qlib's own affine formulas, the calibration reader, bad input
and the int8-ort recipe. No timings are asserted."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import qlib
from qlib.data import calibration_batches
from qlib.models import resnet18
from qlib.runtime.onnx import (OrtModel, TensorCalibrationReader, export_onnx, onnx_op_counts,
                       quantize_dynamic_ort, quantize_static_ort)
from qlib.quant import choose_qparams
from qlib.train import evaluate


@pytest.fixture(scope="module")
def files(baseline, data, tmp_path_factory) -> dict:
    """The baseline exported once, plus its static (u8 and s8 activations) and dynamic int8."""
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(baseline, data.test.tensors[0][:1], folder / "course.onnx")
    cal = calibration_batches(data)
    return dict(fp32=fp32, cal=cal,
                u8=quantize_static_ort(fp32, folder / "u8.onnx", cal),
                s8=quantize_static_ort(fp32, folder / "s8.onnx", cal, activation="int8"),
                dyn=quantize_dynamic_ort(fp32, folder / "dyn.onnx"))


@pytest.fixture(scope="module")
def reference(baseline, data) -> dict:
    return evaluate(baseline, data.loader("test", 250))


def _inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


# ---------------------------------------------------------------- export round trip
def test_export_round_trip_matches_pytorch(files, baseline, data) -> None:
    model = onnx.load(str(files["fp32"]))
    onnx.checker.check_model(model)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    ops = onnx_op_counts(files["fp32"])
    assert "BatchNormalization" not in ops and ops["Conv"] == 2 and ops["Gemm"] == 2
    ort_model = OrtModel(files["fp32"])
    for n in (1, 5, 64):  # the batch dimension is dynamic
        x = data.test.tensors[0][:n]
        with torch.no_grad():
            torch.testing.assert_close(ort_model(x), baseline(x), rtol=1e-4, atol=1e-4)


def test_export_folds_bn_into_conv_weights(files, baseline) -> None:
    # w' = w * gamma / sqrt(var + eps) per output channel (notebook 02's BN folding)
    conv, bn = baseline.features[0], baseline.features[1]
    gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = (conv.weight * gain.view(-1, 1, 1, 1)).detach().numpy()
    np.testing.assert_allclose(_inits(files["fp32"])["features.0.weight"], folded,
                               rtol=1e-5, atol=1e-6)


def test_export_leaves_model_unchanged_and_resnet_matches(tmp_path) -> None:
    qlib.set_seed(0)
    model = resnet18(num_classes=10).train()
    before = copy.deepcopy(model.state_dict())
    path = export_onnx(model, torch.zeros(1, 3, 64, 64), tmp_path / "r.onnx")
    assert model.training and all(torch.equal(before[k], v) for k, v in
                                  model.state_dict().items())
    assert "BatchNormalization" not in onnx_op_counts(path)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(OrtModel(path)(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["r.onnx"]  # no temp files left


def test_failed_export_keeps_the_old_file(tmp_path) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(Exception):
        export_onnx(Broken(), torch.zeros(1, 1, 4, 4), path)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------- static int8
def test_static_int8_keeps_top1_and_accuracy(files, data, reference) -> None:
    ev = evaluate(OrtModel(files["u8"]), data.loader("test", 250))
    agree = (ev["preds"] == reference["preds"]).float().mean().item()
    # a handful of the 1,000 test images flip (how many depends on the trained weights,
    # which depend on the machine's float sums); at most half a point of accuracy lost
    assert agree >= 0.98
    assert ev["accuracy"] >= reference["accuracy"] - 0.01  # McNemar: within noise
    ops = onnx_op_counts(files["u8"])
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 8
    assert files["fp32"].stat().st_size / files["u8"].stat().st_size > 3.0


def test_static_qparams_follow_the_affine_formulas(files) -> None:
    q, f = _inits(files["u8"]), _inits(files["fp32"])
    # input: asymmetric u8 from the calibration min / max, as qlib's choose_qparams
    cal = torch.cat(files["cal"])
    scale, zp = choose_qparams(cal.min(), cal.max(), 8, signed=False)
    assert q["input_zero_point"].dtype == np.uint8 and int(q["input_zero_point"]) == int(zp)
    assert float(q["input_scale"]) == pytest.approx(float(scale), rel=1e-6)
    # weights: s8 symmetric per output channel on ORT's restricted range [-127, 127]
    w, wq = f["features.4.weight"], q["features.4.weight_quantized"]
    s_w = q["features.4.weight_scale"]
    assert wq.dtype == np.int8 and s_w.shape == (32,)
    assert not q["features.4.weight_zero_point"].any()
    np.testing.assert_allclose(s_w, np.abs(w).reshape(32, -1).max(1) / 127, rtol=1e-6)
    error = np.abs(wq.astype(np.float32) * s_w.reshape(-1, 1, 1, 1) - w)
    assert (error <= s_w.reshape(-1, 1, 1, 1) / 2 + 1e-7).all()  # round to nearest
    # bias: int32 at scale S_x * S_w (Jacob et al. 2018); first conv reads the input
    np.testing.assert_allclose(q["features.0.weight_bias_quantized_scale"],
                               q["input_scale"] * q["features.0.weight_scale"], rtol=1e-6)
    assert q["features.0.weight_bias_quantized"].dtype == np.int32


def test_s8_activations_and_dynamic_variants(files, data, reference) -> None:
    q = _inits(files["s8"])
    assert q["input_zero_point"].dtype == np.int8
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= set(
        onnx_op_counts(files["dyn"]))
    for key in ("s8", "dyn"):
        ev = evaluate(OrtModel(files[key]), data.loader("test", 250))
        assert (ev["preds"] == reference["preds"]).float().mean().item() >= 0.98


def test_preprocess_and_reduce_range_options(files, tmp_path, data) -> None:
    pre = quantize_static_ort(files["fp32"], tmp_path / "p.onnx", files["cal"][:1],
                              preprocess=True, reduce_range=True)
    wq = _inits(pre)["features.4.weight_quantized"]
    assert np.abs(wq.astype(np.int32)).max() <= 64  # 7-bit weights with reduce_range
    x = data.test.tensors[0][:8]
    assert OrtModel(pre)(x).shape == (8, 10)


# ---------------------------------------------------------------- calibration reader
def test_calibration_reader_yields_name_and_shapes(data, files) -> None:
    batches = calibration_batches(data, num_images=100, batch_size=32)
    reader = TensorCalibrationReader(batches, OrtModel(files["fp32"]).input_name)
    got = [reader.get_next() for _ in range(len(reader))]
    assert reader.get_next() is None and len(reader) == 4
    assert [list(g) for g in got] == [["input"]] * 4
    assert [g["input"].shape for g in got] == [(32, 1, 28, 28)] * 3 + [(4, 1, 28, 28)]
    assert got[0]["input"].dtype == np.float32
    np.testing.assert_array_equal(got[0]["input"], batches[0].numpy())
    reader.rewind()
    assert reader.get_next()["input"].shape == (32, 1, 28, 28)


def test_calibration_reader_is_an_ort_reader_and_iterates() -> None:
    """Not a subclass by inheritance (that would import onnx with the module), but ORT's
    CalibrationDataReader counts it as one, and it iterates as the base class did."""
    from onnxruntime.quantization import CalibrationDataReader

    batches = [torch.full((2, 1, 28, 28), float(i)) for i in range(3)]
    reader = TensorCalibrationReader(batches)
    assert isinstance(reader, CalibrationDataReader)
    assert issubclass(TensorCalibrationReader, CalibrationDataReader)
    assert [float(d["input"][0, 0, 0, 0]) for d in reader] == [0.0, 1.0, 2.0]
    assert reader.get_next() is None
    reader.rewind()
    assert next(iter(reader))["input"].shape == (2, 1, 28, 28)


def test_bad_input_raises(files, tmp_path) -> None:
    with pytest.raises(ValueError, match="empty"):
        TensorCalibrationReader([])
    with pytest.raises(ValueError, match="empty"):
        quantize_static_ort(files["fp32"], tmp_path / "q.onnx", [])
    with pytest.raises(TypeError):
        TensorCalibrationReader(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="share one"):
        TensorCalibrationReader([torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 14, 14)])
    with pytest.raises(ValueError, match="model's input"):
        quantize_static_ort(files["fp32"], tmp_path / "q.onnx",
                            TensorCalibrationReader(files["cal"], "images"))
    with pytest.raises(ValueError, match="activation"):
        quantize_static_ort(files["fp32"], tmp_path / "q.onnx", files["cal"], activation="int4")
    with pytest.raises(ValueError, match="no ONNX file"):
        quantize_dynamic_ort(tmp_path / "missing.onnx", tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    model = OrtModel(files["fp32"])
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.int64))
    with pytest.raises(TypeError):
        model(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="threads"):
        OrtModel(files["fp32"], threads=0)
    with pytest.raises(TypeError):
        export_onnx(lambda x: x, torch.zeros(1, 1, 28, 28), tmp_path / "f.onnx")


def test_ort_model_copies_and_pickles(files, data) -> None:
    model = OrtModel(files["u8"], threads=2)
    x = data.test.tensors[0][:4]
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.threads == 2 and torch.equal(clone(x), model(x))


# ---------------------------------------------------------------- the recipe
def test_int8_ort_recipe(baseline, data, reference, files, tmp_path, monkeypatch) -> None:
    from qlib.recipes import RECIPES

    monkeypatch.setattr("qlib.data.DATA_DIR", tmp_path)
    before = copy.deepcopy(baseline.state_dict())
    variant = RECIPES["int8-ort"].fn(baseline, data)
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())
    assert isinstance(variant.model, OrtModel) and variant.technique == "quantization"
    assert variant.size_bytes == (tmp_path / "onnx" / "int8-ort.onnx").stat().st_size
    assert variant.size_bytes < 0.3 * (tmp_path / "onnx" / "int8-ort-fp32.onnx").stat().st_size
    ev = evaluate(variant.model, data.loader("test", 250))
    assert ev["accuracy"] >= reference["accuracy"] - 0.01  # McNemar: within noise
    # deterministic: the same bytes as the fixture's independent export + quantization
    assert variant.model.path.read_bytes() == files["u8"].read_bytes()
