//! Change coalescing stage: gathers committed transactions over a short window and hands each
//! window to the query builder, which turns it into the documents to rebuild once. While the
//! stages after it are busy, it holds the next window back (up to `coalesce_max_changes`
//! changes), so later changes to the same documents merge into it rather than rebuilding them
//! again behind a slow search engine.

use super::lanes::ReceiverStream;
use super::messages::Window;
use super::stage::{Errors, StageGuard};
use crate::source::change::{Change, Transaction};
use crate::Error;
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::mpsc;

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
    out: mpsc::Sender<Window>,
    errors: Errors,
    buffer: Vec<Change>,
    position: Option<u64>,
    timer: Option<SpawnHandle>,
    sending: bool,
    guard: StageGuard,
}

impl Coalescer {
    /// A coalescer of `index` reading `input` and handing windows to `out`.
    pub fn new(
        index: &str,
        settings: CoalesceSettings,
        input: mpsc::Receiver<Transaction>,
        out: mpsc::Sender<Window>,
        errors: Errors,
    ) -> Self {
        let guard = StageGuard::new(format!("coalescer of index {index}"), errors.clone());
        Coalescer {
            settings,
            input: Some(input),
            out,
            errors,
            buffer: vec![],
            position: None,
            timer: None,
            sending: false,
            guard,
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
        let busy = self.out.capacity() == 0;
        if !force && busy && self.buffer.len() < self.settings.max_changes {
            self.arm_timer(ctx);
            return;
        }
        let Some(position) = self.position.take() else {
            return;
        };
        let window = Window {
            changes: std::mem::take(&mut self.buffer),
            position,
        };
        let out = self.out.clone();
        self.sending = true;
        ctx.wait(
            async move { out.send(window).await }
                .into_actor(self)
                .map(|r, act, ctx| {
                    act.sending = false;
                    if r.is_err() {
                        let _ = act.errors.send(Error::stage("the query builder stopped"));
                        act.guard.finish();
                        ctx.stop();
                    }
                }),
        );
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
        self.buffer.extend(tx.changes);
        self.position = Some(self.position.map_or(tx.position, |p| p.max(tx.position)));
        if self.buffer.len() >= self.settings.max_changes {
            self.flush(ctx, false);
        } else if self.timer.is_none() {
            self.arm_timer(ctx);
        }
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
