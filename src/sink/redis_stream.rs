//! Redis Streams as a target: one `XADD` per document change on the stream `output.stream`
//! (`pgsync:<index>` by default), with the fields `_id`, `op` (`index`, `delete` or
//! `truncate`), `doc` (the whole `_source` as JSON, `null` for a delete), `position` and
//! `version`; `MAXLEN ~ output.maxlen` trims old entries when set.
//!
//! A batch's entries are pipelined on one connection, in the batch's order, and the batch counts
//! as written once Redis answered every `XADD`. A batch that fails part-way is sent whole again
//! after the pipeline restarts, so a consumer can see an entry twice (the same `_id` and
//! `version`): delivery is at least once, in order per document.

use super::events::{decode, DocEvent};
use super::{BulkBatch, BulkOutcome};
use crate::config::{OutputConfig, Secret};
use crate::{Error, ErrorKind, Result};
use fred::prelude::*;
use fred::types::streams::XCap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// A Redis server holding the streams.
#[derive(Clone)]
pub struct RedisStreamSink {
    url: Secret,
    stream: String,
    maxlen: u64,
    timeout: Duration,
    client: Arc<OnceCell<fred::clients::Client>>,
}

impl std::fmt::Debug for RedisStreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisStreamSink({})", self.url.masked_url())
    }
}

impl RedisStreamSink {
    /// The server at `output.url`; connects on first use.
    pub fn new(cfg: &OutputConfig) -> Result<RedisStreamSink> {
        let url = cfg.url.clone().unwrap_or_default();
        fred::types::config::Config::from_url(url.expose()).map_err(|e| {
            Error::config(format!("output.url {}: {}", url.masked_url(), e.details()))
                .with_hint("expected redis://[[user]:password@]host:port/db, or rediss:// for TLS")
        })?;
        Ok(RedisStreamSink {
            url,
            stream: cfg.stream.clone(),
            maxlen: cfg.maxlen,
            timeout: cfg.timeout(),
            client: Arc::new(OnceCell::new()),
        })
    }

    /// The stream key of `index`.
    pub fn stream_of(&self, index: &str) -> String {
        self.stream.replace("{index}", index)
    }

    async fn client(&self) -> Result<&fred::clients::Client> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<fred::clients::Client> {
        crate::config::tls::crypto_provider();
        let config = fred::types::config::Config::from_url(self.url.expose()).map_err(|e| {
            Error::config(format!(
                "output.url {}: {}",
                self.url.masked_url(),
                e.details()
            ))
        })?;
        let client = fred::types::Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
            .with_performance_config(|p| p.default_command_timeout = self.timeout)
            .build()
            .map_err(|e| {
                Error::config(format!(
                    "output.url {}: {}",
                    self.url.masked_url(),
                    e.details()
                ))
            })?;
        client.init().await.map_err(|e| self.error("connect", &e))?;
        Ok(client)
    }

    fn error(&self, what: &str, e: &fred::error::Error) -> Error {
        use fred::error::ErrorKind as K;
        let transient = matches!(
            e.kind(),
            K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Protocol
        ) || ["LOADING", "MASTERDOWN", "TRYAGAIN", "OOM", "READONLY"]
            .iter()
            .any(|p| e.details().starts_with(p));
        let kind = match e.kind() {
            _ if transient => ErrorKind::SinkTransient,
            K::Auth => ErrorKind::Auth,
            _ => ErrorKind::SinkRejected,
        };
        Error::new(
            kind,
            format!("redis_stream at {}: cannot {what}: {}", self.url.masked_url(), e.details()),
        )
        .with_hint("check output.url and output.stream (the key must be a stream or missing) and that Redis is up")
    }

    /// Connects and pings.
    pub async fn check(&self) -> Result<()> {
        let c = self.client().await?;
        c.ping::<()>(None).await.map_err(|e| self.error("ping", &e))
    }

    /// One `XADD` per action of `batch`, pipelined in order.
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        let events = decode(&batch)?;
        self.append(&events).await?;
        Ok(BulkOutcome {
            succeeded: events.len(),
            ..BulkOutcome::default()
        })
    }

    /// Appends `events` to their streams, in order.
    pub async fn append(&self, events: &[DocEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let pipeline = client.pipeline();
        for e in events {
            let fields: Vec<(&str, String)> = vec![
                ("_id", e.id.clone()),
                ("op", e.op.as_str().to_owned()),
                ("doc", e.doc_json().to_owned()),
                ("position", e.position.to_string()),
                (
                    "version",
                    e.version.map(|v| v.to_string()).unwrap_or_default(),
                ),
            ];
            let cap: XCap = if self.maxlen > 0 {
                ("MAXLEN", "~", self.maxlen as i64, None)
                    .try_into()
                    .expect("a valid cap")
            } else {
                None::<()>.into()
            };
            let _: () = pipeline
                .xadd(self.stream_of(&e.index), false, cap, "*", fields)
                .await
                .map_err(|err| self.error("queue XADD", &err))?;
        }
        for r in pipeline.try_all::<fred::types::Value>().await {
            r.map_err(|err| self.error("XADD", &err))?;
        }
        Ok(())
    }

    /// Appends a `truncate` entry: every document of `index` is gone.
    pub async fn delete_all_documents(&self, index: &str) -> Result<()> {
        self.append(&[DocEvent::truncate(index)]).await
    }

    /// Deletes the stream of `index` (teardown).
    pub async fn delete_index(&self, index: &str) -> Result<()> {
        let c = self.client().await?;
        c.del::<(), _>(self.stream_of(index))
            .await
            .map_err(|e| self.error("DEL the stream", &e))
    }
}
