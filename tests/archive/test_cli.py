"""`litefs restore` and `litefs archive ls`, run through the real argument parser (and once as a
subprocess), against both backends."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from litefs.archive.layout import format_time
from litefs.cli import main
from litefs.ltx.checksum import database_checksum
from litefs.ltx.files import encode_snapshot
from litefs.ltx.format import format_filename

from .helpers import archive_objects, drive, new_worker, sqlite_ok
from .workload import FakeClock, Workload

DB = "app.db"


@pytest.fixture
def archived(backend, tmp_path):
    rng = random.Random(20)
    clock = FakeClock()
    data = tmp_path / "data"
    wl = Workload(data, DB, clock, seed=20)
    worker = new_worker(backend, data, clock)
    drive(worker, wl, clock, 55, rng=rng)
    return wl, worker, clock


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_restore_at_time_txid_and_latest(backend, archived, tmp_path, capsys):
    wl, _, _ = archived
    out = tmp_path / "restored.db"
    at = wl.records[40].time_ms + 1  # just after commit 41: the state after it, exactly
    want = 41
    code, text, err = run(capsys, "restore", "--url", backend.url, "--db", DB, "--at", format_time(at), "-o", out)
    assert code == 0, err
    assert f"restored {DB} to TXID {want:016x} ({want}), committed at {format_time(wl.state(want).time_ms)}" in text
    assert database_checksum(out) == wl.state(want).checksum and sqlite_ok(out)
    # --if-not-exists leaves an existing file alone; without it, restore refuses.
    code, text, _ = run(capsys, "restore", "--url", backend.url, "-o", out, "--if-not-exists")
    assert code == 0 and "exists" in text and database_checksum(out) == wl.state(want).checksum
    code, _, err = run(capsys, "restore", "--url", backend.url, "-o", out)
    assert code == 2 and "already exists" in err
    out.unlink()
    # Unix seconds, --txid, and the latest state (the only database, so --db may be left out).
    code, text, _ = run(capsys, "restore", "--url", backend.url, "--at", str(at / 1000), "-o", out, "--json")
    assert code == 0 and json.loads(text)["restored"]["txidDecimal"] == want
    out.unlink()
    code, text, _ = run(capsys, "restore", "--url", backend.url, "--txid", want, "-o", out, "--parallel", 2)
    assert code == 0 and database_checksum(out) == wl.state(want).checksum
    out.unlink()
    # Any TXID, not just where an object ends.
    for txid in (2, 17, 33, wl.txid - 1):
        code, text, _ = run(capsys, "restore", "--url", backend.url, "--txid", txid, "-o", out)
        assert code == 0 and f"restored {DB} to TXID {txid:016x} ({txid})" in text
        assert database_checksum(out) == wl.state(txid).checksum
        out.unlink()
    code, text, _ = run(capsys, "restore", "--url", backend.url, "--at", "-15m", "-o", out)
    assert code == 0 and f"TXID {wl.txid:016x}" in text
    assert "after the last archived commit; restored the latest archived commit" in text
    assert format_time(wl.records[-1].time_ms) in text
    assert database_checksum(out) == wl.checksum


def test_dry_run_prints_the_plan(backend, archived, capsys):
    wl, _, _ = archived
    code, text, _ = run(capsys, "restore", "--url", backend.url, "--db", DB, "--dry-run", "--json")
    assert code == 0
    plan = json.loads(text)["plan"]
    assert plan["restores"]["txidDecimal"] == wl.txid and plan["objects"][0]["level"] == 9
    assert plan["objectCount"] == len(plan["objects"]) <= 30
    code, text, _ = run(capsys, "restore", "--url", backend.url, "--dry-run", "--txid", "0x10")
    assert code == 0 and "restores TXID 0000000000000010 (16)" in text and "0009/" in text
    at = format_time(wl.records[30].time_ms + 1)
    code, text, _ = run(capsys, "restore", "--url", backend.url, "--dry-run", "--at", at, "--json")
    plan = json.loads(text)["plan"]
    assert plan["objects"][0]["level"] == 9 and plan["objectCount"] <= 30
    if plan["restores"] is None:  # decided inside the last bundle, by its commit times
        assert plan["stopTime"] == at and plan["objects"][-1]["level"] == 0
    else:
        assert plan["restores"]["txidDecimal"] == 31


def test_restore_errors_exit_6_and_name_the_problem(backend, archived, tmp_path, capsys):
    wl, _, _ = archived
    out = tmp_path / "x.db"
    code, _, err = run(capsys, "restore", "--url", backend.url, "--at", "2001-01-01T00:00:00Z", "-o", out)
    assert code == 6 and err.startswith("litefs: cannot restore") and "before the restorable window" in err
    code, _, err = run(capsys, "restore", "--url", backend.url, "--txid", wl.txid + 5, "-o", out)
    assert code == 6 and "last TXID" in err
    code, _, err = run(capsys, "restore", "--url", backend.url, "--at", "yesterday-ish", "-o", out)
    assert code == 2 and "invalid time" in err
    code, _, err = run(capsys, "restore", "--url", backend.url, "--db", "nope.db", "-o", out)
    assert code == 6 and "no archive for database 'nope.db'" in err
    assert not out.exists()


def test_gap_through_the_cli(backend, archived, tmp_path, capsys):
    """Local files lost before archiving, then a local snapshot: a new lineage, and a named gap."""
    wl, worker, clock = archived
    archived_txid = wl.txid
    for _ in range(6):
        clock.advance(0.5)
        wl.random_commit()
    for t in range(archived_txid + 1, wl.txid + 1):
        (wl.ltx_dir / format_filename(t, t)).unlink()
    snap = wl.ltx_dir / format_filename(1, wl.txid)
    with open(snap, "wb") as f, open(wl.src, "rb") as db:
        encode_snapshot(db.fileno(), f, page_size=wl.page_size, commit=len(wl.prev) // wl.page_size,
                        max_txid=wl.txid, timestamp=wl.records[-1].time_ms)
    drive(worker, wl, clock, 5, rng=random.Random(1))
    inside = wl.state(archived_txid + 3).time_ms
    code, _, err = run(capsys, "restore", "--url", backend.url, "--at", format_time(inside), "-o", tmp_path / "g.db")
    assert code == 6
    assert f"({archived_txid + 1}..{archived_txid + 5}) are missing from the archive" in err
    code, text, _ = run(capsys, "archive", "ls", "--url", backend.url, "--json")
    gaps = json.loads(text)["databases"][0]["window"]["gaps"]
    assert [(int(g["from"], 16), int(g["to"], 16)) for g in gaps] == [(archived_txid + 1, archived_txid + 5)]
    code, text, _ = run(capsys, "restore", "--url", backend.url, "-o", tmp_path / "g.db")
    assert code == 0 and database_checksum(tmp_path / "g.db") == wl.checksum


def test_archive_ls_agrees_with_the_bucket(backend, archived, tmp_path, capsys):
    wl, _, clock = archived
    wl2 = Workload(tmp_path / "data", "other.db", clock, seed=3)
    worker = new_worker(backend, tmp_path / "data", clock)
    drive(worker, wl2, clock, 10, rng=random.Random(2))
    code, text, _ = run(capsys, "archive", "ls", "--url", backend.url, "--json", "--all")
    assert code == 0
    doc = json.loads(text)
    assert [d["db"] for d in doc["databases"]] == [DB, "other.db"]
    root = backend.layout.root
    # A file:// URL names the prefix's directory itself, so its keys are relative to the prefix.
    rel = (lambda k: k) if backend.kind == "s3" else (lambda k: root + k)
    listed = {i.key for i in backend.store.list(root)}
    shown = {rel(o["key"]) for d in doc["databases"] for o in d["objects"]}
    manifests = {backend.layout.manifest_key(db) for db in (DB, "other.db")}
    assert shown == listed - manifests
    for d in doc["databases"]:
        assert not d["unindexed"] and not any(o.get("missing") for o in d["objects"])
        for o in d["objects"]:
            assert backend.store.head(rel(o["key"])).size == o["size"]
    app = doc["databases"][0]
    assert app["window"]["end"]["txidDecimal"] == wl.txid and app["window"]["start"]["txidDecimal"] == 1
    assert app["l0"]["complete"] and app["l0"]["objects"] == sum(o["level"] == 0 for o in app["objects"])
    assert sum(lv["objects"] for lv in app["levels"]) + app["l0"]["objects"] == len(app["objects"])
    # Without --all: the manifest (one GET), the compacted levels checked against a listing, and only
    # the bundles after the newest compaction (one LIST of level 0 with StartAfter).
    code, text, _ = run(capsys, "archive", "ls", "--url", backend.url, "--json", "--db", DB)
    app2 = json.loads(text)["databases"][0]
    compacted = max(o.max_txid for o in archive_objects(backend, DB) if o.level > 0)
    assert int(app2["l0"]["listedFrom"], 16) == compacted + 1 and not app2["l0"]["complete"]
    assert {o["name"] for o in app2["objects"]} == {o["name"] for o in app["objects"]
                                                     if o["level"] > 0 or int(o["min"], 16) > compacted}
    assert app2["window"] == app["window"]
    code, text, _ = run(capsys, "archive", "ls", "--url", backend.url, "--db", "other.db")
    assert code == 0 and text.startswith("other.db: restorable from") and "level 9 (snapshots)" in text
    assert "level 0 (bundles, one per upload)" in text


def test_config_file_and_subprocess(backend, archived, tmp_path):
    wl, _, _ = archived
    cfg = backend.config
    lines = ["archive:", f"  type: {cfg.type}", f"  prefix: {cfg.prefix}"]
    if cfg.type == "file":
        lines.append(f"  path: {cfg.path}")
    else:
        lines += [f"  bucket: {cfg.bucket}", f"  endpoint: {cfg.endpoint}", "  force-path-style: true"]
    conf = tmp_path / "litefs.yml"
    conf.write_text("\n".join(lines) + "\n")
    out = tmp_path / "c.db"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    p = subprocess.run([sys.executable, "-m", "litefs", "restore", "--config", str(conf), "--db", DB, "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert database_checksum(out) == wl.checksum
    p = subprocess.run([sys.executable, "-m", "litefs", "restore", "--config", str(conf), "--db", DB,
                        "--txid", str(wl.txid + 100), "-o", str(tmp_path / "d.db")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 6 and "litefs: cannot restore" in p.stderr, p.stderr
