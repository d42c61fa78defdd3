"""Running real litefs nodes in child processes for tests.

A TestNode writes its own litefs.yml (free port on 127.0.0.1, its own data and mount dirs),
starts `python -m litefs mount` as a subprocess, waits for the mount with a deadline, and in
teardown stops it and lazily unmounts whatever is left.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll cond() until it is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def lazy_unmount(path: Path) -> None:
    subprocess.run(["fusermount", "-u", "-z", str(path)], capture_output=True)


def sweep_stale_mounts(root: Path) -> None:
    """Unmount litefs mounts under `root` left by an aborted run."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2].startswith("fuse") and fields[0] == "litefs" and fields[1].startswith(str(root)):
                lazy_unmount(Path(fields[1]))


class TestNode:
    __test__ = False  # not a pytest class

    def __init__(self, base: Path, name: str = "node", config: dict | None = None, env: dict | None = None) -> None:
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mount = self.dir / "mnt"
        self.data = self.dir / "data"
        self.port = free_port()
        self.config = {
            "fuse": {"dir": str(self.mount)},
            "data": {"dir": str(self.data)},
            "http": {"addr": f"127.0.0.1:{self.port}"},
            "lease": {"type": "static", "candidate": True, "hostname": name,
                      "advertise-url": f"http://127.0.0.1:{self.port}"},
            "archive": {"type": "none"},
            "strict-verify": True,
        }
        for section, values in (config or {}).items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "litefs.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def path(self, name: str) -> str:
        return str(self.mount / name)

    def start(self, wait: bool = True, args: list[str] | None = None) -> "TestNode":
        cfg = self.dir / "litefs.yml"
        cfg.write_text(yaml.safe_dump(self.config))
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "litefs", "mount", "--config", str(cfg), *(args or [])],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        if wait:
            self.wait_mounted()
        return self

    def info(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/info", timeout=5) as resp:
            return json.load(resp)

    def wait_mounted(self, timeout: float = 30.0) -> None:
        """Wait until the node is mounted and ready (primary, or caught up with the primary)."""
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"litefs exited with {self.proc.returncode}:\n{self.read_log()}")
            if not is_mounted(self.mount):
                return False
            try:
                return bool(self.info()["ready"])
            except OSError:
                return False
        wait_for(ready, timeout, f"node at {self.mount} to be ready")

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        if is_mounted(self.mount):
            lazy_unmount(self.mount)
        if self.proc is not None:
            self.log.close()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the mount is left dead ('Transport endpoint is not connected')."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        lazy_unmount(self.mount)
        self.log.close()
        self.proc = None

    def restart(self) -> "TestNode":
        self.stop()
        return self.start()
