//! Query building stage: turns each coalesced window of changes into the set of root documents to
//! rebuild, found by walking each changed row up the schema tree in PostgreSQL (old and new
//! values, so a child moved between parents fixes both), with the index's root-resolution
//! statements prepared once on its own connection. Each document goes to the fetcher lane its
//! `_id` hashes to, so versions of one document stay in order. A change to a view's base table
//! is applied to the view rows it names; materialized views it feeds are refreshed first, once
//! per window. A root truncate or a change that cannot be narrowed becomes a whole-index step,
//! run alone once every earlier window is written (for a view root, followed by deleting the
//! documents of rows gone from the view).

use super::lanes::{Lanes, ReceiverStream};
use super::messages::{Completion, FetchRequest, RootKey, Window};
use super::stage::{Connector, Errors, StageGuard};
use crate::schema::resolve::{FieldSource, IndexPlan};
use crate::schema::TableId;
use crate::sink::Sink;
use crate::source::change::{Change, ChangeOp, Row};
use crate::sql::document::{doc_id, RootFilter};
use crate::sql::roots::{effects, Effect, ViewEffect};
use crate::{Error, Result};
use actix::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// What the query builder needs besides its input.
pub struct QueryBuilderWires {
    /// The fetcher lanes.
    pub out: Lanes<FetchRequest>,
    /// The stored checkpoint, for whole-index barriers.
    pub frontier: watch::Receiver<u64>,
    /// Where a failure is reported.
    pub errors: Errors,
    /// Opens its connection.
    pub connect: Connector,
    /// The sink, listed after a whole-index rebuild of a view root (see [`super::prune`]).
    pub sink: Sink,
    /// The physical index this query builder's documents go to (what is listed then).
    pub physical: Arc<str>,
    /// `capture.refresh_materialized_views`: refresh materialized view nodes before rebuilding
    /// what their base tables' changes touch (else follow the refreshes others make).
    pub refresh_views: bool,
}

/// The query builder actor.
pub struct QueryBuilder {
    plan: Arc<IndexPlan>,
    input: Option<mpsc::Receiver<Window>>,
    wires: QueryBuilderWires,
    state: Option<Resolver>,
    last_dispatched: u64,
    guard: StageGuard,
    /// Busy time: finding the documents each window touches.
    times: crate::telemetry::StageTimes,
}

/// The connection and the statements prepared on it, moved into each window's future.
struct Resolver {
    client: Client,
    statements: HashMap<String, Statement>,
    effects: HashMap<TableId, Arc<Vec<Effect>>>,
}

impl QueryBuilder {
    /// A query builder for `plan` reading windows from `input`.
    pub fn new(
        plan: Arc<IndexPlan>,
        input: mpsc::Receiver<Window>,
        wires: QueryBuilderWires,
    ) -> Self {
        let last_dispatched = *wires.frontier.borrow();
        let guard = StageGuard::new(
            format!("query builder of index {}", plan.spec.index),
            wires.errors.clone(),
        );
        let times = crate::telemetry::StageTimes::new(&plan.spec.index, "query_builder", None);
        QueryBuilder {
            plan,
            input: Some(input),
            wires,
            state: None,
            last_dispatched,
            guard,
            times,
        }
    }
}

impl Actor for QueryBuilder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let connect = self.wires.connect.clone();
        ctx.wait(
            async move { connect().await }
                .into_actor(self)
                .map(|r, act, ctx| match r {
                    Ok(client) => {
                        act.state = Some(Resolver {
                            client,
                            statements: HashMap::new(),
                            effects: HashMap::new(),
                        });
                        if let Some(rx) = act.input.take() {
                            ctx.add_stream(ReceiverStream(rx));
                        }
                    }
                    Err(e) => {
                        let _ = act.wires.errors.send(e.context("query builder"));
                        act.guard.finish();
                        ctx.stop();
                    }
                }),
        );
    }
}

impl StreamHandler<Window> for QueryBuilder {
    fn handle(&mut self, window: Window, ctx: &mut Context<Self>) {
        let Some(mut state) = self.state.take() else {
            return;
        };
        let plan = self.plan.clone();
        let prior = std::mem::replace(&mut self.last_dispatched, window.position);
        let to = Downstream {
            out: self.wires.out.clone(),
            frontier: self.wires.frontier.clone(),
            sink: self.wires.sink.clone(),
            physical: self.wires.physical.clone(),
        };
        let refresh_views = self.wires.refresh_views;
        let times = self.times.clone();
        let span = super::stage::stage_span("query_builder", &plan.spec.index);
        let fut = async move {
            let r = async {
                crate::sql::visibility::await_visible(&state.client, &window.xids)
                    .await
                    .map_err(|e| e.context("waiting for captured transactions to be visible"))?;
                let started = std::time::Instant::now();
                let work = state.resolve(&plan, &window.changes, refresh_views).await?;
                times.busy(started.elapsed());
                dispatch(work, &plan, window, prior, to).await
            }
            .await;
            (state, r)
        };
        let fut = tracing::Instrument::instrument(fut, span);
        ctx.wait(fut.into_actor(self).map(|(state, r), act, ctx| {
            act.state = Some(state);
            if let Err(e) = r {
                let _ = act.wires.errors.send(e);
                act.guard.finish();
                ctx.stop();
            }
        }));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.guard.finish();
        ctx.stop();
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
    /// Per root-resolution statement: the number of link columns and the distinct tuples.
    lookups: HashMap<String, (usize, HashSet<Vec<String>>)>,
    /// Materialized views to refresh before the documents are looked up and rebuilt.
    refresh: Vec<Arc<TableId>>,
}

/// What every change of a window is read with.
struct ChangeRules<'a> {
    routing_col: Option<RoutingColumn<'a>>,
    refresh_views: bool,
}

impl Work {
    /// Adds a root document by its key values, with a routing value seen for it.
    fn add_root(&mut self, plan: &IndexPlan, vals: Vec<String>, routing: Option<String>) {
        let root = &plan.root;
        let id = doc_id(root, |k| {
            root.key
                .iter()
                .position(|x| x == k)
                .map(|i| vals[i].clone())
        });
        let Some(id) = id else { return };
        let e = self.keys.entry(id.clone()).or_insert(RootKey {
            values: vals,
            id,
            routings: vec![],
        });
        if let Some(r) = routing {
            if !e.routings.contains(&r) {
                e.routings.push(r);
            }
        }
    }

    /// Records what one change asks for under one of its table's effects.
    fn add_change(&mut self, plan: &IndexPlan, change: &Change, eff: &Effect, rules: &ChangeRules) {
        if change.op == ChangeOp::Refresh {
            // Someone refreshed a materialized view node: any of its rows may have changed. The
            // daemon's own refreshes (and anyone's, while it refreshes them itself) are skipped.
            if !rules.refresh_views && matches!(eff, Effect::Root | Effect::Parent { .. }) {
                self.rebuild_all = true;
            }
            return;
        }
        if let Effect::View(v) = eff {
            return self.add_view_change(plan, change, v, rules);
        }
        if change.op == ChangeOp::Truncate {
            match eff {
                Effect::Root => self.delete_all = true,
                _ => self.rebuild_all = true,
            }
            return;
        }
        let rows = change.old.iter().chain(change.new.iter());
        match eff {
            Effect::Root => {
                for r in rows {
                    if let Some(v) = values(r, &plan.root.key) {
                        let routing = rules.routing_col.as_ref().and_then(|c| c.of(r));
                        self.add_root(plan, v, routing);
                    }
                }
            }
            Effect::Parent {
                row_cols,
                sql: None,
            } => {
                for r in rows {
                    if let Some(v) = values(r, row_cols) {
                        self.add_root(plan, v, None);
                    }
                }
            }
            Effect::Parent {
                row_cols,
                sql: Some(sql),
            } => {
                let entry = self
                    .lookups
                    .entry(sql.clone())
                    .or_insert_with(|| (row_cols.len(), HashSet::new()));
                for r in rows {
                    if let Some(v) = values(r, row_cols) {
                        entry.1.insert(v);
                    }
                }
            }
            Effect::View(_) => {}
            Effect::All => self.rebuild_all = true,
        }
    }

    /// A change to a base table of a view node, applied to the view rows it names (old and new
    /// values: rows it left or joined). A materialized view is refreshed first; while its
    /// refreshes are left to others, its base tables change nothing until they refresh it.
    fn add_view_change(
        &mut self,
        plan: &IndexPlan,
        change: &Change,
        v: &ViewEffect,
        rules: &ChangeRules,
    ) {
        if v.materialized {
            if !rules.refresh_views {
                return;
            }
            if !self.refresh.contains(&v.table) {
                self.refresh.push(v.table.clone());
            }
        }
        let Some(columns) = v
            .columns
            .as_ref()
            .filter(|_| change.op != ChangeOp::Truncate)
        else {
            self.rebuild_all = true;
            return;
        };
        let as_view = |r: &Row| -> Row {
            columns
                .iter()
                .filter_map(|(base, view)| Some((view.clone(), r.get(base)?.clone())))
                .collect()
        };
        let translated = Change {
            table: v.table.clone(),
            op: change.op,
            old: change.old.as_ref().map(as_view),
            new: change.new.as_ref().map(as_view),
        };
        for e in &v.inner {
            self.add_change(plan, &translated, e, rules);
        }
    }
}

/// How the routing value of a root document follows from its row, when routing is a plain
/// column (its old value is then known from the change itself): the column, and the `replace`
/// pairs of its transform, applied as the document query applies them.
struct RoutingColumn<'a> {
    column: &'a str,
    replace: &'a [(String, String)],
}

impl RoutingColumn<'_> {
    fn of(&self, row: &Row) -> Option<String> {
        let raw = row.get(self.column).cloned().flatten()?;
        Some(
            self.replace
                .iter()
                .fold(raw, |v, (old, new)| v.replace(old.as_str(), new)),
        )
    }
}

fn routing_column(plan: &IndexPlan) -> Option<RoutingColumn<'_>> {
    let i = plan.routing_field?;
    match &plan.root.fields[i].source {
        FieldSource::Column { expr, replace, .. } if expr.steps.is_empty() => Some(RoutingColumn {
            column: expr.column.as_str(),
            replace,
        }),
        _ => None,
    }
}

impl Resolver {
    fn effects_of(&mut self, plan: &IndexPlan, t: &TableId) -> Arc<Vec<Effect>> {
        self.effects
            .entry(t.clone())
            .or_insert_with(|| Arc::new(effects(plan, t)))
            .clone()
    }

    /// The root documents a window of changes touches. Materialized views whose base tables
    /// changed are refreshed (once each) before anything is looked up through them.
    async fn resolve(
        &mut self,
        plan: &IndexPlan,
        changes: &[Change],
        refresh_views: bool,
    ) -> Result<Work> {
        let rules = ChangeRules {
            routing_col: routing_column(plan),
            refresh_views,
        };
        let mut work = Work::default();
        for change in changes {
            let effs = self.effects_of(plan, &change.table);
            for eff in effs.iter() {
                work.add_change(plan, change, eff, &rules);
            }
        }
        for view in std::mem::take(&mut work.refresh) {
            super::views::refresh(&self.client, plan, &view).await?;
        }
        for (sql, (ncols, tuples)) in std::mem::take(&mut work.lookups) {
            if tuples.is_empty() {
                continue;
            }
            for vals in self
                .lookup(&sql, ncols, tuples, plan.root.key.len())
                .await?
            {
                work.add_root(plan, vals, None);
            }
        }
        Ok(work)
    }

    /// Runs one root-resolution statement (prepared once) for a set of link-value tuples.
    async fn lookup(
        &mut self,
        sql: &str,
        ncols: usize,
        tuples: HashSet<Vec<String>>,
        nkeys: usize,
    ) -> Result<Vec<Vec<String>>> {
        let mut params: Vec<Vec<String>> = vec![Vec::with_capacity(tuples.len()); ncols];
        for t in tuples {
            for (i, v) in t.into_iter().enumerate() {
                params[i].push(v);
            }
        }
        let ctx = |e: tokio_postgres::Error| {
            Error::from(e).context(format!("finding documents affected by changes ({sql})"))
        };
        let stmt = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.client.prepare(sql).await.map_err(ctx)?;
                self.statements.insert(sql.to_owned(), s.clone());
                s
            }
        };
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(&stmt, &p).await.map_err(ctx)?;
        Ok(rows
            .iter()
            .map(|r| (0..nkeys).map(|i| r.get::<_, String>(i)).collect())
            .collect())
    }
}

/// Where a window's work goes.
struct Downstream {
    out: Lanes<FetchRequest>,
    frontier: watch::Receiver<u64>,
    sink: Sink,
    physical: Arc<str>,
}

/// Sends a window's work to the fetchers, each part under the window's completion, then settles
/// the query builder's own part.
async fn dispatch(
    work: Work,
    plan: &IndexPlan,
    window: Window,
    prior: u64,
    to: Downstream,
) -> Result<()> {
    let position = window.position;
    let Downstream {
        out,
        mut frontier,
        sink,
        physical,
    } = to;
    let out = &out;
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
            tracing::info!(index = %plan.spec.index, position, "rebuilding every document: a change could not be narrowed to some documents");
            whole_index_step(out, |c| FetchRequest::Range {
                filter: RootFilter::All,
                completion: Some(c),
            })
            .await?;
            // A view root's rows can leave it without any change naming them.
            if !plan.root.capturable {
                super::prune::prune_orphans(&sink, &physical, out).await?;
            }
        }
    }
    let c = window.completion;
    let mut per_lane: Vec<Vec<RootKey>> = vec![vec![]; out.len()];
    for (_, k) in work.keys {
        per_lane[out.lane_of(&k.id)].push(k);
    }
    for (lane, keys) in per_lane.into_iter().enumerate() {
        if keys.is_empty() {
            continue;
        }
        let req = FetchRequest::Keys {
            keys,
            position,
            completion: Some(c.clone()),
        };
        out.send_to(lane, req)
            .await
            .map_err(|_| Error::stage("the fetcher stage stopped"))?;
    }
    c.done();
    Ok(())
}

/// Sends one whole-index request on lane 0 and waits until it is written.
async fn whole_index_step(
    out: &Lanes<FetchRequest>,
    make: impl FnOnce(Completion) -> FetchRequest,
) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = Completion::new(
        move || {
            let _ = tx.send(());
        },
        || {},
    );
    out.send_to(0, make(c))
        .await
        .map_err(|_| Error::stage("the fetcher stage stopped"))?;
    rx.await
        .map_err(|_| Error::stage("a whole-index rebuild or delete was not completed"))
}

/// Waits until the stored checkpoint reaches `position`.
async fn wait_for(frontier: &mut watch::Receiver<u64>, position: u64) {
    let _ = frontier.wait_for(|p| *p >= position).await;
}
