"""The replication wire format of upstream LiteFS (reference/litefs.md §4.2), over HTTP/1.1.

Request body of POST /stream: the replica's position map. Response: a stream of frames, each a
big-endian u32 type and a payload; an LTX frame is followed by the file in u16-length chunks
ending with a zero length. Pure functions and blocking readers; no I/O policy here.
"""
from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from litefs.errors import LitefsError
from litefs.ltx.format import Pos

MAX_CHUNK = 0xFFFF
MAX_NAME = 4096


class ProtocolError(LitefsError):
    http_status = 400


class FrameType(enum.IntEnum):
    LTX = 1
    READY = 2
    END = 3
    DROP_DB = 4  # deprecated upstream: never sent, ignored when received
    HANDOFF = 5
    HWM = 6
    HEARTBEAT = 7


class Reader(Protocol):
    def read(self, n: int) -> bytes: ...


def read_exact(r: Reader, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = r.read(left)
        if not chunk:
            raise ProtocolError(f"stream ended {left} bytes short")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _name(data: bytes, off: int) -> tuple[str, int]:
    if off + 4 > len(data):
        raise ProtocolError("truncated name length")
    (n,) = struct.unpack_from(">I", data, off)
    if n > MAX_NAME or off + 4 + n > len(data):
        raise ProtocolError("bad name length")
    try:
        return data[off + 4:off + 4 + n].decode(), off + 4 + n
    except UnicodeDecodeError:
        raise ProtocolError("name is not UTF-8") from None


def encode_pos_map(positions: dict[str, Pos]) -> bytes:
    out = [struct.pack(">I", len(positions))]
    for name in sorted(positions):
        raw = name.encode()
        pos = positions[name]
        out.append(struct.pack(">I", len(raw)) + raw + struct.pack(">QQ", pos.txid, pos.checksum))
    return b"".join(out)


def decode_pos_map(data: bytes) -> dict[str, Pos]:
    if len(data) < 4:
        raise ProtocolError("position map too short")
    (count,) = struct.unpack_from(">I", data)
    if count > 100_000:
        raise ProtocolError("position map lists too many databases")
    out, off = {}, 4
    for _ in range(count):
        name, off = _name(data, off)
        if off + 16 > len(data):
            raise ProtocolError("truncated position")
        txid, checksum = struct.unpack_from(">QQ", data, off)
        off += 16
        out[name] = Pos(txid, checksum)
    if off != len(data):
        raise ProtocolError("trailing bytes after the position map")
    return out


def _frame(kind: FrameType, payload: bytes = b"") -> bytes:
    return struct.pack(">I", kind) + payload


def _name_bytes(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw


def ltx_frame_header(name: str) -> bytes:
    return _frame(FrameType.LTX, struct.pack(">Q", 0) + _name_bytes(name))


def ready_frame() -> bytes:
    return _frame(FrameType.READY)


def end_frame() -> bytes:
    return _frame(FrameType.END)


def handoff_frame(lease_id: str) -> bytes:
    return _frame(FrameType.HANDOFF, _name_bytes(lease_id))


def hwm_frame(name: str, txid: int) -> bytes:
    return _frame(FrameType.HWM, struct.pack(">Q", txid) + _name_bytes(name))


def heartbeat_frame(timestamp_ms: int) -> bytes:
    return _frame(FrameType.HEARTBEAT, struct.pack(">q", timestamp_ms))


CHUNK_END = b"\0\0"


def chunks(data: bytes, end: bool = True) -> Iterator[bytes]:
    """The chunked encoding of `data`; with end=False the zero terminator is left for later
    (a file sent in several reads)."""
    view = memoryview(data)
    for i in range(0, len(view), MAX_CHUNK):
        part = view[i:i + MAX_CHUNK]
        yield struct.pack(">H", len(part)) + part
    if end:
        yield CHUNK_END


class ChunkReader:
    """Reads one chunked body from a stream; read() returns b"" at its terminator."""

    def __init__(self, r: Reader) -> None:
        self._r = r
        self._left = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        if not self._left:
            (self._left,) = struct.unpack(">H", read_exact(self._r, 2))
            if not self._left:
                self._done = True
                return b""
        take = self._left if n < 0 else min(n, self._left)
        data = read_exact(self._r, take)
        self._left -= len(data)
        return data

    def drain(self) -> None:
        while self.read(MAX_CHUNK):
            pass


@dataclass
class Frame:
    type: FrameType
    name: str = ""
    txid: int = 0
    timestamp: int = 0
    lease_id: str = ""
    body: ChunkReader | None = None  # LTX frames: the file, to be read before the next frame


def read_frame(r: Reader) -> Frame:
    (raw_type,) = struct.unpack(">I", read_exact(r, 4))
    try:
        kind = FrameType(raw_type)
    except ValueError:
        raise ProtocolError(f"unknown frame type {raw_type}") from None

    def name() -> str:
        (n,) = struct.unpack(">I", read_exact(r, 4))
        if n > MAX_NAME:
            raise ProtocolError("bad name length")
        return read_exact(r, n).decode(errors="replace")

    if kind is FrameType.LTX:
        read_exact(r, 8)  # size: always 0 upstream
        return Frame(kind, name=name(), body=ChunkReader(r))
    if kind is FrameType.HWM:
        (txid,) = struct.unpack(">Q", read_exact(r, 8))
        return Frame(kind, name=name(), txid=txid)
    if kind is FrameType.HEARTBEAT:
        (ts,) = struct.unpack(">q", read_exact(r, 8))
        return Frame(kind, timestamp=ts)
    if kind is FrameType.HANDOFF:
        return Frame(kind, lease_id=name())
    if kind is FrameType.DROP_DB:
        return Frame(kind, name=name())
    return Frame(kind)


def copy_chunks(body: ChunkReader, out: BinaryIO) -> int:
    total = 0
    while data := body.read(MAX_CHUNK):
        out.write(data)
        total += len(data)
    return total
