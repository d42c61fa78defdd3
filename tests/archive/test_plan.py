"""The planner and retention as pure functions: table tests and hypothesis properties."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs.archive.layout import Manifest, ObjectEntry
from litefs.archive.plan import Graph, dest, plan_restore, select_deletions, window
from litefs.errors import RestoreError
from litefs.ltx.format import CHECKSUM_FLAG

T0 = 1_700_000_000_000


def csum(t: int, lineage: int = 0) -> int:
    return 0 if t == 0 else CHECKSUM_FLAG | ((t * 0x9E3779B97F4A7C15 + lineage * 7919) & ((1 << 63) - 1))


def ts(t: int) -> int:
    return T0 + 1000 * t


def obj(level: int, a: int, b: int, *, size: int = 100, pre: int | None = None, lineage: int = 0) -> ObjectEntry:
    if a == 1:
        level = 9
    return ObjectEntry(min_txid=a, max_txid=b, level=level, first_ts=ts(a), last_ts=ts(b),
                       pre_apply=(0 if a == 1 else csum(a - 1, lineage)) if pre is None else pre,
                       post_apply=csum(b, lineage), size=size)


def names(plan) -> list[str]:
    return [o.name for o in plan.objects]


def test_fewest_objects_across_levels():
    objs = [obj(9, 1, 1)] + [obj(0, t, t) for t in range(2, 11)] + [obj(1, 2, 5), obj(1, 6, 10), obj(2, 2, 10)]
    plan = plan_restore(objs, txid=10)
    assert names(plan) == ["0009/0000000000000001-0000000000000001.ltx", "0002/0000000000000002-000000000000000a.ltx"]
    plan = plan_restore(objs, txid=7)
    assert [(o.min_txid, o.max_txid) for o in plan.objects] == [(1, 1), (2, 5), (6, 6), (7, 7)]
    assert plan_restore(objs).txid == 10
    # Newer snapshots win when they need fewer objects; ties go to fewer bytes.
    objs2 = objs + [obj(9, 1, 8, size=1000)]
    assert [(o.min_txid, o.max_txid) for o in plan_restore(objs2, txid=9).objects] == [(1, 8), (9, 9)]
    objs3 = [obj(9, 1, 1, size=10), obj(0, 2, 3, size=10), obj(9, 1, 3, size=500)]
    assert [(o.min_txid, o.max_txid) for o in plan_restore(objs3, txid=3).objects] == [(1, 3)]
    objs4 = [obj(9, 1, 1, size=10), obj(1, 2, 3, size=10), obj(0, 2, 3, size=5)]
    assert [o.level for o in plan_restore(objs4, txid=3).objects] == [9, 0]


def test_time_targets():
    objs = [obj(9, 1, 2)] + [obj(0, t, t) for t in range(3, 8)]
    assert plan_restore(objs, at=ts(5)).txid == 5
    assert plan_restore(objs, at=ts(5) + 999).txid == 5
    with pytest.raises(RestoreError, match="before the restorable window"):
        plan_restore(objs, at=ts(2) - 1)
    plan = plan_restore(objs, at=ts(7) + 60_000)
    assert plan.txid == 7 and "after the last archived commit" in plan.notes[0]
    # Timestamps that go backwards are clamped: TXID 4's time counts as TXID 3's.
    skew = [obj(9, 1, 2), obj(0, 3, 3), ObjectEntry(4, 4, 0, ts(2), ts(2), csum(3), csum(4)), obj(0, 5, 5)]
    assert plan_restore(skew, at=ts(3)).txid == 4


def test_gap_is_named_never_silently_skipped():
    objs = [obj(9, 1, 3), obj(0, 4, 5), obj(0, 8, 9)]
    with pytest.raises(RestoreError, match=r"TXIDs 0000000000000006\.\.0000000000000007 \(6\.\.7\) are missing"):
        plan_restore(objs, txid=9)
    with pytest.raises(RestoreError, match=r"\(6\.\.7\) are missing"):
        plan_restore(objs, at=ts(9))
    # Between TXID 5 and 8 the commits 6..7 happened at unknown times: refusing is the only honest answer.
    with pytest.raises(RestoreError, match=r"\(6\.\.7\) are missing"):
        plan_restore(objs, at=ts(6))
    with pytest.raises(RestoreError, match="missing"):
        plan_restore(objs)
    assert plan_restore(objs, txid=5).txid == 5
    w = window(objs)
    assert (w.start.txid, w.end.txid) == (3, 5)


def test_not_a_restore_point_and_beyond_the_end():
    objs = [obj(9, 1, 1), obj(1, 2, 10)]
    with pytest.raises(RestoreError, match="not a restore point.*2..10"):
        plan_restore(objs, txid=5)
    with pytest.raises(RestoreError, match="last TXID is 000000000000000a"):
        plan_restore(objs, txid=11)
    assert plan_restore(objs, at=ts(6)).txid == 1  # granularity: the state before the object


def test_checksum_chain_break_is_named():
    objs = [obj(9, 1, 3), obj(0, 4, 5, pre=CHECKSUM_FLAG | 12345)]
    with pytest.raises(RestoreError, match="checksum chain broken after TXID 0000000000000003"):
        plan_restore(objs, txid=5)


def test_excluded_objects_are_planned_around():
    objs = [obj(9, 1, 1), obj(0, 2, 2), obj(0, 3, 3), obj(1, 2, 3)]
    assert [o.level for o in plan_restore(objs, txid=3).objects] == [9, 1]
    plan = plan_restore(objs, txid=3, excluded={"0001/0000000000000002-0000000000000003.ltx": "corrupt"})
    assert [o.level for o in plan.objects] == [9, 0, 0]
    with pytest.raises(RestoreError, match="no usable snapshot.*corrupt"):
        plan_restore(objs, txid=3, excluded={objs[0].name: "corrupt: bad checksum"})


def test_lineages_restart_with_a_snapshot():
    # Lineage 0 reaches TXID 5; TXIDs 6..9 were never archived; lineage 1 starts with a snapshot at 10.
    objs = [obj(9, 1, 3), obj(0, 4, 5), obj(9, 1, 10, lineage=1), obj(0, 11, 12, lineage=1)]
    assert plan_restore(objs, txid=12).checksum == csum(12, 1)
    assert plan_restore(objs, at=ts(4)).txid == 3  # 4..5 is one object: granularity
    assert plan_restore(objs, at=ts(5)).txid == 5
    with pytest.raises(RestoreError, match=r"\(6\.\.9\) are missing"):
        plan_restore(objs, at=ts(7))
    assert plan_restore(objs, at=ts(10)).txid == 10


def test_manifest_roundtrip():
    m = Manifest("app.db", [obj(9, 1, 3), obj(0, 4, 5)], {1: ts(3)}, ts(1), ["0000/x"], 3, "w")
    back = Manifest.loads(m.dumps({"head": None}), "app.db")
    assert back.objects == sorted(m.objects, key=lambda o: (o.level, o.min_txid, o.max_txid))
    assert (back.compacted_at, back.snapshot_at, back.deleting, back.generation) == ({1: ts(3)}, ts(1), ["0000/x"], 3)


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def archives(draw):
    n = draw(st.integers(2, 30))
    specs = draw(st.lists(st.tuples(st.integers(1, n), st.integers(0, 8), st.integers(0, 4),
                                    st.integers(1, 1000), st.booleans()), min_size=1, max_size=40))
    objs = set()
    for a, level, extra, size, broken in specs:
        b = min(n, a + extra)
        pre = CHECKSUM_FLAG | 777 if (broken and a > 1 and size % 7 == 0) else None
        objs.add(obj(level, a, b, size=size, pre=pre))
    return n, sorted(objs)


def brute_min_count(objs, target: int) -> int | None:
    """Breadth-first search over TXIDs: the fewest objects from the empty database to `target`."""
    frontier, seen, depth = {(0, 0)}, {(0, 0)}, 0
    while frontier:
        if any(t == target for t, _ in frontier):
            return depth
        nxt = set()
        for o in objs:
            s = (0, 0) if o.is_snapshot else (o.min_txid - 1, o.pre_apply)
            if s in frontier and dest(o) not in seen:
                nxt.add(dest(o))
        seen |= nxt
        frontier, depth = nxt, depth + 1
    return None


@settings(max_examples=300)
@given(archives(), st.data())
def test_plan_is_contiguous_chained_and_minimal(arch, data):
    n, objs = arch
    target = data.draw(st.integers(1, n))
    want = brute_min_count(objs, target)
    try:
        plan = plan_restore(objs, txid=target)
    except RestoreError:
        assert want is None
        return
    assert want is not None and len(plan.objects) == want
    assert plan.objects[0].is_snapshot
    for prev, cur in zip(plan.objects, plan.objects[1:]):
        assert cur.min_txid == prev.max_txid + 1 and cur.pre_apply == prev.post_apply
    assert plan.objects[-1].max_txid == target == plan.txid


@settings(max_examples=300)
@given(archives(), st.data())
def test_time_plan_reaches_the_latest_point_or_names_why(arch, data):
    n, objs = arch
    at = data.draw(st.integers(ts(0), ts(n) + 2000))
    g = Graph(objs)
    ends = [t for t, _ in g.nodes if ts(t) <= at]
    try:
        plan = plan_restore(objs, at=at)
    except RestoreError as exc:
        msg = str(exc)
        assert any(w in msg for w in ("before the restorable window", "missing", "checksum chain",
                                      "no usable snapshot", "no archived object starts", "not a restore point"))
        return
    assert plan.point.time <= at
    assert plan.txid == max(ends)  # never stops short of a later restore point
    assert plan.objects[0].is_snapshot and plan.objects[-1].max_txid == plan.txid


@settings(max_examples=200)
@given(archives(), st.data())
def test_retention_keeps_every_in_window_restore(arch, data):
    n, objs = arch
    now = ts(n) + data.draw(st.integers(0, 5000))
    window_ms = data.draw(st.integers(0, n * 1000))
    huge = {k: 10 ** 12 for k in range(9)}
    doomed = set(select_deletions(objs, now=now, window_ms=window_ms, keep_ms=huge, top_level=3))
    kept = [o for o in objs if o not in doomed]
    for t in range(0, n + 2):
        at = ts(t)
        if at < now - window_ms:
            continue
        try:
            before = plan_restore(objs, at=at).point
        except RestoreError:
            continue
        assert plan_restore(kept, at=at).point == before


@settings(max_examples=200)
@given(archives(), st.data())
def test_thinning_never_breaks_restores_in_the_window(arch, data):
    n, objs = arch
    now = ts(n) + data.draw(st.integers(0, 5000))
    window_ms = data.draw(st.integers(0, n * 1000))
    keep = {k: data.draw(st.integers(0, n * 1000)) for k in range(3)}
    doomed = set(select_deletions(objs, now=now, window_ms=window_ms, keep_ms=keep, top_level=3))
    kept = [o for o in objs if o not in doomed]
    g = Graph(objs)
    floor = [t for t, _ in g.reachable_nodes if g.eff[(t, csum(t))] <= now - window_ms] if g.reachable_nodes else []
    for o in doomed:
        if o.level == 0 and (not floor or o.max_txid > max(floor)):
            assert any(p.level >= 1 and p.min_txid <= o.min_txid and o.max_txid <= p.max_txid for p in kept), o
    for t in range(0, n + 2):
        at = ts(t)
        if at < now - window_ms:
            continue
        try:
            plan_restore(objs, at=at)
        except RestoreError:
            continue
        plan_restore(kept, at=at)  # still restorable (perhaps to an earlier point of the same window)
