"""The ObjectStore contract, run against both backends."""
from __future__ import annotations

import io
import os

import pytest

from litefs.archive.store import (FileStore, ObjectNotFound, PreconditionFailed, S3Options, S3Store,
                                  store_from_url)
from litefs.errors import ArchiveError


def test_roundtrip(backend, tmp_path):
    s = backend.store
    info = s.put("a/b/one.ltx", b"hello", {"litefs-x": "1", "litefs-y": "two"})
    assert info.size == 5 and info.etag
    assert s.get("a/b/one.ltx") == b"hello"
    data, got = s.read("a/b/one.ltx")
    assert data == b"hello" and got.metadata == {"litefs-x": "1", "litefs-y": "two"}
    h = s.head("a/b/one.ltx")
    assert h is not None and h.size == 5 and h.metadata["litefs-y"] == "two" and h.etag == info.etag
    assert s.head("a/b/none") is None
    with pytest.raises(ObjectNotFound):
        s.get("a/b/none")
    with pytest.raises(ObjectNotFound):
        s.get_to_file("a/b/none", tmp_path / "x")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    s.put("a/c/two.ltx", src, {})
    s.put("a/c/three.ltx", io.BytesIO(b"xyz"), {})
    s.get_to_file("a/c/two.ltx", tmp_path / "dst.bin")
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
    assert s.get_range("a/c/two.ltx", 10, 20) == src.read_bytes()[10:30]
    assert [i.key for i in s.list("a/")] == ["a/b/one.ltx", "a/c/three.ltx", "a/c/two.ltx"]
    assert [i.key for i in s.list("a/c/t")] == ["a/c/three.ltx", "a/c/two.ltx"]
    # StartAfter: only keys sorting after it (how readers find the bundles after a TXID).
    assert [i.key for i in s.list("a/", start_after="a/c/three")] == ["a/c/three.ltx", "a/c/two.ltx"]
    assert [i.key for i in s.list("a/", start_after="a/c/three.ltx")] == ["a/c/two.ltx"]
    assert [i.key for i in s.list("a/c/", start_after="a/b/zzz")] == ["a/c/three.ltx", "a/c/two.ltx"]
    assert s.list_dirs("") == ["a/"]
    assert s.list_dirs("a/") == ["a/b/", "a/c/"]
    s.delete(["a/b/one.ltx", "a/b/missing"])
    assert [i.key for i in s.list("")] == ["a/c/three.ltx", "a/c/two.ltx"]
    assert s.list_dirs("a/") == ["a/c/"]


def test_conditional_writes(backend):
    s = backend.store
    first = s.put("k/manifest.json", b"v1", {}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s.put("k/manifest.json", b"v2", {}, if_none_match=True)
    assert s.get("k/manifest.json") == b"v1"
    second = s.put("k/manifest.json", b"v2", {}, if_match=first.etag)
    with pytest.raises(PreconditionFailed):
        s.put("k/manifest.json", b"v3", {}, if_match=first.etag)  # the ETag moved on
    assert s.get("k/manifest.json") == b"v2"
    s.put("k/manifest.json", b"v3", {}, if_match=second.etag)
    assert s.get("k/manifest.json") == b"v3"


def test_file_store_hides_sidecars_and_temp_files(tmp_path):
    s = FileStore(tmp_path)
    s.put("db/0000/a.ltx", b"x", {"m": "1"})
    (tmp_path / "db" / "0000" / ".b.ltx.tmp.123").write_bytes(b"partial")
    assert [i.key for i in s.list("")] == ["db/0000/a.ltx"]
    assert (tmp_path / "db" / "0000" / ".a.ltx.meta.json").exists()
    with pytest.raises(ArchiveError):
        s.put("db/../x", b"", {})


def test_s3_multipart_upload(moto_server, tmp_path):
    from .conftest import new_bucket

    bucket = new_bucket(moto_server.endpoint)
    s = S3Store(bucket, S3Options(endpoint=moto_server.endpoint, force_path_style=True,
                                  multipart_threshold=6 * 1024 * 1024, part_size=5 * 1024 * 1024,
                                  download_threshold=6 * 1024 * 1024))
    src = tmp_path / "big"
    src.write_bytes(os.urandom(11 * 1024 * 1024))
    s.put("big.ltx", src, {"litefs-a": "b"}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s.put("big.ltx", src, {}, if_none_match=True)
    assert s.head("big.ltx").metadata == {"litefs-a": "b"}
    s.get_to_file("big.ltx", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_store_from_url(tmp_path, aws_env):
    s, prefix = store_from_url(f"file://{tmp_path}/x")
    assert isinstance(s, FileStore) and prefix == ""
    s, prefix = store_from_url("s3://bkt/a/b?endpoint=localhost:9000&region=eu-west-1")
    assert isinstance(s, S3Store) and prefix == "a/b" and s.options.force_path_style
    assert s.options.endpoint == "http://localhost:9000" and s.options.region == "eu-west-1"
    s, prefix = store_from_url("s3://bkt")
    assert prefix == "" and not s.options.force_path_style
    with pytest.raises(ArchiveError):
        store_from_url("s3://bkt/p?bogus=1")
    with pytest.raises(ArchiveError):
        store_from_url("ftp://x/y")


def test_unreachable_s3_is_unavailable(aws_env):
    import socket

    from litefs.archive.store import StoreUnavailable

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = S3Store("b", S3Options(endpoint=f"http://127.0.0.1:{port}", force_path_style=True, max_attempts=1,
                               connect_timeout=1))
    with pytest.raises(StoreUnavailable):
        s.put("x", b"y", {})
    with pytest.raises(StoreUnavailable):
        s.head("x")
