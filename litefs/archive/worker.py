"""The archive worker: runs on the primary, uploads, compacts, snapshots and enforces retention.

One pass (`run_once`) does, for every database under `<data_dir>/dbs/*/ltx/`:

1. Load the database's manifest from the store the first time (and after a conflict), and
   reconcile it with a listing of levels 1..9: objects a crashed worker wrote but never
   recorded are adopted if they chain onto the archive; records of objects that are gone are
   dropped. Then list level 0 after the compacted levels' head (StartAfter) to find the bundles
   uploaded since - the manifest does not list bundles.
2. Upload: the local LTX files after the archive's head that continue its checksum chain go up
   as one level-0 bundle (the files as they are, back to back; at most `max_files_per_object`
   each). A chain that starts at TXID 1 becomes a snapshot (level 9). If the local files cannot
   continue the chain (deleted before they were archived, or a snapshot replaced the database),
   a new lineage starts from a local snapshot file or from `snapshot_source(db)`, and the gap is
   recorded; failing that the database is reported broken - never is a gap uploaded.
3. Snapshot on the snapshot-interval boundary: the cheapest path to the head, merged.
4. Compact on each level's wall-clock boundary, highest level first. Levels are cumulative:
   a level-k object covers everything from the end of the newest object of a higher level (or
   snapshot) to the head, built from the cheapest path there (typically the previous level-k
   object of the same period, the newest level k-1 object and the bundles after it). So a
   restore needs one object per level, plus the bundles after the newest compaction.
5. Retention (plan.select_retention): every TXID of the window stays reachable as snapshot +
   compacted objects up to some b <= t + the bundles from b+1 to t; bundles are kept for the
   whole window, compactions only where some path needs them.
6. If anything indexed changed: check that level 0 holds nothing this worker does not know of
   (a second writer), write the manifest (conditionally on its ETag), then delete what it no
   longer names (objects in `deleting`, bundles below `l0.start`).

The manifest is written only when the compacted levels, snapshots, retention or lineage change
(at most once per pass, about twice a minute with the defaults), not per upload: readers find
new bundles by listing. Every object is written with If-None-Match. A restarted worker continues
where the manifest and the listings say. Store failures (StoreUnavailable) back off
exponentially; the local files stay on disk (the node's local retention must keep every file
above `hwm(db)`), and the backlog drains, in bounded bundles, when the store returns.
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

from litefs.archive import bundle as bundles_mod
from litefs.archive.layout import SNAPSHOT_LEVEL, HeadInfo, Layout, Manifest, ObjectEntry, is_object_name
from litefs.archive.plan import START, Graph, Node, chain_path, dest, select_retention, source, window
from litefs.archive.restore import list_bundle_keys, list_bundles
from litefs.archive.store import ObjectNotFound, ObjectStore, PreconditionFailed, StoreUnavailable
from litefs.errors import ArchiveError, LitefsError, LTXError
from litefs.ltx.compactor import compact, read_ends
from litefs.ltx.files import verify_file
from litefs.ltx.format import Header, Trailer, parse_filename

log = logging.getLogger(__name__)

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
        self.restore_objects = Gauge("litefs_archive_restore_objects",
                                     "Objects a restore of the archive's head needs (snapshot, compactions, "
                                     "bundles)", ["db"], registry=r)

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
    head: Node = START  # the archive's newest state (compacted levels + bundles)
    head_time: int = 0
    visible: Node = START  # the newest state a reader can reach (written manifest + listed bundles)
    hwm: int = 0
    bundles: dict[str, ObjectEntry] = field(default_factory=dict)  # level 0 after the compacted head
    persisted_deleting: set[str] = field(default_factory=set)
    persisted_l0_start: int = 1  # the l0 start of the last manifest written
    l0_swept: int = 0  # bundles ending below this are known to be deleted
    retention_due: bool = True
    l0_verified: bool = False  # level 0 re-listed since the load, before this worker's first upload
    l0_ignored: set[str] = field(default_factory=set)  # bundles seen at load that do not continue the chain
    uncertain: list[ObjectEntry] = field(default_factory=list)  # bundle PUTs whose outcome is unknown
    ends: dict[str, tuple[Header, Trailer]] = field(default_factory=dict)
    last_error: str | None = None
    last_upload: float | None = None
    local: list[_Local] = field(default_factory=list)
    compacted_path: int = 0  # objects from the empty database to the newest compacted state
    graph: Graph | None = None  # of the manifest's objects; None when they changed
    graph_of: tuple = ()


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
                 prefix: str | None = None, keep_factor: float | None = None,
                 max_files_per_object: int = MAX_FILES_PER_OBJECT, backoff_max: float = 300.0,
                 writer_id: str | None = None) -> None:
        # keep_factor is accepted for compatibility and ignored: level 0 is now kept for the
        # whole retention window, and compactions wherever a restore path needs them.
        self.config = config
        self.store = store
        self.data_dir = Path(data_dir)
        self.layout = Layout(config.prefix if prefix is None else prefix)
        self.clock = clock
        self.metrics = metrics or ArchiveMetrics.for_registry(registry if registry is not None else REGISTRY)
        self.snapshot_source = snapshot_source
        self.intervals = [float(lvl.interval) for lvl in config.levels]  # L1..Ln
        self.top_level = len(self.intervals)
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
        checked = False
        if self._compaction_due(st, now):
            # Compactions are written from this worker's view of level 0: make sure it is complete
            # (no second writer) first. One LIST per compaction pass, which also covers the
            # manifest write below.
            self._check_l0(st, self._compacted_head(st)[0][0] + 1)
            checked = True
        self._maybe_snapshot(st, now, report)
        for k in range(self.top_level, 0, -1):
            self._maybe_compact(st, k, now, report)
        if st.retention_due:
            self._retention(st, now)
        if st.dirty:
            self._write_manifest(st, now, checked=checked)
        self._delete_persisted(st, report)
        self._sweep_cache(st)

    # manifest and listings ------------------------------------------------------------------------

    def _graph(self, st: _DB) -> Graph:
        """The graph of the manifest's objects, rebuilt only when they change (it is the costly part
        of a pass once the window holds tens of thousands of compactions)."""
        m = st.manifest
        assert m is not None
        key = (id(m), hash(tuple(m.objects)))
        if st.graph is None or st.graph_of != key:
            st.graph, st.graph_of = Graph(m.objects), key
        return st.graph

    def _compacted_head(self, st: _DB) -> tuple[Node, int]:
        """The newest state the compacted levels and snapshots reach, and its time."""
        g = self._graph(st)
        if not g.reachable_nodes:
            return START, 0
        n = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
        return n, g.eff[n]

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
        dirty = False
        prefix = self.layout.db_prefix(st.name)
        listed = {}
        for info in self.store.list(prefix, start_after=self.layout.above_l0(st.name)):
            name = info.key[len(prefix):]
            if is_object_name(name) and not name.startswith("0000/"):
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
        # Objects are adopted in TXID order if they start from a state the archive reaches (with
        # cumulative levels, one level holds several objects from the same start).
        reachable = set(Graph(m.objects).reachable_nodes) | {START}
        for entry in sorted(orphans, key=lambda o: (o.min_txid, o.max_txid, -o.level)):
            if source(entry) in reachable:
                reachable.add(dest(entry))
                log.info("archive %s: adopting %s, written by an earlier run but not yet in the manifest",
                         st.name, entry.name)
                m.add(entry)
                dirty = True
            else:
                log.info("archive %s: ignoring %s: not in the manifest and does not start from a state "
                         "the archive reaches", st.name, entry.name)
        st.persisted_deleting = {n for n in m.deleting if n in listed}
        m.deleting = sorted(st.persisted_deleting)
        st.manifest, st.etag, st.dirty = m, etag, dirty
        st.graph = None
        st.persisted_l0_start = m.l0_start if etag else 1
        st.l0_swept = 0
        st.retention_due = True
        st.l0_verified = False
        # The bundles uploaded since the compacted head, followed along the checksum chain.
        chead, ctime = self._compacted_head(st)
        st.bundles = {}
        st.l0_ignored = set()
        st.uncertain = []
        st.head, st.head_time = chead, ctime
        self._adopt_bundles(st, list_bundles(self.store, self.layout, st.name, chead[0] + 1))
        st.visible = st.head if etag else START
        st.hwm = st.visible[0]

    def _adopt_bundles(self, st: _DB, found: list[ObjectEntry]) -> None:
        """Extend the head along listed bundles that continue its chain."""
        by_min: dict[int, list[ObjectEntry]] = defaultdict(list)
        for e in found:
            by_min[e.min_txid].append(e)
        while True:
            nxt = [e for e in by_min.get(st.head[0] + 1, []) if e.pre_apply == st.head[1]]
            if not nxt:
                break
            if len(nxt) > 1:
                log.warning("archive %s: %d bundles continue TXID %016x (%s): two writers? following the longest",
                            st.name, len(nxt), st.head[0], ", ".join(e.name for e in nxt))
            e = max(nxt, key=lambda e: (e.max_txid, e.size))
            st.bundles[e.name] = e
            st.head, st.head_time = dest(e), max(st.head_time, e.last_ts)
        st.l0_ignored |= {e.name for e in found if e.name not in st.bundles}
        ignored = [e.name for e in found if e.name not in st.bundles and e.max_txid > st.head[0]]
        if ignored:
            log.info("archive %s: ignoring level-0 bundles that do not continue the archive: %s", st.name,
                     ", ".join(ignored[:5]))

    def _check_l0(self, st: _DB, start: int) -> None:
        """Level 0 from `start` on must hold only bundles this worker knows: else another writer is active."""
        known = set(st.bundles) | st.l0_ignored
        for _, name, _ in list_bundle_keys(self.store, self.layout, st.name, start):
            if name not in known:
                st.manifest = None
                raise ArchiveConflict(f"level 0 holds {name}, which this worker did not write (another writer?); "
                                      "reloading the archive's state")

    def _compaction_due(self, st: _DB, now: float) -> bool:
        """Whether this pass will write a snapshot or a compaction (a boundary passed, and there is
        something after the newest higher-level object)."""
        m = st.manifest
        assert m is not None
        head = st.head[0]
        top = [0] * (SNAPSHOT_LEVEL + 2)  # top[k]: the highest max TXID at level >= k
        for o in m.objects:
            top[o.level] = max(top[o.level], o.max_txid)
        for k in range(SNAPSHOT_LEVEL - 1, -1, -1):
            top[k] = max(top[k], top[k + 1])
        if m.snapshot_at is not None and m.snapshot_at < _boundary_ms(now, float(self.config.snapshot_interval)) \
                and head > top[SNAPSHOT_LEVEL]:
            return True
        return any(m.compacted_at.get(k) is not None and m.compacted_at[k] < _boundary_ms(now, self.intervals[k - 1])
                   and head > top[k + 1] for k in range(1, self.top_level + 1))

    def _write_manifest(self, st: _DB, now: float, checked: bool = False) -> None:
        m = st.manifest
        assert m is not None
        if not checked:
            self._check_l0(st, self._compacted_head(st)[0][0] + 1)
        m.generation += 1
        m.writer = self.writer_id
        m.updated = int(now * 1000)
        m.l0_head = HeadInfo(st.head[0], st.head[1], st.head_time) if st.head[0] else None
        w = window(list(m.objects) + list(st.bundles.values()), floor_txid=m.l0_start - 1, known_gaps=m.gaps)
        extra = {
            "head": HeadInfo(st.head[0], st.head[1], st.head_time).to_json() if st.head[0] else None,
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
        st.persisted_l0_start = m.l0_start
        st.visible = st.head
        st.hwm = st.head[0]
        self.metrics.puts.labels(st.name, "manifest").inc()

    def _delete_persisted(self, st: _DB, report: PassReport) -> None:
        m = st.manifest
        if m is None:
            return
        prefix = self.layout.db_prefix(st.name)
        if st.persisted_deleting:
            names = sorted(st.persisted_deleting)
            self.store.delete(prefix + n for n in names)
            self.metrics.deletes.labels(st.name).inc(len(names))
            report.deleted.extend(prefix + n for n in names)
            for n in names:
                self._drop_cache(st.name, n)
            m.deleting = [n for n in m.deleting if n not in st.persisted_deleting]
            st.persisted_deleting = set()
        if st.persisted_l0_start > max(st.l0_swept, 1):
            # Bundles below the window: everything in level 0 that ends before the written l0 start.
            keys = [(k, n) for k, n, _ in list_bundle_keys(self.store, self.layout, st.name, st.l0_swept,
                                                            st.persisted_l0_start - 1)]
            doomed = []
            for k, n in keys:
                hi = int(n[22:38], 16)
                if hi < st.persisted_l0_start:
                    doomed.append(k)
            if doomed:
                self.store.delete(doomed)
                self.metrics.deletes.labels(st.name).inc(len(doomed))
                report.deleted.extend(doomed)
            st.l0_swept = st.persisted_l0_start
            for name in [n for n, e in st.bundles.items() if e.max_txid < st.persisted_l0_start]:
                del st.bundles[name]

    # writing objects ------------------------------------------------------------------------

    def _put(self, st: _DB, entry: ObjectEntry, path: Path, report: PassReport, kind: str) -> ObjectEntry:
        """Write one object after checking it chains onto the archive; adopt an identical one."""
        m = st.manifest
        assert m is not None
        if entry.is_bundle:
            if source(entry) != st.head:
                raise ArchiveError(f"refusing to write {entry.name}: it does not continue the archive's head "
                                   f"(TXID {st.head[0]:016x}, checksum {st.head[1]:016x})")
        elif not entry.is_snapshot:
            if not self._graph(st).reachable(source(entry)):
                raise ArchiveError(f"refusing to write {entry.name}: TXID {entry.min_txid - 1:016x} with checksum "
                                   f"{entry.pre_apply:016x} is not a state the archive can reach")
        key = self.layout.object_key(st.name, entry)
        try:
            self.store.put(key, path, entry.metadata(), if_none_match=True)
        except StoreUnavailable:
            if entry.is_bundle:
                st.uncertain.append(entry)  # it may have been written: look before uploading again
            raise
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
        if entry.is_bundle:
            st.bundles[entry.name] = entry
            st.head, st.head_time = dest(entry), max(st.head_time, entry.last_ts)
            if source(entry) == st.visible:
                st.visible = st.head
                st.hwm = st.head[0]
        else:
            m.add(entry)
            st.dirty = True
        return entry

    def _tmpfile(self, st: _DB, hint: str) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / f"{st.name}.{hint}.{uuid.uuid4().hex[:8]}.ltx"

    def _cache_path(self, db: str, name: str) -> Path:
        return self._cache / db / name

    def _to_cache(self, st: _DB, entry: ObjectEntry, path: Path) -> None:
        dst = self._cache_path(st.name, entry.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dst)

    def _drop_cache(self, db: str, name: str) -> None:
        try:
            os.unlink(self._cache_path(db, name))
        except FileNotFoundError:
            pass

    def _sweep_cache(self, st: _DB) -> None:
        """The cache keeps what the next compactions read: the bundles after the compacted head and
        the newest object of each compacted level."""
        m = st.manifest
        root = self._cache / st.name
        if m is None or not root.is_dir():
            return
        keep = set(st.bundles)
        for k in range(1, self.top_level + 1):
            objs = [o for o in m.objects if o.level == k]
            if objs:
                keep.add(max(objs, key=lambda o: o.max_txid).name)
        for d in root.iterdir():
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if f"{d.name}/{p.name}" not in keep:
                    p.unlink(missing_ok=True)

    def _fetch(self, st: _DB, entry: ObjectEntry) -> tuple[Path, bool]:
        """A local copy of an archived object: (path, is_temporary). Verified when compacted."""
        cached = self._cache_path(st.name, entry.name)
        if cached.exists():
            return cached, False
        tmp = self._tmpfile(st, "get")
        try:
            self.store.get_to_file(self.layout.object_key(st.name, entry), tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, True

    def _ltx_inputs(self, st: _DB, path: Path, entry: ObjectEntry, temps: list[Path]) -> list[Path]:
        """The LTX files of an object: itself, or a bundle's files extracted to temporary files."""
        if not entry.is_bundle:
            return [path]
        self._tmp.mkdir(parents=True, exist_ok=True)
        try:
            parts = [Path(p) for p in bundles_mod.extract(path, self._tmp, f"{st.name}.{uuid.uuid4().hex[:8]}")]
        except LTXError as exc:
            raise ArchiveError(f"archived bundle {entry.name} is corrupt: {exc}") from None
        temps.extend(parts)
        return parts

    def _merge(self, st: _DB, level: int, objs: list[ObjectEntry], hint: str) -> tuple[Path, ObjectEntry]:
        """Compact objects (fetched from the cache or the store) into one LTX file."""
        temps: list[Path] = []
        try:
            inputs: list[Path] = []
            for o in objs:
                path, temporary = self._fetch(st, o)
                if temporary:
                    temps.append(path)
                inputs += self._ltx_inputs(st, path, o, temps)
            out = self._tmpfile(st, hint)
            try:
                with open(out, "wb") as f:
                    header, trailer = compact(f, inputs, compress=True)
                    f.flush()
                    os.fsync(f.fileno())
            except LTXError as exc:
                out.unlink(missing_ok=True)
                raise ArchiveError(f"cannot compact {objs[0].name}..{objs[-1].name}: {exc}") from None
            except BaseException:
                out.unlink(missing_ok=True)
                raise
        finally:
            for p in temps:
                p.unlink(missing_ok=True)
        lvl = SNAPSHOT_LEVEL if header.is_snapshot else level
        entry = ObjectEntry.from_ltx(lvl, header, trailer, out.stat().st_size, first_ts=objs[0].first_ts,
                                     last_ts=max(o.last_ts for o in objs))
        if (entry.min_txid, entry.pre_apply) != (objs[0].min_txid, objs[0].pre_apply) or \
                (entry.max_txid, entry.post_apply) != (objs[-1].max_txid, objs[-1].post_apply):
            out.unlink(missing_ok=True)
            raise ArchiveError(f"compacting {objs[0].name}..{objs[-1].name} did not give the expected ends")
        return out, entry

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

    def _chain(self, st: _DB, files: list[_Local], head: Node) -> tuple[list[_Local], str | None]:
        """The local files that continue the archive from its head, or why there are none."""
        htxid, hsum = head
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
                    problem = None
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

    def _resolve_uncertain(self, st: _DB) -> None:
        """A bundle PUT that failed in transit may have been applied: adopt it if it was."""
        while st.uncertain:
            entry = st.uncertain[0]
            info = self.store.head(self.layout.object_key(st.name, entry))
            st.uncertain.pop(0)
            if info is None or source(entry) != st.head:
                continue
            try:
                got = ObjectEntry.from_metadata(entry.name, info.size, info.metadata or {})
            except ArchiveError:
                continue
            if (got.pre_apply, got.post_apply) == (entry.pre_apply, entry.post_apply):
                log.info("archive %s: %s was written although the store reported an error; keeping it",
                         st.name, entry.name)
                st.bundles[got.name] = got
                st.head, st.head_time = dest(got), max(st.head_time, got.last_ts)
                if source(got) == st.visible:
                    st.visible = st.head
                    st.hwm = st.head[0]

    def _upload(self, st: _DB, now: float, report: PassReport) -> None:
        m = st.manifest
        assert m is not None
        self._resolve_uncertain(st)
        files = self._scan(st)
        run, problem = self._chain(st, files, st.head)
        if problem:
            self._new_lineage(st, problem, report)
            run, problem = self._chain(st, files, st.head)
            if problem:
                raise ChainBroken(problem)
        if not run:
            return
        if not st.l0_verified:
            # Time has passed since the load: if someone else uploaded meanwhile, stop here rather
            # than fork level 0 (later, the check before each manifest write catches it).
            self._check_l0(st, st.head[0] + 1)
            st.l0_verified = True
        if run[0].min_txid == 1:
            # A snapshot goes up alone (as level 9), so the commits after it keep their own granularity.
            self._upload_snapshot_file(st, run[0], report, st.head[0] != 0)
            run = run[1:]
        for i in range(0, len(run), self.max_files):
            chunk = run[i:i + self.max_files]
            ends = []
            bad = []
            for f in chunk:
                try:
                    ends.append(verify_file(f.path))
                except (LTXError, OSError) as e:
                    bad.append(f"{f.path.name}: {e}")
            if bad:
                raise ArchiveError(f"local LTX file(s) failed verification, not uploaded: {'; '.join(bad)}")
            out = self._tmpfile(st, "l0")
            try:
                with open(out, "wb") as f:
                    size = bundles_mod.write_bundle(f, [c.path for c in chunk])
                    f.flush()
                    os.fsync(f.fileno())
                entry = self._put(st, ObjectEntry.bundle(ends, size), out, report, "l0")
                self._to_cache(st, entry, out)
            finally:
                out.unlink(missing_ok=True)
            st.last_upload = now
            self.metrics.last_upload_time.labels(st.name).set(now)

    def _upload_snapshot_file(self, st: _DB, f: _Local, report: PassReport, new_lineage: bool) -> None:
        out = self._tmpfile(st, "snapshot")
        try:
            try:
                with open(out, "wb") as fo:
                    header, trailer = compact(fo, [f.path], compress=True)
                    fo.flush()
                    os.fsync(fo.fileno())
            except LTXError as exc:
                raise ArchiveError(f"local LTX file failed verification, not uploaded: {f.path.name}: {exc}") from None
            entry = ObjectEntry.from_ltx(SNAPSHOT_LEVEL, header, trailer, out.stat().st_size)
            self._start_lineage(st, entry, out, report, new_lineage)
        finally:
            out.unlink(missing_ok=True)

    def _start_lineage(self, st: _DB, entry: ObjectEntry, path: Path, report: PassReport, gap: bool) -> None:
        m = st.manifest
        assert m is not None
        old = st.head
        self._put(st, entry, path, report, "snapshot")
        if gap and entry.max_txid - 1 >= old[0] + 1:
            m.gaps = sorted(set(m.gaps) | {(old[0] + 1, entry.max_txid - 1)})
        st.head, st.head_time = dest(entry), entry.last_ts
        st.bundles = {}
        st.dirty = True
        st.retention_due = True

    def _new_lineage(self, st: _DB, problem: str, report: PassReport) -> None:
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
        if header.max_txid <= st.head[0]:
            raise ChainBroken(f"{problem}; the node's snapshot at TXID {header.max_txid:016x} is not past the "
                              f"archive's TXID {st.head[0]:016x}, so it cannot start a new lineage")
        log.info("archive %s: %s; starting a new lineage with a snapshot at TXID %016x", st.name, problem,
                 header.max_txid)
        entry = ObjectEntry.from_ltx(SNAPSHOT_LEVEL, header, trailer, os.path.getsize(path))
        self._start_lineage(st, entry, Path(path), report, st.head[0] != 0)

    # snapshots and compaction -----------------------------------------------------------------

    def _maybe_snapshot(self, st: _DB, now: float, report: PassReport) -> None:
        m = st.manifest
        assert m is not None
        boundary = _boundary_ms(now, float(self.config.snapshot_interval))
        if m.snapshot_at is None:
            m.snapshot_at = boundary
            return
        if m.snapshot_at >= boundary:
            return
        head = st.head
        latest = max((o.max_txid for o in m.objects if o.is_snapshot), default=0)
        if head[0] == 0 or latest >= head[0]:
            m.snapshot_at = boundary
            return
        g = Graph(list(m.objects) + list(st.bundles.values()))
        if not g.reachable(head):
            raise ArchiveError(f"cannot snapshot: the archive's head TXID {head[0]:016x} is not reachable")
        path = g.path(head)
        out, entry = self._merge(st, SNAPSHOT_LEVEL, path, "snapshot")
        try:
            self._put(st, entry, out, report, "snapshot")
        finally:
            out.unlink(missing_ok=True)
        m.snapshot_at = boundary
        st.retention_due = True

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
        st.retention_due = True
        if made:
            self.metrics.compaction_seconds.labels(st.name, str(k)).observe(time.monotonic() - t0)

    def _compact_level(self, st: _DB, k: int, report: PassReport) -> bool:
        """One cumulative level-k object: from the end of the newest higher-level object to the head."""
        m = st.manifest
        assert m is not None
        higher = [o for o in m.objects if o.level > k]
        if not higher:
            return False
        g = self._graph(st)
        bases = [dest(o) for o in higher if g.reachable(dest(o))]
        if not bases:
            return False
        base = max(bases)
        head = st.head
        if head[0] <= base[0]:
            return False
        objs = list(m.objects) + list(st.bundles.values())
        path = chain_path(objs, base, head)
        if path is None:
            # The usual inputs are gone (deleted or corrupt compactions): read level 0 from the base on.
            found = list_bundles(self.store, self.layout, st.name, base[0] + 1)
            path = chain_path(objs + found, base, head)
            if path is None:
                raise ArchiveError(f"cannot compact level {k}: no chain of objects from TXID {base[0]:016x} "
                                   f"to the head {head[0]:016x}")
        if len(path) == 1 and path[0].level == k:
            return False  # the newest level-k object already is that
        out, entry = self._merge(st, k, path, f"l{k}")
        try:
            entry = self._put(st, entry, out, report, f"l{k}")
            self._to_cache(st, entry, out)
        finally:
            out.unlink(missing_ok=True)
        # Bundles inside the compacted levels are no longer needed in memory (they stay in the store).
        for name in [n for n, e in st.bundles.items() if e.max_txid <= entry.max_txid]:
            del st.bundles[name]
        return True

    # retention ------------------------------------------------------------------------------

    def _retention(self, st: _DB, now: float) -> None:
        m = st.manifest
        assert m is not None
        st.retention_due = False
        doomed, floor = select_retention(m.objects, now=int(now * 1000),
                                         window_ms=int(float(self.config.retention) * 1000))
        if doomed:
            log.debug("archive %s: retention removes %d object(s)", st.name, len(doomed))
            m.remove(doomed)
            m.deleting = sorted(set(m.deleting) | {o.name for o in doomed})
            st.dirty = True
        if floor is not None and floor[0] + 1 > m.l0_start:
            m.l0_start = floor[0] + 1
            m.gaps = [g for g in m.gaps if g[1] >= m.l0_start]
            st.dirty = True
        g = self._graph(st)
        chead = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n])) if g.reachable_nodes else START
        st.compacted_path = len(g.path(chead)) if chead != START else 0

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
            for o in st.bundles.values():  # level 0: the bundles after the compacted levels
                counts[0][0] += 1
                counts[0][1] += o.size
            for lvl in list(range(self.top_level + 1)) + [SNAPSHOT_LEVEL]:
                c, b = counts.get(lvl, (0, 0))
                mt.objects.labels(name, str(lvl)).set(c)
                mt.bytes.labels(name, str(lvl)).set(b)
            mt.restore_objects.labels(name).set(st.compacted_path + len(st.bundles))


__all__ = ["ArchiveConflict", "ArchiveMetrics", "ArchiveWorker", "ChainBroken", "PassReport"]
