"""A running litefs node: the store, the FUSE mount, the HTTP API and the exec'd child.

Threads: the main thread owns the lifecycle and waits for signals (SIGINT, SIGTERM and SIGCHLD
are blocked in every other thread, which inherit the mask); llfuse.main runs in `litefs-fuse`;
the API in `litefs-http`; retention in `litefs-retention`. Shutdown order: signal the child and
wait for it, stop HTTP, unmount, close the store.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import llfuse

from litefs import metrics
from litefs.archive.store import store_from_config
from litefs.archive.worker import ArchiveWorker
from litefs.cluster import ClusterMonitor
from litefs.config import Config, ExecCommand
from litefs.db import Store
from litefs.errors import LitefsError
from litefs.fuse.operations import FileSystem
from litefs.http.proxy import ProxyServer, forward_routes
from litefs.http.server import APIServer
from litefs.lease import Leaser, StaticLeaser

log = logging.getLogger(__name__)

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
FUSE_WORKERS = 8
EXIT_FATAL = 99


def sd_notify(state: str) -> None:
    """Tell systemd our state through $NOTIFY_SOCKET (Type=notify units); no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


def unmount(path: Path, lazy: bool = False) -> bool:
    tool = shutil.which("fusermount") or shutil.which("fusermount3")
    cmd = [tool, "-u", *(["-z"] if lazy else []), str(path)] if tool else ["umount", *(["-l"] if lazy else []), str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def clear_stale_mount(path: Path) -> None:
    """A daemon that died leaves 'Transport endpoint is not connected' behind: unmount it."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == 107:  # ENOTCONN
            log.info("removing a stale mount at %s", path)
            unmount(path, lazy=True)


def mount_options(config: Config) -> set[str]:
    opts = {"fsname=litefs", "subtype=litefs", "default_permissions", "big_writes", "max_write=131072"}
    if config.fuse.allow_other:
        opts.add("allow_other")
    return opts


class Node:
    def __init__(self, config: Config, command: list[str] | None = None) -> None:
        self.config = config
        self.command = command
        self.store = Store(
            config.data.dir, mount_dir=config.fuse.dir, compress=config.data.compress,
            strict_verify=config.strict_verify, retention=config.data.retention,
            retention_interval=config.data.retention_monitor_interval,
        )
        # Read-only until the cluster monitor has decided this node's role.
        self.store.is_primary = False
        self.fs = FileSystem(self.store)
        send_timeout = config.http.snapshot_timeout or config.data.retention
        # The primary's API also takes writes forwarded by replicas' proxies (/litefs/proxy/...).
        routes = forward_routes(self.store, config.proxy) if config.proxy.target else []
        self.api = APIServer(self.store, config.http.addr, candidate=config.lease.candidate,
                             stats=lambda: {"fuse_requests": dict(self.fs.requests)}, send_timeout=send_timeout,
                             extra_routes=routes)
        self.proxy = ProxyServer(self.store, config.proxy) if config.proxy.target else None
        self.monitor = ClusterMonitor(self.store, make_leaser(config), reconnect_delay=config.lease.reconnect_delay,
                                      on_role_change=self._role_changed,
                                      send_handoff=self.api.hub.handoff)
        self.api.ctx.handoff = self.monitor.handoff
        self.api.ctx.promote = self.monitor.promote
        self.archiver: ArchiveWorker | None = None
        self.store.retention_floors.append(self._archive_floor)
        self.store.subscribe(self._archive_notify)
        self._collector = metrics.register_store(self.store, self.api.hub.count)
        self._fuse_thread: threading.Thread | None = None
        self._fuse_error: BaseException | None = None
        self._child: int | None = None

    # -- startup --------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        cfg.data.dir.mkdir(parents=True, exist_ok=True)
        self.store.open()
        self.store.load_cluster_id(create=False)
        self.store.start_retention()
        self.api.start()
        clear_stale_mount(cfg.fuse.dir)
        cfg.fuse.dir.mkdir(parents=True, exist_ok=True)
        llfuse.init(self.fs, str(cfg.fuse.dir), mount_options(cfg))
        self._fuse_thread = threading.Thread(target=self._serve_fuse, name="litefs-fuse", daemon=True)
        self._fuse_thread.start()
        log.info("LiteFS mounted to: %s (node %016X)", cfg.fuse.dir, self.store.node_id)
        self.monitor.start()

    # -- the archive (primary only) ----------------------------------------------------------------

    def _role_changed(self, primary: bool) -> None:
        """Called on the lease thread when this node becomes primary or stops being it."""
        self.api.events.primary_changed()
        if primary and self.config.archive.type != "none" and self.archiver is None:
            backend, prefix = store_from_config(self.config.archive)
            self.archiver = ArchiveWorker(self.config.archive, backend, self.config.data.dir, prefix=prefix,
                                          snapshot_source=self._archive_snapshot)
            self.archiver.start()
            log.info("archiving to %s (%s)", self.config.archive.type,
                     self.config.archive.path if self.config.archive.type == "file" else self.config.archive.bucket)
        elif not primary and self.archiver is not None:
            self.archiver.stop(flush=False)
            self.archiver = None

    def _archive_floor(self, name: str) -> int | None:
        # LTX files the archive has not taken yet must stay (only while this node archives).
        archiver = self.archiver
        return archiver.hwm(name) if archiver is not None else None

    def _archive_notify(self, db: object, header: object) -> None:
        archiver = self.archiver
        if archiver is not None:
            archiver.notify(getattr(db, "name", None))

    def _archive_snapshot(self, name: str) -> Path | None:
        """A snapshot LTX file of a database's current state, for the archive to start a
        lineage from when the local files no longer continue it."""
        db = self.store.db(name)
        if db is None or not db.pos.txid:
            return None
        directory = self.config.data.dir / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"archive-snapshot-{name}.ltx"
        with open(path, "wb") as f:
            db.write_snapshot(f)
        return path

    def _serve_fuse(self) -> None:
        try:
            llfuse.main(workers=FUSE_WORKERS, handle_signals=False)
        except BaseException as exc:  # a handler bug: report it from the main thread
            self._fuse_error = exc
            os.kill(os.getpid(), signal.SIGTERM)

    # -- the child ------------------------------------------------------------------------------

    def _commands(self) -> list[ExecCommand]:
        if self.command:
            return [ExecCommand(cmd=shlex.join(self.command))]
        return [c for c in self.config.exec if not c.if_candidate or self.config.lease.candidate]

    def _spawn(self, cmd: str) -> int:
        argv = shlex.split(cmd)
        log.info("starting subprocess: %s", cmd)
        # posix_spawn with an empty signal mask: the child must not inherit our blocked signals.
        return os.posix_spawnp(argv[0], argv, os.environ, setsigmask=())

    def _run_commands(self) -> int | None:
        """Run every command but the last to completion; start the last. Returns an exit code
        if a synchronous command failed."""
        commands = self._commands()
        for c in commands[:-1]:
            pid = self._spawn(c.cmd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code:
                log.error("command %r exited with %d", c.cmd, code)
                return code
        if commands:
            self._child = self._spawn(commands[-1].cmd)
        return None

    # -- the main loop --------------------------------------------------------------------------

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        # llfuse wakes its workers with SIGUSR1 when the session ends; with handle_signals=False
        # nothing catches it and the default action would kill the process.
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        try:
            self.start()
        except LitefsError as exc:
            log.error("%s", exc)
            self.shutdown()
            return exc.exit_code
        if not self.config.skip_sync:
            code = self._wait_ready()
            if code is not None:
                self.shutdown()
                return code
        log.info("connected to cluster, ready")
        if self.proxy is not None:
            self.proxy.start()
            log.info("proxy server listening on: %s", self.proxy.url)
        sd_notify("READY=1")
        code = self._run_commands()
        if code is not None:
            self.shutdown()
            return code
        code = self._wait()
        self.shutdown()
        if self._fuse_error is not None:
            log.error("file system failed: %r", self._fuse_error)
            return EXIT_FATAL
        return code

    def _wait_ready(self) -> int | None:
        """Wait until the node can serve (primary, or caught up with it); an exit code if a
        signal or a dead mount came first."""
        log.info("waiting to connect to cluster")
        while not self.monitor.ready.is_set():
            info = signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 0.05)
            if info is not None and info.si_signo in (signal.SIGINT, signal.SIGTERM):
                return 0
            if self._fuse_thread is not None and not self._fuse_thread.is_alive():
                return EXIT_FATAL
        return None

    def _wait(self) -> int:
        while True:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            if self._fuse_thread is not None and not self._fuse_thread.is_alive():
                log.error("the file system was unmounted from outside")
                return EXIT_FATAL
            if info is None or info.si_signo not in _SIGNALS:
                # Waking after SIGSTOP/SIGCONT can yield a siginfo with no real signal in it.
                continue
            if info.si_signo == signal.SIGCHLD:
                if self._child is None:
                    continue
                pid, status = os.waitpid(self._child, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                    log.info("subprocess exited with %d", code)
                    self._child = None
                    return code
                continue
            log.info("received %s, shutting down", signal.Signals(info.si_signo).name)
            if self._child is None:
                return 0
            os.kill(self._child, info.si_signo)
            _, status = os.waitpid(self._child, 0)
            self._child = None
            return os.waitstatus_to_exitcode(status)

    def shutdown(self) -> None:
        sd_notify("STOPPING=1")
        if self.proxy is not None:
            self.proxy.stop()
        if self.archiver is not None:
            self.archiver.stop(flush=True, timeout=10)
            self.archiver = None
        self.monitor.stop()
        self.api.stop()
        if self._fuse_thread is not None:
            mount = self.config.fuse.dir
            if not unmount(mount):
                log.info("mount busy; detaching it lazily")
                unmount(mount, lazy=True)
            self._fuse_thread.join(timeout=30)
            llfuse.close(unmount=False)
            self._fuse_thread = None
        self.store.close()
        metrics.unregister(self._collector)
        sys.stdout.flush()


def make_leaser(config: Config) -> Leaser:
    lease = config.lease
    if lease.type == "consul":
        from litefs.lease.consul import ConsulLeaser

        return ConsulLeaser(lease.consul.url, lease.consul.key, lease.hostname, lease.advertise_url,
                            lease.candidate, ttl=lease.consul.ttl, lock_delay=lease.consul.lock_delay)
    return StaticLeaser(lease.hostname, lease.advertise_url, lease.candidate)
