"""Point-in-time restore and archive browsing.

restore():

1. Read the manifest (one GET; rebuilt from a listing plus HEADs if it is missing or corrupt).
   It indexes the compacted levels and the snapshots.
2. From them, find the newest compacted state b the target can start from, and list level 0 from
   b+1 on (one LIST with StartAfter, stopping at the target; one HEAD per bundle found, in
   parallel, for its commit times and checksums).
3. Plan (plan.plan_restore): the fewest objects from a snapshot to the target, possibly ending
   inside a bundle.
4. Download the plan's objects in parallel into a temporary directory beside the output and,
   as each arrives in plan order, decode it straight into OUT.tmp: every LTX file is verified
   while it is applied (file checksum, page rules, pre-apply checksum against the database's,
   post-apply checksum after it, and that it is the object the index describes). The database
   checksum is maintained page by page, so the output is never re-read for it. A missing or
   corrupt object is excluded and everything is re-planned (OUT.tmp starts over).
5. fsync, PRAGMA integrity_check, rename to OUT, fsync the directory.
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from litefs.archive.bundle import Segment, SegmentReader, segments, trailer_of
from litefs.archive.layout import (Layout, Manifest, ObjectEntry, format_time, is_object_name,
                                   parse_object_name, parse_time)
from litefs.archive.plan import Graph, Point, RestorePlan, plan_restore, window
from litefs.archive.store import ObjectNotFound, ObjectStore, StoreUnavailable
from litefs.config import parse_duration
from litefs.errors import ArchiveError, LTXError, RestoreError, UsageError
from litefs.ltx.checksum import DatabaseChecksum
from litefs.ltx.decoder import Decoder
from litefs.ltx.format import CHECKSUM_FLAG, HEADER_SIZE, TRAILER_SIZE, Header, Trailer
from litefs.native import crc64
from litefs.fsutil import fsync_dir

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int, int], None]  # objects done, objects total, bytes done, bytes total

MAX_REPLANS = 16
_GET_ATTEMPTS = 3
_IOV_MAX = 1024


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
# Manifests and listings


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


def _bundle_entry_from_bytes(path: Path, size: int) -> ObjectEntry:
    with open(path, "rb") as f:
        files = [(seg.header, trailer_of(f, seg)) for seg in segments(f)]
    return ObjectEntry.bundle(files, size)


def entry_from_object(store: ObjectStore, key: str, name: str, info_size: int | None = None,
                      scratch: Path | None = None) -> ObjectEntry | None:
    """An object's index entry from its metadata (one HEAD), or else from its bytes."""
    info = store.head(key)
    if info is None:
        return None
    try:
        return ObjectEntry.from_metadata(name, info.size, info.metadata or {})
    except ArchiveError:
        pass
    level, lo, hi = parse_object_name(name)
    try:
        if level == 0:
            # No metadata (copied without it): read the bundle's headers and trailers.
            fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=scratch)
            os.close(fd)
            try:
                store.get_to_file(key, tmp)
                entry = _bundle_entry_from_bytes(Path(tmp), info.size)
            finally:
                os.unlink(tmp)
        else:
            header = Header.unpack(store.get_range(key, 0, HEADER_SIZE))
            trailer = Trailer.unpack(store.get_range(key, info.size - TRAILER_SIZE, TRAILER_SIZE))
            entry = ObjectEntry.from_ltx(level, header, trailer, info.size)
    except (LTXError, ObjectNotFound):
        log.info("%s: not a readable archive object; ignored", key)
        return None
    if (entry.min_txid, entry.max_txid) != (lo, hi):
        log.info("%s: its contents cover TXIDs %d..%d, not what its name says; ignored", key, entry.min_txid,
                 entry.max_txid)
        return None
    return entry


def _entries(store: ObjectStore, items: list[tuple[str, str, int]], parallel: int) -> list[ObjectEntry]:
    if not items:
        return []
    if len(items) == 1 or parallel <= 1:
        got = [entry_from_object(store, *it) for it in items]
    else:
        with ThreadPoolExecutor(min(parallel, len(items))) as pool:
            got = list(pool.map(lambda it: entry_from_object(store, *it), items))
    return [e for e in got if e is not None]


def list_bundle_keys(store: ObjectStore, layout: Layout, db: str, start_txid: int = 0,
                     stop_txid: int | None = None) -> list[tuple[str, str, int]]:
    """(key, name, size) of the level-0 bundles whose min TXID is in [start_txid, stop_txid]:
    one LIST with StartAfter, which stops paging once past stop_txid."""
    prefix = layout.db_prefix(db)
    after = layout.l0_start_after(db, start_txid) if start_txid > 0 else None
    out = []
    for info in store.list(layout.level_prefix(db, 0), start_after=after):
        name = info.key[len(prefix):]
        try:
            level, lo, _ = parse_object_name(name)
        except ArchiveError:
            continue
        if level != 0:
            continue
        if stop_txid is not None and lo > stop_txid:
            break
        out.append((info.key, name, info.size))
    return out


def list_bundles(store: ObjectStore, layout: Layout, db: str, start_txid: int = 0, stop_txid: int | None = None,
                 parallel: int = 8) -> list[ObjectEntry]:
    """Index entries of the bundles whose min TXID is in [start_txid, stop_txid] (LIST, then HEADs)."""
    return _entries(store, list_bundle_keys(store, layout, db, start_txid, stop_txid), parallel)


def rebuild_manifest(store: ObjectStore, layout: Layout, db: str, parallel: int = 16) -> Manifest:
    """A manifest rebuilt from a listing of levels 1..9 and one HEAD per object (the slow path).

    Which bundles are garbage is not known any more (l0 start 1), nor are the recorded gaps.
    """
    prefix = layout.db_prefix(db)
    items = []
    for i in store.list(prefix, start_after=layout.above_l0(db)):
        name = i.key[len(prefix):]
        if is_object_name(name) and not name.startswith("0000/"):
            items.append((i.key, name, i.size))
    m = Manifest(db)
    for e in _entries(store, items, parallel):
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
    if not m.objects and not list_bundle_keys(store, layout, db):
        raise RestoreError(f"no archive for database {db!r} at {store.description}"
                           f"{'/' + layout.prefix if layout.prefix else ''}")
    return m, [note]


def l0_range(compacted: list[ObjectEntry], *, txid: int | None = None, at: int | None = None
             ) -> tuple[int, int | None] | None:
    """Which bundles a target needs: (first min TXID, last min TXID or None for all), or None.

    Start from the newest compacted state the target can begin at (the furthest reach of the
    compacted levels without passing it); the bundles after it lead to the target.
    """
    g = Graph(compacted)
    if txid is not None:
        below = [n for n in g.reachable_nodes if n[0] <= txid]
        if not below:
            return None
        b = max(below, key=lambda n: (n[0], g.ts[n]))
        return None if b[0] == txid else (b[0] + 1, txid)
    if at is not None:
        below = [n for n in g.reachable_nodes if g.eff[n] <= at]
        if not below:
            return None
        b = max(below, key=lambda n: (n[0], g.ts[n]))
        after = [n[0] for n in g.nodes if n[0] > b[0]]
        return (b[0] + 1, min(after) if after else None)
    if not g.reachable_nodes:
        return (0, None)
    b = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
    return (b[0] + 1, None)


# ---------------------------------------------------------------------------------------------
# Restore


@dataclass
class RestoreResult:
    db: str
    output: str
    plan: RestorePlan
    restored: Point | None = None
    dry_run: bool = False
    skipped: bool = False
    fetched: int = 0
    fetched_bytes: int = 0
    replans: int = 0
    excluded: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def point(self) -> Point | None:
        """The state restored (for a dry run, the plan's, when known before applying)."""
        return self.restored or (self.plan.point if self.plan else None)

    def to_json(self) -> dict:
        pt = self.point
        return {
            "db": self.db, "output": self.output, "dryRun": self.dry_run,
            "restored": pt.to_json() if pt else None,
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


def _write_pages(fd: int, batch, ps: int) -> None:
    """pwrite a batch's pages, one pwritev per run of consecutive page numbers."""
    view = memoryview(batch.buf)
    pgnos, offs = batch.pgnos, batch.offsets
    n = len(pgnos)
    i = 0
    while i < n:
        j = i + 1
        while j < n and pgnos[j] == pgnos[j - 1] + 1 and j - i < _IOV_MAX:
            j += 1
        pos = (pgnos[i] - 1) * ps
        if j - i == 1:
            bufs = [view[offs[i]:offs[i] + ps]]
        else:
            bufs = [view[offs[k]:offs[k] + ps] for k in range(i, j)]
        want = (j - i) * ps
        done = os.pwritev(fd, bufs, pos)
        if done != want:  # short write: finish it the slow way
            data = b"".join(bytes(b) for b in bufs)[done:]
            while data:
                w = os.pwrite(fd, data, pos + done)
                done += w
                data = data[w:]
        i = j


class _Sums(DatabaseChecksum):
    """DatabaseChecksum with a fast path for the common case of a restore: pages appended in
    order (a snapshot, a growing database), one array extend and one XOR fold per batch."""

    def set_batch(self, pgnos, checksums) -> None:
        n = len(pgnos)
        first = pgnos[0] if n else 0
        if n and first == len(self.sums) + 1 and pgnos[-1] == first + n - 1 and \
                not (first <= self.lock_pgno <= pgnos[-1]):
            self.sums.extend(checksums)
            self._xor ^= crc64.xor_fold(checksums) & ~CHECKSUM_FLAG
        else:
            self.set_many(pgnos, checksums)


class _Applier:
    """Applies LTX files to OUT.tmp, verifying each as it is decoded."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.ftruncate(fd, 0)
        self.sums: _Sums | None = None
        self.txid = 0
        self.checksum = 0  # the empty database before anything: (0, 0)
        self.time = 0

    def _apply_one(self, entry: ObjectEntry, reader: SegmentReader) -> tuple[Header, Trailer]:
        try:
            dec = Decoder(reader)
        except LTXError as exc:
            raise _ApplyFailed(entry, f"corrupt: {exc}") from None
        h = dec.header
        ps = h.page_size
        if h.is_snapshot:
            os.ftruncate(self.fd, 0)
            self.sums = _Sums(ps)
        else:
            current = self.sums.value if self.sums is not None else CHECKSUM_FLAG
            if self.txid == 0 or h.min_txid != self.txid + 1:
                raise _ApplyFailed(entry, f"TXID {h.min_txid:016x} does not follow {self.txid:016x}")
            if h.pre_apply_checksum != current:
                raise _ApplyFailed(entry, f"pre-apply checksum {h.pre_apply_checksum:016x} does not match the "
                                          f"database's {current:016x}")
            if self.sums is None or self.sums.page_size != ps:
                self.sums = _Sums(ps)
        try:
            if h.commit == 0:
                dec.close()
                os.ftruncate(self.fd, 0)
                self.sums = None
            else:
                sums = self.sums
                assert sums is not None
                for batch in dec.batches():
                    _write_pages(self.fd, batch, ps)
                    sums.set_batch(batch.pgnos, batch.checksums)
                os.ftruncate(self.fd, h.commit * ps)
                sums.truncate(h.commit)
        except LTXError as exc:
            raise _ApplyFailed(entry, f"corrupt: {exc}") from None
        trailer = dec.trailer
        assert trailer is not None
        value = self.sums.value if self.sums is not None else CHECKSUM_FLAG
        if value != trailer.post_apply_checksum:
            raise _ApplyFailed(entry, f"database checksum {value:016x} after TXID {h.max_txid:016x} does not match "
                                      f"the post-apply checksum {trailer.post_apply_checksum:016x}")
        self.txid = h.max_txid
        self.checksum = value
        return h, trailer

    def apply(self, entry: ObjectEntry, path: Path, *, stop_txid: int | None = None, stop_time: int | None = None,
              base_time: int = 0) -> None:
        """Apply one object; a bundle only up to stop_txid / the last commit at or before stop_time."""
        with open(path, "rb") as f:
            if entry.is_bundle:
                try:
                    segs = segments(f)
                except LTXError as exc:
                    raise _ApplyFailed(entry, f"corrupt: {exc}") from None
            else:
                f.seek(0, os.SEEK_END)
                segs = [Segment(0, f.tell(), None)]  # type: ignore[arg-type]
            if stop_time is not None:
                self.time = max(self.time, base_time)
            first_min = segs[0].header.min_txid if segs[0].header is not None else None
            if first_min is not None and first_min != entry.min_txid:
                raise _ApplyFailed(entry, f"not the object the index describes: it starts at TXID {first_min:016x}")
            h = trailer = None
            for i, seg in enumerate(segs):
                if seg.header is not None:
                    sh = seg.header
                    if stop_txid is not None:
                        if sh.min_txid > stop_txid:
                            return
                        if sh.max_txid > stop_txid:
                            raise RestoreError(
                                f"cannot restore TXID {stop_txid:016x} ({stop_txid}) exactly: {entry.name} holds "
                                f"TXIDs {sh.min_txid}..{sh.max_txid} as one LTX file; the nearest restorable "
                                f"points are TXIDs {sh.min_txid - 1} and {sh.max_txid}")
                    if stop_time is not None and max(self.time, sh.timestamp) > stop_time:
                        return
                h, trailer = self._apply_one(entry, SegmentReader(f, seg.offset, seg.length))
                if i == 0 and (h.min_txid != entry.min_txid
                               or (not h.is_snapshot and h.pre_apply_checksum != entry.pre_apply)):
                    raise _ApplyFailed(entry, "not the object the index describes (first TXID or pre-apply checksum)")
                self.time = max(self.time, h.timestamp)
                if stop_txid is not None and h.max_txid == stop_txid:
                    return
            assert h is not None and trailer is not None
            why = None
            if h.max_txid != entry.max_txid:
                why = f"it ends at TXID {h.max_txid:016x}"
            elif trailer.post_apply_checksum != entry.post_apply:
                why = f"post-apply checksum {trailer.post_apply_checksum:016x}, the index says {entry.post_apply:016x}"
            elif entry.file_checksum and trailer.file_checksum != entry.file_checksum:
                why = f"file checksum {trailer.file_checksum:016x}, the index says {entry.file_checksum:016x}"
            if why:
                raise _ApplyFailed(entry, f"not the object the index describes: {why}")
            if not entry.is_bundle:
                self.time = max(self.time, entry.last_ts)


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


class _Planner:
    """Plans against the manifest plus the level-0 bundles the target needs (listed on demand)."""

    def __init__(self, store: ObjectStore, layout: Layout, db: str, manifest: Manifest, parallel: int) -> None:
        self.store, self.layout, self.db, self.manifest, self.parallel = store, layout, db, manifest, parallel
        self.bundles: dict[str, ObjectEntry] = {}
        self.listed: list[tuple[int, int | None]] = []

    def _covered(self, lo: int, hi: int | None) -> bool:
        return any(a <= lo and (b is None or (hi is not None and hi <= b)) for a, b in self.listed)

    def plan(self, txid: int | None, at: int | None, excluded: dict[str, str]) -> RestorePlan:
        compacted = [o for o in self.manifest.objects if o.name not in excluded]
        rng = l0_range(compacted, txid=txid, at=at)
        if rng is not None and not self._covered(*rng):
            for e in list_bundles(self.store, self.layout, self.db, rng[0], rng[1], self.parallel):
                self.bundles[e.name] = e
            self.listed.append(rng)
        objects = list(self.manifest.objects)
        if rng is not None:
            lo, hi = rng
            objects += [e for e in self.bundles.values() if e.min_txid >= lo and (hi is None or e.min_txid <= hi)]
        return plan_restore(objects, txid=txid, at=at, excluded=excluded, floor_txid=self.manifest.l0_start - 1)


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
    planner = _Planner(store, layout, db, manifest, parallel)
    excluded: dict[str, str] = {}
    plan = planner.plan(txid, at, excluded)
    result = RestoreResult(db, str(out) if out else "", plan, dry_run=dry_run, notes=notes + plan.notes)
    if dry_run:
        result.seconds = time.monotonic() - t0
        return result

    assert out is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.restore-", dir=out.parent))
    files: dict[str, Path] = {}
    lock = threading.Lock()
    ok = False
    applier: _Applier | None = None

    def fetch(entry: ObjectEntry) -> Path:
        path = work / entry.name.replace("/", "-")
        key = layout.object_key(db, entry)
        for attempt in range(_GET_ATTEMPTS):
            try:
                store.get_to_file(key, path)
                break
            except StoreUnavailable:
                if attempt == _GET_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * 2 ** attempt)
        with lock:
            files[entry.name] = path
            result.fetched += 1
            result.fetched_bytes += path.stat().st_size
        return path

    try:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            for attempt in range(max_replans + 1):
                if attempt:
                    plan = planner.plan(txid, at, excluded)
                    result.plan = plan
                    result.replans = attempt
                    result.notes = notes + plan.notes
                total_bytes = plan.size
                futures: dict[str, Future] = {o.name: pool.submit(fetch, o) for o in plan.objects
                                              if o.name not in files}
                done_n, done_b = 0, 0
                if progress:
                    progress(done_n, len(plan.objects), done_b, total_bytes)
                fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                failed = False
                try:
                    applier = _Applier(fd)
                    for i, entry in enumerate(plan.objects):
                        fut = futures.get(entry.name)
                        try:
                            path = fut.result() if fut is not None else files[entry.name]
                        except ObjectNotFound:
                            excluded[entry.name] = "missing from the store"
                            log.info("restore %s: %s is missing; re-planning around it", db, entry.name)
                            failed = True
                            break
                        last = i == len(plan.objects) - 1
                        try:
                            applier.apply(entry, path, stop_txid=plan.stop_txid if last else None,
                                          stop_time=plan.stop_time if last else None, base_time=plan.base_time)
                        except _ApplyFailed as exc:
                            excluded[exc.entry.name] = exc.reason
                            files.pop(exc.entry.name, None)
                            log.info("restore %s: %s is unusable (%s); re-planning around it", db, exc.entry.name,
                                     exc.reason)
                            failed = True
                            break
                        done_n += 1
                        done_b += entry.size
                        if progress:
                            progress(done_n, len(plan.objects), done_b, total_bytes)
                    if not failed:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                    if failed:
                        for f in futures.values():
                            f.cancel()
                if not failed:
                    break
            else:
                raise RestoreError(f"cannot restore {db}: gave up after {max_replans} re-plans; unusable objects: "
                                   + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
        assert applier is not None
        result.excluded = dict(excluded)
        got = Point(applier.txid, applier.checksum, applier.time)
        if plan.point is not None:
            if (got.txid, got.checksum) != (plan.point.txid, plan.point.checksum):
                raise RestoreError(f"restored TXID {got.txid:016x} checksum {got.checksum:016x}, the plan expected "
                                   f"{plan.point.txid:016x} checksum {plan.point.checksum:016x}")
            got = plan.point
        elif plan.stop_txid is not None and got.txid != plan.stop_txid:
            raise RestoreError(f"cannot restore TXID {plan.stop_txid:016x} ({plan.stop_txid}): "
                               f"{plan.objects[-1].name} ends at TXID {got.txid:016x}")
        result.restored = got
        problems = integrity_check(tmp_out)
        if problems != ["ok"]:
            raise RestoreError(f"the restored database fails PRAGMA integrity_check: {'; '.join(problems[:5])}")
        os.replace(tmp_out, out)
        fsync_dir(out.parent)
        ok = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not ok:
            tmp_out.unlink(missing_ok=True)
    result.seconds = time.monotonic() - t0
    return result


# ---------------------------------------------------------------------------------------------
# Browsing


def describe_database(store: ObjectStore, layout: Layout, db: str, *, all_bundles: bool = False) -> dict:
    """What `archive ls` shows for one database.

    The manifest (one GET) checked against a listing of levels 1..9, plus the bundles after the
    compacted levels' head (one LIST of level 0 with StartAfter, and a HEAD per bundle). With
    all_bundles, every level-0 key is listed (no HEADs; bundles below the window are flagged).
    """
    manifest, notes = load_manifest(store, layout, db)
    prefix = layout.db_prefix(db)
    listed = {i.key[len(prefix):]: i for i in store.list(prefix, start_after=layout.above_l0(db))}
    g = Graph(manifest.objects)
    head = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n])) if g.reachable_nodes else (0, 0)
    tail = list_bundles(store, layout, db, head[0] + 1)
    objects = []
    for o in sorted(manifest.objects, key=lambda o: (o.level, o.min_txid, o.max_txid)):
        item = {"level": o.level, "name": o.name, "key": prefix + o.name, **o.to_json()}
        if o.name not in listed:
            item["missing"] = True
        objects.append(item)
    if all_bundles:
        tail_by_name = {e.name: e for e in tail}
        bundles = []
        for key, name, size in list_bundle_keys(store, layout, db):
            _, lo, hi = parse_object_name(name)
            e = tail_by_name.get(name)
            item = {"level": 0, "name": name, "key": key, **(e.to_json() if e else
                                                              {"min": "%016x" % lo, "max": "%016x" % hi, "size": size})}
            if hi < manifest.l0_start:
                item["belowWindow"] = True
            bundles.append(item)
    else:
        bundles = [{"level": 0, "name": e.name, "key": prefix + e.name, **e.to_json()} for e in tail]
    known = manifest.names() | {"manifest.json"}
    unindexed = [{"key": prefix + n, "size": i.size, "deleting": n in manifest.deleting}
                 for n, i in sorted(listed.items()) if n not in known and not n.startswith("0000/")]
    w = window(manifest.objects + tail, floor_txid=manifest.l0_start - 1, known_gaps=manifest.gaps)
    levels: dict[int, dict] = {}
    for o in manifest.objects:
        lv = levels.setdefault(o.level, {"level": o.level, "objects": 0, "bytes": 0})
        lv["objects"] += 1
        lv["bytes"] += o.size
    l0 = {"start": "%016x" % manifest.l0_start, "listedFrom": "%016x" % (0 if all_bundles else head[0] + 1),
          "complete": all_bundles, "objects": len(bundles), "bytes": sum(int(b["size"]) for b in bundles)}
    return {
        "db": db,
        "window": w.to_json() if w else None,
        "l0": l0,
        "levels": [levels[k] for k in sorted(levels)],
        "objects": bundles + objects,
        "unindexed": unindexed,
        "updated": format_time(manifest.updated) if manifest.updated else None,
        "notes": notes,
    }


__all__ = ["RestoreResult", "describe_database", "entry_from_object", "integrity_check", "l0_range",
           "list_bundle_keys", "list_bundles", "list_databases", "load_manifest", "parse_target_time", "parse_txid",
           "rebuild_manifest", "resolve_db", "restore"]
