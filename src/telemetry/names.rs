//! The name of every metric, one constant each, so the code that records a metric, the README
//! table, the Grafana dashboard and the tests that check them all spell it the same way.

/// Gauge, 1, labels `version`: which build runs.
pub const BUILD_INFO: &str = "pgsync_build_info";
/// Gauge, 1 when every index is ready (what `/readyz` answers), else 0.
pub const READY: &str = "pgsync_ready";
/// Gauge per `index`: 1 while this process is the index's leader, 0 while it is a standby.
pub const LEADER: &str = "pgsync_leader";
/// Counter per `index`, `table`, `operation`: changes read from PostgreSQL.
pub const CHANGES_RECEIVED: &str = "pgsync_changes_received_total";
/// Counter per `index`: documents the engine acknowledged as indexed.
pub const DOCUMENTS_INDEXED: &str = "pgsync_documents_indexed_total";
/// Counter per `index`: documents the engine acknowledged as deleted.
pub const DOCUMENTS_DELETED: &str = "pgsync_documents_deleted_total";
/// Counter per `index`: documents the engine (or a plugin) rejected for good.
pub const DOCUMENTS_REJECTED: &str = "pgsync_documents_rejected_total";
/// Counter per `index`: rejected documents recorded in the dead-letter store.
pub const DOCUMENTS_DEAD_LETTERED: &str = "pgsync_documents_dead_lettered_total";
/// Counter per `index`: bulk requests sent.
pub const BULK_REQUESTS: &str = "pgsync_bulk_requests_total";
/// Histogram per `index`: how long a bulk request took, retries included.
pub const BULK_DURATION: &str = "pgsync_bulk_request_duration_seconds";
/// Counter per `index`: bytes of bulk bodies sent (before compression).
pub const BULK_BYTES: &str = "pgsync_bulk_request_bytes_total";
/// Counter per `index`: bulk requests (or their rejected items) sent again.
pub const BULK_RETRIES: &str = "pgsync_bulk_retries_total";
/// Counter per `cause` (`connection`, `status_429`, `status_5xx`, `items`): requests to the
/// engine retried.
pub const ENGINE_RETRIES: &str = "pgsync_engine_retries_total";
/// Histogram per `index`: from the commit in PostgreSQL (wal mode; in notify mode from when the
/// change was read) to the engine's acknowledgement of every document it touched.
pub const END_TO_END: &str = "pgsync_end_to_end_latency_seconds";
/// Gauge per `index`: WAL bytes between the server's position and the slot's confirmed flush
/// position (wal mode).
pub const LAG_BYTES: &str = "pgsync_replication_lag_bytes";
/// Gauge per `index`: seconds since the oldest heartbeat (or change) not yet written to the
/// engine was committed; near 0 when caught up.
pub const LAG_SECONDS: &str = "pgsync_replication_lag_seconds";
/// Gauge per `index`: WAL the slot keeps on the server (current position minus `restart_lsn`).
pub const SLOT_RETAINED_WAL: &str = "pgsync_slot_retained_wal_bytes";
/// Gauge per `index`: 1 while the retained WAL is above `capture.slot_wal_warn_bytes`.
pub const SLOT_WAL_OVER: &str = "pgsync_slot_retained_wal_over_threshold";
/// Gauge per `index`: 1 once PostgreSQL invalidated the slot (`wal_status = 'lost'`).
pub const SLOT_LOST: &str = "pgsync_slot_lost";
/// Gauge per `index`: seconds since the stored checkpoint last moved.
pub const CHECKPOINT_AGE: &str = "pgsync_checkpoint_age_seconds";
/// Gauge per `index`, `stage`: messages waiting in the stage's input.
pub const QUEUE_DEPTH: &str = "pgsync_stage_queue_depth";
/// Gauge per `index`, `stage`: capacity of the stage's input.
pub const QUEUE_CAPACITY: &str = "pgsync_stage_queue_capacity";
/// Histogram per `index`, `stage`: each wait of a sender on the stage's full input
/// (backpressure); its `_sum` is the total time blocked.
pub const BLOCKED: &str = "pgsync_stage_blocked_seconds";
/// Histogram per `index`, `stage`: each unit of work of the stage (a fetch, a bulk request); its
/// `_sum` is the busy time.
pub const BUSY: &str = "pgsync_stage_busy_seconds";
/// Gauge per `index`: root rows the running initial sync has read.
pub const INITIAL_ROWS_DONE: &str = "pgsync_initial_sync_rows_done";
/// Gauge per `index`: root rows the running initial sync expects (PostgreSQL's estimate).
pub const INITIAL_ROWS_EXPECTED: &str = "pgsync_initial_sync_rows_expected";
/// Gauge per `index`: key ranges of the initial sync finished.
pub const INITIAL_RANGES_DONE: &str = "pgsync_initial_sync_ranges_done";
/// Gauge per `index`: key ranges the initial sync was split into.
pub const INITIAL_RANGES_PLANNED: &str = "pgsync_initial_sync_ranges_planned";
/// Counter per `index`, `cause` (the error kind): pipeline restarts after a transient failure.
pub const RESTARTS: &str = "pgsync_restarts_total";
/// Counter per `service`: outages begun (a service unreachable, a stage failed).
pub const OUTAGES: &str = "pgsync_outages_total";

/// Every metric with its type and labels, for the README table and the tests.
pub const ALL: &[(&str, &str, &str)] = &[
    (BUILD_INFO, "gauge", "version"),
    (READY, "gauge", ""),
    (LEADER, "gauge", "index"),
    (CHANGES_RECEIVED, "counter", "index, table, operation"),
    (DOCUMENTS_INDEXED, "counter", "index"),
    (DOCUMENTS_DELETED, "counter", "index"),
    (DOCUMENTS_REJECTED, "counter", "index"),
    (DOCUMENTS_DEAD_LETTERED, "counter", "index"),
    (BULK_REQUESTS, "counter", "index"),
    (BULK_DURATION, "histogram", "index"),
    (BULK_BYTES, "counter", "index"),
    (BULK_RETRIES, "counter", "index"),
    (ENGINE_RETRIES, "counter", "cause"),
    (END_TO_END, "histogram", "index"),
    (LAG_BYTES, "gauge", "index"),
    (LAG_SECONDS, "gauge", "index"),
    (SLOT_RETAINED_WAL, "gauge", "index"),
    (SLOT_WAL_OVER, "gauge", "index"),
    (SLOT_LOST, "gauge", "index"),
    (CHECKPOINT_AGE, "gauge", "index"),
    (QUEUE_DEPTH, "gauge", "index, stage"),
    (QUEUE_CAPACITY, "gauge", "index, stage"),
    (BLOCKED, "histogram", "index, stage"),
    (BUSY, "histogram", "index, stage"),
    (INITIAL_ROWS_DONE, "gauge", "index"),
    (INITIAL_ROWS_EXPECTED, "gauge", "index"),
    (INITIAL_RANGES_DONE, "gauge", "index"),
    (INITIAL_RANGES_PLANNED, "gauge", "index"),
    (RESTARTS, "counter", "index, cause"),
    (OUTAGES, "counter", "service"),
];
