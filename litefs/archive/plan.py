"""Restore planning, the restorable window and retention: pure functions over archive objects.

The archive is a graph. A node is a database state (TXID, post-apply checksum); the empty
database is (0, 0). An object is an edge from (min-1, pre-apply) to (max, post-apply); a
snapshot (min TXID 1) starts from (0, 0). A restore plan is a path from (0, 0), so it is
contiguous and checksum-chained by construction and starts with a snapshot. Objects are
processed in order of min TXID, which is a topological order (every edge goes forward), so one
pass finds the cheapest path to every node: fewest objects, then fewest bytes.

Level-0 objects are bundles of the original per-transaction LTX files, so a plan may also end
*inside* a bundle: the path to the bundle's start, then the bundle applied only up to a TXID
(`stop_txid`) or up to the last commit at or before a time (`stop_time`). That is what makes
every TXID and every moment covered by level 0 restorable exactly. A TXID covered only by a
compacted object (its bundles gone) is not.

Times come from the objects' commit times, made non-decreasing in TXID order ("effective"
times), so "the state at time T" is the state after the last commit whose effective time is
<= T. Errors are RestoreError with a message naming what is missing; nothing here stops short
silently.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from litefs.archive.layout import ObjectEntry, format_time
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


def _add(a: Cost, b: Cost) -> Cost:
    return tuple(x + y for x, y in zip(a, b)) if a else b


class Graph:
    """Cheapest paths from `start` (the empty database by default) to every reachable state."""

    def __init__(self, objects: Iterable[ObjectEntry], weight: Weight = default_weight, start: Node = START) -> None:
        self.objects = sorted(set(objects), key=lambda o: (o.min_txid, o.max_txid, -o.level))
        self.weight = weight
        self.start = start
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
        best: dict[Node, tuple[Cost, ObjectEntry | None]] = {start: ((), None)}
        for o in self.objects:
            s = source(o)
            if s not in best or (start != START and o.is_snapshot):
                continue
            cost = _add(best[s][0], weight(o))
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
        while node != self.start:
            o = self._best[node][1]
            assert o is not None
            out.append(o)
            node = source(o)
        out.reverse()
        return out

    def time_of(self, node: Node) -> int:
        return self.eff.get(node, 0)


@dataclass(frozen=True)
class Point:
    """A database state: TXID, checksum and (effective) commit time."""

    txid: int
    checksum: int
    time: int  # effective commit time, ms

    def describe(self) -> str:
        return f"TXID {self.txid:016x} ({self.txid}) committed at {format_time(self.time)}"

    def to_json(self) -> dict:
        return {"txid": "%016x" % self.txid, "txidDecimal": self.txid, "checksum": "%016x" % self.checksum,
                "time": format_time(self.time), "timeMs": self.time}


@dataclass
class Window:
    """The restorable range: every TXID and every time from start on restores exactly, except gaps."""

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
    """Objects to apply in order. With stop_txid/stop_time the last object is a bundle applied only
    in part; then `point` is None and the state restored is known once the bundle is read."""

    objects: list[ObjectEntry]
    point: Point | None
    target: str
    notes: list[str] = field(default_factory=list)
    stop_txid: int | None = None
    stop_time: int | None = None
    base_time: int = 0  # effective commit time of the state the last object starts from

    @property
    def partial(self) -> bool:
        return self.point is None

    @property
    def txid(self) -> int | None:
        return self.point.txid if self.point else self.stop_txid

    @property
    def checksum(self) -> int | None:
        return self.point.checksum if self.point else None

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    def describe(self) -> str:
        if self.point is not None:
            return self.point.describe()
        last = self.objects[-1]
        if self.stop_txid is not None:
            return f"TXID {self.stop_txid:016x} ({self.stop_txid}), inside {last.name}"
        assert self.stop_time is not None
        return (f"the last commit at or before {format_time(self.stop_time)}, inside {last.name} "
                f"(TXIDs {last.min_txid}..{last.max_txid})")

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "restores": self.point.to_json() if self.point else None,
            "describe": self.describe(),
            "stopTxid": self.stop_txid,
            "stopTime": format_time(self.stop_time) if self.stop_time is not None else None,
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


def _gap_at(objs: Sequence[ObjectEntry], t: int) -> tuple[int, int | None] | None:
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


class _Coverage:
    """_gap_at for many t at once: merged TXID intervals of the non-snapshot objects, bisected."""

    def __init__(self, objs: Sequence[ObjectEntry]) -> None:
        spans = sorted((o.min_txid, o.max_txid) for o in objs if not o.is_snapshot)
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]
        self.mins = sorted({o.min_txid for o in objs if not o.is_snapshot})
        self.snaps = sorted({o.max_txid for o in objs if o.is_snapshot})

    def gap_at(self, t: int) -> tuple[int, int | None] | None:
        i = bisect.bisect_right(self.starts, t) - 1
        if i >= 0 and self.ends[i] >= t:
            return None
        j = bisect.bisect_left(self.snaps, t)
        if j < len(self.snaps) and self.snaps[j] == t:
            return None
        ends = []
        k = bisect.bisect_right(self.mins, t)
        if k < len(self.mins):
            ends.append(self.mins[k] - 1)
        j = bisect.bisect_right(self.snaps, t)
        if j < len(self.snaps):
            ends.append(self.snaps[j] - 1)
        return (t, min(ends) if ends else None)


def gap_text(gap: tuple[int, int | None]) -> str:
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


def _compacted_only(o: ObjectEntry, g: Graph, r: Node | None) -> str:
    near = f"{_point(g, r).describe()} and " if r is not None else ""
    return (f"TXIDs {o.min_txid}..{o.max_txid} are kept only as one compacted object ({o.name}), without their "
            f"level-0 bundles, so no state inside it can be restored exactly; the nearest restorable points are "
            f"{near}TXID {o.max_txid:016x} ({o.max_txid})")


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
            msg = gap_text(_gap_at(objs, nxt) or (nxt, None))
        msg += f" (the last reachable point is {_point(g, r).describe()})"
    else:
        matching = [o for o in starting if o.pre_apply == r[1]]
        if not matching:
            o = starting[0]
            msg = (f"checksum chain broken after TXID {r[0]:016x}: {o.name} expects pre-apply checksum "
                   f"{o.pre_apply:016x} but TXID {r[0]:016x} has post-apply checksum {r[1]:016x}")
        else:
            inner = min((m for m in matching if m.max_txid >= target_txid), key=lambda m: m.max_txid,
                        default=max(matching, key=lambda m: m.max_txid))
            msg = _compacted_only(inner, g, r)
    return RestoreError(f"cannot restore {what}: {msg}" + _excluded_text(excluded, relevant))


def _start(g: Graph, floor_txid: int) -> Node:
    above = [n for n in g.reachable_nodes if n[0] >= floor_txid]
    pool = above or g.reachable_nodes
    return min(pool, key=lambda n: (n[0], g.ts[n]))


def _exact_at(g: Graph, objs: list[ObjectEntry], all_objs: list[ObjectEntry], node: Node, at: int, what: str,
              excluded: Mapping[str, str]) -> RestoreError | None:
    """Why `node` (the newest state whose time is <= at) might not be the state at `at`, or None
    if it is: the next commit is known to come after `at`, or there is none."""
    if not any(o.max_txid > node[0] for o in all_objs) or at <= g.ts[node]:
        return None
    eff0 = g.eff[node]
    nxt = node[0] + 1
    starting = [o for o in objs if not o.is_snapshot and o.min_txid == nxt]
    if starting and all(max(eff0, o.first_ts) > at for o in starting):
        return None
    # The commits after `node` came at or before `at`, or at unknown times.
    compacted = [o for o in starting if not o.is_bundle and o.pre_apply == node[1]]
    if compacted:
        return RestoreError(f"cannot restore {what}: " + _compacted_only(compacted[0], g, node)
                            + _excluded_text(excluded, starting))
    if starting:
        return _diagnose(g, objs, all_objs, nxt + 1, what, excluded)
    gap = _gap_at(objs, nxt)
    if gap is None:
        if any(o.is_snapshot and o.max_txid == nxt for o in objs):
            return None  # a snapshot ends at nxt, committed after `at` (else it would be `node`)
        # Only objects that began before `node` cover nxt: when it committed is not known here.
        covering = [o for o in objs if not o.is_snapshot and o.min_txid <= nxt <= o.max_txid]
        compacted = [o for o in covering if not o.is_bundle]
        if compacted and not any(o.is_bundle for o in covering):
            return RestoreError(f"cannot restore {what}: " + _compacted_only(compacted[0], g, node))
        return RestoreError(f"cannot restore {what}: TXID {nxt:016x} ({nxt}) is archived only inside "
                            f"{', '.join(o.name for o in covering[:3])}, which the archive cannot reach"
                            + _excluded_text(excluded, covering))
    return RestoreError(
        f"cannot restore {what}: {gap_text(gap)}, so the state at that time is unknown; the nearest "
        f"restorable point before it is {_point(g, node).describe()}"
        + _excluded_text(excluded, [o for o in all_objs if o.min_txid <= gap[0] <= o.max_txid]))


def window(objects: Iterable[ObjectEntry], floor_txid: int = 0,
           known_gaps: Iterable[tuple[int, int]] = ()) -> Window | None:
    """The restorable window of a set of objects, or None if nothing is restorable.

    `floor_txid`: TXIDs below it have no level-0 bundles any more (the manifest's l0 start - 1),
    so the window starts at the first reachable state at or above it. `known_gaps` are gaps the
    worker recorded; they replace computed gaps they overlap (the computed ones only see the
    objects given).
    """
    objs = list(objects)
    g = Graph(objs)
    if not g.reachable_nodes:
        return None
    start = _start(g, floor_txid)
    end = max(g.reachable_nodes, key=lambda n: (n[0], g.ts[n]))
    known = sorted((a, b) for a, b in known_gaps if b >= start[0] and a <= end[0])
    gaps = []
    cover = _Coverage(objs)
    reach = sorted({n[0] for n in g.reachable_nodes if n[0] >= start[0]})
    for a, b in zip(reach, reach[1:]):
        gap = cover.gap_at(a + 1)
        if gap is not None and gap[0] <= b:
            gap = (gap[0], gap[1] if gap[1] is not None else b - 1)
            if not any(ka <= gap[1] and gap[0] <= kb for ka, kb in known):
                gaps.append(gap)
    return Window(_point(g, start), _point(g, end), sorted(gaps + known))


def plan_restore(objects: Iterable[ObjectEntry], *, txid: int | None = None, at: int | None = None,
                 excluded: Mapping[str, str] | None = None, floor_txid: int = 0) -> RestorePlan:
    """The plan that restores TXID `txid`, the state at time `at` (ms), or the latest state.

    `excluded` maps object names known to be missing or corrupt to the reason; they are not used.
    `floor_txid` is where the window starts (see window()): targets before it are refused.
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
    first = _start(g, floor_txid)
    # The newest state of any object, usable or not: excluding a broken object must never turn an
    # earlier state into "the latest".
    last_any = max((dest(o) for o in all_objs), key=lambda n: n[0])
    notes: list[str] = []

    def before_window() -> RestoreError:
        return RestoreError(f"cannot restore {what}: it is before the restorable window, which starts at "
                            f"{_point(g, first).describe()}")

    if txid is not None:
        if txid < first[0]:
            raise before_window()
        cands: list[tuple] = []
        for n in g.reachable_nodes:
            if n[0] == txid:
                cands.append((g.cost(n), 0, -g.ts[n], n, None))
        for o in objs:
            if o.is_bundle and o.min_txid <= txid < o.max_txid and g.reachable(source(o)):
                cands.append((_add(g.cost(source(o)), g.weight(o)), 1, 0, source(o), o))
        if not cands:
            if txid > last_any[0]:
                raise RestoreError(f"cannot restore {what}: the archive's last TXID is "
                                   f"{last_any[0]:016x} ({last_any[0]})")
            raise _diagnose(g, objs, all_objs, txid, what, excluded)
        _, _, _, node, bundle = min(cands, key=lambda c: c[:3])
        target = f"TXID {txid:016x}"
        if bundle is None:
            return RestorePlan(g.path(node), _point(g, node), target, notes)
        return RestorePlan(g.path(node) + [bundle], None, target, notes, stop_txid=txid,
                           base_time=g.time_of(node))

    if at is not None:
        if at < g.eff[first]:
            raise before_window()
        target = f"time {format_time(at)}"
        cands_n = [n for n in g.nodes if g.eff[n] <= at]
        x = max(cands_n, key=lambda n: (n[0], g.reachable(n), g.ts[n]))
        node = _pick(g, x[0])
        options: list[tuple] = []
        err: RestoreError | None = None
        if node is None:
            err = _diagnose(g, objs, all_objs, x[0], what, excluded)
        else:
            err = _exact_at(g, objs, all_objs, node, at, what, excluded)
            if err is None:
                options.append((g.cost(node), 0, node, None))
        # A bundle whose start is at or before `at` and whose end is after it holds the answer.
        for o in objs:
            if o.is_bundle and g.reachable(source(o)) and g.eff.get(source(o), 0) <= at < g.eff[dest(o)]:
                options.append((_add(g.cost(source(o)), g.weight(o)), 1, source(o), o))
        if not options:
            assert err is not None
            raise err
        _, _, base, bundle = min(options, key=lambda c: c[:2])
        if bundle is not None:
            return RestorePlan(g.path(base) + [bundle], None, target, notes, stop_time=at, base_time=g.eff[base])
        if not any(o.max_txid > base[0] for o in all_objs) and at > g.ts[base]:
            notes.append(f"{format_time(at)} is after the last archived commit; restored the latest archived "
                         f"commit, {_point(g, base).describe()}")
        return RestorePlan(g.path(base), _point(g, base), target, notes)

    node = _pick(g, last_any[0])
    if node is None:
        raise _diagnose(g, objs, all_objs, last_any[0], what, excluded)
    return RestorePlan(g.path(node), _point(g, node), "latest", notes)


def chain_path(objects: Iterable[ObjectEntry], start: Node, end: Node) -> list[ObjectEntry] | None:
    """The fewest non-snapshot objects leading from state `start` to state `end` (None: no path)."""
    g = Graph([o for o in objects if not o.is_snapshot and o.min_txid > start[0] and o.max_txid <= end[0]],
              start=start)
    return g.path(end) if g.reachable(end) else None


# ---------------------------------------------------------------------------------------------
# Retention


def select_retention(objects: Iterable[ObjectEntry], *, now: int, window_ms: int
                     ) -> tuple[list[ObjectEntry], Node | None]:
    """What retention removes from the compacted levels and snapshots, and the window's floor.

    The floor is the newest compacted state (or snapshot) whose commit time is at or before
    now - window. Every TXID t from the floor on stays reachable as: the cheapest path of
    snapshot + compacted objects to the newest compacted state b <= t, then the level-0 bundles
    from b+1 to t. So retention keeps every object on the cheapest path to every compacted state
    at or above the floor, and every bundle above it (the caller deletes bundles that end at or
    below floor TXID). Objects that end at or below the floor and lie on no such path go, as do
    reachable ones that straddle it unused; anything above it that cannot be placed stays.
    (Compactions are made of whole bundles, so no bundle straddles a compacted state, and the
    bundles above the floor start from states kept here.)
    """
    objs = sorted(o for o in set(objects) if not o.is_bundle)
    if not objs:
        return [], None
    cutoff = now - window_ms
    g = Graph(objs)
    floor = max((n for n in g.reachable_nodes if g.eff[n] <= cutoff), key=lambda n: (n[0], g.ts[n]), default=None)
    if floor is None:
        return [], None
    keep: set[ObjectEntry] = set()
    for n in g.reachable_nodes:
        if n[0] >= floor[0]:
            keep.update(g.path(n))
    doomed = [o for o in objs if o not in keep and
              (o.max_txid <= floor[0] or (g.reachable(dest(o)) and o.min_txid <= floor[0]))]
    return doomed, floor


__all__ = ["Graph", "Node", "Point", "RestorePlan", "START", "Window", "chain_path", "dest", "gap_text",
           "plan_restore", "select_retention", "source", "window"]
