"""The LTX files of one database on disk: `<data>/dbs/<name>/ltx/<min>-<max>.ltx`.

Files are published atomically (temp name, optional fsync, rename, optional fsync of the
directory). Not thread-safe by itself: Database serializes access with its lock.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from litefs.fsutil import fsync_dir
from litefs.ltx.format import format_filename, parse_filename

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LTXFileInfo:
    min_txid: int
    max_txid: int
    path: Path
    size: int
    mtime: float


class LTXDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def path_for(self, min_txid: int, max_txid: int) -> Path:
        return self.path / format_filename(min_txid, max_txid)

    def files(self) -> list[LTXFileInfo]:
        """All LTX files, in TXID order. Temp files are ignored."""
        out = []
        with os.scandir(self.path) as it:
            for entry in it:
                ids = parse_filename(entry.name)
                if ids is None:
                    continue
                st = entry.stat()
                out.append(LTXFileInfo(ids[0], ids[1], Path(entry.path), st.st_size, st.st_mtime))
        out.sort(key=lambda f: (f.max_txid, f.min_txid))
        return out

    def last(self) -> LTXFileInfo | None:
        files = self.files()
        return files[-1] if files else None

    def find(self, txid: int) -> Path | None:
        """The single-transaction file for txid, if it is still here."""
        path = self.path_for(txid, txid)
        return path if path.exists() else None

    def remove_temp_files(self) -> None:
        for entry in os.scandir(self.path):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)

    def write(self, min_txid: int, max_txid: int, encode: Callable[[BinaryIO], object],
              durable: bool = True, before_rename: Callable[[], None] | None = None) -> Path:
        """Publish a file whose bytes `encode(f)` writes; returns its path.

        With durable=False the data and the rename are left to the OS to flush: used in WAL
        mode, where durability follows SQLite's own fsync of the WAL (see Database.sync).
        """
        final = self.path_for(min_txid, max_txid)
        tmp = final.with_name(final.name + ".tmp")
        try:
            with open(tmp, "wb", buffering=256 * 1024) as f:
                encode(f)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            if before_rename is not None:
                before_rename()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, final)
        if durable:
            fsync_dir(self.path)
        return final

    def sync(self) -> None:
        fsync_dir(self.path)

    def remove_except(self, keep: Path) -> None:
        """After a snapshot: the older files can no longer be applied on top of anything."""
        for f in self.files():
            if f.path != keep:
                f.path.unlink(missing_ok=True)

    def enforce_retention(self, max_age: float, floor_txid: int | None = None, now: float | None = None) -> int:
        """Delete files older than max_age seconds; the newest file is always kept.

        floor_txid, when given, protects every file whose TXIDs reach above it (files a
        replica or the archive still needs). Returns the number of files deleted.
        """
        now = time.time() if now is None else now
        files = self.files()
        removed = 0
        for f in files[:-1]:
            if now - f.mtime < max_age:
                continue
            if floor_txid is not None and f.max_txid > floor_txid:
                continue
            f.path.unlink(missing_ok=True)
            removed += 1
        return removed
