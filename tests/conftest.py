"""Shared fixtures: the embedded data and the cached, trained course baseline."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # Two cores on the reference machine: keep unit tests predictable.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data():
    from qlib.data import load_dataset

    return load_dataset("embedded")


@pytest.fixture(scope="session")
def baseline(data):
    """The trained course model (trained on first use, then loaded from data/models)."""
    from qlib.train import get_baseline

    model, _ = get_baseline(progress=False)
    return model

@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and do not stall when the machine is busy.
    Yields the thread count before; restores it after the module. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)
