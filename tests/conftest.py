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


#: make test's order, for its two workers (pytest-xdist hands out whole files in this order):
#: the two files that train the language model and its six students first, so the notebooks
#: that load them find them cached; then the other unit tests; the notebooks last, the ones
#: that take longest (or train on first use) first, so that no long one is left for the end.
TRAIN_FIRST = ("tests/test_distill_lm.py", "tests/test_lm.py")
NOTEBOOKS_LONGEST_FIRST = ("06", "07", "03", "11", "09", "10", "04", "05", "02", "08", "00", "01")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in TRAIN_FIRST:
            return 0, TRAIN_FIRST.index(path)
        if path.startswith("notebooks/") and path.endswith(".ipynb"):
            number = path.rsplit("/", 1)[-1][:2]
            return 2, (NOTEBOOKS_LONGEST_FIRST.index(number) if number in NOTEBOOKS_LONGEST_FIRST
                       else len(NOTEBOOKS_LONGEST_FIRST))
        return 1, 0

    items.sort(key=rank)       # stable: the cells of a notebook and the tests of a file keep their order
