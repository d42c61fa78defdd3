"""SQLite's WAL checksum: compiled and plain-Python twins agree, on real WAL files too."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from litefs import native
from litefs.db.wal import WALTracker

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "sqlite-wal"


@given(st.binary(max_size=4096).map(lambda b: b[: len(b) - len(b) % 8]), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.booleans())
def test_twins_agree(data, s0, s1, big_endian):
    compiled, pure = native.load("walsum", pure=False), native.load("walsum", pure=True)
    assert compiled.wal_checksum(data, s0, s1, big_endian) == pure.wal_checksum(data, s0, s1, big_endian)


def test_rejects_partial_words(kernels):
    with pytest.raises(ValueError, match="multiple of 8"):
        kernels.walsum.wal_checksum(b"1234567", 0, 0, False)


def test_real_wal_validates():
    data = (TESTDATA / "ok.wal").read_bytes()
    txs = WALTracker(lambda off, n: data[off:off + n]).scan_existing(len(data))
    assert len(txs) == 2
