"""The archive's bucket layout: object keys, per-object metadata, and the per-database manifest.

    <prefix>/<db>/0000/<min TXID>-<max TXID>.ltxs    level 0: bundles (the LTX files of one upload)
    <prefix>/<db>/<level>/<min TXID>-<max TXID>.ltx  levels 1..8: compactions, 9: snapshots
    <prefix>/<db>/manifest.json

TXIDs are 16 lowercase hex digits, so a listing is in TXID order. The manifest indexes the
compacted levels and the snapshots; level-0 bundles are found by listing level 0 from a TXID on
(StartAfter), see Layout.l0_start_after. docs/archive-layout.md is the reader's version of
this file.
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
MANIFEST_VERSION = 2
BUNDLE_SUFFIX = ".ltxs"

_OBJECT_NAME = re.compile(r"^([0-9a-f]{4})/([0-9a-f]{16})-([0-9a-f]{16})\.(ltxs?)$")

# Object metadata (x-amz-meta-* on S3, the sidecar on a file store).
META_FIRST_COMMIT = "litefs-first-commit"
META_LAST_COMMIT = "litefs-last-commit"
META_PRE_APPLY = "litefs-pre-apply-checksum"
META_POST_APPLY = "litefs-post-apply-checksum"
META_FILE_CHECKSUM = "litefs-file-checksum"
META_PAGE_SIZE = "litefs-page-size"
META_COMMIT = "litefs-commit"
META_FILES = "litefs-files"


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
    """One archived object, as the manifest and the planner see it.

    Level 0 objects are bundles: `count` LTX files back to back (see bundle.py); their
    first/last times are those of the first and the latest commit inside, pre-apply is the
    first file's and post-apply the last file's.
    """

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
    count: int = 0  # LTX files in a bundle (level 0); 0 otherwise

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def is_bundle(self) -> bool:
        return self.level == 0

    @property
    def name(self) -> str:
        """The key below the database's prefix: `<level>/<min>-<max>.ltx` (`.ltxs` for a bundle)."""
        return "%04x/%016x-%016x.%s" % (self.level, self.min_txid, self.max_txid, "ltxs" if self.level == 0 else "ltx")

    def metadata(self) -> dict[str, str]:
        return {
            META_FIRST_COMMIT: format_time(self.first_ts),
            META_LAST_COMMIT: format_time(self.last_ts),
            META_PRE_APPLY: hex16(self.pre_apply),
            META_POST_APPLY: hex16(self.post_apply),
            META_FILE_CHECKSUM: hex16(self.file_checksum),
            META_PAGE_SIZE: str(self.page_size),
            META_COMMIT: str(self.commit),
            **({META_FILES: str(self.count)} if self.level == 0 else {}),
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
                count=int(meta.get(META_FILES, "0")) if level == 0 else 0,
            )
        except (KeyError, ValueError) as exc:
            raise ArchiveError(f"{name}: missing or invalid object metadata ({exc})") from None

    @classmethod
    def from_ltx(cls, level: int, header: Header, trailer: Trailer, size: int,
                 first_ts: int | None = None, last_ts: int | None = None) -> "ObjectEntry":
        return cls(
            min_txid=header.min_txid, max_txid=header.max_txid, level=level,
            first_ts=header.timestamp if first_ts is None else first_ts,
            last_ts=header.timestamp if last_ts is None else max(last_ts, header.timestamp),
            pre_apply=header.pre_apply_checksum, post_apply=trailer.post_apply_checksum, size=size,
            file_checksum=trailer.file_checksum, page_size=header.page_size, commit=header.commit,
        )

    @classmethod
    def bundle(cls, files: "list[tuple[Header, Trailer]]", size: int) -> "ObjectEntry":
        """The entry of a bundle of LTX files (their headers and trailers, in order)."""
        first, last = files[0], files[-1]
        return cls(
            min_txid=first[0].min_txid, max_txid=last[0].max_txid, level=0,
            first_ts=first[0].timestamp, last_ts=max(h.timestamp for h, _ in files),
            pre_apply=first[0].pre_apply_checksum, post_apply=last[1].post_apply_checksum, size=size,
            file_checksum=last[1].file_checksum, page_size=last[0].page_size, commit=last[0].commit,
            count=len(files),
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
            **({"files": self.count} if self.level == 0 else {}),
        }

    @classmethod
    def from_json(cls, level: int, d: dict) -> "ObjectEntry":
        return cls(
            min_txid=int(d["min"], 16), max_txid=int(d["max"], 16), level=level,
            first_ts=parse_time(d["firstCommit"]), last_ts=parse_time(d["lastCommit"]),
            pre_apply=int(d["preApply"], 16), post_apply=int(d["postApply"], 16),
            size=int(d.get("size", 0)), file_checksum=int(d.get("fileChecksum", "0"), 16),
            page_size=int(d.get("pageSize", 0)), commit=int(d.get("commit", 0)),
            count=int(d.get("files", 0)) if level == 0 else 0,
        )


def parse_object_name(name: str) -> tuple[int, int, int]:
    """`<level>/<min>-<max>.ltx` (`0000/<min>-<max>.ltxs`) -> (level, min, max)."""
    m = _OBJECT_NAME.match(name)
    if not m:
        raise ArchiveError(f"{name}: not an archive object name (<level>/<min>-<max>.ltx)")
    level, lo, hi = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)
    if level > SNAPSHOT_LEVEL or lo == 0 or lo > hi or (m.group(4) == "ltxs") != (level == 0):
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

    def level_prefix(self, db: str, level: int) -> str:
        return self.db_prefix(db) + "%04x/" % level

    def l0_start_after(self, db: str, txid: int) -> str:
        """A StartAfter key: listing level 0 after it yields the bundles whose min TXID is >= txid."""
        return self.level_prefix(db, 0) + "%016x" % txid

    def above_l0(self, db: str) -> str:
        """A StartAfter key that skips level 0 (the compacted levels, snapshots and manifest follow)."""
        return self.db_prefix(db) + "0000/~"

    def name_of(self, db: str, key: str) -> str:
        """A key below the database's prefix, relative to it."""
        p = self.db_prefix(db)
        if not key.startswith(p):
            raise ArchiveError(f"{key}: not below {p}")
        return key[len(p):]


@dataclass(frozen=True)
class HeadInfo:
    """A state of the database named by the manifest: TXID, post-apply checksum, commit time."""

    txid: int
    checksum: int
    time: int

    def to_json(self) -> dict:
        return {"txid": hex16(self.txid), "postApply": hex16(self.checksum), "time": format_time(self.time)}

    @classmethod
    def from_json(cls, d: dict | None) -> "HeadInfo | None":
        if not d:
            return None
        return cls(int(d["txid"], 16), int(d["postApply"], 16), parse_time(d["time"]))


@dataclass
class Manifest:
    """The index of one database's compacted levels and snapshots.

    It names every object of levels 1..9. Level 0 is not listed object by object (a week of
    one-second bundles would make it hundreds of megabytes): `l0_start` says from which TXID on
    the bundles are kept, `l0_head` which bundle was the newest when the manifest was written,
    and readers list level 0 from the TXID they need on (Layout.l0_start_after).

    It is written after the objects it names exist and before anything it no longer names is
    deleted, so a reader never sees it name a missing object (unless something outside the
    worker deleted one; restore re-plans around that).
    """

    db: str
    objects: list[ObjectEntry] = field(default_factory=list)  # levels 1..9
    compacted_at: dict[int, int] = field(default_factory=dict)  # level -> boundary (ms) last compacted
    snapshot_at: int | None = None  # snapshot boundary (ms) last handled
    deleting: list[str] = field(default_factory=list)  # names scheduled for deletion (garbage)
    generation: int = 0
    writer: str = ""
    updated: int = 0
    l0_start: int = 1  # bundles with max TXID below this are garbage
    l0_head: HeadInfo | None = None  # the newest bundle's end when written
    gaps: list[tuple[int, int]] = field(default_factory=list)  # TXID ranges never archived (lineage restarts)

    def copy(self) -> "Manifest":
        return replace(self, objects=list(self.objects), compacted_at=dict(self.compacted_at),
                       deleting=list(self.deleting), gaps=list(self.gaps))

    def level(self, level: int) -> list[ObjectEntry]:
        return sorted(o for o in self.objects if o.level == level)

    def names(self) -> set[str]:
        return {o.name for o in self.objects}

    def add(self, entry: ObjectEntry) -> None:
        if entry.level == 0:
            raise ArchiveError(f"{entry.name}: level-0 bundles are not listed in the manifest")
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
            "l0": {"start": hex16(self.l0_start), "head": self.l0_head.to_json() if self.l0_head else None},
            "gaps": [{"from": hex16(a), "to": hex16(b)} for a, b in self.gaps],
            "compactedAt": {"%04x" % k: format_time(v) for k, v in sorted(self.compacted_at.items())},
            "snapshotAt": format_time(self.snapshot_at) if self.snapshot_at is not None else None,
            "levels": levels,
            "deleting": sorted(self.deleting),
        })
        return d

    def dumps(self, extra: dict | None = None) -> bytes:
        """Indented JSON, except that each object entry is one line (the manifest can be long)."""
        d = self.to_json(extra)
        levels = d.pop("levels")
        deleting = d.pop("deleting")
        text = json.dumps(d, indent=1)
        parts = []
        for level, items in levels.items():
            rows = ",\n".join("   " + json.dumps(o, separators=(",", ":")) for o in items)
            parts.append(f'  "{level}": [\n{rows}\n  ]')
        body = ",\n".join(parts)
        tail = (',\n "levels": {\n' + body + '\n },\n "deleting": ' + json.dumps(deleting) + "\n}")
        return (text[:-2] + tail + "\n").encode()

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
            l0 = d.get("l0") or {}
            m = cls(
                db=str(d["db"]), objects=objects,
                compacted_at={int(k, 16): parse_time(v) for k, v in d.get("compactedAt", {}).items()},
                snapshot_at=parse_time(d["snapshotAt"]) if d.get("snapshotAt") else None,
                deleting=[str(k) for k in d.get("deleting", [])],
                generation=int(d.get("generation", 0)), writer=str(d.get("writer", "")),
                updated=parse_time(d["updated"]) if d.get("updated") else 0,
                l0_start=int(l0.get("start", "1"), 16), l0_head=HeadInfo.from_json(l0.get("head")),
                gaps=[(int(g["from"], 16), int(g["to"], 16)) for g in d.get("gaps", [])],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(f"corrupt manifest{' for ' + db if db else ''}: {exc}") from None
        if db is not None and m.db != db:
            raise ArchiveError(f"manifest names database {m.db!r}, expected {db!r}")
        for o in m.objects:
            if o.level > SNAPSHOT_LEVEL or o.level == 0 or o.min_txid < 1 or o.min_txid > o.max_txid:
                raise ArchiveError(f"corrupt manifest for {m.db}: bad object {o.name}")
        m.objects.sort(key=lambda o: (o.level, o.min_txid, o.max_txid))
        return m
