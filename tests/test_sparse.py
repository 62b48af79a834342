"""Tests for qlib.prune.sparse: bit packing equals numpy.packbits (little bit order), the file round-trips exactly in
float32 (approximately in float16 / int8), and pruning really shrinks the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import qlib
from qlib.bench import model_size_bytes
from qlib.models import course_model
from qlib.prune import magnitude_prune, remove_masks
from qlib.prune.sparse import (decode_sparse, encode_sparse, load_sparse, pack_mask, save_sparse,
                         sparse_size_bytes, unpack_mask)


@pytest.fixture(autouse=True)
def _seed() -> None:
    qlib.set_seed(0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
def test_pack_bits_equals_numpy_and_unpacks(n: int) -> None:
    mask = torch.rand(n) < 0.3
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy(), bitorder="little"))
    assert torch.equal(unpack_mask(packed, n), mask)


def test_bit_packing_bad_input() -> None:
    with pytest.raises(TypeError, match="bool"):
        pack_mask(torch.ones(3))
    with pytest.raises(ValueError, match="numel"):
        unpack_mask(torch.zeros(2, dtype=torch.uint8), 17)


def _pruned(sparsity: float = 0.9) -> nn.Module:
    model = course_model()
    magnitude_prune(model, sparsity)
    return remove_masks(model)


def test_float32_round_trip_is_exact_and_small(tmp_path) -> None:
    model = _pruned(0.9)
    path = tmp_path / "m.qsp"
    size = save_sparse(model, path)
    assert size == path.stat().st_size == sparse_size_bytes(model)
    # 90% zeros: bitmask (1/8 B) + 10% of values (0.4 B) per weight, vs 4 B dense
    assert size < 0.2 * model_size_bytes(model)
    state = load_sparse(path)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    fresh = load_sparse(path, course_model())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(fresh(x), model.eval()(x))


def test_masked_model_is_saved_with_masks_baked_in() -> None:
    model = course_model()
    magnitude_prune(model, 0.8)
    buf = io.BytesIO()
    save_sparse(model, buf)
    buf.seek(0)
    state = load_sparse(buf)
    assert "classifier.2.weight" in state and "classifier.2.weight_orig" not in state
    assert torch.equal(state["classifier.2.weight"], model.classifier[2].weight)
    assert hasattr(model.classifier[2], "weight_mask")  # the model itself is untouched


@pytest.mark.parametrize("values,tol", [("float16", 1e-3), ("int8", None)])
def test_narrow_values_are_close_and_smaller(values: str, tol: float | None) -> None:
    model = _pruned(0.9)
    w = model.classifier[2].weight.detach()
    blob = encode_sparse(model.state_dict(), values)
    assert "classifier.2.weight" in blob["sparse"] and "classifier.4.bias" in blob["dense"]
    back = decode_sparse(blob)["classifier.2.weight"]
    assert torch.equal(back == 0, w == 0)  # the zero pattern is exact
    if tol is None:  # int8: error at most half a step of the per-tensor scale
        tol = float(w.abs().max()) / 127 / 2 + 1e-7
    assert (back - w).abs().max() <= tol
    assert sparse_size_bytes(model, values) < sparse_size_bytes(model, "float32")


def test_dense_model_is_not_made_bigger() -> None:
    model = course_model()  # no zeros: every tensor stays dense
    blob = encode_sparse(model.state_dict())
    assert not blob["sparse"]
    assert sparse_size_bytes(model) < model_size_bytes(model) * 1.01


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="float32"):
        encode_sparse(course_model().state_dict(), "int4")
    with pytest.raises(ValueError, match="qlib-sparse"):
        decode_sparse({"format": "something else"})
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        sparse_size_bytes([1, 2])  # type: ignore[arg-type]
    buf = io.BytesIO()
    torch.save(course_model().state_dict(), buf)  # a plain checkpoint is not a sparse file
    buf.seek(0)
    with pytest.raises(ValueError, match="corrupt or incomplete file: not a qlib container"):
        load_sparse(buf)
