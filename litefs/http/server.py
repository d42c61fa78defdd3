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

import tornado.httpserver
import tornado.netutil
import tornado.web

from litefs.db import Store
from litefs.db.store import ImportUpload, export_chunks
from litefs.errors import LitefsError, UsageError

log = logging.getLogger(__name__)


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self.store = store
        self.executor = executor

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

    def initialize(self, store: Store, executor: ThreadPoolExecutor, stats: Callable[[], dict]) -> None:
        super().initialize(store, executor)
        self.stats = stats

    def get(self) -> None:
        self.prepare_headers()
        self.set_header("Content-Type", "application/json")
        body = dict(self.stats())
        body["dbs"] = {db.name: {"txid": "%016x" % db.pos.txid, "checksum": "%016x" % db.pos.checksum}
                       for db in self.store.databases()}
        self.finish(json.dumps(body, indent=2) + "\n")


def make_app(store: Store, executor: ThreadPoolExecutor,
             stats: Callable[[], dict] | None = None) -> tornado.web.Application:
    args = dict(store=store, executor=executor)
    return tornado.web.Application([
        (r"/import", ImportHandler, args),
        (r"/export", ExportHandler, args),
        (r"/debug/vars", DebugVarsHandler, dict(args, stats=stats or dict)),
    ], max_body_size=1 << 40)


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class APIServer:
    def __init__(self, store: Store, addr: str, stats: Callable[[], dict] | None = None) -> None:
        self.store = store
        self.stats = stats
        self.addr = addr
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="litefs-http-exec")
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
            self._server = tornado.httpserver.HTTPServer(make_app(self.store, self.executor, self.stats))
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
