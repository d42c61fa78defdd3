"""Merges contiguous LTX files into one, streaming (ltx v0.3.14 compactor semantics).

The newest version of each page wins, pages above the final commit are dropped, the header
takes its pre-apply checksum from the first input and its commit, timestamp and post-apply
checksum from the last; a snapshot first input yields a snapshot. Gaps in TXIDs and breaks in
the checksum chain are refused before anything is written.
"""
from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import BinaryIO

from litefs.errors import LTXError
from litefs.ltx.decoder import Decoder
from litefs.ltx.encoder import Encoder
from litefs.ltx.format import HEADER_SIZE, TRAILER_SIZE, Header, Trailer

# Pages are re-encoded in batches to keep per-call overhead low.
_BATCH_PAGES = 64


def read_ends(path: str | os.PathLike) -> tuple[Header, Trailer]:
    """Header and trailer of a file without decoding it (both are at fixed places)."""
    with open(path, "rb") as f:
        header = Header.unpack(f.read(HEADER_SIZE))
        header.validate()
        f.seek(0, os.SEEK_END)
        if f.tell() < HEADER_SIZE + 4 + TRAILER_SIZE:
            raise LTXError(f"{os.fspath(path)}: file too short")
        f.seek(-TRAILER_SIZE, os.SEEK_END)
        return header, Trailer.unpack(f.read(TRAILER_SIZE))


def check_chain(ends: Sequence[tuple[Header, Trailer]], names: Sequence[str]) -> None:
    if not ends:
        raise LTXError("nothing to compact")
    first = ends[0][0]
    for i in range(1, len(ends)):
        (ph, pt), (h, _) = ends[i - 1], ends[i]
        if h.page_size != first.page_size:
            raise LTXError(f"{names[i]}: page size {h.page_size} differs from {first.page_size}")
        if h.min_txid != ph.max_txid + 1:
            raise LTXError(f"{names[i]}: TXID gap: {ph.max_txid:016x} is followed by {h.min_txid:016x}")
        if h.pre_apply_checksum != pt.post_apply_checksum:
            raise LTXError(f"{names[i]}: checksum chain broken: pre-apply {h.pre_apply_checksum:016x} "
                           f"!= previous post-apply {pt.post_apply_checksum:016x}")


def _pages(dec: Decoder, rank: int) -> Iterator[tuple[int, int, memoryview]]:
    # Negative rank so that, for equal pgnos, the newest input sorts first in the heap.
    for pgno, page in dec.pages():
        yield pgno, -rank, page


def compact(out: BinaryIO, paths: Sequence[str | os.PathLike], *, compress: bool = True,
            timestamp: int | None = None) -> tuple[Header, Trailer]:
    names = [os.fspath(p) for p in paths]
    ends = [read_ends(p) for p in paths]
    check_chain(ends, names)
    first, last = ends[0][0], ends[-1][0]
    header = Header(
        flags=1 if compress else 0, page_size=first.page_size, commit=last.commit,
        min_txid=first.min_txid, max_txid=last.max_txid,
        timestamp=last.timestamp if timestamp is None else timestamp,
        pre_apply_checksum=first.pre_apply_checksum,
    )
    with ExitStack() as stack:
        decoders = [Decoder(stack.enter_context(open(p, "rb"))) for p in paths]
        enc = Encoder(out, header)
        batch_pgnos: list[int] = []
        batch: list[bytes] = []
        last_pgno = 0
        for pgno, _, page in heapq.merge(*(_pages(d, i) for i, d in enumerate(decoders))):
            if pgno == last_pgno or pgno > header.commit:
                continue  # an older version of a page already written, or truncated away
            last_pgno = pgno
            batch_pgnos.append(pgno)
            batch.append(bytes(page))
            if len(batch) >= _BATCH_PAGES:
                enc.encode_pages(batch_pgnos, b"".join(batch))
                batch_pgnos, batch = [], []
        if batch:
            enc.encode_pages(batch_pgnos, b"".join(batch))
        for name, dec, (_, trailer) in zip(names, decoders, ends):
            if dec.close() != trailer:
                raise LTXError(f"{name}: trailer changed while compacting")
        out_trailer = enc.close(ends[-1][1].post_apply_checksum)
    return header, out_trailer
