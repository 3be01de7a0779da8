//! Checkpoints: the stream position up to which every affected document has been written. The
//! checkpointer stage advances it only over positions whose documents are all written (lanes
//! finish out of order), stores it (file or Redis/Valkey), and then publishes it so the source
//! can acknowledge it to PostgreSQL and the slot can advance.
//!
//! With the Redis store, [`LeaderLocks`] also keeps one daemon per index: see `leader.rs`.

mod leader;
mod store;

pub use leader::{lock_key, process_token, LeaderLock, LeaderLocks, Leadership, Renewal, MIN_TTL};
pub use store::{
    is_transient, redis_client, redis_key, CheckpointRecord, InitialProgress, RangeState, Retired,
    Store,
};

use actix::prelude::*;
use std::collections::BTreeSet;
use tokio::sync::{mpsc, watch};

/// What the checkpointer hears: a position entering the pipeline, or one whose documents are all
/// written. Both travel on one channel so a position is always registered before it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The coalescer dispatched work for this position.
    Register(u64),
    /// Every document of this position is written.
    Done(u64),
}

/// The checkpointer actor.
pub struct Checkpointer {
    key: String,
    store: Store,
    base: CheckpointRecord,
    input: Option<mpsc::UnboundedReceiver<Event>>,
    pending: BTreeSet<u64>,
    done: BTreeSet<u64>,
    frontier: u64,
    saved: u64,
    saving: bool,
    published: watch::Sender<u64>,
    /// Busy time: storing checkpoints.
    times: crate::telemetry::StageTimes,
}

impl Checkpointer {
    /// A checkpointer of `index` for `key` storing `base` at each new position, starting at
    /// `base`'s; the stored frontier is published on `published`.
    pub fn new(
        index: &str,
        key: String,
        store: Store,
        base: CheckpointRecord,
        input: mpsc::UnboundedReceiver<Event>,
        published: watch::Sender<u64>,
    ) -> Self {
        let start = base.position;
        Checkpointer {
            key,
            store,
            base,
            input: Some(input),
            pending: BTreeSet::new(),
            done: BTreeSet::new(),
            frontier: start,
            saved: start,
            saving: false,
            published,
            times: crate::telemetry::StageTimes::new(index, "checkpointer", None),
        }
    }

    fn advance(&mut self) {
        while let Some(&first) = self.pending.first() {
            if self.done.remove(&first) {
                self.pending.remove(&first);
                self.frontier = self.frontier.max(first);
            } else {
                break;
            }
        }
    }

    fn save(&mut self, ctx: &mut Context<Self>) {
        if self.saving || self.frontier <= self.saved {
            return;
        }
        self.saving = true;
        let (store, key, pos) = (self.store.clone(), self.key.clone(), self.frontier);
        let record = self.base.with_position(pos);
        let times = self.times.clone();
        ctx.spawn(
            async move {
                let started = std::time::Instant::now();
                let r = store.save(&key, &record).await;
                times.busy(started.elapsed());
                (pos, r)
            }
            .into_actor(self)
            .map(|(pos, r), act, ctx| {
                act.saving = false;
                match r {
                    Ok(()) => {
                        act.saved = pos;
                        let _ = act.published.send(pos);
                        act.save(ctx);
                    }
                    // The store already retried what may pass by itself; the interval tries
                    // again (not at once, which would spin on a lasting error).
                    Err(e) => tracing::warn!(error = %e, "checkpoint not stored; will retry"),
                }
            }),
        );
    }
}

impl Actor for Checkpointer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.input.take() {
            ctx.add_stream(UnboundedStream(rx));
        }
        ctx.run_interval(std::time::Duration::from_millis(500), |act, ctx| {
            act.save(ctx)
        });
    }
}

impl StreamHandler<Event> for Checkpointer {
    fn handle(&mut self, ev: Event, ctx: &mut Context<Self>) {
        match ev {
            Event::Register(p) => {
                self.pending.insert(p);
            }
            Event::Done(p) => {
                self.done.insert(p);
                self.advance();
                self.save(ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.advance();
        self.save(ctx);
        ctx.run_interval(std::time::Duration::from_millis(20), |act, ctx| {
            if !act.saving && act.saved >= act.frontier {
                ctx.stop();
            }
        });
    }
}

struct UnboundedStream<T>(mpsc::UnboundedReceiver<T>);

impl<T> futures::Stream for UnboundedStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
