"""The archive's bucket layout: object keys, per-object metadata, and the per-database manifest.

    <prefix>/<db>/<level>/<min TXID>-<max TXID>.ltx     level: 4 hex digits, 0000..0009
    <prefix>/<db>/manifest.json

Level 0 holds uploaded batches, 1..8 compactions, 9 snapshots (min TXID 1). TXIDs are 16
lowercase hex digits, so a listing is in TXID order. docs/archive-layout.md is the reader's
version of this file.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from litefs.errors import ArchiveError
from litefs.ltx.format import Header, Trailer

SNAPSHOT_LEVEL = 9
MAX_COMPACTION_LEVEL = 8
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "litefs-archive-manifest"
MANIFEST_VERSION = 1

_OBJECT_NAME = re.compile(r"^([0-9a-f]{4})/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")

# Object metadata (x-amz-meta-* on S3, the sidecar on a file store).
META_FIRST_COMMIT = "litefs-first-commit"
META_LAST_COMMIT = "litefs-last-commit"
META_PRE_APPLY = "litefs-pre-apply-checksum"
META_POST_APPLY = "litefs-post-apply-checksum"
META_FILE_CHECKSUM = "litefs-file-checksum"
META_PAGE_SIZE = "litefs-page-size"
META_COMMIT = "litefs-commit"


def format_time(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with milliseconds: 2025-01-02T03:04:05.678Z."""
    dt = datetime.fromtimestamp(ms // 1000, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def parse_time(text: str) -> int:
    """The inverse of format_time (any RFC 3339 time), in milliseconds."""
    dt = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def hex16(value: int) -> str:
    return "%016x" % value


@dataclass(frozen=True, order=True)
class ObjectEntry:
    """One archived LTX object, as the manifest and the planner see it."""

    min_txid: int
    max_txid: int
    level: int
    first_ts: int  # commit time of min_txid, ms
    last_ts: int  # commit time of max_txid, ms
    pre_apply: int
    post_apply: int
    size: int = 0
    file_checksum: int = 0
    page_size: int = 0
    commit: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def name(self) -> str:
        """The key below the database's prefix: `<level>/<min>-<max>.ltx`."""
        return "%04x/%016x-%016x.ltx" % (self.level, self.min_txid, self.max_txid)

    def metadata(self) -> dict[str, str]:
        return {
            META_FIRST_COMMIT: format_time(self.first_ts),
            META_LAST_COMMIT: format_time(self.last_ts),
            META_PRE_APPLY: hex16(self.pre_apply),
            META_POST_APPLY: hex16(self.post_apply),
            META_FILE_CHECKSUM: hex16(self.file_checksum),
            META_PAGE_SIZE: str(self.page_size),
            META_COMMIT: str(self.commit),
        }

    @classmethod
    def from_metadata(cls, name: str, size: int, meta: dict[str, str]) -> "ObjectEntry":
        level, lo, hi = parse_object_name(name)
        try:
            return cls(
                min_txid=lo, max_txid=hi, level=level,
                first_ts=parse_time(meta[META_FIRST_COMMIT]), last_ts=parse_time(meta[META_LAST_COMMIT]),
                pre_apply=int(meta[META_PRE_APPLY], 16), post_apply=int(meta[META_POST_APPLY], 16),
                size=size, file_checksum=int(meta.get(META_FILE_CHECKSUM, "0"), 16),
                page_size=int(meta.get(META_PAGE_SIZE, "0")), commit=int(meta.get(META_COMMIT, "0")),
            )
        except (KeyError, ValueError) as exc:
            raise ArchiveError(f"{name}: missing or invalid object metadata ({exc})") from None

    @classmethod
    def from_ltx(cls, level: int, header: Header, trailer: Trailer, size: int,
                 first_ts: int | None = None) -> "ObjectEntry":
        return cls(
            min_txid=header.min_txid, max_txid=header.max_txid, level=level,
            first_ts=header.timestamp if first_ts is None else first_ts, last_ts=header.timestamp,
            pre_apply=header.pre_apply_checksum, post_apply=trailer.post_apply_checksum, size=size,
            file_checksum=trailer.file_checksum, page_size=header.page_size, commit=header.commit,
        )

    def matches(self, header: Header, trailer: Trailer) -> str | None:
        """Why an LTX file is not this object, or None if it is."""
        checks = (
            ("min TXID", self.min_txid, header.min_txid),
            ("max TXID", self.max_txid, header.max_txid),
            ("pre-apply checksum", self.pre_apply, header.pre_apply_checksum),
            ("post-apply checksum", self.post_apply, trailer.post_apply_checksum),
        )
        for what, want, got in checks:
            if want != got:
                return f"{what} is {got:016x}, the manifest says {want:016x}"
        if self.file_checksum and self.file_checksum != trailer.file_checksum:
            return f"file checksum is {trailer.file_checksum:016x}, the manifest says {self.file_checksum:016x}"
        return None

    def to_json(self) -> dict:
        return {
            "min": hex16(self.min_txid), "max": hex16(self.max_txid),
            "firstCommit": format_time(self.first_ts), "lastCommit": format_time(self.last_ts),
            "preApply": hex16(self.pre_apply), "postApply": hex16(self.post_apply),
            "fileChecksum": hex16(self.file_checksum), "size": self.size,
            "pageSize": self.page_size, "commit": self.commit,
        }

    @classmethod
    def from_json(cls, level: int, d: dict) -> "ObjectEntry":
        return cls(
            min_txid=int(d["min"], 16), max_txid=int(d["max"], 16), level=level,
            first_ts=parse_time(d["firstCommit"]), last_ts=parse_time(d["lastCommit"]),
            pre_apply=int(d["preApply"], 16), post_apply=int(d["postApply"], 16),
            size=int(d.get("size", 0)), file_checksum=int(d.get("fileChecksum", "0"), 16),
            page_size=int(d.get("pageSize", 0)), commit=int(d.get("commit", 0)),
        )


def parse_object_name(name: str) -> tuple[int, int, int]:
    """`<level>/<min>-<max>.ltx` -> (level, min, max)."""
    m = _OBJECT_NAME.match(name)
    if not m:
        raise ArchiveError(f"{name}: not an archive object name (<level>/<min>-<max>.ltx)")
    level, lo, hi = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)
    if level > SNAPSHOT_LEVEL or lo == 0 or lo > hi:
        raise ArchiveError(f"{name}: not an archive object name")
    return level, lo, hi


def is_object_name(name: str) -> bool:
    try:
        parse_object_name(name)
        return True
    except ArchiveError:
        return False


@dataclass(frozen=True)
class Layout:
    """Where things live under an archive prefix ("" for the bucket's root)."""

    prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))

    @property
    def root(self) -> str:
        return self.prefix + "/" if self.prefix else ""

    def db_prefix(self, db: str) -> str:
        if not db or "/" in db or db in (".", "..") or db.startswith("."):
            raise ArchiveError(f"invalid database name {db!r}")
        return f"{self.root}{db}/"

    def object_key(self, db: str, entry: ObjectEntry) -> str:
        return self.db_prefix(db) + entry.name

    def manifest_key(self, db: str) -> str:
        return self.db_prefix(db) + MANIFEST_NAME

    def name_of(self, db: str, key: str) -> str:
        """A key below the database's prefix, relative to it."""
        p = self.db_prefix(db)
        if not key.startswith(p):
            raise ArchiveError(f"{key}: not below {p}")
        return key[len(p):]


@dataclass
class Manifest:
    """Everything about one database's archive, so browsing and planning need one GET.

    It is written after the objects it names exist and before anything it no longer names is
    deleted, so a reader never sees it name a missing object (unless something outside the
    worker deleted one; restore re-plans around that).
    """

    db: str
    objects: list[ObjectEntry] = field(default_factory=list)
    compacted_at: dict[int, int] = field(default_factory=dict)  # level -> boundary (ms) last compacted
    snapshot_at: int | None = None  # snapshot boundary (ms) last handled
    deleting: list[str] = field(default_factory=list)  # names scheduled for deletion (garbage)
    generation: int = 0
    writer: str = ""
    updated: int = 0

    def copy(self) -> "Manifest":
        return replace(self, objects=list(self.objects), compacted_at=dict(self.compacted_at),
                       deleting=list(self.deleting))

    def level(self, level: int) -> list[ObjectEntry]:
        return sorted(o for o in self.objects if o.level == level)

    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    def add(self, entry: ObjectEntry) -> None:
        if entry.name not in self.names():
            self.objects.append(entry)
            self.objects.sort(key=lambda o: (o.level, o.min_txid, o.max_txid))

    def remove(self, entries: Iterable[ObjectEntry]) -> None:
        doomed = {e.name for e in entries}
        self.objects = [o for o in self.objects if o.name not in doomed]

    def to_json(self, extra: dict | None = None) -> dict:
        levels: dict[str, list] = {}
        for o in sorted(self.objects, key=lambda o: (o.level, o.min_txid, o.max_txid)):
            levels.setdefault("%04x" % o.level, []).append(o.to_json())
        d = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "db": self.db,
            "generation": self.generation,
            "writer": self.writer,
            "updated": format_time(self.updated),
        }
        if extra:
            d.update(extra)
        d.update({
            "compactedAt": {"%04x" % k: format_time(v) for k, v in sorted(self.compacted_at.items())},
            "snapshotAt": format_time(self.snapshot_at) if self.snapshot_at is not None else None,
            "levels": levels,
            "deleting": sorted(self.deleting),
        })
        return d

    def dumps(self, extra: dict | None = None) -> bytes:
        return (json.dumps(self.to_json(extra), indent=1, sort_keys=False) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, db: str | None = None) -> "Manifest":
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
                raise ValueError("not a litefs archive manifest")
            if d.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported manifest version {d.get('version')!r}")
            objects = [ObjectEntry.from_json(int(level, 16), o)
                       for level, items in d.get("levels", {}).items() for o in items]
            m = cls(
                db=str(d["db"]), objects=objects,
                compacted_at={int(k, 16): parse_time(v) for k, v in d.get("compactedAt", {}).items()},
                snapshot_at=parse_time(d["snapshotAt"]) if d.get("snapshotAt") else None,
                deleting=[str(k) for k in d.get("deleting", [])],
                generation=int(d.get("generation", 0)), writer=str(d.get("writer", "")),
                updated=parse_time(d["updated"]) if d.get("updated") else 0,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(f"corrupt manifest{' for ' + db if db else ''}: {exc}") from None
        if db is not None and m.db != db:
            raise ArchiveError(f"manifest names database {m.db!r}, expected {db!r}")
        for o in m.objects:
            if o.level > SNAPSHOT_LEVEL or o.min_txid < 1 or o.min_txid > o.max_txid:
                raise ArchiveError(f"corrupt manifest for {m.db}: bad object {o.name}")
        m.objects.sort(key=lambda o: (o.level, o.min_txid, o.max_txid))
        return m
