"""The llfuse Operations: a thin adapter from file-system calls onto litefs.db.

Namespace (flat): `<db>`, `<db>-journal`, `<db>-wal`, `<db>-shm` pass through to the database's
backing files; `<db>-pos` is read-only text `%016x/%016x\\n`; `.primary` (replicas: the
primary's hostname) and `.lag` (`%+010d\\n` milliseconds behind the primary). Inode numbers
are stable for the life of the process: each database gets a block of eight.

Files the daemon opens through its own mount to change them behind SQLite's back (a replica
applying an LTX file under SQLite's locks) come from threads registered in
`store.internal_threads`: their writes bypass capture and role checks.

Threading: llfuse runs every handler holding `llfuse.lock`. Handlers keep their own state (the
handle table, the inode map) under it, and release it around every call into the db layer,
which does disk I/O and has its own locks. A LitefsError or OSError becomes its errno; any
other exception is a bug and takes the mount down, loudly.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import llfuse

from litefs.db import Database, FileKind, Store
from litefs.errors import LitefsError

log = logging.getLogger(__name__)

ROOT = llfuse.ROOT_INODE
PRIMARY_INODE = 2
LAG_INODE = 3
_SPECIAL = {".primary": PRIMARY_INODE, ".lag": LAG_INODE}
_FIRST_DB_INODE = 16
_BLOCK = 8
_POS = 4  # slot of -pos inside a database's block; FileKind slots are 0..3
_KIND_SLOT = {FileKind.DATABASE: 0, FileKind.JOURNAL: 1, FileKind.WAL: 2, FileKind.SHM: 3}
_SLOT_KIND = {v: k for k, v in _KIND_SLOT.items()}
_SUFFIXES = (("-journal", FileKind.JOURNAL), ("-wal", FileKind.WAL), ("-shm", FileKind.SHM), ("-pos", None))
# Entries, positive and negative, may be cached briefly (every name change goes through the
# kernel on this node); attributes never are, so SQLite always sees the real size.
ENTRY_TIMEOUT = 1.0

F = TypeVar("F", bound=Callable[..., Any])


def parse_name(name: str) -> tuple[str, FileKind | None]:
    """`app.db-wal` -> ("app.db", WAL); `app.db-pos` -> ("app.db", None)."""
    for suffix, kind in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return name, FileKind.DATABASE


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except llfuse.FUSEError:
            raise
        except LitefsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s: %s", fn.__name__, exc)
            raise llfuse.FUSEError(exc.errno) from None
        except OSError as exc:
            raise llfuse.FUSEError(exc.errno or errno.EIO) from None
    return wrapper  # type: ignore[return-value]


@dataclass
class Handle:
    db: Database | None  # None: .primary or .lag
    kind: FileKind | None  # None: a read-only text file
    fd: int | None
    internal: bool = False  # opened by the daemon itself
    inode: int = 0


class FileSystem(llfuse.Operations):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.uid, self.gid = os.getuid(), os.getgid()
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        # FUSE requests by operation: the lever for commit cost, reported by perf/ and /metrics.
        self.requests: Counter[str] = Counter()
        self._announced: set[str] = set()
        store.subscribe(self._on_commit)

    def _on_commit(self, db: Database, header: object) -> None:
        if db.name not in self._announced:
            # The first transaction of a database: names looked up before it existed may be
            # cached as negative entries (its -pos file is never created through the kernel).
            self._announced.add(db.name)
            for name in (db.name, db.name + "-pos"):
                llfuse.invalidate_entry(ROOT, os.fsencode(name))
        # llfuse forces keep_cache and -pos never changes size, so the kernel would keep
        # serving the old position. invalidate_* only queue requests: safe on any thread.
        idx = self._index.get(db.name)
        if idx is not None:
            llfuse.invalidate_inode(_FIRST_DB_INODE + idx * _BLOCK + _POS, attr_only=False)

    def _count(self, op: str) -> None:
        self.requests[op] += 1

    # -- inode map ------------------------------------------------------------------------------

    def _inode(self, name: str, slot: int) -> int:
        idx = self._index.get(name)
        if idx is None:
            idx = self._index[name] = len(self._names)
            self._names.append(name)
        return _FIRST_DB_INODE + idx * _BLOCK + slot

    def _resolve(self, inode: int) -> tuple[Database, FileKind | None]:
        idx, slot = divmod(inode - _FIRST_DB_INODE, _BLOCK)
        if inode < _FIRST_DB_INODE or idx >= len(self._names) or (slot not in _SLOT_KIND and slot != _POS):
            raise llfuse.FUSEError(errno.ENOENT)
        db = self.store.db(self._names[idx])
        if db is None:
            raise llfuse.FUSEError(errno.ENOENT)
        return db, _SLOT_KIND.get(slot)

    # -- attributes -----------------------------------------------------------------------------

    def _file_mode(self, kind: FileKind | None) -> int:
        writable = self.store.is_primary or kind is FileKind.SHM
        return stat.S_IFREG | (0o644 if kind is None else 0o666 if writable else 0o444)

    def _entry(self, inode: int, st_size: int, mode: int, mtime_ns: int, timeout: float = 0.0) -> llfuse.EntryAttributes:
        e = llfuse.EntryAttributes()
        e.st_ino = inode
        e.st_mode = mode
        e.st_nlink = 1 if not stat.S_ISDIR(mode) else 2
        e.st_uid, e.st_gid = self.uid, self.gid
        e.st_size = st_size
        e.st_blksize = 4096
        e.st_blocks = (st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = mtime_ns
        e.attr_timeout = 0
        e.entry_timeout = timeout
        return e

    def _root_attr(self) -> llfuse.EntryAttributes:
        mode = stat.S_IFDIR | (0o777 if self.store.is_primary else 0o555)
        return self._entry(ROOT, 0, mode, os.stat(self.store.data_dir).st_mtime_ns)

    @staticmethod
    def _pos_text(db: Database) -> bytes:
        return f"{db.pos}\n".encode()

    def _special_text(self, inode: int) -> bytes:
        if inode == PRIMARY_INODE:
            if self.store.is_primary or not self.store.primary_hostname:
                raise llfuse.FUSEError(errno.ENOENT)
            return f"{self.store.primary_hostname}\n".encode()
        return b"%+010d\n" % min(self.store.lag_ms(), 2147483647)

    def _special_attr(self, inode: int) -> llfuse.EntryAttributes:
        text = self._special_text(inode)
        mtime = self.store.primary_timestamp_ms * 1_000_000
        return self._entry(inode, len(text), stat.S_IFREG | 0o444, mtime, 0.0)

    def _attr(self, db: Database, kind: FileKind | None, inode: int) -> llfuse.EntryAttributes:
        if kind is None:
            return self._entry(inode, len(self._pos_text(db)), self._file_mode(None), db.timestamp * 1_000_000, ENTRY_TIMEOUT)
        st = os.stat(db.path(kind))
        return self._entry(inode, st.st_size, self._file_mode(kind), st.st_mtime_ns, ENTRY_TIMEOUT)

    # -- lookups --------------------------------------------------------------------------------

    @_errors
    def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> llfuse.EntryAttributes:
        self._count("lookup")
        if parent_inode != ROOT:
            raise llfuse.FUSEError(errno.ENOENT)
        text = os.fsdecode(name)
        if text in (".", ".."):
            return self._root_attr()
        if text in _SPECIAL:
            return self._special_attr(_SPECIAL[text])
        db_name, kind = parse_name(text)
        db = self.store.db(db_name)
        try:
            if db is None or not db.exists:
                raise FileNotFoundError(text)
            return self._attr(db, kind, self._inode(db_name, _POS if kind is None else _KIND_SLOT[kind]))
        except FileNotFoundError:
            # A negative entry the kernel may cache: SQLite looks for a hot journal at the start
            # of every transaction. Names only appear through the kernel (the daemon's own files
            # too), which drops the cached negative entry when it creates one.
            return self._negative()

    def _negative(self) -> llfuse.EntryAttributes:
        e = llfuse.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = ENTRY_TIMEOUT
        e.attr_timeout = 0
        return e

    @_errors
    def getattr(self, inode: int, ctx: Any = None) -> llfuse.EntryAttributes:
        self._count("getattr")
        if inode == ROOT:
            return self._root_attr()
        if inode in (PRIMARY_INODE, LAG_INODE):
            return self._special_attr(inode)
        db, kind = self._resolve(inode)
        return self._attr(db, kind, inode)

    @_errors
    def setattr(self, inode: int, attr: llfuse.EntryAttributes, fields: llfuse.SetattrFields, fh: int | None, ctx: Any) -> llfuse.EntryAttributes:
        self._count("setattr")
        if inode == ROOT:
            return self._root_attr()
        db, kind = self._resolve(inode)
        if fields.update_size:
            if kind is None:
                raise llfuse.FUSEError(errno.EACCES)
            h = self._handles.get(fh) if fh is not None else None
            with llfuse.lock_released:
                if h is not None and h.internal and h.fd is not None:
                    os.ftruncate(h.fd, attr.st_size)
                else:
                    db.truncate(kind, attr.st_size)
        # Mode, owner and times are not kept: SQLite only sets them to match the database's.
        return self._attr(db, kind, inode)

    # -- files ----------------------------------------------------------------------------------

    def _new_handle(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _internal(self, ctx: Any) -> bool:
        # FUSE reports the calling thread's id; only threads the store marked count (an import
        # also goes through the mount from a daemon thread, and must be captured like any write).
        return ctx is not None and ctx.pid in self.store.internal_threads

    @_errors
    def open(self, inode: int, flags: int, ctx: Any) -> int:
        self._count("open")
        if inode in (PRIMARY_INODE, LAG_INODE):
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise llfuse.FUSEError(errno.EACCES)
            self._special_text(inode)  # ENOENT when there is nothing to show
            return self._new_handle(Handle(None, None, None, inode=inode))
        db, kind = self._resolve(inode)
        if kind is None:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise llfuse.FUSEError(errno.EACCES)
            return self._new_handle(Handle(db, None, None))
        internal = self._internal(ctx)
        with llfuse.lock_released:
            fd = db.open_file(kind, flags, internal=internal)
        return self._new_handle(Handle(db, kind, fd, internal))

    @_errors
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> tuple[int, llfuse.EntryAttributes]:
        self._count("create")
        if parent_inode != ROOT:
            raise llfuse.FUSEError(errno.ENOENT)
        text = os.fsdecode(name)
        db_name, kind = parse_name(text)
        if kind is None or text in _SPECIAL:
            raise llfuse.FUSEError(errno.EACCES)
        internal = self._internal(ctx)
        with llfuse.lock_released:
            if kind is FileKind.DATABASE:
                db = self.store.create(db_name, internal=internal)
            else:
                db = self.store.require(db_name)
            fd = db.open_file(kind, flags | os.O_CREAT, internal=internal)
        inode = self._inode(db_name, _KIND_SLOT[kind])
        return self._new_handle(Handle(db, kind, fd, internal)), self._attr(db, kind, inode)

    @_errors
    def read(self, fh: int, off: int, size: int) -> bytes:
        self._count("read")
        h = self._handles[fh]
        if h.db is None:
            return self._special_text(h.inode)[off:off + size]
        if h.fd is None:
            return self._pos_text(h.db)[off:off + size]
        with llfuse.lock_released:
            return os.pread(h.fd, size, off)

    @_errors
    def write(self, fh: int, off: int, buf: bytes) -> int:
        self._count("write")
        h = self._handles[fh]
        if h.fd is None or h.kind is None or h.db is None:
            raise llfuse.FUSEError(errno.EACCES)
        with llfuse.lock_released:
            if h.internal:
                return h.db.write_raw(h.kind, h.fd, buf, off)
            return h.db.write(h.kind, h.fd, buf, off)

    def flush(self, fh: int) -> None:
        self._count("flush")

    @_errors
    def release(self, fh: int) -> None:
        self._count("release")
        h = self._handles.pop(fh)
        if h.fd is not None:
            os.close(h.fd)

    @_errors
    def fsync(self, fh: int, datasync: bool) -> None:
        self._count("fsync")
        h = self._handles[fh]
        if h.fd is not None and h.kind is not None and h.db is not None:
            with llfuse.lock_released:
                h.db.fsync(h.kind, h.fd, datasync)

    @_errors
    def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._count("unlink")
        if parent_inode != ROOT:
            raise llfuse.FUSEError(errno.ENOENT)
        text = os.fsdecode(name)
        if text in _SPECIAL:
            raise llfuse.FUSEError(errno.EACCES)
        db_name, kind = parse_name(text)
        db = self.store.db(db_name)
        if db is None or not db.exists:
            raise llfuse.FUSEError(errno.ENOENT)
        if kind is None:
            raise llfuse.FUSEError(errno.EACCES)
        internal = self._internal(ctx)
        with llfuse.lock_released:
            if internal:
                os.unlink(db.path(kind))  # the daemon's own clean-up: no commit, no role check
            else:
                db.unlink(kind)

    # -- directory ------------------------------------------------------------------------------

    def opendir(self, inode: int, ctx: Any) -> int:
        self._count("opendir")
        if inode != ROOT:
            raise llfuse.FUSEError(errno.ENOTDIR)
        return inode

    def _listing(self) -> Iterator[tuple[str, llfuse.EntryAttributes]]:
        for name, inode in _SPECIAL.items():
            try:
                yield name, self._special_attr(inode)
            except llfuse.FUSEError:
                continue
        for db in sorted(self.store.databases(), key=lambda d: d.name):
            if not db.exists:
                continue
            for kind, slot in _KIND_SLOT.items():
                if db.path(kind).exists():
                    try:
                        yield db.name + kind.value, self._attr(db, kind, self._inode(db.name, slot))
                    except FileNotFoundError:
                        continue
            yield db.name + "-pos", self._attr(db, None, self._inode(db.name, _POS))

    @_errors
    def readdir(self, fh: int, off: int) -> Iterator[tuple[bytes, llfuse.EntryAttributes, int]]:
        self._count("readdir")
        for i, (name, attr) in enumerate(self._listing()):
            if i >= off:
                yield os.fsencode(name), attr, i + 1

    def releasedir(self, fh: int) -> None:
        self._count("releasedir")

    @_errors
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        # SQLite syncs the directory after deleting a journal; the entries live in several
        # backing directories, one per database.
        self._count("fsyncdir")
        with llfuse.lock_released:
            for db in self.store.databases():
                fd = os.open(db.dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    @_errors
    def statfs(self, ctx: Any) -> llfuse.StatvfsData:
        self._count("statfs")
        st = os.statvfs(self.store.data_dir)
        out = llfuse.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(st, field))
        return out

    def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self._count("access")
        return True  # default_permissions: the kernel checks modes itself
