//! NATS JetStream as a target: one message per document change on the subject
//! `<output.subject_prefix>.<index>.<op>`, its payload the event envelope (see
//! [`super::events`]), its `Nats-Msg-Id` `<index>:<_id>:<version>` so JetStream drops a
//! message re-sent after a restart (within the stream's duplicate window). The stream
//! `output.jetstream` capturing `<prefix>.>` is created when missing.
//!
//! A batch's messages are published in order on one connection and the batch counts as written
//! only once JetStream acknowledged (stored) every one of them.

use super::events::{decode, DocEvent};
use super::{BulkBatch, BulkOutcome, ItemFailure};
use crate::config::{OutputConfig, Secret};
use crate::{Error, ErrorKind, Result};
use async_nats::jetstream::{self, context::PublishErrorKind};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// A NATS server with JetStream enabled.
#[derive(Clone)]
pub struct NatsSink {
    url: Secret,
    prefix: String,
    stream: String,
    timeout: Duration,
    retries: u32,
    context: Arc<OnceCell<jetstream::Context>>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsSink({})", self.url.masked_url())
    }
}

/// Duplicates are recognised for this long after a message was stored.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long one publish attempt waits for an acknowledgement before publishing again.
const ACK_WAIT: Duration = Duration::from_secs(5);

impl NatsSink {
    /// The server at `output.url`; connects on first use.
    pub fn new(cfg: &OutputConfig) -> Result<NatsSink> {
        Ok(NatsSink {
            url: cfg.url.clone().unwrap_or_default(),
            prefix: cfg.subject_prefix.clone(),
            stream: cfg.jetstream.clone(),
            timeout: cfg.timeout(),
            retries: cfg.retries,
            context: Arc::new(OnceCell::new()),
        })
    }

    fn fail(&self, kind: ErrorKind, what: &str, e: impl std::fmt::Display) -> Error {
        Error::new(
            kind,
            format!("nats at {}: cannot {what}: {e}", self.url.masked_url()),
        )
        .with_hint("check output.url and that nats-server runs with JetStream (-js)")
    }

    async fn context(&self) -> Result<&jetstream::Context> {
        self.context.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<jetstream::Context> {
        crate::config::tls::crypto_provider();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(self.url.expose())
            .await
            .map_err(|e| self.fail(ErrorKind::SinkTransient, "connect", e))?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.timeout);
        let config = jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        js.get_or_create_stream(config).await.map_err(|e| {
            self.fail(
                ErrorKind::SinkTransient,
                &format!("create the JetStream stream {}", self.stream),
                e,
            )
        })?;
        Ok(js)
    }

    /// Connects and makes sure the stream exists.
    pub async fn check(&self) -> Result<()> {
        self.context().await.map(|_| ())
    }

    /// The subject of an event.
    pub fn subject(&self, e: &DocEvent) -> String {
        format!("{}.{}.{}", self.prefix, e.index, e.op.as_str())
    }

    /// Publishes every action of `batch` in order and waits for every acknowledgement.
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        let events = decode(&batch)?;
        let failures = self.publish(&events).await?;
        Ok(BulkOutcome {
            succeeded: events.len() - failures.len(),
            failures,
            ..BulkOutcome::default()
        })
    }

    /// Publishes `events`; answers those JetStream refused for good (too large). Messages whose
    /// acknowledgement does not come within [`ACK_WAIT`] are published again (their
    /// `Nats-Msg-Id` makes JetStream store each once), up to `retries` times.
    async fn publish(&self, events: &[DocEvent]) -> Result<Vec<ItemFailure>> {
        let mut attempt = 0;
        loop {
            match self.publish_once(events).await {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(
                        attempt,
                        "nats: publishing {} message(s) again: {}",
                        events.len(),
                        e.message
                    );
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                r => return r,
            }
        }
    }

    async fn publish_once(&self, events: &[DocEvent]) -> Result<Vec<ItemFailure>> {
        let js = self.context().await?;
        let mut acks = Vec::with_capacity(events.len());
        let mut failures = Vec::new();
        for e in events {
            let mut msg = jetstream::message::PublishMessage::build().payload(e.to_json().into());
            if let Some(v) = e.version {
                msg = msg.message_id(format!("{}:{}:{v}", e.index, e.id));
            }
            match js.send_publish(self.subject(e), msg).await {
                Ok(ack) => acks.push(ack),
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    failures.push(ItemFailure {
                        id: e.id.clone(),
                        position: e.action,
                        status: 413,
                        reason: format!("message larger than the NATS server's max_payload: {err}"),
                        document: Some(e.doc_json().to_owned()),
                    });
                }
                Err(err) => return Err(self.fail(ErrorKind::SinkTransient, "publish", err)),
            }
        }
        let wait = ACK_WAIT.min(self.timeout);
        for ack in acks {
            match tokio::time::timeout(wait, ack.into_future()).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    return Err(self.fail(
                        ErrorKind::SinkTransient,
                        "get a publish acknowledgement",
                        err,
                    ))
                }
                Err(_) => {
                    return Err(self.fail(
                        ErrorKind::SinkTransient,
                        "get a publish acknowledgement",
                        format!("none within {wait:?}"),
                    ))
                }
            }
        }
        Ok(failures)
    }

    /// Publishes a `truncate` event: every document of `index` is gone.
    pub async fn delete_all_documents(&self, index: &str) -> Result<()> {
        self.publish(&[DocEvent::truncate(index)]).await.map(|_| ())
    }
}
