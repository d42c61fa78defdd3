"""Point-in-time restore and archive browsing.

restore(): read the manifest (one GET; rebuilt from a listing plus HEADs if it is missing or
corrupt), plan (plan.plan_restore), download the plan's objects in parallel into a temporary
directory beside the output, verify each (every checksum, and that it is the object the
manifest describes), and re-plan around any object that is missing or corrupt. Then apply the
objects in order to OUT.tmp - checking each pre-apply checksum against the database's and each
post-apply checksum after it - fsync, check that the file's checksum is the plan's last
post-apply checksum, run PRAGMA integrity_check, rename to OUT and fsync the directory.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from litefs.archive.layout import (Layout, Manifest, ObjectEntry, format_time,
                                   is_object_name, parse_time)
from litefs.archive.plan import RestorePlan, plan_restore, window
from litefs.archive.store import ObjectNotFound, ObjectStore, StoreUnavailable
from litefs.config import parse_duration
from litefs.errors import ArchiveError, LTXError, RestoreError, UsageError
from litefs.ltx.checksum import DatabaseChecksum, database_checksum
from litefs.ltx.decoder import Decoder
from litefs.ltx.files import verify_file
from litefs.ltx.format import CHECKSUM_FLAG, HEADER_SIZE, TRAILER_SIZE, Header, Trailer

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int, int], None]  # objects done, objects total, bytes done, bytes total

MAX_REPLANS = 16
_GET_ATTEMPTS = 3


# ---------------------------------------------------------------------------------------------
# Targets


def parse_target_time(text: str, now: float | None = None) -> int:
    """RFC 3339, unix seconds, or relative to now ("-15m", "-1h30m"): milliseconds since the epoch."""
    s = text.strip()
    if not s:
        raise UsageError("empty time")
    now = time.time() if now is None else now
    if s == "now":
        return int(now * 1000)
    if s[0] in "+-":
        try:
            return int((now + parse_duration(s)) * 1000)
        except ValueError as exc:
            raise UsageError(f"invalid relative time {text!r}: {exc}") from None
    try:
        return int(round(float(s) * 1000))
    except ValueError:
        pass
    try:
        return parse_time(s)
    except ValueError:
        raise UsageError(f"invalid time {text!r}: expected RFC 3339 (2025-01-02T03:04:05Z), unix seconds, "
                         "or a relative time such as -15m") from None


def parse_txid(text: str) -> int:
    """A TXID in decimal, or hex with 0x or as 16 hex digits."""
    s = text.strip().lower()
    try:
        if s.startswith("0x"):
            v = int(s, 16)
        elif len(s) == 16:
            v = int(s, 16)
        else:
            v = int(s, 10)
    except ValueError:
        raise UsageError(f"invalid TXID {text!r}: decimal, 0x-hex or 16 hex digits") from None
    if v < 1:
        raise UsageError(f"invalid TXID {text!r}: TXIDs start at 1")
    return v


# ---------------------------------------------------------------------------------------------
# Manifests


def list_databases(store: ObjectStore, layout: Layout) -> list[str]:
    root = layout.root
    return [d[len(root):].rstrip("/") for d in store.list_dirs(root)]


def resolve_db(store: ObjectStore, layout: Layout, db: str | None) -> str:
    if db:
        return db
    dbs = list_databases(store, layout)
    if len(dbs) == 1:
        return dbs[0]
    if not dbs:
        raise RestoreError(f"no databases in the archive at {store.description}/{layout.prefix}")
    raise UsageError(f"the archive holds several databases ({', '.join(dbs)}); choose one with --db")


def _entry_from_object(store: ObjectStore, key: str, name: str, size: int) -> ObjectEntry | None:
    info = store.head(key)
    if info is None:
        return None
    try:
        return ObjectEntry.from_metadata(name, info.size, info.metadata or {})
    except ArchiveError:
        pass
    # No metadata (e.g. copied without it): read the header and the trailer.
    try:
        header = Header.unpack(store.get_range(key, 0, HEADER_SIZE))
        trailer = Trailer.unpack(store.get_range(key, info.size - TRAILER_SIZE, TRAILER_SIZE))
    except (LTXError, ObjectNotFound):
        log.info("%s: not a readable LTX object; ignored", key)
        return None
    level = int(name.split("/", 1)[0], 16)
    return ObjectEntry.from_ltx(level, header, trailer, info.size)


def rebuild_manifest(store: ObjectStore, layout: Layout, db: str, parallel: int = 16) -> Manifest:
    """A manifest rebuilt from a listing and one HEAD per object (the slow path)."""
    prefix = layout.db_prefix(db)
    items = [(i.key, i.key[len(prefix):], i.size) for i in store.list(prefix) if is_object_name(i.key[len(prefix):])]
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        entries = list(pool.map(lambda it: _entry_from_object(store, *it), items))
    m = Manifest(db)
    for e in entries:
        if e is not None:
            m.add(e)
    return m


def load_manifest(store: ObjectStore, layout: Layout, db: str) -> tuple[Manifest, list[str]]:
    """The manifest and notes about how it was obtained."""
    key = layout.manifest_key(db)
    try:
        return Manifest.loads(store.get(key), db), []
    except ObjectNotFound:
        note = f"{key} is missing; rebuilt the index from a listing"
    except StoreUnavailable:
        raise
    except ArchiveError as exc:
        note = f"{exc}; rebuilt the index from a listing"
    log.info("%s", note)
    m = rebuild_manifest(store, layout, db)
    if not m.objects:
        raise RestoreError(f"no archive for database {db!r} at {store.description}"
                           f"{'/' + layout.prefix if layout.prefix else ''}")
    return m, [note]


# ---------------------------------------------------------------------------------------------
# Restore


@dataclass
class RestoreResult:
    db: str
    output: str
    plan: RestorePlan
    dry_run: bool = False
    skipped: bool = False
    fetched: int = 0
    fetched_bytes: int = 0
    replans: int = 0
    excluded: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "db": self.db, "output": self.output, "dryRun": self.dry_run,
            "restored": self.plan.point.to_json() if self.plan else None,
            "plan": self.plan.to_json() if self.plan else None,
            "fetchedObjects": self.fetched, "fetchedBytes": self.fetched_bytes,
            "replans": self.replans, "excluded": dict(self.excluded),
            "notes": list(self.notes), "seconds": round(self.seconds, 3),
        }


class _ApplyFailed(Exception):
    def __init__(self, entry: ObjectEntry, reason: str) -> None:
        super().__init__(reason)
        self.entry = entry
        self.reason = reason


def _download(store: ObjectStore, layout: Layout, db: str, entry: ObjectEntry, path: Path) -> tuple[Header, Trailer]:
    key = layout.object_key(db, entry)
    for attempt in range(_GET_ATTEMPTS):
        try:
            store.get_to_file(key, path)
            break
        except StoreUnavailable:
            if attempt == _GET_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * 2 ** attempt)
    header, trailer = verify_file(path)
    why = entry.matches(header, trailer)
    if why:
        raise LTXError(f"not the object the manifest describes: {why}")
    return header, trailer


def _apply(plan: list[ObjectEntry], files: dict[str, tuple[Path, Header, Trailer]], fd: int) -> tuple[int, int]:
    """Apply the plan's objects in order to an empty file; returns (TXID, checksum)."""
    sums: DatabaseChecksum | None = None
    txid = 0
    os.ftruncate(fd, 0)
    for entry in plan:
        path, header, trailer = files[entry.name]
        ps = header.page_size
        if header.is_snapshot:
            os.ftruncate(fd, 0)
            sums = DatabaseChecksum(ps)
        else:
            current = sums.value if sums is not None else CHECKSUM_FLAG
            if header.min_txid != txid + 1:
                raise _ApplyFailed(entry, f"TXID {header.min_txid:016x} does not follow {txid:016x}")
            if header.pre_apply_checksum != current:
                raise _ApplyFailed(entry, f"pre-apply checksum {header.pre_apply_checksum:016x} does not match the "
                                          f"database's {current:016x}")
            if sums is None or sums.page_size != ps:
                sums = DatabaseChecksum(ps)
        if header.commit == 0:
            os.ftruncate(fd, 0)
            sums = None
        else:
            assert sums is not None
            try:
                with open(path, "rb") as f:
                    for batch in Decoder(f).batches():
                        view = memoryview(batch.buf)
                        for pgno, off in zip(batch.pgnos, batch.offsets):
                            os.pwrite(fd, view[off:off + ps], (pgno - 1) * ps)
                        sums.set_many(batch.pgnos, batch.checksums)
            except LTXError as exc:
                raise _ApplyFailed(entry, str(exc)) from None
            os.ftruncate(fd, header.commit * ps)
            sums.truncate(header.commit)
        value = sums.value if sums is not None else CHECKSUM_FLAG
        if value != trailer.post_apply_checksum:
            raise _ApplyFailed(entry, f"database checksum {value:016x} after apply does not match the post-apply "
                                      f"checksum {trailer.post_apply_checksum:016x}")
        txid = header.max_txid
    return txid, (sums.value if sums is not None else CHECKSUM_FLAG)


def integrity_check(path: str | os.PathLike) -> list[str]:
    """PRAGMA integrity_check on a file, read-only and without creating -wal/-shm files."""
    if os.path.getsize(path) == 0:
        return ["ok"]
    uri = Path(path).resolve().as_uri() + "?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        conn.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(store: ObjectStore, layout: Layout, db: str | None, output: str | os.PathLike | None, *,
            txid: int | None = None, at: int | None = None, parallel: int = 8, dry_run: bool = False,
            if_not_exists: bool = False, progress: Progress | None = None,
            max_replans: int = MAX_REPLANS) -> RestoreResult:
    """Restore `db` to TXID `txid`, the time `at` (ms), or its latest state, into `output`."""
    t0 = time.monotonic()
    db = resolve_db(store, layout, db)
    out = Path(output) if output is not None else None
    if out is None and not dry_run:
        raise UsageError("an output path is required (-o OUT)")
    if out is not None and not dry_run:
        if out.exists() or out.is_symlink():
            if if_not_exists:
                return RestoreResult(db, str(out), None, skipped=True,  # type: ignore[arg-type]
                                     notes=[f"{out} exists; nothing restored"])
            raise UsageError(f"{out} already exists; refusing to overwrite it")
        for suffix in ("-wal", "-journal", "-shm"):
            side = out.with_name(out.name + suffix)
            if side.exists():
                raise UsageError(f"{side} exists; remove it first (SQLite would apply it to the restored database)")
    manifest, notes = load_manifest(store, layout, db)
    excluded: dict[str, str] = {}
    plan = plan_restore(manifest.objects, txid=txid, at=at)
    result = RestoreResult(db, str(out) if out else "", plan, dry_run=dry_run, notes=notes + plan.notes)
    if dry_run:
        result.seconds = time.monotonic() - t0
        return result

    assert out is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.restore-", dir=out.parent))
    files: dict[str, tuple[Path, Header, Trailer]] = {}
    lock = threading.Lock()
    ok = False
    try:
        for attempt in range(max_replans + 1):
            if attempt:
                plan = plan_restore(manifest.objects, txid=txid, at=at, excluded=excluded)
                result.plan = plan
                result.replans = attempt
                result.notes = notes + plan.notes
            need = [o for o in plan.objects if o.name not in files]
            total_bytes = sum(o.size for o in plan.objects)
            done = [len(plan.objects) - len(need), sum(o.size for o in plan.objects if o.name in files)]
            if progress:
                progress(done[0], len(plan.objects), done[1], total_bytes)

            def fetch(entry: ObjectEntry) -> None:
                path = work / entry.name.replace("/", "-")
                try:
                    header, trailer = _download(store, layout, db, entry, path)
                except ObjectNotFound:
                    with lock:
                        excluded[entry.name] = "missing from the store"
                    return
                except LTXError as exc:
                    path.unlink(missing_ok=True)
                    with lock:
                        excluded[entry.name] = f"corrupt: {exc}"
                    return
                with lock:
                    files[entry.name] = (path, header, trailer)
                    result.fetched += 1
                    result.fetched_bytes += path.stat().st_size
                    done[0] += 1
                    done[1] += entry.size
                    if progress:
                        progress(done[0], len(plan.objects), done[1], total_bytes)

            with ThreadPoolExecutor(max(1, parallel)) as pool:
                list(pool.map(fetch, need))
            bad = [o for o in plan.objects if o.name in excluded]
            if bad:
                for o in bad:
                    log.info("restore %s: %s is unusable (%s); re-planning around it", db, o.name, excluded[o.name])
                continue
            fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                try:
                    got_txid, got_sum = _apply(plan.objects, files, fd)
                except _ApplyFailed as exc:
                    excluded[exc.entry.name] = f"does not apply: {exc.reason}"
                    log.info("restore %s: %s does not apply (%s); re-planning around it", db, exc.entry.name,
                             exc.reason)
                    continue
                os.fsync(fd)
            finally:
                os.close(fd)
            break
        else:
            raise RestoreError(f"cannot restore {db}: gave up after {max_replans} re-plans; unusable objects: "
                               + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
        result.excluded = dict(excluded)
        if (got_txid, got_sum) != (plan.txid, plan.checksum):
            raise RestoreError(f"restored TXID {got_txid:016x} checksum {got_sum:016x}, the plan expected "
                               f"{plan.txid:016x} checksum {plan.checksum:016x}")
        on_disk = database_checksum(tmp_out)
        if on_disk != plan.checksum:
            raise RestoreError(f"the restored file's checksum {on_disk:016x} is not the archive's post-apply "
                               f"checksum {plan.checksum:016x} at TXID {plan.txid:016x}")
        problems = integrity_check(tmp_out)
        if problems != ["ok"]:
            raise RestoreError(f"the restored database fails PRAGMA integrity_check: {'; '.join(problems[:5])}")
        os.replace(tmp_out, out)
        _fsync_dir(out.parent)
        ok = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok:
            tmp_out.unlink(missing_ok=True)
    result.seconds = time.monotonic() - t0
    return result


# ---------------------------------------------------------------------------------------------
# Browsing


def describe_database(store: ObjectStore, layout: Layout, db: str) -> dict:
    """What `archive ls` shows for one database: its manifest checked against a listing."""
    manifest, notes = load_manifest(store, layout, db)
    prefix = layout.db_prefix(db)
    listed = {i.key[len(prefix):]: i for i in store.list(prefix)}
    objects = []
    for o in sorted(manifest.objects, key=lambda o: (o.level, o.min_txid, o.max_txid)):
        item = {"level": o.level, "name": o.name, "key": prefix + o.name, **o.to_json()}
        if o.name not in listed:
            item["missing"] = True
        objects.append(item)
    known = manifest.names() | {"manifest.json"}
    unindexed = [{"key": prefix + n, "size": i.size, "deleting": n in manifest.deleting}
                 for n, i in sorted(listed.items()) if n not in known]
    w = window(manifest.objects)
    levels: dict[int, dict] = {}
    for o in manifest.objects:
        lv = levels.setdefault(o.level, {"level": o.level, "objects": 0, "bytes": 0})
        lv["objects"] += 1
        lv["bytes"] += o.size
    return {
        "db": db,
        "window": w.to_json() if w else None,
        "levels": [levels[k] for k in sorted(levels)],
        "objects": objects,
        "unindexed": unindexed,
        "updated": format_time(manifest.updated) if manifest.updated else None,
        "notes": notes,
    }


__all__ = ["RestoreResult", "describe_database", "integrity_check", "list_databases", "load_manifest",
           "parse_target_time", "parse_txid", "rebuild_manifest", "resolve_db", "restore"]
