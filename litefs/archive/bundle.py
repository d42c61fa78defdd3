"""Level-0 bundles: the original LTX files of one upload batch, stored back to back.

A bundle is the plain concatenation of complete LTX files (each exactly as it was on the
node's disk, usually one transaction each), in TXID order. There is no index: every LTX file is
self-delimiting, so `segments()` finds the boundaries by walking the structure without
decompressing anything:

    header (100 bytes)
    LZ4 frame (header, blocks each prefixed by its 4-byte size, end mark, optional checksum)
      - or, uncompressed: (u32 pgno, page) frames up to a zero pgno
    trailer (16 bytes)

Each segment can then be decoded and verified on its own (`open_segment`), so a restore can
stop after any transaction inside a bundle. A bundle of one file is an ordinary LTX file.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from litefs.errors import LTXError
from litefs.ltx.format import HEADER_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE, Header, Trailer

_LZ4_MAGIC = 0x184D2204
_U32 = struct.Struct("<I")
_BE32 = struct.Struct(">I")
_COPY = 1024 * 1024


@dataclass(frozen=True)
class Segment:
    """One LTX file inside a bundle."""

    offset: int
    length: int
    header: Header


def _read(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise LTXError(f"truncated bundle: {what}")
    return data


def _lz4_frame_length(f: BinaryIO, start: int) -> int:
    """Length of the LZ4 frame at `start` (f is positioned there), walking its block sizes."""
    head = _read(f, 6, "LZ4 frame header")
    if _U32.unpack_from(head)[0] != _LZ4_MAGIC:
        raise LTXError(f"bad LZ4 frame magic at offset {start}")
    flg = head[4]
    if flg >> 6 != 1:
        raise LTXError(f"unsupported LZ4 frame version at offset {start}")
    block_checksum = bool(flg & 0x10)
    content_size = bool(flg & 0x08)
    content_checksum = bool(flg & 0x04)
    dict_id = bool(flg & 0x01)
    pos = start + 6 + (8 if content_size else 0) + (4 if dict_id else 0) + 1  # + header checksum byte
    while True:
        f.seek(pos)
        size = _U32.unpack(_read(f, 4, "LZ4 block size"))[0]
        pos += 4
        if size == 0:
            break
        pos += (size & 0x7FFFFFFF) + (4 if block_checksum else 0)
    if content_checksum:
        pos += 4
    return pos - start


def _raw_frames_length(f: BinaryIO, start: int, page_size: int) -> int:
    pos = start
    while True:
        f.seek(pos)
        pgno = _BE32.unpack(_read(f, PAGE_HEADER_SIZE, "page header"))[0]
        pos += PAGE_HEADER_SIZE
        if pgno == 0:
            return pos - start
        pos += page_size


def segments(f: BinaryIO, size: int | None = None) -> list[Segment]:
    """The LTX files of a bundle (f must be seekable); raises LTXError if it is malformed."""
    if size is None:
        f.seek(0, os.SEEK_END)
        size = f.tell()
    out: list[Segment] = []
    pos = 0
    while pos < size:
        f.seek(pos)
        header = Header.unpack(_read(f, HEADER_SIZE, "LTX header"))
        header.validate()
        body = pos + HEADER_SIZE
        if header.compressed:
            n = _lz4_frame_length(f, body)
        else:
            n = _raw_frames_length(f, body, header.page_size)
        end = body + n + TRAILER_SIZE
        if end > size:
            raise LTXError(f"truncated bundle: the LTX file at offset {pos} ends after the object")
        out.append(Segment(pos, end - pos, header))
        pos = end
    if not out:
        raise LTXError("empty bundle")
    return out


def file_segments(path: str | os.PathLike) -> list[Segment]:
    with open(path, "rb") as f:
        return segments(f)


class SegmentReader(io.RawIOBase):
    """Reads [offset, offset + length) of a file object, and nothing beyond."""

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        self._f = f
        self._pos = offset
        self.remaining = length

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.remaining:
            n = self.remaining
        if n == 0:
            return b""
        self._f.seek(self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        self.remaining -= len(data)
        return data

    def readinto(self, b) -> int:  # pragma: no cover - io protocol completeness
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def open_segment(f: BinaryIO, seg: Segment) -> SegmentReader:
    return SegmentReader(f, seg.offset, seg.length)


def trailer_of(f: BinaryIO, seg: Segment) -> Trailer:
    f.seek(seg.offset + seg.length - TRAILER_SIZE)
    return Trailer.unpack(_read(f, TRAILER_SIZE, "LTX trailer"))


def write_bundle(out: BinaryIO, paths: Sequence[str | os.PathLike]) -> int:
    """Concatenate LTX files into a bundle; returns the byte count."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            shutil.copyfileobj(f, out, _COPY)
            total += f.tell()
    return total


def extract(path: str | os.PathLike, dest_dir: str | os.PathLike, stem: str) -> list[str]:
    """Write each LTX file of a bundle to its own file in dest_dir; returns the paths in order."""
    paths = []
    with open(path, "rb") as f:
        for i, seg in enumerate(segments(f)):
            p = os.path.join(dest_dir, f"{stem}.{i:05d}.ltx")
            with open(p, "wb") as out:
                r = open_segment(f, seg)
                while True:
                    chunk = r.read(_COPY)
                    if not chunk:
                        break
                    out.write(chunk)
            paths.append(p)
    return paths


def iter_headers(path: str | os.PathLike) -> Iterator[tuple[Segment, Trailer]]:
    with open(path, "rb") as f:
        for seg in segments(f):
            yield seg, trailer_of(f, seg)


__all__ = ["Segment", "SegmentReader", "extract", "file_segments", "iter_headers", "open_segment", "segments",
           "trailer_of", "write_bundle"]
