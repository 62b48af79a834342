"""The course text corpus and a character-level tokenizer, offline.

Introduced in notebook 09. The corpus is Python's own documentation: the help topics
in ``pydoc_data.topics.topics`` (about 80 documents, ~465k characters of English
prose and code), which ship with every CPython, so nothing is downloaded. Licence:
the Python Software Foundation License (the same as the Python docs).

**Split by document.** Topics are sorted by key, then ordered by a seeded hash of
each topic's *name*, ``sha256(f"{seed}:{name}")``; documents are taken in that order
into test until it holds ~5% of the characters, then validation (~5%), and the rest
is train. A topic is never cut in two, so held-out text is truly unseen. Because the
order depends only on each name, a topic added or edited in a newer Python patch
release moves at most a document or two across a boundary: the numbers shift
slightly, they do not reshuffle.

**Character-level tokens.** One token per character: there is no vocabulary file to
download or train, a token is readable (``decode`` of one id is one character), and
every character of known text round-trips exactly. The vocabulary is the train
split's characters (sorted) plus ``<unk>`` (id 0) for characters that are rare or
never seen in train; ``<unk>`` decodes to ``"\\ufffd"``.

Shapes: a split is a 1-D LongTensor of token ids; a batch of windows is ``(B, T)``
with targets ``y[:, t] = x[:, t + 1]`` (the next character).

>>> tok = CharTokenizer.from_text("hello world")
>>> tok.vocab_size, tok.decode(tok.encode("hello")), tok.decode(tok.encode("hex"))
(9, 'hello', 'he\\ufffd')
>>> x, y = eval_windows(torch.arange(10), block_size=4)
>>> x.tolist(), y.tolist()
([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CharTokenizer", "TextSplits", "SPLITS", "corpus_documents", "split_documents",
           "load_text", "random_windows", "train_batches", "eval_windows"]

#: Split names accepted everywhere a split is named.
SPLITS = ("train", "val", "test")
UNK = "<unk>"
_UNK_CHAR = "\ufffd"  # what <unk> decodes to: one character, so lengths are kept
_SEPARATOR = "\n\n"   # between two documents of one split


class CharTokenizer:
    """Characters <-> ids. Id 0 is ``<unk>``; ids 1.. are ``chars`` in sorted order."""

    def __init__(self, chars: Sequence[str]) -> None:
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("chars must hold at least one character, got none")
        if any(len(c) != 1 for c in chars):
            bad = [c for c in chars if len(c) != 1][:5]
            raise ValueError(f"chars must be single characters, got {bad}")
        self.chars: tuple[str, ...] = tuple(chars)
        self.stoi = {c: i + 1 for i, c in enumerate(self.chars)}
        self.itos = [_UNK_CHAR, *self.chars]
        self.unk_id = 0

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> CharTokenizer:
        """The vocabulary of ``text``: every character seen at least ``min_count`` times."""
        if not text:
            raise ValueError("text must be a non-empty string to build a vocabulary, got ''")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        return cls([c for c, n in Counter(text).items() if n >= min_count])

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> Tensor:
        """``str`` -> 1-D LongTensor of ids; unknown characters become ``unk_id``."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        return torch.tensor([self.stoi.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Ids (a 1-D tensor or a list of ints) -> ``str``; ``<unk>`` becomes ``"\\ufffd"``."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if ids and isinstance(ids[0], list):
            raise ValueError("decode takes one sequence of ids (1-D); decode each row of a batch")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return "".join(self.itos[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@dataclass(frozen=True, eq=False)
class TextSplits:
    """Token ids of each split, the tokenizer, and the topic names in each split."""

    train: Tensor
    val: Tensor
    test: Tensor
    tokenizer: CharTokenizer
    documents: dict[str, tuple[str, ...]]
    fingerprint: str  # sha256 of the corpus text: part of the LM cache key

    @property
    def doc_counts(self) -> dict[str, int]:
        return {name: len(docs) for name, docs in self.documents.items()}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, which: str) -> Tensor:
        """The token ids of ``"train"``, ``"val"`` or ``"test"``."""
        return getattr(self, _check_split(which))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s)):,} tokens/{self.doc_counts[s]} docs"
                          for s in SPLITS)
        return f"TextSplits({sizes}, vocab_size={self.vocab_size})"


def _check_split(which: str) -> str:
    if which not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
    return which


def corpus_documents() -> dict[str, str]:
    """The corpus: ``{topic: text}`` from ``pydoc_data.topics``, sorted by topic."""
    # lazy: the 465k-character corpus is read only when the text is first loaded
    from pydoc_data.topics import topics

    return {name: topics[name] for name in sorted(topics)}


def split_documents(docs: dict[str, str], seed: int = 0,
                    fractions: tuple[float, float] = (0.05, 0.05)) -> dict[str, list[str]]:
    """Topic names of each split: test, then val, filled to ``fractions`` of the characters.

    Documents are visited in the order of ``sha256(f"{seed}:{name}")``; see the module
    docstring for why. Every split gets at least one document.
    """
    if len(docs) < 3:
        raise ValueError(f"docs must hold at least 3 documents (one per split), got {len(docs)}")
    if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"fractions (test, val) must lie in (0, 1) and sum below 1, "
                         f"got {fractions}")
    order = sorted(docs, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    total = sum(len(t) for t in docs.values())
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    i = 0
    for split, frac in zip(("test", "val"), fractions):
        chars = 0
        while i < len(order) - 1 and (not out[split] or chars < frac * total):
            out[split].append(order[i])
            chars += len(docs[order[i]])
            i += 1
    out["train"] = sorted(order[i:])
    out["test"].sort()
    out["val"].sort()
    if not out["train"]:
        raise ValueError("no document is left for train; give more documents")
    return out


@functools.lru_cache(maxsize=4)
def _load_text(seed: int) -> TextSplits:
    docs = corpus_documents()
    names = split_documents(docs, seed)
    texts = {s: _SEPARATOR.join(docs[n] for n in names[s]) for s in SPLITS}
    tok = CharTokenizer.from_text(texts["train"])
    blob = "\0".join(f"{n}\0{t}" for n, t in docs.items()).encode()
    return TextSplits(train=tok.encode(texts["train"]), val=tok.encode(texts["val"]),
                      test=tok.encode(texts["test"]), tokenizer=tok,
                      documents={s: tuple(names[s]) for s in SPLITS},
                      fingerprint=hashlib.sha256(blob).hexdigest()[:16])


def load_text(seed: int = 0) -> TextSplits:
    """The tokenized corpus, split by document (see the module docstring).

    Built once per process and ``seed`` (well under a second), then shared: clone a
    split's tensor before editing it in place.

    >>> data = load_text()
    >>> sorted(data.doc_counts) == sorted(SPLITS), len(data.train) > 10 * len(data.test)
    (True, True)
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return _load_text(seed)


def _check_window(tokens: Tensor, block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D token ids, got shape {tuple(tokens.shape)}")
    if len(tokens) < block_size + 1:
        raise ValueError(f"tokens must hold at least block_size + 1 = {block_size + 1} ids, "
                         f"got {len(tokens)}")


def random_windows(tokens: Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """``batch_size`` windows of ``block_size + 1`` ids at random offsets: ``(B, T + 1)``."""
    _check_window(tokens, block_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    return tokens[starts[:, None] + torch.arange(block_size + 1)]


def train_batches(tokens: Tensor, block_size: int, batch_size: int, *, seed: int = 0
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless seeded ``(x, y)`` batches, each ``(B, T)``, with ``y`` = ``x`` shifted by one.

    >>> x, y = next(train_batches(torch.arange(100), block_size=8, batch_size=2))
    >>> x.shape, torch.equal(x[:, 1:], y[:, :-1])
    (torch.Size([2, 8]), True)
    """
    _check_window(tokens, block_size)
    gen = torch.Generator().manual_seed(seed)
    while True:
        w = random_windows(tokens, block_size, batch_size, gen)
        yield w[:, :-1], w[:, 1:]


def eval_windows(tokens: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Deterministic, non-overlapping windows covering ``tokens``: ``x, y`` each ``(N, T)``.

    Window ``i`` reads ids ``[iT, iT + T)`` and predicts ``[iT + 1, iT + T + 1)``, so every
    id after the first is predicted once, until the last full window; the tail is dropped.
    """
    _check_window(tokens, block_size)
    n = (len(tokens) - 1) // block_size
    x = tokens[: n * block_size].view(n, block_size)
    y = tokens[1: n * block_size + 1].view(n, block_size)
    return x, y
