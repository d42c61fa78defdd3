"""FaultProxy: byte-exact forwarding and each injectable fault, against servers on 127.0.0.1."""
from __future__ import annotations

import http.client
import http.server
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faultproxy import BitFlipper, FaultProxy, _Flip

DEADLINE = 5.0


def _payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class _Server:
    """Thread-per-connection TCP server on 127.0.0.1; `handler(sock)` serves one connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepted = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(DEADLINE)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(DEADLINE)
        self.sock.close()
        for t in self.threads:
            t.join(DEADLINE)


def _echo(conn: socket.socket) -> None:
    for _ in range(100_000):
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def _sender(payload: bytes) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        conn.sendall(payload)
    return handler


@pytest.fixture
def server_factory() -> Iterator[Callable[[Callable[[socket.socket], None]], _Server]]:
    servers: list[_Server] = []

    def make(handler: Callable[[socket.socket], None]) -> _Server:
        servers.append(_Server(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def proxy_for() -> Iterator[Callable[[int], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def make(port: int) -> FaultProxy:
        proxies.append(FaultProxy("127.0.0.1", port).start())
        return proxies[-1]

    yield make
    for p in proxies:
        assert p.stop(), "proxy threads did not stop"


def _connect(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection(proxy.address, timeout=DEADLINE)
    s.settimeout(DEADLINE)
    return s


def _read_to_eof(s: socket.socket, limit: int = 1 << 26) -> tuple[bytes, BaseException | None]:
    """Read until EOF (or reset); returns the data and the error that ended it, if any."""
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + DEADLINE
    while total < limit and time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as exc:
            return b"".join(chunks), exc
        if not data:
            return b"".join(chunks), None
        chunks.append(data)
        total += len(data)
    raise AssertionError("no EOF before the deadline")


def _read_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + DEADLINE
    while len(buf) < n:
        assert time.monotonic() < deadline, "timed out reading"
        data = s.recv(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


def _nothing_arrives(s: socket.socket, within: float) -> bool:
    readable, _, _ = select.select([s], [], [], within)
    return not readable


# ---------------------------------------------------------------------------- forwarding


def test_forwards_large_payload_byte_identical_both_ways(server_factory, proxy_for):
    server = server_factory(_echo)
    proxy = proxy_for(server.port)
    payload = _payload(4 << 20)
    with _connect(proxy) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        sender.start()
        echoed = _read_exactly(s, len(payload))
        sender.join(DEADLINE)
        s.shutdown(socket.SHUT_WR)
        rest, err = _read_to_eof(s)
    assert echoed == payload
    assert rest == b"" and err is None
    assert proxy.wait_for(lambda p: p.active == 0, DEADLINE)
    assert proxy.bytes_c2s == proxy.bytes_s2c == len(payload)
    assert proxy.bytes_forwarded == 2 * len(payload)
    assert proxy.connections == 1 and proxy.flips == 0 and proxy.cuts == 0


def test_http_chunked_response_through_url_for(proxy_for):
    body = _payload(300_000, seed=2)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 10_000):
                part = body[i:i + 10_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        proxy = proxy_for(httpd.server_address[1])
        url = proxy.url_for("/stream")
        assert url == f"http://127.0.0.1:{proxy.port}/stream"
        assert proxy.url_for("x") == f"http://127.0.0.1:{proxy.port}/x"
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=DEADLINE)
        for _ in range(2):  # keep-alive: two requests on one proxied connection
            conn.request("GET", "/stream")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == body
        conn.close()
        assert proxy.connections == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(DEADLINE)


def test_upstream_down_closes_client(proxy_for):
    with socket.create_server(("127.0.0.1", 0)) as tmp:
        dead_port = tmp.getsockname()[1]
    proxy = proxy_for(dead_port)
    with _connect(proxy) as s:
        data, _ = _read_to_eof(s)
    assert data == b""
    assert proxy.wait_for(lambda p: p.upstream_failures == 1, DEADLINE)


# ---------------------------------------------------------------------------- cut_after


def test_cut_after_delivers_exactly_n_bytes_then_eof(server_factory, proxy_for):
    payload = _payload(200_000)
    proxy = proxy_for(server_factory(_sender(payload)).port)
    proxy.cut_after(12_345)
    for _ in range(2):  # persistent rule: every connection is cut
        with _connect(proxy) as s:
            data, err = _read_to_eof(s)
        assert err is None
        assert data == payload[:12_345]
    assert proxy.wait_for(lambda p: p.cuts == 2, DEADLINE)


def test_cut_after_once_affects_only_next_connection(server_factory, proxy_for):
    payload = _payload(100_000)
    proxy = proxy_for(server_factory(_sender(payload)).port)
    proxy.cut_after(0, once=True)
    with _connect(proxy) as s:
        assert _read_to_eof(s) == (b"", None)
    with _connect(proxy) as s:
        assert _read_to_eof(s) == (payload, None)
    assert proxy.cuts == 1 and proxy.connections == 2


def test_cut_after_reset_sends_rst(server_factory, proxy_for):
    payload = _payload(100_000)
    proxy = proxy_for(server_factory(_sender(payload)).port)
    proxy.cut_after(5_000, reset=True)
    with _connect(proxy) as s:
        data, _err = _read_to_eof(s)
    # After an RST the kernel may discard unread bytes, so only a prefix is guaranteed.
    assert len(data) <= 5_000 and data == payload[:len(data)]
    assert proxy.wait_for(lambda p: p.cuts == 1 and p.active == 0, DEADLINE)


def test_cut_after_applies_to_open_connection(server_factory, proxy_for):
    proxy = proxy_for(server_factory(_echo).port)
    with _connect(proxy) as s:
        s.sendall(b"x" * 100)
        assert _read_exactly(s, 100) == b"x" * 100
        proxy.cut_after(50)  # already past 50 bytes: cut at once
        data, err = _read_to_eof(s)
    assert data == b"" and err is None
    assert proxy.cuts == 1


def test_cut_after_client_to_server(server_factory, proxy_for):
    received: list[bytes] = []
    done = threading.Event()

    def sink(conn: socket.socket) -> None:
        chunks = []
        for _ in range(10_000):
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
        received.append(b"".join(chunks))
        done.set()

    proxy = proxy_for(server_factory(sink).port)
    proxy.cut_after(1_000, direction="c2s")
    payload = _payload(50_000)
    with _connect(proxy) as s:
        try:
            s.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            pass
        _read_to_eof(s)
    assert done.wait(DEADLINE)
    assert received == [payload[:1_000]]


# ---------------------------------------------------------------------------- delay


def test_delay_delays_each_chunk(server_factory, proxy_for):
    proxy = proxy_for(server_factory(_echo).port)
    with _connect(proxy) as s:
        proxy.delay(0.3)
        start = time.monotonic()
        s.sendall(b"ping")
        assert _read_exactly(s, 4) == b"ping"
        assert time.monotonic() - start >= 0.3
        proxy.delay(0.2, direction="both")
        start = time.monotonic()
        s.sendall(b"pong")
        assert _read_exactly(s, 4) == b"pong"
        assert time.monotonic() - start >= 0.4
        proxy.heal()
        s.sendall(b"fast")
        assert _read_exactly(s, 4) == b"fast"


# ---------------------------------------------------------------------------- flip_bits


def _popcount_diff(a: bytes, b: bytes) -> int:
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))


def test_flip_bits_every_n_bytes(server_factory, proxy_for):
    payload = _payload(65_536)
    proxy = proxy_for(server_factory(_sender(payload)).port)
    proxy.flip_bits(every_n_bytes=1000, seed=7)
    outputs = []
    for _ in range(2):
        with _connect(proxy) as s:
            data, err = _read_to_eof(s)
        assert err is None and len(data) == len(payload)
        outputs.append(data)
    assert outputs[0] == outputs[1]  # same seed, fresh RNG per connection
    diff = [i for i, (x, y) in enumerate(zip(outputs[0], payload)) if x != y]
    assert diff == list(range(999, len(payload), 1000))
    assert all(bin(outputs[0][i] ^ payload[i]).count("1") == 1 for i in diff)
    assert proxy.wait_for(lambda p: p.flips == 2 * 65, DEADLINE)
    assert sorted(off for _, _, off, _ in proxy.flip_log) == sorted(diff * 2)


def test_flip_bits_probability_is_deterministic(server_factory, proxy_for):
    payload = _payload(200_000)
    port = server_factory(_sender(payload)).port
    results = []
    for _ in range(2):
        proxy = proxy_for(port)
        proxy.flip_bits(0.001, seed=3)
        with _connect(proxy) as s:
            data, _ = _read_to_eof(s)
        assert proxy.wait_for(lambda p: p.active == 0, DEADLINE)
        results.append((data, proxy.flips))
    (a, flips_a), (b, flips_b) = results
    assert a == b and flips_a == flips_b
    assert 100 < flips_a < 300  # ~200 expected
    assert _popcount_diff(a, payload) == flips_a
    proxy.flip_bits(0.001, seed=4)
    with _connect(proxy) as s:
        c, _ = _read_to_eof(s)
    assert c != a


def test_flip_bits_only_affects_chosen_direction(server_factory, proxy_for):
    proxy = proxy_for(server_factory(_echo).port)
    proxy.flip_bits(1.0, seed=1, direction="c2s")
    with _connect(proxy) as s:
        s.sendall(b"\x00" * 64)
        echoed = _read_exactly(s, 64)
    assert _popcount_diff(echoed, b"\x00" * 64) == 64  # flipped once on the way in, not out
    assert proxy.wait_for(lambda p: p.flips == 64 and p.active == 0, DEADLINE)
    assert {d for _, d, _, _ in proxy.flip_log} == {"c2s"}


@settings(max_examples=50)
@given(data=st.binary(min_size=0, max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=8),
       seed=st.integers(0, 100), p=st.floats(0.001, 1.0))
def test_bitflipper_is_independent_of_chunking(data, cuts, seed, p):
    rule = _Flip(p, None, seed, "s2c")
    whole, flips = BitFlipper(rule, "s2c").apply(data)
    f = BitFlipper(rule, "s2c")
    parts, flips2 = [], []
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for lo, hi in zip(bounds, bounds[1:]):
        out, fl = f.apply(data[lo:hi])
        parts.append(out)
        flips2 += fl
    assert b"".join(parts) == whole and flips2 == flips
    assert _popcount_diff(whole, data) == len(flips)


# ---------------------------------------------------------------------------- blackhole, refuse


def test_blackhole_then_heal(server_factory, proxy_for):
    proxy = proxy_for(server_factory(_echo).port)
    with _connect(proxy) as s:
        s.sendall(b"one")
        assert _read_exactly(s, 3) == b"one"
        proxy.blackhole()
        s.sendall(b"lost")
        assert proxy.wait_for(lambda p: p.bytes_dropped == 4, DEADLINE)
        # A connection opened during the blackhole is accepted but goes nowhere.
        with _connect(proxy) as s2:
            s2.sendall(b"gone")
            assert proxy.wait_for(lambda p: p.bytes_dropped == 8, DEADLINE)
            assert _nothing_arrives(s, 0.2) and _nothing_arrives(s2, 0.0)
            proxy.heal()
            s.sendall(b"two")
            assert _read_exactly(s, 3) == b"two"
            s2.sendall(b"three")
            assert _read_exactly(s2, 5) == b"three"
    assert proxy.connections == 2


def test_blackhole_without_drop_holds_data_until_heal(server_factory, proxy_for):
    proxy = proxy_for(server_factory(_echo).port)
    with _connect(proxy) as s:
        s.sendall(b"a")
        assert _read_exactly(s, 1) == b"a"
        proxy.blackhole(drop=False)
        s.sendall(b"held")
        assert _nothing_arrives(s, 0.2)
        proxy.heal()
        assert _read_exactly(s, 4) == b"held"
    assert proxy.bytes_dropped == 0


def test_refuse_then_heal(server_factory, proxy_for):
    server = server_factory(_echo)
    proxy = proxy_for(server.port)
    proxy.refuse()
    with _connect(proxy) as s:
        assert _read_to_eof(s) == (b"", None)
    proxy.refuse(reset=True)
    try:  # the RST may beat connect() back to the client
        with _connect(proxy) as s:
            data, err = _read_to_eof(s)
        assert data == b"" and isinstance(err, ConnectionResetError)
    except ConnectionResetError:
        pass
    assert proxy.refused == 2 and proxy.connections == 0 and server.accepted == 0
    proxy.heal()
    with _connect(proxy) as s:
        s.sendall(b"hi")
        assert _read_exactly(s, 2) == b"hi"


# ---------------------------------------------------------------------------- stop


def test_stop_with_open_connections_is_prompt(server_factory):
    server = server_factory(_echo)
    proxy = FaultProxy("127.0.0.1", server.port)
    with proxy:
        clients = [_connect(proxy) for _ in range(4)]
        assert proxy.wait_for(lambda p: p.active == 4, DEADLINE)
        clients[0].sendall(b"x")
        assert _read_exactly(clients[0], 1) == b"x"
        proxy.delay(60)
        clients[1].sendall(b"stuck in delay")
        proxy.blackhole(drop=False)
        clients[2].sendall(b"stuck in blackhole")
        start = time.monotonic()
        assert proxy.stop()
        assert time.monotonic() - start < 2.0
        assert proxy.active == 0
    try:
        for c in clients:
            assert _read_to_eof(c)[0] == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=DEADLINE).close()
    finally:
        for c in clients:
            c.close()


def test_context_manager_and_validation():
    with FaultProxy("127.0.0.1", 9) as proxy:
        assert proxy.port > 0
        with pytest.raises(ValueError):
            proxy.flip_bits()
        with pytest.raises(ValueError):
            proxy.flip_bits(0.5, every_n_bytes=3)
        with pytest.raises(ValueError):
            proxy.cut_after(-1)
        with pytest.raises(ValueError):
            proxy.delay(1, direction="sideways")
