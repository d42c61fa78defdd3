"""Level-0 bundles: LTX files back to back, split again without an index."""
from __future__ import annotations

import pytest

from litefs.archive.bundle import extract, file_segments, open_segment, write_bundle
from litefs.errors import LTXError
from litefs.ltx.compactor import compact
from litefs.ltx.decoder import Decoder
from litefs.ltx.files import verify_file

from .workload import FakeClock, Workload


@pytest.mark.parametrize("compressed", [False, True])
def test_bundle_splits_into_the_original_files(tmp_path, compressed):
    wl = Workload(tmp_path / "data", "x.db", FakeClock(), seed=4)
    for _ in range(12):
        wl.random_commit()
    files = sorted(wl.ltx_dir.iterdir())[1:]
    if compressed:  # as LiteFS writes them: LZ4 frames, with several blocks for the big ones
        out = []
        for p in files:
            q = tmp_path / f"c{p.name}"
            with open(q, "wb") as f:
                compact(f, [p], compress=True)
            out.append(q)
        files = out
    bundle = tmp_path / "b.ltxs"
    with open(bundle, "wb") as f:
        assert write_bundle(f, files) == sum(p.stat().st_size for p in files)
    segs = file_segments(bundle)
    assert [s.length for s in segs] == [p.stat().st_size for p in files]
    assert [s.header.min_txid for s in segs] == list(range(2, 13))
    with open(bundle, "rb") as f:
        for seg, p in zip(segs, files):
            assert Decoder(open_segment(f, seg)).close() == verify_file(p)[1]
    parts = extract(bundle, tmp_path, "x")
    assert [open(a, "rb").read() for a in parts] == [p.read_bytes() for p in files]
    data = bundle.read_bytes()
    (tmp_path / "short.ltxs").write_bytes(data[:-5])
    with pytest.raises(LTXError, match="truncated"):
        file_segments(tmp_path / "short.ltxs")
    (tmp_path / "junk.ltxs").write_bytes(data + b"junk" * 40)
    with pytest.raises(LTXError):
        file_segments(tmp_path / "junk.ltxs")
