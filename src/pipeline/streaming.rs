//! One streaming run of one index: the WAL reader (or notify listener) → coalescer → query
//! builder → fetchers → writers, with the checkpointer advancing the stored position (and the
//! slot) only over positions whose documents are all written. Spawned back to front, each stage
//! on its own thread. A stop request drains what is in flight and stores the checkpoint; a
//! failure tears every stage down at once (what they held is not checkpointed) and is returned
//! to the supervisor, which starts the next run from the stored checkpoint.

use super::bootstrap::log_names;
use super::coalescer::{CoalesceSettings, Coalescer, CoalescerWires};
use super::destination::Destination;
use super::initial::{spawn_fetchers, spawn_writers};
use super::lanes::Lanes;
use super::messages::FetchRequest;
use super::messages::Window;
use super::query_builder::{QueryBuilder, QueryBuilderWires};
use super::stage::{connector, Errors, Threads};
use crate::checkpoint::{CheckpointRecord, Checkpointer, Store};
use crate::config::{CaptureMode, Config};
use crate::sink::Sink;
use crate::source::change::Transaction;
use crate::source::{notify, slot};
use crate::{Error, ErrorKind, Result};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often a streaming run checks that its indexes are still the ones it writes to.
const INDEX_WATCH: Duration = Duration::from_secs(5);

/// What a streaming run needs.
pub struct StreamRun<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// Where documents go: the live index, and during a migration the index being built.
    pub destinations: Vec<Destination>,
    /// The engine (or file).
    pub sink: Sink,
    /// The checkpoint store.
    pub store: Store,
    /// The checkpoint key (the slot name).
    pub key: String,
    /// The stored checkpoint to start from.
    pub record: CheckpointRecord,
    /// The slot (wal) and publication, or unused in notify mode.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// When set, the run drains and ends once this resolves `Ok` (a migration's swap), and fails
    /// with its error.
    pub until: Option<Until>,
}

/// What [`StreamRun::until`] is handed: where the run is.
pub struct Positions {
    /// The stored checkpoint: every change up to it is written to every destination.
    pub frontier: watch::Receiver<u64>,
    /// The highest position the source delivered.
    pub received: watch::Receiver<u64>,
}

/// An end condition for a run, given its positions.
pub type Until =
    Box<dyn FnOnce(Positions) -> futures::future::BoxFuture<'static, Result<()>> + Send>;

/// How a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Asked to stop (SIGTERM/SIGINT).
    Stopped,
    /// Its end condition was met.
    Finished,
}

/// The handles of a running pipeline that the run keeps.
struct Running {
    threads: Threads,
    reader: tokio::task::JoinHandle<()>,
    reader_stop: watch::Sender<bool>,
    writer_dones: Vec<tokio::sync::oneshot::Receiver<()>>,
    frontier: watch::Receiver<u64>,
    received: watch::Receiver<u64>,
}

/// Streams changes until `stop` turns true or the run's end condition is met (drains, stores
/// the checkpoint) or a stage fails (tears down, `Err`). `started` turns true once the source is
/// connected.
pub async fn stream(
    mut run: StreamRun<'_>,
    mut stop: watch::Receiver<bool>,
    started: watch::Sender<bool>,
) -> Result<StreamEnd> {
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<Error>();
    let running = spawn(&run, &err_tx, started);
    let index = run.destinations[0].alias().to_owned();
    let until = run.until.take().map(|f| {
        f(Positions {
            frontier: running.frontier.clone(),
            received: running.received.clone(),
        })
    });
    let watched: Vec<String> = run
        .destinations
        .iter()
        .map(|d| d.physical.to_string())
        .collect();
    let failure = tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(StreamEnd::Stopped),
        Some(e) = err_rx.recv() => Err(super::stage::cause(e, &mut err_rx).await),
        e = watch_indexes(&run.sink, &watched) => Err(e),
        r = maybe(until) => r.map(|_| StreamEnd::Finished),
    };
    let end = match failure {
        Ok(end) => end,
        Err(e) => {
            let _ = running.reader_stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), running.reader).await;
            running.threads.stop().await;
            return Err(e);
        }
    };
    let last = drain(running, &mut err_rx).await?;
    finish(&run, last).await?;
    tracing::info!(index = %index, checkpoint = last, "stopped cleanly");
    Ok(end)
}

/// Awaits an optional future (never resolving when there is none).
async fn maybe(f: Option<futures::future::BoxFuture<'static, Result<()>>>) -> Result<()> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The query builder, fetchers and writers of one destination, spawned back to front; returns
/// the query builder's input.
fn spawn_destination(
    run: &StreamRun<'_>,
    dest: &Destination,
    threads: &mut Threads,
    err_tx: &Errors,
    frontier: &watch::Receiver<u64>,
) -> (
    mpsc::Sender<Window>,
    Vec<tokio::sync::oneshot::Receiver<()>>,
) {
    let cfg = run.cfg;
    let stats = Arc::new(super::progress::Stats::default());
    let depth = cfg.capture.queue_depth;
    let (write_lanes, writer_dones) = spawn_writers(
        cfg,
        threads,
        &run.sink,
        dest,
        &stats,
        err_tx,
        Duration::from_millis(5),
        depth,
    );
    let fetch_lanes: Lanes<FetchRequest> = spawn_fetchers(
        cfg,
        threads,
        dest,
        &write_lanes,
        &stats,
        err_tx,
        cfg.pipeline.fetchers,
        depth,
    );
    drop(write_lanes);
    let (window_tx, window_rx) = mpsc::channel(depth.max(1));
    crate::telemetry::watch_queue(dest.alias(), "query_builder", &window_tx);
    let wires = QueryBuilderWires {
        out: fetch_lanes,
        frontier: frontier.clone(),
        errors: err_tx.clone(),
        connect: connector(cfg, &dest.plan.spec.database),
        sink: run.sink.clone(),
        physical: dest.physical.clone(),
        refresh_views: cfg.capture.refresh_materialized_views,
    };
    let plan = dest.plan.clone();
    QueryBuilder::start_in_arbiter(&threads.spawn(), move |_| {
        QueryBuilder::new(plan, window_rx, wires)
    });
    (window_tx, writer_dones)
}

/// Spawns the stages back to front: each destination's writers, fetchers and query builder, the
/// checkpointer, the coalescer, then the source.
fn spawn(run: &StreamRun<'_>, err_tx: &Errors, started: watch::Sender<bool>) -> Running {
    let cfg = run.cfg;
    let mut threads = Threads::default();
    let start = run.record.position;
    let (cp_tx, cp_rx) = mpsc::unbounded_channel();
    let (frontier_tx, frontier_rx) = watch::channel(start);
    let mut outs = vec![];
    let mut writer_dones = vec![];
    for dest in &run.destinations {
        let (tx, dones) = spawn_destination(run, dest, &mut threads, err_tx, &frontier_rx);
        outs.push(tx);
        writer_dones.extend(dones);
    }
    {
        let (store, key, base) = (run.store.clone(), run.key.clone(), run.record.clone());
        let index = run.destinations[0].alias().to_owned();
        Checkpointer::start_in_arbiter(&threads.spawn(), move |_| {
            Checkpointer::new(&index, key, store, base, cp_rx, frontier_tx)
        });
    }
    let (received_tx, received_rx) = watch::channel(start);
    let (tx_tx, tx_rx) = mpsc::channel::<Transaction>(cfg.pipeline.channel_capacity.max(1) * 16);
    crate::telemetry::watch_queue(run.destinations[0].alias(), "coalescer", &tx_tx);
    measure_latency(run, frontier_rx.clone());
    {
        let settings = CoalesceSettings {
            window: Duration::from_millis(cfg.capture.coalesce_window_ms),
            max_changes: cfg.capture.coalesce_max_changes.max(1),
        };
        let wires = CoalescerWires {
            outs,
            checkpoints: cp_tx,
            received: received_tx,
            errors: err_tx.clone(),
        };
        let index = run.destinations[0].alias().to_owned();
        Coalescer::start_in_arbiter(&threads.spawn(), move |_| {
            Coalescer::new(&index, settings, tx_rx, wires)
        });
    }
    let (reader_stop, reader_stop_rx) = watch::channel(false);
    let reader = spawn_source(
        run,
        tx_tx,
        frontier_rx.clone(),
        reader_stop_rx,
        err_tx,
        started,
    );
    Running {
        threads,
        reader,
        reader_stop,
        writer_dones,
        frontier: frontier_rx,
        received: received_rx,
    }
}

/// Records the end-to-end latency of the transactions the checkpoint passes (see
/// [`crate::telemetry::lag`]), until the run's checkpointer is gone.
fn measure_latency(run: &StreamRun<'_>, mut frontier: watch::Receiver<u64>) {
    if !crate::telemetry::enabled() {
        return;
    }
    let key = match run.cfg.capture.mode {
        CaptureMode::Wal => run.slot.clone(),
        CaptureMode::Notify => log_names(run.cfg, &run.destinations[0].plan).table,
    };
    let index = run.destinations[0].alias().to_owned();
    tokio::spawn(async move {
        while frontier.changed().await.is_ok() {
            let at = *frontier.borrow_and_update();
            crate::telemetry::lag::written(&key, &index, at);
        }
        crate::telemetry::lag::forget(&key);
    });
}

fn spawn_source(
    run: &StreamRun<'_>,
    out: mpsc::Sender<Transaction>,
    frontier: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    err_tx: &Errors,
    started: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    let cfg = run.cfg;
    let plan = &run.destinations[0].plan;
    let db = &plan.spec.database;
    let index = run.destinations[0].alias();
    match cfg.capture.mode {
        CaptureMode::Wal => crate::source::wal::spawn_reader(
            cfg,
            db,
            &run.slot,
            &run.publication,
            crate::telemetry::StageTimes::new(index, "wal_reader", Some("coalescer")),
            out,
            frontier,
            stop,
            err_tx.clone(),
            started,
        ),
        CaptureMode::Notify => notify::spawn_listener(
            cfg,
            db,
            notify::ListenerSettings {
                names: log_names(cfg, plan),
                poll_interval: Duration::from_millis(cfg.capture.poll_interval_ms.max(10)),
                page_rows: cfg.capture.coalesce_max_changes.max(1) as i64,
                times: crate::telemetry::StageTimes::new(
                    index,
                    "notify_listener",
                    Some("coalescer"),
                ),
            },
            run.record.position,
            out,
            frontier,
            stop,
            err_tx.clone(),
            started,
        ),
    }
}

/// Drains a stopped run: the source closes the coalescer's input, which closes the query
/// builder's, the fetchers' and the writers'; the checkpointer stops once every completion has
/// reported. Returns the last stored position.
async fn drain(running: Running, err_rx: &mut mpsc::UnboundedReceiver<Error>) -> Result<u64> {
    let _ = running.reader_stop.send(true);
    let _ = running.reader.await;
    for d in running.writer_dones {
        let _ = d.await;
    }
    let mut f = running.frontier;
    while f.changed().await.is_ok() {}
    let last = *f.borrow();
    running.threads.stop().await;
    match err_rx.try_recv() {
        Ok(e) => Err(e),
        Err(_) => Ok(last),
    }
}

/// After a clean stop: moves the slot forward (the reader is gone) so WAL is released now, or
/// purges the change log below the stored checkpoint.
async fn finish(run: &StreamRun<'_>, last: u64) -> Result<()> {
    let plan = &run.destinations[0].plan;
    let client = crate::config::connect(run.cfg, &plan.spec.database).await?;
    match run.cfg.capture.mode {
        CaptureMode::Wal => {
            slot::advance_slot(&client, &run.slot, last).await?;
        }
        CaptureMode::Notify => {
            notify::purge(&client, &log_names(run.cfg, plan), last).await?;
        }
    }
    Ok(())
}

/// Resolves with an error once one of `physicals` is gone or was re-created (its uuid changed):
/// the engine lost it (an in-memory engine restarted, an operator deleted it), so the documents
/// must be written again. Unreachable engines are left to the writers to report.
async fn watch_indexes(sink: &Sink, physicals: &[String]) -> Error {
    let mut known = vec![];
    for p in physicals {
        known.push(sink.index_uuid(p).await.ok().flatten());
    }
    loop {
        tokio::time::sleep(INDEX_WATCH).await;
        for (p, uuid) in physicals.iter().zip(&known) {
            let Some(uuid) = uuid else { continue };
            match sink.index_uuid(p).await {
                Ok(Some(u)) if &u == uuid => {}
                Ok(found) => {
                    return Error::new(
                        ErrorKind::SinkTransient,
                        format!(
                            "index {p} was deleted or re-created in the search engine (uuid {uuid}, now {}): its documents are written again",
                            found.as_deref().unwrap_or("missing")
                        ),
                    )
                }
                Err(_) => {}
            }
        }
    }
}
