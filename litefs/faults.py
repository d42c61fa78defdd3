"""Crash points for tests: LITEFS_FAULT=<name> makes the process SIGKILL itself at that point.

The names are the places where a crash leaves distinct on-disk states of a commit; tests use
them to prove that recovery handles each. Costs one dict lookup when unset.
"""
from __future__ import annotations

import os
import signal

POINTS = (
    "commit:before-ltx",      # SQLite has signalled the commit; no LTX written yet
    "commit:before-rename",   # LTX written and fsynced under its temp name
    "commit:after-rename",    # LTX published; the journal is still hot / position not advanced
)

_ACTIVE = os.environ.get("LITEFS_FAULT", "")


def point(name: str) -> None:
    if _ACTIVE == name:
        os.kill(os.getpid(), signal.SIGKILL)
