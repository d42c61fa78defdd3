"""CRC-64/GO-ISO and the LTX checksums, for the compiled kernels and their twins."""
from __future__ import annotations

import os
import random

import crcmod
import pytest
from hypothesis import given, strategies as st

REFERENCE = crcmod.mkCrcFun(0x1000000000000001B, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)
FLAG = 1 << 63


def test_check_value(kernels):
    assert kernels.crc64.crc64(b"123456789") == 0xB90956C775A41001
    assert kernels.crc64.crc64(b"") == 0


def test_every_length_against_crcmod(kernels):
    rng = random.Random(1)
    buf = rng.randbytes(4096 + 8)
    crc = kernels.crc64.crc64
    # Unaligned starts exercise the byte loop before the 8-byte and folding loops.
    for start in (0, 1, 7):
        view = memoryview(buf)[start:]
        for n in range(0, 4097):
            assert crc(view[:n]) == REFERENCE(bytes(view[:n])), (start, n)


def test_random_large_buffers(kernels):
    rng = random.Random(2)
    for n in (65536, 1 << 20, 3 * (1 << 20) + 13):
        data = rng.randbytes(n)
        assert kernels.crc64.crc64(data) == REFERENCE(data)


def test_incremental_and_combine(kernels):
    c = kernels.crc64
    data = random.Random(3).randbytes(10000)
    for cut in (0, 1, 100, 4096, 9999, 10000):
        a, b = data[:cut], data[cut:]
        assert c.crc64(b, c.crc64(a)) == REFERENCE(data)
        assert c.combine(c.crc64(a), c.crc64(b), c.shift_op(len(b))) == REFERENCE(data)


def test_page_checksum_vectors(kernels):
    c = kernels.crc64
    # reference/litefs.md §1.13 (ltx TestChecksumReader)
    sums = [c.page_checksum(i + 1, bytes([i + 1]) * 512) for i in range(3)]
    assert sums == [0xE4E4AAA102377EEE, 0xC9C9554231044DDD, 0xC2D2001CDFEAA333]
    buf = b"".join(bytes([i + 1]) * 512 for i in range(3))
    assert FLAG | c.pages_xor(buf, 512) == 0xEFFFFFFFECD99000
    assert list(c.page_checksums(buf, 512)) == sums


@pytest.mark.parametrize("page_size,expected", [(1024, 0xE1899B6D587AAAAA), (512, 0x8B87423EEEEEEEEE)])
def test_database_checksum_vectors(kernels, page_size, expected):
    buf = b"2" * page_size + b"3" * page_size
    assert FLAG | kernels.crc64.pages_xor(buf, page_size) == expected


def test_single_page_vector(kernels):
    assert kernels.crc64.page_checksum(1, b"1" * 512) == 0xEB1A999231044DDD


def test_lock_page_vector(kernels):
    """ltx decoder_test WithLockPage: 4 KiB pages 1..lock+10 of 'x', the lock page excluded."""
    c = kernels.crc64
    if kernels.name == "pure":
        pytest.skip("262,155 page checksums take too long in the twin; the kernels are compared elsewhere")
    lock = c.lock_pgno(4096)
    assert lock == 262145
    page = b"x" * 4096
    # Chunks of pages across the lock page exercise page_checksums' own skip.
    chunk = page * 4096
    acc = 0
    for first in range(1, lock + 11, 4096):
        n = min(4096, lock + 11 - first)
        acc ^= c.pages_xor(chunk[:n * 4096], 4096, first)
    assert FLAG | acc == 0xC19B668C376662C7


def test_page_checksums_zero_the_lock_page(kernels):
    c = kernels.crc64
    lock = c.lock_pgno(65536)
    pages = os.urandom(3 * 65536)
    sums = c.page_checksums(pages, 65536, lock - 1)
    assert sums[1] == 0 and sums[0] == c.page_checksum(lock - 1, pages[:65536])
    assert c.pages_xor(pages, 65536, lock - 1) == (sums[0] ^ sums[2]) & ~FLAG


@given(st.binary(max_size=3000), st.integers(1, 2**32 - 1))
def test_page_checksum_matches_reference(data, pgno):
    from litefs import native
    for pure in (False, True):
        c = native.load("crc64", pure=pure)
        assert c.page_checksum(pgno, data) == FLAG | REFERENCE(pgno.to_bytes(4, "big") + data)


def test_compiled_kernel_is_in_use():
    """CI builds the extensions; make sure the default selection really is the compiled one."""
    from litefs import native
    if os.environ.get("LITEFS_REQUIRE_EXTENSIONS") != "1":
        pytest.skip("only meaningful with LITEFS_REQUIRE_EXTENSIONS=1")
    assert native.IMPLEMENTATION == "compiled"
    native.check_compiled()
