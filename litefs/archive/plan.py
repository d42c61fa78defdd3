"""Restore planning and retention: pure functions over a database's archive objects.

The archive is a graph. A node is a database state (TXID, post-apply checksum); the empty
database is (0, 0). An object is an edge from (min-1, pre-apply) to (max, post-apply); a
snapshot (min TXID 1) starts from (0, 0). A restore plan is a path from (0, 0) to the target, so
it is contiguous and checksum-chained by construction and starts with a snapshot. Objects are
processed in order of min TXID, which is a topological order (every edge goes forward), so one
pass finds the cheapest path to every node: fewest objects, then fewest bytes.

Restore points are the nodes: the end of some object. Times come from the objects' last-commit
timestamps, made non-decreasing in TXID order ("effective" times), so "the state at time T" is
the highest restore point whose effective time is <= T.

Errors are RestoreError with a message naming what is missing; nothing here stops short
silently.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from litefs.archive.layout import MAX_COMPACTION_LEVEL, ObjectEntry, format_time
from litefs.errors import RestoreError

Node = tuple[int, int]  # (TXID, post-apply checksum)
START: Node = (0, 0)

Cost = tuple[int, ...]
Weight = Callable[[ObjectEntry], Cost]


def default_weight(o: ObjectEntry) -> Cost:
    return (1, o.size)


def source(o: ObjectEntry) -> Node:
    return START if o.is_snapshot else (o.min_txid - 1, o.pre_apply)


def dest(o: ObjectEntry) -> Node:
    return (o.max_txid, o.post_apply)


class Graph:
    """Cheapest paths from the empty database to every reachable state."""

    def __init__(self, objects: Iterable[ObjectEntry], weight: Weight = default_weight) -> None:
        self.objects = sorted(set(objects), key=lambda o: (o.min_txid, o.max_txid, -o.level))
        self.ts: dict[Node, int] = {}
        for o in self.objects:
            d = dest(o)
            self.ts[d] = max(self.ts.get(d, o.last_ts), o.last_ts)
        self.nodes = sorted(self.ts)  # by TXID, then checksum
        self.eff: dict[Node, int] = {}
        running = None
        for n in self.nodes:
            running = self.ts[n] if running is None else max(running, self.ts[n])
            self.eff[n] = running
        best: dict[Node, tuple[Cost, ObjectEntry | None]] = {START: ((), None)}
        for o in self.objects:
            s = source(o)
            if s not in best:
                continue
            w = weight(o)
            base = best[s][0] or tuple(0 for _ in w)
            cost = tuple(a + b for a, b in zip(base, w))
            d = dest(o)
            if d not in best or cost < best[d][0]:
                best[d] = (cost, o)
        self._best = best
        self.reachable_nodes = [n for n in self.nodes if n in best]

    def reachable(self, node: Node) -> bool:
        return node in self._best

    def cost(self, node: Node) -> Cost:
        return self._best[node][0]

    def path(self, node: Node) -> list[ObjectEntry]:
        out: list[ObjectEntry] = []
        while node != START:
            o = self._best[node][1]
            assert o is not None
            out.append(o)
            node = source(o)
        out.reverse()
        return out


@dataclass(frozen=True)
class Point:
    """A restore point."""

    txid: int
    checksum: int
    time: int  # effective commit time, ms

    def describe(self) -> str:
        return f"TXID {self.txid:016x} ({self.txid}) at {format_time(self.time)}"

    def to_json(self) -> dict:
        return {"txid": "%016x" % self.txid, "txidDecimal": self.txid, "checksum": "%016x" % self.checksum,
                "time": format_time(self.time), "timeMs": self.time}


@dataclass
class Window:
    """The restorable range: every time from start.time on restores (at the archive's granularity)."""

    start: Point
    end: Point
    gaps: list[tuple[int, int]] = field(default_factory=list)  # TXID ranges missing inside it

    def describe(self) -> str:
        return f"{self.start.describe()} .. {self.end.describe()}"

    def to_json(self) -> dict:
        return {"start": self.start.to_json(), "end": self.end.to_json(),
                "gaps": [{"from": "%016x" % a, "to": "%016x" % b} for a, b in self.gaps]}


@dataclass
class RestorePlan:
    objects: list[ObjectEntry]
    point: Point
    target: str
    notes: list[str] = field(default_factory=list)

    @property
    def txid(self) -> int:
        return self.point.txid

    @property
    def checksum(self) -> int:
        return self.point.checksum

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "restores": self.point.to_json(),
            "objects": [{"level": o.level, "name": o.name, **o.to_json()} for o in self.objects],
            "objectCount": len(self.objects),
            "bytes": self.size,
            "notes": list(self.notes),
        }


def _point(g: Graph, n: Node) -> Point:
    return Point(n[0], n[1], g.eff[n])


def _pick(g: Graph, txid: int) -> Node | None:
    """The reachable state at `txid` (if lineages ever overlap, the newest, then the cheapest)."""
    cands = [n for n in g.reachable_nodes if n[0] == txid]
    if not cands:
        return None
    return max(cands, key=lambda n: (g.ts[n], tuple(-c for c in g.cost(n))))


def _gap_at(objs: list[ObjectEntry], t: int) -> tuple[int, int | None] | None:
    """The missing TXID range starting at t, or None if some object covers t.

    A snapshot covers only its last TXID here: the TXIDs before it are inside it, but their
    commit times are not, so they count as missing for a time-based restore.
    """
    for o in objs:
        if o.is_snapshot:
            if o.max_txid == t:
                return None
        elif o.min_txid <= t <= o.max_txid:
            return None
    ends = [o.min_txid - 1 for o in objs if not o.is_snapshot and o.min_txid > t]
    ends += [o.max_txid - 1 for o in objs if o.is_snapshot and o.max_txid > t]
    return (t, min(ends) if ends else None)


def _gap_text(gap: tuple[int, int | None]) -> str:
    a, b = gap
    if b is None:
        return f"TXIDs from {a:016x} ({a}) on are missing from the archive"
    if a == b:
        return f"TXID {a:016x} ({a}) is missing from the archive"
    return f"TXIDs {a:016x}..{b:016x} ({a}..{b}) are missing from the archive"


def _excluded_text(excluded: Mapping[str, str], relevant: Iterable[ObjectEntry]) -> str:
    names = [o.name for o in relevant if o.name in excluded]
    if not names:
        names = list(excluded)
    if not names:
        return ""
    shown = "; ".join(f"{n}: {excluded[n]}" for n in names[:5])
    more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
    return f" [unusable objects: {shown}{more}]"


def _diagnose(g: Graph, objs: list[ObjectEntry], all_objs: list[ObjectEntry], target_txid: int, what: str,
              excluded: Mapping[str, str]) -> RestoreError:
    below = [n for n in g.reachable_nodes if n[0] < target_txid]
    if not below:
        snaps = [o for o in all_objs if o.is_snapshot]
        msg = f"cannot restore {what}: no usable snapshot at or before TXID {target_txid:016x} ({target_txid})"
        return RestoreError(msg + _excluded_text(excluded, snaps))
    r = max(below, key=lambda n: (n[0], g.ts[n]))
    nxt = r[0] + 1
    starting = [o for o in objs if not o.is_snapshot and o.min_txid == nxt]
    relevant = [o for o in all_objs if not o.is_snapshot and o.min_txid <= nxt <= o.max_txid]
    if not starting:
        covering = [o for o in objs if not o.is_snapshot and o.min_txid <= nxt <= o.max_txid]
        if covering:
            msg = (f"no archived object starts at TXID {nxt:016x} ({nxt}); the objects covering it "
                   f"({', '.join(o.name for o in covering[:3])}) start from states the archive no longer has")
        else:
            msg = _gap_text(_gap_at(objs, nxt) or (nxt, None))
        msg += f" (the last reachable point is {_point(g, r).describe()})"
    else:
        matching = [o for o in starting if o.pre_apply == r[1]]
        if not matching:
            o = starting[0]
            msg = (f"checksum chain broken after TXID {r[0]:016x}: {o.name} expects pre-apply checksum "
                   f"{o.pre_apply:016x} but TXID {r[0]:016x} has post-apply checksum {r[1]:016x}")
        else:
            o = max(matching, key=lambda o: o.max_txid)
            inner = min((m for m in matching if m.max_txid >= target_txid), key=lambda m: m.max_txid, default=o)
            msg = (f"TXID {target_txid:016x} ({target_txid}) is not a restore point: the archive keeps TXIDs "
                   f"{inner.min_txid}..{inner.max_txid} only as one object ({inner.name}); nearest restore points: "
                   f"{_point(g, r).describe()} and TXID {inner.max_txid:016x} ({inner.max_txid})")
    return RestoreError(f"cannot restore {what}: {msg}" + _excluded_text(excluded, relevant))


def window(objects: Iterable[ObjectEntry]) -> Window | None:
    """The restorable window of a set of objects, or None if nothing is restorable."""
    objs = list(objects)
    g = Graph(objs)
    if not g.reachable_nodes:
        return None
    start = min(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
    end = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
    gaps = []
    reach = sorted({n[0] for n in g.reachable_nodes})
    for a, b in zip(reach, reach[1:]):
        gap = _gap_at(objs, a + 1)
        if gap is not None and gap[0] <= b:
            gaps.append((gap[0], gap[1] if gap[1] is not None else b - 1))
    return Window(_point(g, start), _point(g, end), gaps)


def plan_restore(objects: Iterable[ObjectEntry], *, txid: int | None = None, at: int | None = None,
                 excluded: Mapping[str, str] | None = None) -> RestorePlan:
    """The plan that restores TXID `txid`, the state at time `at` (ms), or the latest state.

    `excluded` maps object names known to be missing or corrupt to the reason; they are not used.
    """
    if txid is not None and at is not None:
        raise RestoreError("give either a TXID or a time, not both")
    excluded = dict(excluded or {})
    all_objs = list(objects)
    objs = [o for o in all_objs if o.name not in excluded]
    g = Graph(objs)
    if txid is not None:
        what = f"TXID {txid:016x} ({txid})"
    elif at is not None:
        what = f"the state at {format_time(at)}"
    else:
        what = "the latest state"
    if not all_objs:
        raise RestoreError(f"cannot restore {what}: the archive holds no objects for this database")
    if not g.reachable_nodes:
        raise _diagnose(g, objs, all_objs, max(o.max_txid for o in all_objs) + 1, what, excluded)
    first = min(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
    last_any = max(g.nodes)
    notes: list[str] = []

    if txid is not None:
        if txid < first[0]:
            raise RestoreError(f"cannot restore {what}: it is before the restorable window, which starts at "
                               f"{_point(g, first).describe()}")
        node = _pick(g, txid)
        if node is None:
            if txid > last_any[0]:
                raise RestoreError(f"cannot restore {what}: the archive's last TXID is "
                                   f"{last_any[0]:016x} ({last_any[0]})")
            raise _diagnose(g, objs, all_objs, txid, what, excluded)
        target = f"TXID {txid:016x}"
    elif at is not None:
        if at < g.eff[first]:
            raise RestoreError(f"cannot restore {what}: it is before the restorable window, which starts at "
                               f"{_point(g, first).describe()}")
        cands = [n for n in g.nodes if g.eff[n] <= at]
        x = max(cands, key=lambda n: (n[0], g.reachable(n), g.ts[n]))
        node = _pick(g, x[0])
        if node is None:
            raise _diagnose(g, objs, all_objs, x[0], what, excluded)
        if any(n[0] > node[0] for n in g.nodes) and at > g.ts[node]:
            # Commits in a gap after `node` came after it, at unknown times: only the exact time of
            # `node` itself is still certain.
            gap = _gap_at(objs, node[0] + 1)
            if gap is not None:
                raise RestoreError(
                    f"cannot restore {what}: {_gap_text(gap)}, so the state at that time is unknown; the nearest "
                    f"restorable point before it is {_point(g, node).describe()}"
                    + _excluded_text(excluded, [o for o in all_objs if o.min_txid <= gap[0] <= o.max_txid]))
        elif at > g.ts[node]:
            notes.append(f"{format_time(at)} is after the last archived commit; restored the latest archived "
                         f"state ({_point(g, node).describe()})")
        target = f"time {format_time(at)}"
    else:
        node = _pick(g, last_any[0])
        if node is None:
            raise _diagnose(g, objs, all_objs, last_any[0], what, excluded)
        target = "latest"
    return RestorePlan(g.path(node), _point(g, node), target, notes)


# ---------------------------------------------------------------------------------------------
# Retention


def _covered_by_higher(objects: list[ObjectEntry]) -> Callable[[ObjectEntry], bool]:
    by_level: dict[int, tuple[list[int], list[ObjectEntry]]] = {}
    for lvl in range(1, MAX_COMPACTION_LEVEL + 1):
        items = sorted((o for o in objects if o.level == lvl and not o.is_snapshot), key=lambda o: o.min_txid)
        by_level[lvl] = ([o.min_txid for o in items], items)

    def covered(o: ObjectEntry) -> bool:
        for lvl in range(o.level + 1, MAX_COMPACTION_LEVEL + 1):
            mins, items = by_level[lvl]
            i = bisect.bisect_right(mins, o.min_txid) - 1
            while i >= 0:
                p = items[i]
                if p.max_txid >= o.max_txid:
                    return True
                if p.max_txid < o.min_txid:
                    break
                i -= 1
        return False

    return covered


def select_deletions(objects: Iterable[ObjectEntry], *, now: int, window_ms: int,
                     keep_ms: Mapping[int, int], top_level: int) -> list[ObjectEntry]:
    """Objects that no restore inside the window needs any more.

    The window's obligation: every time T >= now - window restores, to the highest restore
    point at or before T that the retained levels still provide. Required points are the
    "floor" (the state at now - window) and the end of every object that is kept because it is
    inside the window and not yet thinned out. An object below the top compaction level is thinned
    out once it is inside a higher-level object and older than keep_ms[level] (so an L0 object
    goes only after it is inside L1). Every object on the cheapest path to a required point -
    preferring objects that are kept anyway - stays; only the rest is returned.
    """
    objs = sorted(set(objects))
    if not objs:
        return []
    cutoff = now - window_ms
    g = Graph(objs)
    floor = max((n for n in g.reachable_nodes if g.eff[n] <= cutoff), key=lambda n: (n[0], g.ts[n]), default=None)
    covered = _covered_by_higher(objs)

    def thinned(o: ObjectEntry) -> bool:
        return (not o.is_snapshot and o.level < top_level and o.level in keep_ms
                and o.last_ts < now - keep_ms[o.level] and covered(o))

    keep = {o for o in objs if g.eff.get(dest(o), o.last_ts) > cutoff and not thinned(o)}
    gw = Graph(objs, weight=lambda o: (0 if o in keep else 1, 1, o.size))
    required = {floor} if floor is not None else set()
    required |= {dest(o) for o in keep if g.reachable(dest(o))}
    used: set[ObjectEntry] = set()
    for n in required:
        used.update(gw.path(n))
    floor_txid = floor[0] if floor is not None else 0

    def deletable(o: ObjectEntry) -> bool:
        if o in keep or o in used:
            return False
        if o.max_txid <= floor_txid or thinned(o):
            return True  # history before the window, or thinned out
        # Straddling the floor: only states before the window need it. L0 waits for L1 regardless,
        # and whatever cannot be placed (unreachable, no floor) is left for a human to look at.
        return o.level > 0 and floor is not None and o.min_txid <= floor_txid

    return [o for o in objs if deletable(o)]
