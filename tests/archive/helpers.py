"""Shared helpers: driving a worker with a fake clock and checking restores against the record."""
from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from prometheus_client import CollectorRegistry

from litefs.archive.layout import Manifest
from litefs.archive.restore import load_manifest, restore
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


def manifest(backend, db: str) -> Manifest:
    return load_manifest(backend.store, backend.layout, db)[0]


def expected_txid(m: Manifest, wl: Workload, at_ms: int) -> int:
    """The restore point for a time, computed from the test's own record of commit times."""
    ends = {o.max_txid for o in m.objects}
    return max((e for e in ends if wl.state(e).time_ms <= at_ms), default=0)


def sqlite_ok(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def check_restore(backend, wl: Workload, out: Path, *, at: int | None = None, txid: int | None = None,
                  expect: int | None = None):
    """Restore and check the result is exactly the recorded state of the TXID it reports."""
    res = restore(backend.store, backend.layout, wl.name, out, at=at, txid=txid, parallel=4)
    got = res.plan.txid
    if expect is not None:
        assert got == expect, f"restored TXID {got}, expected {expect} (at={at}, txid={txid})"
    rec = wl.state(got)
    assert res.plan.checksum == rec.checksum
    assert database_checksum(out) == rec.checksum
    if at is not None:
        assert rec.time_ms <= at
    if out.stat().st_size:
        assert sqlite_ok(out)
    out.unlink()
    return res
