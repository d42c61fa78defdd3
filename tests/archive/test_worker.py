"""The worker and restore end to end, against both backends (a directory and a real S3-compatible
server on loopback), driven by a fake clock so compaction and snapshot cycles take milliseconds."""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from litefs.archive.layout import SNAPSHOT_LEVEL, format_time
from litefs.archive.plan import window
from litefs.archive.restore import describe_database, restore
from litefs.archive.store import StoreUnavailable
from litefs.archive.worker import _DB
from litefs.errors import RestoreError
from litefs.ltx.format import format_filename

from .helpers import archive_objects, check_restore, drive, keys_in_store, manifest, new_worker
from .workload import FakeClock, Workload

DB = "app.db"


def boundaries(first_ms: int, last_ms: int, interval_s: float) -> list[int]:
    step = int(interval_s * 1000)
    return list(range((first_ms // step + 1) * step, last_ms, step))


def test_point_in_time_restore_across_cycles(backend, tmp_path):
    """Several L1/L2/L3 and snapshot cycles; restores at random times, at every compaction
    boundary and at random TXIDs give exactly the recorded state."""
    rng = random.Random(1)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=1)
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 260, rng=rng)
    m = manifest(backend, DB)
    objs = archive_objects(backend, DB)
    levels = Counter(o.level for o in objs)
    assert levels[0] and levels[1] and levels[2] and levels[3] and levels[SNAPSHOT_LEVEL] >= 2, levels
    assert worker.hwm(DB) == wl.txid
    # The manifest names levels 1..9; the bundles are all in level 0; nothing else is in the bucket.
    assert keys_in_store(backend, DB) == {o.name for o in objs}
    assert not any(o.level == 0 for o in m.objects)
    # Bundles hold the original per-transaction files, back to back, and chain.
    l0 = sorted((o for o in objs if o.level == 0), key=lambda o: o.min_txid)
    assert sum(o.count for o in l0) == wl.txid - 1 and l0[0].min_txid == 2 and l0[-1].max_txid == wl.txid
    for a, b in zip(l0, l0[1:]):
        assert b.min_txid == a.max_txid + 1 and b.pre_apply == a.post_apply
    # Levels are cumulative: each compaction starts where the newest higher level (or snapshot) ended.
    ends = {o.max_txid for o in objs if o.level >= 2}
    for o in objs:
        if 1 <= o.level <= 3:
            assert o.min_txid - 1 in ends, o.name
    w = window(objs)
    assert w.start.txid == 1 and w.end.txid == wl.txid and not w.gaps

    out = tmp_path / "out.db"
    first, last = wl.records[0].time_ms, wl.records[-1].time_ms
    # Every compaction boundary (L1's include L2's, L3's and the snapshots'), the commit times of
    # every compaction's last TXID and just before them, and random times.
    compacted = [o for o in objs if o.level >= 1]
    times = boundaries(first, last, backend.config.levels[0].interval)
    times += [o.last_ts for o in compacted] + [o.last_ts - 1 for o in compacted if o.last_ts > first]
    txids = [o.max_txid + d for o in compacted for d in (0, 1)]
    randoms = 25
    if backend.kind == "s3":  # the same plans on both backends; S3 requests cost more, so sample
        times, txids, randoms = rng.sample(times, 20), rng.sample(txids, 10), 12
    times += [rng.randint(first, last + 3000) for _ in range(randoms)]
    txids += rng.sample(range(1, wl.txid + 1), randoms) + [1, wl.txid]
    for at in times:
        check_restore(backend, wl, out, at=at)
    for txid in txids:
        check_restore(backend, wl, out, txid=min(txid, wl.txid))
    res = check_restore(backend, wl, out)
    assert res.plan.txid == wl.txid
    res = check_restore(backend, wl, out, at=last + 60_000)
    assert any("after the last archived commit" in n and format_time(last) in n for n in res.notes)
    with pytest.raises(RestoreError, match="before the restorable window"):
        restore(backend.store, backend.layout, DB, out, at=first - 1)
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_objects_per_restore_are_bounded(tmp_path):
    """One snapshot, at most one object per compaction level, then the bundles since the newest
    compaction: for every TXID. (Planning is the same on every backend: the file one suffices.)"""
    from .conftest import file_backend

    backend = file_backend(tmp_path / "bucket")
    rng = random.Random(13)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=13)
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 150, rng=rng)
    cfg = backend.config
    bound = 1 + len(cfg.levels) + math.ceil(cfg.levels[0].interval / cfg.upload_interval) + 1
    worst = 0
    for txid in range(1, wl.txid + 1):
        plan = restore(backend.store, backend.layout, DB, None, txid=txid, dry_run=True).plan
        assert plan.objects[0].is_snapshot
        assert sum(1 for o in plan.objects if o.level >= 1 and not o.is_snapshot) <= len(cfg.levels)
        worst = max(worst, len(plan.objects))
    assert worst <= bound, (worst, bound)
    reg = worker.metrics
    assert 0 < reg.restore_objects.labels(DB)._value.get() <= bound


def test_retention_deletes_only_outside_the_window(backend, tmp_path):
    rng = random.Random(2)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=2)
    cfg = backend.archive_config(retention=30.0, snapshot_interval=12.0)
    worker = new_worker(backend, data, clock, config=cfg)
    reports = drive(worker, wl, clock, 210, rng=rng)
    deleted = [k for r in reports for k in r.deleted]
    assert any("/0000/" in k for k in deleted) and any("/0000/" not in k for k in deleted), deleted
    m = manifest(backend, DB)
    objs = archive_objects(backend, DB)
    assert keys_in_store(backend, DB) == {o.name for o in objs}  # garbage is gone
    now = int(clock.t * 1000)
    cutoff = now - 30_000
    w = window(objs, floor_txid=m.l0_start - 1)
    assert w.start.time <= cutoff, (format_time(w.start.time), format_time(cutoff))
    # The window starts at the newest compaction at or before the cutoff: about one L1 interval.
    assert w.start.time >= cutoff - 2 * 2_000 - 1_000, (format_time(w.start.time), format_time(cutoff))
    # Every bundle from the window's start on is kept; nothing below it is.
    l0 = sorted((o for o in objs if o.level == 0), key=lambda o: o.min_txid)
    assert l0[0].min_txid == w.start.txid + 1 == m.l0_start
    out = tmp_path / "out.db"
    in_window = [r for r in wl.records if r.time_ms >= cutoff]
    for at in [cutoff] + [r.time_ms for r in rng.sample(in_window, 12)]:
        check_restore(backend, wl, out, at=at)
    for r in rng.sample(in_window, 8) + [wl.state(w.start.txid)]:
        check_restore(backend, wl, out, txid=r.txid)
    with pytest.raises(RestoreError, match="before the restorable window"):
        restore(backend.store, backend.layout, DB, out, at=w.start.time - 1)
    with pytest.raises(RestoreError, match="before the restorable window"):
        restore(backend.store, backend.layout, DB, out, txid=w.start.txid - 1)


def test_gap_and_outside_window_fail_naming_them(backend, tmp_path, expect_log):
    """Local files deleted before they were archived: the worker refuses to upload a gap until a
    snapshot starts a new lineage; a restore inside the gap names it."""
    rng = random.Random(3)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=3)
    snapshots: list[Path] = []
    worker = new_worker(backend, data, clock, snapshot_source=lambda db: snapshots[-1] if snapshots else None)
    drive(worker, wl, clock, 20, rng=rng)
    archived = wl.txid
    clock.advance(5)
    for _ in range(10):
        clock.advance(0.5)
        wl.random_commit()
    for t in range(archived + 1, wl.txid + 1):  # lost before they were archived
        (wl.ltx_dir / format_filename(t, t)).unlink()
    for _ in range(3):
        clock.advance(0.5)
        wl.random_commit()
    with expect_log("do not continue the archive"):
        report = worker.run_once(clock.t)
    assert "not uploading a gap" in report.errors[DB]
    assert worker.hwm(DB) == archived
    # The node provides a snapshot of its current state: a new lineage starts there.
    snap = tmp_path / "snap.ltx"
    with open(snap, "wb") as f, open(wl.src, "rb") as db:
        from litefs.ltx.files import encode_snapshot
        encode_snapshot(db.fileno(), f, page_size=wl.page_size, commit=len(wl.prev) // wl.page_size,
                        max_txid=wl.txid, timestamp=wl.records[-1].time_ms)
    snapshots.append(snap)
    clock.advance(1)
    report = worker.run_once(clock.t)
    assert not report.errors and worker.hwm(DB) == wl.txid
    drive(worker, wl, clock, 10, rng=rng)
    out = tmp_path / "out.db"
    gap = (archived + 1, archived + 12)
    m = manifest(backend, DB)
    assert m.gaps == [gap]  # recorded by the worker, so browsing sees it without a full listing
    assert window(archive_objects(backend, DB), known_gaps=m.gaps).gaps == [gap]
    gap_time = wl.state(archived + 5).time_ms
    with pytest.raises(RestoreError, match=rf"TXIDs .* \({gap[0]}\.\.{gap[1]}\) are missing"):
        restore(backend.store, backend.layout, DB, out, at=gap_time)
    with pytest.raises(RestoreError, match=rf"TXIDs .* \({gap[0]}\.\.{gap[1]}\) are missing"):
        restore(backend.store, backend.layout, DB, out, txid=archived + 4)
    check_restore(backend, wl, out, at=wl.state(archived).time_ms, expect=archived)
    check_restore(backend, wl, out, expect=wl.txid)
    for txid in [archived, archived + 13] + rng.sample(range(archived + 14, wl.txid + 1), 4):
        check_restore(backend, wl, out, txid=txid)


def test_corrupt_or_missing_objects_are_planned_around(backend, tmp_path):
    rng = random.Random(4)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=4)
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 60, rng=rng)
    m = manifest(backend, DB)
    out = tmp_path / "out.db"
    plan = restore(backend.store, backend.layout, DB, None, dry_run=True).plan
    victim = next(o for o in plan.objects if o.level in (1, 2, 3))

    def corrupt(o):
        key = backend.layout.object_key(DB, o)
        bad = bytearray(backend.store.get(key))
        bad[len(bad) // 2] ^= 0xFF
        backend.store.put(key, bytes(bad), backend.store.head(key).metadata)
        return key

    key = corrupt(victim)
    # Compactions and bundles overlap (the bundles are kept for the whole window), so there is
    # another path: re-planned around the corrupt object, to exactly the same state.
    res = check_restore(backend, wl, out, expect=wl.txid)
    assert victim.name in res.excluded and "corrupt" in res.excluded[victim.name] and res.replans >= 1
    inner = victim.min_txid + (victim.max_txid - victim.min_txid) // 2
    check_restore(backend, wl, out, txid=inner)
    backend.store.delete([key])
    res = check_restore(backend, wl, out, expect=wl.txid)
    assert res.excluded == {victim.name: "missing from the store"}
    # The newest bundle has no other copy: a restore of the states inside it fails naming it; the
    # states before it still restore.
    if clock.t % 2 > 1.7:  # cross the L1 boundary first, then stay inside one L1 period:
        clock.advance(0.35)  # the new bundle has no compacted copy yet
        worker.run_once(clock.t)
    for _ in range(2):
        clock.advance(0.1)
        wl.random_commit()
    worker.run_once(clock.t)
    last = restore(backend.store, backend.layout, DB, None, dry_run=True).plan.objects[-1]
    assert last.level == 0 and last.max_txid == wl.txid
    corrupt(last)
    with pytest.raises(RestoreError, match=rf"{last.name}.*corrupt"):
        restore(backend.store, backend.layout, DB, out)
    check_restore(backend, wl, out, txid=last.min_txid - 1)
    # No other path: every snapshot gone.
    snaps = [o for o in m.objects if o.is_snapshot]
    backend.store.delete([backend.layout.object_key(DB, o) for o in snaps])
    with pytest.raises(RestoreError, match="no usable snapshot.*missing from the store"):
        restore(backend.store, backend.layout, DB, out)
    assert not out.exists()


def test_manifest_missing_or_corrupt_is_rebuilt(backend, tmp_path):
    rng = random.Random(5)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=5)
    drive(new_worker(backend, data, clock), wl, clock, 40, rng=rng)
    key = backend.layout.manifest_key(DB)
    backend.store.put(key, b"{not json", {})
    out = tmp_path / "out.db"
    res = check_restore(backend, wl, out, expect=wl.txid)
    assert "rebuilt" in res.notes[0]
    backend.store.delete([key])
    at = wl.records[len(wl.records) // 2].time_ms
    res = check_restore(backend, wl, out, at=at)
    assert "missing" in res.notes[0]
    check_restore(backend, wl, out, txid=wl.txid - 3)
    # A restarted worker rebuilds the manifest from the listing and carries on.
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 10, rng=rng)
    assert keys_in_store(backend, DB) == {o.name for o in archive_objects(backend, DB)}
    check_restore(backend, wl, out, expect=wl.txid)


class _Killed(BaseException):
    """A worker killed at an awkward moment (not an Exception: nothing catches it)."""


class _KillingStore:
    def __init__(self, store, when) -> None:
        self._store, self._when = store, when
        self.description = store.description

    def put(self, key, body, metadata=None, **kw):
        if self._when("before", key):
            raise _Killed(key)
        info = self._store.put(key, body, metadata, **kw)
        if self._when("after", key):
            raise _Killed(key)
        return info

    def get_to_file(self, key, path):
        if self._when("get", key):
            raise _Killed(key)
        return self._store.get_to_file(key, path)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.mark.parametrize("moment", ["after", "before", "get"])
def test_worker_killed_mid_compaction_converges(backend, tmp_path, moment):
    rng = random.Random(6)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=6)
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 30, rng=rng)
    armed = {"on": True}

    def when(phase, key):
        # Killed writing a level-2 object, or reading a compaction's input from the store.
        hit = armed["on"] and phase == moment and ("/0002/" in key if phase != "get" else "/0000/" not in key)
        if hit:
            armed["on"] = False
        return hit

    killer = new_worker(backend, data, clock, store=_KillingStore(backend.store, when))
    with pytest.raises(_Killed):
        for _ in range(40):
            clock.advance(0.5)
            wl.random_commit()
            if moment == "get":  # a cold cache: compaction inputs come from the store
                shutil.rmtree(data / "archive" / "cache", ignore_errors=True)
            killer.run_once(clock.t)
    # A new process: same data dir, same store, no memory of the old one.
    restarted = new_worker(backend, data, clock)
    drive(restarted, wl, clock, 30, rng=rng)
    objs = archive_objects(backend, DB)
    assert keys_in_store(backend, DB) == {o.name for o in objs}
    assert restarted.hwm(DB) == wl.txid
    w = window(objs)
    assert w.start.txid == 1 and w.end.txid == wl.txid and not w.gaps
    out = tmp_path / "out.db"
    check_restore(backend, wl, out, expect=wl.txid)
    for o in objs:
        if o.level == 2:
            check_restore(backend, wl, out, txid=o.max_txid)
    for txid in rng.sample(range(1, wl.txid + 1), 6):
        check_restore(backend, wl, out, txid=txid)


class _SwitchableStore:
    """The file backend's stand-in for a stopped server: every call fails while `down`."""

    def __init__(self, store) -> None:
        self._store = store
        self.down = False
        self.description = store.description

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            if self.down:
                raise StoreUnavailable(f"{name}: connection refused")
            return attr(*a, **kw)

        return call


def test_store_down_backlog_drains_without_gap(backend, tmp_path, expect_log):
    rng = random.Random(7)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=7)
    if backend.kind == "s3":
        from .conftest import MotoServer, s3_store

        server = MotoServer()
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=backend.bucket)
        store = s3_store(server.endpoint, backend.bucket)
        down, up = server.stop, server.restart
    else:
        server = None
        store = _SwitchableStore(backend.store)
        down, up = (lambda: setattr(store, "down", True)), (lambda: setattr(store, "down", False))
    registry = CollectorRegistry()
    worker = new_worker(backend, data, clock, store=store, registry=registry, max_files_per_object=16)
    try:
        drive(worker, wl, clock, 20, rng=rng)
        before = worker.hwm(DB)
        down()
        failures = 0
        with expect_log("unavailable"):
            for _ in range(120):
                clock.advance(rng.uniform(0.1, 0.6))
                wl.random_commit()
                r = worker.run_once(clock.t)
                failures += bool(r.store_error)
        assert failures >= 3 and worker.hwm(DB) == before
        files = sorted(p.name for p in wl.ltx_dir.iterdir())
        assert len(files) == wl.txid  # commits went on; nothing local was lost
        lag = registry.get_sample_value("litefs_archive_lag_txids", {"db": DB})
        assert lag == wl.txid - before
        assert registry.get_sample_value("litefs_archive_backlog_bytes", {"db": DB}) > 0
        up()
        clock.advance(400)  # past the longest backoff
        r = worker.run_once(clock.t)
        assert not r.store_error and not r.errors
        assert worker.hwm(DB) == wl.txid
        assert registry.get_sample_value("litefs_archive_lag_txids", {"db": DB}) == 0
        drive(worker, wl, clock, 10, rng=rng)
        objs = archive_objects(backend, DB, store)
        w = window(objs)
        assert w.start.txid == 1 and w.end.txid == wl.txid and not w.gaps
        l0 = sorted((o for o in objs if o.level == 0), key=lambda o: o.min_txid)
        assert max(o.count for o in l0) == 16  # the backlog went up in bounded bundles
        for a, b in zip(l0, l0[1:]):
            assert b.min_txid == a.max_txid + 1 and b.pre_apply == a.post_apply
        b = dataclasses.replace(backend, store=store)
        out = tmp_path / "out.db"
        check_restore(b, wl, out, expect=wl.txid)
        outage = [r for r in wl.records if r.txid > before]
        for r in rng.sample(outage, 4):  # commits made while the store was down, exactly
            check_restore(b, wl, out, txid=r.txid)
            check_restore(b, wl, out, at=r.time_ms)
    finally:
        if server is not None:
            server.stop()


def test_database_deletion_is_archived(backend, tmp_path):
    rng = random.Random(8)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=8)
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 15, rng=rng)
    clock.advance(1)
    deleted = wl.delete_database()
    worker.run_once(clock.t)
    wl.recreate()
    drive(worker, wl, clock, 25, rng=rng)
    out = tmp_path / "out.db"
    check_restore(backend, wl, out, txid=deleted.txid, expect=deleted.txid)
    res = restore(backend.store, backend.layout, DB, out, txid=deleted.txid)
    assert out.stat().st_size == 0 and res.plan.txid == deleted.txid
    out.unlink()
    check_restore(backend, wl, out, at=deleted.time_ms, expect=deleted.txid)
    check_restore(backend, wl, out, expect=wl.txid)
    clock.advance(40)  # a snapshot of the recreated database, across the deletion
    worker.run_once(clock.t)
    check_restore(backend, wl, out, expect=wl.txid)


def test_second_writer_cannot_overwrite(backend, tmp_path, expect_log):
    rng = random.Random(9)
    clock = FakeClock()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = Workload(a_dir, DB, clock, seed=9)
    b = Workload(b_dir, DB, clock, seed=10)
    wa = new_worker(backend, a_dir, clock)
    wb = new_worker(backend, b_dir, clock)
    drive(wa, a, clock, 10, rng=rng)
    for _ in range(15):
        clock.advance(0.3)
        b.random_commit()
    with expect_log("diverged from the archive"):
        r = wb.run_once(clock.t)
    assert "diverged" in r.errors[DB]
    before = keys_in_store(backend, DB)
    # Both have loaded the archive; one writes; the other notices before it uploads anything.
    drive(wa, a, clock, 5, rng=rng)
    wa2 = new_worker(backend, a_dir, clock)
    wa2.run_once(clock.t)
    drive(wa, a, clock, 5, rng=rng)
    for _ in range(3):
        clock.advance(0.3)
        a.random_commit()
    with expect_log("another writer"):
        r = wa2.run_once(clock.t)
    assert "another writer" in r.errors[DB] and not r.put
    assert before <= keys_in_store(backend, DB)
    # A stale writer with nothing to upload is refused when it writes the manifest.
    c_dir = tmp_path / "c"
    (c_dir / "dbs" / DB / "ltx").mkdir(parents=True)
    wa3 = new_worker(backend, c_dir, clock)
    st = _DB(DB)
    wa3._dbs[DB] = st
    wa3._load(st)
    drive(wa, a, clock, 6, rng=rng)
    st.dirty = True
    with expect_log("another writer"):
        r = wa3.run_once(clock.t)
    assert "another writer" in r.errors[DB] and not r.put
    check_restore(backend, a, tmp_path / "out.db", txid=a.txid - 3, expect=a.txid - 3)


def test_archive_metrics(backend, tmp_path):
    rng = random.Random(10)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=10)
    registry = CollectorRegistry()
    worker = new_worker(backend, data, clock, registry=registry)
    drive(worker, wl, clock, 60, rng=rng)
    get = registry.get_sample_value
    assert get("litefs_archive_hwm_txid", {"db": DB}) == wl.txid
    assert get("litefs_archive_lag_txids", {"db": DB}) == 0
    assert get("litefs_archive_lag_seconds", {"db": DB}) == 0
    assert get("litefs_archive_backlog_bytes", {"db": DB}) == 0
    assert get("litefs_archive_last_upload_age_seconds", {"db": DB}) is not None
    m = manifest(backend, DB)
    for level in (1, 2, 3, 9):
        want = sum(o.level == level for o in m.objects)
        assert get("litefs_archive_objects", {"db": DB, "level": str(level)}) == want
    # Level 0: the bundles after the newest compaction (the manifest does not list bundles).
    tail = [o for o in archive_objects(backend, DB) if o.level == 0 and o.min_txid > max(o.max_txid for o in m.objects)]
    assert get("litefs_archive_objects", {"db": DB, "level": "0"}) == len(tail)
    assert 1 <= get("litefs_archive_restore_objects", {"db": DB}) <= 1 + 3 + len(tail)
    assert get("litefs_archive_compaction_seconds_count", {"db": DB, "level": "1"}) > 0
    assert get("litefs_archive_puts_total", {"db": DB, "kind": "l0"}) > 0
    clock.advance(2)
    wl.random_commit()
    worker._scan(worker._dbs[DB])
    worker._update_metrics(worker._dbs[DB], clock.t + 3)
    assert get("litefs_archive_lag_txids", {"db": DB}) == 1
    assert get("litefs_archive_lag_seconds", {"db": DB}) == pytest.approx(3, abs=0.01)


def test_background_thread(backend, tmp_path):
    """start/notify/stop with the real clock: commits reach the archive without run_once calls."""
    clock = time.time
    data = tmp_path / "data"
    fake = FakeClock(time.time())
    wl = Workload(data, DB, fake, seed=11)
    cfg = backend.archive_config(upload_interval=0.05)
    worker = new_worker(backend, data, clock, config=cfg)
    worker.start()
    try:
        for _ in range(20):
            fake.t = time.time()
            wl.random_commit()
            worker.notify(DB)
        deadline = time.monotonic() + 20
        while worker.hwm(DB) < wl.txid and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.hwm(DB) == wl.txid
    finally:
        worker.stop()
    assert describe_database(backend.store, backend.layout, DB)["window"]["end"]["txidDecimal"] == wl.txid
    check_restore(backend, wl, tmp_path / "out.db", expect=wl.txid)


class _AmbiguousStore(_SwitchableStore):
    """Applies one write whose key contains `armed` but reports a connection error, as a dropped
    response does."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.armed: str | None = None

    def put(self, key, body, metadata=None, **kw):
        info = self._store.put(key, body, metadata, **kw)
        if self.armed and self.armed in key:
            self.armed = None
            raise StoreUnavailable("put: connection reset after the request was sent")
        return info


@pytest.mark.parametrize("what", ["manifest.json", "/0000/"])
def test_ambiguous_write_is_not_a_conflict(backend, tmp_path, expect_log, what):
    rng = random.Random(12)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=12)
    store = _AmbiguousStore(backend.store)
    worker = new_worker(backend, data, clock, store=store)
    drive(worker, wl, clock, 10, rng=rng)
    store.armed = what
    clock.advance(2.1)  # past a compaction boundary: the manifest is written this pass
    wl.random_commit()
    with expect_log("unavailable"):
        assert worker.run_once(clock.t).store_error
    clock.advance(10)
    for _ in range(3):  # more commits, so the next bundle would not have the same name
        clock.advance(0.1)
        wl.random_commit()
    drive(worker, wl, clock, 5, rng=rng)
    assert worker.hwm(DB) == wl.txid
    assert keys_in_store(backend, DB) == {o.name for o in archive_objects(backend, DB)}
    l0 = sorted((o for o in archive_objects(backend, DB) if o.level == 0), key=lambda o: o.min_txid)
    for a, b in zip(l0, l0[1:]):  # no duplicate bundle
        assert b.min_txid == a.max_txid + 1
    check_restore(backend, wl, tmp_path / "out.db", expect=wl.txid)
