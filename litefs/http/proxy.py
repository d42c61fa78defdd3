"""The application proxy (`proxy:` config): an HTTP reverse proxy in front of the application on
every node, giving single-database apps primary redirection and read-your-writes.

Behaviour (reference §4.3, with real write forwarding instead of Fly's `fly-replay` header):

- `/litefs/health` (any method): `200 "OK\\n"`, or `503 "Replication lag exceeded\\n"` when
  `store.lag_ms() / 1000 > proxy.max-lag`.
- Paths matching a `passthrough` glob (`*` wildcards, anchored, on the decoded URL path) go
  straight to the local application (`proxy.target`), with no cookie logic.
- Reads (GET/HEAD not matching `always-forward`): when the request carries a valid `__txid`
  cookie (16 hex digits), wait until the local TXID of `proxy.db` has reached it (polled every
  1 ms; `504 "Proxy timeout"` after 5 s), then pass the request to the local application.
  An invalid cookie is ignored.
- Writes (every other method, and GET/HEAD matching `always-forward`): wait up to
  `primary-redirect-timeout` to know a primary (`503` + `Retry-After: 1` if none). On the
  primary the request goes to the local application, and the response carries
  `Set-Cookie: __txid=<TXID>` with the TXID read when the application's response headers
  arrive (after it has committed). On a replica the request is forwarded, body streamed, to the
  primary node's API server at `{primary_url}/litefs/proxy{path}?{query}`, where
  `ForwardedWriteHandler` passes it to the primary's application and adds the cookie; the
  primary's response, cookie included, is streamed back unchanged. `ForwardedWriteHandler`
  answers 503 on a node that is not the primary: a request is forwarded at most once.
- Bodies are streamed both ways with back-pressure (`stream_request_body` + a bounded pipe
  into the upstream `body_producer`; the upstream `streaming_callback` returns the client
  flush future). Hop-by-hop headers (Connection and what it names, Keep-Alive, TE, Trailer,
  Transfer-Encoding, Upgrade, Proxy-*, Expect) are dropped both ways; Host is rewritten to the
  upstream's; `X-Forwarded-For` is appended to, `X-Forwarded-Proto`/`X-Forwarded-Host` are set
  when absent. Redirects are passed back, never followed; bodies are never decompressed.
- A refused upstream connection is retried every 100 ms (30 s for the local application,
  `primary-redirect-timeout` for the primary); then, or on any other failure before the
  response starts, `502` with a one-line text body. A failure after the response started
  closes the client connection. Never a 500 with a traceback.
- Access logs go to this module's logger at DEBUG (INFO with `proxy.debug`), never WARNING.

Mounting in a node (not done here)::

    # API server: add the forwarding route next to the other API routes, e.g. in make_app:
    routes += forward_routes(store, config.proxy)          # r"/litefs/proxy/.*"
    # then, when config.proxy.target is set:
    proxy = ProxyServer(store, config.proxy)               # forwards to store.primary_url
    proxy.start() ... proxy.stop()

`ProxyServer.start`/`stop` are called from the main thread; `forward_url` defaults to
`store.primary_url + "/litefs/proxy"` (None while no primary is known).

Threading: each server runs its handlers on its own asyncio loop (`ProxyServer` in the
`litefs-proxy` thread; `ForwardedWriteHandler` on the API server's loop). Handlers never block:
store access is limited to attribute reads (`is_primary`, `primary_url`, `db(name).pos.txid`,
`lag_ms()`), and waits are `asyncio.sleep` polls bounded by deadlines. Each loop gets its own
`SimpleAsyncHTTPClient`, created lazily on that loop.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import tornado.httpserver
import tornado.ioloop
import tornado.iostream
import tornado.netutil
import tornado.web
from tornado import httputil
from tornado.httpclient import HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from litefs.config import ProxyConfig
from litefs.http.server import split_host_port

log = logging.getLogger(__name__)

TXID_COOKIE = "__txid"
COOKIE_MAX_AGE = 300  # seconds (the reference's Expires=now+5m)
HEALTH_PATH = "/litefs/health"
FORWARD_PREFIX = "/litefs/proxy"
FORWARD_PATTERN = r"/litefs/proxy/.*"

MAX_BODY_SIZE = 1 << 40
PIPE_CHUNKS = 16  # request-body chunks (≤ 64 KiB each) buffered between client and upstream
TXID_POLL_INTERVAL = 0.001
PRIMARY_POLL_INTERVAL = 0.01
DIAL_RETRY_INTERVAL = 0.1
DEFAULT_DIAL_RETRY_TIMEOUT = 30.0
DEFAULT_TXID_WAIT_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect",
})
BODY_METHODS = ("POST", "PUT", "PATCH")  # tornado's client chunks these itself without a length
SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                     "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
                     "REPORT", "SEARCH", "PURGE")
_TXID_RE = re.compile(r"[0-9a-fA-F]{16}")


class StoreView(Protocol):
    """What the proxy reads from a `litefs.db.Store`."""

    is_primary: bool
    primary_url: str

    def db(self, name: str) -> Any: ...

    def lag_ms(self) -> int: ...


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A `*` glob (the only wildcard), anchored at both ends."""
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")


def parse_txid(value: str | None) -> int | None:
    """The TXID in a `__txid` cookie value, or None when absent or malformed."""
    if value is None or not _TXID_RE.fullmatch(value):
        return None
    return int(value, 16)


def txid_cookie(txid: int, now: float | None = None) -> str:
    expires = email.utils.formatdate((time.time() if now is None else now) + COOKIE_MAX_AGE, usegmt=True)
    return f"{TXID_COOKIE}={txid:016x}; Path=/; Expires={expires}; Max-Age={COOKIE_MAX_AGE}; HttpOnly"


def target_base(target: str) -> str:
    """`proxy.target` ("host:port", ":port" or a URL) as an origin URL without trailing slash."""
    if "://" in target:
        return target.rstrip("/")
    host, _, port = target.rpartition(":")
    if not host:
        host = "127.0.0.1"
    return f"http://{host}:{port}" if port else f"http://{host}"


def _origin_form(uri: str) -> str:
    if uri.startswith("/"):
        return uri
    parts = urllib.parse.urlsplit(uri)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _strip_hop_by_hop(headers: httputil.HTTPHeaders) -> httputil.HTTPHeaders:
    named = {token.strip().lower() for value in headers.get_list("Connection") for token in value.split(",")}
    out = httputil.HTTPHeaders()
    for name, value in headers.get_all():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith("proxy-"):
            continue
        out.add(name, value)
    return out


class ProxyContext:
    """What the proxy handlers of one server share. Used on one event loop at a time."""

    def __init__(self, store: StoreView, config: ProxyConfig, *,
                 forward_url: Callable[[], str | None] | None = None,
                 dial_retry_timeout: float = DEFAULT_DIAL_RETRY_TIMEOUT,
                 txid_wait_timeout: float = DEFAULT_TXID_WAIT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self.store = store
        self.config = config
        self.target = target_base(config.target)
        self.forward_url = forward_url or self._primary_forward_url
        self.dial_retry_timeout = dial_retry_timeout
        self.txid_wait_timeout = txid_wait_timeout
        self.connect_timeout = connect_timeout
        self.passthrough = [glob_regex(p) for p in config.passthrough]
        self.always_forward = [glob_regex(p) for p in config.always_forward]
        self.tasks: set[asyncio.Task[None]] = set()
        self._client: SimpleAsyncHTTPClient | None = None

    def _primary_forward_url(self) -> str | None:
        url = self.store.primary_url
        return url.rstrip("/") + FORWARD_PREFIX if url else None

    def client(self) -> SimpleAsyncHTTPClient:
        loop = tornado.ioloop.IOLoop.current()
        if self._client is None or self._client.io_loop is not loop:
            self._client = SimpleAsyncHTTPClient(force_instance=True, max_clients=1024,
                                                 max_body_size=MAX_BODY_SIZE)
        return self._client

    def close(self) -> None:
        """Close the HTTP client; call on the loop that used it."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def local_txid(self) -> int:
        db = self.store.db(self.config.db) if self.config.db else None
        return db.pos.txid if db is not None else 0

    def primary_known(self) -> bool:
        return self.store.is_primary or self.forward_url() is not None

    def lagging(self) -> bool:
        return self.store.lag_ms() / 1000 > self.config.max_lag

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        request = handler.request
        log.log(logging.INFO if self.config.debug else logging.DEBUG, "proxy: %d %s %s (%s) %.2fms",
                handler.get_status(), request.method, request.uri, request.remote_ip,
                1000.0 * request.request_time())


class _BodyPipe:
    """Request-body chunks from the client handler to the upstream body producer, bounded."""

    _ABORT = object()

    def __init__(self, chunked: bool) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(PIPE_CHUNKS)
        self.chunked = chunked  # frame chunks ourselves (methods tornado's client won't chunk)
        self.closed = False
        self.started = False

    async def put(self, chunk: bytes | None) -> None:
        """A body chunk, or None at the end of the body. Dropped once the pipe is closed."""
        if not self.closed:
            await self.queue.put(chunk)

    def close(self, abort: bool = False) -> None:
        """The consumer is gone (abort=False) or the client is (abort=True): unblock the
        writer, and with abort make the producer fail so the upstream request ends."""
        if self.closed:
            return
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        if abort:
            self.queue.put_nowait(self._ABORT)

    async def produce(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self.started = True
        while True:
            chunk = await self.queue.get()
            if chunk is self._ABORT:
                raise tornado.iostream.StreamClosedError()
            if chunk is None:
                break
            if chunk:
                await write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked else chunk)
        if self.chunked:
            await write(b"0\r\n\r\n")


@tornado.web.stream_request_body
class _UpstreamHandler(tornado.web.RequestHandler):
    """Streams one request to an upstream URL and its response back."""

    SUPPORTED_METHODS = SUPPORTED_METHODS  # type: ignore[assignment]

    def initialize(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self._pipe: _BodyPipe | None = None
        self._task: asyncio.Task[None] | None = None
        self._client_gone = False
        self._response_started = False
        self._upstream_status: tuple[int, str] | None = None
        self._upstream_headers = httputil.HTTPHeaders()

    # -- tornado hooks ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        connection = self.request.connection
        if connection is not None:
            connection.set_max_body_size(MAX_BODY_SIZE)  # type: ignore[attr-defined]
            if self.ctx.config.read_timeout > 0:
                connection.set_body_timeout(self.ctx.config.read_timeout)  # type: ignore[attr-defined]
        await self.route()

    async def route(self) -> None:
        raise NotImplementedError

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._pipe is not None:
            return self._pipe.put(chunk)
        return None

    async def _complete(self, *args: str) -> None:
        """Every method: the request body has been received."""
        if self._pipe is not None:
            await self._pipe.put(None)
        if self._task is None:
            return
        try:
            await self._task
        except asyncio.CancelledError:  # the server is stopping
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            self.reply(503, "Proxy shutting down\n", retry_after=True)

    get = head = post = put = patch = delete = options = _complete  # type: ignore[assignment]
    propfind = proppatch = mkcol = copy = move = lock = unlock = report = search = purge = _complete

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._pipe is not None:
            self._pipe.close(abort=True)
        super().on_connection_close()

    def compute_etag(self) -> str | None:
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{self._reason}\n")

    def _log(self) -> None:
        self.ctx.log_request(self)

    # -- local replies ---------------------------------------------------------------------------

    def reply(self, status: int, text: str, *, retry_after: bool = False) -> None:
        if self._finished or self._client_gone:
            return
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if retry_after:
            self.set_header("Retry-After", "1")
        self.finish(text)

    async def wait_for_primary(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.config.primary_redirect_timeout
        while not self.ctx.primary_known():
            if loop.time() >= deadline or self._client_gone:
                return False
            await asyncio.sleep(PRIMARY_POLL_INTERVAL)
        return True

    # -- upstream --------------------------------------------------------------------------------

    def start_upstream(self, base: Callable[[], str | None], uri: str, *, set_cookie: bool,
                       retry_for: float) -> None:
        """Start streaming this request to `base() + uri`; the body follows as it arrives."""
        headers = self._request_headers()
        method = self.request.method or "GET"
        body: bytes | None = None
        if "Transfer-Encoding" in self.request.headers or int(self.request.headers.get("Content-Length", "0") or 0) > 0:
            chunked = "Content-Length" not in self.request.headers and method not in BODY_METHODS
            if chunked:
                headers["Transfer-Encoding"] = "chunked"
            elif "Content-Length" in self.request.headers:
                headers["Content-Length"] = self.request.headers["Content-Length"]
            self._pipe = _BodyPipe(chunked)
        elif method in BODY_METHODS:
            body = b""
        self._task = asyncio.ensure_future(self._run_upstream(base, uri, method, headers, body, set_cookie, retry_for))
        self.ctx.tasks.add(self._task)
        self._task.add_done_callback(self.ctx.tasks.discard)

    def _request_headers(self) -> httputil.HTTPHeaders:
        headers = _strip_hop_by_hop(self.request.headers)
        for name in ("Host", "Content-Length"):
            headers.pop(name, None)
        forwarded_for = ", ".join(headers.get_list("X-Forwarded-For"))
        headers.pop("X-Forwarded-For", None)
        ip = self.request.remote_ip or ""
        headers["X-Forwarded-For"] = f"{forwarded_for}, {ip}" if forwarded_for else ip
        if "X-Forwarded-Proto" not in headers:
            headers["X-Forwarded-Proto"] = self.request.protocol
        if "X-Forwarded-Host" not in headers and self.request.host:
            headers["X-Forwarded-Host"] = self.request.host
        return headers

    async def _run_upstream(self, base: Callable[[], str | None], uri: str, method: str,
                            headers: httputil.HTTPHeaders, body: bytes | None, set_cookie: bool,
                            retry_for: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        try:
            while True:
                prefix = base()
                if prefix is None:
                    self.reply(503, "No primary is known\n", retry_after=True)
                    return
                url = prefix + uri
                request = HTTPRequest(
                    url, method=method, headers=headers.copy(), body=body,
                    body_producer=self._pipe.produce if self._pipe is not None else None,
                    header_callback=functools.partial(self._on_header_line, set_cookie),
                    streaming_callback=self._on_chunk, follow_redirects=False,
                    decompress_response=False, allow_nonstandard_methods=True,
                    connect_timeout=self.ctx.connect_timeout,
                    request_timeout=self.ctx.config.write_timeout)
                try:
                    await self.ctx.client().fetch(request, raise_error=False)
                except ConnectionRefusedError as exc:
                    if self._client_gone:
                        return
                    if (self._pipe is not None and self._pipe.started) or loop.time() + DIAL_RETRY_INTERVAL > deadline:
                        self._upstream_failed(url, exc)
                        return
                    await asyncio.sleep(DIAL_RETRY_INTERVAL)
                    continue
                except Exception as exc:  # noqa: BLE001 — any upstream failure is a 502, not a 500
                    self._upstream_failed(url, exc)
                    return
                if not self._response_started:
                    self._upstream_failed(url, RuntimeError("no response headers"))
                elif not self._finished and not self._client_gone:
                    self.finish()
                return
        finally:
            if self._pipe is not None:
                self._pipe.close()

    def _upstream_failed(self, url: str, exc: BaseException) -> None:
        if self._client_gone:
            log.debug("proxy: client went away during %s %s: %r", self.request.method, url, exc)
            return
        if self._response_started:
            log.info("proxy: upstream %s failed mid-response: %r", url, exc)
            stream = getattr(self.request.connection, "stream", None)
            if stream is not None:
                stream.close()
            return
        log.info("proxy: upstream %s unreachable: %r", url, exc)
        self.reply(502, "Bad gateway: upstream unavailable\n")

    def _on_header_line(self, set_cookie: bool, line: str) -> None:
        if self._upstream_status is None:
            start = httputil.parse_response_start_line(line.rstrip("\r\n"))
            self._upstream_status = (start.code, start.reason)
            self._upstream_headers = httputil.HTTPHeaders()
        elif line in ("\r\n", "\n", ""):
            code, reason = self._upstream_status
            self._upstream_status = None
            if not 100 <= code < 200:
                self._start_response(code, reason, set_cookie)
        else:
            self._upstream_headers.parse_line(line.rstrip("\r\n"))

    def _start_response(self, code: int, reason: str, set_cookie: bool) -> None:
        if self._client_gone or self._finished:
            return
        self._response_started = True
        self.set_status(code, reason or httputil.responses.get(code, "Unknown"))
        for name in ("Content-Type", "Server", "Date"):
            self.clear_header(name)
        for name, value in _strip_hop_by_hop(self._upstream_headers).get_all():
            self.add_header(name, value)
        if set_cookie:
            txid = self.ctx.local_txid()  # read now: the application has committed
            if txid:
                self.add_header("Set-Cookie", txid_cookie(txid))
        self.flush()

    def _on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        if self._client_gone or self._finished:
            raise tornado.iostream.StreamClosedError()
        self.write(chunk)
        return self.flush()  # the upstream read waits for the client: back-pressure


class ProxyHandler(_UpstreamHandler):
    """Every request to the proxy port."""

    async def route(self) -> None:
        ctx = self.ctx
        path = urllib.parse.unquote(self.request.path)
        uri = _origin_form(self.request.uri or "/")
        local = lambda: ctx.target  # noqa: E731
        if self.request.path == HEALTH_PATH:
            if ctx.lagging():
                self.reply(503, "Replication lag exceeded\n")
            else:
                self.reply(200, "OK\n")
            return
        if any(rx.match(path) for rx in ctx.passthrough):
            self.start_upstream(local, uri, set_cookie=False, retry_for=ctx.dial_retry_timeout)
            return
        if self.request.method in ("GET", "HEAD") and not any(rx.match(path) for rx in ctx.always_forward):
            if not await self._wait_for_txid():
                self.reply(504, "Proxy timeout\n")
                return
            self.start_upstream(local, uri, set_cookie=False, retry_for=ctx.dial_retry_timeout)
            return
        if not await self.wait_for_primary():
            self.reply(503, "No primary is known\n", retry_after=True)
            return
        if ctx.store.is_primary:
            self.start_upstream(local, uri, set_cookie=True, retry_for=ctx.dial_retry_timeout)
        else:
            self.start_upstream(ctx.forward_url, uri, set_cookie=False,
                                retry_for=ctx.config.primary_redirect_timeout)

    async def _wait_for_txid(self) -> bool:
        want = parse_txid(self.get_cookie(TXID_COOKIE))
        if want is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.txid_wait_timeout
        while self.ctx.local_txid() < want:
            if loop.time() >= deadline or self._client_gone:
                return False
            await asyncio.sleep(TXID_POLL_INTERVAL)
        return True


class ForwardedWriteHandler(_UpstreamHandler):
    """`/litefs/proxy/<path>` on the API server: a write forwarded by a replica's proxy. The
    primary passes it to its application and adds the `__txid` cookie; any other node says 503."""

    async def route(self) -> None:
        ctx = self.ctx
        if not ctx.store.is_primary:
            self.reply(503, "This node is not the primary\n", retry_after=True)
            return
        uri = _origin_form(self.request.uri or "/")
        uri = uri[len(FORWARD_PREFIX):] if uri.startswith(FORWARD_PREFIX + "/") else "/"
        self.start_upstream(lambda: ctx.target, uri, set_cookie=True,
                            retry_for=ctx.dial_retry_timeout)


def forward_routes(store: StoreView, config: ProxyConfig, **options: Any) -> list[tuple[str, type, dict]]:
    """Routes for the node's API server application (`options`: see `ProxyContext`)."""
    return [(FORWARD_PATTERN, ForwardedWriteHandler, {"ctx": ProxyContext(store, config, **options)})]


def make_app(ctx: ProxyContext) -> tornado.web.Application:
    return tornado.web.Application([(r".*", ProxyHandler, {"ctx": ctx})], log_function=ctx.log_request)


class ProxyServer:
    """The proxy on `config.addr`, with its own thread and event loop."""

    def __init__(self, store: StoreView, config: ProxyConfig, **options: Any) -> None:
        """`options` are ProxyContext's (forward_url, and the timeouts)."""
        self.store = store
        self.config = config
        self.ctx = ProxyContext(store, config, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        host, port = split_host_port(self.config.addr)
        sockets = tornado.netutil.bind_sockets(port, host or None, family=socket.AF_INET if not host else socket.AF_UNSPEC)
        self.port = sockets[0].getsockname()[1]
        idle = max(self.config.idle_timeout, self.config.read_header_timeout) or 3600.0
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = tornado.httpserver.HTTPServer(
                make_app(self.ctx), max_body_size=MAX_BODY_SIZE, idle_connection_timeout=idle,
                body_timeout=self.config.read_timeout or None)
            self._server.add_sockets(sockets)
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="litefs-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        log.info("proxy listening on: %s, target %s, db %s", self.url, self.ctx.target, self.config.db)

    @property
    def url(self) -> str:
        host, _ = split_host_port(self.config.addr)
        return f"http://{host or '127.0.0.1'}:{self.port}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.stop()
            for task in list(self.ctx.tasks):
                task.cancel()
            if self.ctx.tasks:
                await asyncio.wait(list(self.ctx.tasks), timeout=1.0)
            self.ctx.close()
            loop.stop()

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        self._thread.join(timeout=10)
        self._loop = None
