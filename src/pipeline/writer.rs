//! Bulk writer stage: merges chunks into bulk requests bounded by documents and bytes, keeps up to
//! `requests_in_flight` requests open (waiting for a free slot stops it pulling its input, which is
//! the backpressure to the fetchers), and settles a chunk's completion only after the engine
//! acknowledged every document in it. A document the engine rejects for good goes to the
//! dead-letter store (or fails the run, or is skipped, per `dead_letter.on_rejected`) before its
//! completion is settled, so no position is checkpointed past a document that was neither
//! written nor recorded.
//!
//! Requests in flight at the same time may be applied by the engine in any order, so a request
//! holding an `_id` that one in flight also holds waits until those in flight are done: two
//! versions of a document (say an index, then its delete) are always applied in the order written.

use super::destination::Destination;
use super::messages::{Completion, DocChunk, Refused};
use super::progress::Stats;
use super::stage::{Errors, StageGuard};
use crate::config::OnRejected;
use crate::sink::dead_letter::{DeadLetters, Entry};
use crate::sink::{BulkBatch, BulkOutcome, ItemFailure, Sink};
use crate::{Error, ErrorKind, Result};
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

/// What a writer does with rejected documents, shared by the writers of an index.
#[derive(Clone)]
pub struct Rejections {
    /// `dead_letter.on_rejected`.
    pub policy: OnRejected,
    /// The index's dead-letter store.
    pub store: DeadLetters,
    /// How a stream position reads in an entry (`0/16B3748`, `xid 1234`).
    pub describe: fn(u64) -> String,
}

impl Rejections {
    /// The configured policy and the dead-letter store of `index` (created when missing).
    pub async fn open(cfg: &crate::config::Config, sink: &Sink, index: &str) -> Result<Self> {
        let store = DeadLetters::open(&cfg.dead_letter, sink, index).await?;
        let policy = match cfg.dead_letter.on_rejected {
            // No store to record in: rejected documents are logged and skipped.
            OnRejected::DeadLetter if store.is_off() => OnRejected::Skip,
            p => p,
        };
        Ok(Rejections {
            policy,
            store,
            describe: match cfg.capture.mode {
                crate::config::CaptureMode::Wal => crate::source::slot::format_lsn,
                crate::config::CaptureMode::Notify => |x| format!("xid {x}"),
            },
        })
    }
}

/// The writer actor. Its work is one async loop (spawned when the actor starts) that owns the
/// bounded input: batching, request slots and barriers stay in order without relying on the
/// ordering of queued actor futures.
pub struct Writer {
    state: Option<WriterLoop>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Everything one writer's requests share.
#[derive(Clone)]
struct Shared {
    sink: Sink,
    /// The index users search (for logs and dead letters).
    index: String,
    /// The physical index written.
    physical: Arc<str>,
    stats: Arc<Stats>,
    errors: Errors,
    rejections: Rejections,
}

struct WriterLoop {
    shared: Shared,
    settings: WriterSettings,
    input: tokio::sync::mpsc::Receiver<DocChunk>,
    guard: StageGuard,
}

/// Chunks merged into the next request.
#[derive(Default)]
struct Pending {
    body: Vec<u8>,
    ids: Vec<String>,
    completions: Vec<Completion>,
    /// `(end, position)`: actions before `end` (and after the previous span) answer to
    /// `position`.
    spans: Vec<(usize, Option<u64>)>,
    /// Documents refused before the engine (a plugin failed), with their position.
    refused: Vec<(Refused, Option<u64>)>,
}

impl Pending {
    fn position_of(&self, action: usize) -> Option<u64> {
        self.spans
            .iter()
            .find(|(end, _)| action < *end)
            .and_then(|(_, p)| *p)
    }
}

impl Writer {
    /// Writer `n` of `index` reading `input`; signals `done` after its input closed and every
    /// request finished.
    #[allow(clippy::too_many_arguments)] // one argument per pipeline wire
    pub fn new(
        n: usize,
        sink: Sink,
        dest: &Destination,
        settings: WriterSettings,
        input: tokio::sync::mpsc::Receiver<DocChunk>,
        stats: Arc<Stats>,
        errors: Errors,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        let index = dest.alias().to_owned();
        let guard = StageGuard::new(
            format!("writer {n} of index {index} ({})", dest.physical),
            errors.clone(),
        );
        let (physical, rejections) = (dest.physical.clone(), dest.rejections.clone());
        register_counters(&index);
        Writer {
            state: Some(WriterLoop {
                shared: Shared {
                    sink,
                    index,
                    physical,
                    stats,
                    errors,
                    rejections,
                },
                settings,
                input,
                guard,
            }),
            done: Some(done),
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(state) = self.state.take() {
            let span = super::stage::stage_span("writer", &state.shared.index);
            let work = tracing::Instrument::instrument(state.run(), span);
            ctx.spawn(work.into_actor(self).map(|_, _, ctx| ctx.stop()));
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
            let next = if pending.ids.is_empty() && pending.refused.is_empty() {
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
                self.delete_all(chunk.completion).await;
                continue;
            }
            let barrier = chunk.barrier;
            pending.body.extend_from_slice(&chunk.body);
            pending.ids.extend(chunk.ids);
            pending.spans.push((pending.ids.len(), chunk.position));
            let position = chunk.position;
            pending
                .refused
                .extend(chunk.refused.into_iter().map(|r| (r, position)));
            pending.completions.extend(chunk.completion);
            // A streamed change goes out at once when nothing else waits and a request slot
            // is free: lingering for more would only add latency.
            let eager =
                position.is_some() && self.input.is_empty() && slots.available_permits() > 0;
            if eager
                || pending.ids.len() >= self.settings.batch_docs
                || pending.body.len() >= self.settings.batch_bytes
            {
                self.flush(&mut pending, &slots, &ids).await;
            }
            if barrier {
                self.drain(&slots).await;
            }
        }
        self.flush(&mut pending, &slots, &ids).await;
        self.drain(&slots).await;
        self.guard.finish();
    }

    async fn delete_all(&self, completion: Option<Completion>) {
        let s = &self.shared;
        match s.sink.delete_all_documents(&s.physical).await {
            Ok(()) => completion.into_iter().for_each(Completion::done),
            Err(e) => {
                let _ = s.errors.send(e);
            }
        }
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
        if p.ids.is_empty() && p.refused.is_empty() {
            // Nothing of theirs left to write: the completions' parts are done.
            p.completions.into_iter().for_each(Completion::done);
            return;
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
        let (shared, in_flight) = (self.shared.clone(), in_flight.clone());
        let streaming = p.spans.iter().any(|(_, pos)| pos.is_some());
        tokio::spawn(async move {
            crate::fault::pause("write").await;
            if streaming {
                crate::fault::pause("stream-write").await;
            }
            let sent_ids = p.ids.clone();
            shared.write(p).await;
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

impl Shared {
    /// Sends one request and settles its completions once every document is accounted for.
    async fn write(&self, p: Pending) {
        let batch = BulkBatch::new(p.body.clone(), p.ids.clone()).with_positions(p.spans.clone());
        let bytes = batch.body.len() as u64;
        let started = std::time::Instant::now();
        let sent = if batch.is_empty() {
            Ok(BulkOutcome::default())
        } else {
            self.sink.bulk(batch).await
        };
        if let Ok(o) = &sent {
            self.record_bulk(&p.body, o, started.elapsed());
        }
        let outcome = match sent {
            Ok(o) => o,
            Err(e) => {
                // The completions drop unsettled: nothing of this request is checkpointed.
                let _ = self
                    .errors
                    .send(e.context(format!("bulk write to index {}", self.index)));
                return;
            }
        };
        self.stats.add_retries(outcome.retries as u64);
        self.stats.add_written(outcome.succeeded as u64, bytes);
        if let Err(e) = self.account(&p, &outcome).await {
            let _ = self.errors.send(e);
            return;
        }
        p.completions.into_iter().for_each(Completion::done);
    }

    /// The metrics of one answered bulk request.
    fn record_bulk(&self, body: &[u8], o: &BulkOutcome, took: Duration) {
        use crate::telemetry::names::*;
        if !crate::telemetry::enabled() || body.is_empty() {
            return;
        }
        let index = || ("index", self.index.clone());
        let deletes = body
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"{\"delete\""))
            .count() as u64;
        let secs = took.as_secs_f64();
        metrics::counter!(BULK_REQUESTS, &[index()]).increment(1);
        metrics::counter!(BULK_BYTES, &[index()]).increment(body.len() as u64);
        metrics::counter!(BULK_RETRIES, &[index()]).increment(o.retries as u64);
        metrics::histogram!(BULK_DURATION, &[index()]).record(secs);
        metrics::histogram!(BUSY, &[index(), ("stage", "writer".to_owned())]).record(secs);
        let ok = o.succeeded as u64;
        metrics::counter!(DOCUMENTS_INDEXED, &[index()]).increment(ok.saturating_sub(deletes));
        metrics::counter!(DOCUMENTS_DELETED, &[index()]).increment(deletes.min(ok));
    }

    /// Handles the rejected documents by policy and clears the dead letters of accepted ones.
    async fn account(&self, p: &Pending, outcome: &BulkOutcome) -> Result<()> {
        if outcome.stale > 0 {
            tracing::info!(index = %self.index, stale = outcome.stale, "the engine already held newer versions of some documents: the older ones were not written");
        }
        let failed: HashSet<&str> = outcome.failures.iter().map(|f| f.id.as_str()).collect();
        let dl = &self.rejections.store;
        dl.accepted(p.ids.iter().filter(|id| !failed.contains(id.as_str())))
            .await?;
        if outcome.failures.is_empty() && p.refused.is_empty() {
            return Ok(());
        }
        self.stats.add_failed(outcome.failures.len() as u64);
        let rejected = (outcome.failures.len() + p.refused.len()) as u64;
        metrics::counter!(crate::telemetry::names::DOCUMENTS_REJECTED, "index" => self.index.clone())
            .increment(rejected);
        for f in &outcome.failures {
            tracing::error!(index = %self.index, id = %f.id, status = f.status, reason = %f.reason, "document rejected by the search engine");
        }
        let mut failed: Vec<(ItemFailure, Option<u64>)> = outcome
            .failures
            .iter()
            .map(|f| (f.clone(), p.position_of(f.position)))
            .collect();
        failed.extend(p.refused.iter().map(|(r, pos)| (refused_failure(r), *pos)));
        match self.rejections.policy {
            OnRejected::Fail => {
                let all: Vec<ItemFailure> = failed.into_iter().map(|(f, _)| f).collect();
                Err(rejected_error(&self.index, &all))
            }
            OnRejected::Skip => Ok(()),
            OnRejected::DeadLetter => {
                let entries: Vec<Entry> = failed
                    .iter()
                    .map(|(f, pos)| {
                        let at = match pos {
                            Some(pos) => (self.rejections.describe)(*pos),
                            None => "initial sync".to_owned(),
                        };
                        Entry::new(&self.index, f, at)
                    })
                    .collect();
                dl.record(&entries).await?;
                self.stats.add_dead_lettered(entries.len() as u64);
                metrics::counter!(crate::telemetry::names::DOCUMENTS_DEAD_LETTERED, "index" => self.index.clone())
                    .increment(entries.len() as u64);
                Ok(())
            }
        }
    }
}

/// The writer's counters exist from the start (at 0), so a scrape (and the dashboard) shows
/// them before the first rejection.
fn register_counters(index: &str) {
    use crate::telemetry::names::*;
    for name in [
        DOCUMENTS_INDEXED,
        DOCUMENTS_DELETED,
        DOCUMENTS_REJECTED,
        DOCUMENTS_DEAD_LETTERED,
        BULK_REQUESTS,
        BULK_BYTES,
        BULK_RETRIES,
    ] {
        metrics::counter!(name, "index" => index.to_owned()).increment(0);
    }
}

/// A refused document in the form of an engine rejection (status 0: the engine never saw it).
fn refused_failure(r: &Refused) -> ItemFailure {
    ItemFailure {
        id: r.id.clone(),
        position: 0,
        status: 0,
        reason: r.reason.clone(),
        document: r.document.clone(),
    }
}

/// The error that stops the run under `on_rejected = "fail"`.
fn rejected_error(index: &str, failures: &[ItemFailure]) -> Error {
    let first = &failures[0];
    Error::new(
        ErrorKind::SinkRejected,
        format!(
            "index {index}: the search engine rejected {} document(s), first {} ({} {})",
            failures.len(),
            first.id,
            first.status,
            first.reason
        ),
    )
    .with_hint("fix the mapping or the data, or set dead_letter.on_rejected = \"dead_letter\" to record rejected documents and go on")
}
