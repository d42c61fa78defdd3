"""Databases of a node: files, positions, checksums, the commit pipeline and recovery.

Depends on litefs.ltx; knows nothing of FUSE, HTTP or leases.
"""
from litefs.db.database import Database
from litefs.db.kinds import FileKind, Mode
from litefs.db.store import Store, validate_name

__all__ = ["Database", "FileKind", "Mode", "Store", "validate_name"]
