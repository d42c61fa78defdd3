"""LTX format version 1: the format, codec, checksums, compaction and whole-file operations.

Depends only on litefs.native (the compiled kernels or their twins) and litefs.errors.
"""
from litefs.ltx.checksum import DatabaseChecksum, database_checksum, sqlite_page_size
from litefs.ltx.compactor import compact, read_ends
from litefs.ltx.decoder import Decoder, PageBatch
from litefs.ltx.encoder import Encoder
from litefs.ltx.files import apply_file, apply_files, encode_database, encode_snapshot, verify_file
from litefs.ltx.format import (
    CHECKSUM_FLAG, FLAG_COMPRESS_LZ4, HEADER_SIZE, TRAILER_SIZE, Header, Pos, Trailer,
    format_filename, lock_pgno, parse_filename,
)

__all__ = [
    "CHECKSUM_FLAG", "FLAG_COMPRESS_LZ4", "HEADER_SIZE", "TRAILER_SIZE", "DatabaseChecksum",
    "Decoder", "Encoder", "Header", "PageBatch", "Pos", "Trailer", "apply_file", "apply_files",
    "compact", "database_checksum", "encode_database", "encode_snapshot", "format_filename",
    "lock_pgno", "parse_filename", "read_ends", "sqlite_page_size", "verify_file",
]
