"""Failover suite: time to a new primary, and the write outage of a planned handoff.

A 3-node cluster with Consul leases (tests.cluster.test_failover.ConsulCluster) on the Consul
stand-in (tests/consul_standin.py, in this process; it invalidates a session exactly at its
TTL, real Consul within 2 x TTL) with the tests' lease settings: ttl 2 s, lock-delay 0.5 s,
reconnect-delay 100 ms. Nodes run `python -m litefs mount` as children under
perf/results/tmp (`strict-verify: false`) and are stopped in `finally`. One cluster is reused
for all runs of a group: after each run the stopped node is restarted and rejoins as a replica,
and the next run starts only when every node is at the primary's position.

  failover_sigterm     SIGTERM to the primary -> another node's /info says isPrimary
                       (polled every 10 ms); p50 (p90, max in the note); informational
  failover_sigkill     SIGKILL, the same; p50 and max also ÷ (ttl + lock-delay)
  handoff_outage_*     a writer at 100 tx/s (1-row autocommit INSERTs, persistent connection,
                       re-targeted to the new primary on error) while POST /promote moves the
                       lease to a replica: the longest gap between acknowledged writes, max over
                       runs, <= 1 s; and every acknowledged id present on the new primary

With the defaults (ttl 10 s, lock-delay 1 s) a crash costs up to ttl + lock-delay = 11 s
(the lease is renewed every ttl/2, so 6-11 s after the kill here; on real Consul, which may take
up to 2 x ttl to invalidate a session, up to 21 s); a clean stop releases the lease at once.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from perf.common import Context, add_repo_to_path, load_average, quantile, tmp_dir

DESCRIPTION = "time to a new primary after SIGTERM / SIGKILL (Consul lease), write outage during a handoff"
DB = "app.db"
POLL_S = 0.01
HARD_LIMIT_S = 60.0  # bound on any single wait


def lease_config() -> tuple[float, float]:
    add_repo_to_path()
    from tests.cluster import test_failover
    return test_failover.TTL, test_failover.LOCK_DELAY


def info(node: Any, timeout: float = 1.0) -> dict | None:
    if node.proc is None:
        return None
    try:
        with urllib.request.urlopen(f"{node.url}/info", timeout=timeout) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def primaries(c: Any, exclude: Any = None) -> list[Any]:
    return [n for n in c.all if n is not exclude and n.proc is not None and (info(n) or {}).get("isPrimary")]


def wait_until(cond: Any, timeout: float, what: str, every: float = POLL_S) -> Any:
    deadline = time.monotonic() + min(timeout, HARD_LIMIT_S)
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def read_pos(node: Any) -> str:
    try:
        with open(node.path(DB + "-pos")) as f:
            return f.read()
    except OSError:
        return ""


def insert(node: Any, ids: range) -> None:
    con = sqlite3.connect(node.path(DB), isolation_level=None, timeout=5)
    try:
        con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
        for i in ids:
            con.execute("INSERT INTO t (id) VALUES (?)", (i,))
    finally:
        con.close()


def ids_on(node: Any) -> set[int]:
    con = sqlite3.connect(f"file:{node.path(DB)}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in con.execute("SELECT id FROM t")}
    finally:
        con.close()


def settle(c: Any, marker: int) -> Any:
    """Find the primary, write one row, wait until every running node is at its position."""
    p = wait_until(lambda: (lambda ps: ps[0] if len(ps) == 1 else None)(primaries(c)), 30, "one primary")
    c.use(p)
    insert(p, range(marker, marker + 1))
    want = read_pos(p)
    for n in c.replicas:
        wait_until(lambda: read_pos(n) == want and (info(n) or {}).get("ready"), 30,
                   f"{n.dir.name} to reach {want.strip()}", every=0.005)
    return p


def keep_logs(c: Any, label: str, since: float) -> None:
    """Copy every node's log, without the access lines, to perf/results/logs/ (a failed run)."""
    dest = tmp_dir().parent / "logs" / f"failover-{label}-{os.getpid()}"
    dest.mkdir(parents=True, exist_ok=True)
    for n in c.all:
        lines = [ln for ln in n.read_log().splitlines() if "tornado.access" not in ln]
        (dest / f"{n.dir.name}.log").write_text("\n".join(lines) + "\n")
    print(f"        (kept the nodes' logs in {dest})", flush=True)


@contextmanager
def consul_cluster(label: str) -> Iterator[Any]:
    add_repo_to_path()
    from tests.cluster.test_failover import ConsulCluster
    from tests.consul_standin import ConsulStandIn
    base = tmp_dir() / f"failover-{label}-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    consul = ConsulStandIn(min_ttl=1).start()
    server = getattr(consul, "_server", None)
    if server is not None:  # nodes stopping mid-request: socketserver would print each reset
        server.handle_error = lambda request, client_address: None
    c = None
    try:
        c = ConsulCluster(base, consul, n=3, config={"strict-verify": False})
        c.start()
        c.use(wait_until(lambda: (lambda ps: ps[0] if len(ps) == 1 else None)(primaries(c)), 15, "a primary"))
        yield c
    except BaseException:
        for n in (c.all if c else []):
            log = "\n".join(ln for ln in n.read_log().splitlines() if "tornado.access" not in ln)
            if log:
                print(f"litefs log of {n.dir.name} (tail):\n" + log[-2000:], file=sys.stderr)
        raise
    finally:
        if c is not None:
            for n in c.all:
                try:
                    n.stop()
                except Exception as exc:
                    print(f"stopping {n.dir.name}: {exc}", file=sys.stderr)
        consul.stop()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 1: time to a new primary after SIGTERM and SIGKILL

def one_failover(c: Any, kind: str) -> dict[str, Any]:
    old = c.primary
    others = [n for n in c.all if n is not old]
    t0 = time.monotonic()
    if kind == "sigterm":
        old.proc.send_signal(signal.SIGTERM)
    else:
        old.proc.send_signal(signal.SIGKILL)
    new = t_new = t_exit = None
    deadline = t0 + 30
    while time.monotonic() < deadline:
        if t_exit is None and old.proc.poll() is not None:
            t_exit = time.monotonic()
        for n in others:
            if (info(n, 0.5) or {}).get("isPrimary"):
                new, t_new = n, time.monotonic()
                break
        if new is not None:
            break
        time.sleep(POLL_S)
    if new is None:
        raise TimeoutError(f"no new primary 30 s after {kind} of {old.dir.name}")
    both = bool((info(old, 0.5) or {}).get("isPrimary")) if old.proc.poll() is None else False
    if kind == "sigterm":
        code = old.stop()
        if t_exit is None:
            t_exit = time.monotonic()
    else:
        old.kill()  # reap and lazily unmount the dead mount
        code = -9
    if t_exit is None:
        t_exit = t0
    old.start()  # rejoins as a replica (wait_mounted: mounted and ready)
    return {"s": t_new - t0, "exit_s": t_exit - t0, "old": old.dir.name, "new": new.dir.name,
            "both_primary": both, "exit_code": code}


def bench_failover(ctx: Context, runs: int) -> None:
    gc.disable()
    ttl, delay = lease_config()
    out: dict[str, list[dict[str, Any]]] = {"sigterm": [], "sigkill": []}
    load0 = load_average()
    with consul_cluster("kill") as c:
        insert(c.primary, range(0, 10))
        marker = 1000
        for kind in ("sigterm", "sigkill"):
            for _ in range(runs):
                settle(c, marker)
                marker += 1
                out[kind].append(one_failover(c, kind))
    load1 = load_average()
    budget = ttl + delay
    for kind, rows in out.items():
        s = [r["s"] for r in rows]
        p50, p90, mx = quantile(s, 0.5), quantile(s, 0.9), max(s)
        exits = [r["exit_s"] for r in rows]
        both = sum(r["both_primary"] for r in rows)
        moved = ", ".join(sorted({f"{r['old']}->{r['new']}" for r in rows}))
        if kind == "sigterm":
            note = (f"informational: SIGTERM -> another node isPrimary, {len(s)} runs: p50 {p50:.2f} s p90 {p90:.2f} s "
                    f"max {mx:.2f} s (min {min(s):.2f}); the old primary exited after p50 "
                    f"{quantile(exits, 0.5):.2f} s (exit codes {sorted({r['exit_code'] for r in rows})}); a clean "
                    f"stop releases the lease, so no TTL wait")
        else:
            note = (f"informational: SIGKILL -> another node isPrimary, {len(s)} runs: p50 {p50:.2f} s p90 {p90:.2f} s "
                    f"max {mx:.2f} s (min {min(s):.2f}) = p50 {p50 / budget:.2f} x, max {mx / budget:.2f} x "
                    f"(ttl {ttl:g} s + lock-delay {delay:g} s = {budget:g} s; the lease is renewed every ttl/2, "
                    f"so the session ends {ttl / 2:g}-{ttl:g} s after the kill, the key is free {delay:g} s later); "
                    f"with the defaults 10 s / 1 s a crash costs up to 11 s")
        note += f"; {both} runs with the old node still saying isPrimary; {moved}; {load0} -> {load1}"
        ctx.report(f"failover_{kind}", p50, "s", higher_is_better=False, reps=len(s), note=note,
                   extra={"p90_s": round(p90, 3), "max_s": round(mx, 3), "runs_s": [round(v, 3) for v in s],
                          "ttl_s": ttl, "lock_delay_s": delay, "both_primary": both,
                          "vs_ttl_plus_lock_delay": round(p50 / budget, 3) if kind == "sigkill" else None})


# --------------------------------------------------------------------------------------------
# 2: write outage during a handoff

class Writer(threading.Thread):
    """1-row autocommit INSERTs at `rate`/s on a persistent connection to the primary; on an
    error it reconnects to whichever node says isPrimary (polled every 10 ms). Every attempt uses
    a new id, so an acknowledged id is never retried."""

    def __init__(self, c: Any, journal_mode: str, synchronous: str, first_id: int, rate: float = 100,
                 limit_s: float = HARD_LIMIT_S) -> None:
        super().__init__(daemon=True)
        self.c, self.jm, self.sync = c, journal_mode, synchronous
        self.interval, self.limit_s = 1 / rate, limit_s
        self.next_id = first_id
        self.acked: list[tuple[int, float]] = []
        self.errors: list[tuple[float, str]] = []
        self.stopped = threading.Event()

    def _connect(self, node: Any) -> sqlite3.Connection:
        con = sqlite3.connect(node.path(DB), isolation_level=None, timeout=2, check_same_thread=False)
        con.execute(f"PRAGMA journal_mode={self.jm}")
        con.execute(f"PRAGMA synchronous={self.sync}")
        return con

    def run(self) -> None:
        target = self.c.primary
        con: sqlite3.Connection | None = None
        t0 = time.monotonic()
        k = 0
        while not self.stopped.is_set() and time.monotonic() - t0 < self.limit_s:
            d = t0 + k * self.interval - time.monotonic()
            if d > 0:
                time.sleep(d)
            k += 1
            i = self.next_id
            self.next_id += 1
            try:
                if con is None:
                    con = self._connect(target)
                con.execute("INSERT INTO t (id) VALUES (?)", (i,))
                self.acked.append((i, time.monotonic()))
            except (sqlite3.Error, OSError) as exc:
                self.errors.append((time.monotonic(), f"{target.dir.name}: {exc}"))
                if con is not None:
                    try:
                        con.close()
                    except sqlite3.Error:
                        pass
                    con = None
                ps = primaries(self.c)
                if len(ps) == 1:
                    target = ps[0]
                self.stopped.wait(POLL_S)
                t0, k = time.monotonic(), 0  # back on schedule from here
        if con is not None:
            con.close()

    def rate_before(self, t: float) -> float:
        times = [a for _, a in self.acked if a < t]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    def max_gap(self) -> tuple[float, float]:
        """(longest gap between consecutive acknowledged writes, time its start was acked)."""
        best, at = 0.0, 0.0
        for (_, a), (_, b) in zip(self.acked, self.acked[1:]):
            if b - a > best:
                best, at = b - a, a
        return best, at


def bench_handoff(ctx: Context, runs: int, modes: list[str]) -> None:
    gc.disable()
    settings = {"delete_full": ("DELETE", "FULL"), "wal_normal": ("WAL", "NORMAL")}
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    load0 = load_average()
    with consul_cluster("handoff") as c:
        insert(c.primary, range(0, 10))
        marker = 1000
        for mode in modes:
            jm, sync = settings[mode]
            for run in range(runs):
                old = settle(c, marker)
                marker += 1
                target = c.replicas[run % len(c.replicas)]
                w = Writer(c, jm, sync, first_id=(len(results[mode]) + 1 + 10 * modes.index(mode)) * 1_000_000)
                w.start()
                try:
                    wait_until(lambda: len(w.acked) >= 100, 15, "writes to flow")
                    t_promote = time.monotonic()
                    req = urllib.request.Request(f"{target.url}/promote", data=b"", method="POST")
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        status = resp.status
                    t_ok = time.monotonic()
                    try:
                        wait_until(lambda: (info(target) or {}).get("isPrimary"), 10, "the promoted node to lead",
                                   every=0.005)
                        promoted = True
                    except TimeoutError:  # recorded; the writer follows whoever leads instead
                        promoted = False
                        keep_logs(c, f"handoff-{mode}-{run}", t_promote)
                    t_lead = time.monotonic()
                    if promoted:
                        c.use(target)
                    n0 = len(w.acked)
                    wait_until(lambda: len(w.acked) >= n0 + 100 and w.acked[-1][1] > t_lead, 15, "writes to resume")
                finally:
                    w.stopped.set()
                    w.join(10)
                new = settle(c, marker)
                marker += 1
                have = ids_on(new)
                acked = [i for i, _ in w.acked]
                lost = [i for i in acked if i not in have]
                gap, gap_at = w.max_gap()
                results[mode].append({
                    "gap_s": gap, "gap_from_promote_s": gap_at - t_promote, "lost": len(lost), "acked": len(acked),
                    "errors": len(w.errors), "promote_http_s": t_ok - t_promote, "to_lead_s": t_lead - t_promote,
                    "status": status, "old": old.dir.name, "new": new.dir.name, "target": target.dir.name,
                    "promoted": promoted, "first_error": w.errors[0][1] if w.errors else "",
                    "rate": w.rate_before(t_promote),
                    "first_ack_on_new_s": next((t - t_promote for _, t in w.acked if t > t_lead), float("nan")),
                })
    load1 = load_average()
    for mode, rows in results.items():
        jm, sync = settings[mode]
        gaps = [r["gap_s"] for r in rows]
        lost = sum(r["lost"] for r in rows)
        worst = max(rows, key=lambda r: r["gap_s"])
        per_run = "; ".join(f"{r['gap_s'] * 1e3:.0f}/{r['to_lead_s'] * 1e3:.0f}/{r['first_ack_on_new_s'] * 1e3:.0f}"
                            for r in rows)
        ctx.report(f"handoff_outage_{mode}", max(gaps), "s", target=1.0, higher_is_better=False, reps=len(rows),
                   note=f"longest gap between acknowledged 1-row writes across a POST /promote, max of {len(rows)} "
                        f"runs, {jm}+{sync}, writer at {statistics.median(r['rate'] for r in rows):.0f} tx/s before "
                        f"the promote; per run: gap / promote -> target isPrimary / -> first write acked there (ms) "
                        f"{per_run}; /promote answered in p50 "
                        f"{statistics.median(r['promote_http_s'] for r in rows) * 1e3:.0f} ms; "
                        f"{sum(not r['promoted'] for r in rows)} runs where the promoted node did not lead within "
                        f"10 s (logs kept under perf/results/logs/); failed attempts "
                        f"per run {statistics.median(r['errors'] for r in rows):.0f} (e.g. {worst['first_error'][:120]!r}); "
                        f"{load0} -> {load1}",
                   extra={"gaps_s": [round(g, 4) for g in gaps], "runs": rows})
        ctx.report(f"handoff_lost_writes_{mode}", lost, "writes", target=0, higher_is_better=False, reps=len(rows),
                   note=f"acknowledged ids missing on the new primary after it settled, over "
                        f"{sum(r['acked'] for r in rows)} acknowledged writes in {len(rows)} runs")


# --------------------------------------------------------------------------------------------

def run(ctx: Context) -> None:
    ttl, delay = lease_config()
    ctx.note(f"failover  {load_average()}; Consul stand-in (in-process), lease ttl {ttl:g} s, lock-delay {delay:g} s, "
             "reconnect-delay 100 ms, 3 candidates")
    q = ctx.quick
    ctx.run_isolated("perf.failover:bench_failover", runs=5 if q else 20)
    ctx.run_isolated("perf.failover:bench_handoff", runs=2 if q else 5, modes=["delete_full", "wal_normal"])
    ctx.note(f"failover  at the end: {load_average()}")


if __name__ == "__main__":  # python -m perf.failover runs just this suite
    from perf.__main__ import main
    sys.exit(main(["failover", *sys.argv[1:]]))
