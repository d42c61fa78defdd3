"""The Store: every database of a node, the node's identity, and whether it may write.

Threading: `self.lock` guards the table of databases; each Database guards its own state.
Commit subscribers are called on the committing thread while that database's lock is held, so
they must only hand work off (set an event, loop.call_soon_threadsafe) and never block.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path

from litefs.db.database import Database
from litefs.errors import DatabaseNotFoundError, LitefsError, ReadOnlyReplicaError, UsageError
from litefs.fsutil import atomic_write
from litefs.ltx.format import Header, Pos

log = logging.getLogger(__name__)

CommitSubscriber = Callable[[Database, Header], None]
RetentionFloor = Callable[[str], "int | None"]

_RESERVED_SUFFIXES = ("-journal", "-wal", "-shm", "-pos", "-lock")
_NAME = re.compile(r"^[^/\0]{1,200}$")


def validate_name(name: str) -> str:
    if not _NAME.match(name) or name.startswith(".") or name.endswith(_RESERVED_SUFFIXES):
        raise UsageError(f"invalid database name {name!r}")
    return name


class ClusterMismatchError(LitefsError):
    exit_code = 2
    http_status = 409


class DataDirLock:
    """An exclusive lock on a data directory: one node (or repair) at a time."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "lock"
        self._fd: int | None = None

    def __enter__(self) -> "DataDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{self.path.parent} is in use by another litefs process") from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Store:
    def __init__(self, data_dir: Path, *, mount_dir: Path | None = None, compress: bool = True,
                 strict_verify: bool = False, retention: float = 600.0,
                 retention_interval: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.mount_dir = mount_dir
        self.compress = compress
        self.strict_verify = strict_verify
        self.retention = retention
        self.retention_interval = retention_interval
        self.node_id = random.getrandbits(64) or 1
        self.is_primary = True
        # Monotonic deadline of the primary's lease: no commit is accepted after it, even if the
        # lease thread has not run yet (a process resumed after SIGSTOP).
        self.lease_valid_until = math.inf
        self.cluster_id = ""
        # Replicas: the primary's hostname, and its clock as last heard (heartbeat or LTX).
        self.primary_hostname = ""
        self.primary_url = ""
        self.primary_timestamp_ms = 0
        # Set once the node can serve: primary, or caught up with the primary.
        self.ready = threading.Event()
        # Threads changing files through the mount behind SQLite's back (apply, demote): the
        # FUSE adapter lets their requests bypass capture and role checks.
        self.internal_threads: set[int] = set()
        self.lock = threading.Lock()
        self._dbs: dict[str, Database] = {}
        self._subscribers: list[CommitSubscriber] = []
        self.retention_floors: list[RetentionFloor] = []
        self._stop = threading.Event()
        self._retention_thread: threading.Thread | None = None
        self._dir_lock = DataDirLock(self.data_dir)

    @property
    def dbs_dir(self) -> Path:
        return self.data_dir / "dbs"

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Recover every database found on disk; raises RecoveryError naming the first bad one."""
        self._dir_lock.__enter__()
        self.dbs_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.scandir(self.dbs_dir), key=lambda e: e.name):
            if entry.is_dir():
                db = Database(self, entry.name, Path(entry.path))
                db.recover()
                self._dbs[entry.name] = db
                log.info("database %s recovered at position %s", entry.name, db.pos)

    def close(self) -> None:
        self._stop.set()
        if self._retention_thread is not None:
            self._retention_thread.join()
        for db in self.databases():
            db.close()
        self._dir_lock.__exit__()

    def adopt_cluster_id(self, cluster_id: str) -> None:
        """A replica takes its primary's cluster id; a node of another cluster never streams."""
        if not cluster_id or cluster_id == self.cluster_id:
            return
        if self.cluster_id:
            raise ClusterMismatchError(
                f"cluster id mismatch: this node belongs to {self.cluster_id}, the primary to {cluster_id}")
        with atomic_write(self.data_dir / "clusterid") as f:
            f.write(cluster_id.encode() + b"\n")
        self.cluster_id = cluster_id

    def positions(self) -> dict[str, Pos]:
        return {db.name: db.pos for db in self.databases() if db.pos.txid}

    def load_cluster_id(self, create: bool) -> str:
        path = self.data_dir / "clusterid"
        if path.exists():
            self.cluster_id = path.read_text().strip()
        elif create:
            self.cluster_id = "LFSC%016X" % random.getrandbits(64)
            with atomic_write(path) as f:
                f.write(self.cluster_id.encode() + b"\n")
        return self.cluster_id

    # -- databases ------------------------------------------------------------------------------

    def databases(self) -> list[Database]:
        with self.lock:
            return list(self._dbs.values())

    def db(self, name: str) -> Database | None:
        with self.lock:
            return self._dbs.get(name)

    def require(self, name: str) -> Database:
        db = self.db(name)
        if db is None or not db.exists:
            raise DatabaseNotFoundError(f"database {name!r} not found")
        return db

    def create(self, name: str, internal: bool = False, create_file: bool = True) -> Database:
        """The database named `name`, creating its directory and empty file if needed.

        `internal`: the daemon itself creates it (a replica receiving a new database, which gets
        its file from the first LTX file applied, hence `create_file=False`)."""
        if not internal:
            self.check_writable()
        validate_name(name)
        with self.lock:
            db = self._dbs.get(name)
            if db is None:
                directory = self.dbs_dir / name
                directory.mkdir(parents=True, exist_ok=True)
                db = Database(self, name, directory)
                self._dbs[name] = db
        if create_file:
            db.create_file()
        return db

    @contextmanager
    def internal_io(self) -> Iterator[None]:
        """Mark this thread's file-system requests as the daemon's own."""
        tid = threading.get_native_id()
        self.internal_threads.add(tid)
        try:
            yield
        finally:
            self.internal_threads.discard(tid)

    @property
    def acting_primary(self) -> bool:
        """Primary and inside its lease: what this node tells others it is."""
        return self.is_primary and time.monotonic() < self.lease_valid_until

    def lag_ms(self) -> int:
        """How far behind the primary this node may be: 0 on the primary, the age of the last
        word from the primary on a replica, and the maximum before the first one."""
        if self.is_primary:
            return 0
        if not self.primary_timestamp_ms:
            return 2147483647
        return max(0, int(time.time() * 1000) - self.primary_timestamp_ms)

    def check_writable(self) -> None:
        if not self.is_primary:
            raise ReadOnlyReplicaError("this node is a read-only replica")
        if time.monotonic() >= self.lease_valid_until:
            raise ReadOnlyReplicaError("this node's primary lease has expired")

    def demote(self) -> None:
        """This node is no longer primary: bring every database to its last committed state."""
        for db in self.databases():
            try:
                db.demote()
            except LitefsError as exc:
                log.error("%s: could not prepare for replica mode: %s", db.name, exc)

    # -- commits --------------------------------------------------------------------------------

    def subscribe(self, fn: CommitSubscriber) -> None:
        with self.lock:
            self._subscribers.append(fn)

    def unsubscribe(self, fn: CommitSubscriber) -> None:
        with self.lock:
            self._subscribers.remove(fn)

    def notify_commit(self, db: Database, header: Header) -> None:
        for fn in list(self._subscribers):
            fn(db, header)

    # -- retention ------------------------------------------------------------------------------

    def retention_floor(self, name: str) -> int | None:
        """The lowest TXID some consumer (a replica, the archive) still needs, if any."""
        floors = [f for f in (fn(name) for fn in self.retention_floors) if f is not None]
        return min(floors) if floors else None

    def enforce_retention(self) -> int:
        removed = 0
        for db in self.databases():
            removed += db.enforce_retention(self.retention, self.retention_floor(db.name))
        return removed

    def start_retention(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.retention_interval):
                try:
                    self.enforce_retention()
                except OSError as exc:
                    log.error("retention: %s", exc)

        self._retention_thread = threading.Thread(target=loop, name="litefs-retention", daemon=True)
        self._retention_thread.start()

    # -- import / export (through the mount, so SQLite's own locking applies) -----------------

    def mount_path(self, name: str) -> str:
        if self.mount_dir is None:
            raise LitefsError("import and export need the file system to be mounted")
        return os.path.join(self.mount_dir, validate_name(name))

    def import_file(self, name: str, src: Path) -> None:
        """Replace a database's content with a SQLite file as ONE transaction.

        SQLite's backup API copies the pages through the mount under SQLite's locks; the commit
        path keeps only the pages whose checksum changed, so the LTX file is a page diff.
        Must not be called from a FUSE handler thread.
        """
        self.check_writable()
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            source.execute("PRAGMA schema_version").fetchone()  # fails early on a non-database
            self.create(name)
            target = sqlite3.connect(self.mount_path(name), timeout=30)
            try:
                source.backup(target)
            finally:
                target.close()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"import {name}: {exc}") from exc
        finally:
            source.close()

    def export_file(self, name: str, dst: Path) -> None:
        """A consistent copy of a database, taken with SQLite's backup API through the mount."""
        self.require(name)
        source = sqlite3.connect(f"file:{self.mount_path(name)}?mode=ro", uri=True, timeout=30)
        try:
            target = sqlite3.connect(dst)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()


class ImportUpload:
    """A database file arriving in pieces (an HTTP body); `commit()` imports it as one transaction.

    Owns its temp file, so the HTTP layer only ever hands over bytes.
    """

    def __init__(self, store: Store, name: str) -> None:
        validate_name(name)
        store.check_writable()
        self.store, self.name = store, name
        tmp_dir = store.data_dir / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        self.path = tmp_dir / f"import-{name}-{os.getpid()}-{random.getrandbits(32):08x}.db"
        self._f = open(self.path, "wb")

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def commit(self) -> None:
        try:
            self._f.close()
            self.store.import_file(self.name, self.path)
        finally:
            self.abort()

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def export_chunks(store: Store, name: str, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
    """A consistent copy of a database as a stream of chunks; the temp copy is removed after."""
    tmp_dir = store.data_dir / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    path = tmp_dir / f"export-{name}-{os.getpid()}-{random.getrandbits(32):08x}.db"
    try:
        store.export_file(name, path)
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk
    finally:
        path.unlink(missing_ok=True)
