//! The initial sync of one index: planner → fetchers → writers, spawned back to front, each stage
//! on its own arbiter thread and fed by bounded channels. Every range settles a completion once
//! the engine acknowledged all its documents; with a [`RangeLog`] the daemon stores each finished
//! range, so a sync killed part-way resumes from the ranges it finished rather than from zero.

use super::destination::Destination;
use super::fetcher::{FetchSettings, Fetcher};
use super::lanes::Lanes;
use super::messages::{Completion, DocChunk, FetchRequest, RootKey};
use super::planner;
use super::progress::{Progress, Stats, Summary};
use super::stage::{connector, Errors, Threads};
use super::writer::{Writer, WriterSettings};
use crate::checkpoint::{CheckpointRecord, RangeState, Store};
use crate::config::Config;
use crate::schema::resolve::IndexPlan;
use crate::sink::Sink;
use crate::sql::document::RootFilter;
use crate::{Error, Result};
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The writer stage: `pipeline.writers` writers of `dest` with inputs of `capacity` messages, on
/// `threads`. Returns their lanes and done signals.
#[allow(clippy::too_many_arguments)]
pub fn spawn_writers(
    cfg: &Config,
    threads: &mut Threads,
    sink: &Sink,
    dest: &Destination,
    stats: &Arc<Stats>,
    errors: &Errors,
    linger: Duration,
    capacity: usize,
) -> (Lanes<DocChunk>, Vec<tokio::sync::oneshot::Receiver<()>>) {
    let p = &cfg.pipeline;
    let mut senders = vec![];
    let mut dones = vec![];
    for n in 0..p.writers.max(1) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (dtx, drx) = tokio::sync::oneshot::channel();
        let settings = WriterSettings {
            batch_docs: p.batch_docs.max(1),
            batch_bytes: p.batch_bytes.max(1024),
            in_flight: p.requests_in_flight.max(1),
            linger,
        };
        let (sink, dest, stats, errors) =
            (sink.clone(), dest.clone(), stats.clone(), errors.clone());
        Writer::start_in_arbiter(&threads.spawn(), move |_| {
            Writer::new(n + 1, sink, &dest, settings, rx, stats, errors, dtx)
        });
        senders.push(tx);
        dones.push(drx);
    }
    (Lanes::new(senders).observed(dest.alias(), "writer"), dones)
}

/// The fetcher stage of `dest`: `n` fetchers with inputs of `capacity` messages, each writing to
/// `out`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_fetchers(
    cfg: &Config,
    threads: &mut Threads,
    dest: &Destination,
    out: &Lanes<DocChunk>,
    stats: &Arc<Stats>,
    errors: &Errors,
    n: usize,
    capacity: usize,
) -> Lanes<FetchRequest> {
    let p = &cfg.pipeline;
    let plan = &dest.plan;
    // Documents are built on the read replica when there is one.
    let replica = cfg.read_replica();
    let connect = connector(replica.as_ref().unwrap_or(cfg), &plan.spec.database);
    let replica_of = replica.is_some().then(|| {
        (
            connector(cfg, &plan.spec.database),
            cfg.capture.mode == crate::config::CaptureMode::Wal,
        )
    });
    let mut senders = vec![];
    for lane in 0..n.max(1) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let settings = Arc::new(FetchSettings {
            plan: plan.clone(),
            with_meta: cfg.documents.meta,
            chunk_docs: p.fetch_chunk.max(1).min(p.batch_docs.max(1)),
            chunk_bytes: p.batch_bytes.max(1024),
            lane,
            physical: dest.physical.clone(),
            plugins: crate::plugin::chain_for(&plan.spec.index),
            replica_of: replica_of.clone(),
        });
        let (out, stats, errors, connect) =
            (out.clone(), stats.clone(), errors.clone(), connect.clone());
        Fetcher::start_in_arbiter(&threads.spawn(), move |_| {
            Fetcher::new(settings, rx, out, stats, errors, connect)
        });
        senders.push(tx);
    }
    Lanes::new(senders).observed(dest.alias(), "fetcher")
}

/// Where a daemon's initial sync records its ranges as they finish: the index's checkpoint
/// record, holding an [`crate::checkpoint::InitialProgress`].
pub struct RangeLog {
    /// The checkpoint store.
    pub store: Store,
    /// The checkpoint key.
    pub key: String,
    /// The record as stored, with `initial` set.
    pub record: CheckpointRecord,
}

impl RangeLog {
    fn ranges(&self) -> &[RangeState] {
        self.record
            .initial
            .as_ref()
            .map(|p| p.ranges.as_slice())
            .unwrap_or_default()
    }

    async fn mark_done(&mut self, i: usize) -> Result<()> {
        if let Some(r) = self
            .record
            .initial
            .as_mut()
            .and_then(|p| p.ranges.get_mut(i))
        {
            r.done = true;
        }
        self.store.save(&self.key, &self.record).await
    }
}

/// The ranges to read: those a previous attempt left unfinished, or a fresh split of the table.
async fn plan_ranges(
    cfg: &Config,
    plan: &IndexPlan,
    log: &mut Option<RangeLog>,
) -> Result<(Vec<(usize, RootFilter)>, Option<u64>)> {
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let (kind, pages, rows) = planner::root_size(&client, plan).await?;
    drop(client);
    if let Some(l) = log.as_ref().filter(|l| !l.ranges().is_empty()) {
        let left: Vec<(usize, RootFilter)> = l
            .ranges()
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.done)
            .map(|(i, r)| (i, r.filter.clone()))
            .collect();
        tracing::info!(index = %plan.spec.index, left = left.len(), of = l.ranges().len(), "initial sync resumes from the ranges it finished");
        return Ok((left, rows));
    }
    let n = cfg.pipeline.fetchers.max(1) * cfg.pipeline.ranges_per_fetcher.max(1);
    let ranges = planner::split(kind, pages, n);
    if let Some(l) = log.as_mut() {
        if let Some(p) = l.record.initial.as_mut() {
            p.ranges = ranges
                .iter()
                .map(|f| RangeState {
                    filter: f.clone(),
                    done: false,
                })
                .collect();
        }
        l.store.save(&l.key, &l.record).await?;
    }
    tracing::info!(index = %plan.spec.index, ranges = ranges.len(), pages, estimated_rows = rows.unwrap_or(0), "initial sync started");
    Ok((ranges.into_iter().enumerate().collect(), rows))
}

/// One unit of a batch run: a slice of the root table, or documents by key.
#[derive(Debug)]
enum Unit {
    Range(RootFilter),
    Keys(Vec<RootKey>),
}

impl Unit {
    fn request(self, completion: Completion) -> FetchRequest {
        match self {
            Unit::Range(filter) => FetchRequest::Range {
                filter,
                completion: Some(completion),
            },
            Unit::Keys(keys) => FetchRequest::Keys {
                keys,
                position: 0,
                completion: Some(completion),
            },
        }
    }
}

/// Builds every document of `plan` (or, with a `log` holding progress, those of the ranges not
/// yet finished) and writes it to `sink`. Must run inside an actix System.
pub async fn initial_sync(
    cfg: &Config,
    sink: Sink,
    dest: &Destination,
    log: Option<RangeLog>,
) -> Result<Summary> {
    run_batch(cfg, sink, dest, Batch::Ranges(log)).await
}

/// Rebuilds the documents of `keys` from the current rows (deleting those whose root row is
/// gone): `pgsync dead-letters retry`. Must run inside an actix System.
pub async fn rebuild(
    cfg: &Config,
    sink: Sink,
    dest: &Destination,
    keys: Vec<RootKey>,
) -> Result<Summary> {
    run_batch(cfg, sink, dest, Batch::Keys(keys)).await
}

/// Before a full sync into an index that already holds documents, when the root is a view:
/// deletes the documents whose rows are no longer in the view (no change names them; see
/// [`super::prune`]). A table root's deleted rows are named by their own changes.
pub async fn prune_view_root(cfg: &Config, sink: Sink, dest: &Destination) -> Result<()> {
    if dest.plan.root.capturable {
        return Ok(());
    }
    run_batch(cfg, sink, dest, Batch::Prune).await?;
    Ok(())
}

/// What a batch run reads.
enum Batch {
    Ranges(Option<RangeLog>),
    Keys(Vec<RootKey>),
    /// Every indexed document, checked against the root view.
    Prune,
}

async fn run_batch(cfg: &Config, sink: Sink, dest: &Destination, batch: Batch) -> Result<Summary> {
    let plan = dest.plan.clone();
    let started = Instant::now();
    // A prune runs right before a sync, which refreshes them anyway.
    if !matches!(batch, Batch::Prune) {
        refresh_views(cfg, &plan).await?;
    }
    let stats = Arc::new(Stats::default());
    let (err_tx, mut err_rx) = mpsc::unbounded_channel();
    let index = plan.spec.index.clone();
    let mut threads = Threads::default();

    // Back to front: writers, then fetchers given the writers' lanes, then the planner.
    let (write_lanes, dones) = spawn_writers(
        cfg,
        &mut threads,
        &sink,
        dest,
        &stats,
        &err_tx,
        Duration::from_millis(200),
        cfg.pipeline.channel_capacity,
    );
    let fetch_lanes = spawn_fetchers(
        cfg,
        &mut threads,
        dest,
        &write_lanes,
        &stats,
        &err_tx,
        cfg.pipeline.fetchers,
        cfg.pipeline.channel_capacity,
    );
    let blocked = write_lanes.blocked_counter();
    drop(write_lanes);

    let result = async {
        let (units, rows, mut log) = match batch {
            Batch::Ranges(mut log) => {
                let (ranges, rows) = plan_ranges(cfg, &plan, &mut log).await?;
                initial_gauges(&index, ranges.len(), rows);
                let units = ranges
                    .into_iter()
                    .map(|(i, f)| (i, Unit::Range(f)))
                    .collect();
                (units, rows, log)
            }
            Batch::Keys(keys) => (split_keys(keys, &fetch_lanes), None, None),
            Batch::Prune => {
                super::prune::prune_orphans(&sink, &dest.physical, &fetch_lanes).await?;
                (vec![], None, None)
            }
        };
        let _progress = Progress::start(
            &index,
            stats.clone(),
            rows,
            Duration::from_secs(cfg.log.progress_interval_secs.max(1)),
        );
        run_units(
            units,
            fetch_lanes,
            dones,
            &err_tx,
            &mut err_rx,
            log.as_mut(),
            &index,
        )
        .await
    }
    .await;
    threads.stop().await;
    result?;
    Ok(Summary {
        index,
        written: stats.written(),
        failed: stats.failed(),
        dead_lettered: stats.dead_lettered(),
        retries: stats.retries(),
        elapsed: started.elapsed(),
        blocked: blocked.get(),
    })
}

/// The initial-sync gauges of a new attempt: its ranges and the rows expected.
fn initial_gauges(index: &str, ranges: usize, rows: Option<u64>) {
    use crate::telemetry::names::*;
    let label = || ("index", index.to_owned());
    metrics::gauge!(INITIAL_RANGES_PLANNED, &[label()]).set(ranges as f64);
    metrics::gauge!(INITIAL_RANGES_DONE, &[label()]).set(0.0);
    metrics::gauge!(INITIAL_ROWS_EXPECTED, &[label()]).set(rows.unwrap_or(0) as f64);
    metrics::gauge!(INITIAL_ROWS_DONE, &[label()]).set(0.0);
}

/// Refreshes the materialized view nodes first (unless the user refreshes them), so the
/// documents are built from what their base tables hold now.
async fn refresh_views(cfg: &Config, plan: &IndexPlan) -> Result<()> {
    if !cfg.capture.refresh_materialized_views || super::views::materialized_nodes(plan).is_empty()
    {
        return Ok(());
    }
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    super::views::refresh_all(&client, plan).await
}

/// Keys grouped by the fetcher lane their `_id` belongs to, one unit per lane.
fn split_keys(keys: Vec<RootKey>, lanes: &Lanes<FetchRequest>) -> Vec<(usize, Unit)> {
    let mut per_lane: Vec<Vec<RootKey>> = vec![vec![]; lanes.len()];
    for k in keys {
        per_lane[lanes.lane_of(&k.id)].push(k);
    }
    per_lane
        .into_iter()
        .enumerate()
        .filter(|(_, k)| !k.is_empty())
        .map(|(lane, k)| (lane, Unit::Keys(k)))
        .collect()
}

/// Feeds the units to the fetchers and records each range as it finishes, until all are written
/// or a stage fails.
async fn run_units(
    units: Vec<(usize, Unit)>,
    fetch_lanes: Lanes<FetchRequest>,
    dones: Vec<tokio::sync::oneshot::Receiver<()>>,
    err_tx: &Errors,
    err_rx: &mut mpsc::UnboundedReceiver<Error>,
    mut log: Option<&mut RangeLog>,
    index: &str,
) -> Result<()> {
    let total = units.len();
    let ranges_done =
        metrics::gauge!(crate::telemetry::names::INITIAL_RANGES_DONE, "index" => index.to_owned());
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<usize>();
    let feed = async {
        for (i, unit) in units {
            let (tx, errs) = (finished_tx.clone(), err_tx.clone());
            let completion = Completion::new(
                move || {
                    let _ = tx.send(i);
                },
                move || {
                    let _ = errs.send(Error::stage(format!(
                        "range {} of the initial sync: its documents {}",
                        i + 1,
                        super::stage::UNWRITTEN
                    )));
                },
            );
            let sent = match unit {
                Unit::Keys(_) => {
                    let lane = i % fetch_lanes.len();
                    fetch_lanes.send_to(lane, unit.request(completion)).await
                }
                Unit::Range(_) => fetch_lanes.send_any(unit.request(completion)).await,
            };
            if sent.is_err() {
                break;
            }
        }
        drop(fetch_lanes);
        for d in dones {
            let _ = d.await;
        }
    };
    tokio::pin!(feed);
    let mut fed = false;
    let mut finished = 0;
    while finished < total || !fed {
        tokio::select! {
            _ = &mut feed, if !fed => fed = true,
            Some(i) = finished_rx.recv() => {
                finished += 1;
                ranges_done.set(finished as f64);
                if let Some(l) = log.as_deref_mut() {
                    l.mark_done(i).await?;
                }
            }
            Some(e) = err_rx.recv() => return Err(super::stage::cause(e, err_rx).await),
        }
    }
    match err_rx.try_recv() {
        Ok(e) => Err(e),
        Err(_) => Ok(()),
    }
}
