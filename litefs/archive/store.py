"""Object stores the archive writes to: a directory laid out like a bucket, and S3.

Both backends hold the same keys (see docs/archive-layout.md), so a file archive copied into a
bucket (with its metadata) restores the same way. Every store method raises:

* ObjectNotFound      - the key does not exist;
* PreconditionFailed  - a conditional write lost (the key exists, or the ETag moved on);
* StoreUnavailable    - a transient failure (connection refused, timeout, 5xx, I/O error):
                        callers back off and retry, nothing is lost;
* ArchiveError        - anything permanent (no such bucket, access denied, bad credentials).

FileStore keeps an object's metadata in a hidden sidecar next to it, `.<name>.meta.json`
(`{"metadata": {...}, "etag": md5, "size": n}`); names starting with "." never show up in
listings, so temp files and sidecars are invisible. Writes are atomic (temp file, fsync,
rename, fsync of the directory); `if_none_match` uses link(2), which fails when the name exists;
`if_match` compares the sidecar's ETag under an exclusive flock on `<root>/.lock`.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, Union, runtime_checkable

from litefs.errors import ArchiveError
from litefs.fsutil import fsync_dir

log = logging.getLogger(__name__)

Body = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]

_COPY_CHUNK = 1024 * 1024


class ObjectNotFound(ArchiveError):
    """The key does not exist in the store."""


class PreconditionFailed(ArchiveError):
    """A conditional write was refused: the object exists or changed since it was read."""


class StoreUnavailable(ArchiveError):
    """A transient store failure; retry later, with backoff."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""
    metadata: dict[str, str] | None = None  # None: not returned by this call (e.g. S3 LIST)
    mtime: float | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """What the archive needs from a bucket. Keys are '/'-separated, listing order is key order."""

    description: str

    def put(self, key: str, body: Body, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo: ...

    def get(self, key: str) -> bytes: ...

    def read(self, key: str) -> tuple[bytes, ObjectInfo]: ...

    def get_to_file(self, key: str, path: str | os.PathLike) -> ObjectInfo: ...

    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Keys starting with prefix, in key order; with start_after, only keys sorting after it."""
        ...

    def list_dirs(self, prefix: str = "") -> list[str]: ...

    def delete(self, keys: Iterable[str]) -> None: ...


def _body_size(body: Body) -> int | None:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    if isinstance(body, (str, os.PathLike)):
        return os.path.getsize(body)
    return None


# ---------------------------------------------------------------------------------------------
# FileStore


class FileStore:
    """A directory laid out exactly like the bucket."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.description = f"file://{self.root}"
        self._tlock = threading.Lock()

    # -- paths
    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ArchiveError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.meta.json")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialises writers: a thread lock in this process, an flock across processes."""
        with self._tlock:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    @staticmethod
    def _unavailable(op: str, key: str, exc: OSError) -> ArchiveError:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return ArchiveError(f"{op} {key}: {exc.strerror}")
        return StoreUnavailable(f"{op} {key}: {exc.strerror or exc}")

    # -- writes
    def put(self, key: str, body: Body, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        path = self._path(key)
        tag = uuid.uuid4().hex[:12]
        tmp = path.with_name(f".{path.name}.tmp.{tag}")
        side_tmp = path.with_name(f".{path.name}.meta.tmp.{tag}")
        try:
            with self._lock():
                path.parent.mkdir(parents=True, exist_ok=True)
                if if_match is not None:
                    current = self.head(key)
                    if current is None or current.etag != if_match:
                        raise PreconditionFailed(f"{key}: ETag changed (expected {if_match})")
                if if_none_match and path.exists():
                    raise PreconditionFailed(f"{key}: object already exists")
                md5 = hashlib.md5()
                size = 0
                with open(tmp, "wb") as out:
                    for chunk in _chunks(body):
                        md5.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                etag = md5.hexdigest()
                with open(side_tmp, "w", encoding="utf-8") as out:
                    json.dump({"metadata": dict(metadata or {}), "etag": etag, "size": size}, out)
                    out.flush()
                    os.fsync(out.fileno())
                # The sidecar goes first: a crash between the renames leaves a stray sidecar
                # (ignored), never an object without its metadata.
                os.replace(side_tmp, self._sidecar(path))
                if if_none_match:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise PreconditionFailed(f"{key}: object already exists") from None
                    os.unlink(tmp)
                else:
                    os.replace(tmp, path)
                fsync_dir(path.parent)
            st = path.stat()
            return ObjectInfo(key, size, etag, dict(metadata or {}), st.st_mtime)
        except OSError as exc:
            raise self._unavailable("put", key, exc) from None
        finally:
            for p in (tmp, side_tmp):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
                except OSError:
                    pass

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        try:
            with self._lock():
                dirs = set()
                for key in keys:
                    path = self._path(key)
                    for p in (path, self._sidecar(path)):
                        try:
                            os.unlink(p)
                        except FileNotFoundError:
                            pass
                    dirs.add(path.parent)
                for d in dirs:
                    fsync_dir(d)
                    # Empty directories vanish, as prefixes do in a bucket.
                    while d != self.root and d.is_relative_to(self.root):
                        try:
                            d.rmdir()
                        except OSError:
                            break
                        d = d.parent
        except OSError as exc:
            raise self._unavailable("delete", keys[0], exc) from None

    # -- reads
    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        meta: dict[str, str] = {}
        etag = ""
        try:
            with open(self._sidecar(path), encoding="utf-8") as f:
                side = json.load(f)
            if side.get("size") == st.st_size:
                meta = {str(k): str(v) for k, v in side.get("metadata", {}).items()}
                etag = str(side.get("etag", ""))
        except (OSError, ValueError):
            pass
        if not etag:  # no sidecar: derive one from the bytes
            etag = _md5_file(path)
        return ObjectInfo(key, st.st_size, etag, meta, st.st_mtime)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            return self._info(key, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unavailable("head", key, exc) from None

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
            return data, self._info(key, path)
        except FileNotFoundError:
            raise ObjectNotFound(f"{key}: no such object") from None
        except OSError as exc:
            raise self._unavailable("get", key, exc) from None

    def get(self, key: str) -> bytes:
        return self.read(key)[0]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError:
            raise ObjectNotFound(f"{key}: no such object") from None
        except OSError as exc:
            raise self._unavailable("get", key, exc) from None

    def get_to_file(self, key: str, path: str | os.PathLike) -> ObjectInfo:
        src = self._path(key)
        try:
            with open(src, "rb") as f, open(path, "wb") as out:
                shutil.copyfileobj(f, out, _COPY_CHUNK)
            return self._info(key, src)
        except FileNotFoundError as exc:
            if exc.filename == os.fspath(src):
                raise ObjectNotFound(f"{key}: no such object") from None
            raise
        except OSError as exc:
            raise self._unavailable("get", key, exc) from None

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        after = start_after.encode() if start_after else None
        start = self.root.joinpath(*base.split("/")) if base else self.root
        keys: list[tuple[str, Path]] = []
        try:
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, self.root)
                rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                for name in filenames:
                    if name.startswith("."):
                        continue
                    key = rel + name
                    if key.startswith(prefix):
                        keys.append((key, Path(dirpath, name)))
        except OSError as exc:
            raise self._unavailable("list", prefix, exc) from None
        keys.sort(key=lambda kp: kp[0].encode())
        if after is not None:
            keys = [kp for kp in keys if kp[0].encode() > after]
        for key, path in keys:
            try:
                yield self._info(key, path)
            except FileNotFoundError:
                continue  # deleted while listing

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Immediate 'sub-directories' of `prefix` (which is "" or ends with "/") holding objects."""
        out = set()
        for info in self.list(prefix):
            rest = info.key[len(prefix):]
            if "/" in rest:
                out.add(prefix + rest.split("/", 1)[0] + "/")
        return sorted(out)


def _md5_file(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
            md5.update(chunk)
    return md5.hexdigest()


def _chunks(body: Body) -> Iterator[bytes]:
    if isinstance(body, (bytes, bytearray, memoryview)):
        yield bytes(body)
        return
    if isinstance(body, (str, os.PathLike)):
        with open(body, "rb") as f:
            yield from iter(lambda: f.read(_COPY_CHUNK), b"")
        return
    yield from iter(lambda: body.read(_COPY_CHUNK), b"")


# ---------------------------------------------------------------------------------------------
# S3Store


@dataclass
class S3Options:
    endpoint: str = ""
    region: str = ""
    force_path_style: bool = False
    max_attempts: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    multipart_threshold: int = 64 * 1024 * 1024
    part_size: int = 16 * 1024 * 1024
    download_threshold: int = 16 * 1024 * 1024
    extra: dict = field(default_factory=dict)


class S3Store:
    """An S3 bucket (AWS or any S3-compatible endpoint) through boto3.

    Credentials come from boto3's standard chain (environment, shared config, instance roles).
    A custom endpoint turns on path-style addressing unless told otherwise, and request/response
    checksums "when required", which S3-compatible stores need. Conditional writes use
    If-None-Match: * and If-Match: <etag> (AWS S3 since 2024; moto, MinIO and others too).
    """

    def __init__(self, bucket: str, options: S3Options | None = None, **kwargs) -> None:
        import boto3
        from botocore.config import Config

        opts = options or S3Options(**kwargs)
        self.bucket = bucket
        self.options = opts
        cfg: dict = {
            "retries": {"mode": "standard", "max_attempts": max(1, opts.max_attempts)},
            "connect_timeout": opts.connect_timeout,
            "read_timeout": opts.read_timeout,
            "max_pool_connections": 32,
        }
        if opts.force_path_style:
            cfg["s3"] = {"addressing_style": "path"}
        if opts.endpoint:
            cfg["request_checksum_calculation"] = "when_required"
            cfg["response_checksum_validation"] = "when_required"
        region = opts.region or ("us-east-1" if opts.endpoint else None)
        session = boto3.session.Session()
        if region is None and session.region_name is None:
            region = "us-east-1"
        self.client = session.client("s3", endpoint_url=opts.endpoint or None, region_name=region,
                                     config=Config(**cfg))
        where = f" at {opts.endpoint}" if opts.endpoint else ""
        self.description = f"s3://{bucket}{where}"

    # -- error mapping
    def _error(self, op: str, key: str, exc: Exception) -> ArchiveError:
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                         HTTPClientError, NoCredentialsError)

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            msg = err.get("Message", "") or code
            if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
                return ObjectNotFound(f"{key}: no such object")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return PreconditionFailed(f"{key}: {msg}")
            if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout", "InternalError"):
                return StoreUnavailable(f"s3 {op} {key}: {code or status}: {msg}")
            return ArchiveError(f"s3 {op} s3://{self.bucket}/{key}: {code or status}: {msg}")
        if isinstance(exc, NoCredentialsError):
            return ArchiveError(f"s3 {op}: no AWS credentials found (environment, shared config or instance role)")
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return StoreUnavailable(f"s3 {op} {key}: {exc}")
        if isinstance(exc, BotoCoreError):
            return StoreUnavailable(f"s3 {op} {key}: {exc}")
        if isinstance(exc, OSError):
            return StoreUnavailable(f"s3 {op} {key}: {exc}")
        return ArchiveError(f"s3 {op} {key}: {exc}")

    def _call(self, op: str, key: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error(op, key, exc) from None

    # -- writes
    def put(self, key: str, body: Body, metadata: dict[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        meta = dict(metadata or {})
        cond: dict[str, str] = {}
        if if_none_match:
            cond["IfNoneMatch"] = "*"
        if if_match is not None:
            cond["IfMatch"] = if_match if if_match.startswith('"') else f'"{if_match}"'
        size = _body_size(body)
        if size is not None and size > self.options.multipart_threshold and isinstance(body, (str, os.PathLike)):
            etag = self._put_multipart(key, body, meta, cond)
        else:
            if isinstance(body, (str, os.PathLike)):
                with open(body, "rb") as f:
                    resp = self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=key,
                                      Body=f, ContentLength=size, Metadata=meta, **cond)
            else:
                data = body if isinstance(body, (bytes, bytearray, memoryview)) else body.read()
                resp = self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=key,
                                  Body=bytes(data), Metadata=meta, **cond)
                size = len(data)
            etag = resp.get("ETag", "").strip('"')
        return ObjectInfo(key, size or 0, etag, meta)

    def _put_multipart(self, key: str, path: str | os.PathLike, meta: dict[str, str], cond: dict[str, str]) -> str:
        up = self._call("put", key, self.client.create_multipart_upload, Bucket=self.bucket, Key=key, Metadata=meta)
        upload_id = up["UploadId"]
        parts = []
        try:
            with open(path, "rb") as f:
                n = 1
                while True:
                    chunk = f.read(self.options.part_size)
                    if not chunk:
                        break
                    r = self._call("put", key, self.client.upload_part, Bucket=self.bucket, Key=key,
                                   UploadId=upload_id, PartNumber=n, Body=chunk)
                    parts.append({"ETag": r["ETag"], "PartNumber": n})
                    n += 1
            resp = self._call("put", key, self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                              UploadId=upload_id, MultipartUpload={"Parts": parts}, **cond)
            return resp.get("ETag", "").strip('"')
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # best effort; lifecycle rules clean up the rest
                pass
            raise

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            resp = self._call("delete", batch[0], self.client.delete_objects, Bucket=self.bucket,
                              Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                e = errors[0]
                raise StoreUnavailable(f"s3 delete {e.get('Key')}: {e.get('Code')}: {e.get('Message')} "
                                       f"({len(errors)} key(s) not deleted)")

    # -- reads
    def head(self, key: str) -> ObjectInfo | None:
        try:
            r = self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(r.get("ContentLength", 0)), r.get("ETag", "").strip('"'),
                          {k.lower(): v for k, v in r.get("Metadata", {}).items()},
                          r["LastModified"].timestamp() if r.get("LastModified") else None)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        r = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=key)
        try:
            data = r["Body"].read()
        except Exception as exc:
            raise self._error("get", key, exc) from None
        info = ObjectInfo(key, len(data), r.get("ETag", "").strip('"'),
                          {k.lower(): v for k, v in r.get("Metadata", {}).items()},
                          r["LastModified"].timestamp() if r.get("LastModified") else None)
        return data, info

    def get(self, key: str) -> bytes:
        return self.read(key)[0]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        r = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=key,
                       Range=f"bytes={start}-{start + length - 1}")
        try:
            return r["Body"].read()
        except Exception as exc:
            raise self._error("get", key, exc) from None

    def get_to_file(self, key: str, path: str | os.PathLike) -> ObjectInfo:
        r = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=key)
        size = int(r.get("ContentLength", 0))
        info = ObjectInfo(key, size, r.get("ETag", "").strip('"'),
                          {k.lower(): v for k, v in r.get("Metadata", {}).items()})
        if size > self.options.download_threshold:
            r["Body"].close()
            # Large objects: parallel ranged GETs through s3transfer.
            from boto3.s3.transfer import TransferConfig
            self._call("get", key, self.client.download_file, Bucket=self.bucket, Key=key, Filename=os.fspath(path),
                       Config=TransferConfig(multipart_threshold=self.options.download_threshold,
                                             multipart_chunksize=8 * 1024 * 1024, max_concurrency=8))
            return info
        try:
            with open(path, "wb") as out:
                for chunk in r["Body"].iter_chunks(_COPY_CHUNK):
                    out.write(chunk)
        except OSError:
            raise
        except Exception as exc:
            raise self._error("get", key, exc) from None
        if os.path.getsize(path) != size:
            raise StoreUnavailable(f"s3 get {key}: short read ({os.path.getsize(path)} of {size} bytes)")
        return info

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            elif start_after:
                kw["StartAfter"] = start_after
            r = self._call("list", prefix, self.client.list_objects_v2, **kw)
            for o in r.get("Contents", []):
                yield ObjectInfo(o["Key"], int(o.get("Size", 0)), o.get("ETag", "").strip('"'), None,
                                 o["LastModified"].timestamp() if o.get("LastModified") else None)
            if not r.get("IsTruncated"):
                return
            token = r.get("NextContinuationToken")

    def list_dirs(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kw["ContinuationToken"] = token
            r = self._call("list", prefix, self.client.list_objects_v2, **kw)
            out.extend(p["Prefix"] for p in r.get("CommonPrefixes", []))
            if not r.get("IsTruncated"):
                return sorted(out)
            token = r.get("NextContinuationToken")


# ---------------------------------------------------------------------------------------------
# Opening a store from config or URL


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def store_from_config(cfg) -> tuple[ObjectStore, str]:
    """(store, prefix) for an ArchiveConfig."""
    if cfg.type == "s3":
        endpoint = cfg.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        opts = S3Options(endpoint=cfg.endpoint, region=cfg.region,
                         force_path_style=bool(cfg.force_path_style or endpoint))
        return S3Store(cfg.bucket, opts), cfg.prefix.strip("/")
    if cfg.type == "file":
        return FileStore(cfg.path), cfg.prefix.strip("/")
    raise ArchiveError(f'archive.type is "{cfg.type}": no archive configured')


def store_from_url(url: str) -> tuple[ObjectStore, str]:
    """(store, prefix) for `file:///dir` or `s3://bucket/prefix?endpoint=...&region=...&force-path-style=true`."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ArchiveError(f"{url}: file URLs name a local directory (file:///path)")
        path = unquote(parts.path)
        if not path:
            raise ArchiveError(f"{url}: missing directory")
        return FileStore(path), ""
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ArchiveError(f"{url}: missing bucket (s3://bucket/prefix)")
        q = {k.replace("_", "-").lower(): v[-1] for k, v in parse_qs(parts.query).items()}
        known = {"endpoint", "region", "force-path-style", "forcepathstyle"}
        unknown = set(q) - known
        if unknown:
            raise ArchiveError(f"{url}: unknown query parameter(s): {', '.join(sorted(unknown))}")
        endpoint = q.get("endpoint", "")
        if endpoint and "://" not in endpoint:
            local = endpoint.startswith(("localhost", "127.", "[::1]"))
            endpoint = ("http://" if local else "https://") + endpoint
        style = q.get("force-path-style", q.get("forcepathstyle"))
        env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        path_style = _truthy(style) if style is not None else bool(endpoint or env_endpoint)
        opts = S3Options(endpoint=endpoint, region=q.get("region", ""), force_path_style=path_style)
        return S3Store(parts.netloc, opts), unquote(parts.path).strip("/")
    raise ArchiveError(f"{url}: unsupported archive URL (expected s3://bucket/prefix or file:///dir)")



def open_archive(config_path: str | None = None, url: str | None = None):
    """(store, Layout) from `--url` or a config file's `archive:` section (default config paths if neither)."""
    from litefs.archive.layout import Layout
    from litefs.config import find_config_path, load_config

    if config_path and url:
        raise ArchiveError("give either --config or --url, not both")
    if url:
        store, prefix = store_from_url(url)
        return store, Layout(prefix)
    cfg = load_config(find_config_path(config_path))
    if cfg.archive.type == "none":
        raise ArchiveError(f"{cfg.path}: archive.type is none: no archive configured")
    store, prefix = store_from_config(cfg.archive)
    return store, Layout(prefix)
