"""Shared helpers: driving a worker with a fake clock and checking restores against the record."""
from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from prometheus_client import CollectorRegistry

from litefs.archive.layout import Manifest, ObjectEntry
from litefs.archive.restore import list_bundles, load_manifest, restore
from litefs.archive.worker import ArchiveWorker
from litefs.ltx.checksum import database_checksum

from .workload import FakeClock, Workload


def new_worker(backend, data_dir: Path, clock: FakeClock, **kw) -> ArchiveWorker:
    config = kw.pop("config", None) or backend.config
    kw.setdefault("registry", CollectorRegistry())
    return ArchiveWorker(config, kw.pop("store", backend.store), data_dir, clock=clock, **kw)


def drive(worker: ArchiveWorker, wl: Workload, clock: FakeClock, commits: int, *, rng: random.Random,
          step: tuple[float, float] = (0.1, 0.6), interval: float = 1.0) -> list:
    """Commit `commits` times at random intervals, running a worker pass every `interval`."""
    reports = []
    next_pass = clock.t
    for _ in range(commits):
        clock.advance(rng.uniform(*step))
        wl.random_commit()
        if clock.t >= next_pass:
            reports.append(worker.run_once(clock.t))
            next_pass = clock.t + interval
    clock.advance(interval)
    reports.append(worker.run_once(clock.t))
    for r in reports:
        assert not r.errors and not r.store_error, r
    return reports


def manifest(backend, db: str, store=None) -> Manifest:
    return load_manifest(store or backend.store, backend.layout, db)[0]


def archive_objects(backend, db: str, store=None) -> list[ObjectEntry]:
    """Everything a reader can find: the manifest's objects and every level-0 bundle in the window."""
    store = store or backend.store
    m = manifest(backend, db, store)
    return list(m.objects) + [b for b in list_bundles(store, backend.layout, db) if b.max_txid >= m.l0_start]


def archive_names(backend, db: str, store=None) -> set[str]:
    return {o.name for o in archive_objects(backend, db, store)}


def keys_in_store(backend, db: str, store=None) -> set[str]:
    prefix = backend.layout.db_prefix(db)
    return {i.key[len(prefix):] for i in (store or backend.store).list(prefix)} - {"manifest.json"}


def expected_txid(wl: Workload, at_ms: int) -> int:
    """The state at a time: after the last commit at or before it (the test's own record)."""
    return wl.txid_at(at_ms)


def sqlite_ok(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def check_restore(backend, wl: Workload, out: Path, *, at: int | None = None, txid: int | None = None,
                  expect: int | None = None, store=None):
    """Restore and check the result is exactly the recorded state of the TXID it reports, which is
    the target (--txid), the last commit at or before the time (--at), or the latest."""
    res = restore(store or backend.store, backend.layout, wl.name, out, at=at, txid=txid, parallel=4)
    got = res.point.txid
    if expect is None:
        expect = txid if txid is not None else (wl.txid_at(at) if at is not None else wl.txid)
    assert got == expect, f"restored TXID {got}, expected {expect} (at={at}, txid={txid})"
    rec = wl.state(got)
    assert res.point.checksum == rec.checksum
    assert database_checksum(out) == rec.checksum
    assert res.point.time == rec.time_ms  # the commit time printed is the restored commit's
    if at is not None:
        assert rec.time_ms <= at
    if out.stat().st_size:
        assert sqlite_ok(out)
    out.unlink()
    return res
