"""Shared fixtures.

- Any WARNING or worse logged during a test fails it, unless the test declared it with the
  `expect_log` fixture (s3ql's checklogs habit).
- `kernels` runs a test against the compiled kernels and against their plain-Python twins.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, settings

from litefs import native

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.allowed: list[re.Pattern[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _fail_on_warnings(request: pytest.FixtureRequest) -> Iterator[_Collector]:
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    request.node._log_collector = collector
    try:
        yield collector
    finally:
        root.removeHandler(collector)
    unexpected = [r for r in collector.records
                  if not any(p.search(r.getMessage()) for p in collector.allowed)]
    if unexpected:
        lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in unexpected)
        pytest.fail(f"unexpected warnings were logged:\n{lines}", pytrace=False)


@pytest.fixture
def expect_log(_fail_on_warnings: _Collector):
    """`with expect_log("regex"):` allows (and requires) a matching warning in the block."""

    @contextmanager
    def expect(pattern: str) -> Iterator[None]:
        rx = re.compile(pattern)
        _fail_on_warnings.allowed.append(rx)
        before = len(_fail_on_warnings.records)
        yield
        if not any(rx.search(r.getMessage()) for r in _fail_on_warnings.records[before:]):
            pytest.fail(f"expected a warning matching {pattern!r}", pytrace=False)

    return expect


@pytest.fixture(params=["compiled", "pure"])
def kernels(request: pytest.FixtureRequest) -> SimpleNamespace:
    pure = request.param == "pure"
    if not pure and os.environ.get("LITEFS_PURE") == "1":
        pytest.skip("LITEFS_PURE=1")
    return SimpleNamespace(name=request.param, **{m: native.load(m, pure=pure) for m in native.MODULES})
