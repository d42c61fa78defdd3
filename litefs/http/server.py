"""The node's HTTP API: a Tornado application on `http.addr`.

Threading: the server runs its own asyncio loop in the `litefs-http` thread. Handlers never
block that loop: anything that touches a database runs in the executor. `APIServer.start` and
`stop` are called from the main thread.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from typing import Any

from dataclasses import dataclass
from datetime import datetime, timezone

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from litefs.db import Store
from litefs.db.store import ImportUpload, export_chunks
from litefs.errors import LitefsError, ReadOnlyReplicaError, UsageError
from litefs.http import protocol
from litefs.http.replication import ReplicationHub, Streamer

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the handlers of one node share."""

    store: Store
    executor: ThreadPoolExecutor
    hub: ReplicationHub
    events: EventHub
    candidate: bool
    stats: Callable[[], dict]
    # Set by the node once its cluster monitor exists.
    handoff: Callable[[str], bool] = lambda node_id: False
    promote: Callable[[], None] = lambda: None


class EventHub:
    """GET /events subscribers: each has a bounded queue; one that falls 1024 events behind is
    disconnected. Runs on the event loop; `publish` may be called from any thread."""

    MAX_QUEUED = 1024

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queues: set[asyncio.Queue[dict | None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        store.subscribe(self._on_commit)

    def _on_commit(self, db: Any, header: Any) -> None:
        self.publish({"type": "tx", "db": db.name, "data": {
            "txID": "%016x" % db.pos.txid, "postApplyChecksum": "%016x" % db.pos.checksum,
            "pageSize": header.page_size, "commit": header.commit,
            "timestamp": datetime.fromtimestamp(header.timestamp / 1000, timezone.utc).isoformat().replace("+00:00", "Z"),
        }})

    def primary_changed(self) -> None:
        self.publish({"type": "primaryChange", "data": self.role()})

    def role(self) -> dict:
        return {"isPrimary": self.store.acting_primary, "hostname": self.store.primary_hostname}

    def publish(self, event: dict) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: dict) -> None:
        for q in list(self.queues):
            if q.qsize() >= self.MAX_QUEUED:
                self.queues.discard(q)
                q.put_nowait(None)  # queues hold one more than MAX_QUEUED: room for the end
            else:
                q.put_nowait(event)


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.executor = ctx.executor

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")

    def prepare_headers(self) -> None:
        self.set_header("Litefs-Id", "%016X" % self.store.node_id)
        if self.store.cluster_id:
            self.set_header("Litefs-Cluster-Id", self.store.cluster_id)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def fail(self, exc: LitefsError) -> None:
        self.set_status(exc.http_status)
        self.finish(f"{exc}\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(f"{self._reason}\n")

    def required_name(self) -> str:
        name = self.get_query_argument("name", "")
        if not name:
            raise UsageError("missing query parameter: name")
        return name


@tornado.web.stream_request_body
class ImportHandler(BaseHandler):
    upload: ImportUpload | None = None
    error: LitefsError | None = None

    def prepare(self) -> None:
        self.prepare_headers()
        try:
            self.upload = ImportUpload(self.store, self.required_name())
        except LitefsError as exc:
            self.error = exc

    def data_received(self, chunk: bytes) -> None:
        if self.upload is not None:
            self.upload.write(chunk)

    async def post(self) -> None:
        if self.error is not None or self.upload is None:
            self.fail(self.error or UsageError("bad request"))
            return
        try:
            await self.run(self.upload.commit)
        except LitefsError as exc:
            self.fail(exc)
            return
        db = self.store.db(self.upload.name)
        self.finish(f"imported {self.upload.name} at position {db.pos if db else '-'}\n")

    def on_connection_close(self) -> None:
        if self.upload is not None:
            self.upload.abort()


class ExportHandler(BaseHandler):
    async def get(self) -> None:
        self.prepare_headers()
        try:
            name = self.required_name()
            chunks = export_chunks(self.store, name)
            first = await self.run(next, chunks, None)  # the copy is made before anything is sent
        except LitefsError as exc:
            self.fail(exc)
            return
        self.set_header("Content-Type", "application/octet-stream")
        chunk = first
        while chunk is not None:
            self.write(chunk)
            await self.flush()
            chunk = await self.run(next, chunks, None)
        self.finish()


class DebugVarsHandler(BaseHandler):
    """Counters for diagnosis and benchmarks: FUSE requests by operation, database positions."""

    def get(self) -> None:
        self.prepare_headers()
        self.set_header("Content-Type", "application/json")
        body = dict(self.ctx.stats())
        body["dbs"] = {db.name: {"txid": "%016x" % db.pos.txid, "checksum": "%016x" % db.pos.checksum}
                       for db in self.store.databases()}
        self.finish(json.dumps(body, indent=2) + "\n")


class StreamHandler(BaseHandler):
    """POST /stream: a replica's position map in, a never-ending stream of frames out."""

    async def post(self) -> None:
        self.prepare_headers()
        store = self.store
        if not store.is_primary:
            self.fail(ReadOnlyReplicaError("this node is not the primary"))
            return
        peer = self.request.headers.get("Litefs-Id", "").upper()
        if peer == "%016X" % store.node_id:
            self.fail(UsageError("refusing to stream to myself"))
            return
        cluster = self.request.headers.get("Litefs-Cluster-Id", "")
        if cluster and store.cluster_id and cluster != store.cluster_id:
            self.fail(UsageError(f"cluster id mismatch: primary is {store.cluster_id}, replica is {cluster}"))
            return
        try:
            positions = protocol.decode_pos_map(self.request.body)
        except protocol.ProtocolError as exc:
            self.fail(exc)
            return
        self.set_header("Content-Type", "application/octet-stream")
        await Streamer(self.ctx.hub, self, positions, peer).run()
        if not self.request.connection.stream.closed():  # type: ignore[union-attr]
            self.finish()


class HandoffHandler(BaseHandler):
    """POST /handoff?nodeID=…: the primary passes its lease to that connected replica."""

    async def post(self) -> None:
        self.prepare_headers()
        node_id = self.get_query_argument("nodeID", "")
        if len(node_id) != 16:
            self.fail(UsageError("nodeID must be 16 hex digits"))
            return
        if not self.store.is_primary:
            self.fail(ReadOnlyReplicaError("this node is not the primary"))
            return
        if not await self.run(self.ctx.handoff, node_id):
            self.fail(LitefsError(f"could not hand the lease to {node_id}: not connected, or the lease cannot be handed off"))
            return
        self.finish("OK\n")


class PromoteHandler(BaseHandler):
    """POST /promote on a candidate replica: ask the primary to hand over."""

    async def post(self) -> None:
        self.prepare_headers()
        if not self.ctx.candidate:
            self.set_status(409)
            self.finish("this node is not a candidate\n")
            return
        if not self.store.is_primary:
            try:
                await self.run(self.ctx.promote)
            except LitefsError as exc:
                self.fail(exc)
                return
        self.finish("OK\n")


class InfoHandler(BaseHandler):
    def get(self) -> None:
        self.prepare_headers()
        store = self.store
        self.set_header("Content-Type", "application/json")
        body = {
            "nodeID": "%016X" % store.node_id,
            "clusterID": store.cluster_id,
            "isPrimary": store.acting_primary,
            "ready": store.ready.is_set(),
            "candidate": self.ctx.candidate,
            "primary": {"hostname": store.primary_hostname, "advertiseURL": store.primary_url},
            "lag": store.lag_ms() / 1000,
            "dbs": {db.name: {"txid": "%016x" % db.pos.txid, "checksum": "%016x" % db.pos.checksum,
                              "pageSize": db.page_size, "commit": db.commit}
                    for db in store.databases()},
        }
        self.finish(json.dumps(body, indent=2) + "\n")


class EventsHandler(BaseHandler):
    """GET /events: newline-delimited JSON events, starting with `init`."""

    async def get(self) -> None:
        self.prepare_headers()
        self.set_header("Content-Type", "application/json")
        hub = self.ctx.events
        queue: asyncio.Queue[dict | None] = asyncio.Queue(hub.MAX_QUEUED + 1)
        hub.queues.add(queue)
        try:
            self.write(json.dumps({"type": "init", "data": hub.role()}) + "\n")
            await self.flush()
            while (event := await queue.get()) is not None:
                self.write(json.dumps(event) + "\n")
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return
        finally:
            hub.queues.discard(queue)
        self.finish()


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(REGISTRY))


def make_app(ctx: Context, extra_routes: list | None = None) -> tornado.web.Application:
    args = dict(ctx=ctx)
    return tornado.web.Application([*(extra_routes or []),
        (r"/import", ImportHandler, args),
        (r"/export", ExportHandler, args),
        (r"/stream", StreamHandler, args),
        (r"/info", InfoHandler, args),
        (r"/handoff", HandoffHandler, args),
        (r"/promote", PromoteHandler, args),
        (r"/events", EventsHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/debug/vars", DebugVarsHandler, args),
    ], max_body_size=1 << 40)


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class APIServer:
    def __init__(self, store: Store, addr: str, *, candidate: bool = False,
                 stats: Callable[[], dict] | None = None, send_timeout: float = 600.0,
                 extra_routes: list | None = None) -> None:
        self.store = store
        self.extra_routes = extra_routes or []
        self.addr = addr
        self.executor = ThreadPoolExecutor(8, thread_name_prefix="litefs-http-exec")
        self.hub = ReplicationHub(store, self.executor, send_timeout)
        self.events = EventHub(store)
        self.ctx = Context(store, self.executor, self.hub, self.events, candidate, stats or dict)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        host, port = split_host_port(self.addr)
        sockets = tornado.netutil.bind_sockets(port, host or None, family=socket.AF_INET if not host else socket.AF_UNSPEC)
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self.events.loop = self._loop
            self._server = tornado.httpserver.HTTPServer(make_app(self.ctx, self.extra_routes))
            self._server.add_sockets(sockets)
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="litefs-http", daemon=True)
        self._thread.start()
        ready.wait()
        log.info("http server listening on: %s", self.url)

    @property
    def url(self) -> str:
        host, _ = split_host_port(self.addr)
        return f"http://{host or '127.0.0.1'}:{self.port}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.stop()
            assert self._loop is not None
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        self._thread.join(timeout=10)
        self.executor.shutdown(wait=False, cancel_futures=True)
