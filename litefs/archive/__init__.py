"""The archive: LTX objects in a bucket (or a directory laid out like one), compacted in levels,
with snapshots and a retention window, and point-in-time restore from it.

- store:   ObjectStore protocol, FileStore, S3Store, store_from_config / store_from_url
- layout:  keys, object metadata, the per-database manifest (docs/archive-layout.md)
- bundle:  level-0 bundles (the LTX files of one upload, back to back)
- plan:    restore planning, restorable window, retention selection (pure functions)
- worker:  ArchiveWorker, the primary's uploader/compactor
- restore: restore(), archive browsing
"""
from litefs.archive.layout import HeadInfo, Layout, Manifest, ObjectEntry
from litefs.archive.plan import Point, RestorePlan, Window, plan_restore, select_retention, window
from litefs.archive.restore import (RestoreResult, describe_database, list_bundles, list_databases,
                                    load_manifest, parse_target_time, parse_txid, restore)
from litefs.archive.store import (FileStore, ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed,
                                  S3Store, StoreUnavailable, store_from_config, store_from_url)
from litefs.archive.worker import ArchiveConflict, ArchiveMetrics, ArchiveWorker, ChainBroken

__all__ = [
    "ArchiveConflict", "ArchiveMetrics", "ArchiveWorker", "ChainBroken", "FileStore", "HeadInfo", "Layout",
    "Manifest", "ObjectEntry", "ObjectInfo", "ObjectNotFound", "ObjectStore", "Point", "PreconditionFailed",
    "RestorePlan", "RestoreResult", "S3Store", "StoreUnavailable", "Window", "describe_database", "list_bundles",
    "list_databases", "load_manifest", "parse_target_time", "parse_txid", "plan_restore", "restore",
    "select_retention",
    "store_from_config", "store_from_url", "window",
]
