//! Runtime configuration (`pgsync.toml`), loaded with figment from defaults, the file, PGSync's own
//! environment variables and `PGSYNC_SECTION__KEY` overrides, in that order.

pub mod cloud_id;
mod dotenv;
mod load;
mod output;
mod pgsync_env;
mod postgres;
mod search_auth;
mod secret;
pub mod tls;

pub use dotenv::{environment, read_dotenv};
pub use load::{load, load_with, process_env, Loaded};
pub use output::{OutputConfig, OutputKind, TypesenseSchema};
pub use postgres::{connect, connect_raw, describe_target, PgConnection};
pub use search_auth::AWS_SERVICES;
pub use secret::{mask_url, Secret};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Source database connection.
    pub postgres: PostgresConfig,
    /// Search engine connection.
    pub search: SearchConfig,
    /// Where `schema.json` is.
    pub schema: SchemaConfig,
    /// Where documents go: the search engine, an NDJSON file, or nowhere (benchmarks).
    pub output: OutputConfig,
    /// Stage parallelism, channel capacities and batch sizes.
    pub pipeline: PipelineConfig,
    /// What the documents contain beyond the schema's columns.
    pub documents: DocumentsConfig,
    /// Change capture mode and coalescing.
    pub capture: CaptureConfig,
    /// Where progress through the change stream is stored.
    pub checkpoint: CheckpointConfig,
    /// Logging and progress reporting.
    pub log: LogConfig,
    /// How transient faults are retried.
    pub resilience: ResilienceConfig,
    /// What happens to documents the engine rejects for good.
    pub dead_letter: DeadLetterConfig,
    /// Where PGSync's Python plugins are and how they run.
    pub plugins: PluginsConfig,
    /// Zero-downtime schema migrations.
    pub migration: MigrationConfig,
    /// The Prometheus `/metrics`, `/healthz` and `/readyz` listener, lag heartbeats.
    pub metrics: MetricsConfig,
}

/// Operations: where `/metrics`, `/healthz` and `/readyz` are served, and when the daemon
/// counts as ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the listener (e.g. `0.0.0.0:9187`); off when unset.
    pub listen: Option<String>,
    /// `/readyz` answers 503 once an index lags more than this many seconds behind PostgreSQL.
    pub ready_max_lag_secs: u64,
    /// Seconds between heartbeats written to PostgreSQL (a logical message in wal mode, a row in
    /// the change log in notify mode), so the lag in seconds is true on an idle database too;
    /// 0 writes none.
    pub heartbeat_secs: u64,
    /// Seconds between polls of the slot, the checkpoint and the engine by the daemon's monitor.
    pub poll_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            ready_max_lag_secs: 60,
            heartbeat_secs: 5,
            poll_secs: 2,
        }
    }
}

impl Config {
    /// The configuration for connecting to the read replica (`postgres.read_replica_url` as the
    /// connection URL, everything else the same), when one is configured.
    pub fn read_replica(&self) -> Option<Config> {
        let url = self.postgres.read_replica_url.clone()?;
        let mut c = self.clone();
        c.postgres.url = Some(url);
        c.postgres.read_replica_url = None;
        Some(c)
    }
}

/// Changing the schema: a new physical index is built beside the live one and the alias swapped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// Seconds the replaced physical index is kept after the swap (to compare, or to swap back by
    /// hand) before it is deleted; 0 deletes it at once.
    pub keep_old_secs: u64,
}

/// Retries of transient faults (a service down or restarting, a stage that failed): the daemon
/// restarts the pipeline from the last stored checkpoint after a capped exponential backoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResilienceConfig {
    /// First delay before a restart (milliseconds); doubles per failure, with jitter.
    pub retry_initial_ms: u64,
    /// Longest delay between two restarts (milliseconds).
    pub retry_max_ms: u64,
    /// Give up (exit non-zero) once one outage lasted this long; 0 retries for ever. Applies to
    /// the daemon and to waiting for services at start-up; `run --once` never retries.
    pub give_up_after_secs: u64,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            give_up_after_secs: 0,
        }
    }
}

impl ResilienceConfig {
    /// The give-up time, `None` for ever.
    pub fn give_up_after(&self) -> Option<std::time::Duration> {
        (self.give_up_after_secs > 0)
            .then(|| std::time::Duration::from_secs(self.give_up_after_secs))
    }
}

/// What to do with a document the engine rejects for good (a mapping conflict, a value it cannot
/// parse, a document too large): retrying the same document cannot help.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRejected {
    /// Record it in the dead-letter store and move on (the checkpoint advances).
    #[default]
    DeadLetter,
    /// Stop with an error naming the document and the reason, as PGSync does.
    Fail,
    /// Log it and move on.
    Skip,
}

/// Where dead letters go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterStore {
    /// An index in the same engine, `dead_letter.index` (one entry per document `_id`).
    #[default]
    Index,
    /// NDJSON files under `dead_letter.dir`, one per index.
    File,
    /// Nowhere: rejected documents are only logged (same as `on_rejected = "skip"`).
    Off,
}

/// Rejected documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// `dead_letter`, `fail` or `skip`.
    pub on_rejected: OnRejected,
    /// `index`, `file` or `off`.
    pub store: DeadLetterStore,
    /// Name of the dead-letter index; `{index}` is replaced by the source index.
    pub index: String,
    /// Directory of the NDJSON dead-letter files.
    pub dir: std::path::PathBuf,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            on_rejected: OnRejected::DeadLetter,
            store: DeadLetterStore::Index,
            index: "{index}-dead-letter".into(),
            dir: std::path::PathBuf::from(".pgsync-state/dead-letters"),
        }
    }
}

/// PostgreSQL connection settings. `url` (and its `sslmode`, `sslrootcert`, ... parameters) wins
/// over the separate fields when set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:pass@host:port/db`; the database part is ignored (each index names one).
    pub url: Option<Secret>,
    /// Host name or socket directory.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Password; never printed.
    pub password: Option<Secret>,
    /// libpq's sslmode: `disable`, `allow`, `prefer` (the default when unset), `require`,
    /// `verify-ca` or `verify-full`.
    pub sslmode: Option<String>,
    /// PEM file of the CA certificates to trust, or `system`; libpq's default is
    /// `~/.postgresql/root.crt` when it exists.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) for `cert` authentication; default `~/.postgresql/postgresql.crt`.
    pub sslcert: Option<PathBuf>,
    /// Its unencrypted private key (PEM); default `~/.postgresql/postgresql.key`.
    pub sslkey: Option<PathBuf>,
    /// Seconds to wait for a connection before failing.
    pub connect_timeout_secs: u64,
    /// `work_mem` of every session (e.g. `16MB`), PGSync's PG_WORK_MEM; the server's when unset.
    pub work_mem: Option<String>,
    /// A streaming replica of the same server (`postgres://...`, PGSync's PG_URL_RO or
    /// PG_*_RO): documents are built there, each fetch first waiting until the replica has
    /// replayed the changes it serves. Change capture and everything that writes stay on the
    /// primary.
    pub read_replica_url: Option<Secret>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            connect_timeout_secs: 10,
            read_replica_url: None,
            work_mem: None,
        }
    }
}

/// Which search engine family the URL points at; decides version-specific request shapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Elasticsearch 7, 8 or 9.
    #[default]
    Elasticsearch,
    /// OpenSearch 1, 2 or 3.
    Opensearch,
}

/// Search engine connection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Base URL, e.g. `http://localhost:9200`; several nodes of one cluster comma-separated
    /// (`https://a:9200,https://b:9200`): requests go round-robin and fail over to the next node
    /// when one cannot be reached.
    pub url: String,
    /// Engine family.
    pub engine: Engine,
    /// Basic auth user.
    pub username: Option<String>,
    /// Basic auth password; never printed.
    pub password: Option<Secret>,
    /// API key (`id:key` base64 or the encoded form); never printed.
    pub api_key: Option<Secret>,
    /// PEM file with a CA certificate to trust.
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub insecure_skip_verify: bool,
    /// Per-request timeout.
    pub timeout_secs: u64,
    /// Gzip request bodies (`Content-Encoding: gzip`); PGSync's ELASTICSEARCH_HTTP_COMPRESS.
    pub http_compress: bool,
    /// Elastic Cloud deployment id (`name:base64`); replaces `url` with the deployment's
    /// Elasticsearch endpoint. PGSync's ELASTICSEARCH_CLOUD_ID.
    pub cloud_id: Option<String>,
    /// Bearer token sent as `Authorization: Bearer ...` (OAuth2/JWT realms, service accounts);
    /// never printed. PGSync's ELASTICSEARCH_BEARER_AUTH.
    pub bearer_token: Option<Secret>,
    /// PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Sign every request with AWS SigV4 for this service: `es` (Amazon OpenSearch Service and
    /// Elasticsearch domains) or `aoss` (OpenSearch Serverless). Credentials come from the
    /// standard AWS chain and are refreshed before they expire.
    pub aws_service: Option<String>,
    /// AWS region of the domain (else AWS_REGION / AWS_DEFAULT_REGION).
    pub aws_region: Option<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            url: "http://localhost:9200".into(),
            engine: Engine::Elasticsearch,
            username: None,
            password: None,
            api_key: None,
            ca_cert: None,
            insecure_skip_verify: false,
            timeout_secs: 60,
            http_compress: false,
            cloud_id: None,
            bearer_token: None,
            client_cert: None,
            client_key: None,
            aws_service: None,
            aws_region: None,
        }
    }
}

/// Where the schema file lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaConfig {
    /// Path to `schema.json`, relative to the working directory.
    pub path: PathBuf,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            path: PathBuf::from("schema.json"),
        }
    }
}

/// Stage parallelism and sizes. Every channel between stages is bounded by these numbers, so
/// memory stays bounded whatever the table size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Concurrent document fetchers (PostgreSQL connections building documents).
    pub fetchers: usize,
    /// Concurrent bulk writers.
    pub writers: usize,
    /// Bulk requests in flight per writer.
    pub requests_in_flight: usize,
    /// Capacity, in messages, of each channel between stages.
    pub channel_capacity: usize,
    /// Rows fetched per round trip from a server-side cursor.
    pub fetch_chunk: usize,
    /// Maximum documents per bulk request.
    pub batch_docs: usize,
    /// Maximum bytes per bulk request.
    pub batch_bytes: usize,
    /// Key ranges per fetcher that the initial sync splits the root table into.
    pub ranges_per_fetcher: usize,
    /// Retries of a bulk request on 429, 5xx or connection errors before giving up.
    pub max_retries: u32,
    /// First retry delay; doubles each retry.
    pub retry_backoff_ms: u64,
    /// Longest delay between two retries, whatever the doubling says.
    pub retry_max_backoff_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            fetchers: 2,
            writers: 2,
            requests_in_flight: 2,
            channel_capacity: 8,
            fetch_chunk: 1000,
            batch_docs: 1000,
            batch_bytes: 5 * 1024 * 1024,
            ranges_per_fetcher: 4,
            max_retries: 8,
            retry_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
        }
    }
}

/// Optional document content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentsConfig {
    /// Add PGSync's `_meta` field (`{table: {pk: [values]}}`) to every document.
    pub meta: bool,
}

/// How changes are captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Logical decoding (pgoutput) from a replication slot.
    #[default]
    Wal,
    /// Row triggers writing a change-log table and `pg_notify`.
    Notify,
}

/// Change capture settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// `wal` or `notify`.
    pub mode: CaptureMode,
    /// Longest time a change waits to be coalesced with others.
    pub coalesce_window_ms: u64,
    /// Flush the coalescing window early at this many changes; while the fetchers are all busy,
    /// hold up to this many back so a backlog merges before any document is built.
    pub coalesce_max_changes: usize,
    /// Capacity, in messages, of the channels between coalescer, fetchers and writers while
    /// streaming. Shallow on purpose: a backlog then waits in the coalescer, where repeated
    /// changes to one document merge, not as documents already built.
    pub queue_depth: usize,
    /// Fallback poll of the change log in `notify` mode.
    pub poll_interval_ms: u64,
    /// Prefix of slot and publication names; the database and index are appended.
    pub slot_prefix: String,
    /// Refresh materialized view nodes before rebuilding the documents their base tables'
    /// changes touch (and before an initial sync). Off: the user refreshes them, and each of
    /// their `REFRESH MATERIALIZED VIEW`s rebuilds the documents that read the view.
    pub refresh_materialized_views: bool,
    /// Warn (log line and `pgsync_slot_retained_wal_over_threshold`) once the slot keeps more
    /// WAL than this many bytes; 0 never warns.
    pub slot_wal_warn_bytes: u64,
    /// When PostgreSQL invalidated the slot (`wal_status = 'lost'`, past
    /// `max_slot_wal_keep_size`): `false` stops the daemon with an error saying so; `true` drops
    /// the slot and the checkpoint and re-syncs the index from the current rows.
    pub resync_on_slot_loss: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            mode: CaptureMode::Wal,
            coalesce_window_ms: 20,
            coalesce_max_changes: 5000,
            queue_depth: 1,
            poll_interval_ms: 1000,
            slot_prefix: "pgsync".into(),
            refresh_materialized_views: true,
            slot_wal_warn_bytes: 1 << 30,
            resync_on_slot_loss: false,
        }
    }
}

/// Which checkpoint store to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointStore {
    /// A small file per index under `checkpoint.dir`.
    #[default]
    File,
    /// Redis or Valkey at `checkpoint.redis_url`.
    Redis,
}

/// Checkpoint settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `file` or `redis`.
    pub store: CheckpointStore,
    /// Directory for `file` checkpoints.
    pub dir: PathBuf,
    /// `redis://host:port/db` (`rediss://` for TLS, `user:password@` for an ACL user) for
    /// `redis`; never printed.
    pub redis_url: Option<Secret>,
    /// PEM file of the CA certificates a `rediss://` server is checked against; the system's
    /// when unset.
    pub redis_ca_cert: Option<PathBuf>,
    /// With the `redis` store, `pgsync run` takes a per-index lock so that only one daemon
    /// writes an index; others wait as standbys and take over when the leader dies. Ignored with
    /// the `file` store (a file cannot be shared between hosts safely).
    pub leader_lock: bool,
    /// Lifetime of the leader lock in milliseconds; the leader renews it every third of this, and a
    /// standby takes over at most this long (plus a third) after the leader died.
    pub lock_ttl_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: CheckpointStore::File,
            dir: PathBuf::from(".pgsync-state"),
            redis_url: None,
            redis_ca_cert: None,
            leader_lock: true,
            lock_ttl_ms: 10_000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `pgsync_rs=debug`.
    pub level: String,
    /// Seconds between progress log lines when stderr is not a terminal.
    pub progress_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            progress_interval_secs: 10,
        }
    }
}

/// PGSync plugin settings. Plugins run only for indices whose `schema.json` entry lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// The directory that is PGSync's `plugins` package (it holds the plugin modules), relative
    /// to the working directory. When it does not exist, a `plugins` package importable from
    /// `PYTHONPATH` is used, as PGSync does.
    pub path: PathBuf,
    /// OS threads running plugins. Python runs one thread at a time, so more than a few only
    /// helps plugins that wait on I/O (which releases the interpreter lock).
    pub threads: usize,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            path: PathBuf::from("./plugins"),
            threads: 2,
        }
    }
}
