"""Command line: python -m perf [suite ...] [--quick] [--json-out FILE] [--reps N] [--list]."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from perf import available_suites, load_suite
from perf.common import DEFAULT_JSON_OUT, MIN_REPS, Context, Recorder, machine_facts


def main(argv: list[str] | None = None) -> int:
    suites = available_suites()
    p = argparse.ArgumentParser(prog="python -m perf", description="litefs benchmarks (ratios vs baselines)")
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"suites to run (default: all of {', '.join(suites)})")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller inputs")
    p.add_argument("--json-out", type=Path, default=DEFAULT_JSON_OUT,
                   help=f"append one JSON line per result here (default {DEFAULT_JSON_OUT})")
    p.add_argument("--no-json", action="store_true", help="do not write JSON lines")
    p.add_argument("--reps", type=int, default=None, help=f"repetitions per benchmark (min {MIN_REPS})")
    p.add_argument("--fsync-count", type=int, default=200, help="write+fdatasync samples for the machine facts")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    args = p.parse_args(argv)

    if args.list:
        for name in suites:
            print(f"{name:<12} {getattr(load_suite(name), 'DESCRIPTION', '')}")
        return 0
    chosen = args.suites or suites
    unknown = [s for s in chosen if s not in suites]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(suites)}")

    reps = max(args.reps or (MIN_REPS if args.quick else 11), MIN_REPS)
    rec = Recorder(json_out=None if args.no_json else args.json_out)
    t0 = time.perf_counter()
    rec.facts(machine_facts(fsync_count=args.fsync_count))
    rec.note(f"run {rec.run_id}  suites: {', '.join(chosen)}  reps={reps}{'  (quick)' if args.quick else ''}")
    for name in chosen:
        ts = time.perf_counter()
        ctx = Context(suite=name, recorder=rec, quick=args.quick, reps=reps,
                      min_sample_s=0.01 if args.quick else 0.02)
        load_suite(name).run(ctx)
        rec.note(f"{name:<7} done in {time.perf_counter() - ts:.1f} s")
    missed = [r for r in rec.records if r.get("target_met") is False]
    rec.note(f"total {time.perf_counter() - t0:.1f} s; targets: "
             f"{sum(1 for r in rec.records if r.get('target_met'))} met, {len(missed)} missed"
             + (f" ({', '.join(r['name'] for r in missed)})" if missed else "")
             + (f"; JSON lines appended to {rec.json_out}" if rec.json_out else ""))
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
