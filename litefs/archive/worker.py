"""The archive worker: runs on the primary, uploads, compacts, snapshots and enforces retention.

One pass (`run_once`) does, for every database under `<data_dir>/dbs/*/ltx/`:

1. Load the database's manifest from the store the first time (and after a conflict), and
   reconcile it with a listing: objects a crashed worker wrote but never recorded are adopted
   if they chain onto the archive; records of objects that are gone are dropped.
2. Upload: the local LTX files after the archive's head that continue its checksum chain are
   compacted into one L0 object (at most `max_files_per_object` files each). A chain that
   starts at TXID 1 becomes a snapshot (level 9), so levels 0..8 never hold full images.
   If the local files cannot continue the chain (deleted before they were archived, or a
   snapshot replaced the database), a new lineage starts from a local snapshot file or from
   `snapshot_source(db)`; failing that the database is reported broken - never is a gap uploaded.
3. Compact each level k on its wall-clock boundary (floor(now / interval)): the level k-1
   objects after level k's high-water mark, in checksum-chained runs, become one object each.
4. Snapshot on the snapshot-interval boundary: the restore plan to the head, merged.
5. Retention (plan.select_deletions): only what no restore inside the window needs.
6. Write the manifest (conditionally on its ETag), then delete what it no longer names.

Every object is written with If-None-Match, so a second writer cannot overwrite one, and
before every write the new object must chain onto a state the archive can reach. The worker's
state is the store's: a restarted worker continues where the manifest and the listing say.
Store failures (StoreUnavailable) back off exponentially; the local files stay on disk (the
node's local retention must keep every file above `hwm(db)`), and the backlog drains, in
bounded batches, when the store returns.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from litefs.archive.layout import SNAPSHOT_LEVEL, Layout, Manifest, ObjectEntry, is_object_name
from litefs.archive.plan import Graph, plan_restore, select_deletions, source, window
from litefs.archive.store import ObjectNotFound, ObjectStore, PreconditionFailed, StoreUnavailable
from litefs.errors import ArchiveError, LitefsError, LTXError
from litefs.ltx.compactor import compact, read_ends
from litefs.ltx.files import verify_file
from litefs.ltx.format import Header, Trailer, parse_filename

log = logging.getLogger(__name__)

# Below the top compaction level, an object is thinned out once it is inside a higher level and
# older than KEEP_FACTOR x the next level's interval (L0: 10 x 30 s = 5 min by default).
KEEP_FACTOR = 10
MAX_FILES_PER_OBJECT = 512


class ArchiveConflict(ArchiveError):
    """Someone else wrote to this database's archive (a second writer)."""


class ChainBroken(ArchiveError):
    """The local files cannot continue the archive's checksum chain and no snapshot is available."""


# ---------------------------------------------------------------------------------------------
# Metrics


class ArchiveMetrics:
    """Prometheus metrics, one set per registry (so several workers can share one)."""

    _by_registry: dict[int, "ArchiveMetrics"] = {}
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.lag_txids = Gauge("litefs_archive_lag_txids", "Local TXIDs not yet archived", ["db"], registry=r)
        self.lag_seconds = Gauge("litefs_archive_lag_seconds",
                                 "Age of the oldest local commit not yet archived", ["db"], registry=r)
        self.backlog_bytes = Gauge("litefs_archive_backlog_bytes", "Bytes of local LTX files not yet archived",
                                   ["db"], registry=r)
        self.last_upload_age = Gauge("litefs_archive_last_upload_age_seconds",
                                     "Seconds since the last successful upload", ["db"], registry=r)
        self.last_upload_time = Gauge("litefs_archive_last_upload_timestamp_seconds",
                                      "Time of the last successful upload", ["db"], registry=r)
        self.hwm = Gauge("litefs_archive_hwm_txid", "Highest TXID durably archived", ["db"], registry=r)
        self.objects = Gauge("litefs_archive_objects", "Objects in the archive", ["db", "level"], registry=r)
        self.bytes = Gauge("litefs_archive_object_bytes", "Bytes in the archive", ["db", "level"], registry=r)
        self.compaction_seconds = Histogram("litefs_archive_compaction_seconds", "Compaction durations",
                                            ["db", "level"], registry=r,
                                            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
        self.puts = Counter("litefs_archive_puts", "Objects written", ["db", "kind"], registry=r)
        self.deletes = Counter("litefs_archive_deletes", "Objects deleted", ["db"], registry=r)
        self.errors = Counter("litefs_archive_errors", "Archive errors", ["db", "kind"], registry=r)
        self.chain_broken = Gauge("litefs_archive_chain_broken",
                                  "1 while the local files cannot continue the archive", ["db"], registry=r)
        self.store_up = Gauge("litefs_archive_store_up", "1 if the last store operation succeeded", ["db"],
                              registry=r)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry = REGISTRY) -> "ArchiveMetrics":
        with cls._lock:
            m = cls._by_registry.get(id(registry))
            if m is None:
                m = cls._by_registry[id(registry)] = cls(registry)
            return m


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class _Local:
    min_txid: int
    max_txid: int
    path: Path
    size: int


@dataclass
class _DB:
    name: str
    manifest: Manifest | None = None
    etag: str | None = None
    dirty: bool = False
    hwm: int = 0
    persisted_deleting: set[str] = field(default_factory=set)
    ends: dict[str, tuple[Header, Trailer]] = field(default_factory=dict)
    last_error: str | None = None
    last_upload: float | None = None
    local: list[_Local] = field(default_factory=list)


@dataclass
class PassReport:
    """What one pass did (for tests and logs)."""

    skipped: bool = False
    put: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    store_error: str | None = None


def _boundary_ms(now: float, interval: float) -> int:
    return int(math.floor(now / interval) * interval * 1000)


class ArchiveWorker:
    """Archives every database of a node. See the module docstring for one pass.

    The node must not delete a local LTX file whose max TXID is above `hwm(db)`
    (`local_retention_floor(db)` is the same number).
    """

    def __init__(self, config, store: ObjectStore, data_dir: str | os.PathLike,
                 clock: Callable[[], float] = time.time, metrics: ArchiveMetrics | None = None, *,
                 registry: CollectorRegistry | None = None,
                 snapshot_source: Callable[[str], str | os.PathLike | None] | None = None,
                 prefix: str | None = None, keep_factor: float = KEEP_FACTOR,
                 max_files_per_object: int = MAX_FILES_PER_OBJECT, backoff_max: float = 300.0,
                 writer_id: str | None = None) -> None:
        self.config = config
        self.store = store
        self.data_dir = Path(data_dir)
        self.layout = Layout(config.prefix if prefix is None else prefix)
        self.clock = clock
        self.metrics = metrics or ArchiveMetrics.for_registry(registry if registry is not None else REGISTRY)
        self.snapshot_source = snapshot_source
        self.intervals = [float(lvl.interval) for lvl in config.levels]  # L1..Ln
        self.top_level = len(self.intervals)
        self.keep_ms = {k: int(keep_factor * self.intervals[k] * 1000) for k in range(self.top_level)}
        self.max_files = max(1, max_files_per_object)
        self.backoff_max = backoff_max
        self.writer_id = writer_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._work = self.data_dir / "archive"
        self._tmp = self._work / "tmp"
        self._cache = self._work / "cache"
        self._dbs: dict[str, _DB] = {}
        self._lock = threading.RLock()
        self._cond = threading.Condition()
        self._notified = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._backoff_until = 0.0
        self._outage_since: float | None = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- public interface ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="litefs-archive", daemon=True)
        self._thread.start()

    def stop(self, flush: bool = True, timeout: float | None = 60.0) -> None:
        """Stop the thread; with flush, one last pass uploads what is pending (best effort)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if flush:
            try:
                self.run_once(flush=True)
            except Exception:  # pragma: no cover - logged, shutdown goes on
                log.exception("archive: final pass failed")

    def notify(self, db_name: str | None = None) -> None:
        """Wake the worker early (a commit happened); uploads still batch per upload-interval."""
        with self._cond:
            self._notified = True
            self._cond.notify_all()

    def hwm(self, db_name: str) -> int:
        """The highest TXID durably archived (named by a written manifest); 0 if unknown.

        Lock-free, so the node's retention never waits for a pass in progress.
        """
        st = self._dbs.get(db_name)
        return st.hwm if st else 0

    local_retention_floor = hwm

    def databases(self) -> list[str]:
        root = self.data_dir / "dbs"
        try:
            return sorted(p.name for p in root.iterdir() if (p / "ltx").is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def run_once(self, now: float | None = None, *, flush: bool = False) -> PassReport:
        """One synchronous pass over every database. Respects the store backoff unless flush."""
        with self._lock:
            now = self.clock() if now is None else now
            report = PassReport()
            if not flush and now < self._backoff_until:
                report.skipped = True
                for name in self.databases():  # keep lag and backlog current during an outage
                    st = self._dbs.setdefault(name, _DB(name))
                    self._scan(st)
                    self._update_metrics(st, now)
                return report
            failed = False
            for name in self.databases():
                st = self._dbs.setdefault(name, _DB(name))
                try:
                    self._process(st, now, report)
                    self.metrics.store_up.labels(name).set(1)
                    if st.last_error is not None:
                        log.info("archive %s: working again", name)
                        st.last_error = None
                    self.metrics.chain_broken.labels(name).set(0)
                except StoreUnavailable as exc:
                    self.metrics.store_up.labels(name).set(0)
                    self.metrics.errors.labels(name, "store").inc()
                    report.store_error = str(exc)
                    self._store_failed(exc, now)
                    failed = True
                    break
                except (LitefsError, OSError) as exc:
                    kind = "chain" if isinstance(exc, ChainBroken) else (
                        "conflict" if isinstance(exc, ArchiveConflict) else "error")
                    self.metrics.errors.labels(name, kind).inc()
                    if isinstance(exc, ChainBroken):
                        self.metrics.chain_broken.labels(name).set(1)
                    report.errors[name] = str(exc)
                    msg = f"archive {name}: {exc}"
                    if msg != st.last_error:
                        log.error("%s", msg)
                        st.last_error = msg
                finally:
                    self._update_metrics(st, now)
            if not failed and self._failures:
                log.info("archive store %s reachable again after %.0fs; draining the backlog",
                         self.store.description, now - (self._outage_since or now))
                self._failures = 0
                self._backoff_until = 0.0
                self._outage_since = None
            return report

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        interval = max(float(self.config.upload_interval), 0.01)
        next_run = time.monotonic()
        while True:
            with self._cond:
                while not self._stopping:
                    delay = next_run - time.monotonic()
                    if self._backoff_until:
                        delay = max(delay, self._backoff_until - self.clock())
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._stopping:
                    return
                self._notified = False
            try:
                self.run_once()
            except Exception:
                log.exception("archive: pass failed")
            next_run = time.monotonic() + interval

    def _store_failed(self, exc: Exception, now: float) -> None:
        self._failures += 1
        base = max(float(self.config.upload_interval), 0.5)
        delay = min(base * 2 ** (self._failures - 1), self.backoff_max)
        self._backoff_until = now + delay
        if self._outage_since is None:
            self._outage_since = now
            log.warning("archive store %s unavailable (%s); local LTX files are kept and will be uploaded "
                        "when it returns (retrying with backoff)", self.store.description, exc)
        else:
            log.debug("archive store still unavailable (%s); next try in %.1fs", exc, delay)

    # -- one database --------------------------------------------------------------------------

    def _process(self, st: _DB, now: float, report: PassReport) -> None:
        if st.manifest is None:
            self._load(st)
        m = st.manifest
        assert m is not None
        self._delete_persisted(st, report)
        self._upload(st, now, report)
        for k in range(1, self.top_level + 1):
            self._maybe_compact(st, k, now, report)
        self._maybe_snapshot(st, now, report)
        self._retention(st, now)
        if st.dirty:
            self._write_manifest(st, now)
        self._delete_persisted(st, report)
        self._sweep_cache(st)

    # manifest -----------------------------------------------------------------------------------

    def _load(self, st: _DB) -> None:
        key = self.layout.manifest_key(st.name)
        etag = None
        try:
            data, info = self.store.read(key)
            etag = info.etag
            m = Manifest.loads(data, st.name)
        except ObjectNotFound:
            m = Manifest(st.name)
        except StoreUnavailable:
            raise
        except ArchiveError as exc:
            log.error("archive %s: %s; rebuilding it from the listing", st.name, exc)
            m = Manifest(st.name)
        stored_head = self._head(m)[0] if etag else 0
        dirty = False
        prefix = self.layout.db_prefix(st.name)
        listed = {}
        for info in self.store.list(prefix):
            name = info.key[len(prefix):]
            if is_object_name(name):
                listed[name] = info
        missing = [o for o in m.objects if o.name not in listed]
        if missing:
            log.error("archive %s: the manifest names %d missing object(s) (%s); dropping them",
                      st.name, len(missing), ", ".join(o.name for o in missing[:3]))
            m.remove(missing)
            dirty = True
        known = m.names() | set(m.deleting)
        orphans = []
        for name in sorted(set(listed) - known):
            info = self.store.head(prefix + name)
            if info is None:
                continue
            try:
                orphans.append(ObjectEntry.from_metadata(name, info.size, info.metadata or {}))
            except ArchiveError as exc:
                log.info("archive %s: ignoring %s (%s)", st.name, name, exc)
        for entry in sorted(orphans, key=lambda o: (o.min_txid, -o.max_txid, o.level)):
            level_max = max((o.max_txid for o in m.objects if o.level == entry.level), default=0)
            g = Graph(m.objects)
            chains = entry.is_snapshot or g.reachable(source(entry))
            if entry.max_txid > level_max and chains:
                log.info("archive %s: adopting %s, written by an earlier run but not yet in the manifest",
                         st.name, entry.name)
                m.add(entry)
                dirty = True
            else:
                log.info("archive %s: ignoring %s: not in the manifest and does not extend it", st.name,
                         entry.name)
        st.persisted_deleting = {n for n in m.deleting if n in listed}
        m.deleting = sorted(st.persisted_deleting)
        st.manifest, st.etag, st.dirty = m, etag, dirty
        st.hwm = stored_head

    def _head(self, m: Manifest) -> tuple[int, int, int]:
        """(TXID, checksum, time) of the archive's latest reachable state; (0, 0, 0) when empty."""
        g = Graph(m.objects)
        if not g.reachable_nodes:
            return (0, 0, 0)
        n = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
        return (n[0], n[1], g.eff[n])

    def _write_manifest(self, st: _DB, now: float) -> None:
        m = st.manifest
        assert m is not None
        m.generation += 1
        m.writer = self.writer_id
        m.updated = int(now * 1000)
        head = self._head(m)
        w = window(m.objects)
        extra = {
            "head": {"txid": "%016x" % head[0], "postApply": "%016x" % head[1]} if head[0] else None,
            "window": w.to_json() if w else None,
        }
        key = self.layout.manifest_key(st.name)
        for attempt in range(2):
            try:
                if st.etag:
                    info = self.store.put(key, m.dumps(extra), {}, if_match=st.etag)
                else:
                    info = self.store.put(key, m.dumps(extra), {}, if_none_match=True)
                break
            except PreconditionFailed:
                # Our own earlier write, applied although the client saw an error? Then carry on.
                own = None
                if attempt == 0:
                    try:
                        data, cur = self.store.read(key)
                        if Manifest.loads(data, st.name).writer == self.writer_id:
                            own = cur.etag
                    except (ObjectNotFound, ArchiveError):
                        pass
                if own is None or own == st.etag:
                    st.manifest = None
                    raise ArchiveConflict(f"the manifest {key} changed since it was read (another writer?); "
                                          "reloading it") from None
                st.etag = own
        st.etag = info.etag
        st.dirty = False
        st.persisted_deleting = set(m.deleting)
        st.hwm = head[0]
        self.metrics.puts.labels(st.name, "manifest").inc()

    def _delete_persisted(self, st: _DB, report: PassReport) -> None:
        m = st.manifest
        if m is None or not st.persisted_deleting:
            return
        names = sorted(st.persisted_deleting)
        prefix = self.layout.db_prefix(st.name)
        self.store.delete(prefix + n for n in names)
        self.metrics.deletes.labels(st.name).inc(len(names))
        report.deleted.extend(prefix + n for n in names)
        for n in names:
            self._drop_cache(st.name, n)
        m.deleting = [n for n in m.deleting if n not in st.persisted_deleting]
        st.persisted_deleting = set()

    # writing objects ------------------------------------------------------------------------

    def _put(self, st: _DB, entry: ObjectEntry, path: Path, report: PassReport, kind: str) -> None:
        """Write one object after checking it chains onto the archive; adopt an identical one."""
        m = st.manifest
        assert m is not None
        if not entry.is_snapshot:
            g = Graph(m.objects)
            if not g.reachable(source(entry)):
                raise ArchiveError(f"refusing to write {entry.name}: TXID {entry.min_txid - 1:016x} with checksum "
                                   f"{entry.pre_apply:016x} is not a state the archive can reach")
        key = self.layout.object_key(st.name, entry)
        try:
            self.store.put(key, path, entry.metadata(), if_none_match=True)
        except PreconditionFailed:
            info = self.store.head(key)
            try:
                existing = ObjectEntry.from_metadata(entry.name, info.size, info.metadata or {}) if info else None
            except ArchiveError:
                existing = None
            if existing is None or (existing.pre_apply, existing.post_apply) != (entry.pre_apply, entry.post_apply):
                raise ArchiveConflict(f"{key} already exists with different content (another writer?)") from None
            log.info("archive %s: %s already exists with the same content; adopting it", st.name, entry.name)
            entry = existing
        else:
            self.metrics.puts.labels(st.name, kind).inc()
            report.put.append(key)
        m.add(entry)
        st.dirty = True

    def _tmpfile(self, st: _DB, hint: str) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / f"{st.name}.{hint}.{uuid.uuid4().hex[:8]}.ltx"

    def _cache_path(self, db: str, name: str) -> Path:
        return self._cache / db / name

    def _drop_cache(self, db: str, name: str) -> None:
        try:
            os.unlink(self._cache_path(db, name))
        except FileNotFoundError:
            pass

    def _sweep_cache(self, st: _DB) -> None:
        """Cached L0 objects are kept until they are inside L1, so compaction rarely downloads."""
        d = self._cache / st.name / "0000"
        if not d.is_dir() or st.manifest is None:
            return
        l1_max = max((o.max_txid for o in st.manifest.objects if o.level == 1), default=0)
        names = st.manifest.names()
        for p in d.iterdir():
            name = "0000/" + p.name
            parsed = parse_filename(p.name)
            if name not in names or parsed is None or parsed[1] <= l1_max:
                p.unlink(missing_ok=True)

    def _fetch(self, st: _DB, entry: ObjectEntry) -> tuple[Path, bool]:
        """A verified local copy of an archived object: (path, is_temporary)."""
        cached = self._cache_path(st.name, entry.name)
        if cached.exists():
            return cached, False
        tmp = self._tmpfile(st, "get")
        self.store.get_to_file(self.layout.object_key(st.name, entry), tmp)
        try:
            header, trailer = verify_file(tmp)
        except LTXError as exc:
            tmp.unlink(missing_ok=True)
            raise ArchiveError(f"archived object {entry.name} is corrupt: {exc}") from None
        why = entry.matches(header, trailer)
        if why:
            tmp.unlink(missing_ok=True)
            raise ArchiveError(f"archived object {entry.name} does not match the manifest: {why}")
        return tmp, True

    def _compact_to(self, st: _DB, level: int, paths: list[Path], first_ts: int, hint: str) -> tuple[Path, ObjectEntry]:
        out = self._tmpfile(st, hint)
        try:
            with open(out, "wb") as f:
                header, trailer = compact(f, paths, compress=True)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        lvl = SNAPSHOT_LEVEL if header.is_snapshot else level
        return out, ObjectEntry.from_ltx(lvl, header, trailer, out.stat().st_size, first_ts=first_ts)

    # upload ---------------------------------------------------------------------------------------

    def _scan(self, st: _DB) -> list[_Local]:
        d = self.data_dir / "dbs" / st.name / "ltx"
        out = []
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            names = []
        for name in names:
            parsed = parse_filename(name)
            if parsed is None:
                continue
            p = d / name
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            out.append(_Local(parsed[0], parsed[1], p, size))
        out.sort(key=lambda f: (f.min_txid, f.max_txid))
        present = {f.path.name for f in out}
        for name in list(st.ends):
            if name not in present:
                del st.ends[name]
        st.local = out
        return out

    def _ends(self, st: _DB, f: _Local) -> tuple[Header, Trailer] | None:
        e = st.ends.get(f.path.name)
        if e is None:
            try:
                e = read_ends(f.path)
            except (LTXError, OSError) as exc:
                log.debug("archive %s: unreadable local file %s: %s", st.name, f.path.name, exc)
                return None
            st.ends[f.path.name] = e
        return e

    def _chain(self, st: _DB, files: list[_Local], head: tuple[int, int, int]) -> tuple[list[_Local], str | None]:
        """The local files that continue the archive from its head, or why there are none."""
        htxid, hsum, _ = head
        after = [f for f in files if f.max_txid > htxid]
        if not after:
            return [], None
        by_min: dict[int, list[_Local]] = defaultdict(list)
        for f in files:
            by_min[f.min_txid].append(f)
        start = None
        problem = None
        if htxid == 0:
            snaps = [f for f in by_min[1] if self._ends(st, f)]
            if snaps:
                start = max(snaps, key=lambda f: f.max_txid)
        else:
            nxt = [f for f in by_min[htxid + 1] if self._ends(st, f)]
            for f in nxt:
                if self._ends(st, f)[0].pre_apply_checksum == hsum:
                    start = f
                    break
            if start is None and nxt:
                problem = (f"the local database diverged from the archive: {nxt[0].path.name} expects "
                           f"checksum {self._ends(st, nxt[0])[0].pre_apply_checksum:016x} after TXID "
                           f"{htxid:016x}, the archive has {hsum:016x}")
            if start is None:
                snaps = [f for f in by_min[1] if f.max_txid > htxid and self._ends(st, f)]
                if snaps:
                    start = max(snaps, key=lambda f: f.max_txid)
                    log.info("archive %s: starting a new lineage from the local snapshot %s", st.name,
                             start.path.name)
        if start is None:
            first = after[0]
            return [], problem or (f"the local LTX files ({first.path.name} onwards) do not continue the archive's "
                                   f"TXID {htxid:016x}")
        run = [start]
        while True:
            cur = run[-1]
            post = self._ends(st, cur)[1].post_apply_checksum
            nxt = [f for f in by_min[cur.max_txid + 1] if self._ends(st, f) and
                   self._ends(st, f)[0].pre_apply_checksum == post]
            if not nxt:
                break
            run.append(max(nxt, key=lambda f: f.max_txid))
        return run, None

    def _upload(self, st: _DB, now: float, report: PassReport) -> None:
        m = st.manifest
        assert m is not None
        files = self._scan(st)
        head = self._head(m)
        run, problem = self._chain(st, files, head)
        if problem:
            self._new_lineage(st, head, problem, report)
            run, problem = self._chain(st, files, self._head(m))
            if problem:
                raise ChainBroken(problem)
        # A snapshot goes up alone (as level 9), so the commits after it keep their own restore points.
        chunks = [run[:1]] if run and run[0].min_txid == 1 else []
        rest = run[len(chunks):]
        chunks += [rest[i:i + self.max_files] for i in range(0, len(rest), self.max_files)]
        for chunk in chunks:
            paths = [f.path for f in chunk]
            first_ts = self._ends(st, chunk[0])[0].timestamp
            try:
                out, entry = self._compact_to(st, 0, paths, first_ts, "l0")
            except LTXError as exc:
                bad = []
                for f in chunk:
                    try:
                        verify_file(f.path)
                    except LTXError as e:
                        bad.append(f"{f.path.name}: {e}")
                raise ArchiveError(f"local LTX file(s) failed verification, not uploaded: "
                                   f"{'; '.join(bad) or exc}") from None
            try:
                self._put(st, entry, out, report, "snapshot" if entry.level == SNAPSHOT_LEVEL else "l0")
                if entry.level == 0:
                    dst = self._cache_path(st.name, entry.name)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(out, dst)
            finally:
                out.unlink(missing_ok=True)
            st.last_upload = now
            self.metrics.last_upload_time.labels(st.name).set(now)

    def _new_lineage(self, st: _DB, head: tuple[int, int, int], problem: str, report: PassReport) -> None:
        if self.snapshot_source is None:
            raise ChainBroken(f"{problem}; no snapshot source to start a new lineage (not uploading a gap)")
        path = self.snapshot_source(st.name)
        if path is None:
            raise ChainBroken(f"{problem}; the node gave no snapshot (not uploading a gap)")
        try:
            header, trailer = verify_file(path)
        except LTXError as exc:
            raise ChainBroken(f"{problem}; the node's snapshot {path} is invalid: {exc}") from None
        if not header.is_snapshot:
            raise ChainBroken(f"{problem}; {path} is not a snapshot")
        if header.max_txid <= head[0]:
            raise ChainBroken(f"{problem}; the node's snapshot at TXID {header.max_txid:016x} is not past the "
                              f"archive's TXID {head[0]:016x}, so it cannot start a new lineage")
        log.info("archive %s: %s; starting a new lineage with a snapshot at TXID %016x", st.name, problem,
                 header.max_txid)
        entry = ObjectEntry.from_ltx(SNAPSHOT_LEVEL, header, trailer, os.path.getsize(path))
        self._put(st, entry, Path(path), report, "snapshot")

    # compaction -----------------------------------------------------------------------------

    def _maybe_compact(self, st: _DB, k: int, now: float, report: PassReport) -> None:
        m = st.manifest
        assert m is not None
        boundary = _boundary_ms(now, self.intervals[k - 1])
        last = m.compacted_at.get(k)
        if last is None:
            m.compacted_at[k] = boundary  # a new archive compacts from the next boundary on
            return
        if last >= boundary:
            return
        t0 = time.monotonic()
        made = self._compact_level(st, k, report)
        m.compacted_at[k] = boundary
        if made:
            self.metrics.compaction_seconds.labels(st.name, str(k)).observe(time.monotonic() - t0)

    def _compact_level(self, st: _DB, k: int, report: PassReport) -> int:
        m = st.manifest
        assert m is not None
        hwm = max((o.max_txid for o in m.objects if o.level == k), default=0)
        src = sorted((o for o in m.objects if o.level == k - 1 and o.min_txid > hwm), key=lambda o: o.min_txid)
        runs: list[list[ObjectEntry]] = []
        for o in src:
            if runs and o.min_txid == runs[-1][-1].max_txid + 1 and o.pre_apply == runs[-1][-1].post_apply \
                    and len(runs[-1]) < self.max_files:
                runs[-1].append(o)
            else:
                runs.append([o])
        made = 0
        for run in runs:
            fetched: list[tuple[Path, bool]] = []
            try:
                for o in run:
                    fetched.append(self._fetch(st, o))
                out, entry = self._compact_to(st, k, [p for p, _ in fetched], run[0].first_ts, f"l{k}")
                try:
                    self._put(st, entry, out, report, f"l{k}")
                finally:
                    out.unlink(missing_ok=True)
                made += 1
            finally:
                for p, temporary in fetched:
                    if temporary:
                        p.unlink(missing_ok=True)
        return made

    # snapshots ------------------------------------------------------------------------------

    def _maybe_snapshot(self, st: _DB, now: float, report: PassReport) -> None:
        m = st.manifest
        assert m is not None
        boundary = _boundary_ms(now, float(self.config.snapshot_interval))
        if m.snapshot_at is None:
            m.snapshot_at = boundary
            return
        if m.snapshot_at >= boundary:
            return
        head = self._head(m)
        latest = max((o.max_txid for o in m.objects if o.is_snapshot), default=0)
        if head[0] == 0 or latest >= head[0]:
            m.snapshot_at = boundary
            return
        plan = plan_restore(m.objects, txid=head[0])
        fetched: list[tuple[Path, bool]] = []
        try:
            for o in plan.objects:
                fetched.append(self._fetch(st, o))
            out, entry = self._compact_to(st, SNAPSHOT_LEVEL, [p for p, _ in fetched], plan.objects[0].first_ts,
                                          "snapshot")
            try:
                if entry.post_apply != head[1]:
                    raise ArchiveError(f"snapshot at TXID {head[0]:016x} has checksum {entry.post_apply:016x}, "
                                       f"the archive's head has {head[1]:016x}")
                self._put(st, entry, out, report, "snapshot")
            finally:
                out.unlink(missing_ok=True)
        finally:
            for p, temporary in fetched:
                if temporary:
                    p.unlink(missing_ok=True)
        m.snapshot_at = boundary

    # retention ------------------------------------------------------------------------------

    def _retention(self, st: _DB, now: float) -> None:
        m = st.manifest
        assert m is not None
        doomed = select_deletions(m.objects, now=int(now * 1000), window_ms=int(float(self.config.retention) * 1000),
                                  keep_ms=self.keep_ms, top_level=self.top_level)
        if doomed:
            log.debug("archive %s: retention removes %d object(s)", st.name, len(doomed))
            m.remove(doomed)
            m.deleting = sorted(set(m.deleting) | {o.name for o in doomed})
            st.dirty = True

    # metrics ---------------------------------------------------------------------------------

    def _update_metrics(self, st: _DB, now: float) -> None:
        mt = self.metrics
        name = st.name
        mt.hwm.labels(name).set(st.hwm)
        pending = [f for f in st.local if f.max_txid > st.hwm]
        local_max = max((f.max_txid for f in st.local), default=0)
        mt.lag_txids.labels(name).set(max(0, local_max - st.hwm))
        mt.backlog_bytes.labels(name).set(sum(f.size for f in pending))
        lag = 0.0
        if pending:
            e = self._ends(st, pending[0])
            if e is not None:
                lag = max(0.0, now - e[0].timestamp / 1000)
        mt.lag_seconds.labels(name).set(lag)
        if st.last_upload is not None:
            mt.last_upload_age.labels(name).set(max(0.0, now - st.last_upload))
        if st.manifest is not None:
            counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
            for o in st.manifest.objects:
                counts[o.level][0] += 1
                counts[o.level][1] += o.size
            for lvl in list(range(self.top_level + 1)) + [SNAPSHOT_LEVEL]:
                c, b = counts.get(lvl, (0, 0))
                mt.objects.labels(name, str(lvl)).set(c)
                mt.bytes.labels(name, str(lvl)).set(b)


__all__ = ["ArchiveConflict", "ArchiveMetrics", "ArchiveWorker", "ChainBroken", "PassReport"]
