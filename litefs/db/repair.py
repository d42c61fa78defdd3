"""The ways out when startup recovery refuses a database (exit code 5).

- rebuild: replay the local LTX files, from a snapshot to the newest, into a fresh file.
- reset: take the database file as it is and make it the new position, with a snapshot LTX.

Both need the node stopped: they take the data directory's lock, as a running node does.
"""
from __future__ import annotations

import os
from pathlib import Path

from litefs.db import journal as journal_format
from litefs.db.ltxdir import LTXDir
from litefs.db.wal import WALTracker, checkpoint_pages
from litefs.errors import RecoveryError
from litefs.fsutil import atomic_write, fsync_dir
from litefs.ltx.checksum import sqlite_page_size
from litefs.ltx.files import apply_files, encode_snapshot


def _db_dir(data_dir: Path, name: str) -> Path:
    path = data_dir / "dbs" / name
    if not path.is_dir():
        raise RecoveryError(f"no database {name!r} in {data_dir}")
    return path


def _fold_sidecars(directory: Path) -> None:
    """Roll back a hot journal and fold every committed WAL frame in, as SQLite would."""
    db = directory / "database"
    if (directory / "journal").exists():
        journal_format.rollback(directory / "journal", db)
    wal = directory / "wal"
    if wal.exists():
        data = wal.read_bytes()
        tracker = WALTracker(lambda off, n: data[off:off + n])
        txs = tracker.scan_existing(len(data)) if len(data) >= 32 else []
        if txs:
            assert tracker.header is not None
            ps = tracker.header.page_size
            fd = os.open(db, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for pgno, off in checkpoint_pages(txs).items():
                    os.pwrite(fd, data[off:off + ps], (pgno - 1) * ps)
                os.ftruncate(fd, txs[-1].commit * ps)
                os.fsync(fd)
            finally:
                os.close(fd)
        wal.unlink()
    (directory / "shm").unlink(missing_ok=True)


def rebuild(data_dir: Path, name: str) -> str:
    directory = _db_dir(data_dir, name)
    ltx = LTXDir(directory / "ltx")
    files = ltx.files()
    start = max((i for i, f in enumerate(files) if f.min_txid == 1), default=None)
    if start is None:
        raise RecoveryError(f"{name}: no snapshot LTX file is left locally to rebuild from; "
                            "restore from the archive (`litefs restore`) or use --reset")
    chain = files[start:]
    for a, b in zip(chain, chain[1:]):
        if b.min_txid != a.max_txid + 1:
            raise RecoveryError(f"{name}: LTX files have a gap after TXID {a.max_txid:016x}")
    tmp = directory / "database.rebuild"
    tmp.unlink(missing_ok=True)
    pos = apply_files(tmp, [f.path for f in chain])
    for side in ("journal", "wal", "shm"):
        (directory / side).unlink(missing_ok=True)
    os.replace(tmp, directory / "database")
    fsync_dir(directory)
    return f"{name}: rebuilt from {len(chain)} LTX files at position {pos}"


def reset(data_dir: Path, name: str) -> str:
    directory = _db_dir(data_dir, name)
    _fold_sidecars(directory)
    ltx = LTXDir(directory / "ltx")
    last = ltx.last()
    txid = (last.max_txid if last else 0) + 1
    db = directory / "database"
    fd = os.open(db, os.O_RDONLY)
    try:
        page_size = sqlite_page_size(os.pread(fd, 100, 0))
        commit = os.fstat(fd).st_size // page_size
        with atomic_write(ltx.path_for(1, txid)) as f:
            trailer = encode_snapshot(fd, f, page_size=page_size, commit=commit, max_txid=txid)
    finally:
        os.close(fd)
    ltx.remove_except(ltx.path_for(1, txid))
    return f"{name}: reset to position {txid:016x}/{trailer.post_apply_checksum:016x} (replicas will take a snapshot)"
