"""LTX v1 page-frame serialization: the plain-Python twin of pyx/ltxcodec.pyx."""
from __future__ import annotations

from array import array
from collections.abc import Sequence

from litefs._crc64_py import CHECKSUM_FLAG, combine, crc64

Buffer = bytes | bytearray | memoryview


def encode_pages(data: Buffer, pgnos: Sequence[int], page_size: int, file_crc: int, op: int
                 ) -> tuple[bytes, int, array]:
    view = memoryview(data)
    if len(view) != len(pgnos) * page_size:
        raise ValueError("data holds %d bytes, expected %d pages of %d" % (len(view), len(pgnos), page_size))
    out, sums = bytearray(), array("Q")
    for i, pgno in enumerate(pgnos):
        frame = pgno.to_bytes(4, "big") + bytes(view[i * page_size:(i + 1) * page_size])
        c = crc64(frame)
        file_crc = combine(file_crc, c, op)
        sums.append(CHECKSUM_FLAG | c)
        out += frame
    return bytes(out), file_crc, sums


def encode_pages_into(out: bytearray | memoryview, data: Buffer, pgnos: Sequence[int], page_size: int,
                     file_crc: int, op: int) -> tuple[int, int, array]:
    frames, file_crc, sums = encode_pages(data, pgnos, page_size, file_crc, op)
    if len(out) < len(frames):
        raise ValueError("output buffer too small")
    memoryview(out)[:len(frames)] = frames
    return len(frames), file_crc, sums


def check_pgnos(pgnos: Sequence[int], last: int, commit: int, lock: int, snapshot: bool) -> int:
    for p in pgnos:
        if p <= last:
            raise ValueError(f"page {p} out of order after page {last}")
        if p > commit:
            raise ValueError(f"page {p} is above the commit size {commit}")
        if p == lock:
            raise ValueError(f"page {p} is the lock page")
        if snapshot and p != (last + 2 if last + 1 == lock else last + 1):
            raise ValueError(f"snapshot is not contiguous: page {p} follows {last}")
        last = p
    return last


def end_frames(file_crc: int) -> tuple[bytes, int]:
    return b"\0\0\0\0", crc64(b"\0\0\0\0", file_crc)


def decode_frames(buf: Buffer, pos: int, page_size: int, file_crc: int, op: int
                  ) -> tuple[array, array, array, int, int, bool]:
    view = memoryview(buf)
    n, frame_size = len(view), 4 + page_size
    pgnos, offsets, sums = array("I"), array("Q"), array("Q")
    ended = False
    while n - pos >= 4:
        pgno = int.from_bytes(view[pos:pos + 4], "big")
        if pgno == 0:
            file_crc = crc64(view[pos:pos + 4], file_crc)
            pos += 4
            ended = True
            break
        if n - pos < frame_size:
            break
        c = crc64(view[pos:pos + frame_size])
        file_crc = combine(file_crc, c, op)
        pgnos.append(pgno)
        offsets.append(pos + 4)
        sums.append(CHECKSUM_FLAG | c)
        pos += frame_size
    return pgnos, offsets, sums, file_crc, pos, ended
