"""Codec suite: CRC-64, page checksums, LTX encode/decode and page diff against baselines.

Every target is a throughput ratio against a baseline timed interleaved in the same run:

  crc64_vs_zlib            crc64 (compiled) / zlib.crc32, 1 MiB buffers         >= 1.0 (stretch 3)
  crc64_vs_crcmod          crc64 (compiled) / crcmod CRC-64/GO-ISO, 1 MiB        >= 4
  page_checksums_vs_crc64  page_checksums (256 x 4 KiB in one call) / crc64     >= 0.85
  encode_lz4_vs_lz4        LTX encode, LZ4 / lz4.frame.compress, same pages      >= 0.6
  encode_raw_vs_crc64      LTX encode, uncompressed / crc64 of the same pages    >= 0.8
  decode_vs_encode_lz4     decode+verify / encode, LZ4                           >= 2
  decode_vs_encode_raw     decode+verify / encode, uncompressed                  (informational)
  diff_vs_bytes_eq         diff_pages (1 % changed) / `==` on equal buffers      >= 0.8
  pure_*                   plain-Python twins (subprocess, LITEFS_PURE=1)        (informational)
"""
from __future__ import annotations

import io
import os
import random
import sys
from typing import Any

import lz4.frame

from perf.common import MiB, Context, Sink

DESCRIPTION = "CRC-64, page checksums, LTX encode/decode, page diff vs zlib/crcmod/lz4/bytes=="
PAGE_SIZE = 4096
_VARIANTS = {"malloc-tuned": "MALLOC_MMAP_THRESHOLD_=8MiB MALLOC_TRIM_THRESHOLD_=256MiB"}
CHUNK = MiB  # pages are fed to the encoder 1 MiB at a time, as ltx.encode_database does


def make_pages(nbytes: int, seed: int = 1, page_size: int = PAGE_SIZE) -> bytes:
    """Moderately compressible pages: each is half random bytes, half zeros (LZ4 works ~2:1)."""
    rng = random.Random(seed)
    half = page_size // 2
    npages = nbytes // page_size
    rnd = rng.randbytes(npages * half)
    out = bytearray(npages * page_size)
    view = memoryview(out)
    for i in range(npages):
        view[i * page_size:i * page_size + half] = rnd[i * half:(i + 1) * half]
    return bytes(out)


def encode_ltx(data: bytes | memoryview, compressed: bool, out: Any, page_size: int = PAGE_SIZE) -> None:
    """Encode `data` (whole pages) as one snapshot LTX file onto `out`, 1 MiB per encode_pages."""
    from litefs.ltx import Encoder, Header
    from litefs.ltx.format import FLAG_COMPRESS_LZ4
    view = memoryview(data)
    npages = len(view) // page_size
    enc = Encoder(out, Header(flags=FLAG_COMPRESS_LZ4 if compressed else 0, page_size=page_size,
                              commit=npages, min_txid=1, max_txid=1, timestamp=1_700_000_000_000))
    per = max(CHUNK // page_size, 1)
    for start in range(0, npages, per):
        n = min(per, npages - start)
        enc.encode_pages(range(start + 1, start + 1 + n), view[start * page_size:(start + n) * page_size])
    enc.close()


def decode_ltx(blob: bytes) -> None:
    from litefs.ltx import Decoder
    Decoder(io.BytesIO(blob)).close()


def _crc_funcs() -> tuple[Any, Any]:
    import crcmod
    from litefs.native import crc64
    return crc64, crcmod.mkCrcFun(0x1000000000000001B, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------------------------

def bench_crc(ctx: Context) -> dict[str, float]:
    import zlib
    _require_compiled(ctx)
    crc64, crcmod_fn = _crc_funcs()
    pool = [os.urandom(MiB) for _ in range(4)]  # 4 distinct 1 MiB buffers, cycled
    nb = len(pool) * MiB
    if crc64.crc64(b"123456789") != crcmod_fn(b"123456789"):
        raise AssertionError("compiled crc64 disagrees with crcmod on the check string")

    def ours() -> None:
        for b in pool:
            crc64.crc64(b)

    def zlib_crc() -> None:
        for b in pool:
            zlib.crc32(b)

    def crcmod_crc() -> None:
        for b in pool:
            crcmod_fn(b)

    def sums() -> None:
        for b in pool:
            crc64.page_checksums(b, PAGE_SIZE)

    s = ctx.interleave_many({"crc64": ours, "zlib": zlib_crc, "crcmod": crcmod_crc, "sums": sums}, nbytes=nb)
    ctx.report("have_clmul", float(bool(crc64.HAVE_CLMUL)), "bool", note="1 = CRC-64 uses PCLMULQDQ folding")
    ctx.report_ratio("crc64_vs_zlib_crc32", s["crc64"], s["zlib"], baseline="zlib.crc32", target=1.0, stretch=3.0,
                     note=f"1 MiB buffers; pclmul={'yes' if crc64.HAVE_CLMUL else 'no'}")
    ctx.report_ratio("crc64_vs_crcmod", s["crc64"], s["crcmod"], baseline="crcmod", target=4.0,
                     note="1 MiB buffers, crcmod C extension")
    ctx.report_ratio("page_checksums_vs_crc64", s["sums"], s["crc64"], baseline="crc64(1 MiB)", target=0.85,
                     note="256 x 4 KiB pages per call")
    return {"crc64_gbps": s["crc64"].throughput().median}


def bench_ltx(ctx: Context, nbytes: int, variant: str = "") -> dict[str, float]:
    """LTX encode/decode groups. With `variant` (a label for a changed environment, e.g. a
    malloc setting) only the LZ4 group runs, rows get the suffix and no target (informational)."""
    from litefs.native import crc64
    _require_compiled(ctx)
    data = make_pages(nbytes)
    view = memoryview(data)
    sink = Sink(nbytes + nbytes // 8 + MiB)

    blobs = {}
    for comp in (True, False):
        buf = io.BytesIO()
        encode_ltx(data, comp, buf)
        blobs[comp] = buf.getvalue()
        decode_ltx(blobs[comp])  # sanity: what we time must be a valid file
    lz4_ratio = len(data) / len(blobs[True])

    def enc_lz4() -> None:
        sink.rewind()
        encode_ltx(data, True, sink)

    def enc_raw() -> None:
        sink.rewind()
        encode_ltx(data, False, sink)

    def raw_lz4() -> None:  # same bytes, same 1 MiB feed size as the encoder gets
        for off in range(0, nbytes, CHUNK):
            lz4.frame.compress(view[off:off + CHUNK], block_size=lz4.frame.BLOCKSIZE_MAX64KB)

    def raw_lz4_cc() -> None:  # ... with the content checksum the LTX encoder's frame carries
        for off in range(0, nbytes, CHUNK):
            lz4.frame.compress(view[off:off + CHUNK], block_size=lz4.frame.BLOCKSIZE_MAX64KB, content_checksum=True)

    def crc_chunks() -> None:
        for off in range(0, nbytes, CHUNK):
            crc64.crc64(view[off:off + CHUNK])

    blob_lz4, blob_raw = blobs[True], blobs[False]
    mib = nbytes // MiB
    # LZ4 group: encode, the lz4 baseline and decode, round-robin
    s = ctx.interleave_many({"enc": enc_lz4, "lz4": raw_lz4, "lz4cc": raw_lz4_cc, "dec": lambda: decode_ltx(blob_lz4)},
                            nbytes=nbytes, min_sample_s=0)
    if variant:
        ctx.report_ratio(f"encode_lz4_vs_lz4_frame@{variant}", s["enc"], s["lz4"], baseline="lz4.frame.compress",
                         note=f"informational: encode_lz4_vs_lz4_frame with {_VARIANTS.get(variant, variant)}")
        ctx.report_ratio(f"decode_vs_encode_lz4@{variant}", s["dec"], s["enc"], baseline="encode(lz4)",
                         note=f"informational: decode_vs_encode_lz4 with {_VARIANTS.get(variant, variant)}")
        return {}
    ctx.report_ratio("encode_lz4_vs_lz4_frame", s["enc"], s["lz4"], baseline="lz4.frame.compress", target=0.6,
                     note=f"{mib} MiB of 4 KiB pages, half random/half zero (lz4 {lz4_ratio:.2f}:1), "
                          "baseline compresses the same 1 MiB chunks, 64 KiB blocks, no content checksum")
    ctx.report_ratio("encode_lz4_vs_lz4_frame_cc", s["enc"], s["lz4cc"], baseline="lz4.frame.compress(cc)",
                     note="informational: baseline also computes the LZ4 content checksum (xxh32), as the encoder does")
    ctx.report_ratio("decode_vs_encode_lz4", s["dec"], s["enc"], baseline="encode(lz4)", target=2.0,
                     note="decode+verify; TARGET APPLIES TO THIS (compressed) one")
    enc_lz4_gbps = s["enc"].throughput().median
    # uncompressed group: encode, CRC-64 of the same bytes, decode
    s = ctx.interleave_many({"enc": enc_raw, "crc": crc_chunks, "dec": lambda: decode_ltx(blob_raw)},
                            nbytes=nbytes, min_sample_s=0)
    ctx.report_ratio("encode_raw_vs_crc64", s["enc"], s["crc"], baseline="crc64(1 MiB chunks)", target=0.8,
                     note=f"{mib} MiB, uncompressed LTX into a reused buffer")
    ctx.report_ratio("decode_vs_encode_raw", s["dec"], s["enc"], baseline="encode(raw)",
                     note="decode+verify, uncompressed; informational (target is for compressed)")
    return {"enc_lz4_gbps": enc_lz4_gbps, "enc_raw_gbps": s["enc"].throughput().median}


def bench_diff(ctx: Context, nbytes: int = 64 * MiB) -> None:
    from litefs.native import pagediff
    _require_compiled(ctx)
    npages = nbytes // PAGE_SIZE
    old = os.urandom(nbytes)
    same = bytes(bytearray(old))  # distinct object, equal content: `==` must read everything
    assert same is not old and same == old
    rng = random.Random(7)
    changed = sorted(rng.sample(range(npages), npages // 100))
    new_buf = bytearray(old)
    for i in changed:
        new_buf[i * PAGE_SIZE + 100] ^= 0xFF
    new = bytes(new_buf)
    del new_buf
    pgnos, _ = pagediff.diff_pages(old, new, PAGE_SIZE)
    if list(pgnos) != [i + 1 for i in changed]:
        raise AssertionError("diff_pages did not find exactly the changed pages")

    a, b = ctx.interleave(lambda: pagediff.diff_pages(old, new, PAGE_SIZE), lambda: old == same,
                          nbytes=nbytes, min_sample_s=0)
    ctx.report_ratio("diff_pages_vs_bytes_eq", a, b, baseline="bytes ==", target=0.8,
                     note=f"{nbytes // MiB} MiB, {len(changed)} of {npages} pages changed; "
                          "== on equal-content buffers; ratio = t(==)/t(diff)")


# --------------------------------------------------------------------------------------------
# plain-Python twins (informational), run in a child with LITEFS_PURE=1

def bench_pure(ctx: Context, compiled: dict[str, float]) -> None:
    from litefs import native
    if native.IMPLEMENTATION != "pure":
        ctx.note(f"codec   pure-Python probe did not load the twins (impl={native.IMPLEMENTATION})")
    crc_mib, enc_mib = (1, 1) if ctx.quick else (4, 2)
    reps = 3 if ctx.quick else 5  # informational: fewer than MIN_REPS to stay in budget
    buf = os.urandom(crc_mib * MiB)
    data = make_pages(enc_mib * MiB)
    res = {"crc64": ctx.measure(lambda: native.crc64.crc64(buf), reps=reps, nbytes=len(buf))}
    for key, comp in (("enc_raw", False), ("enc_lz4", True)):
        res[key] = ctx.measure(lambda: encode_ltx(data, comp, io.BytesIO()), reps=reps, inner=1, nbytes=len(data))
    note = "plain-Python twin (LITEFS_PURE=1), not interleaved with the compiled run; informational"
    for name, key, ref in (("pure_crc64", "crc64", "crc64_gbps"), ("pure_encode_raw", "enc_raw", "enc_raw_gbps"),
                           ("pure_encode_lz4", "enc_lz4", "enc_lz4_gbps")):
        v = res[key].throughput().median
        ref_v = compiled.get(ref)
        ctx.report(name, v * 1000, "MB/s", baseline="compiled", baseline_value=ref_v * 1000 if ref_v else None,
                   ratio=v / ref_v if ref_v else None, reps=reps, note=note)


def run(ctx: Context) -> None:
    """Each group runs in a fresh process (ctx.run_isolated), so no group's allocations change
    another's results; the compiled groups refuse to run on the twins."""
    compiled = ctx.run_isolated("perf.codec:bench_crc")
    compiled.update(ctx.run_isolated("perf.codec:bench_ltx", nbytes=64 * MiB))  # > L3 (32 MiB here)
    # the same LZ4 group with glibc's mmap threshold pinned at 8 MiB and heap trimming at 256 MiB,
    # so ~1 MiB temporaries are reused from the heap instead of freshly mapped (and page-faulted)
    # on every call: shows how much of the LZ4 encode time is the allocator
    ctx.run_isolated("perf.codec:bench_ltx", nbytes=64 * MiB, variant="malloc-tuned",
                     env={"MALLOC_MMAP_THRESHOLD_": str(8 * MiB), "MALLOC_TRIM_THRESHOLD_": str(256 * MiB)})
    ctx.run_isolated("perf.codec:bench_diff", nbytes=64 * MiB)
    ctx.run_isolated("perf.codec:bench_pure", env={"LITEFS_PURE": "1"}, compiled=compiled)


def _require_compiled(ctx: Context) -> None:
    from litefs import native
    if native.IMPLEMENTATION != "compiled":
        raise SystemExit("codec: litefs.native loaded the plain-Python twins; build the extensions first")


if __name__ == "__main__":  # python -m perf.codec runs just this suite
    from perf.__main__ import main
    sys.exit(main(["codec", *sys.argv[1:]]))
