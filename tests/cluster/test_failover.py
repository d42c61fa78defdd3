"""Automatic failover with Consul leases (against the Consul stand-in in tests/)."""
from __future__ import annotations

import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster
from tests.consul_standin import ConsulStandIn
from tests.nodes import TestNode, wait_for

TTL, LOCK_DELAY = 2.0, 0.5


@pytest.fixture
def consul() -> Iterator[ConsulStandIn]:
    server = ConsulStandIn(min_ttl=1).start()
    yield server
    server.stop()


class ConsulCluster(Cluster):
    def __init__(self, base: Path, consul: ConsulStandIn, n: int = 3, config: dict | None = None) -> None:
        self.base, self.config = base, config or {}
        nodes = []
        for i in range(n):
            node = TestNode(base, f"node{i}", config=self.config)
            node.config["lease"] = {"type": "consul", "candidate": True, "hostname": f"node{i}",
                                    "advertise-url": node.url, "reconnect-delay": "100ms",
                                    "consul": {"url": consul.url, "key": "litefs/primary",
                                               "ttl": f"{TTL}s", "lock-delay": f"{int(LOCK_DELAY * 1000)}ms"}}
            nodes.append(node)
        self.all = nodes

    def start(self) -> "ConsulCluster":
        self.all[0].start()  # the first node up becomes primary
        for n in self.all[1:]:
            n.start()
        return self

    def stop(self) -> None:
        for n in self.all:
            n.stop()

    def info(self, node: TestNode) -> dict | None:
        try:
            return node.info()
        except OSError:
            return None

    def current_primary(self, exclude: TestNode | None = None) -> TestNode | None:
        prims = [n for n in self.all if n is not exclude and n.proc and (self.info(n) or {}).get("isPrimary")]
        assert len(prims) <= 1, f"two primaries: {[p.dir.name for p in prims]}"
        return prims[0] if prims else None

    def use(self, primary: TestNode) -> None:
        self.primary = primary
        self.replicas = [n for n in self.all if n is not primary and n.proc is not None]


@pytest.fixture
def ccluster(tmp_path: Path, consul: ConsulStandIn) -> Iterator[ConsulCluster]:
    c = ConsulCluster(tmp_path, consul).start()
    c.use(wait_for(c.current_primary, 10, "a primary"))
    yield c
    c.stop()


def insert(node: TestNode, n: int = 1, start: int = 0, mode: str | None = None) -> None:
    con = sqlite3.connect(node.path("app.db"), isolation_level=None, timeout=5)
    try:
        if mode:
            con.execute(f"PRAGMA journal_mode={mode}")
        con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
        for i in range(start, start + n):
            con.execute("INSERT INTO t (id) VALUES (?)", (i,))
    finally:
        con.close()


def ids(node: TestNode) -> set[int]:
    con = sqlite3.connect(f"file:{node.path('app.db')}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in con.execute("SELECT id FROM t")}
    finally:
        con.close()


class Writer(threading.Thread):
    """Writes one row per transaction at ~`rate`/s to whichever node is primary; records what
    was acknowledged and the longest gap between acknowledged writes."""

    def __init__(self, cluster: ConsulCluster, rate: float = 100) -> None:
        super().__init__(daemon=True)
        self.cluster, self.interval = cluster, 1 / rate
        self.acked: list[int] = []
        self.max_gap = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        i, last = 0, time.monotonic()
        target = self.cluster.primary
        while not self.stopped.is_set():
            try:
                insert(target, 1, 10_000 + i)
                now = time.monotonic()
                if self.acked:
                    self.max_gap = max(self.max_gap, now - last)
                last = now
                self.acked.append(10_000 + i)
                i += 1
                self.stopped.wait(self.interval)
            except (sqlite3.Error, OSError):
                target = self.cluster.current_primary() or target
                self.stopped.wait(0.01)


def test_one_primary_and_replication(ccluster):
    insert(ccluster.primary, 10)
    ccluster.wait_converged("app.db")
    clusters = {ccluster.info(n)["clusterID"] for n in ccluster.all}
    assert len(clusters) == 1 and clusters.pop().startswith("LFSC")


def test_sigkill_primary_fails_over_within_ttl(ccluster):
    old = ccluster.primary
    insert(old, 20)
    ccluster.wait_converged("app.db")  # acknowledged and replicated
    old.kill()
    t0 = time.monotonic()
    new = wait_for(lambda: ccluster.current_primary(exclude=old), TTL + LOCK_DELAY + 2 + 3, "a new primary")
    took = time.monotonic() - t0
    assert took <= TTL + LOCK_DELAY + 2 + 1, took  # +1: this test's own polling and process start-up
    assert set(range(20)) <= ids(new)
    insert(new, 5, 100)
    old.start()
    ccluster.use(new)
    ccluster.wait_converged("app.db")


def test_sigterm_primary_hands_over_at_once(ccluster):
    old = ccluster.primary
    insert(old, 5)
    ccluster.wait_converged("app.db")
    t0 = time.monotonic()
    assert old.stop() == 0
    wait_for(lambda: ccluster.current_primary(exclude=old), 5, "a new primary")
    assert time.monotonic() - t0 < 2 + 1  # released lease: no TTL wait (+1 for shutdown itself)


def test_paused_primary_refuses_writes_after_its_ttl(ccluster):
    old = ccluster.primary
    insert(old, 5)
    ccluster.wait_converged("app.db")
    old.proc.send_signal(signal.SIGSTOP)
    try:
        new = wait_for(lambda: ccluster.current_primary(exclude=old), TTL + LOCK_DELAY + 5, "a new primary")
    finally:
        old.proc.send_signal(signal.SIGCONT)
    with pytest.raises(sqlite3.Error):
        insert(old, 1, 500)
    insert(new, 1, 600)
    ccluster.use(new)
    ccluster.wait_converged("app.db")
    for n in ccluster.all:
        assert 500 not in ids(n)


def test_primary_cut_off_from_consul_steps_down_before_its_ttl(ccluster, consul):
    old = ccluster.primary
    insert(old, 3)
    consul.pause()
    t0 = time.monotonic()
    try:
        wait_for(lambda: ccluster.info(old)["isPrimary"] is False, TTL, "the primary to step down")
        assert time.monotonic() - t0 < TTL
        with pytest.raises(sqlite3.Error):
            insert(old, 1, 50)
    finally:
        consul.resume()
    wait_for(lambda: ccluster.current_primary(), 10, "a primary again")


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_handoff_under_load_loses_nothing(ccluster, mode):
    old = ccluster.primary
    insert(old, 1, mode=mode)
    ccluster.wait_converged("app.db")
    writer = Writer(ccluster)
    writer.start()
    wait_for(lambda: len(writer.acked) >= 100, 10, "writes to flow")
    target = ccluster.replicas[0]
    req = urllib.request.Request(f"{target.url}/promote", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    wait_for(lambda: (ccluster.info(target) or {}).get("isPrimary"), 10, "the promoted node to lead")
    ccluster.use(target)
    count = len(writer.acked)
    wait_for(lambda: len(writer.acked) >= count + 100, 10, "writes to resume")
    writer.stopped.set()
    writer.join()
    assert set(writer.acked) <= ids(target)
    assert writer.max_gap <= 1.0, f"write outage {writer.max_gap:.2f}s"
    ccluster.wait_converged("app.db")


def test_litefs_run_promotes_then_runs_the_command(ccluster):
    import subprocess
    import sys
    insert(ccluster.primary, 1)
    ccluster.wait_converged("app.db")
    target = ccluster.replicas[1]
    out = subprocess.run([sys.executable, "-m", "litefs", "run", "--url", target.url, "--promote", "--",
                          "sqlite3", target.path("app.db"), "INSERT INTO t (id) VALUES (777)"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ccluster.info(target)["isPrimary"] and 777 in ids(target)
    out = subprocess.run([sys.executable, "-m", "litefs", "run", "--url", ccluster.primary.url, "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "not the primary" in out.stderr
