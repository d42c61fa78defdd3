"""The application proxy over real HTTP on 127.0.0.1.

The store is a stand-in (`StandInStore`): the real Store needs a FUSE mount to commit. The
applications are small Tornado servers whose POST "commits" by bumping the stand-in's TXID; the
primary's API server is a Tornado app mounting `forward_routes`, exactly as a node would.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from litefs.config import ProxyConfig
from litefs.http.proxy import ProxyContext, ProxyServer, forward_routes, glob_regex, parse_txid

DEADLINE = 5.0
MiB = 1 << 20


# -- stand-ins -------------------------------------------------------------------------------------

@dataclass
class StandInPos:
    txid: int = 0


@dataclass
class StandInDatabase:
    """The tracked database: a TXID and the application's data (a counter)."""

    pos: StandInPos = field(default_factory=StandInPos)
    count: int = 0


class StandInStore:
    """Stand-in for litefs.db.Store: the attributes the proxy reads."""

    def __init__(self, *, is_primary: bool, primary_url: str = "", lag_ms: int = 0) -> None:
        self.is_primary = is_primary
        self.primary_url = primary_url
        self.lag = lag_ms
        self.dbs = {"app.db": StandInDatabase()}

    def db(self, name: str) -> StandInDatabase | None:
        return self.dbs.get(name)

    def lag_ms(self) -> int:
        return self.lag


def wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class TornadoThread:
    """A Tornado application served on 127.0.0.1 by its own thread and event loop."""

    def __init__(self, app: tornado.web.Application, port: int = 0) -> None:
        self.app = app
        self.sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", family=socket.AF_INET)
        self.port = self.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        ready = threading.Event()

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.server = tornado.httpserver.HTTPServer(self.app)
            self.server.add_sockets(self.sockets)
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait()

    def stop(self) -> None:
        assert self.loop is not None

        def shutdown() -> None:
            self.server.stop()
            assert self.loop is not None
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(timeout=DEADLINE)


# -- the application -------------------------------------------------------------------------------

class AppState:
    def __init__(self, store: StandInStore, name: str) -> None:
        self.store = store
        self.name = name
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.received = 0  # request-body bytes of the POST in progress
        self.release = threading.Event()  # GET /slow sends its second half once set

    @property
    def db(self) -> StandInDatabase:
        return self.store.dbs["app.db"]


class AppHandler(tornado.web.RequestHandler):
    def initialize(self, state: AppState) -> None:
        self.state = state

    def prepare(self) -> None:
        headers: dict[str, list[str]] = {}
        for k, v in self.request.headers.get_all():
            headers.setdefault(k.lower(), []).append(v)
        self.state.requests.append((self.request.method or "", self.request.uri or "", headers))

    def get(self) -> None:
        self.set_header("X-App", self.state.name)
        self.set_header("Keep-Alive", "timeout=99")
        self.set_header("Proxy-Authenticate", "Basic")
        self.finish(json.dumps({"node": self.state.name, "count": self.state.db.count,
                                "uri": self.request.uri}))

    head = get


@tornado.web.stream_request_body
class AppWriteHandler(AppHandler):
    def prepare(self) -> None:
        super().prepare()
        self.sha = hashlib.sha256()
        self.length = 0
        self.state.received = 0

    def data_received(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.length += len(chunk)
        self.state.received = self.length

    def _commit(self) -> None:
        db = self.state.db
        db.count += 1
        db.pos.txid += 1  # the "commit": the proxy reads the TXID after the response headers
        self.set_status(201)
        self.set_header("X-App", self.state.name)
        self.set_cookie("session", "abc")
        self.finish(json.dumps({"node": self.state.name, "count": db.count, "length": self.length,
                                "sha256": self.sha.hexdigest(), "method": self.request.method}))

    post = put = delete = _commit  # type: ignore[assignment]

    def get(self) -> None:  # GET on a write path: counts as a write (always-forward tests)
        self._commit()


class SlowHandler(AppHandler):
    async def get(self) -> None:
        self.write(b"a" * 65536)
        await self.flush()
        deadline = time.monotonic() + DEADLINE
        while not self.state.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        self.write(b"b" * (3 * MiB))
        self.finish()


def app_routes(state: AppState) -> list:
    args = {"state": state}
    return [(r"/write/.*", AppWriteHandler, args), (r"/always/.*", AppWriteHandler, args),
            (r"/static/.*", AppWriteHandler, args), (r"/slow", SlowHandler, args),
            (r".*", AppHandler, args)]


def start_app(state: AppState, port: int = 0) -> TornadoThread:
    return TornadoThread(tornado.web.Application(app_routes(state), log_function=lambda h: None), port)


# -- a two-node cluster ----------------------------------------------------------------------------

@dataclass
class Node:
    store: StandInStore
    app: AppState
    app_server: TornadoThread
    proxy: ProxyServer
    api: TornadoThread | None = None
    forward_ctx: ProxyContext | None = None


BASE = ProxyConfig(addr="127.0.0.1:0", db="app.db", passthrough=["/static/*"],
                   always_forward=["/always/*"], primary_redirect_timeout=0.3)


def make_node(store: StandInStore, name: str, cleanup: list, *, api: bool = False,
              **proxy_kwargs: object) -> Node:
    state = AppState(store, name)
    app_server = start_app(state)
    cleanup.append(app_server.stop)
    config = replace(BASE, target=f"127.0.0.1:{app_server.port}")
    api_server = forward_ctx = None
    if api:  # the node's API server, reduced to the forwarding route
        routes = forward_routes(store, config)
        forward_ctx = routes[0][2]["ctx"]
        api_server = TornadoThread(tornado.web.Application(routes))
        cleanup.append(api_server.stop)
    proxy_kwargs.setdefault("txid_wait_timeout", 2.0)
    proxy = ProxyServer(store, config, **proxy_kwargs)  # type: ignore[arg-type]
    proxy.start()
    cleanup.append(proxy.stop)
    return Node(store, state, app_server, proxy, api_server, forward_ctx)


@pytest.fixture
def cleanup() -> Iterator[list]:
    fns: list = []
    yield fns
    for fn in reversed(fns):
        fn()


@pytest.fixture
def cluster(cleanup: list) -> tuple[Node, Node]:
    primary = make_node(StandInStore(is_primary=True), "primary", cleanup, api=True)
    assert primary.api is not None
    replica = make_node(StandInStore(is_primary=False, primary_url=primary.api.url, lag_ms=50),
                        "replica", cleanup)
    return primary, replica


# -- client ----------------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def cookie(self, name: str) -> str | None:
        for value in self.headers.get_all("Set-Cookie") or []:
            if value.startswith(name + "="):
                return value
        return None


def call(url: str, method: str, path: str, body: object = None,
         headers: dict[str, str] | None = None, **kwargs: object) -> Response:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {}, **kwargs)  # type: ignore[arg-type]
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def txid_of(set_cookie: str) -> int:
    m = re.match(r"__txid=([0-9a-f]{16});", set_cookie)
    assert m, set_cookie
    value = parse_txid(m.group(1))
    assert value is not None
    return value


# -- tests -----------------------------------------------------------------------------------------

def test_glob_and_cookie_parsing() -> None:
    rx = glob_regex("/static/*.css")
    assert rx.match("/static/a/b.css") and not rx.match("/x/static/a.css") and not rx.match("/static/a.cssx")
    assert glob_regex("/a.b").match("/a.b") and not glob_regex("/a.b").match("/axb")
    assert parse_txid("000000000000000a") == 10
    assert parse_txid("zz") is None and parse_txid("0" * 17) is None and parse_txid(None) is None


def test_get_passes_through(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    for node in cluster:
        resp = call(node.proxy.url, "GET", "/hello?x=1&y=%20z")
        assert resp.status == 200
        assert resp.json() == {"node": node.app.name, "count": 0, "uri": "/hello?x=1&y=%20z"}
        assert resp.headers["X-App"] == node.app.name
        assert resp.cookie("__txid") is None
    head = call(replica.proxy.url, "HEAD", "/hello")
    assert head.status == 200 and head.body == b"" and head.headers["X-App"] == "replica"


def test_post_on_primary_sets_txid_cookie_after_write(cluster: tuple[Node, Node]) -> None:
    primary, _ = cluster
    primary.app.db.pos.txid = 6
    resp = call(primary.proxy.url, "POST", "/write/x", body=b"hello")
    assert resp.status == 201
    assert resp.json()["count"] == 1 and resp.json()["length"] == 5
    cookie = resp.cookie("__txid")
    assert cookie is not None and "Path=/" in cookie and "HttpOnly" in cookie and "Max-Age=300" in cookie
    assert txid_of(cookie) == 7  # read after the application committed
    assert resp.cookie("session") is not None  # the application's own cookies come through


def test_replica_forwards_streamed_write_and_reads_its_own_write(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    payload = bytes(range(256)) * (5 * MiB // 256)
    chunk = 64 * 1024

    def body() -> Iterator[bytes]:
        # The second half is only sent once the primary's application has received 1 MiB:
        # the body is streamed through both hops, not buffered whole.
        for off in range(0, len(payload), chunk):
            if off == len(payload) // 2:
                wait_until(lambda: primary.app.received >= MiB, "the first MiB at the primary's app")
            yield payload[off:off + chunk]

    resp = call(replica.proxy.url, "POST", "/write/item?q=1", body=body(),
                headers={"Content-Length": str(len(payload)), "Content-Type": "application/octet-stream"})
    assert resp.status == 201, resp.body
    data = resp.json()
    assert data["node"] == "primary" and data["count"] == 1
    assert data["length"] == len(payload) and data["sha256"] == hashlib.sha256(payload).hexdigest()
    assert resp.headers["X-App"] == "primary"
    cookie = resp.cookie("__txid")
    assert cookie is not None and txid_of(cookie) == primary.app.db.pos.txid == 1
    assert replica.app.requests == []  # the replica's application never saw the write
    method, uri, headers = primary.app.requests[-1]
    assert (method, uri) == ("POST", "/write/item?q=1")
    assert headers["content-type"] == ["application/octet-stream"]
    assert headers["x-forwarded-for"][0].startswith("127.0.0.1")

    # Replication lags: the replica's data and TXID catch up 300 ms later.
    def replicate() -> None:
        replica.app.db.count = primary.app.db.count
        replica.app.db.pos.txid = primary.app.db.pos.txid

    timer = threading.Timer(0.3, replicate)
    timer.start()
    try:
        started = time.monotonic()
        read = call(replica.proxy.url, "GET", "/count", headers={"Cookie": cookie.split(";")[0]})
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
    assert read.status == 200
    assert read.json()["node"] == "replica" and read.json()["count"] == 1  # read-your-writes
    assert elapsed >= 0.25


def test_read_times_out_when_replica_never_catches_up(cleanup: list) -> None:
    replica = make_node(StandInStore(is_primary=False, primary_url="http://127.0.0.1:9"), "replica",
                        cleanup, txid_wait_timeout=0.3)
    resp = call(replica.proxy.url, "GET", "/count", headers={"Cookie": "__txid=00000000000000ff"})
    assert resp.status == 504 and resp.body == b"Proxy timeout\n"
    assert replica.app.requests == []
    # An invalid cookie is ignored; a satisfied one does not wait.
    replica.app.db.pos.txid = 0x100
    for cookie in ("__txid=nothex", "__txid=00000000000000ff", "other=1"):
        assert call(replica.proxy.url, "GET", "/count", headers={"Cookie": cookie}).status == 200


def test_always_forward_and_passthrough(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    resp = call(replica.proxy.url, "GET", "/always/x")
    assert resp.status == 201 and resp.json()["node"] == "primary"
    assert resp.cookie("__txid") is not None
    assert replica.app.requests == []

    resp = call(replica.proxy.url, "POST", "/static/x", body=b"abc")
    assert resp.status == 201 and resp.json()["node"] == "replica" and resp.json()["length"] == 3
    assert resp.cookie("__txid") is None
    assert [r[1] for r in primary.app.requests] == ["/always/x"]


def test_chunked_request_and_streamed_response(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    payload = b"x" * 300_000
    resp = call(replica.proxy.url, "PUT", "/write/c", body=iter([payload[:100_000], payload[100_000:]]),
                encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    assert resp.status == 201 and resp.json()["length"] == len(payload)
    resp = call(replica.proxy.url, "DELETE", "/write/d", body=iter([b"abc", b"def"]),
                encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    assert resp.status == 201 and resp.json()["length"] == 6 and resp.json()["method"] == "DELETE"
    resp = call(replica.proxy.url, "DELETE", "/write/e")
    assert resp.status == 201 and resp.json()["length"] == 0

    # The response streams: the first 64 KiB arrive before the app sends the rest.
    conn = http.client.HTTPConnection("127.0.0.1", replica.proxy.port, timeout=10)
    try:
        conn.request("GET", "/slow")
        r = conn.getresponse()
        assert r.status == 200
        assert r.read(65536) == b"a" * 65536
        replica.app.release.set()
        assert r.read() == b"b" * (3 * MiB)
    finally:
        conn.close()


def test_health_reflects_lag(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    assert call(primary.proxy.url, "GET", "/litefs/health").status == 200
    resp = call(replica.proxy.url, "GET", "/litefs/health")
    assert (resp.status, resp.body) == (200, b"OK\n")
    replica.store.lag = 10_001  # max-lag is 10 s
    resp = call(replica.proxy.url, "GET", "/litefs/health")
    assert (resp.status, resp.body) == (503, b"Replication lag exceeded\n")
    replica.store.lag = 9_000
    assert call(replica.proxy.url, "GET", "/litefs/health").status == 200
    assert replica.app.requests == []


def test_no_primary_is_503_with_retry_after(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    replica.store.primary_url = ""
    resp = call(replica.proxy.url, "POST", "/write/x", body=b"1")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert primary.app.requests == [] and replica.app.requests == []
    # A primary learned within primary-redirect-timeout is used.
    timer = threading.Timer(0.1, lambda: setattr(replica.store, "primary_url", primary.api.url))  # type: ignore[union-attr]
    timer.start()
    try:
        resp = call(replica.proxy.url, "POST", "/write/x", body=b"1")
    finally:
        timer.cancel()
    assert resp.status == 201 and resp.json()["node"] == "primary"


def test_forward_route_on_a_non_primary_is_503(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    assert primary.api is not None
    primary.store.is_primary = False  # demoted: a forwarded write must not loop
    resp = call(replica.proxy.url, "POST", "/write/x", body=b"1")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    resp = call(primary.api.url, "POST", "/litefs/proxy/write/x", body=b"1")
    assert resp.status == 503
    assert primary.app.requests == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upstream_down_is_502_and_refused_dials_are_retried(cleanup: list) -> None:
    store = StandInStore(is_primary=True)
    port = _free_port()
    proxy = ProxyServer(store, replace(BASE, target=f"127.0.0.1:{port}"), dial_retry_timeout=0.3)
    proxy.start()
    cleanup.append(proxy.stop)
    resp = call(proxy.url, "GET", "/x")
    assert resp.status == 502 and b"Traceback" not in resp.body
    resp = call(proxy.url, "POST", "/write/x", body=b"z" * 200_000)
    assert resp.status == 502

    # The application comes up while the proxy is retrying.
    proxy2 = ProxyServer(store, replace(BASE, target=f"127.0.0.1:{port}"), dial_retry_timeout=5.0)
    proxy2.start()
    cleanup.append(proxy2.stop)
    state = AppState(store, "late")

    def start_late() -> None:
        cleanup.append(start_app(state, port).stop)

    timer = threading.Timer(0.3, start_late)
    timer.start()
    try:
        resp = call(proxy2.url, "POST", "/write/x", body=b"late")
    finally:
        timer.join()
    assert resp.status == 201 and resp.json()["length"] == 4


def test_hop_by_hop_headers_are_not_forwarded(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    headers = {"Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
               "Upgrade": "websocket", "Proxy-Authorization": "Basic eA==", "TE": "trailers",
               "X-Custom": "kept", "X-Forwarded-For": "10.0.0.1"}
    for node, method, path in ((replica, "GET", "/h"), (replica, "POST", "/write/h")):
        resp = call(node.proxy.url, method, path, body=b"1" if method == "POST" else None, headers=headers)
        assert resp.status in (200, 201)
        assert "Keep-Alive" not in resp.headers and "Proxy-Authenticate" not in resp.headers
        upstream = primary if method == "POST" else replica
        _, _, got = upstream.app.requests[-1]
        for name in ("x-private", "keep-alive", "upgrade", "proxy-authorization", "te"):
            assert name not in got, name
        assert got["x-custom"] == ["kept"]
        assert got["host"] == [f"127.0.0.1:{upstream.app_server.port}"]
        assert got["x-forwarded-for"][0].startswith("10.0.0.1, 127.0.0.1")
        assert got["x-forwarded-proto"] == ["http"]
        assert got["x-forwarded-host"] == [f"127.0.0.1:{node.proxy.port}"]


def test_upstream_breaking_mid_response_closes_the_client_connection(cleanup: list) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    cleanup.append(listener.close)

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(DEADLINE)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    proxy = ProxyServer(StandInStore(is_primary=True),
                        replace(BASE, target=f"127.0.0.1:{listener.getsockname()[1]}"))
    proxy.start()
    cleanup.append(proxy.stop)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", "/x")
        r = conn.getresponse()
        assert r.status == 200 and r.headers["Content-Length"] == "100000"
        with pytest.raises(http.client.IncompleteRead):
            r.read()
    finally:
        conn.close()
    thread.join(DEADLINE)
    wait_until(lambda: not proxy.ctx.tasks, "the upstream task to end")


def test_client_going_away_mid_upload_aborts_the_upstream_request(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    with socket.create_connection(("127.0.0.1", replica.proxy.port), timeout=10) as s:
        s.sendall(b"POST /write/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n" + b"q" * 300_000)
        wait_until(lambda: primary.app.received >= 200_000, "the body start at the primary's app")
    wait_until(lambda: not replica.proxy.ctx.tasks, "the replica's upstream task to end")
    assert primary.forward_ctx is not None
    wait_until(lambda: not primary.forward_ctx.tasks, "the primary's upstream task to end")  # type: ignore[union-attr]
    assert primary.app.db.pos.txid == 0  # the write never completed
    resp = call(replica.proxy.url, "POST", "/write/y", body=b"ok")  # and the proxy still works
    assert resp.status == 201 and resp.json()["length"] == 2
