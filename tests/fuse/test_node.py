"""The node around the mount: bad input, import/export, retention, exec, signals, systemd."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from litefs import ltx
from tests.fuse.invariants import check_chain
from tests.nodes import TestNode, wait_for


def litefs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litefs", *args], capture_output=True, text=True)


def make_db(node: TestNode, name: str = "app.db", rows: int = 20) -> None:
    con = sqlite3.connect(node.path(name), isolation_level=None)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    con.close()


def test_bad_input_gets_errno_and_changes_nothing(node, tmp_path):
    make_db(node)
    before = Path(node.path("app.db-pos")).read_text()
    data = Path(node.path("app.db")).read_bytes()
    fd = os.open(node.path("app.db"), os.O_RDWR)
    try:
        for fn in (lambda: os.pwrite(fd, b"x" * 100, 5),          # not a whole page
                   lambda: os.pwrite(fd, b"x" * 4096, 100),       # not aligned
                   lambda: os.ftruncate(fd, 0),                   # below the header
                   lambda: os.ftruncate(fd, 5000)):               # not whole pages
            with pytest.raises(OSError) as exc:
                fn()
            assert exc.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    # A journal with junk in it is no commit: unlinking it discards it.
    Path(node.path("app.db-journal")).write_bytes(os.urandom(5000))
    os.unlink(node.path("app.db-journal"))
    with pytest.raises(OSError) as exc:
        open(node.path("app.db-pos"), "w")
    assert exc.value.errno == errno.EACCES
    with pytest.raises(OSError):
        os.rename(node.path("app.db"), node.path("other.db"))
    with pytest.raises(OSError):
        os.mkdir(node.path("dir"))
    assert Path(node.path("app.db-pos")).read_text() == before
    assert Path(node.path("app.db")).read_bytes() == data
    make_db(node, "after.db")  # the daemon is still serving
    check_chain(node, "app.db", tmp_path)


def test_import_and_export(node, tmp_path):
    src = tmp_path / "seed.db"
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE seed (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO seed (v) VALUES (?)", [("s" * 200,)] * 2000)
    con.commit()
    con.close()
    out = litefs("import", "--url", node.url, "--name", "app.db", str(src))
    assert out.returncode == 0, out.stderr
    con = sqlite3.connect(node.path("app.db"))
    assert con.execute("SELECT count(*) FROM seed").fetchone()[0] == 2000
    con.close()
    ltx_dir = node.data / "dbs" / "app.db" / "ltx"
    first = sorted(ltx_dir.glob("*.ltx"))
    # Re-importing the same file is one small transaction: only pages that changed.
    assert litefs("import", "--url", node.url, "--name", "app.db", str(src)).returncode == 0
    files = sorted(ltx_dir.glob("*.ltx"))
    assert len(files) == len(first) + 1
    with open(files[-1], "rb") as f:
        dec = ltx.Decoder(f)
        dec.close()
    assert dec.page_count <= 2
    exported = tmp_path / "out.db"
    out = litefs("export", "--url", node.url, "--name", "app.db", str(exported))
    assert out.returncode == 0, out.stderr
    con = sqlite3.connect(exported)
    assert con.execute("SELECT count(*) FROM seed").fetchone()[0] == 2000
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    check_chain(node, "app.db", tmp_path)


def test_import_export_errors(node, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    out = litefs("import", "--url", node.url, "--name", "app.db", str(junk))
    assert out.returncode == 2 and "400" in out.stderr
    out = litefs("export", "--url", node.url, "--name", "missing.db", str(tmp_path / "x.db"))
    assert out.returncode == 2 and "404" in out.stderr and not (tmp_path / "x.db").exists()
    for url, method in [(f"{node.url}/import", "POST"), (f"{node.url}/export", "GET"), (f"{node.url}/nope", "GET")]:
        req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert 400 <= exc.value.code < 500


def test_debug_vars_counts_fuse_requests(node):
    make_db(node)
    with urllib.request.urlopen(f"{node.url}/debug/vars", timeout=10) as resp:
        body = json.load(resp)
    assert body["fuse_requests"]["write"] > 0
    assert body["dbs"]["app.db"]["txid"] == "%016x" % 21  # CREATE, then 20 autocommit inserts


def test_retention_keeps_the_newest(tmp_path):
    node = TestNode(tmp_path, config={"data": {"retention": "200ms", "retention-monitor-interval": "50ms"}}).start()
    try:
        make_db(node)
        for i in range(3):
            sqlite3.connect(node.path("app.db"), isolation_level=None).execute("INSERT INTO t (v) VALUES ('x')")
        ltx_dir = node.data / "dbs" / "app.db" / "ltx"
        wait_for(lambda: len(list(ltx_dir.glob("*.ltx"))) == 1, 10, "retention to remove old LTX files")
        assert sorted(ltx_dir.glob("*.ltx"))[0].name == ltx.format_filename(24, 24)
    finally:
        node.stop()


def test_exec_child_runs_when_ready_and_its_exit_ends_litefs(tmp_path):
    node = TestNode(tmp_path)
    marker = tmp_path / "child-saw"
    script = f"import os,sys; open('{marker}','w').write(str(os.listdir('{node.mount}'))); sys.exit(7)"
    node.config["exec"] = [{"cmd": f"{sys.executable} -c \"{script}\""}]
    node.start(wait=False)
    assert node.proc.wait(30) == 7
    assert marker.read_text() == "['.lag']"  # mounted, nothing written yet
    node.stop()


def test_command_after_dashes_gets_sigterm_and_sets_the_exit_code(tmp_path):
    node = TestNode(tmp_path)
    ready = tmp_path / "ready"
    script = ("import signal,sys,time,pathlib; "
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
              f"pathlib.Path('{ready}').write_text('x'); time.sleep(60)")
    node.start(args=["--", sys.executable, "-c", script])
    wait_for(ready.exists, 20, "the child to start")
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 3
    assert "received SIGTERM" in node.read_log()
    node.stop()


def test_tells_systemd_when_ready(tmp_path):
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        node = TestNode(tmp_path, env={"NOTIFY_SOCKET": str(sock_path)}).start(wait=False)
        try:
            assert sock.recv(100) == b"READY=1"
            assert Path(node.mount).is_dir() and node.proc.poll() is None
            node.wait_mounted()
        finally:
            node.stop()
        assert sock.recv(100) == b"STOPPING=1"


def test_second_node_on_the_same_data_dir_is_refused(node, tmp_path):
    other = TestNode(tmp_path, name="other")
    other.config["data"]["dir"] = str(node.data)
    other.start(wait=False)
    assert other.proc.wait(30) == 2
    assert "in use by another litefs process" in other.read_log()
    other.stop()


def test_sigterm_unmounts_and_exits_zero(node):
    make_db(node)
    assert node.stop() == 0
    assert not Path(node.mount, "app.db").exists()
