"""The primary's side of replication: POST /stream, one Streamer per connected replica.

A streamer never holds up commits: the store only marks its databases dirty (the subscriber
callback hands off to the event loop), and the streamer reads committed LTX files from disk at
its own pace, with back-pressure from the socket. A replica that stops reading for longer than
the send timeout is cut off; it reconnects later and catches up, or gets a snapshot if its files
are gone. Connected replicas' positions hold back retention of the files they still need.

Threading: everything here runs on the HTTP thread's event loop; file reads and snapshots run in
the executor.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tornado.iostream
import tornado.web

from litefs import metrics
from litefs.db import Database, Store
from litefs.errors import LitefsError
from litefs.http import protocol
from litefs.ltx.format import HEADER_SIZE, TRAILER_SIZE, Header, Pos, Trailer

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
_READ_CHUNK = 1 << 20


class ReplicationHub:
    """The set of connected streamers, shared by the handlers of one node."""

    def __init__(self, store: Store, executor: ThreadPoolExecutor, send_timeout: float) -> None:
        self.store = store
        self.executor = executor
        self.send_timeout = send_timeout
        self.streamers: set[Streamer] = set()
        store.retention_floors.append(self.retention_floor)

    def retention_floor(self, name: str) -> int | None:
        """The lowest TXID a connected replica is at: files above it are still needed."""
        positions = [s.positions.get(name, Pos()).txid for s in list(self.streamers) if s.synced]
        return min(positions) if positions else None

    def count(self) -> int:
        return len(self.streamers)

    def handoff(self, node_id: str, lease_id: str) -> bool:
        """Pass the lease to the replica `node_id` if it is connected."""
        for s in list(self.streamers):
            if s.peer_id == node_id.upper():
                s.handoff_to = lease_id
                s.wake()
                return True
        return False


class Streamer:
    def __init__(self, hub: ReplicationHub, handler: tornado.web.RequestHandler,
                 positions: dict[str, Pos], peer_id: str) -> None:
        self.hub = hub
        self.store = hub.store
        self.handler = handler
        self.positions = dict(positions)
        self.peer_id = peer_id
        self.synced = False
        self.handoff_to = ""
        self._dirty: set[str] = set(positions) | {db.name for db in self.store.databases()}
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def wake(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    def _on_commit(self, db: Database, header: Header) -> None:
        # Called on the committing thread: hand off, never block.
        self._loop.call_soon_threadsafe(self._mark, db.name)

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._event.set()

    async def _send(self, data: bytes, name: str = "") -> None:
        self.handler.write(data)
        try:
            await asyncio.wait_for(self.handler.flush(), self.hub.send_timeout)
        except asyncio.TimeoutError:
            raise tornado.iostream.StreamClosedError(real_error=TimeoutError("replica stopped reading")) from None
        if name:
            metrics.BYTES_SENT.labels(name).inc(len(data))

    async def _frame(self, kind: str, data: bytes, name: str = "") -> None:
        metrics.FRAMES_SENT.labels(name, kind).inc()
        await self._send(data, name)

    async def run(self) -> None:
        self.store.subscribe(self._on_commit)
        self.hub.streamers.add(self)
        log.info("stream connected (%s)", self.peer_id or self.handler.request.remote_ip)
        try:
            await self._sync_dirty()
            self.synced = True
            await self._frame("ready", protocol.ready_frame())
            await self._frame("heartbeat", protocol.heartbeat_frame(int(time.time() * 1000)))
            while True:
                if self.handoff_to:
                    # Everything committed before the handoff goes first: the successor must
                    # start from the last acknowledged transaction.
                    self._dirty |= {db.name for db in self.store.databases()}
                    await self._sync_dirty()
                    await self._frame("handoff", protocol.handoff_frame(self.handoff_to))
                    return
                if not self.store.is_primary:
                    return
                try:
                    await asyncio.wait_for(self._event.wait(), HEARTBEAT_INTERVAL)
                except asyncio.TimeoutError:
                    await self._frame("heartbeat", protocol.heartbeat_frame(int(time.time() * 1000)))
                    continue
                self._event.clear()
                await self._sync_dirty()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.store.unsubscribe(self._on_commit)
            self.hub.streamers.discard(self)
            log.info("stream disconnected (%s)", self.peer_id or self.handler.request.remote_ip)

    async def _sync_dirty(self) -> None:
        while self._dirty:
            name = min(self._dirty)
            self._dirty.discard(name)
            db = self.store.db(name)
            if db is not None:
                await self._stream_db(db)

    async def _stream_db(self, db: Database) -> None:
        name = db.name
        while True:
            pos, client = db.pos, self.positions.get(name, Pos())
            if pos.txid == 0:
                return  # nothing committed here yet
            if client.txid > pos.txid:
                log.info("%s: client transaction id (%016x) exceeds primary transaction id (%016x), "
                         "clearing client position", name, client.txid, pos.txid)
                await self._snapshot(db, "replica-ahead")
                continue
            if client.txid == pos.txid:
                if client.checksum == pos.checksum:
                    return
                log.info("%s: client checksum %016x differs at TXID %016x (split brain), sending a snapshot",
                         name, client.checksum, client.txid)
                await self._snapshot(db, "checksum-mismatch")
                continue
            if client.txid == 0:
                await self._snapshot(db, "new-replica")
                continue
            txid = client.txid + 1
            path = db.ltx.find(txid)
            sent = await self._send_file(db, path, client) if path is not None else None
            if sent is None:
                await self._snapshot(db, "ltx-not-found")
                continue
            self.positions[name] = sent

    async def _send_file(self, db: Database, path: Path, client: Pos) -> Pos | None:
        """Send one LTX file; None when it is gone or does not follow the client's position."""
        loop = asyncio.get_running_loop()
        try:
            f = await loop.run_in_executor(self.hub.executor, open, path, "rb")
        except FileNotFoundError:
            log.info("%s: transaction file %s no longer available, writing snapshot", db.name, path.name)
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            head = await loop.run_in_executor(self.hub.executor, os.pread, f.fileno(), HEADER_SIZE, 0)
            tail = await loop.run_in_executor(self.hub.executor, os.pread, f.fileno(), TRAILER_SIZE, size - TRAILER_SIZE)
            header, trailer = Header.unpack(head), Trailer.unpack(tail)
            if header.pre_apply_checksum != client.checksum:
                log.info("%s: client pre-apply checksum mismatch for TXID %016x, writing snapshot", db.name, header.min_txid)
                return None
            await self._frame("ltx", protocol.ltx_frame_header(db.name), db.name)
            while chunk := await loop.run_in_executor(self.hub.executor, f.read, _READ_CHUNK):
                for part in protocol.chunks(chunk, end=False):
                    await self._send(part, db.name)
            await self._send(protocol.CHUNK_END, db.name)
        finally:
            f.close()
        await self._frame("hwm", protocol.hwm_frame(db.name, header.max_txid), db.name)
        return Pos(header.max_txid, trailer.post_apply_checksum)

    async def _snapshot(self, db: Database, reason: str) -> None:
        loop = asyncio.get_running_loop()
        tmp_dir = self.store.data_dir / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        path = tmp_dir / f"snapshot-{db.name}-{random.getrandbits(32):08x}.ltx"
        try:
            def write() -> tuple[Header, Trailer]:
                with open(path, "wb") as f:
                    return db.write_snapshot(f)
            header, trailer = await loop.run_in_executor(self.hub.executor, write)
            log.info("%s: writing snapshot @ %016x (%s)", db.name, header.max_txid, reason)
            metrics.SNAPSHOTS_SENT.labels(db.name, reason).inc()
            self.positions[db.name] = Pos()
            sent = await self._send_file(db, path, Pos())
            if sent is None:
                raise LitefsError(f"{db.name}: snapshot file vanished")
            self.positions[db.name] = sent
        finally:
            path.unlink(missing_ok=True)

