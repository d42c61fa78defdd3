"""Shared measurement helpers for the perf suites (reference/perf-reliability.md §C1).

Protocol: every target is a ratio against a baseline measured in the same run, A and B are
timed interleaved (alternating which goes first) over >= 5 repetitions, and the median and
interquartile range of the per-repetition values are reported. Each run records the machine
facts (CPU, memcpy and zlib.crc32 speed, fsync latency and disk class) so results from
different machines can be bucketed instead of compared raw.

Typical use in a suite module (it must define `run(ctx)`):

    def run(ctx: Context) -> None:
        a, b = ctx.interleave(lambda: mine(buf), lambda: theirs(buf), nbytes=len(buf))
        ctx.report_ratio("crc", a, b, unit="GB/s", baseline="zlib.crc32", target=1.0)
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERF_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PERF_DIR / "results"
DEFAULT_JSON_OUT = RESULTS_DIR / "results.jsonl"
TMP_DIR = RESULTS_DIR / "tmp"  # on the same filesystem as the repository
MIN_REPS = 5

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# --------------------------------------------------------------------------------------------
# statistics

def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Stat:
    """Median and interquartile range of a list of per-repetition values."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def q1(self) -> float:
        return quantile(self.values, 0.25)

    @property
    def q3(self) -> float:
        return quantile(self.values, 0.75)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """IQR / median: the run-to-run noise as a fraction."""
        m = self.median
        return self.iqr / m if m else float("nan")

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Samples:
    """Timings of one benchmarked callable: one entry per repetition.

    Each repetition calls the function `inner` times; `ns` holds the whole repetition's time.
    `nbytes` (bytes processed per call) and `items` (operations per call) turn them into rates.
    """

    ns: list[int]
    inner: int = 1
    nbytes: int = 0
    items: int = 1
    minflt: list[int] = field(default_factory=list)  # minor page faults per repetition
    sys_ns: list[int] = field(default_factory=list)  # kernel CPU time per repetition

    @property
    def reps(self) -> int:
        return len(self.ns)

    def faults_per_call(self) -> float:
        return statistics.median(self.minflt) / self.inner if self.minflt else 0.0

    def faults_per_mib(self) -> float:
        """Minor page faults per MiB processed: > ~8 means fresh memory is being mapped per call."""
        return self.faults_per_call() / (self.nbytes / MiB) if self.nbytes else 0.0

    def sys_fraction(self) -> float:
        """Share of the wall time spent in the kernel (page faults, syscalls)."""
        if not self.sys_ns:
            return 0.0
        return statistics.median(s / t for s, t in zip(self.sys_ns, self.ns) if t)

    @property
    def per_call_s(self) -> Stat:
        return Stat([t / self.inner / 1e9 for t in self.ns])

    def throughput(self, scale: float = 1e9) -> Stat:
        """Bytes per second divided by `scale` (default GB/s, decimal)."""
        if not self.nbytes:
            raise ValueError("throughput() needs nbytes")
        return Stat([self.nbytes * self.inner / (t / 1e9) / scale for t in self.ns])

    def rate(self) -> Stat:
        """Operations per second (items per call x calls / time)."""
        return Stat([self.items * self.inner / (t / 1e9) for t in self.ns])


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> Stat:
    """Per-repetition a[i] / b[i] of interleaved runs: robust to slow drift of the machine."""
    return Stat([x / y for x, y in zip(a, b)])


# --------------------------------------------------------------------------------------------
# timing

class _GcOff:
    """Collect, then keep the cyclic GC off while timing (what timeit does)."""

    def __enter__(self) -> None:
        gc.collect()
        self._was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._was:
            gc.enable()


def time_once(fn: Callable[[], Any], inner: int = 1) -> int:
    """Nanoseconds for `inner` back-to-back calls of fn."""
    t0 = time.perf_counter_ns()
    for _ in range(inner):
        fn()
    return time.perf_counter_ns() - t0


def _rusage() -> tuple[int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, int(r.ru_stime * 1e9)


def time_rusage(fn: Callable[[], Any], inner: int = 1) -> tuple[int, int, int]:
    """(wall ns, minor page faults, kernel CPU ns) of `inner` back-to-back calls of fn."""
    f0, s0 = _rusage()
    t = time_once(fn, inner)
    f1, s1 = _rusage()
    return t, f1 - f0, s1 - s0


def calibrate(fn: Callable[[], Any], min_sample_s: float = 0.02, max_inner: int = 1 << 20) -> int:
    """How many calls of fn make one repetition last at least min_sample_s (fn is warmed up)."""
    fn()
    inner = 1
    while True:
        t = time_once(fn, inner) / 1e9
        if t >= min_sample_s or inner >= max_inner:
            return inner
        if t <= 0:
            inner *= 10
        else:
            inner = min(max_inner, max(inner + 1, int(inner * min_sample_s / t * 1.1) + 1))


def measure(fn: Callable[[], Any], reps: int = MIN_REPS, *, inner: int | None = None,
            nbytes: int = 0, items: int = 1, warmup: int = 1, min_sample_s: float = 0.02) -> Samples:
    """Time fn over `reps` repetitions (after `warmup` untimed ones), GC disabled.

    inner=None calibrates the number of calls per repetition to last >= min_sample_s.
    """
    if inner is None:
        inner = calibrate(fn, min_sample_s)
    with _GcOff():
        for _ in range(warmup):
            fn()
        runs = [time_rusage(fn, inner) for _ in range(max(reps, 1))]
    return Samples([r[0] for r in runs], inner, nbytes, items, [r[1] for r in runs], [r[2] for r in runs])


def interleave_n(fns: Sequence[Callable[[], Any]], reps: int = MIN_REPS, *,
                 inners: Sequence[int | None] | None = None, warmup: int = 1, min_sample_s: float = 0.02,
                 setup: Callable[[], Any] | None = None) -> tuple[list[list[tuple[int, int, int]]], list[int]]:
    """Time several callables round-robin, rep by rep, rotating who goes first each rep.

    Returns (per callable, per repetition (ns, minor faults, sys ns); calls per repetition of each).
    """
    reps = max(reps, MIN_REPS)
    inners = list(inners) if inners is not None else [None] * len(fns)
    inners = [calibrate(f, min_sample_s) if i is None else i for f, i in zip(fns, inners)]
    out: list[list[tuple[int, int, int]]] = [[] for _ in fns]
    k = len(fns)
    with _GcOff():
        for _ in range(warmup):
            for f in fns:
                f()
        for r in range(reps):
            order = list(range(k))
            order = order[r % k:] + order[:r % k]
            if (r // k) % 2:  # for two: AB BA BA AB ...
                order.reverse()
            for j in order:
                if setup is not None:
                    setup()
                out[j].append(time_rusage(fns[j], inners[j]))
    return out, inners


def interleave(a_fn: Callable[[], Any], b_fn: Callable[[], Any], reps: int = MIN_REPS, *,
               nbytes: int = 0, b_nbytes: int | None = None, items: int = 1, b_items: int | None = None,
               inner_a: int | None = None, inner_b: int | None = None, warmup: int = 1,
               min_sample_s: float = 0.02, setup: Callable[[], Any] | None = None) -> tuple[Samples, Samples]:
    """Time A and B alternately, rep by rep (AB BA BA AB ...), so drift hits both equally.

    reps is raised to at least MIN_REPS. inner_a/inner_b (calls per repetition) are calibrated
    to min_sample_s when None. `setup`, if given, runs untimed before every timed repetition
    of either side. Returns (A samples, B samples); Context.report_ratio / paired_ratio() turn
    them into a per-rep ratio with its spread.
    """
    (a, b), (ia, ib) = interleave_n((a_fn, b_fn), reps, inners=(inner_a, inner_b), warmup=warmup,
                                    min_sample_s=min_sample_s, setup=setup)
    return (_samples(a, ia, nbytes, items),
            _samples(b, ib, nbytes if b_nbytes is None else b_nbytes, items if b_items is None else b_items))


def _samples(runs: list[tuple[int, int, int]], inner: int, nbytes: int, items: int = 1) -> Samples:
    return Samples([r[0] for r in runs], inner, nbytes, items, [r[1] for r in runs], [r[2] for r in runs])


def interleave_many(fns: dict[str, Callable[[], Any]], reps: int = MIN_REPS, *, nbytes: int | dict[str, int] = 0,
                    inners: dict[str, int] | None = None, warmup: int = 1, min_sample_s: float = 0.02,
                    setup: Callable[[], Any] | None = None) -> dict[str, Samples]:
    """interleave() for any number of named callables; returns {name: Samples}."""
    names = list(fns)
    inners = inners or {}
    ns, used = interleave_n([fns[n] for n in names], reps, inners=[inners.get(n) for n in names],
                            warmup=warmup, min_sample_s=min_sample_s, setup=setup)
    nb = nbytes if isinstance(nbytes, dict) else {n: nbytes for n in names}
    return {n: _samples(ns[i], used[i], nb.get(n, 0)) for i, n in enumerate(names)}


# --------------------------------------------------------------------------------------------
# helpers for benchmark material

class Sink:
    """A write-only file object that copies into one preallocated, reused buffer.

    Lets an encoder be timed without BytesIO growth and without touching the disk. Grows (once)
    if a write overflows; rewind() before each repetition.
    """

    def __init__(self, capacity: int) -> None:
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self.pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        end = self.pos + n
        if end > len(self._buf):
            self._view.release()
            self._buf.extend(bytes(max(end - len(self._buf), len(self._buf))))
            self._view = memoryview(self._buf)
        self._view[self.pos:end] = data
        self.pos = end
        return n

    def rewind(self) -> None:
        self.pos = 0

    def getvalue(self) -> bytes:
        return bytes(self._view[:self.pos])

    def flush(self) -> None:
        pass


def tmp_dir() -> Path:
    """perf/results/tmp, created: scratch space on the repository's filesystem."""
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    return TMP_DIR


# --------------------------------------------------------------------------------------------
# machine facts

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: Sequence[str] = ("pclmulqdq", "sse4_2", "avx2", "avx512f", "vpclmulqdq")) -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def memcpy_gbps(size: int = MiB, reps: int = 7) -> float:
    src = memoryview(os.urandom(size))
    dst = memoryview(bytearray(size))

    def copy() -> None:
        dst[:] = src

    return measure(copy, reps, nbytes=size, min_sample_s=0.01).throughput().median


def zlib_crc32_gbps(size: int = MiB, reps: int = 7) -> float:
    buf = os.urandom(size)
    return measure(lambda: zlib.crc32(buf), reps, nbytes=size, min_sample_s=0.01).throughput().median


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, fs type) holding path, from /proc/mounts (longest matching prefix)."""
    path = Path(path).resolve()
    best = ("", "unknown")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, parts[2])
    except OSError:
        pass
    return best


def fsync_latency(directory: Path | None = None, count: int = 200, size: int = 4 * KiB,
                  warmup: int = 5) -> dict[str, float]:
    """Latency of `count` x (write `size` bytes appended + fdatasync), in microseconds.

    Runs in a fresh temporary file under `directory` (default perf/results/tmp, i.e. the
    repository's filesystem) and removes it. Returns p50, p90, p99, mean, max (µs).
    """
    directory = Path(directory) if directory is not None else tmp_dir()
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(size)
    sync = getattr(os, "fdatasync", os.fsync)
    fd, name = tempfile.mkstemp(prefix="fsync-", dir=directory)
    lat: list[float] = []
    try:
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            os.write(fd, block)
            sync(fd)
            dt = (time.perf_counter_ns() - t0) / 1e3
            if i >= warmup:
                lat.append(dt)
    finally:
        os.close(fd)
        os.unlink(name)
    return {"p50": quantile(lat, 0.5), "p90": quantile(lat, 0.9), "p99": quantile(lat, 0.99),
            "mean": statistics.fmean(lat), "max": max(lat), "count": count, "size": size}


def disk_class(p50_us: float) -> str:
    """FAST < 100 µs, MEDIUM < 1 ms, else SLOW (fsync p50 of a 4 KiB write)."""
    if p50_us < 100:
        return "FAST"
    if p50_us < 1000:
        return "MEDIUM"
    return "SLOW"


def git_rev(repo: Path = PERF_DIR.parent) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        rev = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if rev and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(fsync_dir: Path | None = None, fsync_count: int = 200) -> dict[str, Any]:
    """The facts recorded at the start of every run, for bucketing results across machines."""
    fs_dir = Path(fsync_dir) if fsync_dir is not None else tmp_dir()
    mnt, fstype = filesystem_of(fs_dir)
    fs = fsync_latency(fs_dir, fsync_count)
    try:
        from litefs import native
        impl = native.IMPLEMENTATION
        clmul = bool(getattr(native.crc64, "HAVE_CLMUL", False))
    except Exception:  # the harness must still describe the machine if litefs is broken
        impl, clmul = "unavailable", False
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memcpy_1MiB_gbps": memcpy_gbps(),
        "zlib_crc32_1MiB_gbps": zlib_crc32_gbps(),
        "fsync_dir": str(fs_dir),
        "fsync_fs": f"{fstype} on {mnt}",
        "fsync_p50_us": fs["p50"],
        "fsync_p99_us": fs["p99"],
        "fsync_mean_us": fs["mean"],
        "disk_class": disk_class(fs["p50"]),
        "litefs_impl": impl,
        "have_clmul": clmul,
        "git_rev": git_rev(),
        "malloc_env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")),
    }


# --------------------------------------------------------------------------------------------
# reporting

FAULTS_PER_MIB_WARN = 8.0  # 256 pages per MiB: above this a good share of the bytes hit fresh memory
_CHILD_MARK = "@@perf-record@@ "
_RETURN_MARK = "@@perf-return@@ "


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.3g}"


@dataclass
class Recorder:
    """Prints a readable line and appends one JSON line per result.

    Every JSON record carries the run id, timestamp and the bucketing facts (host, cpu, disk
    class, fsync p50), so a results file can be filtered without joining records. In a child
    process started by run_isolated(), forward=True sends records to the parent instead.
    """

    json_out: Path | None = DEFAULT_JSON_OUT
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    context: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    stream: Any = None
    forward: bool = False

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def emit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Stamp a record (timestamp, run id, machine context), keep it and append it as JSON."""
        if self.forward:
            self._print(_CHILD_MARK + json.dumps(record))
            return record
        rec = {"timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "run_id": self.run_id, **self.context, **record}
        self.records.append(rec)
        if self.json_out is not None:
            self.json_out.parent.mkdir(parents=True, exist_ok=True)
            with open(self.json_out, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def report(self, suite: str, name: str, value: float | None, unit: str, *,
               baseline: str | None = None, baseline_value: float | None = None,
               ratio: float | None = None, ratio_q1: float | None = None, ratio_q3: float | None = None,
               value_iqr: float | None = None, target: float | None = None, stretch: float | None = None,
               higher_is_better: bool = True, reps: int | None = None, note: str = "",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record one result. With `target`, target_met compares `ratio` (or `value` if no ratio)."""
        checked = ratio if ratio is not None else value
        met = stretch_met = None
        if target is not None and checked is not None:
            met = checked >= target if higher_is_better else checked <= target
        if stretch is not None and checked is not None:
            stretch_met = checked >= stretch if higher_is_better else checked <= stretch
        rec: dict[str, Any] = {
            "suite": suite, "name": name, "value": value, "unit": unit,
            "value_iqr": value_iqr, "baseline": baseline, "baseline_value": baseline_value,
            "ratio": ratio, "ratio_q1": ratio_q1, "ratio_q3": ratio_q3,
            "target": target, "target_met": met, "stretch": stretch, "stretch_met": stretch_met,
            "higher_is_better": higher_is_better, "reps": reps, "note": note,
        }
        if extra:
            rec.update(extra)
        return self.ingest(rec)

    def ingest(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Emit a finished result record and print its readable line (also used for child records)."""
        rec = self.emit(rec)
        if not self.forward:
            self._print(format_line(rec))
        return rec

    def facts(self, facts: dict[str, Any]) -> None:
        """Print the machine facts and record them as one JSON line (suite "machine")."""
        self.context.update({
            "host": facts.get("host"), "cpu": facts.get("cpu_model"),
            "disk_class": facts.get("disk_class"), "fsync_p50_us": round(facts.get("fsync_p50_us", 0), 1),
            "git_rev": facts.get("git_rev"), "litefs_impl": facts.get("litefs_impl"),
        })
        self.emit({"suite": "machine", "name": "facts", **facts})
        self._print(
            f"machine  host={facts['host']} cpu={facts['cpu_model']!r} x{facts['cpu_count']} "
            f"flags={','.join(facts['cpu_flags']) or '-'} kernel={facts['kernel']} python={facts['python']}\n"
            f"machine  memcpy(1 MiB) {_fmt(facts['memcpy_1MiB_gbps'])} GB/s   "
            f"zlib.crc32(1 MiB) {_fmt(facts['zlib_crc32_1MiB_gbps'])} GB/s\n"
            f"machine  fsync 4 KiB write+fdatasync p50 {_fmt(facts['fsync_p50_us'])} µs  "
            f"p99 {_fmt(facts['fsync_p99_us'])} µs  -> disk class {facts['disk_class']} "
            f"({facts['fsync_fs']})\n"
            f"machine  litefs kernels: {facts['litefs_impl']}  pclmul: {facts['have_clmul']}  "
            f"git: {facts['git_rev'] or '-'}  malloc env: {facts['malloc_env'] or 'default'}")

    def note(self, text: str) -> None:
        self._print(text)


def format_line(rec: dict[str, Any]) -> str:
    line = f"{rec['suite']:<7} {rec['name']:<36} {_fmt(rec['value']):>7} {rec['unit']:<5}"
    if rec.get("baseline"):
        line += f" vs {rec['baseline']} {_fmt(rec.get('baseline_value'))}"
    if rec.get("ratio") is not None:
        line += f"  ratio {rec['ratio']:.2f}"
        if rec.get("ratio_q1") is not None:
            line += f" [IQR {rec['ratio_q1']:.2f}-{rec['ratio_q3']:.2f}]"
    if rec.get("target") is not None:
        op = ">=" if rec.get("higher_is_better", True) else "<="
        verdict = "PASS" if rec.get("target_met") else "MISS"
        line += f"  target {op}{rec['target']:g} {verdict}"
        if rec.get("stretch") is not None:
            line += f" (stretch {op}{rec['stretch']:g} {'met' if rec.get('stretch_met') else 'not met'})"
    if rec.get("note"):
        line += f"\n{'':<8}  {rec['note']}"
    return line


@dataclass
class Context:
    """What a suite's run(ctx) gets: options, the recorder, and shortcuts to the helpers."""

    suite: str
    recorder: Recorder
    quick: bool = False
    reps: int = 11
    min_sample_s: float = 0.02

    def measure(self, fn: Callable[[], Any], **kw: Any) -> Samples:
        kw.setdefault("min_sample_s", self.min_sample_s)
        return measure(fn, kw.pop("reps", self.reps), **kw)

    def interleave(self, a_fn: Callable[[], Any], b_fn: Callable[[], Any], **kw: Any) -> tuple[Samples, Samples]:
        kw.setdefault("min_sample_s", self.min_sample_s)
        return interleave(a_fn, b_fn, kw.pop("reps", self.reps), **kw)

    def interleave_many(self, fns: dict[str, Callable[[], Any]], **kw: Any) -> dict[str, Samples]:
        kw.setdefault("min_sample_s", self.min_sample_s)
        return interleave_many(fns, kw.pop("reps", self.reps), **kw)

    def report(self, name: str, value: float | None, unit: str, **kw: Any) -> dict[str, Any]:
        return self.recorder.report(self.suite, name, value, unit, **kw)

    def report_ratio(self, name: str, a: Samples, b: Samples, *, baseline: str, target: float | None = None,
                     stretch: float | None = None, unit: str = "GB/s", metric: str = "throughput",
                     note: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Report A against baseline B from interleaved samples.

        metric="throughput": value = A's bytes/s in `unit` (GB/s, MB/s, B/s), ratio = A/B per rep.
        metric="rate": ops/s. metric="time": value = A's seconds per call, ratio = B time / A time
        (so > 1 still means A is faster). Page-fault and kernel-time shares of both sides go into
        the record, and into the note when either side maps fresh memory on every call.
        """
        if metric == "throughput":
            scale = {"GB/s": 1e9, "MB/s": 1e6, "B/s": 1.0}[unit]
            sa, sb = a.throughput(scale), b.throughput(scale)
            r = paired_ratio(sa.values, sb.values)
        elif metric == "rate":
            sa, sb = a.rate(), b.rate()
            r = paired_ratio(sa.values, sb.values)
        elif metric == "time":
            sa, sb = a.per_call_s, b.per_call_s
            r = paired_ratio(sb.values, sa.values)
        else:
            raise ValueError(metric)
        ex = {"faults_per_mib": round(a.faults_per_mib(), 1), "sys_frac": round(a.sys_fraction(), 3),
              "baseline_faults_per_mib": round(b.faults_per_mib(), 1),
              "baseline_sys_frac": round(b.sys_fraction(), 3),
              "inner": a.inner, "baseline_inner": b.inner, **(extra or {})}
        warn = [f"{who} {s.faults_per_mib():.0f} faults/MiB, {100 * s.sys_fraction():.0f}% kernel time"
                for who, s in (("ours", a), ("baseline", b)) if s.faults_per_mib() >= FAULTS_PER_MIB_WARN]
        if warn:
            note = (note + "; " if note else "") + "PAGE FAULTS: " + ", ".join(warn)
        return self.report(name, sa.median, unit, baseline=baseline, baseline_value=sb.median,
                           ratio=r.median, ratio_q1=r.q1, ratio_q3=r.q3, value_iqr=sa.iqr,
                           target=target, stretch=stretch, reps=len(r), note=note, extra=ex)

    def note(self, text: str) -> None:
        self.recorder.note(text)

    def run_isolated(self, target: str, env: dict[str, str] | None = None, timeout: float = 600,
                     **kwargs: Any) -> Any:
        """Run `target` ("module:function", called as function(ctx, **kwargs)) in a fresh process.

        Each group then starts from the same interpreter and allocator state, so the order of
        groups cannot change a result (glibc's dynamic mmap threshold, for one, remembers the
        largest block freed so far). Records and notes stream back into this run; `env` adds
        environment variables (e.g. LITEFS_PURE=1). Returns the function's JSON-able result.
        """
        spec = {"target": target, "suite": self.suite, "quick": self.quick, "reps": self.reps,
                "min_sample_s": self.min_sample_s, "kwargs": kwargs}
        proc = subprocess.Popen([sys.executable, "-m", "perf._child", json.dumps(spec)],
                                cwd=str(PERF_DIR.parent), env=dict(os.environ, **(env or {})),
                                stdout=subprocess.PIPE, text=True)
        result = None
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(_CHILD_MARK):
                self.recorder.ingest(json.loads(line[len(_CHILD_MARK):]))
            elif line.startswith(_RETURN_MARK):
                result = json.loads(line[len(_RETURN_MARK):])
            else:
                self.note(line)
        if proc.wait(timeout) != 0:
            raise RuntimeError(f"isolated benchmark {target} exited with status {proc.returncode}")
        return result


def child_main(spec_json: str) -> None:
    """Body of `python -m perf._child SPEC`: run one group and forward its records."""
    spec = json.loads(spec_json)
    module, func = spec["target"].split(":")
    import importlib
    fn = getattr(importlib.import_module(module), func)
    ctx = Context(spec["suite"], Recorder(json_out=None, forward=True), spec["quick"], spec["reps"],
                  spec["min_sample_s"])
    result = fn(ctx, **spec["kwargs"])
    print(_RETURN_MARK + json.dumps(result), flush=True)


def add_repo_to_path() -> None:
    """Let suites import the test harness (tests.nodes, tests.cluster) from the repo root."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def load_average() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"
