"""The replica's side of replication: stream from the primary's /stream and apply each file.

Every LTX file is received to a temp file in its database's ltx/ directory, verified, then
published and applied (Database.apply_ltx): a cut or corrupted stream never reaches the
database. On any error the connection is dropped; the caller reconnects, sending its positions,
and the primary decides what to send (files, or a snapshot).

Threading: runs on the cluster monitor's thread with blocking sockets; `close()` may be called
from another thread to interrupt it.
"""
from __future__ import annotations

import http.client
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from litefs import metrics
from litefs.db import Store
from litefs.errors import LitefsError, LTXChecksumError
from litefs.http import protocol
from litefs.http.replication import HEARTBEAT_INTERVAL
from litefs.ltx.format import Header

log = logging.getLogger(__name__)


class StreamError(LitefsError):
    pass


class Handoff(Exception):
    """The primary handed its lease to this node."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(lease_id)
        self.lease_id = lease_id


class StreamClient:
    def __init__(self, store: Store, url: str, on_ready: Callable[[], None] | None = None,
                 read_timeout: float = 5 * HEARTBEAT_INTERVAL) -> None:
        self.store = store
        self.url = url
        self.on_ready = on_ready or (lambda: None)
        self.read_timeout = read_timeout
        self.ready = False
        self._conn: http.client.HTTPConnection | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(2)
            except OSError:
                pass

    def run(self) -> None:
        """Stream until the connection ends; raises Handoff, or an error to reconnect after."""
        u = urlsplit(self.url)
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=self.read_timeout)
        self._conn = conn
        try:
            headers = {"Litefs-Id": "%016X" % self.store.node_id, "Content-Type": "application/octet-stream"}
            if self.store.cluster_id:
                headers["Litefs-Cluster-Id"] = self.store.cluster_id
            conn.request("POST", "/stream", body=protocol.encode_pos_map(self.store.positions()), headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise StreamError(f"primary at {self.url} answered {resp.status}: {resp.read(500).decode(errors='replace').strip()}")
            self.store.adopt_cluster_id(resp.getheader("Litefs-Cluster-Id", ""))
            while not self._closed.is_set():
                self._handle(protocol.read_frame(resp))
        except (OSError, http.client.HTTPException) as exc:
            if self._closed.is_set():
                return
            raise StreamError(f"stream from {self.url}: {exc}") from None
        finally:
            self._conn = None
            conn.close()

    def _handle(self, frame: protocol.Frame) -> None:
        kind = frame.type
        if kind is protocol.FrameType.LTX:
            assert frame.body is not None
            self._receive(frame.name, frame.body)
        elif kind is protocol.FrameType.READY:
            self.ready = True
            self.on_ready()
        elif kind is protocol.FrameType.HEARTBEAT:
            self.store.primary_timestamp_ms = max(self.store.primary_timestamp_ms, frame.timestamp)
        elif kind is protocol.FrameType.HWM:
            db = self.store.db(frame.name)
            if db is not None:
                db.hwm = frame.txid
        elif kind is protocol.FrameType.HANDOFF:
            raise Handoff(frame.lease_id)
        elif kind is protocol.FrameType.END:
            raise StreamError("primary ended the stream")

    def _receive(self, name: str, body: protocol.ChunkReader) -> None:
        db = self.store.create(name, internal=True, create_file=False)
        tmp = db.ltx.path / f"recv-{random.getrandbits(32):08x}.ltx.tmp"
        try:
            with open(tmp, "wb") as f:
                protocol.copy_chunks(body, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            with open(tmp, "rb") as f:
                header = Header.unpack(f.read(100))
            db.apply_ltx(tmp)
        except LTXChecksumError as exc:
            # The file was fine but our copy of the database was not: start over from a snapshot.
            log.error("%s: %s; requesting a snapshot", name, exc)
            db.reset_position()
            raise StreamError(str(exc)) from None
        if self.ready:
            self.store.primary_timestamp_ms = max(self.store.primary_timestamp_ms, header.timestamp)
        metrics.REPLICATION_LAG.labels(name).observe(max(0.0, time.time() - header.timestamp / 1000))
