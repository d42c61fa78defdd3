"""Durable file writes: temp file, fsync, rename, fsync the directory.

Used by every layer that publishes a file others may read after a crash (LTX files, the
cluster id, exports, restores). Thread-safe: no shared state.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Write `path` all at once: nothing is visible under its name until the block succeeds.

    On an exception the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    f = open(tmp, "wb")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
