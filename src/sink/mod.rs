//! Where documents go: the search engine through the `elasticsearch` crate (right for
//! Elasticsearch 7–9 and OpenSearch 1–3), an NDJSON file, nowhere, or a document target —
//! Typesense, a Redis stream, NATS JetStream or a webhook — that reads the same bulk bodies back
//! as document events (see [`events`]).
//!
//! Writers build bulk bodies with [`push_index_action`] / [`push_delete_action`] straight into a
//! byte buffer (no per-document `serde_json::Value`), wrap them in a [`BulkBatch`] and hand it to
//! [`Sink::bulk`].

mod actions;
pub mod alias;
pub mod aws;
pub mod dead_letter;
pub mod events;
mod file;
mod http;
mod nats;
mod redis_stream;
mod response;
mod scan;
mod search;
mod transport;
mod truncate;
mod typesense;
mod webhook;

pub use actions::{push_delete_action, push_index_action, Target};
pub use elasticsearch::http::Method;
pub use file::FileSink;
pub use nats::NatsSink;
pub use redis_stream::RedisStreamSink;
pub use scan::{DocRef, IdScan};
pub use search::{SearchSink, ServerInfo};
pub use typesense::{collection_schema, TypesenseSink};
pub use webhook::{sign as webhook_signature, WebhookSink, SIGNATURE_HEADER};

use crate::config::{Config, OutputKind};
use crate::Result;

/// One `_bulk` request body and the `_id` of each of its actions, in order: item results come back
/// in the same order, so a failure can be reported by document id and a retry can re-send
/// exactly the failed actions.
#[derive(Debug, Clone, Default)]
pub struct BulkBatch {
    /// NDJSON actions, each line terminated by `\n`.
    pub body: bytes::Bytes,
    /// The `_id` of each action, in order.
    pub ids: Vec<String>,
    /// `(end, position)` spans: actions before `end` (and after the previous span) come from the
    /// change stream at `position` (`None`: the initial sync). Event targets put it in each
    /// message; the search engine ignores it.
    pub positions: Vec<(usize, Option<u64>)>,
}

impl BulkBatch {
    /// Wraps a body built with the `push_*_action` helpers and the ids pushed, in order.
    pub fn new(body: impl Into<bytes::Bytes>, ids: Vec<String>) -> Self {
        BulkBatch {
            body: body.into(),
            ids,
            positions: Vec::new(),
        }
    }

    /// With the stream positions of its actions (see [`BulkBatch::positions`]).
    pub fn with_positions(mut self, positions: Vec<(usize, Option<u64>)>) -> Self {
        self.positions = positions;
        self
    }

    /// The stream position action `n` answers to, `None` in the initial sync.
    pub fn position_of(&self, n: usize) -> Option<u64> {
        self.positions
            .iter()
            .find(|(end, _)| n < *end)
            .and_then(|(_, p)| *p)
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is nothing to send (an empty `_bulk` is a 400, so it is never sent).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A document the engine rejected for good (mapping conflict, bad value, version conflict…):
/// retrying the same document cannot help, so the caller logs or dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// The document `_id`.
    pub id: String,
    /// Position of the action in the request it was sent in.
    pub position: usize,
    /// The item's HTTP status, e.g. 400 or 413.
    pub status: u16,
    /// The engine's error type and reason, e.g. `mapper_parsing_exception: failed to parse …`.
    pub reason: String,
    /// The document that was refused (its `_source` line), for the dead-letter store.
    pub document: Option<String>,
}

/// What became of a [`BulkBatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Actions applied (a delete of a missing document counts: the end state is right).
    pub succeeded: usize,
    /// Actions rejected for good.
    pub failures: Vec<ItemFailure>,
    /// Actions refused because the engine already holds a newer version (end state right).
    pub stale: usize,
    /// Requests re-sent after 429, 5xx or connection errors (whole or only the failed items).
    pub retries: u32,
}

/// The configured destination. Cloning is cheap and clones share connections / the file.
#[derive(Clone)]
pub enum Sink {
    /// Elasticsearch or OpenSearch.
    Search(SearchSink),
    /// NDJSON bulk bodies appended to a file (inspection, replay with curl, tests).
    Ndjson(FileSink),
    /// Dropped: measures the pipeline's own ceiling.
    Discard,
    /// Typesense collections.
    Typesense(TypesenseSink),
    /// Redis streams, one entry per document change.
    RedisStream(RedisStreamSink),
    /// NATS JetStream, one message per document change.
    Nats(NatsSink),
    /// Batched JSON POSTs of document changes.
    Webhook(WebhookSink),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Search(s) => write!(f, "Sink::{s:?}"),
            Sink::Ndjson(s) => write!(f, "Sink::{s:?}"),
            Sink::Discard => f.write_str("Sink::Discard"),
            Sink::Typesense(s) => write!(f, "Sink::{s:?}"),
            Sink::RedisStream(s) => write!(f, "Sink::{s:?}"),
            Sink::Nats(s) => write!(f, "Sink::{s:?}"),
            Sink::Webhook(s) => write!(f, "Sink::{s:?}"),
        }
    }
}

impl Sink {
    /// Builds the sink `output.kind` selects. Does no network I/O (see [`Sink::check`]).
    pub fn from_config(cfg: &Config) -> Result<Sink> {
        Ok(match cfg.output.kind {
            OutputKind::Search => Sink::Search(SearchSink::new(&cfg.search, &cfg.pipeline)?),
            OutputKind::Ndjson => {
                let path = cfg.output.path.as_ref().ok_or_else(|| {
                    crate::Error::config(
                        "output.kind = \"ndjson\" needs output.path (the file bulk bodies are appended to)",
                    )
                })?;
                Sink::Ndjson(FileSink::open(path)?)
            }
            OutputKind::Discard => Sink::Discard,
            OutputKind::Typesense => Sink::Typesense(TypesenseSink::new(&cfg.output)?),
            OutputKind::RedisStream => Sink::RedisStream(RedisStreamSink::new(&cfg.output)?),
            OutputKind::Nats => Sink::Nats(NatsSink::new(&cfg.output)?),
            OutputKind::Webhook => Sink::Webhook(WebhookSink::new(&cfg.output)?),
        })
    }

    /// Whether the target keeps documents under the index name itself: Typesense and the event
    /// targets have no aliases, so no physical `<index>-<n>` is built and swapped in (aliases
    /// and migrations are Elasticsearch/OpenSearch's); a changed definition is rebuilt in place.
    pub fn plain_indexes(&self) -> bool {
        matches!(
            self,
            Sink::Typesense(_) | Sink::RedisStream(_) | Sink::Nats(_) | Sink::Webhook(_)
        )
    }

    /// Verifies the destination is usable before any work starts: `GET /` on the engine (an
    /// unreachable engine is reported with its masked URL). Files and discard always pass.
    pub async fn check(&self) -> Result<()> {
        match self {
            Sink::Search(s) => s.check().await,
            Sink::Typesense(s) => s.check().await,
            Sink::RedisStream(s) => s.check().await,
            Sink::Nats(s) => s.check().await,
            Sink::Ndjson(_) | Sink::Discard | Sink::Webhook(_) => Ok(()),
        }
    }

    /// Whether the engine answers `GET /` now, without logging (the daemon's monitor asks every
    /// few seconds, for `/readyz`). Files, discard and webhooks always answer.
    pub async fn probe(&self) -> Result<()> {
        match self {
            Sink::Search(s) => s.server_info().await.map(|_| ()),
            Sink::Typesense(s) => s.check().await,
            Sink::RedisStream(s) => s.check().await,
            Sink::Nats(s) => s.check().await,
            Sink::Ndjson(_) | Sink::Discard | Sink::Webhook(_) => Ok(()),
        }
    }

    /// Creates `index` with `body` (`{"settings": …, "mappings": …}`) when it is missing and
    /// returns true; leaves an existing index alone (false) unless `recreate`, which deletes it
    /// first (a Typesense collection likewise; the event targets send a `truncate` event). Files,
    /// discard and the event targets have no index state and report true (fresh).
    pub async fn ensure_index(
        &self,
        index: &str,
        body: &serde_json::Value,
        recreate: bool,
    ) -> Result<bool> {
        match self {
            Sink::Search(s) => s.ensure_index(index, body, recreate).await,
            Sink::Typesense(s) => s.ensure_index(index, body, recreate).await,
            // A consumer folding the events starts over from the snapshot that follows.
            Sink::RedisStream(_) | Sink::Nats(_) | Sink::Webhook(_) if recreate => {
                self.delete_all_documents(index).await?;
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// The identity of `index` in the engine (see [`SearchSink::index_uuid`]); files and discard
    /// have none.
    pub async fn index_uuid(&self, index: &str) -> Result<Option<String>> {
        match self {
            Sink::Search(s) => s.index_uuid(index).await,
            _ => Ok(None),
        }
    }

    /// Sends one bulk request, retrying transient failures; see [`SearchSink::bulk`].
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        match self {
            Sink::Search(s) => s.bulk(batch).await,
            Sink::Ndjson(f) => f.bulk(batch).await,
            Sink::Typesense(s) => s.bulk(batch).await,
            Sink::RedisStream(s) => s.bulk(batch).await,
            Sink::Nats(s) => s.bulk(batch).await,
            Sink::Webhook(s) => s.bulk(batch).await,
            Sink::Discard => Ok(BulkOutcome {
                succeeded: batch.len(),
                ..BulkOutcome::default()
            }),
        }
    }

    /// Makes written documents visible to search (end of an initial sync, tests).
    pub async fn refresh(&self, index: &str) -> Result<()> {
        match self {
            Sink::Search(s) => s.refresh(index).await,
            Sink::Ndjson(f) => f.flush().await,
            _ => Ok(()),
        }
    }

    /// Deletes every document of `index` (root table truncated); event targets send a
    /// `truncate` event.
    pub async fn delete_all_documents(&self, index: &str) -> Result<()> {
        match self {
            Sink::Search(s) => s.delete_all_documents(index).await,
            Sink::Typesense(s) => s.delete_all_documents(index).await,
            Sink::RedisStream(s) => s.delete_all_documents(index).await,
            Sink::Nats(s) => s.delete_all_documents(index).await,
            Sink::Webhook(s) => s.delete_all_documents(index).await,
            Sink::Ndjson(_) | Sink::Discard => Ok(()),
        }
    }

    /// Lists every document of `index` page by page (see [`SearchSink::scan_ids`]); `None` for
    /// files and discard, which cannot be read back.
    pub async fn scan_ids(&self, index: &str, page: usize) -> Result<Option<IdScan>> {
        match self {
            Sink::Search(s) => s.scan_ids(index, page).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Like [`Sink::scan_ids`], each document with its `_source`.
    pub async fn scan_documents(&self, index: &str, page: usize) -> Result<Option<IdScan>> {
        match self {
            Sink::Search(s) => s.scan_documents(index, page).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Deletes `index` (`pgsync --teardown`; a Redis stream is deleted, NATS and webhook
    /// messages stay with their consumers); a missing index is not an error.
    pub async fn delete_index(&self, index: &str) -> Result<()> {
        match self {
            Sink::Search(s) => s.delete_index(index).await,
            Sink::Typesense(s) => s.delete_index(index).await,
            Sink::RedisStream(s) => s.delete_index(index).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn discard_reports_success() {
        let mut buf = Vec::new();
        push_index_action(&mut buf, Target::new("i", "1"), None, b"{}");
        push_delete_action(&mut buf, Target::new("i", "2"));
        let out = Sink::Discard
            .bulk(BulkBatch::new(buf, vec!["1".into(), "2".into()]))
            .await
            .unwrap();
        assert_eq!(out.succeeded, 2);
        assert!(out.failures.is_empty());
    }

    #[test]
    fn sink_and_its_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let s = Sink::Discard;
        send_sync(&s);
        send(s.bulk(BulkBatch::default()));
        send(s.check());
        send(s.ensure_index("i", &serde_json::Value::Null, false));
        send(s.refresh("i"));
        send(s.delete_index("i"));
        assert_eq!(format!("{s:?}"), "Sink::Discard");
    }

    #[tokio::test]
    async fn from_config_picks_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        assert!(matches!(Sink::from_config(&cfg).unwrap(), Sink::Search(_)));
        cfg.output.kind = OutputKind::Discard;
        assert!(matches!(Sink::from_config(&cfg).unwrap(), Sink::Discard));
        cfg.output.kind = OutputKind::Ndjson;
        assert!(Sink::from_config(&cfg).is_err());
        cfg.output.path = Some(dir.path().join("out.ndjson"));
        assert!(matches!(Sink::from_config(&cfg).unwrap(), Sink::Ndjson(_)));
    }
}
