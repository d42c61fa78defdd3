"""SQLite's own locks, taken by the daemon through the mount (DESIGN.md §3).

llfuse registers no lock handlers, so the kernel keeps every fcntl lock locally, for SQLite and
for us alike. To exclude a node's readers while it changes a database behind SQLite's back (a
replica applying an LTX file), the daemon opens the files through the mount and takes the very
lock bytes a SQLite writer takes, with open-file-description (OFD) locks: they conflict with
SQLite's POSIX locks, and closing some other descriptor never drops them.

Rollback mode: PENDING, RESERVED and the SHARED range, exclusively (an EXCLUSIVE lock).
WAL mode: the wal-index WRITE, CKPT, RECOVER and READ0..4 bytes exclusively, so no reader can
hold or take a read mark; SQLite's readers retry internally while these are held.

Acquisition is non-blocking with back-off up to a deadline, so a stuck reader makes the apply
fail and be retried instead of hanging the daemon. Thread-safe: no shared state.
"""
from __future__ import annotations

import fcntl
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

from litefs.errors import LitefsError

PENDING = 0x40000000
RESERVED = PENDING + 1
SHARED_FIRST = PENDING + 2
SHARED_SIZE = 510
SHM_WRITE = 120
SHM_READ0 = 123
SHM_READ_COUNT = 5

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock on Linux x86-64/aarch64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = "hhxxxxqqixxxx"


class LockTimeout(LitefsError):
    """Readers kept SQLite's locks for longer than the deadline."""


def _setlk(fd: int, kind: int, start: int, length: int) -> bool:
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, struct.pack(_FLOCK, kind, 0, start, length, 0))
        return True
    except (BlockingIOError, PermissionError):
        return False


def _acquire(fd: int, kind: int, start: int, length: int, deadline: float, what: str) -> None:
    delay = 0.0001
    while not _setlk(fd, kind, start, length):
        if time.monotonic() >= deadline:
            raise LockTimeout(f"timed out waiting for readers to release {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _release(fd: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, 0, start, length, 0))


@contextmanager
def exclusive(db_fd: int, shm_fd: int | None, rollback: bool, wal: bool, timeout: float = 10.0) -> Iterator[None]:
    """Hold what a SQLite writer holds while it changes the database file.

    `rollback` and `wal` say which readers to exclude; while a change switches the journal mode
    both are needed. In WAL mode readers hold SHARED on the database file for every read, so
    only the wal-index locks are taken there: readers then wait inside SQLite instead of
    getting SQLITE_BUSY.
    """
    deadline = time.monotonic() + timeout
    held: list[tuple[int, int, int]] = []
    try:
        if wal and shm_fd is not None:
            _acquire(shm_fd, fcntl.F_WRLCK, SHM_WRITE, 3 + SHM_READ_COUNT, deadline, "the WAL-index locks")
            held.append((shm_fd, SHM_WRITE, 3 + SHM_READ_COUNT))
        if rollback:
            # PENDING first: it stops new readers, then the SHARED range waits out current ones.
            for start, length, what in ((PENDING, 1, "PENDING"), (RESERVED, 1, "RESERVED"),
                                        (SHARED_FIRST, SHARED_SIZE, "SHARED")):
                _acquire(db_fd, fcntl.F_WRLCK, start, length, deadline, f"the {what} lock")
                held.append((db_fd, start, length))
        yield
    finally:
        for fd, start, length in reversed(held):
            _release(fd, start, length)
