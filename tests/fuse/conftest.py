from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import TestNode, sweep_stale_mounts


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fuse/" in str(item.fspath):
            item.add_marker(pytest.mark.fuse)


@pytest.fixture(scope="session", autouse=True)
def _fuse_available(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount"):
        pytest.skip("needs /dev/fuse and fusermount (apt-get install fuse)")
    root = tmp_path_factory.getbasetemp().parent
    sweep_stale_mounts(root)
    yield
    sweep_stale_mounts(root)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[TestNode]:
    n = TestNode(tmp_path).start()
    yield n
    n.stop()
