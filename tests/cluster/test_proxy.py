"""The proxy in front of an application on every node: writes reach the primary, reads wait
for them (read-your-writes), and health follows lag."""
from __future__ import annotations

import http.server
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster
from tests.nodes import free_port, wait_for


def port_open(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class App(http.server.ThreadingHTTPServer):
    """A tiny application using its node's mount: POST inserts a row, GET counts them."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        super().__init__(("127.0.0.1", 0), AppHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class AppHandler(http.server.BaseHTTPRequestHandler):
    server: App

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        con = sqlite3.connect(self.server.db_path, isolation_level=None, timeout=10)
        con.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
        con.execute("INSERT INTO notes VALUES (?)", (body.decode(),))
        con.close()
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        con = sqlite3.connect(f"file:{self.server.db_path}?mode=ro", uri=True, timeout=10)
        try:
            n = con.execute("SELECT count(*) FROM notes").fetchone()[0]
        except sqlite3.OperationalError:
            n = 0
        finally:
            con.close()
        out = str(n).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Cluster, list[int], list[App]]]:
    cluster = Cluster(tmp_path, replicas=1)
    ports, apps = [], []
    for node in cluster.nodes:
        app = App(node.path("app.db"))
        port = free_port()
        node.config["proxy"] = {"addr": f"127.0.0.1:{port}", "target": f"127.0.0.1:{app.server_address[1]}",
                                "db": "app.db", "max-lag": "2s"}
        ports.append(port)
        apps.append(app)
    cluster.start()
    for port in ports:  # the proxy starts right after the node is ready
        wait_for(lambda: port_open(port), 10, f"the proxy on {port}")
    yield cluster, ports, apps
    cluster.stop()
    for app in apps:
        app.shutdown()


def test_write_through_a_replica_is_read_back_there(proxied):
    cluster, ports, _ = proxied
    replica_proxy = f"http://127.0.0.1:{ports[1]}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    for i in range(5):
        req = urllib.request.Request(f"{replica_proxy}/notes", data=f"note {i}".encode(), method="POST")
        with opener.open(req, timeout=10) as resp:
            assert resp.status == 201
            assert "__txid=" in resp.headers["Set-Cookie"]
        # The cookie makes this read wait until the replica has the write.
        with opener.open(f"{replica_proxy}/notes", timeout=10) as resp:
            assert resp.read() == str(i + 1).encode()
    cluster.wait_converged("app.db")


def test_health_follows_lag(proxied):
    cluster, ports, _ = proxied
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/litefs/health", timeout=10) as resp:
        assert resp.read() == b"OK\n"
    cluster.primary.stop()
    # With the primary gone, the replica's lag grows past max-lag (2s).
    def unhealthy() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/litefs/health", timeout=5)
            return False
        except urllib.error.HTTPError as exc:
            return exc.code == 503
    wait_for(unhealthy, 15, "health to report the lag")
