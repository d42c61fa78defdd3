"""Several nodes on loopback: separate mounts, data dirs and free ports, static lease."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from litefs import ltx
from tests.fuse.conftest import _fuse_available  # noqa: F401  (session fixture: sweep stale mounts)
from tests.fuse.invariants import logical_bytes
from tests.nodes import TestNode, wait_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.fuse)


class Cluster:
    def __init__(self, base: Path, replicas: int = 2, config: dict | None = None) -> None:
        self.base = base
        self.config = config or {}
        self.primary = TestNode(base, "primary", config=self.config)
        self.replicas = [self.replica(f"replica{i}") for i in range(replicas)]

    def replica(self, name: str, via: str | None = None) -> TestNode:
        node = TestNode(self.base, name, config=self.config)
        node.config["lease"].update({"candidate": False, "hostname": "primary",
                                     "advertise-url": via or self.primary.url})
        return node

    @property
    def nodes(self) -> list[TestNode]:
        return [self.primary, *self.replicas]

    def start(self) -> "Cluster":
        self.primary.start()
        for r in self.replicas:
            r.start()
        return self

    def stop(self) -> None:
        for n in reversed(self.nodes):
            n.stop()

    def pos(self, node: TestNode, name: str) -> str:
        try:
            return Path(node.path(name + "-pos")).read_text()
        except OSError:
            return ""

    def wait_converged(self, name: str, nodes: list[TestNode] | None = None, timeout: float = 20) -> None:
        """Every replica at the primary's position, and byte-identical to its committed state."""
        want = self.pos(self.primary, name)
        assert want, f"{name} is not on the primary"
        nodes = self.replicas if nodes is None else nodes
        for r in nodes:
            wait_for(lambda: self.pos(r, name) == want, timeout, f"{r.dir.name} to reach {want.strip()} of {name}")
        expected = logical_bytes(self.primary, name)
        want = self.pos(self.primary, name)  # the checkpoint above may have committed nothing new
        for r in nodes:
            wait_for(lambda: self.pos(r, name) == want, timeout, f"{r.dir.name} to reach {want.strip()} of {name}")
            got = (r.data / "dbs" / name / "database").read_bytes()
            assert got == expected, f"{r.dir.name}: {name} differs from the primary"
            assert f"{ltx.Pos(int(want[:16], 16), ltx.database_checksum(r.data / 'dbs' / name / 'database'))}\n" == want
            con = sqlite3.connect(f"file:{r.path(name)}?mode=ro", uri=True)
            try:
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                con.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    yield c
    c.stop()
