"""Streaming replication from a static primary to read-only replicas."""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import Cluster
from tests.faultproxy import FaultProxy
from tests.nodes import wait_for


def write(node, name: str, mode: str, rows: int, start: int = 0) -> None:
    con = sqlite3.connect(node.path(name), isolation_level=None, timeout=30)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(start, start + rows):
        con.execute("INSERT INTO t (id, v) VALUES (?, ?)", (i, f"value {i} " * 10))
    con.close()


def metric(node, name: str, labels: dict | None = None) -> float:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_writes_reach_every_replica_byte_identical(cluster, mode):
    write(cluster.primary, "app.db", mode, 50)
    subprocess.run(["sqlite3", cluster.primary.path("app.db"),
                    "BEGIN; INSERT INTO t (v) SELECT v FROM t; COMMIT; DELETE FROM t WHERE id < 10;"], check=True)
    write(cluster.primary, "other.db", "delete", 5)
    cluster.wait_converged("app.db")
    cluster.wait_converged("other.db")
    for r in cluster.replicas:
        assert Path(r.path(".primary")).read_text() == "primary\n"
        assert int(Path(r.path(".lag")).read_text()) < 5000


def test_writes_on_a_replica_fail_and_change_nothing(cluster):
    write(cluster.primary, "app.db", "delete", 3)
    cluster.wait_converged("app.db")
    r = cluster.replicas[0]
    before = Path(r.path("app.db")).read_bytes()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(r.path("app.db"), isolation_level=None).execute("INSERT INTO t (v) VALUES ('no')")
    with pytest.raises(OSError) as exc:
        os.open(r.path("new.db"), os.O_CREAT | os.O_RDWR)
    assert exc.value.errno == errno.EACCES
    with pytest.raises(OSError):
        os.unlink(r.path("app.db"))
    assert Path(r.path("app.db")).read_bytes() == before
    cluster.wait_converged("app.db")


def test_late_replica_after_retention_gets_a_snapshot(tmp_path):
    cluster = Cluster(tmp_path, replicas=0, config={"data": {"retention": "100ms", "retention-monitor-interval": "50ms"}})
    cluster.start()
    try:
        write(cluster.primary, "app.db", "delete", 20)
        ltx_dir = cluster.primary.data / "dbs" / "app.db" / "ltx"
        wait_for(lambda: len(list(ltx_dir.glob("*.ltx"))) == 1, 10, "retention on the primary")
        late = cluster.replica("late")
        cluster.replicas.append(late)
        late.start()
        cluster.wait_converged("app.db")
        assert metric(cluster.primary, "litefs_http_snapshot_send_count_total", {"reason": "new-replica"}) == 1
    finally:
        cluster.stop()


def test_restarted_replica_catches_up_without_a_snapshot(cluster):
    write(cluster.primary, "app.db", "wal", 10)
    cluster.wait_converged("app.db")
    snapshots = metric(cluster.primary, "litefs_http_snapshot_send_count_total")
    r = cluster.replicas[0]
    r.stop()
    write(cluster.primary, "app.db", "wal", 40, start=10)
    r.start()
    cluster.wait_converged("app.db")
    assert metric(cluster.primary, "litefs_http_snapshot_send_count_total") == snapshots


def test_split_brain_replica_resnapshots(tmp_path):
    cluster = Cluster(tmp_path, replicas=0).start()
    try:
        write(cluster.primary, "app.db", "delete", 5)
        # Another primary with its own history of the same length: same TXID, another checksum.
        other = Cluster(tmp_path / "other", replicas=0).start()
        write(other.primary, "app.db", "delete", 5, start=1000)
        cmp = (cluster.pos(cluster.primary, "app.db"), cluster.pos(other.primary, "app.db"))
        assert cmp[0][:16] == cmp[1][:16] and cmp[0] != cmp[1]
        other.stop()
        rogue = other.primary
        (rogue.data / "clusterid").unlink()
        rogue.config["lease"].update({"candidate": False, "advertise-url": cluster.primary.url, "hostname": "primary"})
        cluster.replicas.append(rogue)
        rogue.start()
        cluster.wait_converged("app.db")
        assert metric(cluster.primary, "litefs_http_snapshot_send_count_total", {"reason": "checksum-mismatch"}) == 1
    finally:
        cluster.stop()


def test_replica_of_another_cluster_is_refused(tmp_path):
    cluster = Cluster(tmp_path, replicas=0).start()
    try:
        write(cluster.primary, "app.db", "delete", 2)
        stranger = cluster.replica("stranger")
        stranger.data.mkdir(parents=True)
        (stranger.data / "clusterid").write_text("LFSC0000000000000001\n")
        stranger.start(wait=False)
        wait_for(lambda: "cluster id mismatch" in stranger.read_log(), 15, "the refusal")
        assert not (stranger.data / "dbs" / "app.db" / "database").exists()
        stranger.stop()
    finally:
        cluster.stop()


@pytest.mark.parametrize("fault", ["cut", "flip", "delay"])
def test_faulty_network_never_applies_a_bad_file(tmp_path, fault):
    cluster = Cluster(tmp_path, replicas=0).start()
    proxy = FaultProxy("127.0.0.1", cluster.primary.port).start()
    try:
        r = cluster.replica("replica", via=proxy.url_for(""))
        cluster.replicas.append(r)
        write(cluster.primary, "app.db", "delete", 20)
        if fault == "cut":
            proxy.cut_after(600, once=True)
        elif fault == "flip":
            proxy.flip_bits(every_n_bytes=1500, seed=7)
        else:
            proxy.delay(0.02)
        r.start(wait=False)
        write(cluster.primary, "app.db", "delete", 30, start=20)
        if fault != "delay":
            wait_for(lambda: proxy.cuts or proxy.flips, 20, "the fault to happen")
        proxy.heal()
        cluster.wait_converged("app.db", timeout=40)
    finally:
        cluster.stop()
        proxy.stop()


READER = r"""
import sqlite3, sys, time, json
path, seconds = sys.argv[1], float(sys.argv[2])
seen, deadline = set(), time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        con.execute("BEGIN")
        n, total = con.execute("SELECT count(*), coalesce(sum(v), 0) FROM t").fetchone()
        a, b = con.execute("SELECT count(*), coalesce(sum(v), 0) FROM u").fetchone()
        con.execute("COMMIT")
        con.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc) or "unable to open" in str(exc):
            continue
        raise
    if (n, total) != (a, b):
        sys.exit(f"torn state: t={n},{total} u={a},{b}")
    seen.add(n)
print(json.dumps(sorted(seen)))
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_replica_readers_never_see_a_torn_state(cluster, mode):
    name = "busy.db"
    con = sqlite3.connect(cluster.primary.path(name), isolation_level=None)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE t (v INTEGER)")
    con.execute("CREATE TABLE u (v INTEGER)")
    cluster.wait_converged(name)
    readers = [subprocess.Popen([sys.executable, "-c", READER, r.path(name), "4"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for r in cluster.replicas]
    for i in range(300):  # every commit keeps t and u equal
        con.execute("BEGIN")
        con.execute("INSERT INTO t VALUES (?)", (i,))
        con.execute("INSERT INTO u VALUES (?)", (i,))
        con.execute("COMMIT")
    con.close()
    for p in readers:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert len(json.loads(out)) > 1, "the reader saw no progress"
    cluster.wait_converged(name)


def test_http_endpoints(cluster):
    p = cluster.primary
    before = metric(p, "litefs_db_commit_count_total")
    write(p, "app.db", "delete", 3)
    cluster.wait_converged("app.db")
    assert metric(p, "litefs_db_commit_count_total") == before + 4
    assert metric(p, "litefs_is_primary") == 1 and metric(cluster.replicas[0], "litefs_is_primary") == 0
    assert metric(p, "litefs_http_stream_count") == 2
    assert metric(p, "litefs_db_txid", {"db": "app.db"}) == 4
    assert metric(p, "litefs_http_frame_send_count_total", {"type": "ltx"}) >= 8
    assert metric(cluster.replicas[0], "litefs_replication_lag_seconds_count", {"db": "app.db"}) >= 4
    info = cluster.replicas[0].info()
    assert info["isPrimary"] is False and info["ready"] is True
    assert info["primary"] == {"hostname": "primary", "advertiseURL": p.url}
    assert info["clusterID"] == p.info()["clusterID"] and info["clusterID"].startswith("LFSC")
    assert info["dbs"]["app.db"]["txid"] == "%016x" % 4
    # /events: init, then one tx event per commit.
    resp = urllib.request.urlopen(f"{p.url}/events", timeout=10)
    assert json.loads(resp.readline()) == {"type": "init", "data": {"isPrimary": True, "hostname": "primary"}}
    threading.Thread(target=write, args=(p, "app.db", "delete", 1, 100)).start()
    event = json.loads(resp.readline())
    assert event["type"] == "tx" and event["db"] == "app.db" and event["data"]["txID"] == "%016x" % 5
    resp.close()
    for method, path, body, status in [("POST", "/stream", b"\x00\x00\x00\x05junk", 400),
                                       ("GET", "/stream", None, 405),
                                       ("GET", "/nope", None, 404)]:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(f"{p.url}{path}", data=body, method=method), timeout=10)
        assert exc.value.code == status
    req = urllib.request.Request(f"{cluster.replicas[0].url}/stream", data=b"\0\0\0\0", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 503


def test_new_database_appears_on_a_replica_at_once(cluster):
    r = cluster.replicas[0]
    assert not os.path.exists(r.path("fresh.db-pos"))  # now a cached negative entry
    write(cluster.primary, "fresh.db", "delete", 1)
    wait_for(lambda: "fresh.db" in r.info()["dbs"], 10, "the replica to apply it")
    # Well inside the 1 s a negative entry may be cached: the apply invalidated it.
    wait_for(lambda: os.path.exists(r.path("fresh.db-pos")), 0.5, "fresh.db-pos on the replica")
