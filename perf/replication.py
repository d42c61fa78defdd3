"""Replication suite: commit on the primary -> applied on the replicas, on one host clock.

Every group starts its own cluster (tests.cluster.conftest.Cluster: a static primary and
replicas, each a `python -m litefs mount` child with its own port, data and mount dir, under
perf/results/tmp, `strict-verify: false`) in a fresh process (ctx.run_isolated), and stops
it in `finally`. The targets are the issue's; they are printed, not asserted.

  lag_{wal_normal,delete_full}_p50/p99  1-row txns at 100 tx/s, commit returned -> TXID visible
                                        in a replica's <db>-pos (both replicas pooled)
                                        p50 <= 5 ms, p99 <= 50 ms
  node_lag_*                            the replicas' own litefs_replication_lag_seconds
                                        histogram over the same commits (LTX timestamp, ms)
  sustained_*                           as fast as possible for 3 s, then 80 % of that rate
                                        for 60 s (15 s --quick): lag p50/p99 in the first and
                                        last third, slope of the per-second median (no growth)
  catchup_*                             a replica down 60 s (15 s --quick) at 100 tx/s, then
                                        restarted: until it has the TXID current at restart
                                        (<= 10 s), and until it is within 1 TXID of live
  snapshot_vs_socket                    a fresh replica's snapshot of a 100 MB db (30 MB
                                        --quick) ÷ a raw 127.0.0.1 TCP copy of the same bytes
                                        into a file + fsync, <= 2

Clocks: all times are time.monotonic() in this process (CLOCK_MONOTONIC, one clock for the
writer and the watchers). A watcher thread per replica keeps the replica's `<db>-pos` open and
pread()s it every 0.2 ms; each pread costs the replica daemon one FUSE GETATTR (attr_timeout 0),
the content comes from the page cache, which the daemon invalidates on every apply.
"""
from __future__ import annotations

import gc
import os
import re
import shutil
import socket
import sqlite3
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf.common import MiB, Context, add_repo_to_path, load_average, quantile, tmp_dir

DESCRIPTION = "replication lag at 100 tx/s and at 80 % of max, catch-up after downtime, snapshot vs raw socket copy"
INSERT = "INSERT INTO t(v) VALUES (?)"
MODES = {"wal_normal": ("WAL", "NORMAL"), "delete_full": ("DELETE", "FULL")}
POLL_S = 0.0002  # watcher poll interval
HARD_LIMIT_S = 240.0  # no thread or wait here runs longer than this


@contextmanager
def cluster(label: str, replicas: int = 2) -> Iterator[Any]:
    """A started Cluster (static primary + replicas) under perf/results/tmp; stopped after."""
    add_repo_to_path()
    from tests.cluster.conftest import Cluster
    base = tmp_dir() / f"repl-{label}-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    c = Cluster(base, replicas=replicas, config={"strict-verify": False})
    extra: list[Any] = []
    c.extra = extra  # nodes a benchmark adds (c.replica(...)); stopped here too
    try:
        c.start()
        yield c
    except BaseException:
        for n in [*c.nodes, *extra]:
            log = "\n".join(ln for ln in n.read_log().splitlines() if "tornado.access" not in ln)
            if log:
                print(f"litefs log of {n.dir.name} (tail):\n" + log[-2000:], file=sys.stderr)
        raise
    finally:
        for n in [*extra, *reversed(c.nodes)]:
            try:
                n.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {n.dir.name}: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


def read_txid(path: str) -> int:
    """TXID in a <db>-pos file (fresh open/read), 0 if it is not there (yet)."""
    try:
        with open(path, "rb") as f:
            data = f.read(64)
        return int(data[:16], 16) if len(data) >= 16 else 0
    except (OSError, ValueError):
        return 0


def wait_txid(path: str, txid: int, timeout: float, what: str) -> float:
    """Poll a <db>-pos until it reaches txid; returns the monotonic time it was seen."""
    deadline = time.monotonic() + min(timeout, HARD_LIMIT_S)
    while True:
        if read_txid(path) >= txid:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} to reach TXID {txid}")
        time.sleep(0.002)


def open_db(path: str, journal_mode: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
    mode = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    if mode.upper() != journal_mode.upper():
        raise RuntimeError(f"{path}: journal_mode is {mode}, wanted {journal_mode}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


# --------------------------------------------------------------------------------------------
# writer and watchers

class PosWatcher(threading.Thread):
    """Polls one replica's <db>-pos through an fd kept open (pread every `interval`) and records
    the monotonic time each TXID is first visible. A jump records every TXID it passes."""

    def __init__(self, path: str, interval: float = POLL_S, limit_s: float = HARD_LIMIT_S) -> None:
        super().__init__(daemon=True)
        self.path, self.interval, self.limit_s = path, interval, limit_s
        self.seen: dict[int, float] = {}
        self.last = -1  # -1: not read yet (the first value is the baseline, not recorded)
        self.polls = 0
        self.stopped = threading.Event()

    def polls_now(self) -> int:
        return self.polls

    def run(self) -> None:
        fd = None
        deadline = time.monotonic() + self.limit_s
        seen, last, polls = self.seen, self.last, 0
        sleep, pread, mono = time.sleep, os.pread, time.monotonic
        try:
            while not self.stopped.is_set() and mono() < deadline:
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except OSError:
                        sleep(0.001)
                        continue
                try:
                    data = pread(fd, 64, 0)
                except OSError:
                    os.close(fd)
                    fd = None
                    continue
                now = mono()
                polls += 1
                self.polls = polls
                if len(data) >= 16:
                    txid = int(data[:16], 16)
                    if txid > last:
                        if last >= 0:
                            for t in range(last + 1, txid + 1):
                                seen[t] = now
                        last = txid
                        self.last = txid
                sleep(self.interval)
        finally:
            self.polls = polls
            if fd is not None:
                os.close(fd)


class Writer(threading.Thread):
    """1-row autocommit INSERTs on the primary at `rate` tx/s (None: as fast as possible), on an
    absolute schedule, for at most `duration` s or until stopped. Records (txid, commit time,
    commit latency) per transaction; the TXID is the primary's <db>-pos read right after the
    commit (pread on an open fd), or previous + 1 when that read is stale (the daemon's page
    cache invalidation is queued, so a read can race it)."""

    def __init__(self, db_path: str, journal_mode: str, synchronous: str, rate: float | None,
                 duration: float) -> None:
        super().__init__(daemon=True)
        self.db_path, self.jm, self.sync = db_path, journal_mode, synchronous
        self.rate, self.duration = rate, min(duration, HARD_LIMIT_S)
        self.commits: list[tuple[int, float, float]] = []
        self.stale = self.skips = 0
        self.last_txid = 0
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _run(self) -> None:
        conn = open_db(self.db_path, self.jm, self.sync)
        pfd = os.open(self.db_path + "-pos", os.O_RDONLY)
        try:
            prev = int(os.pread(pfd, 64, 0)[:16], 16)
            self.last_txid = prev
            ex, mono, pread = conn.execute, time.monotonic, os.pread
            commits = self.commits
            interval = 1 / self.rate if self.rate else 0.0
            t0 = self.started_at = mono()
            i = 0
            while not self.stopped.is_set():
                now = mono()
                if now - t0 >= self.duration:
                    break
                if interval:
                    d = t0 + i * interval - now
                    if d > 0:
                        time.sleep(d)
                ts = mono()
                ex(INSERT, (i,))
                tc = mono()
                read = int(pread(pfd, 64, 0)[:16], 16)
                if read > prev:
                    if read > prev + 1:
                        self.skips += 1
                    txid = read
                else:
                    self.stale += 1
                    txid = prev + 1
                prev = self.last_txid = txid
                commits.append((txid, tc, tc - ts))
                i += 1
            self.ended_at = mono()
        finally:
            os.close(pfd)
            conn.close()

    def achieved_rate(self) -> float:
        n = len(self.commits)
        return (n - 1) / (self.commits[-1][1] - self.commits[0][1]) if n > 1 else 0.0


def lags_ms(commits: list[tuple[int, float, float]], watchers: list[PosWatcher]) -> tuple[list[tuple[float, float]], int]:
    """[(commit time, lag ms)] over all watchers, and how many (commit, replica) pairs were never seen."""
    out, missing = [], 0
    for w in watchers:
        seen = w.seen
        for txid, tc, _ in commits:
            t = seen.get(txid)
            if t is None:
                missing += 1
            else:
                out.append((tc, (t - tc) * 1e3))
    return out, missing


# --------------------------------------------------------------------------------------------
# the node's own histogram

_BUCKET = re.compile(r'^litefs_replication_lag_seconds_bucket\{(?P<labels>[^}]*)\}\s+(?P<v>\S+)')


def lag_histogram(node: Any, db: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of litefs_replication_lag_seconds for `db`."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m and f'db="{db}"' in m["labels"]:
            le = re.search(r'le="([^"]+)"', m["labels"])
            if le:
                out[float(le[1])] = float(m["v"])
    return out


def hist_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus histogram_quantile over cumulative buckets (linear inside a bucket)."""
    les = sorted(buckets)
    if not les or buckets[les[-1]] <= 0:
        return None
    total = buckets[les[-1]]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le


def hist_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def hist_merge(hs: list[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for h in hs:
        for le, c in h.items():
            out[le] = out.get(le, 0.0) + c
    return out


def q_ms(values: list[float], q: float) -> float:
    return quantile(values, q) if values else float("nan")


def slope_per_s(points: list[tuple[float, float]], t0: float) -> tuple[float, list[float]]:
    """Theil-Sen slope (median of the pairwise slopes; one spike cannot tilt it) of the
    per-second median lag, in ms of lag per s, and those per-second medians."""
    by_s: dict[int, list[float]] = {}
    for t, lag in points:
        by_s.setdefault(int(t - t0), []).append(lag)
    xs = sorted(by_s)
    ys = [statistics.median(by_s[x]) for x in xs]
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    return (statistics.median(slopes) if slopes else 0.0), ys


def prepare_db(c: Any, name: str, jm: str, sync: str) -> tuple[float, float]:
    """Create `name` with table t on the primary; wait for every replica to have it. Returns the
    seconds from the CREATE TABLE commit until the last replica listed it at that TXID in /info,
    and until its <name>-pos showed it through the replica's mount."""
    conn = open_db(c.primary.path(name), jm, sync)
    try:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    finally:
        conn.close()
    t0 = time.monotonic()
    want = read_txid(c.primary.path(name + "-pos"))
    t_info: dict[str, float] = {}
    t_pos: dict[str, float] = {}
    deadline = t0 + 20
    while len(t_info) < len(c.replicas) or len(t_pos) < len(c.replicas):
        for r in c.replicas:
            key = r.dir.name
            if key not in t_info:
                try:
                    txid = r.info().get("dbs", {}).get(name, {}).get("txid")
                except (OSError, ValueError):
                    txid = None
                if txid and int(txid, 16) >= want:
                    t_info[key] = time.monotonic()
            if key not in t_pos and read_txid(r.path(name + "-pos")) >= want:
                t_pos[key] = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not reach every replica within 20 s")
        time.sleep(0.002)
    return max(t_info.values()) - t0, max(t_pos.values()) - t0


def daemon_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_watched(c: Any, name: str, jm: str, sync: str, rate: float | None, duration: float,
                watchers: list[PosWatcher]) -> tuple[Writer, float]:
    """Run one Writer while the watchers are running; wait (bounded) until every replica has its
    last TXID. Returns the writer and the seconds from its last commit until the last replica
    caught up."""
    w = Writer(c.primary.path(name), jm, sync, rate, duration)
    w.start()
    w.join(duration + 30)
    if w.is_alive():
        w.stopped.set()
        w.join(10)
    if w.error is not None:
        raise RuntimeError(f"writer failed: {w.error!r}")
    end = w.commits[-1][1] if w.commits else time.monotonic()
    deadline = time.monotonic() + 60
    while any(x.last < w.last_txid for x in watchers) and time.monotonic() < deadline:
        time.sleep(0.005)
    return w, max((x.seen.get(w.last_txid, end) for x in watchers), default=end) - end


# --------------------------------------------------------------------------------------------
# 1: lag at 100 tx/s

def bench_lag(ctx: Context, modes: list[str], seconds: float, rate: float = 100.0) -> None:
    sys.setswitchinterval(0.0005)
    gc.disable()
    with cluster("lag") as c:
        for mode in modes:
            jm, sync = MODES[mode]
            name = f"lag-{mode}.db"
            first_info, first_pos = prepare_db(c, name, jm, sync)
            watchers = [PosWatcher(r.path(name + "-pos")) for r in c.replicas]
            for x in watchers:
                x.start()
            # what the watchers alone cost the replica daemons (1 s, no writes)
            time.sleep(0.05)
            idle0 = [(daemon_cpu_s(r.proc.pid), x.polls_now()) for r, x in zip(c.replicas, watchers)]
            ti = time.monotonic()
            time.sleep(1.0)
            ti = time.monotonic() - ti
            idle1 = [(daemon_cpu_s(r.proc.pid), x.polls_now()) for r, x in zip(c.replicas, watchers)]
            idle_pct = statistics.fmean((b[0] - a[0]) / ti * 100 for a, b in zip(idle0, idle1))
            idle_us = statistics.fmean((b[0] - a[0]) / max(1, b[1] - a[1]) * 1e6 for a, b in zip(idle0, idle1))
            h0 = [lag_histogram(r, name) for r in c.replicas]
            load0 = load_average()
            cpu0 = [daemon_cpu_s(n.proc.pid) for n in c.nodes]
            try:
                w, tail_s = run_watched(c, name, jm, sync, rate, seconds, watchers)
                cpu1 = [daemon_cpu_s(n.proc.pid) for n in c.nodes]
            finally:
                for x in watchers:
                    x.stopped.set()
                for x in watchers:
                    x.join(5)
            h1 = [lag_histogram(r, name) for r in c.replicas]
            pts, missing = lags_ms(w.commits, watchers)
            lags = [lag for _, lag in pts]
            per_rep = [statistics.median(lag for _, lag in lags_ms(w.commits, [x])[0] or [(0, float('nan'))])
                       for x in watchers]
            commit_ms = [lat * 1e3 for _, _, lat in w.commits]
            polls = sum(x.polls for x in watchers) / max(1e-9, w.ended_at - w.started_at) / len(watchers)
            hist = hist_merge([hist_delta(b, a) for a, b in zip(h0, h1)])
            n50, n99 = hist_quantile(0.5, hist), hist_quantile(0.99, hist)
            wall = max(1e-9, w.ended_at - w.started_at)
            cpu = [(b - a) / wall * 100 for a, b in zip(cpu0, cpu1)]
            cpu_tx = [(b - a) / max(1, len(w.commits)) * 1e6 for a, b in zip(cpu0, cpu1)]
            common = (f"{len(w.commits)} commits at {w.achieved_rate():.0f} tx/s (asked {rate:.0f}; {jm}+{sync}), "
                      f"2 replicas pooled "
                      f"(p50 per replica {', '.join(f'{v:.2f}' for v in per_rep)} ms); commit latency p50 "
                      f"{q_ms(commit_ms, 0.5):.2f} ms p99 {q_ms(commit_ms, 0.99):.1f} ms max "
                      f"{max(commit_ms, default=float('nan')):.0f} ms; "
                      f"watchers {polls:.0f} polls/s each (alone, before the run, they cost each replica daemon "
                      f"{idle_pct:.0f} % of a CPU, {idle_us:.0f} µs per poll); {missing} unseen; stale pos reads {w.stale}, "
                      f"TXID skips {w.skips}; daemon CPU primary {cpu[0]:.0f} % ({cpu_tx[0]:.0f} µs/txn), replicas "
                      f"{', '.join(f'{v:.0f} %' for v in cpu[1:])} ({', '.join(f'{v:.0f}' for v in cpu_tx[1:])} µs/txn); "
                      f"{load0}")
            extra = {"commits": len(w.commits), "rate": round(w.achieved_rate(), 1), "missing": missing,
                     "daemon_cpu_pct": [round(v, 1) for v in cpu], "daemon_cpu_us_per_tx": [round(v) for v in cpu_tx],
                     "commit_p50_ms": round(q_ms(commit_ms, 0.5), 3), "journal_mode": jm, "synchronous": sync}
            ctx.report(f"lag_{mode}_p50", q_ms(lags, 0.5), "ms", target=5, higher_is_better=False, reps=len(lags),
                       note="commit returned -> TXID visible in the replica's -pos, " + common, extra=extra)
            ctx.report(f"lag_{mode}_p99", q_ms(lags, 0.99), "ms", target=50, higher_is_better=False, reps=len(lags),
                       note=f"max {max(lags, default=float('nan')):.1f} ms; p90 {q_ms(lags, 0.9):.1f} ms; "
                            f"{sum(v < 0 for v in lags)} negative, min {min(lags, default=float('nan')):.1f} ms (a "
                            f"replica can apply a commit's LTX before SQLite's commit call returns: in WAL mode the "
                            f"commit that runs the auto-checkpoint, ~every 1000 1-page commits, returns only after "
                            f"checkpointing through the mount); the last "
                            f"commit reached both replicas {tail_s * 1e3:.1f} ms after it returned", extra=extra)
            count = hist.get(float("inf"), 0.0)
            ctx.report(f"node_lag_{mode}_p50", None if n50 is None else n50 * 1e3, "ms", higher_is_better=False,
                       reps=int(count),
                       note=f"informational: the replicas' litefs_replication_lag_seconds over the same run "
                            f"({int(count)} observations; buckets 1/2/5/10/25/50 ms, interpolated; LTX timestamps "
                            f"are ms), p99 {'-' if n99 is None else f'{n99 * 1e3:.1f}'} ms",
                       extra={"node_p99_ms": None if n99 is None else round(n99 * 1e3, 2),
                              "buckets": {str(k): v for k, v in hist.items()}})
            ctx.report(f"new_db_first_seen_{mode}", first_pos, "s", higher_is_better=False, reps=1,
                       note=f"informational: a new database's first commit (CREATE TABLE) until both replicas show "
                            f"it in <db>-pos through their mounts; in /info after {first_info:.3f} s. The mount can "
                            f"lag /info by up to the 1 s negative-entry timeout when the name was looked up (here: by "
                            f"this poll) before it existed: the replica creates <db> but not <db>-pos through the "
                            f"kernel, so that cached negative entry is not dropped",
                       extra={"via_info_s": round(first_info, 4)})


# --------------------------------------------------------------------------------------------
# 2: 80 % of the highest sustainable rate

def bench_sustained(ctx: Context, seconds: float, burst_s: float = 3.0, mode: str = "wal_normal") -> None:
    sys.setswitchinterval(0.0005)
    gc.disable()
    jm, sync = MODES[mode]
    name = "sustained.db"
    with cluster("sustained") as c:
        prepare_db(c, name, jm, sync)
        watchers = [PosWatcher(r.path(name + "-pos"), limit_s=seconds + burst_s + 120) for r in c.replicas]
        for x in watchers:
            x.start()
        time.sleep(0.05)
        try:
            burst, burst_tail = run_watched(c, name, jm, sync, None, burst_s, watchers)
            primary_rate = burst.achieved_rate()
            bpts, bmiss = lags_ms(burst.commits, watchers)
            blags = [v for _, v in bpts]
            # what the replicas applied meanwhile: the burst's commits over first commit -> the
            # slowest replica showing the last one (a replica that falls behind sets the limit)
            first_t = burst.commits[0][1]
            done_t = max(x.seen.get(burst.last_txid, burst.commits[-1][1]) for x in watchers)
            replica_rate = (len(burst.commits) - 1) / max(1e-9, done_t - first_t)
            max_rate = min(primary_rate, replica_rate)
            time.sleep(0.5)
            rate = 0.8 * max_rate
            load0 = load_average()
            w, tail_s = run_watched(c, name, jm, sync, rate, seconds, watchers)
            load1 = load_average()
        finally:
            for x in watchers:
                x.stopped.set()
            for x in watchers:
                x.join(5)
    ctx.report("sustained_max_rate", max_rate, "tx/s", reps=1,
               note=f"informational: 1-row commits as fast as possible for {burst_s:.0f} s ({jm}+{sync}): the primary "
                    f"committed {primary_rate:.0f} tx/s, the slowest replica applied them at {replica_rate:.0f} tx/s "
                    f"(first commit -> it showed the last); the lower is taken as the highest sustainable rate. "
                    f"Replica lag meanwhile p50 {q_ms(blags, 0.5):.1f} ms p99 {q_ms(blags, 0.99):.1f} ms max "
                    f"{max(blags, default=float('nan')):.0f} ms; both replicas had the last commit "
                    f"{burst_tail * 1e3:.0f} ms after it; {bmiss} unseen",
               extra={"primary_rate": round(primary_rate, 1), "replica_rate": round(replica_rate, 1),
                      "burst_p50_ms": round(q_ms(blags, 0.5), 2), "burst_p99_ms": round(q_ms(blags, 0.99), 2)})
    pts, missing = lags_ms(w.commits, watchers)
    t0 = w.started_at
    third = (w.ended_at - t0) / 3
    first = [v for t, v in pts if t - t0 < third]
    last = [v for t, v in pts if t - t0 >= 2 * third]
    slope, per_s = slope_per_s(pts, t0)
    common = (f"{len(w.commits)} commits at {w.achieved_rate():.0f} tx/s (asked {rate:.0f} = 80 % of {max_rate:.0f}) "
              f"for {w.ended_at - t0:.0f} s, 2 replicas pooled; {missing} unseen; {load0} -> {load1}")
    ctx.report("sustained_lag_first_third_p50", q_ms(first, 0.5), "ms", higher_is_better=False, reps=len(first),
               note=f"informational: p99 {q_ms(first, 0.99):.1f} ms; " + common,
               extra={"p99_ms": round(q_ms(first, 0.99), 2)})
    ctx.report("sustained_lag_last_third_p50", q_ms(last, 0.5), "ms", higher_is_better=False, reps=len(last),
               note=f"informational: p99 {q_ms(last, 0.99):.1f} ms; the last commit reached both replicas "
                    f"{tail_s * 1e3:.0f} ms after it returned", extra={"p99_ms": round(q_ms(last, 0.99), 2)})
    growth = slope * (w.ended_at - t0)
    ctx.report("sustained_lag_slope", slope, "ms/s", target=0.1, higher_is_better=False, reps=len(per_s),
               note=f"'no growth', read as: Theil-Sen slope of the per-second median lag <= 0.1 ms/s "
                    f"(= {growth:+.1f} ms over the run); per-second medians min {min(per_s, default=0):.1f} "
                    f"max {max(per_s, default=0):.1f} ms",
               extra={"growth_ms": round(growth, 2), "per_second_p50_ms": [round(v, 2) for v in per_s]})


# --------------------------------------------------------------------------------------------
# 3: catch-up after a replica was down

def bench_catchup(ctx: Context, down_s: float, rate: float = 100.0, mode: str = "wal_normal") -> None:
    gc.disable()
    jm, sync = MODES[mode]
    name = "catchup.db"
    with cluster("catchup") as c:
        prepare_db(c, name, jm, sync)
        node = c.replicas[0]
        pos_path = node.path(name + "-pos")
        w = Writer(c.primary.path(name), jm, sync, rate, down_s + 120)
        w.start()
        try:
            time.sleep(2)
            at_stop = read_txid(pos_path)
            node.stop()
            t_down = time.monotonic()
            while time.monotonic() - t_down < down_s and w.is_alive():
                time.sleep(0.05)
            if w.error is not None:
                raise RuntimeError(f"writer failed: {w.error!r}")
            behind = w.last_txid - at_stop
            down_for = time.monotonic() - t_down
            t0 = time.monotonic()
            target = w.last_txid
            node.start(wait=False)
            t_open = t_target = t_live = None
            live_at = 0
            fd = None
            deadline = t0 + 120
            try:
                while time.monotonic() < deadline and (t_target is None or t_live is None):
                    if fd is None:
                        try:
                            fd = os.open(pos_path, os.O_RDONLY)
                            t_open = time.monotonic()
                        except OSError:
                            time.sleep(0.002)
                            continue
                    try:
                        data = os.pread(fd, 64, 0)
                    except OSError:
                        os.close(fd)
                        fd = None
                        continue
                    now = time.monotonic()
                    txid = int(data[:16], 16) if len(data) >= 16 else 0
                    if t_target is None and txid >= target:
                        t_target = now
                    if t_live is None and txid >= w.last_txid - 1:
                        t_live, live_at = now, txid
                    time.sleep(0.002)
            finally:
                if fd is not None:
                    os.close(fd)
            node.wait_mounted(30)
        finally:
            w.stopped.set()
            w.join(10)
    if t_target is None or t_live is None:
        raise RuntimeError("the restarted replica did not catch up within 120 s")
    common = (f"replica stopped (SIGTERM) {down_for:.0f} s while the primary committed {behind} txns at "
              f"{w.achieved_rate():.0f} tx/s ({jm}+{sync}), writes continue during catch-up; restart -> "
              f"<db>-pos readable {(t_open or t0) - t0:.2f} s")
    ctx.report("catchup_to_restart_txid", t_target - t0, "s", target=10, higher_is_better=False, reps=1,
               note=f"process start -> the TXID current at restart ({target}); " + common,
               extra={"behind_txns": behind, "down_s": round(down_for, 1),
                      "apply_rate": round(behind / max(1e-9, t_target - (t_open or t0)), 1)})
    ctx.report("catchup_to_live", t_live - t0, "s", target=10, higher_is_better=False, reps=1,
               note=f"process start -> within 1 TXID of the live primary (TXID {live_at}); "
                    f"{behind / max(1e-9, t_target - (t_open or t0)):.0f} txns/s applied while catching up")


# --------------------------------------------------------------------------------------------
# 4: snapshot to a new replica vs a raw socket copy

def raw_copy(src: Path, dst: Path, chunk: int = MiB) -> float:
    """Seconds to send `src` over a 127.0.0.1 TCP socket (1 MiB reads + sendall) to a receiver
    thread that writes it to `dst` and fsyncs it."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)
    done: dict[str, Any] = {}

    def receive() -> None:
        try:
            conn, _ = srv.accept()
            conn.settimeout(60)
            buf = bytearray(chunk)
            mv = memoryview(buf)
            with conn, open(dst, "wb") as f:
                while n := conn.recv_into(buf):
                    f.write(mv[:n])
                f.flush()
                os.fsync(f.fileno())
            done["t"] = time.perf_counter()
        except BaseException as exc:
            done["err"] = exc

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    try:
        t0 = time.perf_counter()
        with socket.create_connection(srv.getsockname(), timeout=60) as s, open(src, "rb", buffering=0) as f:
            while data := f.read(chunk):
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        th.join(120)
    finally:
        srv.close()
        dst.unlink(missing_ok=True)
    if "t" not in done:
        raise RuntimeError(f"raw copy failed: {done.get('err')!r}")
    return done["t"] - t0


class LogTail(threading.Thread):
    """Timestamps (monotonic) the first line containing `needle` appended to a log file."""

    def __init__(self, path: Path, needle: str, limit_s: float = 180) -> None:
        super().__init__(daemon=True)
        self.path, self.needle, self.limit_s = path, needle.encode(), limit_s
        self.offset = path.stat().st_size if path.exists() else 0
        self.at: float | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        buf = b""
        deadline = time.monotonic() + self.limit_s
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while not self.stopped.is_set() and time.monotonic() < deadline:
                data = f.read()
                if data:
                    buf = (buf + data)[-4096:]
                    if self.needle in buf:
                        self.at = time.monotonic()
                        return
                else:
                    time.sleep(0.001)


def start_replica(c: Any, label: str, name: str | None, want: str | None, timeout: float = 180) -> dict[str, float]:
    """Start a fresh replica; time process start -> /stream connected on the primary (its log)
    -> (name given) its /info position of `name` equal to `want` (the primary's <name>-pos
    text), or (no name) /info ready."""
    node = c.replica(label)
    c.extra.append(node)
    tail = LogTail(c.primary.log_path, "stream connected")
    tail.start()
    t0 = time.monotonic()
    node.start(wait=False)
    deadline = t0 + timeout
    t_done = None
    try:
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{label} exited: {node.read_log()[-2000:]}")
            if name is not None:
                # /info, not <name>-pos through the mount: a lookup of the name before the
                # database exists caches a negative entry for 1 s (see new_db_first_seen_*)
                try:
                    db = node.info().get("dbs", {}).get(name) or {}
                    if f"{db.get('txid', '')}/{db.get('checksum', '')}\n".lower() == want.lower():
                        t_done = time.monotonic()
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.002)
            else:
                try:
                    if node.info().get("ready"):
                        t_done = time.monotonic()
                        break
                except OSError:
                    pass
                time.sleep(0.005)
    finally:
        tail.join(1)
        tail.stopped.set()
    if t_done is None:
        raise RuntimeError(f"{label} did not get {name or 'ready'} within {timeout:.0f} s")
    out = {"total": t_done - t0, "connect": (tail.at - t0) if tail.at else float("nan")}
    out["after_connect"] = t_done - tail.at if tail.at else float("nan")
    node.stop()
    c.extra.remove(node)
    shutil.rmtree(node.dir, ignore_errors=True)
    return out


def bench_snapshot(ctx: Context, size_mb: int, reps: int) -> None:
    name = "big.db"
    with cluster("snapshot", replicas=0) as c:
        # node start-up with nothing to sync: process start -> stream -> ready
        empty = [start_replica(c, f"empty{i}", None, None, 30) for i in range(2)]
        startup = statistics.median(e["total"] for e in empty)
        # ~size_mb of random 4000-byte blobs (one per 4 KiB page) in one transaction
        rows = size_mb * 1_000_000 // 4096
        t0 = time.monotonic()
        conn = open_db(c.primary.path(name), "DELETE", "FULL")
        try:
            conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
            conn.execute("BEGIN")
            conn.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
                         "INSERT INTO t(v) SELECT randomblob(4000) FROM n", (rows,))
            conn.execute("COMMIT")
        finally:
            conn.close()
        build_s = time.monotonic() - t0
        want = Path(c.primary.path(name + "-pos")).read_text()
        src = c.primary.data / "dbs" / name / "database"
        nbytes = src.stat().st_size
        dst_dir = c.base / "raw"
        dst_dir.mkdir(exist_ok=True)
        raw_copy(src, dst_dir / "warmup")  # warm-up (and the page cache of src)
        raws: list[float] = []
        snaps: list[dict[str, float]] = []
        for i in range(reps):
            raws.append(raw_copy(src, dst_dir / "copy"))
            snaps.append(start_replica(c, f"fresh{i}", name, want))
        raws.append(raw_copy(src, dst_dir / "copy"))
    raw = statistics.median(raws)
    snap = statistics.median(s["after_connect"] for s in snaps)
    total = statistics.median(s["total"] for s in snaps)
    conn_s = statistics.median(s["connect"] for s in snaps)
    mb = nbytes / 1e6
    ctx.report("snapshot_vs_socket", snap, "s", baseline="raw TCP copy + fsync", baseline_value=raw,
               ratio=snap / raw, target=2, higher_is_better=False, reps=len(snaps),
               note=f"{mb:.0f} MB database (random 4000-byte blobs, incompressible) to a fresh replica: /stream "
                    f"connected (primary's log) -> the replica's /info position equal to the primary's = {snap:.2f} s "
                    f"({mb / snap:.0f} MB/s); that includes the primary writing the snapshot LTX (read db, LZ4, "
                    f"checksums) to a temp file and reading it back, HTTP chunked framing, the replica receiving "
                    f"to a temp file + fsync, verifying it, then decoding and writing every page through its own "
                    f"FUSE mount, page checksums, fsync. Baseline: 1 MiB reads + sendall over 127.0.0.1 into a "
                    f"file + fsync, {raw:.2f} s ({mb / raw:.0f} MB/s), median of {len(raws)}",
               extra={"db_bytes": nbytes, "raw_s": [round(v, 3) for v in raws],
                      "snapshot_s": [round(s["after_connect"], 3) for s in snaps]})
    ctx.report("snapshot_from_process_start", total, "s", baseline="empty-cluster start-up", baseline_value=startup,
               higher_is_better=False, reps=len(snaps),
               note=f"informational: fresh replica process start -> caught up {total:.2f} s; start -> /stream "
                    f"connected {conn_s:.2f} s; the same start-up with nothing to sync (start -> ready) "
                    f"{startup:.2f} s, so start-up-corrected snapshot {total - startup:.2f} s "
                    f"= {(total - startup) / raw:.2f} x raw; building the db (one txn through the mount) took "
                    f"{build_s:.1f} s", extra={"build_s": round(build_s, 2), "empty_startup_s": round(startup, 3)})


# --------------------------------------------------------------------------------------------

def run(ctx: Context) -> None:
    ctx.note(f"replication  {load_average()} (writer, watchers and three daemons share them)")
    q = ctx.quick
    ctx.run_isolated("perf.replication:bench_lag", modes=list(MODES), seconds=4.0 if q else 10.0)
    ctx.run_isolated("perf.replication:bench_sustained", seconds=15.0 if q else 60.0)
    ctx.run_isolated("perf.replication:bench_catchup", down_s=15.0 if q else 60.0)
    ctx.run_isolated("perf.replication:bench_snapshot", size_mb=30 if q else 100, reps=1 if q else 2)
    ctx.note(f"replication  at the end: {load_average()}")


if __name__ == "__main__":  # python -m perf.replication runs just this suite
    from perf.__main__ import main
    sys.exit(main(["replication", *sys.argv[1:]]))
