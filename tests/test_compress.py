
import pytest
import torch

from qlib.codec import pack_entries as pack
from qlib.codec import unpack_entries as unpack
from qlib.pipeline import (decode_layer, encode_layer, finetune_codebooks, load_compressed,
                           save_compressed, share_weights)
from qlib.models import course_model
from qlib.prune import magnitude_prune, remove_masks


def _pruned_model(sparsity=0.9):
    torch.manual_seed(0)
    model = course_model().eval()
    magnitude_prune(model, sparsity)
    return remove_masks(model)


def test_layer_round_trip_with_long_gaps():
    w = torch.zeros(3, 50)
    w[0, 0], w[1, 7], w[2, 49] = 0.25, -0.5, 0.25  # gaps of 56 and 91 > cap 15: fillers
    blob = encode_layer(w, torch.tensor([-0.5, 0.25]), gap_bits=4)
    assert torch.equal(decode_layer(blob), w)
    assert torch.equal(decode_layer(encode_layer(torch.zeros(4), torch.tensor([1.0]))),
                       torch.zeros(4))


def test_share_weights_keeps_zeros_and_uses_codebook():
    model = _pruned_model()
    zeros = {n: (m.weight == 0).clone() for n, m in model.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    books = share_weights(model, {"features.4": 3, "classifier.2": 2})
    w = model.classifier[2].weight
    assert torch.equal(w == 0, zeros["classifier.2"])
    assert set(w[w != 0].unique().tolist()) <= set(books["classifier.2"].tolist())
    assert len(books["classifier.2"]) == 4


def test_model_round_trip_and_size():
    model = _pruned_model(0.9)
    books = share_weights(model, {"features.0": 5, "features.4": 4, "classifier.2": 3,
                                  "classifier.4": 3})
    blob = save_compressed(model, books)
    back = load_compressed(blob, course_model())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        # weights exact (codebook stored fp16 -> tiny error); biases / BN in fp16
        assert torch.allclose(back(x), model(x), atol=2e-2)
    w_back, w = back.classifier[2].weight, model.classifier[2].weight
    assert torch.equal(w_back == 0, w == 0)
    assert len(blob) < 474_355 / 20  # over 20x smaller than the fp32 state dict
    assert sorted(k for k in unpack(blob) if k.startswith("coded:")) == sorted(
        f"coded:{n}.weight" for n in books)


def test_finetune_codebooks_trains_only_centroids(data):
    model = _pruned_model(0.9)
    books = share_weights(model, {"classifier.2": 3})
    zeros = model.classifier[2].weight == 0
    new = finetune_codebooks(model, books, data, epochs=1)
    w = model.classifier[2].weight
    assert torch.equal(w == 0, zeros)  # pruned entries stay pruned
    assert set(w[w != 0].unique().tolist()) <= set(new["classifier.2"].tolist())
    assert not torch.equal(new["classifier.2"], books["classifier.2"])  # centroids moved


def test_pack_round_trip_and_bad_input():
    assert unpack(pack({"a": b"xyz", "b.c": b""})) == {"a": b"xyz", "b.c": b""}
    with pytest.raises(ValueError, match="codebook entry"):
        encode_layer(torch.tensor([0.3, 0.0]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="gap_bits"):
        encode_layer(torch.zeros(2), torch.tensor([1.0]), gap_bits=0)
    with pytest.raises(ValueError, match="no Conv2d/Linear layer named"):
        share_weights(course_model(), {"nope": 3})
    with pytest.raises(ValueError, match="lacks"):
        load_compressed(pack({"zzz": b"\x00\x00"}), course_model())
    with pytest.raises(ValueError, match="Conv2d and Linear"):
        share_weights(torch.nn.ReLU(), {})


def test_finetune_codebooks_on_features_that_are_not_images():
    """An MLP on flat features: max_shift=0 trains the centroids; the default image shift
    refuses (N, 20) inputs and says what to pass instead."""
    from torch.utils.data import TensorDataset

    from qlib.data import Splits

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 20, generator=g), torch.randint(0, 3, (96,), generator=g)
    ds = TensorDataset(x, y)
    flat = Splits("flat", ds, ds, ds, classes=["a", "b", "c"])
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    books = share_weights(mlp, {"0": 2, "2": 2})
    new = finetune_codebooks(mlp, books, flat, epochs=1, max_shift=0)
    assert not torch.equal(new["0"], books["0"])
    with pytest.raises(ValueError, match="max_shift=0"):
        finetune_codebooks(mlp, new, flat, epochs=1)
