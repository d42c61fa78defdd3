"""Keeps this node in its role: primary while it holds the lease, replica otherwise.

Runs in the `litefs-lease` thread. As primary it renews the lease on schedule and steps down
before the lease could have expired; as replica it streams from the primary the leaser names,
reconnecting with back-off. `ready` is set once the node can serve: as primary at once, as
replica when the primary's first catch-up is done (its Ready frame).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from litefs import metrics
from litefs.db import Store
from litefs.errors import LitefsError
from litefs.http.client import Handoff, StreamClient
from litefs.lease import Lease, Leaser, LeaseError, PrimaryExistsError

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0


class ClusterMonitor:
    def __init__(self, store: Store, leaser: Leaser, *, reconnect_delay: float = 1.0,
                 on_role_change: Callable[[bool], None] | None = None) -> None:
        self.store = store
        self.leaser = leaser
        self.reconnect_delay = reconnect_delay
        self.on_role_change = on_role_change or (lambda primary: None)
        self.ready = store.ready
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: StreamClient | None = None
        self.lease: Lease | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="litefs-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            client.close()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        backoff = self.reconnect_delay
        node = "%016X" % self.store.node_id
        while not self._stop.is_set():
            if self.leaser.candidate:
                try:
                    lease = self.leaser.acquire()
                except PrimaryExistsError:
                    pass
                except LeaseError as exc:
                    log.warning("%s: cannot acquire the lease: %s", node, exc)
                else:
                    self._hold(lease)
                    continue
            info = self.leaser.primary_info()
            if info is None or not info.advertise_url:
                log.info("%s: cannot find primary & ineligible to become primary, retrying", node)
                self._stop.wait(backoff)
                continue
            self._become(False, "primary elsewhere", info.hostname, info.advertise_url)
            client = StreamClient(self.store, info.advertise_url, on_ready=self.ready.set)
            self._client = client
            try:
                client.run()
                backoff = self.reconnect_delay
            except Handoff as h:
                log.info("%s: lease handed to us", node)
                try:
                    self._hold(self.leaser.acquire_existing(h.lease_id))
                except LeaseError as exc:
                    log.warning("%s: handoff failed: %s", node, exc)
                continue
            except LitefsError as exc:
                if not self._stop.is_set():
                    log.info("%s: disconnected from primary with error, retrying: %s", node, exc)
            finally:
                self._client = None
            if client.ready:
                backoff = self.reconnect_delay
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _become(self, primary: bool, reason: str, hostname: str = "", url: str = "") -> None:
        store = self.store
        changed = store.is_primary != primary
        store.primary_hostname, store.primary_url = hostname, url
        store.is_primary = primary
        if changed:
            metrics.ROLE_CHANGES.labels("primary" if primary else "replica", reason).inc()
            log.info("%016X: now %s (%s)", store.node_id, "primary" if primary else "replica", reason)
            self.on_role_change(primary)

    def _hold(self, lease: Lease) -> None:
        """Be primary until the lease is lost, handed off, or the node stops."""
        self.lease = lease
        self.store.load_cluster_id(create=True)
        self._become(True, "lease acquired", self.leaser.hostname, self.leaser.advertise_url)
        log.info("%016X: primary lease acquired, advertising as %s", self.store.node_id, self.leaser.advertise_url)
        self.ready.set()
        while not self._stop.is_set():
            remaining = lease.valid_until - time.monotonic()
            if remaining == float("inf"):
                self._stop.wait()
                break
            self._stop.wait(min(lease.ttl / 2, max(remaining / 2, 0.05)))
            if self._stop.is_set():
                break
            try:
                lease.renew()
            except LeaseError as exc:
                if time.monotonic() >= lease.valid_until:
                    log.error("%016X: lease lost: %s", self.store.node_id, exc)
                    self._become(False, "lease lost")
                    return
                log.warning("%016X: lease renewal error, retrying: %s", self.store.node_id, exc)
        if self._stop.is_set():
            try:
                lease.close()
            except LeaseError as exc:
                log.info("releasing the lease: %s", exc)
