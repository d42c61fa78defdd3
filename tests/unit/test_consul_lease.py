"""litefs.lease.consul against the ConsulStandIn (real HTTP through py-consul).

Most tests use real Consul values (ttl 10 s, lock-delay 1 s) and a ManualClock shared by the
stand-in and the leaser: time moves only when a test advances it. Expiry and lock-delay are then
checked exactly, and at once. The timeout tests (pause, stop) need real time. They use
a stand-in with a lowered minimum TTL (Consul's `session_ttl_min`) and TTLs of about a second,
so the per-call bound (ttl/5) stays short.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from litefs.errors import ConfigError
from litefs.lease import LeaseError, LeaseExpiredError, PrimaryExistsError, PrimaryInfo
from litefs.lease.consul import ConsulLease, ConsulLeaser, default_call_timeout, go_duration, lease_margin
from tests.consul_standin import ConsulStandIn, ManualClock
from tests.nodes import wait_for

KEY = "litefs"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def standin(clock: ManualClock) -> Iterator[ConsulStandIn]:
    with ConsulStandIn(clock=clock) as s:
        yield s


@pytest.fixture
def make_leaser(standin: ConsulStandIn, clock: ManualClock) -> Iterator[Callable[..., ConsulLeaser]]:
    made: list[ConsulLeaser] = []

    def make(name: str, url: str | None = None, **kwargs) -> ConsulLeaser:
        kwargs.setdefault("candidate", True)
        kwargs.setdefault("clock", clock)
        leaser = ConsulLeaser(url or standin.url, KEY, name, f"http://{name}:20202", **kwargs)
        made.append(leaser)
        return leaser

    yield make
    for leaser in made:
        leaser.close()


def info(name: str) -> PrimaryInfo:
    return PrimaryInfo(name, f"http://{name}:20202")


def stored_value(standin: ConsulStandIn, key: str) -> bytes | None:
    entry = standin.kv(key)
    return base64.b64decode(entry["Value"]) if entry and entry["Value"] else None


# ---- acquiring ---------------------------------------------------------------------------------


def test_acquire_creates_a_ttl_session_without_checks_and_holds_the_key(standin, make_leaser, clock):
    a = make_leaser("a")
    t0 = clock()
    lease = a.acquire()
    assert isinstance(lease, ConsulLease)
    session = standin.session(lease.id)
    assert session is not None
    assert (session["Name"], session["Behavior"], session["TTL"], session["LockDelay"]) == (
        "litefs", "delete", "10s", 1_000_000_000)
    assert session["NodeChecks"] == [] and session["Checks"] == []
    entry = standin.kv(KEY)
    assert entry["Session"] == lease.id and entry["LockIndex"] == 1
    assert json.loads(stored_value(standin, KEY)) == {"hostname": "a", "advertise-url": "http://a:20202"}
    assert a.primary_info() == info("a")
    assert lease.ttl == 10 and lease.valid_until == t0 + 10 - 1


def test_second_candidate_gets_primary_exists_and_sees_the_first(standin, make_leaser):
    lease = make_leaser("a").acquire()
    b = make_leaser("b")
    with pytest.raises(PrimaryExistsError):
        b.acquire()
    assert b.primary_info() == info("a")
    assert [s["ID"] for s in standin.sessions()] == [lease.id]  # b's session was destroyed
    with pytest.raises(LeaseError, match="not a candidate"):
        make_leaser("c", candidate=False).acquire()


def test_no_primary_before_anyone_acquires(make_leaser):
    assert make_leaser("a").primary_info() is None


# ---- renewing and expiring ---------------------------------------------------------------------


def test_renewing_keeps_the_lease_past_its_ttl(standin, make_leaser, clock):
    lease = make_leaser("a").acquire()
    b = make_leaser("b")
    for _ in range(4):  # 24 s in all, 2.4 TTLs
        clock.advance(6)
        lease.renew()
        assert lease.valid_until == clock() + 9
    standin.expire_sessions()
    assert standin.session(lease.id) is not None
    with pytest.raises(PrimaryExistsError):
        b.acquire()


def test_unrenewed_lease_expires_after_ttl_then_lock_delay_applies(standin, make_leaser, clock):
    a, b = make_leaser("a"), make_leaser("b")
    t0 = clock()
    lease = a.acquire()
    clock.advance(9.9)
    standin.expire_sessions()
    assert b.primary_info() == info("a")
    clock.advance(0.2)  # t0 + 10.1: past the TTL
    wait_for(lambda: b.primary_info() is None, timeout=5, what="the session to expire")
    with pytest.raises(LeaseExpiredError):
        lease.renew()
    with pytest.raises(PrimaryExistsError):  # the key is gone, but lock-delay refuses it
        b.acquire()
    clock.advance(0.8)  # t0 + 10.9: still within the 1 s lock-delay
    with pytest.raises(PrimaryExistsError):
        b.acquire()
    clock.advance(0.3)  # t0 + 11.2
    lease_b = b.acquire()
    assert a.primary_info() == info("b")
    # The old primary had stopped (valid_until) before its session even ended.
    assert lease.valid_until == t0 + 9 < t0 + 10 < clock()
    assert lease_b.valid_until == clock() + 9


def test_unrenewed_lease_expires_in_real_time():
    """End to end with the real clock: the stand-in's reaper ends the session by itself."""
    with ConsulStandIn(min_ttl=0.5) as standin:
        a = ConsulLeaser(standin.url, KEY, "a", "http://a:20202", True, ttl=0.5, lock_delay=0.2)
        b = ConsulLeaser(standin.url, KEY, "b", "http://b:20202", True, ttl=0.5, lock_delay=0.2)
        try:
            start = time.monotonic()
            lease = a.acquire()
            wait_for(lambda: standin.session(lease.id) is None, timeout=5, what="expiry")
            assert time.monotonic() - start >= 0.5
            wait_for(lambda: _try_acquire(b), timeout=5, what="b to acquire after the lock-delay")
            assert time.monotonic() - start >= 0.7
            assert a.primary_info() == info("b")
        finally:
            a.close()
            b.close()


def _try_acquire(leaser: ConsulLeaser) -> ConsulLease | None:
    try:
        return leaser.acquire()
    except PrimaryExistsError:
        return None


def test_valid_until_counts_from_when_the_request_was_sent(standin, make_leaser, clock):
    def slow_session_requests(method: str, path: str) -> None:
        if path.startswith("/v1/session/"):
            clock.advance(3)  # 3 s pass while the request is in flight

    standin.before_request = slow_session_requests
    t0 = clock()
    lease = make_leaser("a").acquire()
    assert lease.valid_until == t0 + 10 - 1
    clock.advance(1)
    t1 = clock()
    lease.renew()
    assert clock() == t1 + 3
    assert lease.renewed_at == t1
    assert lease.valid_until == t1 + 10 - 1


def test_margin_and_call_timeout_choices():
    assert lease_margin(10) == 1 and lease_margin(60) == 6 and lease_margin(2) == 0.5
    assert all(0 < lease_margin(t) < t / 2 for t in (0.5, 1, 3, 10, 100, 86400))
    assert default_call_timeout(10) == 2 and default_call_timeout(100) == 5
    assert all(default_call_timeout(t) <= t / 3 for t in (0.5, 1, 10, 100))
    assert (go_duration(10.0), go_duration(1), go_duration(1.5), go_duration(0.25)) == ("10s", "1s", "1500ms", "250ms")


# ---- closing and handing off -------------------------------------------------------------------


def test_close_releases_at_once_without_lock_delay(standin, make_leaser):
    a, b = make_leaser("a"), make_leaser("b")
    lease = a.acquire()
    lease.close()
    assert standin.session(lease.id) is None
    assert b.primary_info() is None
    assert lease.valid_until == float("-inf")
    with pytest.raises(LeaseExpiredError):
        lease.renew()
    lease.close()  # a second close does nothing
    lease_b = b.acquire()  # the clock has not moved: no lock-delay after an explicit release
    assert a.primary_info() == info("b")
    assert standin.kv(KEY)["Session"] == lease_b.id


def test_handoff_then_acquire_existing_switches_primary_with_no_wait(standin, make_leaser, clock):
    a, b = make_leaser("a"), make_leaser("b")
    lease_a = a.acquire()
    lease_a.renew()
    session_id = lease_a.handoff()
    assert session_id == lease_a.id
    assert lease_a.valid_until == float("-inf")
    lease_a.close()  # after a handoff, close must not destroy the session
    assert standin.session(session_id) is not None

    t = clock()
    lease_b = b.acquire_existing(session_id)
    assert clock() == t  # no TTL or lock-delay wait
    assert lease_b.id == session_id and lease_b.valid_until == t + 9
    assert a.primary_info() == info("b")
    assert standin.kv(KEY)["Session"] == session_id
    lease_b.renew()
    with pytest.raises(LeaseExpiredError):
        lease_a.renew()


def test_acquire_existing_of_a_dead_session_raises_expired(make_leaser):
    lease = make_leaser("a").acquire()
    lease.close()
    with pytest.raises(LeaseExpiredError):
        make_leaser("b").acquire_existing(lease.id)


# ---- cluster id --------------------------------------------------------------------------------


def test_cluster_id_is_set_once(standin, make_leaser):
    a, b = make_leaser("a"), make_leaser("b")
    assert a.cluster_id() == ""
    a.set_cluster_id("LFSC0123456789ABCDEF")
    assert b.cluster_id() == "LFSC0123456789ABCDEF"
    assert stored_value(standin, "litefs/clusterid") == b"LFSC0123456789ABCDEF"
    b.set_cluster_id("LFSC0123456789ABCDEF")  # the same id again is fine
    with pytest.raises(LeaseError) as e:
        b.set_cluster_id("LFSCFEDCBA9876543210")
    assert "LFSC0123456789ABCDEF" in str(e.value) and "LFSCFEDCBA9876543210" in str(e.value)
    assert a.cluster_id() == "LFSC0123456789ABCDEF"


def test_racing_cluster_ids_one_wins(standin, make_leaser):
    leasers = [make_leaser(f"n{i}") for i in range(6)]
    barrier = threading.Barrier(len(leasers))
    outcome: dict[str, str] = {}

    def run(i: int) -> None:
        barrier.wait()
        try:
            leasers[i].set_cluster_id(f"LFSC{i:016d}")
            outcome[f"LFSC{i:016d}"] = "ok"
        except LeaseError as e:
            outcome[f"LFSC{i:016d}"] = str(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(leasers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    winners = [cid for cid, result in outcome.items() if result == "ok"]
    assert len(outcome) == len(leasers) and len(winners) == 1
    assert leasers[0].cluster_id() == winners[0]


# ---- URL, token, prefix ------------------------------------------------------------------------


def test_url_token_prefix_and_node(clock, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    with ConsulStandIn(clock=clock, require_token="s3cr/et") as standin:
        url = f"http://:s3cr%2Fet@127.0.0.1:{standin.port}/apps/my-app/"
        a = ConsulLeaser(url, KEY, "a", "http://a:20202", True, clock=clock)
        try:
            assert (a.key, a.cluster_id_key, a.node_name) == (
                "apps/my-app/litefs", "apps/my-app/litefs/clusterid", "apps/my-app/litefs")
            lease = a.acquire()
            a.set_cluster_id("LFSC1")
            assert a.primary_info() == info("a")
            assert "apps/my-app/litefs" in standin.nodes()
            assert standin.session(lease.id)["Node"] == "apps/my-app/litefs"
            assert standin.kv("apps/my-app/litefs")["Session"] == lease.id
            assert stored_value(standin, "apps/my-app/litefs/clusterid") == b"LFSC1"
            assert standin.kv(KEY) is None
            assert standin.tokens_seen == {"s3cr/et"}
            lease.close()
        finally:
            a.close()
        monkeypatch.delenv("CONSUL_HTTP_TOKEN")
        anonymous = ConsulLeaser(f"http://127.0.0.1:{standin.port}/apps/my-app", KEY, "b", "http://b:20202", True)
        try:
            with pytest.raises(LeaseError, match="permission denied"):
                anonymous.primary_info()
        finally:
            anonymous.close()


def test_url_parsing_without_network():
    leaser = ConsulLeaser("https://consul.example.com/", "k", "h", "http://h:1", True)
    assert (leaser.consul_address, leaser.key, leaser.node_name, leaser.token) == (
        "https://consul.example.com:443", "k", None, None)
    leaser = ConsulLeaser("http://:tok@[::1]:8500//a//b/", "x/y", "h", "http://h:1", False)
    assert (leaser.consul_address, leaser.key, leaser.cluster_id_key, leaser.token) == (
        "http://[::1]:8500", "a/b/x/y", "a/b/x/y/clusterid", "tok")
    for bad in ("consul:8500", "ftp://h/", "http://h:99999/"):
        with pytest.raises(ConfigError):
            ConsulLeaser(bad, "k", "h", "http://h:1", True)
    with pytest.raises(ConfigError):
        ConsulLeaser("http://h/", "", "h", "http://h:1", True)


def test_ttl_below_consuls_minimum_is_refused_by_consul(standin, make_leaser):
    with pytest.raises(LeaseError, match="Invalid Session TTL"):
        make_leaser("a", ttl=5).acquire()
    assert standin.sessions() == []
    lease = make_leaser("b", ttl=12.5, lock_delay=0.5).acquire()
    session = standin.session(lease.id)
    assert (session["TTL"], session["LockDelay"]) == ("12500ms", 500_000_000)


# ---- faults ------------------------------------------------------------------------------------


def call_within(call: Callable[[], object], limit: float) -> tuple[BaseException | None, float]:
    """Run call() on a helper thread; fail the test if it has not returned within `limit`."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as e:
            box["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"{getattr(call, '__name__', call)} still hanging after {limit}s"
    return box.get("error"), elapsed


@pytest.fixture
def realtime_standin() -> Iterator[ConsulStandIn]:
    with ConsulStandIn(min_ttl=1) as s:
        yield s


def test_partitioned_renew_fails_within_the_bound_and_keeps_valid_until(realtime_standin, expect_log):
    standin = realtime_standin
    a = ConsulLeaser(standin.url, KEY, "a", "http://a:20202", True, ttl=1.5, lock_delay=1)
    try:
        lease = a.acquire()
        before = lease.valid_until
        assert a.call_timeout == pytest.approx(0.3)
        standin.pause()
        for call in (lease.renew, a.primary_info, a.cluster_id):
            error, elapsed = call_within(call, lease.ttl)
            assert type(error) is LeaseError, f"{call.__name__}: {error!r}"
            assert elapsed < lease.ttl / 3, f"{call.__name__} took {elapsed:.2f}s"
        assert lease.valid_until == before
        standin.resume()
        lease.renew()
        assert lease.valid_until > before

        standin.pause()
        with expect_log("cannot (release|destroy)"):
            error, elapsed = call_within(lease.close, lease.ttl)  # best effort, bounded
        assert error is None and elapsed < 2 * a.call_timeout + 0.5
    finally:
        standin.resume()
        a.close()


def test_consul_down_then_back_on_the_same_port(realtime_standin):
    standin = realtime_standin
    a = ConsulLeaser(standin.url, KEY, "a", "http://a:20202", True, ttl=2, lock_delay=1)
    try:
        lease = a.acquire()
        before = lease.valid_until
        port = standin.port
        standin.stop()
        error, elapsed = call_within(lease.renew, lease.ttl)
        assert type(error) is LeaseError, repr(error)
        assert elapsed < lease.ttl / 3
        assert lease.valid_until == before
        standin.start()
        assert standin.port == port
        lease.renew()
        assert lease.valid_until > before
        assert a.primary_info() == info("a")
    finally:
        a.close()


def test_grant_all_gives_two_primaries(standin, make_leaser):
    a, b = make_leaser("a"), make_leaser("b")
    standin.grant_all(True)
    lease_a, lease_b = a.acquire(), b.acquire()
    lease_a.renew()
    lease_b.renew()
    assert lease_a.id != lease_b.id
    assert a.primary_info() == info("b")  # the last one to acquire is what replicas see
    standin.grant_all(False)
    with pytest.raises(PrimaryExistsError):
        make_leaser("c").acquire()
