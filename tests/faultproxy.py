"""A threaded TCP proxy on 127.0.0.1 that can inject network faults into live connections.

    with FaultProxy("127.0.0.1", primary_port) as proxy:
        replica = start_replica(primary_url=proxy.url_for(""))
        proxy.cut_after(4096, once=True)       # next connection dies after 4 KiB server->client
        proxy.flip_bits(every_n_bytes=1000, seed=1)
        proxy.blackhole(); ...; proxy.heal()
        assert proxy.wait_for(lambda p: p.connections >= 2, timeout=5)

Everything is forwarded byte for byte in both directions. Faults apply to the server->client
direction ("s2c") unless `direction="c2s"` or `"both"` is given, and can be changed at any time:
each forwarded chunk reads the current fault state, so a change reaches open connections too.

Threads: one accept thread, and per connection a thread per direction. Every socket is
non-blocking and every wait is a `select`/`Event.wait` with a short timeout, so `stop()` is
prompt even with connections stuck in a delay or blackhole. Logging is DEBUG only.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL = 0.05            # seconds; upper bound on how long any thread waits before rechecking state
BUFSIZE = 64 * 1024
DRAIN_SECONDS = 0.5    # after a graceful cut, how long to discard input before closing
CONNECT_TIMEOUT = 2.0
DIRECTIONS = ("s2c", "c2s", "both")


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return direction


def _applies(rule_direction: str, direction: str) -> bool:
    return rule_direction == "both" or rule_direction == direction


@dataclasses.dataclass(frozen=True, eq=False)
class _Cut:
    n_bytes: int
    direction: str
    reset: bool
    once: bool


@dataclasses.dataclass(frozen=True, eq=False)
class _Flip:
    probability: float | None
    every_n_bytes: int | None
    seed: int
    direction: str


@dataclasses.dataclass(frozen=True)
class _State:
    """Immutable fault state; replaced wholesale under the lock, read without it."""
    cut: _Cut | None = None            # applies to every connection
    pending_cut: _Cut | None = None    # once=True: claimed by the next accepted connection
    delay: float = 0.0
    delay_direction: str = "s2c"
    flip: _Flip | None = None
    blackhole: bool = False
    blackhole_drop: bool = True
    refuse: bool = False
    refuse_reset: bool = False


class BitFlipper:
    """Deterministic bit flipper for one byte stream; the result does not depend on chunking.

    Flips one random bit in byte positions chosen either every `every_n_bytes` bytes (positions
    n-1, 2n-1, ...) or independently with `probability` per byte (geometric gaps). At most one bit
    per byte is flipped.
    """

    def __init__(self, rule: _Flip, direction: str) -> None:
        self.rule = rule
        self.rng = random.Random(rule.seed * 2 + (direction == "c2s"))
        self.pos = 0
        self.next_flip = self._gap() - 1

    def _gap(self) -> int:
        if self.rule.every_n_bytes is not None:
            return self.rule.every_n_bytes
        p = self.rule.probability
        assert p is not None
        if p >= 1.0:
            return 1
        u = 1.0 - self.rng.random()  # (0, 1]
        return 1 + int(math.log(u) / math.log1p(-p))

    def apply(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """Return the flipped data and [(offset within this stream since the rule began, bit)]."""
        end = self.pos + len(data)
        if self.next_flip >= end:
            self.pos = end
            return data, []
        buf = bytearray(data)
        flipped = []
        while self.next_flip < end:
            bit = self.rng.randrange(8)
            buf[self.next_flip - self.pos] ^= 1 << bit
            flipped.append((self.next_flip, bit))
            self.next_flip += self._gap()
        self.pos = end
        return bytes(buf), flipped


class _Conn:
    def __init__(self, cid: int, client: socket.socket, claimed_cut: _Cut | None) -> None:
        self.id = cid
        self.client = client
        self.upstream: socket.socket | None = None
        self.claimed_cut = claimed_cut
        self.lock = threading.Lock()
        self.sent = {"s2c": 0, "c2s": 0}
        self.abort = threading.Event()   # leave now, close sockets
        self.reset = False               # ... with RST (SO_LINGER 0)
        self.cutting = False             # graceful cut: FIN sent both ways, drain input
        self.drain_deadline = 0.0
        self.flippers: dict[str, BitFlipper] = {}

    def cut_rule(self, state: _State) -> _Cut | None:
        return self.claimed_cut if self.claimed_cut is not None else state.cut

    def counted(self, rule: _Cut) -> int:
        if rule.direction == "both":
            return self.sent["s2c"] + self.sent["c2s"]
        return self.sent[rule.direction]

    def fail(self, reset: bool) -> None:
        with self.lock:
            self.reset = self.reset or reset
        self.abort.set()

    def cut(self, rule: _Cut) -> None:
        if rule.reset:
            self.fail(reset=True)
            return
        with self.lock:
            if self.cutting:
                return
            self.cutting = True
            self.drain_deadline = time.monotonic() + DRAIN_SECONDS
        for s in (self.client, self.upstream):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        for s in (self.client, self.upstream):
            if s is None:
                continue
            if self.reset:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            try:
                s.close()
            except OSError:
                pass


class FaultProxy:
    """TCP proxy 127.0.0.1:<port> -> target_host:target_port with runtime-switchable faults.

    Counters (read any time): connections (accepted and proxied), refused, active,
    bytes_forwarded (both directions), bytes_s2c, bytes_c2s, bytes_dropped (blackholed),
    flips, flip_log [(conn_id, direction, stream_offset, bit)], cuts, upstream_failures.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._cond = threading.Condition()
        self._state = _State()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._conns: dict[int, _Conn] = {}
        self.port = 0
        self.connections = 0
        self.refused = 0
        self.active = 0
        self.bytes_forwarded = 0
        self.bytes_s2c = 0
        self.bytes_c2s = 0
        self.bytes_dropped = 0
        self.flips = 0
        self.flip_log: list[tuple[int, str, int, int]] = []
        self.cuts = 0
        self.upstream_failures = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        if self._listener is not None:
            raise RuntimeError("FaultProxy already started")
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, 0))
        ls.listen(128)
        ls.setblocking(False)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        log.debug("faultproxy %d -> %s:%d started", self.port, *self.target)
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Close the listener and every connection; True if all threads ended within `timeout`."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            conns = list(self._conns.values())
            self._cond.notify_all()
        for c in conns:
            c.abort.set()
        threads = ([self._accept_thread] if self._accept_thread else []) + self._threads_snapshot()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        # Pump threads spawned by connection threads while we were joining.
        for t in self._threads_snapshot():
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads_snapshot() + threads if t.is_alive()]
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if alive:
            log.debug("faultproxy %d: threads still alive after stop: %s", self.port, alive)
            with self._cond:
                leftovers = list(self._conns.values())
            for c in leftovers:
                c.close()
        log.debug("faultproxy %d stopped", self.port)
        return not alive

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def url_for(self, path: str = "/") -> str:
        if path and not path.startswith("/"):
            path = "/" + path
        return f"http://{HOST}:{self.port}{path}"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def wait_for(self, predicate: Callable[[FaultProxy], bool], timeout: float = 5.0) -> bool:
        """Wait until predicate(self) holds (re-evaluated on every counter change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, POLL * 2))
            return True

    # ------------------------------------------------------------------ faults

    def _set(self, **changes: Any) -> None:
        with self._cond:
            self._state = dataclasses.replace(self._state, **changes)
            self._cond.notify_all()

    def cut_after(self, n_bytes: int, *, once: bool = False, direction: str = "s2c",
                  reset: bool = False) -> None:
        """Close connections after forwarding n_bytes in `direction` (counted from connection start).

        The peers then see exactly those bytes followed by EOF (FIN both ways), or a reset
        (RST) with `reset=True`. With once=True only the next accepted connection is affected.
        """
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        rule = _Cut(n_bytes, _check_direction(direction), reset, once)
        self._set(**({"pending_cut": rule} if once else {"cut": rule}))

    def delay(self, seconds: float, *, direction: str = "s2c") -> None:
        """Wait `seconds` before forwarding each chunk in `direction` (0 disables)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._set(delay=float(seconds), delay_direction=_check_direction(direction))

    def flip_bits(self, probability: float | None = None, *, every_n_bytes: int | None = None,
                  seed: int = 0, direction: str = "s2c") -> None:
        """Flip one random bit in forwarded bytes, per byte with `probability` or every n-th byte.

        Deterministic: each connection direction gets its own RNG seeded from `seed`, and the
        chosen positions do not depend on how TCP chunks the stream. Counted in `.flips`.
        """
        if (probability is None) == (every_n_bytes is None):
            raise ValueError("give exactly one of probability, every_n_bytes")
        if probability is not None and not 0.0 < probability <= 1.0:
            raise ValueError("probability must be in (0, 1]")
        if every_n_bytes is not None and every_n_bytes < 1:
            raise ValueError("every_n_bytes must be >= 1")
        self._set(flip=_Flip(probability, every_n_bytes, seed, _check_direction(direction)))

    def blackhole(self, *, drop: bool = True) -> None:
        """Forward nothing in either direction until heal(); new connections are accepted but
        not connected upstream. drop=True reads and discards (lost for good); drop=False stops
        reading, so data waits in kernel buffers and flows again after heal()."""
        self._set(blackhole=True, blackhole_drop=drop)

    def refuse(self, *, reset: bool = False) -> None:
        """Close new connections immediately after accepting them (RST with reset=True)."""
        self._set(refuse=True, refuse_reset=reset)

    def heal(self) -> None:
        """Clear all faults (including an unclaimed once=True cut)."""
        self._set(**{f.name: f.default for f in dataclasses.fields(_State)})

    # ------------------------------------------------------------------ internals

    def _threads_snapshot(self) -> list[threading.Thread]:
        with self._cond:
            return list(self._threads)

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._cond:
            # Keep threads not yet started by a concurrent _spawn (ident None).
            self._threads = [x for x in self._threads if x.ident is None or x.is_alive()]
            self._threads.append(t)
        t.start()
        return t

    def _accept_loop(self) -> None:
        ls = self._listener
        assert ls is not None
        cid = 0
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([ls], [], [], POLL)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            try:
                client, peer = ls.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                log.debug("faultproxy %d: accept failed: %s", self.port, exc)
                break
            with self._cond:
                state = self._state
                if state.refuse:
                    self.refused += 1
                    self._cond.notify_all()
                    claimed = None
                else:
                    claimed = state.pending_cut
                    if claimed is not None:
                        self._state = dataclasses.replace(state, pending_cut=None)
            if state.refuse:
                log.debug("faultproxy %d: refusing %s", self.port, peer)
                if state.refuse_reset:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            cid += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(cid, client, claimed)
            with self._cond:
                self.connections += 1
                self.active += 1
                self._conns[cid] = conn
                self._cond.notify_all()
            log.debug("faultproxy %d: conn %d from %s", self.port, cid, peer)
            self._spawn(self._serve, f"faultproxy-{self.port}-c{cid}", conn)
        try:
            ls.close()
        except OSError:
            pass

    def _finished(self, conn: _Conn) -> bool:
        return self._stop.is_set() or conn.abort.is_set()

    def _serve(self, conn: _Conn) -> None:
        try:
            pending = self._await_unblackholed(conn)
            if pending is not None and self._connect(conn):
                assert conn.upstream is not None
                if pending and not self._forward(conn, "c2s", conn.upstream, pending):
                    return
                other = self._spawn(self._pump, f"faultproxy-{self.port}-c{conn.id}-c2s",
                                    conn, "c2s", conn.client, conn.upstream)
                self._pump(conn, "s2c", conn.upstream, conn.client)
                while other.is_alive() and not self._stop.is_set():
                    other.join(POLL)
                other.join(1.0)
        except Exception:  # noqa: BLE001 - a proxy thread must never die noisily
            log.debug("faultproxy %d: conn %d crashed", self.port, conn.id, exc_info=True)
            conn.reset = True
        finally:
            conn.close()
            with self._cond:
                self.active -= 1
                self._conns.pop(conn.id, None)
                self._cond.notify_all()
            log.debug("faultproxy %d: conn %d closed (reset=%s)", self.port, conn.id, conn.reset)

    def _await_unblackholed(self, conn: _Conn) -> bytes | None:
        """Before connecting upstream: hold the client while a blackhole is active.

        Returns client bytes read after the blackhole lifted (to forward first), or None if the
        connection should be dropped."""
        while not self._finished(conn):
            state = self._state
            if not state.blackhole:
                return b""
            if not state.blackhole_drop:
                conn.abort.wait(POLL)
                continue
            data = self._recv(conn, conn.client)
            if data is None:
                return None
            if data:
                if not self._state.blackhole:
                    return data  # healed while we were reading
                self._count_dropped(len(data))
        return None

    def _connect(self, conn: _Conn) -> bool:
        try:
            up = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            log.debug("faultproxy %d: conn %d: upstream connect failed: %s", self.port, conn.id, exc)
            with self._cond:
                self.upstream_failures += 1
                self._cond.notify_all()
            return False
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.upstream = up
        return True

    def _recv(self, conn: _Conn, src: socket.socket) -> bytes | None:
        """Data, b"" if nothing arrived within POLL, None on EOF or error (error sets conn.abort)."""
        try:
            readable, _, _ = select.select([src], [], [], POLL)
            if not readable:
                return b""
            data = src.recv(BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return b""
        except (OSError, ValueError) as exc:
            log.debug("faultproxy %d: conn %d: recv failed: %s", self.port, conn.id, exc)
            conn.fail(reset=True)
            return None
        if not data:
            return None
        return data

    def _count_dropped(self, n: int) -> None:
        with self._cond:
            self.bytes_dropped += n
            self._cond.notify_all()

    def _drain(self, conn: _Conn, src: socket.socket) -> None:
        """After a graceful cut: discard input until EOF, error or the drain deadline."""
        while not self._finished(conn) and time.monotonic() < conn.drain_deadline:
            try:
                readable, _, _ = select.select([src], [], [], POLL)
                if readable and not src.recv(BUFSIZE):
                    return
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):
                return

    def _send_all(self, conn: _Conn, dst: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if self._finished(conn):
                return False
            try:
                _, writable, _ = select.select([], [dst], [], POLL)
                if not writable:
                    continue
                n = dst.send(view)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError) as exc:
                log.debug("faultproxy %d: conn %d: send failed: %s", self.port, conn.id, exc)
                if not conn.cutting:  # after a graceful cut EPIPE is expected, not a failure
                    conn.fail(reset=True)
                return False
            view = view[n:]
        return True

    def _check_cut(self, conn: _Conn, direction: str, state: _State) -> bool:
        rule = conn.cut_rule(state)
        if rule is None or not _applies(rule.direction, direction):
            return False
        with conn.lock:
            reached = conn.counted(rule) >= rule.n_bytes
        if reached:
            self._do_cut(conn, rule)
        return reached

    def _do_cut(self, conn: _Conn, rule: _Cut) -> None:
        if not conn.cutting and not conn.abort.is_set():
            with self._cond:
                self.cuts += 1
                self._cond.notify_all()
            log.debug("faultproxy %d: conn %d cut after %d bytes %s (reset=%s)", self.port,
                      conn.id, rule.n_bytes, rule.direction, rule.reset)
        conn.cut(rule)

    def _pump(self, conn: _Conn, direction: str, src: socket.socket, dst: socket.socket) -> None:
        while not self._finished(conn):
            if conn.cutting:
                self._drain(conn, src)
                return
            state = self._state
            if self._check_cut(conn, direction, state):
                continue
            if state.blackhole and not state.blackhole_drop:
                conn.abort.wait(POLL)
                continue
            data = self._recv(conn, src)
            if data is None:
                if not conn.abort.is_set():
                    # EOF: pass the half-close on and let the other direction carry on.
                    log.debug("faultproxy %d: conn %d: EOF %s", self.port, conn.id, direction)
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            if not data:
                continue
            if not self._forward(conn, direction, dst, data):
                return

    def _forward(self, conn: _Conn, direction: str, dst: socket.socket, data: bytes) -> bool:
        state = self._state
        while state.blackhole:  # bounded by heal() or stop()
            if state.blackhole_drop:
                self._count_dropped(len(data))
                return True
            if conn.abort.wait(POLL) or self._stop.is_set():
                return False
            state = self._state
        if state.delay > 0 and _applies(state.delay_direction, direction):
            if conn.abort.wait(state.delay) or self._stop.is_set():
                return False
            state = self._state
        if conn.cutting:
            return True  # the other direction cut the connection while we waited
        rule = conn.cut_rule(state)
        cut_now = False
        with conn.lock:
            if rule is not None and _applies(rule.direction, direction):
                allowed = max(0, rule.n_bytes - conn.counted(rule))
                if allowed <= len(data):
                    data = data[:allowed]
                    cut_now = True
            offset = conn.sent[direction]
            conn.sent[direction] += len(data)
        flips: list[tuple[int, int]] = []
        flip = state.flip
        if flip is not None and _applies(flip.direction, direction) and data:
            flipper = conn.flippers.get(direction)
            if flipper is None or flipper.rule is not flip:
                flipper = conn.flippers[direction] = BitFlipper(flip, direction)
            start = flipper.pos
            data, flips = flipper.apply(data)
            flips = [(offset + (pos - start), bit) for pos, bit in flips]
        if data and not self._send_all(conn, dst, data):
            return False
        with self._cond:
            self.bytes_forwarded += len(data)
            if direction == "s2c":
                self.bytes_s2c += len(data)
            else:
                self.bytes_c2s += len(data)
            if flips:
                self.flips += len(flips)
                self.flip_log.extend((conn.id, direction, off, bit) for off, bit in flips)
            self._cond.notify_all()
        if cut_now:
            assert rule is not None
            self._do_cut(conn, rule)
        return True
