//! Change coalescing stage: hands committed transactions to the query builder, which turns each
//! window of them into the documents to rebuild once. Adaptive: when nothing is queued
//! downstream a transaction goes out at once; while the stages after it are busy, changes gather
//! (up to `coalesce_window_ms`, or `coalesce_max_changes` changes), so later changes to the same
//! documents merge rather than rebuilding them again behind a slow search engine.

use super::lanes::ReceiverStream;
use super::messages::{Completion, Window};
use super::stage::{Errors, StageGuard};
use crate::checkpoint::Event;
use crate::source::change::{Change, ChangeOp, Transaction};
use crate::Error;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Where the coalescer hands windows: one query builder per destination (two while a migration
/// builds a new index beside the live one), and the checkpointer each window is registered with.
pub struct CoalescerWires {
    /// One sender per destination's query builder.
    pub outs: Vec<mpsc::Sender<Window>>,
    /// The checkpointer's input.
    pub checkpoints: mpsc::UnboundedSender<Event>,
    /// The highest position received so far (a migration waits for the new index to reach it).
    pub received: watch::Sender<u64>,
    /// Where a failure is reported.
    pub errors: Errors,
}

/// Coalescing settings.
#[derive(Debug, Clone, Copy)]
pub struct CoalesceSettings {
    /// Longest time a change waits for others.
    pub window: Duration,
    /// Flush early at this many changes; also how many are held back while the stages after
    /// this one are busy, so a backlog coalesces here instead of queueing as documents built
    /// twice.
    pub max_changes: usize,
}

/// The coalescer actor.
pub struct Coalescer {
    settings: CoalesceSettings,
    input: Option<mpsc::Receiver<Transaction>>,
    wires: CoalescerWires,
    buffer: Vec<Change>,
    /// Transaction ids of the buffered changes.
    xids: Vec<u32>,
    position: Option<u64>,
    timer: Option<SpawnHandle>,
    sending: bool,
    guard: StageGuard,
    /// Its busy time, and its time blocked on the query builders' inputs.
    times: crate::telemetry::StageTimes,
    /// `pgsync_changes_received_total` by table and operation.
    received: ChangeCounters,
}

/// Counters of changes received per table and operation, looked up once per pair.
struct ChangeCounters {
    index: String,
    counters: std::collections::HashMap<(Arc<crate::schema::TableId>, ChangeOp), metrics::Counter>,
}

impl ChangeCounters {
    fn count(&mut self, changes: &[Change]) {
        if !crate::telemetry::enabled() {
            return;
        }
        for c in changes {
            let index = &self.index;
            self.counters
                .entry((c.table.clone(), c.op))
                .or_insert_with(|| {
                    metrics::counter!(crate::telemetry::names::CHANGES_RECEIVED,
                        "index" => index.clone(),
                        "table" => c.table.to_string(),
                        "operation" => op_name(c.op))
                })
                .increment(1);
        }
    }
}

/// The `operation` label of a change.
fn op_name(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Insert => "insert",
        ChangeOp::Update => "update",
        ChangeOp::Delete => "delete",
        ChangeOp::Truncate => "truncate",
        ChangeOp::Refresh => "refresh",
    }
}

impl Coalescer {
    /// A coalescer of `index` reading `input` and handing windows on `wires`.
    pub fn new(
        index: &str,
        settings: CoalesceSettings,
        input: mpsc::Receiver<Transaction>,
        wires: CoalescerWires,
    ) -> Self {
        let guard = StageGuard::new(format!("coalescer of index {index}"), wires.errors.clone());
        Coalescer {
            settings,
            input: Some(input),
            wires,
            buffer: vec![],
            xids: vec![],
            position: None,
            timer: None,
            sending: false,
            guard,
            times: crate::telemetry::StageTimes::new(index, "coalescer", Some("query_builder")),
            received: ChangeCounters {
                index: index.to_owned(),
                counters: Default::default(),
            },
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        self.timer = Some(ctx.run_later(self.settings.window, |act, ctx| {
            act.timer = None;
            act.flush(ctx, false);
        }));
    }

    /// Hands the buffer on. Unless `force`d (end of input), a busy downstream with room left in
    /// the buffer defers the hand-off by one window, so later changes merge into it.
    fn flush(&mut self, ctx: &mut Context<Self>, force: bool) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if self.position.is_none() || self.sending {
            return;
        }
        let busy = self.wires.outs.iter().any(|o| o.capacity() == 0);
        if !force && busy && self.buffer.len() < self.settings.max_changes {
            self.arm_timer(ctx);
            return;
        }
        let Some(position) = self.position.take() else {
            return;
        };
        let window = self.window(position);
        let outs = self.wires.outs.clone();
        self.sending = true;
        let times = self.times.clone();
        let send = async move {
            for out in &outs {
                let waited = std::time::Instant::now();
                let full = out.capacity() == 0;
                out.send(window.clone()).await.map_err(|_| ())?;
                if full {
                    times.blocked(waited.elapsed());
                }
            }
            window.completion.done();
            Ok::<(), ()>(())
        };
        ctx.wait(send.into_actor(self).map(|r, act, ctx| {
            act.sending = false;
            if r.is_err() {
                let _ = act
                    .wires
                    .errors
                    .send(Error::stage("the query builder stopped"));
                act.guard.finish();
                ctx.stop();
            }
        }));
    }

    /// Whether no window waits in any query builder's input.
    fn downstream_idle(&self) -> bool {
        self.wires
            .outs
            .iter()
            .all(|o| o.capacity() == o.max_capacity())
    }

    /// The buffered changes as a window registered with the checkpointer, under a completion
    /// that reports it done, or the run failed when a part of it is dropped unwritten.
    fn window(&mut self, position: u64) -> Window {
        let cps = self.wires.checkpoints.clone();
        let errors = self.wires.errors.clone();
        let _ = cps.send(Event::Register(position));
        let completion = Completion::new(
            move || {
                let _ = cps.send(Event::Done(position));
            },
            move || {
                let _ = errors.send(Error::stage(format!(
                    "the documents of the changes up to position {position} were not all written"
                )));
            },
        );
        Window {
            changes: Arc::new(std::mem::take(&mut self.buffer)),
            xids: std::mem::take(&mut self.xids),
            position,
            completion,
        }
    }
}

impl Actor for Coalescer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.input.take() {
            ctx.add_stream(ReceiverStream(rx));
        }
    }
}

impl StreamHandler<Transaction> for Coalescer {
    fn handle(&mut self, tx: Transaction, ctx: &mut Context<Self>) {
        let started = std::time::Instant::now();
        self.received.count(&tx.changes);
        self.buffer.extend(tx.changes);
        if let Some(x) = tx.xid.filter(|x| self.xids.last() != Some(x)) {
            self.xids.push(x);
        }
        self.position = Some(self.position.map_or(tx.position, |p| p.max(tx.position)));
        self.wires.received.send_if_modified(|r| {
            let grew = tx.position > *r;
            *r = (*r).max(tx.position);
            grew
        });
        // Adaptive: with nothing queued downstream a change goes out at once (no latency
        // floor); while work is queued, changes gather for up to a window, or max_changes.
        if self.buffer.len() >= self.settings.max_changes || self.downstream_idle() {
            self.flush(ctx, false);
        } else if self.timer.is_none() {
            self.arm_timer(ctx);
        }
        self.times.busy(started.elapsed());
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // actix runs queued `wait` futures newest first: queue the stop before the flush.
        ctx.wait(async {}.into_actor(self).map(|_, act, ctx| {
            act.guard.finish();
            ctx.stop()
        }));
        self.flush(ctx, true);
    }
}
