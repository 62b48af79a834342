import pytest
import torch

from qlib import text as qtext
from qlib.text import (SPLITS, CharTokenizer, corpus_documents, eval_windows, load_text,
                       random_windows, split_documents, train_batches)


@pytest.fixture(scope="module")
def text():
    return load_text()


def test_tokenizer_round_trips_known_text(text):
    tok = text.tokenizer
    sample = corpus_documents()["assert"][:2000]
    assert set(sample) <= set(tok.chars)
    ids = tok.encode(sample)
    assert ids.dtype == torch.long and ids.shape == (len(sample),)
    assert tok.decode(ids) == sample
    assert tok.decode(ids.tolist()) == sample
    assert tok.vocab_size == len(tok.chars) + 1 and 60 < tok.vocab_size < 200


def test_unknown_characters_map_to_unk():
    tok = CharTokenizer.from_text("abca", min_count=1)
    assert tok.encode("az").tolist() == [1, 0]
    assert tok.decode([1, 0]) == "a\ufffd"
    rare = CharTokenizer.from_text("aab", min_count=2)
    assert rare.chars == ("a",) and rare.encode("b").tolist() == [0]


def test_split_is_deterministic_disjoint_and_by_document(text):
    again = qtext._load_text.__wrapped__(0)  # computed afresh, not the cached object
    docs = corpus_documents()
    names = [set(text.documents[s]) for s in SPLITS]
    assert names[0].isdisjoint(names[1]) and names[0].isdisjoint(names[2])
    assert names[1].isdisjoint(names[2])
    assert set().union(*names) == set(docs)
    assert all(n >= 1 for n in text.doc_counts.values())
    assert split_documents(docs, 0) == split_documents(dict(reversed(docs.items())), 0)
    assert split_documents(docs, 1) != split_documents(docs, 0)
    assert torch.equal(again.test, text.test)
    total = sum(len(text.split(s)) for s in SPLITS)
    assert 0.8 < len(text.train) / total < 0.95
    for s in ("val", "test"):
        assert 0.03 < len(text.split(s)) / total < 0.12, s


def test_adding_a_topic_moves_little():
    docs = corpus_documents()
    before = split_documents(docs, 0)
    after = split_documents({**docs, "a-new-topic": "some new text " * 100}, 0)
    moved = sum(len(set(before[s]) ^ (set(after[s]) - {"a-new-topic"})) for s in SPLITS)
    assert moved <= 4


def test_windows():
    tokens = torch.arange(50)
    x, y = eval_windows(tokens, 8)
    assert x.shape == y.shape == (6, 8)
    assert torch.equal(x.flatten(), tokens[:48]) and torch.equal(y.flatten(), tokens[1:49])
    gen = torch.Generator().manual_seed(0)
    w = random_windows(tokens, 8, 5, gen)
    assert w.shape == (5, 9)
    assert torch.equal(w[:, 1:] - w[:, :-1], torch.ones(5, 8, dtype=torch.long))
    a = [next(train_batches(tokens, 8, 4, seed=3))[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    xb, yb = next(train_batches(tokens, 8, 4, seed=3))
    assert torch.equal(xb[:, 1:], yb[:, :-1])


def test_bad_input_raises(text):
    with pytest.raises(ValueError, match="block_size"):
        eval_windows(text.test, 0)
    with pytest.raises(ValueError, match="block_size"):
        next(train_batches(text.test, -1, 4))
    with pytest.raises(ValueError, match="split must be one of"):
        text.split("dev")
    with pytest.raises(ValueError, match="text must be"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="ids must lie"):
        text.tokenizer.decode([text.tokenizer.vocab_size])
    with pytest.raises(ValueError, match="at least block_size"):
        eval_windows(torch.arange(4), 8)
    with pytest.raises(ValueError, match="seed"):
        load_text(-1)
