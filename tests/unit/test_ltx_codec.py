"""The LTX v1 codec: golden files, spec vectors, round trips, rules, twins and fuzzing."""
from __future__ import annotations

import io
import random
from pathlib import Path

import lz4.frame
import pytest
from hypothesis import given, settings, strategies as st

from litefs import ltx, native
from litefs.errors import LTXChecksumError, LTXError
from litefs.ltx.format import CHECKSUM_FLAG, Header, Trailer
from tests.ltxgen import checksum_of, decode, encode, new_chain

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
GOLDEN = TESTDATA / "litefs-v1" / "000000000000000d-000000000000000d.ltx"
GOLDEN_DB = TESTDATA / "litefs-v1" / "database"


def golden_bytes() -> bytes:
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN} is not present")
    return GOLDEN.read_bytes()


def test_golden_file_decodes_and_verifies():
    header, pages, trailer = decode(golden_bytes())
    assert header == Header(flags=0, page_size=4096, commit=10, min_txid=13, max_txid=13,
                            pre_apply_checksum=0x9C74A15B4E4F246C)
    assert sorted(pages) == [1, 7, 8]
    assert trailer == Trailer(0xFE3831A381C602B9, 0x9496A29358326FB5)
    assert ltx.verify_file(GOLDEN) == (header, trailer)
    assert ltx.database_checksum(GOLDEN_DB) == trailer.post_apply_checksum


def test_golden_page_checksums():
    with io.BytesIO(golden_bytes()) as f:
        sums = {p: s for b in ltx.Decoder(f).batches() for p, s in zip(b.pgnos, b.checksums)}
    assert sums == {1: 0xADF3E188CB5DC241, 7: 0xEAF0947B2055D648, 8: 0x9A7407C73D4BB9DA}


def test_golden_file_reencodes_byte_for_byte():
    data = golden_bytes()
    header, pages, trailer = decode(data)
    assert encode(header, pages, trailer.post_apply_checksum) == data


def test_synthetic_vector_636_bytes():
    """reference/litefs.md §1.13: a 512-byte snapshot of page '1'*512 at timestamp 1000."""
    data = encode(Header(page_size=512, commit=1, min_txid=1, max_txid=1, timestamp=1000), {1: b"1" * 512})
    expected = (
        bytes.fromhex("4c545831" "00000000" "00000200" "00000001")
        + bytes.fromhex("0000000000000001" "0000000000000001" "00000000000003e8")
        + bytes(60)
        + bytes.fromhex("00000001") + b"1" * 512 + bytes(4)
        + bytes.fromhex("eb1a999231044ddd" "bab9b3d8b4fa3b31")
    )
    assert len(data) == 636
    assert data == expected


@pytest.mark.parametrize("page_size", [512, 1024, 4096, 65536])
@pytest.mark.parametrize("compress", [False, True])
def test_chain_round_trip(page_size, compress):
    chain = new_chain(page_size, page_size, compress, commits=6)
    for i, data in enumerate(chain.files):
        header, pages, trailer = decode(data)
        assert header.compressed == compress
        assert header.min_txid == i + 1
        assert trailer.post_apply_checksum == checksum_of(chain.states[i], page_size)


@given(
    page_size=st.sampled_from([512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]),
    pgnos=st.sets(st.integers(1, 300), max_size=12),
    compress=st.booleans(),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60)
def test_random_page_sets_round_trip(page_size, pgnos, compress, seed):
    rng = random.Random(seed)
    pages = {p: rng.randbytes(page_size) for p in pgnos}
    commit = max(pgnos, default=1) + rng.randint(0, 3)
    header = Header(flags=int(compress), page_size=page_size, commit=commit, min_txid=5, max_txid=7,
                    timestamp=rng.randint(0, 2**40), pre_apply_checksum=CHECKSUM_FLAG | rng.getrandbits(63),
                    node_id=rng.getrandbits(64))
    post = CHECKSUM_FLAG | rng.getrandbits(63)
    got_header, got_pages, trailer = decode(encode(header, pages, post))
    assert (got_header, got_pages, trailer.post_apply_checksum) == (header, pages, post)


def test_compressed_body_is_one_lz4_frame():
    chain = new_chain(9, 4096, True, commits=1)
    data = chain.files[0]
    dec = lz4.frame.LZ4FrameDecompressor()
    body = dec.decompress(data[100:])
    assert dec.eof and dec.unused_data == data[-16:]
    assert body.endswith(bytes(4)) and len(body) == len(chain.states[0]) * 4100 + 4
    # The file checksum covers the uncompressed bytes: same as the uncompressed encoding.
    header, pages, trailer = decode(data)
    plain = encode(header.replace(flags=0), pages, trailer.post_apply_checksum)
    assert plain[:4] + plain[8:-8] == data[:4] + data[8:100] + body + data[-16:-8]


def test_deletion_file():
    header = Header(page_size=4096, commit=0, min_txid=3, max_txid=3, pre_apply_checksum=CHECKSUM_FLAG | 5)
    data = encode(header, {})
    _, pages, trailer = decode(data)
    assert pages == {} and trailer.post_apply_checksum == CHECKSUM_FLAG
    with pytest.raises(LTXError, match="deletion"):
        encode(header, {}, CHECKSUM_FLAG | 7)
    with pytest.raises(LTXError, match="above the commit"):
        encode(header, {1: bytes(4096)})


@pytest.mark.parametrize("changes,message", [
    (dict(flags=2), "flags"),
    (dict(page_size=1000), "page size"),
    (dict(page_size=256), "page size"),
    (dict(min_txid=0), "minimum TXID is zero"),
    (dict(max_txid=0), "maximum TXID is zero"),
    (dict(min_txid=9, max_txid=8), "above maximum"),
    (dict(wal_offset=-1, wal_size=1), "negative WAL offset"),
    (dict(wal_salt1=1), "salts set without"),
    (dict(wal_offset=32), "offset set without a WAL size"),
    (dict(wal_size=32), "size set without a WAL offset"),
    (dict(min_txid=1, pre_apply_checksum=CHECKSUM_FLAG | 1), "snapshot has a pre-apply"),
    (dict(pre_apply_checksum=0), "pre-apply checksum required"),
    (dict(pre_apply_checksum=5), "flag bit"),
])
def test_header_rules(changes, message):
    base = Header(page_size=4096, commit=2, min_txid=2, max_txid=2, pre_apply_checksum=CHECKSUM_FLAG | 9)
    base.validate()
    bad = base.replace(**changes)
    with pytest.raises(LTXError, match=message):
        bad.validate()
    with pytest.raises(LTXError, match=message):
        ltx.Encoder(io.BytesIO(), bad)
    with pytest.raises(LTXError, match=message):
        ltx.Decoder(io.BytesIO(bad.pack() + bytes(20)))


def test_encoder_page_rules():
    page = bytes(512)
    inc = Header(page_size=512, commit=10, min_txid=2, max_txid=2, pre_apply_checksum=CHECKSUM_FLAG | 1)
    enc = ltx.Encoder(io.BytesIO(), inc)
    enc.encode_page(3, page)
    with pytest.raises(LTXError, match="out of order"):
        enc.encode_page(3, page)
    with pytest.raises(LTXError, match="above the commit"):
        enc.encode_page(11, page)
    with pytest.raises(LTXError, match="post-apply checksum required"):
        enc.close()

    snap = Header(page_size=512, commit=3, min_txid=1, max_txid=1)
    enc = ltx.Encoder(io.BytesIO(), snap)
    with pytest.raises(LTXError, match="not contiguous"):
        enc.encode_page(2, page)
    enc = ltx.Encoder(io.BytesIO(), snap)
    enc.encode_page(1, page)
    with pytest.raises(LTXError, match="ends at page 1"):
        enc.close()
    enc = ltx.Encoder(io.BytesIO(), snap)
    enc.encode_pages([1, 2, 3], page * 3)
    with pytest.raises(LTXError, match="does not match its pages"):
        enc.close(CHECKSUM_FLAG | 1)

    lock = ltx.lock_pgno(65536)
    big = Header(page_size=65536, commit=lock + 1, min_txid=2, max_txid=2, pre_apply_checksum=CHECKSUM_FLAG | 1)
    with pytest.raises(LTXError, match="lock page"):
        ltx.Encoder(io.BytesIO(), big).encode_page(lock, bytes(65536))


def test_snapshot_skips_the_lock_page():
    """A snapshot across 1 GiB is contiguous except for the lock page (64 KiB pages, sparse)."""
    lock = ltx.lock_pgno(65536)
    header = Header(page_size=65536, commit=lock + 1, min_txid=1, max_txid=1)
    page = b"\1" * 65536
    out = io.BytesIO()
    enc = ltx.Encoder(out, header)
    for start in range(1, lock, 1024):
        n = min(1024, lock - start)
        enc.encode_pages(range(start, start + n), page * n)
    enc.encode_page(lock + 1, page)
    trailer = enc.close()
    out.seek(0)
    dec = ltx.Decoder(out)
    assert dec.close() == trailer and dec.page_count == lock


def test_decoder_refuses_what_the_encoder_would():
    """Frames spliced by hand, with a correct file checksum, still fail the page rules."""
    from litefs.native import crc64

    def forge(header: Header, frames: list[tuple[int, bytes]], post: int) -> bytes:
        body = header.pack() + b"".join(p.to_bytes(4, "big") + d for p, d in frames) + bytes(4)
        crc = crc64.crc64(post.to_bytes(8, "big"), crc64.crc64(body))
        return body + post.to_bytes(8, "big") + (CHECKSUM_FLAG | crc).to_bytes(8, "big")

    inc = Header(page_size=512, commit=5, min_txid=2, max_txid=2, pre_apply_checksum=CHECKSUM_FLAG | 1)
    post = CHECKSUM_FLAG | 2
    decode(forge(inc, [(1, bytes(512)), (4, bytes(512))], post))
    for frames, message in [([(4, bytes(512)), (1, bytes(512))], "out of order"),
                            ([(6, bytes(512))], "above the commit")]:
        with pytest.raises(LTXError, match=message):
            decode(forge(inc, frames, post))
    snap = Header(page_size=512, commit=2, min_txid=1, max_txid=1)
    with pytest.raises(LTXError, match="not contiguous"):
        decode(forge(snap, [(2, bytes(512))], post))
    good_post = checksum_of({1: bytes(512), 2: bytes(512)}, 512)
    decode(forge(snap, [(1, bytes(512)), (2, bytes(512))], good_post))
    with pytest.raises(LTXChecksumError, match="snapshot post-apply"):
        decode(forge(snap, [(1, bytes(512)), (2, bytes(512))], good_post ^ 1))


# -- twins -----------------------------------------------------------------------------------

@given(page_size=st.sampled_from([512, 1024, 4096]), n=st.integers(0, 9), seed=st.integers(0, 2**32),
       crc=st.integers(0, 2**64 - 1))
@settings(max_examples=80)
def test_twins_encode_and_decode_identically(page_size, n, seed, crc):
    rng = random.Random(seed)
    pgnos = sorted(rng.sample(range(1, 1000), n))
    data = rng.randbytes(n * page_size)
    compiled, pure = native.load("ltxcodec", pure=False), native.load("ltxcodec", pure=True)
    op = native.crc64.shift_op(4 + page_size)
    a, b = compiled.encode_pages(data, pgnos, page_size, crc, op), pure.encode_pages(data, pgnos, page_size, crc, op)
    assert a == b
    frames = a[0] + compiled.end_frames(0)[0] + b"tail"
    for cut in (len(frames), rng.randint(0, len(frames))):
        assert compiled.decode_frames(frames[:cut], 0, page_size, crc, op) == \
            pure.decode_frames(frames[:cut], 0, page_size, crc, op)


@given(seed=st.integers(0, 2**32), page_size=st.sampled_from([512, 4096]), n=st.integers(0, 20),
       first=st.integers(1, 5000))
@settings(max_examples=80)
def test_twins_diff_and_checksum_identically(seed, page_size, n, first):
    rng = random.Random(seed)
    old = bytearray(rng.randbytes(n * page_size))
    new = bytearray(old)
    for i in rng.sample(range(n), rng.randint(0, n)) if n else []:
        new[i * page_size + rng.randrange(page_size)] ^= 1 + rng.randrange(255)
    extra = rng.randbytes(page_size * rng.randint(0, 2))
    compiled, pure = native.load("pagediff", pure=False), native.load("pagediff", pure=True)
    assert compiled.diff_pages(old, new + extra, page_size, first) == pure.diff_pages(old, new + extra, page_size, first)
    c, p = native.load("crc64", pure=False), native.load("crc64", pure=True)
    assert c.page_checksums(new, page_size, first) == p.page_checksums(new, page_size, first)
    assert c.pages_xor(new, page_size, first) == p.pages_xor(new, page_size, first)


def test_diff_pages_finds_exactly_the_changed_pages(kernels):
    rng = random.Random(5)
    old = rng.randbytes(200 * 4096)
    new = bytearray(old)
    changed = sorted(rng.sample(range(1, 201), 17))
    for p in changed:
        new[(p - 1) * 4096 + rng.randrange(4096)] ^= 0xFF
    pgnos, sums = kernels.pagediff.diff_pages(old, bytes(new), 4096)
    assert list(pgnos) == changed
    assert list(sums) == [kernels.crc64.page_checksum(p, new[(p - 1) * 4096:p * 4096]) for p in changed]


# -- fuzzing: any damage raises LTXError, nothing else, and never hangs -----------------------

def _fuzz_corpus() -> list[bytes]:
    chains = [new_chain(s, ps, c, commits=3) for s, ps, c in [(1, 512, False), (2, 512, True), (3, 1024, True)]]
    return [f for ch in chains for f in ch.files] + [golden_bytes() if GOLDEN.exists() else chains[0].files[0]]


CORPUS = _fuzz_corpus()


def _must_reject(data: bytes) -> None:
    with pytest.raises(LTXError):
        decode(data)


@given(st.sampled_from(CORPUS), st.data())
@settings(max_examples=4000)
def test_fuzz_truncated(original, data):
    _must_reject(original[:data.draw(st.integers(0, len(original) - 1))])


@given(st.sampled_from(CORPUS), st.data())
@settings(max_examples=4000)
def test_fuzz_bit_flipped(original, data):
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(original) * 8 - 1))
        damaged[bit // 8] ^= 1 << (bit % 8)
    if damaged != original:
        _must_reject(bytes(damaged))


@given(st.one_of(st.binary(max_size=2000), st.builds(lambda h, b: h + b, st.sampled_from([c[:100] for c in CORPUS]), st.binary(max_size=3000))))
@settings(max_examples=2500)
def test_fuzz_random(data):
    try:
        decode(data)
    except LTXError:
        pass


@given(pgnos=st.lists(st.integers(1, 70000), max_size=12), last=st.integers(0, 70000),
       commit=st.integers(0, 70000), snapshot=st.booleans())
@settings(max_examples=300)
def test_twins_check_page_numbers_identically(pgnos, last, commit, snapshot):
    lock = 65537  # the lock page of 16 KiB pages; within range so its rule is exercised
    results = []
    for pure in (False, True):
        codec = native.load("ltxcodec", pure=pure)
        try:
            results.append(codec.check_pgnos(pgnos, last, commit, lock, snapshot))
        except ValueError as exc:
            results.append(str(exc))
    assert results[0] == results[1]
