"""Streaming LTX v1 encoder: writes a file page by page, never holding it all in memory.

Not thread-safe: one encoder belongs to one writer.
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import BinaryIO

import lz4.frame

from litefs.errors import LTXError
from litefs.ltx.format import CHECKSUM_FLAG, Header, Trailer
from litefs.native import crc64, ltxcodec

# Frames are built and compressed in batches of about 64 KiB: large enough that per-call
# overhead vanishes, small enough that every buffer comes from the heap. Buffers above glibc's
# mmap threshold (128 KiB) are fresh mappings each time, and page faults then cost more than
# the encoding itself.
_BATCH = 64 * 1024
# Uncompressed files are built in a scratch buffer the encoder reuses, so batches can be big.
_RAW_BATCH = 1024 * 1024


def lz4_compressor() -> lz4.frame.LZ4FrameCompressor:
    """The LZ4 frame settings LiteFS uses: 64 KiB blocks, fast level, content checksum."""
    return lz4.frame.LZ4FrameCompressor(
        block_size=lz4.frame.BLOCKSIZE_MAX64KB, compression_level=0, content_checksum=True,
        auto_flush=False,
    )


class Encoder:
    """Encodes one LTX file onto `out`.

    Pages must be given in ascending order, none above `header.commit`, never the lock page;
    a snapshot (min TXID 1) must carry every page 1..commit except the lock page. The XOR of the
    page checksums written so far is kept in `pages_xor`, so callers can derive a snapshot's
    post-apply checksum without a second pass.
    """

    def __init__(self, out: BinaryIO, header: Header) -> None:
        header.validate()
        self.header = header
        self._out = out
        raw = header.pack()
        out.write(raw)
        self._crc = crc64.crc64(raw)
        self._op = crc64.shift_op(4 + header.page_size)
        self._lock = header.lock_pgno
        self._last_pgno = 0
        self.page_count = 0
        self.pages_xor = 0
        self._compressor = lz4_compressor() if header.compressed else None
        self._scratch: bytearray | None = None
        if self._compressor is not None:
            out.write(self._compressor.begin())
        self.trailer: Trailer | None = None

    def encode_page(self, pgno: int, data: bytes | bytearray | memoryview) -> int:
        """Append one page; returns its page checksum."""
        return self.encode_pages((pgno,), data)[0]

    def encode_pages(self, pgnos: Sequence[int], data: bytes | bytearray | memoryview) -> array:
        """Append pages given back to back in `data`; returns their page checksums."""
        if self.trailer is not None:
            raise LTXError("encoder already closed")
        hdr = self.header
        try:
            self._last_pgno = ltxcodec.check_pgnos(pgnos, self._last_pgno, hdr.commit, self._lock, hdr.is_snapshot)
        except ValueError as exc:
            raise LTXError(str(exc)) from None
        ps = hdr.page_size
        view = memoryview(data)
        sums = array("Q")
        if self._compressor is None:
            per_batch = max(_RAW_BATCH // ps, 1)
            if self._scratch is None:
                self._scratch = bytearray(per_batch * (ps + 4))
            out = memoryview(self._scratch)
            for i in range(0, len(pgnos), per_batch):
                n, self._crc, part = ltxcodec.encode_pages_into(
                    out, view[i * ps:(i + per_batch) * ps], pgnos[i:i + per_batch], ps, self._crc, self._op)
                self._out.write(out[:n])
                sums.extend(part)
        else:
            per_batch = max(_BATCH // ps, 1)
            for i in range(0, len(pgnos), per_batch):
                frames, self._crc, part = ltxcodec.encode_pages(
                    view[i * ps:(i + per_batch) * ps], pgnos[i:i + per_batch], ps, self._crc, self._op)
                self._out.write(self._compressor.compress(frames))
                sums.extend(part)
        self.pages_xor ^= crc64.xor_fold(sums)
        self.page_count += len(pgnos)
        return sums

    def close(self, post_apply_checksum: int | None = None) -> Trailer:
        """Finish the file. A snapshot's post-apply checksum is computed when not given."""
        if self.trailer is not None:
            return self.trailer
        hdr = self.header
        if hdr.is_snapshot:
            expected = hdr.commit - 1 if hdr.commit == self._lock else hdr.commit
            if self._last_pgno != expected:
                raise LTXError(f"snapshot ends at page {self._last_pgno}, expected {expected}")
            computed = CHECKSUM_FLAG | self.pages_xor
            if post_apply_checksum is None:
                post_apply_checksum = computed
            elif post_apply_checksum != computed:
                raise LTXError(f"snapshot post-apply checksum {post_apply_checksum:016x} does not match its pages ({computed:016x})")
        if hdr.commit == 0 and post_apply_checksum is None:
            post_apply_checksum = CHECKSUM_FLAG
        if post_apply_checksum is None:
            raise LTXError("post-apply checksum required for a non-snapshot file")
        terminator, self._crc = ltxcodec.end_frames(self._crc)
        if self._compressor is not None:
            self._out.write(self._compressor.compress(terminator))
            self._out.write(self._compressor.flush())
        else:
            self._out.write(terminator)
        crc = crc64.crc64(post_apply_checksum.to_bytes(8, "big"), self._crc)
        trailer = Trailer(post_apply_checksum, CHECKSUM_FLAG | crc)
        trailer.validate(hdr)
        self._out.write(trailer.pack())
        self.trailer = trailer
        return trailer
