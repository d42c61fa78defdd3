"""The planner and retention as pure functions: table tests and hypothesis properties.

In these tables TXID t commits at ts(t), level 0 objects are bundles (their TXIDs each restorable),
and levels 1..8 are compactions (only their ends restorable)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litefs.archive.layout import HeadInfo, Manifest, ObjectEntry
from litefs.archive.plan import START, Graph, dest, plan_restore, select_retention, source, window
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
                       post_apply=csum(b, lineage), size=size, count=(b - a + 1) if level == 0 else 0)


def ranges(plan) -> list[tuple[int, int]]:
    return [(o.min_txid, o.max_txid) for o in plan.objects]


def test_fewest_objects_across_levels():
    objs = [obj(9, 1, 1)] + [obj(0, t, t) for t in range(2, 11)] + [obj(1, 2, 5), obj(1, 6, 10), obj(2, 2, 10)]
    plan = plan_restore(objs, txid=10)
    assert [o.name for o in plan.objects] == ["0009/0000000000000001-0000000000000001.ltx",
                                              "0002/0000000000000002-000000000000000a.ltx"]
    assert ranges(plan_restore(objs, txid=7)) == [(1, 1), (2, 5), (6, 6), (7, 7)]
    assert plan_restore(objs).txid == 10
    # Newer snapshots win when they need fewer objects; ties go to fewer bytes.
    objs2 = objs + [obj(9, 1, 8, size=1000)]
    assert ranges(plan_restore(objs2, txid=9)) == [(1, 8), (9, 9)]
    objs3 = [obj(9, 1, 1, size=10), obj(0, 2, 3, size=10), obj(9, 1, 3, size=500)]
    assert ranges(plan_restore(objs3, txid=3)) == [(1, 3)]
    objs4 = [obj(9, 1, 1, size=10), obj(1, 2, 3, size=10), obj(0, 2, 3, size=5)]
    assert [o.level for o in plan_restore(objs4, txid=3).objects] == [9, 0]


def test_cumulative_levels_need_one_object_per_level():
    # snapshot | L3 from the snapshot | L2 from L3's end | L1 from L2's end | bundles after L1
    objs = [obj(9, 1, 1), obj(3, 2, 40), obj(2, 41, 55), obj(2, 41, 60), obj(1, 61, 64), obj(1, 61, 68)]
    objs += [obj(1, 41, 44), obj(0, 2, 30), obj(0, 31, 50)] + [obj(0, t, t + 1) for t in range(51, 80, 2)]
    plan = plan_restore(objs, txid=72)
    assert ranges(plan) == [(1, 1), (2, 40), (41, 60), (61, 68), (69, 70), (71, 72)]
    plan = plan_restore(objs, txid=71)  # inside the last bundle
    assert ranges(plan) == [(1, 1), (2, 40), (41, 60), (61, 68), (69, 70), (71, 72)]
    assert plan.point is None and plan.stop_txid == 71 and plan.txid == 71
    assert "inside 0000/0000000000000047-0000000000000048.ltxs" in plan.describe()


def test_partial_bundles():
    objs = [obj(9, 1, 1), obj(0, 2, 6), obj(0, 7, 9)]
    plan = plan_restore(objs, txid=4)
    assert ranges(plan) == [(1, 1), (2, 6)] and plan.stop_txid == 4 and plan.partial
    plan = plan_restore(objs, txid=6)
    assert not plan.partial and plan.point.txid == 6 and plan.point.checksum == csum(6)
    # By time: inside a bundle, the apply stops after the last commit at or before the time.
    plan = plan_restore(objs, at=ts(4) + 500)
    assert ranges(plan) == [(1, 1), (2, 6)] and plan.stop_time == ts(4) + 500 and plan.base_time == ts(1)
    assert "the last commit at or before" in plan.describe()
    # Between two bundles: exactly the end of the first.
    plan = plan_restore(objs, at=ts(6) + 999)
    assert not plan.partial and plan.point.txid == 6
    # A bundle's first commit after the time: the state before it.
    late = [obj(9, 1, 1), ObjectEntry(2, 3, 0, ts(2) + 700, ts(3), csum(1), csum(3), count=2)]
    plan = plan_restore(late, at=ts(2) + 100)
    assert not plan.partial and plan.point.txid == 1


def test_time_targets():
    objs = [obj(9, 1, 2)] + [obj(0, t, t) for t in range(3, 8)]
    assert plan_restore(objs, at=ts(5)).txid == 5
    assert plan_restore(objs, at=ts(5) + 999).txid == 5
    with pytest.raises(RestoreError, match="before the restorable window"):
        plan_restore(objs, at=ts(2) - 1)
    plan = plan_restore(objs, at=ts(7) + 60_000)
    assert plan.txid == 7 and "after the last archived commit; restored the latest archived commit" in plan.notes[0]
    # Timestamps that go backwards are clamped: TXID 4's time counts as TXID 3's.
    skew = [obj(9, 1, 2), obj(0, 3, 3), ObjectEntry(4, 4, 0, ts(2), ts(2), csum(3), csum(4)), obj(0, 5, 5)]
    assert plan_restore(skew, at=ts(3)).txid == 4


def test_window_floor():
    objs = [obj(9, 1, 1), obj(1, 2, 5), obj(1, 6, 9)] + [obj(0, t, t) for t in range(6, 12)]
    w = window(objs, floor_txid=5)
    assert (w.start.txid, w.end.txid) == (5, 11) and not w.gaps
    with pytest.raises(RestoreError, match="before the restorable window, which starts at TXID 0000000000000005"):
        plan_restore(objs, txid=4, floor_txid=5)
    with pytest.raises(RestoreError, match="before the restorable window"):
        plan_restore(objs, at=ts(5) - 1, floor_txid=5)
    assert plan_restore(objs, txid=7, floor_txid=5).txid == 7


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
    assert plan_restore(objs, txid=4).stop_txid == 4
    w = window(objs)
    assert (w.start.txid, w.end.txid) == (3, 5)
    # Recorded gaps replace computed ones they overlap.
    w = window([obj(9, 1, 3), obj(0, 4, 5), obj(9, 1, 9, lineage=1)], known_gaps=[(6, 8)])
    assert w.gaps == [(6, 8)] and w.end.txid == 9


def test_compacted_only_and_beyond_the_end():
    objs = [obj(9, 1, 1), obj(1, 2, 10)]
    with pytest.raises(RestoreError, match="TXIDs 2..10 are kept only as one compacted object"):
        plan_restore(objs, txid=5)
    with pytest.raises(RestoreError, match="last TXID is 000000000000000a"):
        plan_restore(objs, txid=11)
    with pytest.raises(RestoreError, match="kept only as one compacted object"):
        plan_restore(objs, at=ts(6))
    assert plan_restore(objs, at=ts(1) + 500).txid == 1  # TXID 2 came later


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
    plan = plan_restore(objs, at=ts(4))
    assert plan.stop_time == ts(4) and ranges(plan) == [(1, 3), (4, 5)]
    assert plan_restore(objs, at=ts(5)).txid == 5
    with pytest.raises(RestoreError, match=r"\(6\.\.9\) are missing"):
        plan_restore(objs, at=ts(7))
    assert plan_restore(objs, at=ts(10)).txid == 10


def test_retention_keeps_every_path_from_the_floor():
    # Two days of snapshots; cumulative L2/L1; the window's cutoff falls at TXID 23.
    objs = [obj(9, 1, 1), obj(2, 2, 10), obj(1, 2, 5), obj(1, 11, 14), obj(1, 11, 20), obj(9, 1, 20, size=5000),
            obj(2, 21, 30), obj(1, 21, 24), obj(1, 21, 27), obj(1, 31, 33)]
    doomed, floor = select_retention(objs, now=ts(40), window_ms=ts(40) - ts(23))
    assert floor == (20, csum(20))  # the newest compacted state at or before the cutoff (L1 21-24 ends at 24)
    kept = [o for o in objs if o not in doomed]
    assert {(o.level, o.min_txid, o.max_txid) for o in doomed} == {(9, 1, 1), (2, 2, 10), (1, 2, 5), (1, 11, 14),
                                                                      (1, 11, 20)}
    g = Graph(kept)
    for t in (20, 24, 27, 30, 33):
        assert g.reachable((t, csum(t)))


def test_manifest_roundtrip():
    m = Manifest("app.db", [obj(9, 1, 3), obj(1, 4, 5)], {1: ts(3)}, ts(1), ["0001/x"], 3, "w",
                 l0_start=4, l0_head=HeadInfo(9, csum(9), ts(9)), gaps=[(6, 7)])
    back = Manifest.loads(m.dumps({"head": None}), "app.db")
    assert back.objects == sorted(m.objects, key=lambda o: (o.level, o.min_txid, o.max_txid))
    assert (back.compacted_at, back.snapshot_at, back.deleting, back.generation) == ({1: ts(3)}, ts(1), ["0001/x"], 3)
    assert (back.l0_start, back.l0_head, back.gaps) == (4, HeadInfo(9, csum(9), ts(9)), [(6, 7)])
    with pytest.raises(Exception, match="not listed in the manifest"):
        m.add(obj(0, 6, 7))


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


def brute(objs, target: int) -> int | None:
    """Breadth-first search: the fewest objects to reach `target` exactly, or to reach the start
    of a bundle that contains it and apply that bundle in part."""
    dist = {(0, 0): 0}
    frontier, depth = {(0, 0)}, 0
    while frontier:
        nxt = set()
        for o in objs:
            if source(o) in frontier and dest(o) not in dist:
                nxt.add(dest(o))
        depth += 1
        for node in nxt:
            dist[node] = depth
        frontier = nxt
    cands = [d for (t, _), d in dist.items() if t == target]
    cands += [dist[source(o)] + 1 for o in objs
              if o.level == 0 and o.min_txid <= target < o.max_txid and source(o) in dist]
    return min(cands) if cands else None


@settings(max_examples=300)
@given(archives(), st.data())
def test_plan_is_contiguous_chained_and_minimal(arch, data):
    n, objs = arch
    target = data.draw(st.integers(1, n))
    want = brute(objs, target)
    try:
        plan = plan_restore(objs, txid=target)
    except RestoreError:
        assert want is None
        return
    assert want is not None and len(plan.objects) == want
    assert plan.objects[0].is_snapshot
    for prev, cur in zip(plan.objects, plan.objects[1:]):
        assert cur.min_txid == prev.max_txid + 1 and cur.pre_apply == prev.post_apply
    last = plan.objects[-1]
    if plan.partial:
        assert last.level == 0 and last.min_txid <= target < last.max_txid and plan.stop_txid == target
    else:
        assert last.max_txid == target == plan.txid


@settings(max_examples=300)
@given(archives(), st.data())
def test_time_plan_is_exact_or_names_why(arch, data):
    n, objs = arch
    at = data.draw(st.integers(ts(0), ts(n) + 2000))
    truth = min(max(o.max_txid for o in objs), (at - T0) // 1000)  # TXID t commits at ts(t)
    try:
        plan = plan_restore(objs, at=at)
    except RestoreError as exc:
        msg = str(exc)
        assert any(w in msg for w in ("before the restorable window", "missing", "checksum chain",
                                      "no usable snapshot", "no archived object starts", "compacted object",
                                      "cannot reach"))
        return
    assert plan.objects[0].is_snapshot
    last = plan.objects[-1]
    if plan.partial:
        assert last.level == 0 and last.min_txid <= truth < last.max_txid
    else:
        assert plan.txid == truth and last.max_txid == truth and plan.point.time <= at


@settings(max_examples=200)
@given(archives(), st.data())
def test_retention_keeps_every_compacted_state_from_the_floor(arch, data):
    n, objs = arch
    compacted = [o for o in objs if o.level > 0]
    now = ts(n) + data.draw(st.integers(0, 5000))
    window_ms = data.draw(st.integers(0, n * 1000))
    doomed, floor = select_retention(compacted, now=now, window_ms=window_ms)
    if floor is None:
        assert not doomed
        return
    assert Graph(compacted).eff[floor] <= now - window_ms
    kept = [o for o in compacted if o not in doomed]
    before, after = Graph(compacted), Graph(kept)
    for node in before.reachable_nodes:
        if node[0] >= floor[0]:
            assert after.reachable(node) and after.cost(node)[0] == before.cost(node)[0], node
    for o in doomed:
        assert o.max_txid <= floor[0] or o.min_txid <= floor[0]
    # With the bundles above the floor kept, every TXID from the floor on restores as before. (The
    # worker compacts whole bundles, so no bundle straddles a compacted state.)
    bundles = [o for o in objs if o.level == 0 and o.min_txid > floor[0]]
    for t in range(floor[0], n + 1):
        try:
            plan_restore(compacted + bundles, txid=t)
        except RestoreError:
            continue
        plan_restore(kept + bundles, txid=t)


def test_graph_from_a_start_node():
    objs = [obj(9, 1, 1), obj(1, 2, 5), obj(0, 6, 6), obj(0, 7, 8), obj(1, 6, 8)]
    g = Graph(objs, start=(5, csum(5)))
    assert not g.reachable((1, csum(1))) and g.reachable((8, csum(8)))
    assert [(o.level, o.min_txid) for o in g.path((8, csum(8)))] == [(1, 6)]
    assert Graph(objs).reachable(START)


@settings(max_examples=200)
@given(archives())
def test_coverage_index_agrees_with_the_scan(arch):
    from litefs.archive.plan import _Coverage, _gap_at

    n, objs = arch
    cover = _Coverage(objs)
    for t in range(1, n + 2):
        assert cover.gap_at(t) == _gap_at(objs, t), t
