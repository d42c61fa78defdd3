"""Keeps this node in its role: primary while it holds the lease, replica otherwise.

Runs in the `litefs-lease` thread. As primary it renews the lease every TTL/2, retries failed
renewals, and steps down before the lease could have expired: the store refuses commits from
the lease's deadline on (monotonic clock), even before this thread notices. A handoff passes
the live lease to a connected replica with no TTL wait. As replica it streams from the primary
the leaser names, reconnecting with back-off. `store.ready` is set once the node can serve: as
primary at once, as replica when the primary's first catch-up is done (its Ready frame).

`handoff()` and `promote()` are called from HTTP executor threads; they only hand requests over
to the lease thread and the streamers.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from litefs import metrics
from litefs.db import Store
from litefs.errors import LitefsError
from litefs.http.client import Handoff, StreamClient
from litefs.lease import Lease, Leaser, LeaseError, PrimaryExistsError

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
RENEW_RETRY = 1.0


class ClusterMonitor:
    def __init__(self, store: Store, leaser: Leaser, *, reconnect_delay: float = 1.0,
                 on_role_change: Callable[[bool], None] | None = None,
                 send_handoff: Callable[[str, str], bool] | None = None) -> None:
        self.store = store
        self.leaser = leaser
        self.reconnect_delay = reconnect_delay
        self.on_role_change = on_role_change or (lambda primary: None)
        # Passes a lease id to a connected replica's stream (ReplicationHub.handoff).
        self.send_handoff = send_handoff or (lambda node_id, lease_id: False)
        self.ready = store.ready
        self._stop = threading.Event()
        self._handed_off = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._client: StreamClient | None = None
        self._handoff_id = ""
        self.lease: Lease | None = None

    @property
    def node_id(self) -> str:
        return "%016X" % self.store.node_id

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

    # -- requests from the HTTP API -------------------------------------------------------------

    def handoff(self, node_id: str) -> bool:
        """On the primary: give the lease to the connected replica `node_id`."""
        with self._lock:
            lease = self.lease
            if lease is None or not self.store.is_primary:
                return False
            # Stop taking writes (and saying we lead) before anyone else can be primary, then
            # wait out commits already under way: each holds its database's lock throughout.
            self.store.lease_valid_until = -math.inf
            for db in self.store.databases():
                with db.lock:
                    pass
            try:
                lease_id = lease.handoff()
            except LeaseError as exc:
                self.store.lease_valid_until = lease.valid_until
                log.warning("%s: handoff refused: %s", self.node_id, exc)
                return False
            if not self.send_handoff(node_id, lease_id):
                log.warning("%s: replica %s is not connected; keeping the lease", self.node_id, node_id)
                self._resume_after_failed_handoff(lease_id)
                return False
            log.info("%s: exiting primary, preserving lease for handoff to %s", self.node_id, node_id)
            self._handoff_id = lease_id
            self._handed_off.set()
            return True

    def _resume_after_failed_handoff(self, lease_id: str) -> None:
        try:
            self.lease = self.leaser.acquire_existing(lease_id)
            self.store.lease_valid_until = self.lease.valid_until
        except LeaseError as exc:
            log.error("%s: could not take the lease back: %s", self.node_id, exc)
            self._handed_off.set()

    def promote(self) -> None:
        """On a candidate replica: ask the primary to hand its lease over to this node."""
        if not self.leaser.candidate:
            raise LitefsError("this node is not a candidate")
        if self.store.is_primary:
            return
        url = self.store.primary_url
        if not url:
            raise LitefsError("no primary is known")
        req = urllib.request.Request(f"{url}/handoff?nodeID={self.node_id}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise LitefsError(f"handoff request to {url} failed: {exc}") from None

    # -- the lease thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.reconnect_delay
        while not self._stop.is_set():
            if self.leaser.candidate:
                try:
                    lease = self.leaser.acquire()
                except PrimaryExistsError:
                    pass
                except LeaseError as exc:
                    log.info("%s: cannot acquire the lease: %s", self.node_id, exc)
                else:
                    self._hold(lease, "lease acquired")
                    continue
            try:
                info = self.leaser.primary_info()
            except LeaseError as exc:
                log.info("%s: cannot read the primary from the lease: %s", self.node_id, exc)
                info = None
            if (info is not None and self.leaser.type != "static"
                    and info.advertise_url == self.leaser.advertise_url):
                # The lease still names this node (a handoff in flight): no stream to itself. (A
                # static replica's advertise-url is the primary's, by upstream's definition.)
                info = None
            if info is None or not info.advertise_url:
                if not self.leaser.candidate:
                    log.info("%s: cannot find primary & ineligible to become primary, retrying", self.node_id)
                self._become(False, "no primary")
                self._stop.wait(min(backoff, self.reconnect_delay))
                continue
            self._become(False, "primary elsewhere", info.hostname, info.advertise_url)
            client = StreamClient(self.store, info.advertise_url, on_ready=self.ready.set)
            self._client = client
            watcher = self._watch_lease(client, info)
            try:
                log.info("%s: existing primary found (%s), connecting as replica to %r",
                         self.node_id, info.hostname, info.advertise_url)
                client.run()
            except Handoff as h:
                try:
                    lease = self.leaser.acquire_existing(h.lease_id)
                except LeaseError as exc:
                    log.warning("%s: taking over the handed-off lease failed: %s", self.node_id, exc)
                else:
                    self._client = None
                    self._hold(lease, "handoff")
                    continue
            except LitefsError as exc:
                if not self._stop.is_set():
                    log.info("%s: disconnected from primary with error, retrying: %s", self.node_id, exc)
            finally:
                self._client = None
                watcher.set()
            backoff = self.reconnect_delay if client.ready else min(backoff * 2, MAX_BACKOFF)
            self._stop.wait(self.reconnect_delay if client.ready else backoff)

    def _watch_lease(self, client: StreamClient, info: object) -> threading.Event:
        """While streaming, drop the stream as soon as the lease names another primary or none:
        a primary that stopped (SIGSTOP, a partition) may keep the connection open but silent."""
        done = threading.Event()
        if self.leaser.type == "static":
            return done
        interval = min(1.0, max(getattr(self.leaser, "ttl", 4.0) / 4, 0.1))

        def watch() -> None:
            while not done.wait(interval) and not self._stop.is_set():
                try:
                    current = self.leaser.primary_info()
                except LeaseError:
                    continue
                if current != info:
                    log.info("%s: the lease now names %s; leaving the old stream",
                             self.node_id, current.hostname if current else "no primary")
                    client.close()
                    return

        threading.Thread(target=watch, name="litefs-lease-watch", daemon=True).start()
        return done

    def _become(self, primary: bool, reason: str, hostname: str = "", url: str = "") -> None:
        store = self.store
        changed = store.is_primary != primary
        store.primary_hostname, store.primary_url = hostname, url
        if not primary:
            store.lease_valid_until = -math.inf
        store.is_primary = primary
        if changed:
            metrics.ROLE_CHANGES.labels("primary" if primary else "replica", reason).inc()
            log.info("%s: now %s (%s)", self.node_id, "primary" if primary else "replica", reason)
            if not primary:
                store.demote()
            self.on_role_change(primary)

    def _adopt_cluster_id(self) -> None:
        theirs = self.leaser.cluster_id()
        if theirs:
            self.store.adopt_cluster_id(theirs)
        else:
            self.leaser.set_cluster_id(self.store.load_cluster_id(create=True))

    def _hold(self, lease: Lease, reason: str) -> None:
        """Be primary until the lease is lost, handed off, or the node stops."""
        try:
            self._adopt_cluster_id()
        except LitefsError as exc:
            log.error("%s: cannot connect: %s", self.node_id, exc)
            lease.close()
            self._stop.wait(self.reconnect_delay)
            return
        with self._lock:
            self.lease = lease
            self._handed_off.clear()
            self.store.lease_valid_until = lease.valid_until
            self._become(True, reason, self.leaser.hostname, self.leaser.advertise_url)
        log.info("%s: primary lease acquired, advertising as %s", self.node_id, self.leaser.advertise_url)
        self.ready.set()
        next_renew = time.monotonic() + lease.ttl / 2
        while not self._stop.is_set() and not self._handed_off.is_set():
            if lease.valid_until == math.inf:
                self._wait_any(None)
                continue
            self._wait_any(max(0.0, min(next_renew, lease.valid_until) - time.monotonic()))
            if self._stop.is_set() or self._handed_off.is_set():
                break
            if time.monotonic() >= lease.valid_until:
                log.error("%s: lease expired before it could be renewed; stepping down", self.node_id)
                self._lost()
                return
            try:
                lease.renew()
                self.store.lease_valid_until = lease.valid_until
                next_renew = time.monotonic() + lease.ttl / 2
            except LeaseError as exc:
                log.info("%s: lease renewal error, retrying: %s", self.node_id, exc)
                next_renew = time.monotonic() + RENEW_RETRY
        with self._lock:
            self.lease = None
            handed_off = self._handed_off.is_set()
            if handed_off:
                self._become(False, "handoff")
        if handed_off:
            self._await_successor()
            return
        log.info("%s: exiting primary, destroying lease", self.node_id)
        self.store.lease_valid_until = -math.inf
        try:
            lease.close()
        except LeaseError as exc:
            log.info("%s: releasing the lease: %s", self.node_id, exc)

    def _await_successor(self, timeout: float = 2.0) -> None:
        """After a handoff: if the target never takes the lease over, take it back rather than
        leave the cluster without a primary until the TTL runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                info = self.leaser.primary_info()
            except LeaseError:
                info = None
            if info is not None and info.advertise_url != self.leaser.advertise_url:
                return
            self._stop.wait(0.05)
        if self._stop.is_set():
            return
        log.warning("%s: the handoff target did not take over; taking the lease back", self.node_id)
        try:
            lease = self.leaser.acquire_existing(self._handoff_id)
        except LeaseError as exc:
            log.warning("%s: could not take the lease back: %s", self.node_id, exc)
            return
        self._hold(lease, "handoff not taken")

    def _lost(self) -> None:
        with self._lock:
            self.lease = None
            self._become(False, "lease lost")

    def _wait_any(self, timeout: float | None) -> None:
        """Sleep until stop, a handoff, or the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set() and not self._handed_off.is_set():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return
            self._stop.wait(left)

