"""Files written safely: atomic writes, and a writability check before long work.

Introduced with the caches of notebook 00 and used by every writer of outputs (checkpoints,
ONNX files, the command line's reports). Imports nothing from qlib.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "writable_dir_problem", "STALE_TEMP_S"]

#: Age in seconds after which a temp file left by a killed :func:`atomic_write` is removed
#: (a live write lasts seconds; the longest, an ONNX static quantization, about a minute).
STALE_TEMP_S = 3600.0


@contextmanager
def atomic_write(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it becomes ``path`` (mode 0644) by one
    rename, on any error it is removed. A crash never leaves a half-written file, and the
    temp files of writes killed outright are removed by the next write of ``path`` once they
    are older than :data:`STALE_TEMP_S`.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with atomic_write(d / "a.txt") as tmp: _ = tmp.write_text("hi")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('hi', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A write killed outright (SIGKILL, power) leaves its temp file: remove this target's
    # temp files older than STALE_TEMP_S, which no live write is still using.
    for old in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"):
        with contextlib.suppress(OSError):  # another process may remove it first
            if time.time() - old.stat().st_mtime > STALE_TEMP_S:
                old.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writable_dir_problem(path: str | Path) -> str | None:
    """Why the folder ``path`` cannot take output files, or None when it can.

    Used before long work (the command line's ``--out`` and the cache folder, notebook 00):
    the folder is created if missing and a uniquely named probe file is written and removed,
    so the answer is the file system's own (permissions, read-only mounts, a full disk).

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> writable_dir_problem(d / "new" / "folder") is None
    True
    >>> _ = (d / "f").write_text("x")
    >>> writable_dir_problem(d / "f").endswith("f is a file, not a folder")
    True
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".qlib-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{path} is not writable ({err.strerror or err})"
    return None
