"""qlib.runtime.nbits (hand-packed MatMulNBits) and qlib.deploy_lm (the "lm" deploy suite)."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qlib.runtime.nbits import (NBitsWeight, dequantized_reference, int8_activations_reference,
                                matmul_fp32_model, matmul_nbits_model,
                                ort_session, pack_nbits, quantize_blockwise, quantize_onnx_nbits,
                                unpack_nbits)


def run(model, a: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(ort_session(model).run(None, {"A": a.numpy()})[0])


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


def weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) / k ** 0.5


def acts(rows: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- codes by hand
@pytest.mark.parametrize("bits", [4, 8])
def test_codes_follow_the_formula(bits):
    w = weight(6, 96)
    q = quantize_blockwise(w, bits=bits, block_size=32)
    blocks = w.view(6, 3, 32)
    lo, hi = blocks.amin(2).clamp(max=0), blocks.amax(2).clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    zp = torch.round(-lo / scale).clamp(0, 2 ** bits - 1)
    codes = (torch.round(blocks / scale[..., None]) + zp[..., None]).clamp(0, 2 ** bits - 1)
    assert torch.equal(q.scales, scale) and torch.equal(q.zero_points, zp.to(torch.uint8))
    assert torch.equal(q.codes, codes.to(torch.uint8).view(6, 96))
    err = (dequantized_reference(q) - w).abs().view(6, 3, 32)
    assert bool((err <= q.scales[..., None] / 2 * (1 + 1e-5)).all())  # round-off <= s / 2


def test_padding_all_zero_blocks_and_zero_stay_exact():
    w = weight(3, 40)
    w[1, :32] = 0.0  # an all-zero block: the smallest scale (eps), exact zeros back
    q = quantize_blockwise(w, bits=4, block_size=32)
    assert q.codes.shape == (3, 64) and q.k == 40 and q.n_blocks == 2
    assert float(q.scales[1, 0]) == torch.finfo(torch.float32).eps
    deq = dequantized_reference(q)
    assert deq.shape == (3, 40) and bool((deq[1, :32] == 0).all())
    codes = q.codes.view(3, 2, 32).float()
    full = (codes - q.zero_points.float()[..., None]) * q.scales[..., None]
    assert bool((full.view(3, 64)[:, 40:] == 0).all())  # padded K costs no error


def test_nibble_order_low_first_and_unpack_roundtrip():
    q = NBitsWeight(codes=torch.arange(16, dtype=torch.uint8).view(1, 16),
                    scales=torch.ones(1, 1), zero_points=torch.tensor([[5]], dtype=torch.uint8),
                    bits=4, block_size=16, k=16)
    p = pack_nbits(q)
    assert p["B"].shape == (1, 1, 8) and p["B"][0, 0, 0] == 0x10 and p["B"][0, 0, 7] == 0xFE
    assert p["zero_points"].tolist() == [[5]]
    for bits in (4, 8):
        q = quantize_blockwise(weight(5, 200), bits=bits, block_size=64)
        p = pack_nbits(q)
        assert p["B"].shape == (5, 4, 64 * bits // 8)
        assert p["zero_points"].shape == (5, 4 * bits // 8)
        codes = unpack_nbits(p["B"], bits, 64).reshape(5, -1)
        assert np.array_equal(codes, q.codes.numpy())
        assert np.array_equal(unpack_nbits(p["zero_points"], bits, 4), q.zero_points.numpy())


# ----------------------------------------------------------------- ORT runs the codes
@pytest.mark.parametrize("bits,n,k,block", [(4, 64, 256, 32), (4, 48, 200, 64), (8, 40, 128, 16),
                                            (8, 33, 300, 128)])
def test_matmul_nbits_equals_dequantized_reference(bits, n, k, block):
    w, a, b = weight(n, k), acts(7, k), torch.randn(n)
    ref = a @ dequantized_reference(w, bits=bits, block_size=block).T + b
    y = run(matmul_nbits_model(w, bits=bits, block_size=block, bias=b), a)
    assert y.shape == (7, n) and rel(y, ref) < 1e-5  # the same weights, fp32 summation order


@pytest.mark.parametrize("bits", [4, 8])
def test_accuracy_level_4_quantizes_activations_per_block(bits):
    """Level 4 rounds A to int8 per block (s = max|a| / 127) before integer dot products.

    Reproducing that rounding by hand matches ORT to float precision. Against the fp32-A
    reference the output error is about A's own relative rounding error (W is random, so
    the errors of the K products add up like A's): for Gaussian A in blocks of 64, max|a|
    is ~2.5-3 sigma, rounding noise s / sqrt(12), so ~0.6% relative; measured 0.5-0.7%."""
    w, a = weight(96, 256), acts(5, 256)
    wq = dequantized_reference(w, bits=bits, block_size=64)
    y = run(matmul_nbits_model(w, bits=bits, block_size=64, accuracy_level=4), a)
    a8 = int8_activations_reference(a, 64)
    assert rel(y, a8 @ wq.T) < 1e-5
    a_err = rel(a8, a)
    assert 0.002 < a_err < 0.01
    assert 0.3 * a_err < rel(y, a @ wq.T) < 2 * a_err


def test_fp32_reference_graph():
    w, a, b = weight(20, 30), acts(4, 30), torch.randn(20)
    model = matmul_fp32_model(w, bias=b)
    assert [node.op_type for node in model.graph.node] == ["MatMul", "Add"]
    assert rel(run(model, a), a @ w.T + b) < 1e-6


def test_models_write_atomically_to_a_path(tmp_path):
    w = weight(16, 64)
    path = matmul_nbits_model(w, block_size=32, path=tmp_path / "sub" / "q4.onnx")
    fp = matmul_fp32_model(w, path=tmp_path / "fp32.onnx")
    assert path.is_file() and fp.is_file()
    assert sorted(os.listdir(tmp_path)) == ["fp32.onnx", "sub"]  # no temporary left behind
    assert os.path.getsize(path) < os.path.getsize(fp) / 3
    a = acts(2, 64)
    assert rel(run(path, a), a @ dequantized_reference(w, block_size=32).T) < 1e-5


def test_codes_from_elsewhere_run_as_they_are():
    w = weight(8, 64)
    q = quantize_blockwise(w, bits=4, block_size=32)
    codes = q.codes.clone()
    codes[0, 0] = 15 - codes[0, 0]  # e.g. a GPTQ decision: ORT runs whatever codes it gets
    q2 = NBitsWeight(codes, q.scales, q.zero_points, 4, 32, 64)
    a = acts(3, 64)
    assert rel(run(matmul_nbits_model(q2), a), a @ dequantized_reference(q2).T) < 1e-5


# ----------------------------------------------------------------- reference: ORT's quantizer
def _matmul_onnx(w: torch.Tensor, extra_activation_matmul: bool = False) -> onnx.ModelProto:
    """Y = A @ W^T as an exported model would have it (MatMul with a (K, N) initializer)."""
    n, k = w.shape
    nodes = [helper.make_node("MatMul", ["A", "W"], ["Y"])]
    out = "Y"
    if extra_activation_matmul:  # a MatMul of two activations (as in attention): not quantized
        nodes += [helper.make_node("Transpose", ["Y"], ["Yt"]),
                  helper.make_node("MatMul", ["Y", "Yt"], ["Z"])]
        out = "Z"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["b", k])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.T.contiguous().numpy(), "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bits,k", [(4, 256), (4, 200), (8, 256)])
def test_packing_matches_ort_own_quantizer(bits, k, tmp_path):
    w, a = weight(24, k), acts(3, k)
    src = tmp_path / "mm.onnx"
    onnx.save_model(_matmul_onnx(w), str(src))
    dst = quantize_onnx_nbits(src, tmp_path / "mm-q.onnx", bits=bits, block_size=64,
                              accuracy_level=0)
    theirs = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer}
    q = quantize_blockwise(w, bits=bits, block_size=64)
    mine = pack_nbits(q)
    b_theirs = theirs[f"W_Q{bits}"]
    assert b_theirs.shape == mine["B"].shape
    assert np.array_equal(theirs["W_scales"], mine["scales"])
    assert np.array_equal(unpack_nbits(theirs["W_zero_points"], bits, q.n_blocks),
                          q.zero_points.numpy())
    codes = unpack_nbits(b_theirs, bits, 64).reshape(24, -1)[:, :k]  # ORT pads with code 0
    same = codes == q.codes.numpy()[:, :k]
    assert same.mean() > 0.999  # 8 bits: a rare half-way tie rounds the other way
    assert np.abs(codes.astype(int) - q.codes.numpy()[:, :k]).max() <= 1
    y_theirs, y_mine = run(dst, a), run(matmul_nbits_model(w, bits=bits, block_size=64), a)
    assert rel(y_mine, y_theirs) < (1e-6 if same.all() else 1e-3)


def test_quantize_onnx_nbits_converts_constant_matmuls_only(tmp_path, caplog):
    w, a = weight(32, 128), acts(4, 128)
    src = tmp_path / "two.onnx"
    onnx.save_model(_matmul_onnx(w, extra_activation_matmul=True), str(src))
    with caplog.at_level(logging.INFO):
        dst = quantize_onnx_nbits(src, tmp_path / "two-int4.onnx", block_size=32)
    assert not [r for r in caplog.records if r.name.endswith("matmul_nbits_quantizer")
                and r.levelno < logging.WARNING]
    model = onnx.load(str(dst))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("MatMul") == 1
    attrs = {x.name: x.i for x in model.graph.node[ops.index("MatMulNBits")].attribute}
    assert attrs["accuracy_level"] == 4 and attrs["bits"] == 4 and attrs["block_size"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two-int4.onnx", "two.onnx"]
    y = run(dst, a)
    ref = a @ w.T
    assert rel(y, ref @ ref.T) < 0.1


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,words", [
    (dict(bits=3), ["bits", "3", "(4, 8)"]),
    (dict(block_size=48), ["block_size", "48", "power of two"]),
    (dict(block_size=8), ["block_size", "8", ">= 16"]),
    (dict(accuracy_level=5), ["accuracy_level", "5", "(0, 1, 2, 3, 4)"]),
    (dict(bias=torch.zeros(3)), ["bias", "N = 8", "shape (3,)"]),
    (dict(bias=torch.full((8,), float("nan"))), ["bias must be a finite float tensor"]),
])
def test_bad_arguments_say_what_is_allowed(kwargs, words):
    with pytest.raises(ValueError) as err:
        matmul_nbits_model(weight(8, 64), **kwargs)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_bad_weights():
    w = weight(4, 32)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight holds NaN"):
        quantize_blockwise(w, block_size=16)
    with pytest.raises(ValueError, match=r"weight must be a 2-d float tensor.*shape \(32,\)"):
        quantize_blockwise(torch.randn(32), block_size=16)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        matmul_fp32_model(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="src: no ONNX file"):
        quantize_onnx_nbits("/nonexistent.onnx", "/tmp/x.onnx")
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        ort_session(matmul_fp32_model(weight(2, 2)), threads=0)


# ----------------------------------------------------------------- the lm deploy suite
def test_lm_suite_rows_and_summary():
    from qlib.deploy_lm import LM_COLUMNS, lm_suite, lm_summary

    rows = lm_suite(((64, 128),), (1, 3), repeats=2, block_size=32, progress=False)
    assert len(rows) == 2 * 6  # torch + ort fp32, int4 and int8 at accuracy levels 0 and 4
    for r in rows:
        assert set(LM_COLUMNS) <= set(r) and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
    at1 = [r for r in rows if r["batch"] == 1]
    best = min(r["median_ms"] for r in at1 if r["precision"] == "fp32")
    assert max(r["speedup_vs_fp32"] for r in at1 if r["precision"] == "fp32") == 1.0
    for r in at1:
        assert r["speedup_vs_fp32"] == pytest.approx(best / r["median_ms"], rel=1e-2)
    q4 = [r for r in rows if r["precision"] == "int4"]
    assert all(0.01 < r["rel_error"] < 0.3 and r["size_bytes"] < 64 * 128 for r in q4)
    assert [r["rel_error"] for r in rows if r["runtime"] == "torch"] == [0.0, 0.0]
    (line,) = lm_summary(rows)
    assert line.startswith("linear 64x128 batch 1: fastest fp32") and "int4 acc4" in line
    with pytest.raises(ValueError, match="batches must be a non-empty sequence"):
        lm_suite(((64, 128),), (), progress=False)


def test_generation_rows_time_the_course_lm_style_decoder():
    from qlib.deploy_lm import generation_rows, lm_summary
    from qlib.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, d_model=16)).eval()
    rows = generation_rows(model, batches=(1, 3), new_tokens=20, repeats=2)
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["p90_ms"] >= r["median_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"], rel=1e-3)
        assert r["size_bytes"] == 4 * model.num_params()
    (line,) = lm_summary(rows)
    assert "tokens/s" in line and "int4" not in line
    with pytest.raises(ValueError, match="new_tokens"):
        generation_rows(model, new_tokens=0)


def test_cli_deploy_suite_lm_writes_rows_with_the_fields(tmp_path, monkeypatch, capsys):
    """`python -m qlib deploy --suite lm --json FILE`, with small shapes and a tiny LM for time."""
    import json

    import qlib.__main__ as cli
    from qlib.deploy_lm import lm_suite
    from qlib.gpt import GPT, GPTConfig

    tiny = GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, d_model=16))
    # the command imports these after its output checks, so patch them where they live
    monkeypatch.setattr("qlib.deploy_lm.lm_suite", lambda **kw: lm_suite(
        ((64, 128),), (1,), repeats=2, block_size=32, **kw))
    monkeypatch.setattr("qlib.lm.get_lm", lambda progress=True: (tiny, None))
    out = tmp_path / "lm.json"
    assert cli.main(["deploy", "--suite", "lm", "--json", str(out), "--no-progress"]) == 0
    rows = json.loads(out.read_text())
    fields = {"model", "runtime", "precision", "batch", "median_ms", "p90_ms", "size_bytes"}
    assert rows and all(fields <= set(r) for r in rows)
    assert {r["precision"] for r in rows} == {"fp32", "int4", "int8"}
    assert [r["batch"] for r in rows if "tokens_per_s" in r] == [1, 8]
    printed = capsys.readouterr().out
    assert "linear 64x128 batch 1" in printed and "tokens/s" in printed
