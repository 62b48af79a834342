import numpy as np
import pytest
import torch

from qlib.codec.huffman import (canonical_codes, compressed_sizes, entropy_bits, huffman_code_lengths,
                          huffman_decode, huffman_encode)


def test_textbook_lengths():
    # probabilities 1/2, 1/4, 1/8, 1/8 -> lengths 1, 2, 3, 3 (mean = entropy = 1.75 bits)
    lengths = huffman_code_lengths({0: 4, 1: 2, 2: 1, 3: 1})
    assert lengths == {0: 1, 1: 2, 2: 3, 3: 3}
    assert entropy_bits([0, 0, 0, 0, 1, 1, 2, 3]) == 1.75


def test_canonical_codes_are_prefix_free():
    codes = canonical_codes({0: 1, 1: 2, 2: 3, 3: 3})
    words = [format(c, f"0{n}b") for c, n in codes.values()]
    assert words == ["0", "10", "110", "111"]
    for i, a in enumerate(words):
        assert not any(b.startswith(a) for j, b in enumerate(words) if i != j)


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_and_within_one_bit_of_entropy(seed):
    rng = np.random.default_rng(seed)
    # skewed like pruned + quantized weights: mostly the zero code
    sym = rng.choice(16, size=5000, p=np.r_[0.7, np.full(15, 0.02)]) - 8
    enc = huffman_encode(sym)
    assert np.array_equal(huffman_decode(enc), sym)
    counts = dict(zip(*np.unique(sym, return_counts=True)))
    lengths = huffman_code_lengths({int(k): int(v) for k, v in counts.items()})
    mean_len = sum(lengths[k] * v for k, v in counts.items()) / sym.size
    h = entropy_bits(sym)
    assert h <= mean_len < h + 1


def test_edge_cases():
    assert huffman_decode(huffman_encode([])).size == 0
    assert huffman_decode(huffman_encode([5] * 9)).tolist() == [5] * 9
    assert huffman_decode(huffman_encode(torch.tensor([-3, 7, -3]))).tolist() == [-3, 7, -3]


def test_compressed_sizes_on_skewed_codes():
    rng = np.random.default_rng(0)
    sym = rng.choice(16, size=20000, p=np.r_[0.85, np.full(15, 0.01)])
    s = compressed_sizes(sym, 4)
    assert s["packed"] == 10000
    assert s["entropy_bound"] <= s["huffman"] < s["packed"]
    assert s["huffman_table"] == 6 + 5 * len(np.unique(sym))


@pytest.mark.parametrize("seed", range(20))
def test_huffman_payload_between_entropy_bound_and_fixed_width(seed):
    # Huffman is the shortest prefix code, and a b-bit fixed-width code is a prefix code:
    # so its payload (without the table) sits between n*H/8 and n*b/8 bytes, for ANY histogram.
    rng = np.random.default_rng(seed)
    bits = int(rng.integers(1, 7))
    n = int(rng.integers(1, 3000))
    p = rng.dirichlet(np.full(2 ** bits, float(rng.choice([0.1, 1.0, 50.0]))))
    s = compressed_sizes(rng.choice(2 ** bits, size=n, p=p), bits)
    payload = s["huffman"] - s["huffman_table"]
    assert s["entropy_bound"] <= payload <= s["packed"]


def test_table_can_make_whole_huffman_file_larger_than_packing():
    # a short, flat 3-bit stream: payload == packed, and the table is pure overhead
    s = compressed_sizes(np.arange(64) % 8, 3)
    assert s["huffman"] - s["huffman_table"] == s["packed"] == 24
    assert s["huffman"] > s["packed"]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: huffman_encode([0.5, 1.0]), TypeError, "integers"),
    (lambda: entropy_bits([]), ValueError, "empty"),
    (lambda: huffman_code_lengths({}), ValueError, "non-empty"),
    (lambda: huffman_decode(b"\x00"), ValueError, "header"),
    (lambda: huffman_decode(huffman_encode([0, 1, 2, 3])[:-1]), ValueError, "truncated"),
    (lambda: compressed_sizes([1, 2], 0), ValueError, "1..16"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
