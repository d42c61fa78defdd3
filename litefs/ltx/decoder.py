"""Streaming LTX v1 decoder: reads incrementally, so a large snapshot never sits in memory.

Every rule the encoder enforces is checked again here (a decoder is the last line before a
file is applied), and any malformed input raises LTXError: never another exception, never a
hang. Not thread-safe: one decoder belongs to one reader.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import lz4.frame

from litefs.errors import LTXChecksumError, LTXError
from litefs.ltx.format import CHECKSUM_FLAG, HEADER_SIZE, TRAILER_SIZE, Header, Trailer
from litefs.native import crc64, ltxcodec

# 64 KiB keeps decompressed chunks on the heap (see encoder._BATCH).
_READ_SIZE = 64 * 1024


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = f.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class _RawBody:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def read(self, n: int) -> bytes:
        return self._f.read(n)

    def finish(self, leftover: bytes) -> bytes:
        """Check the page block ended cleanly; return the trailer's bytes."""
        if len(leftover) > TRAILER_SIZE:
            raise LTXError("unexpected data after the page block")
        return leftover + _read_exact(self._f, TRAILER_SIZE - len(leftover))


class _LZ4Body:
    """The page block as one LZ4 frame; the trailer follows it uncompressed."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._dec = lz4.frame.LZ4FrameDecompressor()

    def read(self, n: int) -> bytes:
        try:
            while not self._dec.eof:
                raw = b""
                if self._dec.needs_input:
                    raw = self._f.read(_READ_SIZE)
                    if not raw:
                        return b""
                out = self._dec.decompress(raw, max_length=n)
                if out:
                    return out
                if not raw and not self._dec.needs_input and not self._dec.eof:
                    raise LTXError("corrupt LZ4 page block: decoder made no progress")
            return b""
        except RuntimeError as exc:  # the lz4 binding's error type for corrupt frames
            raise LTXError(f"corrupt LZ4 page block: {exc}") from None

    def finish(self, leftover: bytes) -> bytes:
        if leftover or self.read(1):
            raise LTXError("expected the LZ4 frame to end after the zero page header")
        if not self._dec.eof:
            raise LTXError("truncated LZ4 page block")
        tail = self._dec.unused_data or b""
        if len(tail) > TRAILER_SIZE:
            return tail[:TRAILER_SIZE]
        return tail + _read_exact(self._f, TRAILER_SIZE - len(tail))


@dataclass
class PageBatch:
    """Consecutive pages of a file: page i is buf[offsets[i]:offsets[i] + page_size]."""

    pgnos: array  # array('I')
    offsets: array
    checksums: array
    buf: bytes
    page_size: int

    def page(self, i: int) -> memoryview:
        start = self.offsets[i]
        return memoryview(self.buf)[start:start + self.page_size]


class Decoder:
    """Decodes one LTX file from `f`, which is read strictly sequentially."""

    def __init__(self, f: BinaryIO) -> None:
        raw = _read_exact(f, HEADER_SIZE)
        self.header = Header.unpack(raw)
        self.header.validate()
        self._crc = crc64.crc64(raw)
        self._op = crc64.shift_op(4 + self.header.page_size)
        self._body = _LZ4Body(f) if self.header.compressed else _RawBody(f)
        self._last_pgno = 0
        self._done = False
        self.pages_xor = 0
        self.page_count = 0
        self.trailer: Trailer | None = None

    def _check_pgnos(self, pgnos: array) -> None:
        hdr = self.header
        try:
            self._last_pgno = ltxcodec.check_pgnos(pgnos, self._last_pgno, hdr.commit, hdr.lock_pgno, hdr.is_snapshot)
        except ValueError as exc:
            raise LTXError(str(exc)) from None

    def batches(self) -> Iterator[PageBatch]:
        """Yield the pages in batches, then read and verify the trailer."""
        if self._done:
            return
        ps = self.header.page_size
        leftover = b""
        ended = False
        while not ended:
            chunk = self._body.read(_READ_SIZE)
            if not chunk:
                raise LTXError("truncated page block")
            buf = leftover + chunk if leftover else chunk
            pgnos, offsets, sums, self._crc, pos, ended = ltxcodec.decode_frames(buf, 0, ps, self._crc, self._op)
            self._check_pgnos(pgnos)
            leftover = buf[pos:]
            if len(pgnos):
                self.pages_xor ^= crc64.xor_fold(sums)
                self.page_count += len(pgnos)
                yield PageBatch(pgnos, offsets, sums, buf, ps)
        self._finish(leftover)

    def pages(self) -> Iterator[tuple[int, memoryview]]:
        """Yield (pgno, page bytes) in file order, then verify the trailer."""
        for batch in self.batches():
            view = memoryview(batch.buf)
            ps = self.header.page_size
            for pgno, off in zip(batch.pgnos, batch.offsets):
                yield pgno, view[off:off + ps]

    def _finish(self, leftover: bytes) -> None:
        hdr = self.header
        trailer = Trailer.unpack(self._body.finish(leftover))
        self._done = True
        trailer.validate(hdr)
        crc = CHECKSUM_FLAG | crc64.crc64(trailer.post_apply_checksum.to_bytes(8, "big"), self._crc)
        if crc != trailer.file_checksum:
            raise LTXChecksumError(f"file checksum mismatch: stored {trailer.file_checksum:016x}, computed {crc:016x}")
        if hdr.is_snapshot:
            expected = hdr.commit - 1 if hdr.commit == hdr.lock_pgno else hdr.commit
            if self._last_pgno != expected:
                raise LTXError(f"snapshot ends at page {self._last_pgno}, expected {expected}")
            if CHECKSUM_FLAG | self.pages_xor != trailer.post_apply_checksum:
                raise LTXChecksumError(
                    f"snapshot post-apply checksum {trailer.post_apply_checksum:016x} does not match "
                    f"its pages ({CHECKSUM_FLAG | self.pages_xor:016x})")
        self.trailer = trailer

    def close(self) -> Trailer:
        """Consume any pages not yet read and verify the file; returns the trailer."""
        for _ in self.batches():
            pass
        assert self.trailer is not None
        return self.trailer
