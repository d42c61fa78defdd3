"""The Consul lease: the primary is whoever holds a Consul KV lock through a TTL session.

This follows upstream LiteFS (consul/consul.go). It talks to Consul only through py-consul's
blocking client.

URL and key layout, for `lease.consul.url: <scheme>://[:TOKEN@]host[:port][/PREFIX]` and
`lease.consul.key: KEY`:
- scheme, host and port come from the URL. As upstream, where the URL has no port, the scheme's
  default port is used (80 or 443), not 8500.
- the URL password is the ACL token. It is sent as X-Consul-Token and overrides
  CONSUL_HTTP_TOKEN.
- `PREFIX/KEY` is the lock key. It holds the primary's PrimaryInfo JSON and is held by its
  session.
- `PREFIX/KEY/clusterid` holds the raw cluster id. It is written once, with cas=0.
- with a PREFIX, the catalog node `PREFIX/litefs` is registered once, and sessions are created on
  it. Without one, sessions live on the agent's node.

A session has Name "litefs", TTL = ttl, LockDelay = lock_delay, Behavior "delete" and no health
checks (`Checks: []`, `NodeChecks: []`; upstream's CreateNoChecks). So it ends only by TTL
expiry or by destroy, and its invalidation deletes the lock key. After an invalidation, Consul
refuses that key to everyone for lock_delay. After an explicit release (`close()`) it does not.

Timing. All lease arithmetic uses the injected monotonic `clock`.
- `valid_until` = (time the last successful session create/renew request was *sent*) + ttl −
  margin, with margin = min(max(1 s, ttl/10), ttl/4). Consul starts the TTL when the request
  *arrives*, which is no earlier than it was sent. It may keep the session longer (up to 2×TTL),
  never shorter. Another node can acquire the key no earlier than invalidation + lock_delay. So
  a primary that stops at valid_until has stopped before anyone else could be primary. The margin
  covers clock-rate drift and lets writes in flight finish. Upstream stamps the time the renewal
  *returned*, which is less safe.
- Every call to Consul is bounded. py-consul's blocking client takes `connections_timeout`, a
  requests timeout per connect/read. Each call also runs on a helper thread with a hard deadline
  of `call_timeout` (default min(ttl/5, 5 s)), which also covers DNS stalls and multi-address
  connects. So a primary cut off from Consul (a blackholed connection) gets a LeaseError within
  call_timeout, not a hang past its TTL.

How the node's lease loop (not this module) should schedule renewals, as upstream does:
- renew every ttl/2 after the last successful renewal;
- on LeaseError (a transport error, a timeout, or a Consul 5xx), retry every 1 s;
- give up, i.e. stop acting as primary, as soon as monotonic() ≥ lease.valid_until, or at once on
  LeaseExpiredError (the session is gone: expired, destroyed, or handed off).
Write paths should check `lease.valid_until` themselves rather than rely on the loop noticing.

Deviation from py-consul's Session.create: it asserts 10 ≤ ttl ≤ 86400 as an int, and can send
neither a fractional TTL nor NodeChecks. The session is therefore created with one request made
through py-consul's own HTTP client and response callback. Consul itself enforces its
`session_ttl_min`, 10 s by default. A shorter configured TTL fails there with a clear
LeaseError.
"""
from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import consul
import requests
from consul.callback import CB

from litefs.errors import ConfigError
from litefs.lease import LeaseError, LeaseExpiredError, PrimaryExistsError, PrimaryInfo

if TYPE_CHECKING:
    from litefs.config import LeaseConfig

log = logging.getLogger(__name__)

SESSION_NAME = "litefs"
DEFAULT_TTL = 10.0
DEFAULT_LOCK_DELAY = 1.0
MAX_CALL_TIMEOUT = 5.0

T = TypeVar("T")


def lease_margin(ttl: float) -> float:
    """The safety margin subtracted from the TTL: max(1 s, ttl/10), but never above ttl/4."""
    return min(max(1.0, ttl / 10), ttl / 4)


def default_call_timeout(ttl: float) -> float:
    """The bound on one call to Consul: ttl/5, at most 5 s (2 s for the default 10 s TTL)."""
    return min(ttl / 5, MAX_CALL_TIMEOUT)


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string Consul parses: "10s", "1500ms"."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _join(*parts: str) -> str:
    """Like Go's path.Join, for Consul keys (no leading slash)."""
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined).lstrip("/")
    return "" if cleaned == "." else cleaned


class ConsulLeaser:
    """Leaser over Consul sessions and KV locks (see the module docstring)."""

    type = "consul"

    def __init__(
        self,
        url: str,
        key: str,
        hostname: str,
        advertise_url: str,
        candidate: bool,
        ttl: float = DEFAULT_TTL,
        lock_delay: float = DEFAULT_LOCK_DELAY,
        clock: Callable[[], float] = time.monotonic,
        *,
        call_timeout: float | None = None,
    ) -> None:
        if not key:
            raise ConfigError("lease.consul.key: must specify a consul key")
        if not hostname:
            raise ConfigError("lease.hostname: must specify a hostname for this node")
        if not advertise_url:
            raise ConfigError("lease.advertise-url: must specify an advertise URL for this node")
        if not ttl > 0:
            raise ConfigError(f"lease.consul.ttl: must be positive, got {ttl!r}")
        if lock_delay < 0:
            raise ConfigError(f"lease.consul.lock-delay: must not be negative, got {lock_delay!r}")
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"lease.consul.url: expected http(s)://[:token@]host[:port][/prefix], got {url!r}")
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError as e:
            raise ConfigError(f"lease.consul.url: {e}") from None
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname

        self.hostname = hostname
        self.advertise_url = advertise_url
        self.candidate = candidate
        self.ttl = float(ttl)
        self.lock_delay = float(lock_delay)
        self.clock = clock
        self.call_timeout = float(call_timeout) if call_timeout is not None else default_call_timeout(self.ttl)
        self.token = unquote(u.password) if u.password else None
        self.key_prefix = _join(unquote(u.path))
        self.key = _join(self.key_prefix, key)
        self.cluster_id_key = _join(self.key_prefix, key, "clusterid")
        self.node_name = _join(self.key_prefix, "litefs") if self.key_prefix else None
        self.consul_address = f"{u.scheme}://{host}:{port}"

        self._consul = consul.Consul(host=host, port=port, scheme=u.scheme, token=self.token,
                                     connections_timeout=self.call_timeout)
        self._consul.token = self.token  # the URL's token wins over CONSUL_HTTP_TOKEN, as upstream
        self._node_registered = False

    @classmethod
    def from_config(cls, lease_config: "LeaseConfig", **kwargs: Any) -> "ConsulLeaser":
        """Build from a litefs.config.LeaseConfig (with hostname/advertise_url filled in)."""
        c = lease_config.consul
        return cls(c.url, c.key, lease_config.hostname, lease_config.advertise_url,
                   lease_config.candidate, ttl=c.ttl, lock_delay=c.lock_delay, **kwargs)

    def __repr__(self) -> str:
        return f"ConsulLeaser({self.consul_address!r}, key={self.key!r})"

    # ---- Leaser ----------------------------------------------------------------------------

    def acquire(self) -> "ConsulLease":
        if not self.candidate:
            raise LeaseError("this node is not a candidate (lease.candidate is false)")
        self._register_node()
        sent = self.clock()
        session_id = self._create_session()
        lease = ConsulLease(self, session_id, sent)
        try:
            acquired = self._call("acquire lock", self._consul.kv.put, self.key, self._info_json(),
                                  acquire=session_id)
        except BaseException:
            lease._destroy_quietly()  # with behavior "delete" this also drops the key if we got it
            raise
        if not acquired:
            lease._destroy_quietly()
            raise PrimaryExistsError(f"consul key {self.key!r} is held by another session")
        return lease

    def acquire_existing(self, lease_id: str) -> "ConsulLease":
        """Take over a session handed off by the old primary: renew it, then re-acquire the key
        with our own PrimaryInfo. No TTL or lock-delay wait: the session never ended."""
        lease = ConsulLease(self, lease_id, float("-inf"))
        lease.renew()
        acquired = self._call("acquire lock", self._consul.kv.put, self.key, self._info_json(),
                              acquire=lease_id)
        if not acquired:
            raise PrimaryExistsError(f"consul key {self.key!r} could not be acquired with the handed-off session")
        return lease

    def primary_info(self) -> PrimaryInfo | None:
        _, entry = self._call("read primary", self._consul.kv.get, self.key)
        if entry is None or not entry.get("Session") or not entry.get("Value"):
            return None
        try:
            data = json.loads(entry["Value"])
        except (ValueError, UnicodeDecodeError) as e:
            raise LeaseError(f"consul key {self.key!r}: invalid primary info: {e}") from None
        if not isinstance(data, dict):
            raise LeaseError(f"consul key {self.key!r}: invalid primary info: {data!r}")
        return PrimaryInfo.from_json(data)

    def cluster_id(self) -> str:
        _, entry = self._call("read cluster id", self._consul.kv.get, self.cluster_id_key)
        if entry is None or not entry.get("Value"):
            return ""
        return bytes(entry["Value"]).decode("utf-8", "replace")

    def set_cluster_id(self, cluster_id: str) -> None:
        """Set the cluster id once (create-only, cas=0). Setting the same id again is a no-op;
        a different id already stored raises LeaseError naming both."""
        if not cluster_id:
            raise LeaseError("cannot set an empty cluster id")
        if self._call("set cluster id", self._consul.kv.put, self.cluster_id_key, cluster_id, cas=0):
            return
        current = self.cluster_id()
        if current != cluster_id:
            raise LeaseError(f"consul lease already initialized with different ID: {current} "
                             f"(this node's cluster ID is {cluster_id})")

    def close(self) -> None:
        self._consul.http.session.close()

    # ---- internals --------------------------------------------------------------------------

    def _info_json(self) -> str:
        return json.dumps(PrimaryInfo(self.hostname, self.advertise_url).to_json(), separators=(",", ":"))

    def _register_node(self) -> None:
        if self.node_name is None or self._node_registered:
            return
        self._call("register node", self._consul.catalog.register, self.node_name, "localhost")
        self._node_registered = True

    def _create_session(self) -> str:
        body: dict[str, Any] = {
            "Name": SESSION_NAME,
            "Behavior": "delete",
            "LockDelay": go_duration(self.lock_delay),
            "TTL": go_duration(self.ttl),
            "Checks": [],
            "NodeChecks": [],
        }
        if self.node_name:
            body["Node"] = self.node_name
        c = self._consul
        return self._call("create session", c.http.put, CB.json(is_id=True), "/v1/session/create",
                          params=[], headers=c.prepare_headers(), data=json.dumps(body))

    def _call(self, what: str, fn: Callable[..., T], *args: Any, expired_on_404: bool = False,
              **kwargs: Any) -> T:
        """Run one py-consul call with a hard deadline, mapping failures to LeaseError."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name=f"consul {what}", daemon=True).start()
        if not done.wait(self.call_timeout):
            raise LeaseError(f"consul {what}: no answer from {self.consul_address} within {self.call_timeout:g}s")
        err = box.get("error")
        if err is None:
            return box["value"]
        if isinstance(err, consul.NotFound) and expired_on_404:
            raise LeaseExpiredError(f"consul {what}: session not found: {err}") from err
        if isinstance(err, consul.ACLPermissionDenied):
            raise LeaseError(f"consul {what}: permission denied (check the token in lease.consul.url): {err}") from err
        if isinstance(err, (consul.ConsulException, requests.RequestException)):
            raise LeaseError(f"consul {what}: {err}") from err
        raise err


class ConsulLease:
    """A held Consul session. `valid_until` is measured from when requests were sent."""

    def __init__(self, leaser: ConsulLeaser, session_id: str, sent_at: float) -> None:
        self.leaser = leaser
        self.id = session_id
        self.ttl = leaser.ttl
        self._sent_at = sent_at
        self._handed_off = False
        self._closed = False

    def __repr__(self) -> str:
        return f"ConsulLease({self.id!r}, valid_until={self.valid_until:.3f})"

    @property
    def renewed_at(self) -> float:
        """Monotonic time the last successful create/renew request was sent."""
        return self._sent_at

    @property
    def valid_until(self) -> float:
        if self._handed_off or self._closed:
            return float("-inf")
        return self._sent_at + self.ttl - lease_margin(self.ttl)

    def renew(self) -> None:
        """Renew the session. LeaseExpiredError if it is gone (or was handed off or closed);
        LeaseError on transport errors and timeouts, which the caller retries until
        valid_until. valid_until only moves on success."""
        if self._handed_off:
            raise LeaseExpiredError(f"consul session {self.id} was handed off")
        if self._closed:
            raise LeaseExpiredError(f"consul session {self.id} was closed")
        sent = self.leaser.clock()
        entry = self.leaser._call("renew session", self.leaser._consul.session.renew, self.id,
                                  expired_on_404=True)
        if not entry:
            raise LeaseExpiredError(f"consul session {self.id} has expired")
        self._sent_at = max(self._sent_at, sent)

    def handoff(self) -> str:
        """Stop being primary without ending the session; the successor calls
        acquire_existing() with the returned id. The caller should renew() first."""
        if self._closed:
            raise LeaseError(f"consul session {self.id} is closed")
        self._handed_off = True
        return self.id

    def close(self) -> None:
        """Release the key (so another candidate can acquire it at once, with no lock-delay),
        then destroy the session. Best effort: failures are logged, each call is bounded by
        call_timeout. Does nothing after handoff()."""
        if self._handed_off or self._closed:
            return
        self._closed = True
        try:
            released = self.leaser._call("release lock", self.leaser._consul.kv.put, self.leaser.key, None,
                                         release=self.id)
            if not released:
                log.info("consul key %s was no longer held by session %s", self.leaser.key, self.id)
        except LeaseError as e:
            log.warning("cannot release consul key %s (session %s): %s", self.leaser.key, self.id, e)
        self._destroy_quietly()

    def _destroy_quietly(self) -> None:
        self._closed = True
        try:
            self.leaser._call("destroy session", self.leaser._consul.session.destroy, self.id)
        except LeaseError as e:
            log.warning("cannot destroy consul session %s: %s", self.id, e)
