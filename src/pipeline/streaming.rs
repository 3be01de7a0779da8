//! One streaming run of one index: the WAL reader (or notify listener) → coalescer → query
//! builder → fetchers → writers, with the checkpointer advancing the stored position (and the
//! slot) only over positions whose documents are all written. Spawned back to front, each stage
//! on its own thread. A stop request drains what is in flight and stores the checkpoint; a
//! failure tears every stage down at once (what they held is not checkpointed) and is returned
//! to the supervisor, which starts the next run from the stored checkpoint.

use super::bootstrap::log_names;
use super::coalescer::{CoalesceSettings, Coalescer};
use super::initial::{spawn_fetchers, spawn_writers};
use super::lanes::Lanes;
use super::messages::FetchRequest;
use super::query_builder::{QueryBuilder, QueryBuilderWires};
use super::stage::{connector, Errors, Threads};
use super::writer::Rejections;
use crate::checkpoint::{CheckpointRecord, Checkpointer, Store};
use crate::config::{CaptureMode, Config};
use crate::schema::resolve::IndexPlan;
use crate::sink::Sink;
use crate::source::change::Transaction;
use crate::source::{notify, slot};
use crate::{Error, ErrorKind, Result};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often a streaming run checks that its index is still the one it writes to.
const INDEX_WATCH: Duration = Duration::from_secs(5);

/// What a streaming run needs.
pub struct StreamRun<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// The index.
    pub plan: Arc<IndexPlan>,
    /// Where documents go.
    pub sink: Sink,
    /// The checkpoint store.
    pub store: Store,
    /// The checkpoint key (the slot name).
    pub key: String,
    /// The stored checkpoint to start from.
    pub record: CheckpointRecord,
    /// What to do with rejected documents.
    pub rejections: Rejections,
    /// The slot (wal) and publication, or unused in notify mode.
    pub slot: String,
    /// The publication.
    pub publication: String,
}

/// The handles of a running pipeline that the run keeps.
struct Running {
    threads: Threads,
    reader: tokio::task::JoinHandle<()>,
    reader_stop: watch::Sender<bool>,
    writer_dones: Vec<tokio::sync::oneshot::Receiver<()>>,
    frontier: watch::Receiver<u64>,
}

/// Streams changes until `stop` turns true (drains, stores the checkpoint, `Ok`) or a stage
/// fails (tears down, `Err`). `started` turns true once the source is connected.
pub async fn stream(
    run: StreamRun<'_>,
    mut stop: watch::Receiver<bool>,
    started: watch::Sender<bool>,
) -> Result<()> {
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<Error>();
    let running = spawn(&run, &err_tx, started);
    let index = run.plan.spec.index.clone();
    let uuid = run.record.index_uuid.clone();
    let failure = tokio::select! {
        _ = stop.wait_for(|s| *s) => None,
        Some(e) = err_rx.recv() => Some(cause(e, &mut err_rx).await),
        e = watch_index(&run.sink, &index, uuid) => Some(e),
    };
    if let Some(e) = failure {
        let _ = running.reader_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), running.reader).await;
        running.threads.stop().await;
        return Err(e);
    }
    let last = drain(running, &mut err_rx).await?;
    finish(&run, last).await?;
    tracing::info!(index = %index, checkpoint = last, "stopped cleanly");
    Ok(())
}

/// Spawns the stages back to front: writers, fetchers, checkpointer, query builder, coalescer,
/// then the source.
fn spawn(run: &StreamRun<'_>, err_tx: &Errors, started: watch::Sender<bool>) -> Running {
    let cfg = run.cfg;
    let plan = &run.plan;
    let index = plan.spec.index.clone();
    let stats = Arc::new(super::progress::Stats::default());
    let mut threads = Threads::default();
    let depth = cfg.capture.queue_depth;
    let (write_lanes, writer_dones) = spawn_writers(
        cfg,
        &mut threads,
        &run.sink,
        &index,
        &stats,
        err_tx,
        &run.rejections,
        Duration::from_millis(5),
        depth,
    );
    let fetch_lanes: Lanes<FetchRequest> = spawn_fetchers(
        cfg,
        &mut threads,
        plan,
        &write_lanes,
        &stats,
        err_tx,
        cfg.pipeline.fetchers,
        depth,
    );
    drop(write_lanes);
    let start = run.record.position;
    let (cp_tx, cp_rx) = mpsc::unbounded_channel();
    let (frontier_tx, frontier_rx) = watch::channel(start);
    {
        let (store, key, base) = (run.store.clone(), run.key.clone(), run.record.clone());
        Checkpointer::start_in_arbiter(&threads.spawn(), move |_| {
            Checkpointer::new(key, store, base, cp_rx, frontier_tx)
        });
    }
    let (window_tx, window_rx) = mpsc::channel(depth.max(1));
    {
        let wires = QueryBuilderWires {
            out: fetch_lanes,
            checkpoints: cp_tx,
            frontier: frontier_rx.clone(),
            errors: err_tx.clone(),
            connect: connector(cfg, &plan.spec.database),
        };
        let plan = plan.clone();
        QueryBuilder::start_in_arbiter(&threads.spawn(), move |_| {
            QueryBuilder::new(plan, window_rx, wires)
        });
    }
    let (tx_tx, tx_rx) = mpsc::channel::<Transaction>(cfg.pipeline.channel_capacity.max(1) * 16);
    {
        let settings = CoalesceSettings {
            window: Duration::from_millis(cfg.capture.coalesce_window_ms),
            max_changes: cfg.capture.coalesce_max_changes.max(1),
        };
        let errors = err_tx.clone();
        Coalescer::start_in_arbiter(&threads.spawn(), move |_| {
            Coalescer::new(&index, settings, tx_rx, window_tx, errors)
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
    }
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
    let db = &run.plan.spec.database;
    match cfg.capture.mode {
        CaptureMode::Wal => crate::source::wal::spawn_reader(
            cfg,
            db,
            &run.slot,
            &run.publication,
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
                names: log_names(cfg, &run.plan),
                poll_interval: Duration::from_millis(cfg.capture.poll_interval_ms.max(10)),
                page_rows: cfg.capture.coalesce_max_changes.max(1) as i64,
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
    let client = crate::config::connect(run.cfg, &run.plan.spec.database).await?;
    match run.cfg.capture.mode {
        CaptureMode::Wal => {
            slot::advance_slot(&client, &run.slot, last).await?;
        }
        CaptureMode::Notify => {
            notify::purge(&client, &log_names(run.cfg, &run.plan), last).await?;
        }
    }
    Ok(())
}

/// The error to report for a failed run: a unit of work left unwritten is the consequence of a
/// stage's failure, so when that stage's own error is already queued, it is the cause.
async fn cause(first: Error, rx: &mut mpsc::UnboundedReceiver<Error>) -> Error {
    if !first.message.contains(UNWRITTEN) {
        return first;
    }
    let specific = async {
        while let Some(e) = rx.recv().await {
            if !e.message.contains(UNWRITTEN) {
                return Some(e);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_millis(200), specific).await {
        Ok(Some(e)) => e,
        _ => first,
    }
}

/// What the message of a unit left unwritten says (see the query builder).
const UNWRITTEN: &str = "were not all written";

/// Resolves with an error once the index is gone or was re-created (its uuid changed): the
/// engine lost it (an in-memory engine restarted, an operator deleted it), so the documents must
/// be written again. Unreachable engines are left to the writers to report.
async fn watch_index(sink: &Sink, index: &str, uuid: Option<String>) -> Error {
    let Some(uuid) = uuid else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(INDEX_WATCH).await;
        match sink.index_uuid(index).await {
            Ok(Some(u)) if u == uuid => {}
            Ok(found) => {
                return Error::new(
                    ErrorKind::SinkTransient,
                    format!(
                        "index {index} was deleted or re-created in the search engine (uuid {uuid}, now {}): its documents are written again",
                        found.as_deref().unwrap_or("missing")
                    ),
                )
            }
            Err(_) => {}
        }
    }
}
