"""Prometheus metrics: upstream LiteFS's names (reference/litefs.md §7) and our additions.

Counters are incremented where things happen (prometheus_client values are thread-safe);
state-derived values (positions, LTX file counts, lag) are read from the store at scrape time
by StoreCollector, so they can never go stale. One node per process: the default registry.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from litefs.db.store import Store

DB_WRITES = Counter("litefs_db_database_write_count", "Page writes to database files.", ["db"])
JOURNAL_WRITES = Counter("litefs_db_journal_write_count", "Writes to rollback journals.", ["db"])
WAL_WRITES = Counter("litefs_db_wal_write_count", "Writes to WAL files.", ["db"])
SHM_WRITES = Counter("litefs_db_shm_write_count", "Writes to wal-index (-shm) files.", ["db"])
COMMITS = Counter("litefs_db_commit_count", "Transactions committed on this node (journal, WAL, drop).", ["db"])
LTX_REAPED = Counter("litefs_db_ltx_reap_count", "LTX files removed by retention.", ["db"])
FRAMES_SENT = Counter("litefs_http_frame_send_count", "Replication frames sent, by type.", ["db", "type"])
BYTES_SENT = Counter("litefs_http_stream_bytes_sent", "Replication stream bytes sent.", ["db"])
SNAPSHOTS_SENT = Counter("litefs_http_snapshot_send_count", "Snapshots sent to replicas, by reason.", ["db", "reason"])
REPLICATION_LAG = Histogram(
    "litefs_replication_lag_seconds", "Commit on the primary to apply on this replica (one clock per node).",
    ["db"], buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ROLE_CHANGES = Counter("litefs_role_change_count", "Changes of this node's role, by new role and reason.", ["role", "reason"])


class StoreCollector(Collector):
    def __init__(self, store: "Store", streams: Callable[[], int] | None = None) -> None:
        self.store = store
        self.streams = streams or (lambda: 0)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self.store
        dbs = store.databases()
        yield GaugeMetricFamily("litefs_db_count", "Databases managed by this node.", value=len(dbs))
        yield GaugeMetricFamily("litefs_is_primary", "1 if this node is the primary.", value=int(store.acting_primary))
        streams = self.streams()
        yield GaugeMetricFamily("litefs_subscriber_count", "Connected change subscribers (replica streams).", value=streams)
        yield GaugeMetricFamily("litefs_http_stream_count", "Open /stream connections.", value=streams)
        lag = 0.0 if store.is_primary or not store.primary_timestamp_ms else store.lag_ms() / 1000
        yield GaugeMetricFamily("litefs_lag_seconds", "How far behind the primary this node may be.", value=lag)
        txid = GaugeMetricFamily("litefs_db_txid", "Current TXID.", labels=["db"])
        count = GaugeMetricFamily("litefs_db_ltx_count", "LTX files on disk.", labels=["db"])
        size = GaugeMetricFamily("litefs_db_ltx_bytes", "Bytes of LTX files on disk.", labels=["db"])
        db_lag = GaugeMetricFamily("litefs_db_lag_seconds", "Age of the last applied transaction (replicas).", labels=["db"])
        for db in dbs:
            txid.add_metric([db.name], db.pos.txid)
            files = db.ltx.files()
            count.add_metric([db.name], len(files))
            size.add_metric([db.name], sum(f.size for f in files))
            applied = 0.0
            if not store.is_primary and db.timestamp:
                applied = max(0.0, store.primary_timestamp_ms / 1000 - db.timestamp / 1000)
            db_lag.add_metric([db.name], applied)
        yield from (txid, count, size, db_lag)


def register_store(store: "Store", streams: Callable[[], int] | None = None) -> StoreCollector:
    collector = StoreCollector(store, streams)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    REGISTRY.unregister(collector)
