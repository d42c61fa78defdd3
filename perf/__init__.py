"""litefs benchmark harness: `python -m perf [suite ...] [--quick] [--json-out FILE]`.

A suite is a module perf/<name>.py defining `run(ctx: perf.common.Context)` (and optionally
DESCRIPTION). See perf/README.md.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

# Suites run in this order when present; any other perf/<name>.py with run() follows.
SUITE_ORDER = ("codec", "mount", "replication", "archive")
_NOT_SUITES = {"common"}


def available_suites() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    names = [m.name for m in pkgutil.iter_modules([here])
             if not m.name.startswith("_") and m.name not in _NOT_SUITES and not m.ispkg]
    return [n for n in SUITE_ORDER if n in names] + sorted(n for n in names if n not in SUITE_ORDER)


def load_suite(name: str):
    mod = importlib.import_module(f"perf.{name}")
    if not callable(getattr(mod, "run", None)):
        raise ImportError(f"perf.{name} has no run(ctx)")
    return mod
