"""ConsulStandIn: a small Consul-compatible HTTP server for tests. It is NOT Consul.

Consul cannot be installed here, so the Consul lease is tested against this stand-in. It serves
real HTTP on 127.0.0.1 (a free port unless one is given). One thread per connection means
concurrent blocking queries work. It implements the part of Consul's HTTP API that py-consul
calls for the lease, with Consul's documented semantics:

- `PUT /v1/session/create`: body keys are case-insensitive, as in Go's JSON decoding: Name, Node,
  LockDelay ("1s", or a number: below 1000 it counts seconds, otherwise nanoseconds),
  Behavior ("release" | "delete"), TTL ("10s"; 0 or "" means no TTL), Checks and NodeChecks.
  Without either, the session gets the `serfHealth` check. `Checks: []` means no checks at all.
  The stand-in has no health checks, so `serfHealth` always passes. Any other check id is
  rejected, as Consul rejects unregistered checks. Returns {"ID": …}.
- `PUT /v1/session/renew/<id>` returns [session], or 404 once the session is gone.
  `PUT /v1/session/destroy/<id>`. `GET /v1/session/info/<id>` returns [] when the session is
  gone. Also `GET /v1/session/list` and `GET /v1/session/node/<node>`.
- `GET /v1/kv/<key>` with `?recurse`, `?keys` (and `&separator=`), `?raw`, and blocking queries
  (`?index=N&wait=5s`; `wait` defaults to 5 min). Every answer carries `X-Consul-Index` (the KV
  table index), including a 404 for a missing key. A blocking query returns once a key in its
  scope is written or deleted after N, or when `wait` runs out. As in Consul, an index ahead of the
  server's is reset to 0.
- `PUT /v1/kv/<key>` with `?cas=`, `?flags=`, `?acquire=<sid>` or `?release=<sid>` answers
  `true`/`false`. `acquire` overrides `cas`, as in Consul's handler. `DELETE /v1/kv/<key>`
  accepts `?recurse` and `?cas=`.
- `PUT /v1/catalog/register` (node only), and `GET /v1/status/leader`.

KV entries carry CreateIndex, ModifyIndex, LockIndex, Flags, Value (base64) and Session. A
global Raft-like index rises on every write. A session held past its TTL without renewal is
invalidated, and so is a destroyed one. On invalidation, "delete" deletes the keys the session
holds and "release" releases them. Either way each of those keys gets a lock-delay: for
`LockDelay`, no session can acquire it (Consul's leader-side check). An explicit `?release=`
sets no lock-delay.

Deviations from Consul, chosen for tests:
- TTL: Consul only promises that a session lives *at least* its TTL, and really invalidates it
  after up to 2×TTL. The stand-in invalidates it after exactly TTL, so tests stay short and the
  primary's safety margin is tested at its tightest. Consul's minimum TTL is its server option
  `session_ttl_min`, 10 s by default. Here that is `min_ttl`, also 10 s by default.
- Time: TTLs and lock-delays run on `clock` (default time.monotonic). Pass a `ManualClock` and call
  `advance()` to test 10 s TTLs deterministically and at once. Expiry is checked at the start of
  every request and by a reaper thread every ≤ 50 ms. Blocking-query `wait`s always run in real
  time.
- Restart: on `start()` after `stop()`, state is kept and every session's TTL restarts, as after a
  Consul leader election.
- No ACL system: `require_token` makes requests without that token answer 403. Every request's
  X-Consul-Token (or `?token=`) is recorded in `requests`.

Misbehaviour switches for fault tests:
- `pause(token=None)` / `resume()`: a network partition. Requests (from everybody, or only from
  clients using `token`) hang without an answer. On `resume()`, the hung ones are dropped
  unanswered, the way a partition loses packets, and later requests are served again. Blocking
  queries caught by a pause are dropped as well. The server's clock keeps running, so sessions
  expire during a pause.
- `stop()` / `start()`: Consul is down, then back on the same port. `stop()` also cuts open
  keep-alive connections.
- `grant_all(True)`: every `?acquire=` succeeds, even on a key another session holds, giving two
  primaries (split-brain tests).
- `before_request(method, path)`: a hook called before each request is handled, e.g. to move a
  ManualClock while a request is in flight.
"""
from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_LOCK_DELAY = 60.0
MAX_VALUE_SIZE = 512 * 1024
AGENT_NODE = "consul-standin"
SERF_HEALTH = "serfHealth"

_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Parse a Go duration ("10s", "1m30s", "500ms", "0") into seconds; ValueError if bad."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * total


def format_go_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


class ManualClock:
    """A monotonic clock that only moves when told to (for the stand-in and the leaser)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    token: str | None
    body: bytes


@dataclass
class _Session:
    id: str
    name: str
    node: str
    lock_delay: float
    behavior: str
    ttl: float
    ttl_text: str
    node_checks: list[str]
    create_index: int
    deadline: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": round(self.lock_delay * 1e9),
            "Behavior": self.behavior,
            "TTL": self.ttl_text,
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": None,
            "Checks": list(self.node_checks),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


@dataclass
class _Entry:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session:
            data["Session"] = self.session
        return data


class _Reply(Exception):
    """Raised inside a handler to answer with an HTTP error."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class _Drop(Exception):
    """Raised inside a handler to close the connection without answering."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], standin: "ConsulStandIn") -> None:
        self.standin = standin
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass

    def _dispatch(self) -> None:
        try:
            self.server.standin._handle(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_PUT = do_DELETE = do_POST = _dispatch


class ConsulStandIn:
    """A Consul-compatible stand-in server for tests (see the module docstring)."""

    def __init__(
        self,
        port: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_ttl: float = 10.0,
        max_ttl: float = 86400.0,
        require_token: str | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.clock = clock
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.require_token = require_token
        self.before_request: Callable[[str, str], None] | None = None
        self.requests: list[RecordedRequest] = []

        self._cond = threading.Condition(threading.RLock())
        self._index = 1
        self._kv_index = 1
        self._session_index = 1
        self._kv: dict[str, _Entry] = {}
        self._tombstones: dict[str, int] = {}
        self._lock_delays: dict[str, float] = {}
        self._sessions: dict[str, _Session] = {}
        self._nodes: set[str] = {AGENT_NODE}
        self._paused = False
        self._paused_token: str | None = None
        self._grant_all = False

        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._running = False

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ConsulStandIn":
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        with self._cond:
            self._running = True
            now = self.clock()
            for s in self._sessions.values():  # as after a leader election: TTL timers restart
                if s.ttl > 0:
                    s.deadline = now + s.ttl
        self._server = server
        serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"consul-standin-{self.port}", daemon=True)
        reaper = threading.Thread(target=self._reap_loop, name=f"consul-standin-reaper-{self.port}",
                                  daemon=True)
        self._threads = [serve, reaper]
        serve.start()
        reaper.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._running = False
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        server.cut_connections()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> "ConsulStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- misbehaviour switches ---------------------------------------------------------------

    def pause(self, token: str | None = None) -> None:
        """Hang requests (all, or those using `token`) until resume(); see the module docstring."""
        with self._cond:
            self._paused = True
            self._paused_token = token
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._paused_token = None
            self._cond.notify_all()

    def grant_all(self, enabled: bool = True) -> None:
        with self._cond:
            self._grant_all = enabled

    # ---- inspection and direct manipulation ----------------------------------------------------

    @property
    def index(self) -> int:
        with self._cond:
            return self._index

    @property
    def tokens_seen(self) -> set[str | None]:
        with self._cond:
            return {r.token for r in self.requests}

    def session(self, session_id: str) -> dict[str, Any] | None:
        with self._cond:
            self._expire_locked()
            s = self._sessions.get(session_id)
            return s.to_json() if s else None

    def sessions(self) -> list[dict[str, Any]]:
        with self._cond:
            self._expire_locked()
            return [s.to_json() for s in self._sessions.values()]

    def kv(self, key: str) -> dict[str, Any] | None:
        """The KV entry as Consul returns it (Value base64), or None."""
        with self._cond:
            self._expire_locked()
            e = self._kv.get(key)
            return e.to_json() if e else None

    def nodes(self) -> set[str]:
        with self._cond:
            return set(self._nodes)

    def invalidate_session(self, session_id: str) -> None:
        """Invalidate a session as a failed health check would (lock-delay applies)."""
        with self._cond:
            self._invalidate_locked(session_id)

    def expire_sessions(self) -> None:
        """Check TTLs now (after advancing a ManualClock, instead of waiting for the reaper)."""
        with self._cond:
            self._expire_locked()

    # ---- state machine (all *_locked methods run under self._cond) -------------------------------

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _reap_loop(self) -> None:
        with self._cond:
            while self._running:
                self._expire_locked()
                deadlines = [s.deadline for s in self._sessions.values() if s.deadline is not None]
                # Poll at least every 50 ms so that a ManualClock moved by a test is noticed.
                timeout = min(max(min(deadlines) - self.clock(), 0.001), 0.05) if deadlines else None
                self._cond.wait(timeout)

    def _expire_locked(self) -> None:
        now = self.clock()
        for sid in [s.id for s in self._sessions.values() if s.deadline is not None and now >= s.deadline]:
            self._invalidate_locked(sid)
        for key in [k for k, until in self._lock_delays.items() if now >= until]:
            del self._lock_delays[key]

    def _invalidate_locked(self, session_id: str) -> None:
        s = self._sessions.pop(session_id, None)
        if s is None:
            return
        idx = self._next_index()
        self._session_index = idx
        now = self.clock()
        for key, e in list(self._kv.items()):
            if e.session != session_id:
                continue
            if s.behavior == "delete":
                del self._kv[key]
                self._tombstones[key] = idx
            else:
                e.session = None
                e.modify_index = idx
            self._kv_index = idx
            if s.lock_delay > 0:
                self._lock_delays[key] = now + s.lock_delay
        self._cond.notify_all()

    def _scope_index_locked(self, key: str, recurse: bool) -> int:
        if not recurse:
            e = self._kv.get(key)
            return max(e.modify_index if e else 0, self._tombstones.get(key, 0))
        best = 0
        for k, e in self._kv.items():
            if k.startswith(key):
                best = max(best, e.modify_index)
        for k, idx in self._tombstones.items():
            if k.startswith(key):
                best = max(best, idx)
        return best

    def _is_paused_locked(self, token: str | None) -> bool:
        return self._paused and (self._paused_token is None or self._paused_token == token)

    def _hang_if_paused_locked(self, token: str | None) -> None:
        """While partitioned: hang; once the partition heals, drop the request unanswered."""
        if not self._is_paused_locked(token):
            return
        while self._running and self._is_paused_locked(token):
            self._cond.wait()
        raise _Drop()

    # ---- HTTP ----------------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        token = h.headers.get("X-Consul-Token") or _first(query, "token")
        method = h.command
        try:
            with self._cond:
                self.requests.append(RecordedRequest(method, path, query, token, body))
            if self.before_request is not None:
                self.before_request(method, path)
            with self._cond:
                self._hang_if_paused_locked(token)
                if not self._running:
                    raise _Drop()
                self._expire_locked()
                self._check_acl(token)
                status, payload, headers = self._route(method, path, query, body, token)
        except _Drop:
            h.close_connection = True
            return
        except _Reply as r:
            status, payload, headers = r.status, r.body.encode(), {"Content-Type": "text/plain; charset=utf-8"}
            if "X-Consul-Index" not in headers:
                headers["X-Consul-Index"] = str(self._kv_index)
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("X-Consul-KnownLeader", "true")
        h.send_header("X-Consul-LastContact", "0")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _check_acl(self, token: str | None) -> None:
        if self.require_token is None or token == self.require_token:
            return
        raise _Reply(403, "ACL not found" if token else "Permission denied")

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               token: str | None) -> tuple[int, bytes, dict[str, str]]:
        if path.startswith("/v1/kv/"):
            key = path[len("/v1/kv/"):]
            if method == "GET":
                return self._kv_get(key, query, token)
            if method == "PUT":
                return _json(self._kv_put(key, query, body))
            if method == "DELETE":
                return _json(self._kv_delete(key, query))
            raise _Reply(405, "method not allowed")
        if path == "/v1/session/create" and method == "PUT":
            return _json({"ID": self._session_create(body)})
        for prefix, handler in (("/v1/session/renew/", self._session_renew),
                                ("/v1/session/destroy/", self._session_destroy)):
            if path.startswith(prefix) and method == "PUT":
                return handler(path[len(prefix):])
        if method == "GET" and path.startswith("/v1/session/"):
            return self._session_read(path, query, token)
        if path == "/v1/catalog/register" and method == "PUT":
            data = _loads_ci(body)
            node = str(data.get("node") or "")
            if not node:
                raise _Reply(400, "Must provide node")
            self._nodes.add(node)
            self._next_index()
            self._cond.notify_all()
            return _json(True)
        if path == "/v1/status/leader" and method == "GET":
            return _json(f"{self.host}:8300")
        raise _Reply(404, f"no handler for {method} {path}")

    # ---- KV --------------------------------------------------------------------------------------

    def _block(self, scope: Callable[[], int], query: dict[str, list[str]], token: str | None) -> None:
        if "index" not in query:
            return
        try:
            index = int(_first(query, "index") or 0)
        except ValueError:
            raise _Reply(400, "Invalid index") from None
        wait_text = _first(query, "wait")
        try:
            wait = min(parse_go_duration(wait_text), MAX_WAIT) if wait_text else DEFAULT_WAIT
        except ValueError:
            raise _Reply(400, "Invalid wait time") from None
        if index > self._index:  # an index from the future (e.g. a restored server): answer now
            return
        deadline = time.monotonic() + wait
        while self._running and scope() <= index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            self._hang_if_paused_locked(token)
        if not self._running:
            raise _Drop()

    def _kv_get(self, key: str, query: dict[str, list[str]], token: str | None) -> tuple[int, bytes, dict[str, str]]:
        recurse = "recurse" in query
        keys_only = "keys" in query
        self._block(lambda: self._scope_index_locked(key, recurse or keys_only), query, token)
        headers = {"X-Consul-Index": str(max(self._kv_index, 1))}
        if keys_only:
            sep = _first(query, "separator") or ""
            found: list[str] = []
            for k in sorted(self._kv):
                if not k.startswith(key):
                    continue
                if sep:
                    cut = k.find(sep, len(key))
                    if cut >= 0:
                        k = k[:cut + len(sep)]
                if not found or found[-1] != k:
                    found.append(k)
            if not found:
                return 404, b"", headers
            return 200, json.dumps(found).encode(), {**headers, "Content-Type": "application/json"}
        if recurse:
            entries = [self._kv[k].to_json() for k in sorted(self._kv) if k.startswith(key)]
            if not entries:
                return 404, b"", headers
            return 200, json.dumps(entries).encode(), {**headers, "Content-Type": "application/json"}
        entry = self._kv.get(key)
        if entry is None:
            return 404, b"", headers
        if "raw" in query:
            return 200, entry.value or b"", {**headers, "Content-Type": "text/plain; charset=utf-8"}
        return 200, json.dumps([entry.to_json()]).encode(), {**headers, "Content-Type": "application/json"}

    def _kv_put(self, key: str, query: dict[str, list[str]], body: bytes) -> bool:
        if not key:
            raise _Reply(400, "Missing key name")
        if len(body) > MAX_VALUE_SIZE:
            raise _Reply(413, f"Request body(value) too large, max size: {MAX_VALUE_SIZE} bytes")
        acquire, release = _first(query, "acquire"), _first(query, "release")
        if acquire and release:
            raise _Reply(400, "Conflicting flags: acquire and release")
        try:
            flags = int(_first(query, "flags") or 0)
            cas = int(_first(query, "cas")) if "cas" in query else None  # type: ignore[arg-type]
        except ValueError:
            raise _Reply(400, "Invalid flags or cas index") from None
        value = body or None
        existing = self._kv.get(key)
        if "acquire" in query:
            return self._kv_lock(key, value, flags, acquire or "", existing)
        if "release" in query:
            if not release:
                raise _Reply(500, "missing session")
            if existing is None or existing.session != release:
                return False
            idx = self._next_index()
            existing.value, existing.flags, existing.session, existing.modify_index = value, flags, None, idx
            self._kv_written(key, idx)
            return True
        if cas is not None:
            if cas == 0 and existing is not None:
                return False
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return False
        idx = self._next_index()
        if existing is None:
            self._kv[key] = _Entry(key, value, flags, idx, idx)
        else:
            existing.value, existing.flags, existing.modify_index = value, flags, idx
        self._kv_written(key, idx)
        return True

    def _kv_lock(self, key: str, value: bytes | None, flags: int, sid: str, existing: _Entry | None) -> bool:
        if not sid:
            raise _Reply(500, "missing session")
        if sid not in self._sessions:
            raise _Reply(500, f'invalid session "{sid}"')
        if not self._grant_all:
            if key in self._lock_delays:  # leader-side check, applies to every session
                return False
            if existing is not None and existing.session not in (None, sid):
                return False
        idx = self._next_index()
        if existing is None:
            self._kv[key] = _Entry(key, value, flags, idx, idx, lock_index=1, session=sid)
        else:
            if existing.session != sid:
                existing.lock_index += 1
            existing.value, existing.flags, existing.session, existing.modify_index = value, flags, sid, idx
        self._kv_written(key, idx)
        return True

    def _kv_delete(self, key: str, query: dict[str, list[str]]) -> bool:
        recurse = "recurse" in query
        if "cas" in query:
            try:
                cas = int(_first(query, "cas") or 0)
            except ValueError:
                raise _Reply(400, "Invalid cas index") from None
            e = self._kv.get(key)
            if recurse or cas == 0 or e is None or e.modify_index != cas:
                return False
        victims = [k for k in self._kv if (k.startswith(key) if recurse else k == key)]
        idx = self._next_index()
        for k in victims:
            del self._kv[k]
            self._tombstones[k] = idx
        self._kv_index = idx
        self._cond.notify_all()
        return True

    def _kv_written(self, key: str, idx: int) -> None:
        self._tombstones.pop(key, None)
        self._kv_index = idx
        self._cond.notify_all()

    # ---- sessions ----------------------------------------------------------------------------------

    def _session_create(self, body: bytes) -> str:
        data = _loads_ci(body) if body.strip() else {}
        behavior = str(data.get("behavior") or "release")
        if behavior not in ("release", "delete"):
            raise _Reply(400, f"Invalid Behavior setting '{behavior}'")
        ttl_text = str(data.get("ttl") or "")
        try:
            ttl = parse_go_duration(ttl_text)
        except ValueError:
            raise _Reply(400, f"Request decode failed: invalid TTL {ttl_text!r}") from None
        if ttl != 0 and not self.min_ttl <= ttl <= self.max_ttl:
            raise _Reply(400, f"Invalid Session TTL '{ttl_text}', must be between "
                              f"[{format_go_duration(self.min_ttl)}={format_go_duration(self.max_ttl)}]")
        raw_delay = data.get("lockdelay", 15.0)
        try:
            if isinstance(raw_delay, str):
                lock_delay = parse_go_duration(raw_delay)
            else:
                lock_delay = float(raw_delay) if float(raw_delay) < 1000 else float(raw_delay) / 1e9
        except (TypeError, ValueError):
            raise _Reply(400, f"Request decode failed: invalid LockDelay {raw_delay!r}") from None
        if lock_delay > MAX_LOCK_DELAY:
            raise _Reply(500, f"Lock delay must be less than {format_go_duration(MAX_LOCK_DELAY)}")
        node = str(data.get("node") or AGENT_NODE)
        if node not in self._nodes:
            raise _Reply(500, "Missing node registration")
        checks, node_checks = data.get("checks"), data.get("nodechecks")
        if checks is not None and len(checks) == 0:
            node_checks = []
        elif node_checks is None:
            node_checks = checks if checks is not None else [SERF_HEALTH]
        for check in node_checks:
            if check != SERF_HEALTH:
                raise _Reply(500, f"Missing check '{check}' registration")
        idx = self._next_index()
        s = _Session(
            id=str(uuid.uuid4()), name=str(data.get("name") or ""), node=node, lock_delay=lock_delay,
            behavior=behavior, ttl=ttl, ttl_text=ttl_text if ttl else "", node_checks=list(node_checks),
            create_index=idx, deadline=self.clock() + ttl if ttl else None,
        )
        self._sessions[s.id] = s
        self._session_index = idx
        self._cond.notify_all()
        return s.id

    def _session_renew(self, sid: str) -> tuple[int, bytes, dict[str, str]]:
        s = self._sessions.get(sid)
        headers = {"X-Consul-Index": str(self._session_index)}
        if s is None:
            return 404, f"Session id '{sid}' not found".encode(), headers
        if s.ttl:
            s.deadline = self.clock() + s.ttl
        self._cond.notify_all()
        return 200, json.dumps([s.to_json()]).encode(), {**headers, "Content-Type": "application/json"}

    def _session_destroy(self, sid: str) -> tuple[int, bytes, dict[str, str]]:
        self._invalidate_locked(sid)
        return _json(True)

    def _session_read(self, path: str, query: dict[str, list[str]], token: str | None) -> tuple[int, bytes, dict[str, str]]:
        self._block(lambda: self._session_index, query, token)
        if path == "/v1/session/list":
            found = list(self._sessions.values())
        elif path.startswith("/v1/session/info/"):
            s = self._sessions.get(path[len("/v1/session/info/"):])
            found = [s] if s else []
        elif path.startswith("/v1/session/node/"):
            node = path[len("/v1/session/node/"):]
            found = [s for s in self._sessions.values() if s.node == node]
        else:
            raise _Reply(404, f"no handler for GET {path}")
        status, payload, headers = _json([s.to_json() for s in found])
        headers["X-Consul-Index"] = str(self._session_index)
        return status, payload, headers


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _json(value: Any) -> tuple[int, bytes, dict[str, str]]:
    return 200, json.dumps(value).encode(), {"Content-Type": "application/json"}


def _loads_ci(body: bytes) -> dict[str, Any]:
    """Decode a JSON object with lower-cased keys (Go's JSON decoding ignores key case)."""
    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError as e:
        raise _Reply(400, f"Request decode failed: {e}") from None
    if not isinstance(data, dict):
        raise _Reply(400, "Request decode failed: expected an object")
    return {str(k).lower(): v for k, v in data.items()}


@pytest.fixture
def consul_standin() -> Iterator[ConsulStandIn]:
    """A running stand-in with Consul's defaults (min TTL 10 s, real clock)."""
    with ConsulStandIn() as standin:
        yield standin
