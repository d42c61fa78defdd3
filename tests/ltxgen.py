"""Builders for LTX test material: random databases and chains of LTX files that evolve them."""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from litefs import ltx
from litefs.ltx.format import CHECKSUM_FLAG, FLAG_COMPRESS_LZ4, Header, lock_pgno


def encode(header: Header, pages: dict[int, bytes], post_apply: int | None = None) -> bytes:
    out = io.BytesIO()
    enc = ltx.Encoder(out, header)
    for pgno in sorted(pages):
        enc.encode_page(pgno, pages[pgno])
    enc.close(post_apply)
    return out.getvalue()


def decode(data: bytes) -> tuple[Header, dict[int, bytes], ltx.Trailer]:
    f = io.BytesIO(data)
    dec = ltx.Decoder(f)
    pages = {pgno: bytes(page) for pgno, page in dec.pages()}
    assert dec.trailer is not None
    if f.read(1):
        raise ltx.decoder.LTXError("unexpected data after the trailer")
    return dec.header, pages, dec.trailer


def sqlite_header(page_size: int) -> bytes:
    return b"SQLite format 3\0" + (1 if page_size == 65536 else page_size).to_bytes(2, "big")


def checksum_of(pages: dict[int, bytes], page_size: int) -> int:
    from litefs.native import crc64
    acc = 0
    lock = lock_pgno(page_size)
    for pgno, data in pages.items():
        if pgno != lock:
            acc ^= crc64.page_checksum(pgno, data)
    return CHECKSUM_FLAG | (acc & ~CHECKSUM_FLAG)


@dataclass
class Chain:
    """A simulated database and the LTX files (as bytes) that produced each of its states."""

    page_size: int
    compress: bool
    rng: random.Random
    pages: dict[int, bytes] = field(default_factory=dict)
    files: list[bytes] = field(default_factory=list)
    states: list[dict[int, bytes]] = field(default_factory=list)
    txid: int = 0
    checksum: int = 0

    def commit(self, changed: dict[int, bytes], commit: int, timestamp: int | None = None) -> bytes:
        if 1 in changed:  # keep page 1 a SQLite header so file-level tools can read the page size
            changed[1] = sqlite_header(self.page_size) + changed[1][18:]
        new = {p: d for p, d in self.pages.items() if p <= commit}
        new.update({p: d for p, d in changed.items() if p <= commit})
        post = checksum_of(new, self.page_size)
        self.txid += 1
        header = Header(
            flags=FLAG_COMPRESS_LZ4 if self.compress else 0, page_size=self.page_size, commit=commit,
            min_txid=self.txid, max_txid=self.txid, timestamp=timestamp or 1000 * self.txid,
            pre_apply_checksum=0 if self.txid == 1 else self.checksum,
        )
        data = encode(header, {p: d for p, d in (new if self.txid == 1 else changed).items() if p <= commit}, post)
        self.pages, self.checksum = new, post
        self.files.append(data)
        self.states.append(dict(new))
        return data

    def random_commit(self) -> bytes:
        ps, rng = self.page_size, self.rng
        size = len(self.pages)
        if not size:
            commit = rng.randint(1, 12)
            return self.commit({p: rng.randbytes(ps) for p in range(1, commit + 1)}, commit)
        commit = max(1, size + rng.choice((-2, -1, 0, 0, 0, 1, 3)))
        changed = {p: rng.randbytes(ps) for p in rng.sample(range(1, commit + 1), rng.randint(1, min(commit, 5)))}
        for p in range(size + 1, commit + 1):  # growth writes every new page, as SQLite does
            changed.setdefault(p, rng.randbytes(ps))
        return self.commit(changed, commit)

    def database(self, index: int = -1) -> bytes:
        state = self.states[index]
        n = max(state) if state else 0
        return b"".join(state.get(p, bytes(self.page_size)) for p in range(1, n + 1))


def new_chain(seed: int, page_size: int = 512, compress: bool = False, commits: int = 5) -> Chain:
    chain = Chain(page_size, compress, random.Random(seed))
    for _ in range(commits):
        chain.random_commit()
    return chain
