//! Change coalescing stage: gathers committed transactions over a short window and turns them into
//! the set of root documents to rebuild, found by walking each changed row up the schema tree in
//! PostgreSQL (old and new values, so a child moved between parents fixes both). Each document
//! goes to the fetcher lane its `_id` hashes to, so versions of one document stay in order. A
//! document whose root row is gone is deleted by the fetcher, so inserts, updates, deletes and key
//! changes all reduce to "rebuild these keys".

use super::lanes::{Lanes, ReceiverStream};
use super::messages::{Completion, FetchRequest, RootKey};
use crate::checkpoint::Event;
use crate::schema::resolve::{FieldSource, IndexPlan};
use crate::schema::TableId;
use crate::source::change::{Change, ChangeOp, Row, Transaction};
use crate::sql::document::{doc_id, RootFilter};
use crate::sql::roots::{effects, Effect};
use crate::{Error, Result};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Coalescing settings.
#[derive(Debug, Clone, Copy)]
pub struct CoalesceSettings {
    /// Longest time a change waits for others.
    pub window: Duration,
    /// Flush early at this many changes; also how many are held back while the fetchers are
    /// all busy, so a backlog coalesces here instead of queueing as documents built twice.
    pub max_changes: usize,
}

/// The coalescer actor.
pub struct Coalescer {
    plan: Arc<IndexPlan>,
    settings: CoalesceSettings,
    input: Option<mpsc::Receiver<Transaction>>,
    client: Option<Client>,
    connect: super::initial::Connector,
    out: Lanes<FetchRequest>,
    checkpoints: mpsc::UnboundedSender<Event>,
    frontier: watch::Receiver<u64>,
    errors: mpsc::UnboundedSender<Error>,
    buffer: Vec<Change>,
    position: Option<u64>,
    last_dispatched: u64,
    timer: Option<SpawnHandle>,
    effects: HashMap<TableId, Arc<Vec<Effect>>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Coalescer {
    /// A coalescer for `plan` reading `input` and dispatching to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Arc<IndexPlan>,
        settings: CoalesceSettings,
        input: mpsc::Receiver<Transaction>,
        connect: super::initial::Connector,
        out: Lanes<FetchRequest>,
        checkpoints: mpsc::UnboundedSender<Event>,
        frontier: watch::Receiver<u64>,
        errors: mpsc::UnboundedSender<Error>,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        let last_dispatched = *frontier.borrow();
        Coalescer {
            plan,
            settings,
            input: Some(input),
            client: None,
            connect,
            out,
            checkpoints,
            frontier,
            errors,
            buffer: vec![],
            position: None,
            last_dispatched,
            timer: None,
            effects: HashMap::new(),
            done: Some(done),
        }
    }

    fn effects_of(&mut self, t: &TableId) -> Arc<Vec<Effect>> {
        if let Some(e) = self.effects.get(t) {
            return e.clone();
        }
        let e = Arc::new(effects(&self.plan, t));
        self.effects.insert(t.clone(), e.clone());
        e
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        self.timer = Some(ctx.run_later(self.settings.window, |act, ctx| {
            act.timer = None;
            act.flush(ctx, false);
        }));
    }

    /// Dispatches the buffer. Unless `force`d (end of input), a full downstream with room left
    /// in the buffer defers the dispatch by one window: later changes to the same documents then
    /// merge into it rather than rebuilding them again behind a slow search engine.
    fn flush(&mut self, ctx: &mut Context<Self>, force: bool) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if self.position.is_none() {
            return;
        }
        if !force && !self.out.has_room() && self.buffer.len() < self.settings.max_changes {
            self.arm_timer(ctx);
            return;
        }
        // Without a client (a dispatch is still running) keep the buffer for the next flush;
        // taking it first would drop changes.
        let Some(client) = self.client.take() else {
            return;
        };
        let Some(position) = self.position.take() else {
            return;
        };
        let changes = std::mem::take(&mut self.buffer);
        let tables: Vec<(Change, Arc<Vec<Effect>>)> = changes
            .into_iter()
            .map(|c| {
                let e = self.effects_of(&c.table);
                (c, e)
            })
            .collect();
        let plan = self.plan.clone();
        let out = self.out.clone();
        let checkpoints = self.checkpoints.clone();
        let frontier = self.frontier.clone();
        let prior = std::mem::replace(&mut self.last_dispatched, position);
        let fut = async move {
            let r = dispatch(
                &client,
                &plan,
                tables,
                position,
                &out,
                &checkpoints,
                frontier,
                prior,
            )
            .await;
            (client, r)
        };
        ctx.wait(fut.into_actor(self).map(|(client, r), act, ctx| {
            act.client = Some(client);
            if let Err(e) = r {
                let _ = act.errors.send(e);
                ctx.stop();
            }
        }));
    }
}

impl Actor for Coalescer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let connect = self.connect.clone();
        ctx.wait(
            async move { connect().await }
                .into_actor(self)
                .map(|r, act, ctx| match r {
                    Ok(c) => {
                        act.client = Some(c);
                        if let Some(rx) = act.input.take() {
                            ctx.add_stream(ReceiverStream(rx));
                        }
                    }
                    Err(e) => {
                        let _ = act.errors.send(e);
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
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
        ctx.wait(async {}.into_actor(self).map(|_, _, ctx| ctx.stop()));
        self.flush(ctx, true);
    }
}

/// Values of `cols` in `row`, all present and non-null, as text.
fn values(row: &Row, cols: &[String]) -> Option<Vec<String>> {
    cols.iter().map(|c| row.get(c).cloned().flatten()).collect()
}

/// What one window of changes asks for.
#[derive(Default)]
struct Work {
    keys: BTreeMap<String, RootKey>,
    delete_all: bool,
    rebuild_all: bool,
    /// Per effect SQL: distinct link value tuples.
    lookups: HashMap<String, (usize, HashSet<Vec<String>>)>,
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    client: &Client,
    plan: &IndexPlan,
    changes: Vec<(Change, Arc<Vec<Effect>>)>,
    position: u64,
    out: &Lanes<FetchRequest>,
    checkpoints: &mpsc::UnboundedSender<Event>,
    mut frontier: watch::Receiver<u64>,
    prior: u64,
) -> Result<()> {
    let root = &plan.root;
    let routing_col = plan
        .routing_field
        .and_then(|i| match &root.fields[i].source {
            FieldSource::Column { expr, .. } if expr.steps.is_empty() => Some(expr.column.clone()),
            _ => None,
        });
    let mut work = Work::default();
    let add_root = |work: &mut Work, vals: Vec<String>, routing: Option<String>| {
        let id = doc_id(root, |k| {
            root.key
                .iter()
                .position(|x| x == k)
                .map(|i| vals[i].clone())
        });
        if let Some(id) = id {
            let e = work.keys.entry(id.clone()).or_insert(RootKey {
                values: vals,
                id,
                routing: None,
            });
            if routing.is_some() {
                e.routing = routing;
            }
        }
    };
    for (change, effs) in &changes {
        for eff in effs.iter() {
            if change.op == ChangeOp::Truncate {
                match eff {
                    Effect::Root => work.delete_all = true,
                    _ => work.rebuild_all = true,
                }
                continue;
            }
            let rows = change.old.iter().chain(change.new.iter());
            match eff {
                Effect::Root => {
                    for r in rows {
                        if let Some(v) = values(r, &root.key) {
                            let routing = routing_col
                                .as_ref()
                                .and_then(|c| r.get(c).cloned().flatten());
                            add_root(&mut work, v, routing);
                        }
                    }
                }
                Effect::Parent {
                    row_cols,
                    sql: None,
                } => {
                    for r in rows {
                        if let Some(v) = values(r, row_cols) {
                            add_root(&mut work, v, None);
                        }
                    }
                }
                Effect::Parent {
                    row_cols,
                    sql: Some(sql),
                } => {
                    let entry = work
                        .lookups
                        .entry(sql.clone())
                        .or_insert_with(|| (row_cols.len(), HashSet::new()));
                    for r in rows {
                        if let Some(v) = values(r, row_cols) {
                            entry.1.insert(v);
                        }
                    }
                }
                Effect::All => work.rebuild_all = true,
            }
        }
    }
    for (sql, (ncols, tuples)) in std::mem::take(&mut work.lookups) {
        if tuples.is_empty() {
            continue;
        }
        let mut params: Vec<Vec<String>> = vec![Vec::with_capacity(tuples.len()); ncols];
        for t in tuples {
            for (i, v) in t.into_iter().enumerate() {
                params[i].push(v);
            }
        }
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = client.query(sql.as_str(), &p).await.map_err(|e| {
            Error::from(e).context(format!("finding documents affected by changes ({sql})"))
        })?;
        for r in rows {
            let vals: Vec<String> = (0..root.key.len()).map(|i| r.get::<_, String>(i)).collect();
            add_root(&mut work, vals, None);
        }
    }

    let stopped = || Error::internal("fetcher stage stopped");
    if work.delete_all || work.rebuild_all {
        // Barrier: every earlier window is written, then the whole-index steps run alone.
        wait_for(&mut frontier, prior).await;
        if work.delete_all {
            whole_index_step(out, |c| FetchRequest::DeleteAll {
                completion: Some(c),
            })
            .await?;
        }
        if work.rebuild_all {
            whole_index_step(out, |c| FetchRequest::Range {
                filter: RootFilter::All,
                completion: Some(c),
            })
            .await?;
        }
    }
    let _ = checkpoints.send(Event::Register(position));
    let cps = checkpoints.clone();
    let c = Completion::new(move || {
        let _ = cps.send(Event::Done(position));
    });
    let mut per_lane: Vec<Vec<RootKey>> = vec![vec![]; out.len()];
    for (_, k) in work.keys {
        per_lane[out.lane_of(&k.id)].push(k);
    }
    for (lane, keys) in per_lane.into_iter().enumerate() {
        if !keys.is_empty() {
            out.send_to(
                lane,
                FetchRequest::Keys {
                    keys,
                    completion: Some(c.clone()),
                },
            )
            .await
            .map_err(|_| stopped())?;
        }
    }
    Ok(())
}

/// Sends one whole-index request on lane 0 and waits until it is written.
async fn whole_index_step(
    out: &Lanes<FetchRequest>,
    make: impl FnOnce(Completion) -> FetchRequest,
) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = Completion::new(move || {
        let _ = tx.send(());
    });
    out.send_to(0, make(c))
        .await
        .map_err(|_| Error::internal("fetcher stage stopped"))?;
    rx.await
        .map_err(|_| Error::internal("a whole-index rebuild or delete did not complete"))
}

/// Waits until the stored checkpoint reaches `position`.
async fn wait_for(frontier: &mut watch::Receiver<u64>, position: u64) {
    while *frontier.borrow_and_update() < position {
        if frontier.changed().await.is_err() {
            return;
        }
    }
}
