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
