//! Bulk writer stage: merges chunks into bulk requests bounded by documents and bytes, keeps up to
//! `requests_in_flight` requests open (waiting for a free slot stops it pulling its input, which is
//! the backpressure to the fetchers), and reports every per-item failure with the document `_id`
//! and the engine's reason. A chunk's completion is released only after its request succeeded.
//!
//! Requests in flight at the same time may be applied by the engine in any order, so a request
//! holding an `_id` that one in flight also holds waits until those in flight are done: two
//! versions of a document (say an index, then its delete) are always applied in the order written.

use super::messages::{Completion, DocChunk};
use super::progress::Stats;
use crate::sink::{BulkBatch, Sink};
use crate::Error;
use actix::prelude::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Batching limits for one writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// Maximum documents per request.
    pub batch_docs: usize,
    /// Maximum bytes per request.
    pub batch_bytes: usize,
    /// Requests open at once.
    pub in_flight: usize,
    /// Flush a partial batch after this long (change capture latency).
    pub linger: Duration,
}

/// The writer actor. Its work is one async loop (spawned when the actor starts) that owns the
/// bounded input: batching, request slots and barriers stay in order without relying on the
/// ordering of queued actor futures.
pub struct Writer {
    state: Option<WriterLoop>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

struct WriterLoop {
    sink: Sink,
    index: String,
    settings: WriterSettings,
    input: tokio::sync::mpsc::Receiver<DocChunk>,
    stats: Arc<Stats>,
    errors: tokio::sync::mpsc::UnboundedSender<Error>,
}

#[derive(Default)]
struct Pending {
    body: Vec<u8>,
    ids: Vec<String>,
    completions: Vec<Completion>,
}

impl Writer {
    /// A writer for `index` reading `input`; signals `done` after its input closed and every
    /// request finished.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sink: Sink,
        index: String,
        settings: WriterSettings,
        input: tokio::sync::mpsc::Receiver<DocChunk>,
        stats: Arc<Stats>,
        errors: tokio::sync::mpsc::UnboundedSender<Error>,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        Writer {
            state: Some(WriterLoop {
                sink,
                index,
                settings,
                input,
                stats,
                errors,
            }),
            done: Some(done),
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(state) = self.state.take() {
            ctx.spawn(state.run().into_actor(self).map(|_, _, ctx| ctx.stop()));
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

/// `_id`s of the requests in flight.
type InFlightIds = Arc<Mutex<HashSet<String>>>;

impl WriterLoop {
    async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.settings.in_flight.max(1)));
        let ids: InFlightIds = Default::default();
        let mut pending = Pending::default();
        loop {
            let next = if pending.ids.is_empty() {
                self.input.recv().await
            } else {
                match tokio::time::timeout(self.settings.linger, self.input.recv()).await {
                    Ok(x) => x,
                    Err(_) => {
                        self.flush(&mut pending, &slots, &ids).await;
                        continue;
                    }
                }
            };
            let Some(chunk) = next else { break };
            if chunk.barrier || chunk.delete_all {
                self.flush(&mut pending, &slots, &ids).await;
                self.drain(&slots).await;
            }
            if chunk.delete_all {
                if let Err(e) = self.sink.delete_all_documents(&self.index).await {
                    if let Some(c) = &chunk.completion {
                        c.fail();
                    }
                    let _ = self.errors.send(e);
                }
                continue;
            }
            pending.body.extend_from_slice(&chunk.body);
            pending.ids.extend(chunk.ids);
            if let Some(c) = chunk.completion {
                pending.completions.push(c);
            }
            if pending.ids.is_empty() {
                // Nothing to write (every document of the chunk was rejected by a plugin):
                // release its completion now rather than at the next chunk.
                pending.completions.clear();
            }
            if pending.ids.len() >= self.settings.batch_docs
                || pending.body.len() >= self.settings.batch_bytes
            {
                self.flush(&mut pending, &slots, &ids).await;
            }
            if chunk.barrier {
                self.drain(&slots).await;
            }
        }
        self.flush(&mut pending, &slots, &ids).await;
        self.drain(&slots).await;
    }

    /// Waits until every request in flight has finished.
    async fn drain(&self, slots: &Arc<Semaphore>) {
        let n = self.settings.in_flight.max(1) as u32;
        drop(slots.acquire_many(n).await);
    }

    /// Sends what is buffered as one bulk request once a request slot is free (waiting here is
    /// what stops this writer pulling its input: the backpressure to the fetchers), and once no
    /// request in flight holds one of its `_id`s.
    async fn flush(&self, pending: &mut Pending, slots: &Arc<Semaphore>, in_flight: &InFlightIds) {
        let p = std::mem::take(pending);
        if p.ids.is_empty() {
            return; // completions dropped: nothing of theirs left to write
        }
        let overlaps = {
            let held = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            !held.is_empty() && p.ids.iter().any(|id| held.contains(id))
        };
        if overlaps {
            self.drain(slots).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(p.ids.iter().cloned());
        let sent_ids = p.ids.clone();
        let in_flight = in_flight.clone();
        let batch = BulkBatch {
            body: bytes::Bytes::from(p.body),
            ids: p.ids,
        };
        let completions = p.completions;
        let (sink, stats, errors, index) = (
            self.sink.clone(),
            self.stats.clone(),
            self.errors.clone(),
            self.index.clone(),
        );
        tokio::spawn(async move {
            let bytes = batch.body.len() as u64;
            match sink.bulk(batch).await {
                Ok(outcome) => {
                    stats.add_retries(outcome.retries as u64);
                    stats.add_written(outcome.succeeded as u64, bytes);
                    if !outcome.failures.is_empty() {
                        stats.add_failed(outcome.failures.len() as u64);
                        for f in &outcome.failures {
                            tracing::error!(
                                index = %index,
                                id = %f.id,
                                status = f.status,
                                reason = %f.reason,
                                "document rejected by the search engine"
                            );
                        }
                    }
                }
                Err(e) => {
                    for c in &completions {
                        c.fail();
                    }
                    let _ = errors.send(e.context(format!("bulk write to index {index}")));
                }
            }
            drop(completions);
            // Before the slot frees up: a writer that drained finds no id held.
            {
                let mut held = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for id in &sent_ids {
                    held.remove(id);
                }
            }
            drop(permit);
        });
    }
}
