"""tests.consul_standin: the Consul stand-in's HTTP API semantics, driven through py-consul."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import consul
import pytest
import requests

from tests.consul_standin import ConsulStandIn, ManualClock, consul_standin, parse_go_duration  # noqa: F401
from tests.nodes import wait_for


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def standin(clock: ManualClock) -> Iterator[ConsulStandIn]:
    with ConsulStandIn(clock=clock) as s:
        yield s


def client(standin: ConsulStandIn, **kwargs) -> consul.Consul:
    kwargs.setdefault("connections_timeout", 5)
    return consul.Consul(host="127.0.0.1", port=standin.port, **kwargs)


def session(c: consul.Consul, behavior: str = "release", lock_delay: int = 1, ttl: int | None = 10) -> str:
    return c.session.create(name="t", behavior=behavior, lock_delay=lock_delay, ttl=ttl, checks=[])


def test_fixture_and_context_manager(consul_standin):
    assert consul_standin.url == f"http://127.0.0.1:{consul_standin.port}"
    assert requests.get(consul_standin.url + "/v1/status/leader", timeout=5).json() == "127.0.0.1:8300"


def test_go_durations():
    assert [parse_go_duration(t) for t in ("10s", "1m30s", "500ms", "0", "1.5h", "250us")] == [
        10, 90, 0.5, 0, 5400, 0.00025]
    for bad in ("10", "s", "10x", "1s2"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_kv_put_get_cas_delete_and_indexes(standin):
    c = client(standin)
    index, value = c.kv.get("a/b")
    assert value is None and int(index) >= 1
    assert c.kv.put("a/b", "one", flags=7)
    _, e = c.kv.get("a/b")
    assert (e["Key"], e["Value"], e["Flags"], e["LockIndex"]) == ("a/b", b"one", 7, 0)
    assert e["CreateIndex"] == e["ModifyIndex"] > int(index)
    assert not c.kv.put("a/b", "two", cas=0)  # create-only
    assert not c.kv.put("a/b", "two", cas=e["ModifyIndex"] + 100)
    assert c.kv.put("a/b", "two", cas=e["ModifyIndex"])
    _, e2 = c.kv.get("a/b")
    assert e2["Value"] == b"two" and e2["ModifyIndex"] > e["ModifyIndex"] and e2["CreateIndex"] == e["CreateIndex"]
    assert c.kv.put("a/c", "three") and c.kv.put("a/c/d", "four") and c.kv.put("z", None)
    _, entries = c.kv.get("a/", recurse=True)
    assert [x["Key"] for x in entries] == ["a/b", "a/c", "a/c/d"]
    _, keys = c.kv.get("a/", keys=True, separator="/")
    assert keys == ["a/b", "a/c", "a/c/"]
    assert c.kv.get("z")[1]["Value"] is None
    raw = requests.get(f"{standin.url}/v1/kv/a/c?raw", timeout=5)
    assert raw.content == b"three" and "X-Consul-Index" in raw.headers
    assert not c.kv.delete("a/b", cas=0)
    assert c.kv.delete("a/", recurse=True)
    assert c.kv.get("a/", recurse=True)[1] is None and c.kv.get("z")[1] is not None


def test_acquire_release_and_lock_index(standin):
    c = client(standin)
    s1, s2 = session(c), session(c)
    assert c.kv.put("lock", "v1", acquire=s1)
    assert c.kv.put("lock", "v1b", acquire=s1)  # re-acquire by the holder updates the value
    _, e = c.kv.get("lock")
    assert (e["Session"], e["LockIndex"], e["Value"]) == (s1, 1, b"v1b")
    assert not c.kv.put("lock", "v2", acquire=s2)
    assert not c.kv.put("lock", None, release=s2)
    assert c.kv.put("lock", "plain")  # a plain put keeps the lock
    assert c.kv.get("lock")[1]["Session"] == s1
    assert c.kv.put("lock", None, release=s1)
    _, e = c.kv.get("lock")
    assert "Session" not in e and e["Value"] is None
    assert c.kv.put("lock", "v2", acquire=s2)  # no lock-delay after an explicit release
    assert c.kv.get("lock")[1]["LockIndex"] == 2
    with pytest.raises(consul.ConsulException, match="invalid session"):
        c.kv.put("lock", "x", acquire="no-such-session")
    conflicting = requests.put(f"{standin.url}/v1/kv/lock?acquire={s1}&release={s1}", timeout=5)
    assert conflicting.status_code == 400 and "Conflicting" in conflicting.text


@pytest.mark.parametrize("behavior", ["release", "delete"])
def test_invalidation_behaviour_and_lock_delay(standin, clock, behavior):
    c = client(standin)
    s1, s2 = session(c, behavior=behavior, lock_delay=5), session(c)
    assert c.kv.put("lock", "v", acquire=s1)
    assert c.session.destroy(s1)
    _, e = c.kv.get("lock")
    if behavior == "delete":
        assert e is None
    else:
        assert e is not None and "Session" not in e and e["Value"] == b"v"
    assert not c.kv.put("lock", "w", acquire=s2)  # lock-delay after invalidation
    clock.advance(4.9)
    assert not c.kv.put("lock", "w", acquire=s2)
    clock.advance(0.2)
    assert c.kv.put("lock", "w", acquire=s2)


def test_session_ttl_expiry_renew_and_info(standin, clock):
    c = client(standin)
    sid = session(c, behavior="delete", ttl=10)
    _, info = c.session.info(sid)
    assert (info["TTL"], info["Behavior"], info["LockDelay"], info["NodeChecks"]) == ("10s", "delete", 1e9, [])
    assert c.kv.put("lock", "v", acquire=sid)
    clock.advance(9)
    assert c.session.renew(sid)["ID"] == sid
    clock.advance(9)
    assert c.session.info(sid)[1] is not None
    clock.advance(1.1)
    assert c.session.info(sid)[1] is None
    assert c.kv.get("lock")[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)
    assert c.session.list()[1] == []


def test_session_create_validation(standin):
    c = client(standin)
    default = c.session.create()  # Consul's defaults: serfHealth, release, 15 s lock-delay
    _, info = c.session.info(default)
    assert (info["NodeChecks"], info["Behavior"], info["LockDelay"], info["TTL"]) == (
        ["serfHealth"], "release", 15e9, "")
    put = lambda body: requests.put(f"{standin.url}/v1/session/create", data=json.dumps(body), timeout=5)  # noqa: E731
    assert put({"TTL": "5s"}).status_code == 400  # below session_ttl_min
    assert put({"TTL": "25h"}).status_code == 400
    assert put({"Behavior": "explode"}).status_code == 400
    assert put({"Checks": ["service:web"]}).status_code == 500
    assert put({"Node": "unknown-node"}).status_code == 500
    sid = put({"LockDelay": 2_000_000_000, "checks": []}).json()["ID"]
    assert c.session.info(sid)[1]["LockDelay"] == 2e9
    sid = put({"LockDelay": 3}).json()["ID"]  # small numbers count seconds
    assert c.session.info(sid)[1]["LockDelay"] == 3e9
    assert c.catalog.register("apps/x/litefs", "localhost")
    sid = c.session.create(node="apps/x/litefs", checks=[])
    assert c.session.node("apps/x/litefs")[1][0]["ID"] == sid


def test_blocking_queries_wake_on_change_and_time_out(standin):
    c = client(standin)
    c.kv.put("watched", "v0")
    index, _ = c.kv.get("watched")
    results: list[tuple[str, object]] = []

    def watch() -> None:
        new_index, e = c_watch.kv.get("watched", index=index, wait="10s")
        results.append((new_index, e["Value"] if e else None))

    c_watch = client(standin)
    threads = [threading.Thread(target=watch) for _ in range(3)]  # concurrent blocking queries
    for t in threads:
        t.start()
    wait_for(lambda: sum(1 for r in standin.requests if "index" in r.query) == 3, timeout=5,
             what="the blocking queries to arrive")
    assert c.kv.put("other", "x")  # outside the scope: does not wake them
    assert results == []
    assert c.kv.put("watched", "v1")
    for t in threads:
        t.join(5)
    assert [v for _, v in results] == [b"v1"] * 3
    assert all(int(i) > int(index) for i, _ in results)

    index, _ = c.kv.get("watched")
    start = time.monotonic()
    same_index, e = c.kv.get("watched", index=index, wait="200ms")
    assert time.monotonic() - start >= 0.2
    assert e["Value"] == b"v1"


def test_blocking_query_wakes_on_session_expiry():
    with ConsulStandIn(min_ttl=0.3) as standin:
        c = client(standin)
        start = time.monotonic()
        sid = c.http.put(consul.callback.CB.json(is_id=True), "/v1/session/create",
                         data=json.dumps({"TTL": "300ms", "Behavior": "delete", "Checks": []}))
        assert c.kv.put("lock", "v", acquire=sid)
        index, _ = c.kv.get("lock")
        _, e = c.kv.get("lock", index=index, wait="5s")
        assert e is None and 0.3 <= time.monotonic() - start < 3


def test_token_is_recorded_and_required(clock):
    with ConsulStandIn(clock=clock, require_token="tok") as standin:
        with pytest.raises(consul.ACLPermissionDenied):
            client(standin).kv.get("k")
        assert client(standin, token="tok").kv.put("k", "v")
        assert {r.token for r in standin.requests} == {None, "tok"}


def test_pause_hangs_requests_then_drops_them(standin):
    c_a = client(standin, token="a", connections_timeout=0.3)
    c_b = client(standin, token="b", connections_timeout=5)
    assert c_a.kv.put("k", "v")
    standin.pause(token="a")  # partition only the clients using token "a"
    start = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        c_a.kv.put("k", "lost")
    assert time.monotonic() - start < 2
    assert c_b.kv.get("k")[1]["Value"] == b"v"
    standin.resume()
    assert c_a.kv.get("k")[1]["Value"] == b"v"  # the hung write was dropped, not applied late
    standin.pause()
    with pytest.raises(requests.exceptions.Timeout):
        c_a.kv.get("k")
    standin.resume()


def test_stop_and_start_on_the_same_port_keeps_state_and_restarts_ttls(clock):
    with ConsulStandIn(clock=clock) as standin:
        c = client(standin, connections_timeout=1)
        sid = session(c, ttl=10)
        assert c.kv.put("lock", "v", acquire=sid)
        port = standin.port
        standin.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            c.kv.get("lock")
        clock.advance(9)
        standin.start()
        assert standin.port == port
        clock.advance(5)  # 14 s after the last renewal, but the TTL restarted at start()
        assert c.session.info(sid)[1] is not None
        assert c.kv.get("lock")[1]["Session"] == sid


def test_grant_all_lets_two_sessions_hold_the_key(standin):
    c = client(standin)
    s1, s2 = session(c), session(c)
    assert c.kv.put("lock", "a", acquire=s1)
    standin.grant_all(True)
    assert c.kv.put("lock", "b", acquire=s2)
    _, e = c.kv.get("lock")
    assert (e["Session"], e["LockIndex"]) == (s2, 2)
    standin.grant_all(False)
    assert not c.kv.put("lock", "a", acquire=s1)
