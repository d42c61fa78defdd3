"""A real node archiving as it commits, and `litefs restore` from that archive (file and S3)."""
from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from litefs import ltx
from tests.archive.conftest import Backend, aws_env, backend, moto_server  # noqa: F401  (fixtures)
from tests.nodes import TestNode, wait_for


def archive_yaml(b: Backend) -> dict:
    common = {"upload-interval": "100ms", "levels": [{"interval": "1s"}, {"interval": "3s"}],
              "snapshot-interval": "1h", "retention": "1h", "prefix": "backups/prod"}
    if b.kind == "file":
        return {"type": "file", "path": b.config.path, **common}
    return {"type": "s3", "bucket": b.bucket, "endpoint": b.endpoint, "force-path-style": True, **common}


def hwm(node: TestNode, name: str) -> float:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as resp:
        for family in text_string_to_metric_families(resp.read().decode()):
            for s in family.samples:
                if s.name == "litefs_archive_hwm_txid" and s.labels.get("db") == name:
                    return s.value
    return 0


def restore(url: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    out.unlink(missing_ok=True)
    return subprocess.run([sys.executable, "-m", "litefs", "restore", "--url", url, "--db", "app.db",
                           "-o", str(out), *args], capture_output=True, text=True, timeout=120)


def test_node_archives_and_restores_any_commit(tmp_path, backend):
    node = TestNode(tmp_path, config={"archive": archive_yaml(backend)}).start()
    history = []  # (time after the commit, TXID, checksum)
    try:
        con = sqlite3.connect(node.path("app.db"), isolation_level=None)
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(60):
            con.execute("INSERT INTO t (v) VALUES (?)", (f"row {i} " * random.randint(1, 40),))
            if i % 20 == 10:
                con.execute("DELETE FROM t WHERE id % 3 = 0")
            pos = ltx.Pos.parse(Path(node.path("app.db-pos")).read_text())
            history.append((datetime.now(timezone.utc), pos))
        con.close()
        last = history[-1][1].txid
        wait_for(lambda: hwm(node, "app.db") >= last, 30, "the archive to catch up")
    finally:
        node.stop()
    out = tmp_path / "restored.db"
    for when, pos in random.Random(3).sample(history, 6) + [history[-1]]:
        for args in (["--txid", str(pos.txid)], ["--at", when.isoformat(timespec="milliseconds")]):
            result = restore(backend.url, out, *args)
            assert result.returncode == 0, result.stderr
            assert ltx.database_checksum(out) == pos.checksum, (args, result.stdout)
            con = sqlite3.connect(out)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            con.close()
    # Before the first commit is outside what the archive holds: a clear failure.
    result = restore(backend.url, out, "--at", "2000-01-01T00:00:00Z")
    assert result.returncode == 6 and "window" in (result.stderr + result.stdout)
