"""Fixtures for the archive tests: a real S3-compatible server (moto's server mode on
127.0.0.1, started here), a fresh bucket per test, and the `backend` fixture that runs a test
against both the file and the s3 backends."""
from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from litefs.archive.layout import Layout
from litefs.archive.store import FileStore, ObjectStore, S3Options, S3Store
from litefs.config import ArchiveConfig, ArchiveLevel

PREFIX = "backups/prod"


class MotoServer:
    """moto's ThreadedMotoServer on a fixed loopback port, so it can be stopped and brought back."""

    def __init__(self, port: int | None = None) -> None:
        from moto.server import ThreadedMotoServer

        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.running = True
        self.endpoint = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.running:
            self._server.stop()
            self.running = False

    def restart(self) -> None:
        from moto.server import ThreadedMotoServer

        self.stop()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.running = True


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "test")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "test")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/dev/null")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        yield


@pytest.fixture(scope="session")
def moto_server(aws_env) -> Iterator[MotoServer]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = MotoServer()
    yield server
    server.stop()


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"litefs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def s3_store(endpoint: str, bucket: str) -> S3Store:
    return S3Store(bucket, S3Options(endpoint=endpoint, force_path_style=True, max_attempts=2,
                                     connect_timeout=2, read_timeout=10))


@dataclass
class Backend:
    kind: str
    store: ObjectStore
    layout: Layout
    url: str
    config: ArchiveConfig
    endpoint: str = ""
    bucket: str = ""

    def archive_config(self, **kw) -> ArchiveConfig:
        import dataclasses
        return dataclasses.replace(self.config, **kw)


def make_config(kind: str, **kw) -> ArchiveConfig:
    base = dict(type=kind, upload_interval=1.0,
                levels=[ArchiveLevel(2.0), ArchiveLevel(6.0), ArchiveLevel(18.0)],
                snapshot_interval=36.0, retention=3600.0, prefix=PREFIX)
    base.update(kw)
    return ArchiveConfig(**base)


def file_backend(root: Path) -> Backend:
    return Backend("file", FileStore(root), Layout(PREFIX), f"file://{root}/{PREFIX}",
                   make_config("file", path=str(root)))


def s3_backend(endpoint: str) -> Backend:
    bucket = new_bucket(endpoint)
    return Backend("s3", s3_store(endpoint, bucket), Layout(PREFIX), f"s3://{bucket}/{PREFIX}?endpoint={endpoint}",
                   make_config("s3", bucket=bucket, endpoint=endpoint, force_path_style=True),
                   endpoint=endpoint, bucket=bucket)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return file_backend(tmp_path / "bucket")
    server: MotoServer = request.getfixturevalue("moto_server")
    return s3_backend(server.endpoint)
