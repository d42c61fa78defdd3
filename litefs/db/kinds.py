"""The files of a database and its journal modes."""
from __future__ import annotations

import enum


class FileKind(enum.Enum):
    DATABASE = ""
    JOURNAL = "-journal"
    WAL = "-wal"
    SHM = "-shm"


class Mode(enum.Enum):
    ROLLBACK = "rollback"
    WAL = "wal"
