"""The LitefsError hierarchy.

Each class carries the process exit code the CLI uses, the errno the FUSE adapter returns, and
the HTTP status the API answers with, so the edges map errors without knowing their kinds.

Exit codes (documented in the README):
  0 ok · 1 unexpected error · 2 usage or configuration · 3 invalid or corrupt LTX ·
  4 position/checksum mismatch · 5 database recovery refused · 6 archive or restore ·
  7 compiled extension missing · 99 fatal data-path error while mounted (as upstream).
"""
from __future__ import annotations

import errno as _errno


class LitefsError(Exception):
    exit_code = 1
    errno = _errno.EIO
    http_status = 500


class ConfigError(LitefsError):
    """A configuration problem; the message names the key and the file."""

    exit_code = 2
    http_status = 400


class UsageError(LitefsError):
    exit_code = 2
    http_status = 400


class LTXError(LitefsError):
    """An LTX file that is malformed, truncated or fails its checksum."""

    exit_code = 3
    http_status = 400


class LTXChecksumError(LTXError):
    """A file checksum or post-apply checksum that does not match."""


class PositionMismatchError(LitefsError):
    """An LTX file that does not follow the database's current position."""

    exit_code = 4
    http_status = 409


class RecoveryError(LitefsError):
    """Startup recovery found a database it cannot vouch for."""

    exit_code = 5


class DatabaseNotFoundError(LitefsError):
    errno = _errno.ENOENT
    http_status = 404


class ReadOnlyReplicaError(LitefsError):
    """A write on a node that is not the primary."""

    errno = _errno.EACCES
    http_status = 503


class ArchiveError(LitefsError):
    exit_code = 6
    http_status = 502


class RestoreError(ArchiveError):
    """The archive cannot reach the requested point (gap, outside the window, corrupt)."""


class ExtensionError(LitefsError):
    """A compiled extension is missing while LITEFS_REQUIRE_EXTENSIONS=1."""

    exit_code = 7
