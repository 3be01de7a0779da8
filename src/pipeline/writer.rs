//! Bulk writer stage: merges chunks into bulk requests bounded by documents and bytes, keeps up to
//! `requests_in_flight` requests open (waiting for a free slot stops it pulling its input, which is
//! the backpressure to the fetchers), and reports every per-item failure with the document `_id`
//! and the engine's reason. A chunk's completion is released only after its request succeeded.

use super::lanes::ReceiverStream;
use super::messages::{Completion, DocChunk};
use super::progress::Stats;
use crate::sink::{BulkBatch, Sink};
use crate::Error;
use actix::prelude::*;
use std::sync::Arc;
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

/// The writer actor.
pub struct Writer {
    sink: Sink,
    index: String,
    settings: WriterSettings,
    input: Option<tokio::sync::mpsc::Receiver<DocChunk>>,
    body: Vec<u8>,
    ids: Vec<String>,
    completions: Vec<Completion>,
    slots: Arc<Semaphore>,
    stats: Arc<Stats>,
    errors: tokio::sync::mpsc::UnboundedSender<Error>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
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
            sink,
            index,
            slots: Arc::new(Semaphore::new(settings.in_flight.max(1))),
            settings,
            input: Some(input),
            body: Vec::new(),
            ids: Vec::new(),
            completions: Vec::new(),
            stats,
            errors,
            done: Some(done),
        }
    }

    /// Sends what is buffered as one bulk request, waiting (and so not pulling input) until a
    /// request slot is free.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.ids.is_empty() {
            self.completions.clear();
            return;
        }
        let batch = BulkBatch {
            body: bytes::Bytes::from(std::mem::take(&mut self.body)),
            ids: std::mem::take(&mut self.ids),
        };
        let completions = std::mem::take(&mut self.completions);
        let slots = self.slots.clone();
        let sink = self.sink.clone();
        let stats = self.stats.clone();
        let errors = self.errors.clone();
        let index = self.index.clone();
        ctx.wait(
            async move { slots.acquire_owned().await.ok() }
                .into_actor(self)
                .map(move |permit, _act, ctx| {
                    let fut = async move {
                        let _permit = permit;
                        let n = batch.ids.len() as u64;
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
                                let _ = n;
                                drop(completions);
                            }
                            Err(e) => {
                                for c in &completions {
                                    c.fail();
                                }
                                let _ = errors.send(e.context(format!("bulk write to index {index}")));
                            }
                        }
                    };
                    ctx.spawn(fut.into_actor(_act));
                }),
        );
    }

    /// Waits until every request in flight has finished.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let slots = self.slots.clone();
        let n = self.settings.in_flight.max(1) as u32;
        ctx.wait(
            async move {
                let p = slots.acquire_many(n).await;
                drop(p);
            }
            .into_actor(self),
        );
    }
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.input.take() {
            ctx.add_stream(ReceiverStream(rx));
        }
        ctx.run_interval(self.settings.linger, |act, ctx| {
            if !act.ids.is_empty() {
                act.flush(ctx);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

impl StreamHandler<DocChunk> for Writer {
    fn handle(&mut self, chunk: DocChunk, ctx: &mut Context<Self>) {
        if chunk.barrier || chunk.delete_all {
            self.flush(ctx);
            self.drain(ctx);
        }
        if chunk.delete_all {
            let sink = self.sink.clone();
            let index = self.index.clone();
            let errors = self.errors.clone();
            let completion = chunk.completion.clone();
            ctx.wait(
                async move {
                    if let Err(e) = sink.delete_all_documents(&index).await {
                        if let Some(c) = &completion {
                            c.fail();
                        }
                        let _ = errors.send(e);
                    }
                    drop(completion);
                }
                .into_actor(self),
            );
            return;
        }
        let had_completion = chunk.completion.is_some();
        self.body.extend_from_slice(&chunk.body);
        self.ids.extend(chunk.ids);
        if let Some(c) = chunk.completion {
            self.completions.push(c);
        }
        if self.ids.len() >= self.settings.batch_docs
            || self.body.len() >= self.settings.batch_bytes
            || (had_completion && self.settings.linger.is_zero())
        {
            self.flush(ctx);
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
        self.drain(ctx);
        ctx.wait(
            async {}
                .into_actor(self)
                .map(|_, _act, ctx| ctx.stop()),
        );
    }
}
