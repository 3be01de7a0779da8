//! `pgsync run` as a daemon. Per index: bootstrap the
//! publication and slot (idempotent), run the initial sync when there is no checkpoint, then
//! stream: WAL reader → coalescer → fetchers → writers, with the checkpointer advancing the slot
//! only over positions whose documents are all written. SIGTERM/SIGINT stop the reader, drain
//! what is in flight, store the checkpoint and exit 0.

use super::bootstrap::{bootstrap_index, log_names, names};
use super::coalescer::{CoalesceSettings, Coalescer};
use super::initial::{connector, initial_sync, spawn_fetchers, spawn_writers};
use crate::checkpoint::{CheckpointRecord, Checkpointer, Store};
use crate::config::{CaptureMode, Config};
use crate::schema::mapping::index_body;
use crate::schema::resolve::IndexPlan;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::Sink;
use crate::source::{notify, slot};
use crate::{Error, Result};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// `pgsync run` without `--once`.
pub async fn run(cfg: &Config, recreate: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    let sink = Sink::from_config(cfg)?;
    sink.check().await?;
    let store = Store::open(&cfg.checkpoint).await?;
    let locks = crate::checkpoint::LeaderLocks::open(&cfg.checkpoint).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested: draining in-flight work");
        let _ = stop_tx.send(true);
    });
    let mut tasks = vec![];
    for plan in plans {
        let (cfg, sink, store, stop) = (cfg.clone(), sink.clone(), store.clone(), stop_rx.clone());
        let lock = locks.as_ref().map(|l| l.for_slot(&names(&cfg, &plan).slot));
        tasks.push(async move {
            let plan = Arc::new(plan);
            let work = run_index(&cfg, plan.clone(), sink, store, stop.clone(), recreate);
            as_leader(&cfg, &plan, lock, stop, work).await
        });
    }
    // The first failure ends the daemon at once: a lost leader lock must stop every write now,
    // and a daemon silently syncing only some of its indices would go unnoticed.
    futures::future::try_join_all(tasks).await?;
    Ok(0)
}

/// Runs `work` (one index's sync) only while this process holds the index's leader lock, when
/// locks are on: waits as a standby first, releases the lock after `work` ends so a standby takes
/// over at once, and abandons `work` with an error the moment the lock is lost, so two daemons
/// never write one index.
async fn as_leader(
    cfg: &Config,
    plan: &IndexPlan,
    lock: Option<crate::checkpoint::LeaderLock>,
    stop: watch::Receiver<bool>,
    work: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let Some(lock) = lock else {
        return work.await;
    };
    let index = &plan.spec.index;
    let Some(mut held) = lock
        .acquire(stop)
        .await
        .map_err(|e| e.context(format!("index {index}")))?
    else {
        tracing::info!(index = %index, "stop requested while standby");
        return Ok(());
    };
    let outcome = tokio::select! {
        r = async {
            wait_for_previous_leader(cfg, plan).await;
            work.await
        } => r,
        e = held.lost() => return Err(e.context(format!("index {index}"))),
    };
    held.release().await;
    outcome
}

/// A new leader waits (a bounded time) until the previous leader's replication connection is
/// gone: PostgreSQL lets one connection stream from a slot, and a leader that just died may hold
/// it for a moment. Anything unexpected is left for the stream's own start to report.
async fn wait_for_previous_leader(cfg: &Config, plan: &IndexPlan) {
    if cfg.capture.mode != crate::config::CaptureMode::Wal {
        return;
    }
    let slot_name = names(cfg, plan).slot;
    let Ok(client) = crate::config::connect(cfg, &plan.spec.database).await else {
        return;
    };
    let patience = Duration::from_millis(cfg.checkpoint.lock_ttl_ms).max(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + patience;
    let mut logged = false;
    while tokio::time::Instant::now() < deadline {
        match slot::slot_status(&client, &slot_name).await {
            Ok(Some(s)) if s.active => {
                if !logged {
                    logged = true;
                    tracing::info!(slot = %slot_name, walsender_pid = ?s.active_pid, "waiting for the previous leader's replication connection to end");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return,
        }
    }
}

/// Resolves on SIGTERM or SIGINT (the one-shot catch-up pass of the command line stops on them too).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Bootstraps, syncs and streams one index until `stop` turns true.
pub async fn run_index(
    cfg: &Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    store: Store,
    stop: watch::Receiver<bool>,
    recreate: bool,
) -> Result<()> {
    let prepared = prepare_index(cfg, &plan, &sink, &store, recreate).await?;
    stream_index(cfg, plan, sink, store, prepared.start, stop)
        .await
        .map(|_| ())
}

/// What [`prepare_index`] did.
pub struct Prepared {
    /// Where streaming starts.
    pub start: u64,
    /// The initial sync's summary, when one ran.
    pub initial: Option<super::progress::Summary>,
}

/// [`run_index`]'s first half (also used by the command line's one-shot pass): bootstrap, the
/// index, and the initial sync when there is no checkpoint.
pub async fn prepare_index(
    cfg: &Config,
    plan: &Arc<IndexPlan>,
    sink: &Sink,
    store: &Store,
    recreate: bool,
) -> Result<Prepared> {
    let index = plan.spec.index.clone();
    plan.warn_plugins();
    let boot = bootstrap_index(cfg, plan).await?;
    tracing::info!(index = %index, "bootstrap: {}", boot.summary);
    let n = names(cfg, plan);
    let created = sink
        .ensure_index(&index, &index_body(plan), recreate)
        .await?;
    let cp = store.load(&n.slot).await?;
    Ok(match cp {
        Some(c) if c.initial_sync_done && !recreate && !boot.created && !created => Prepared {
            start: c.position,
            initial: None,
        },
        _ => {
            // The slot (or the triggers) exist before the snapshot the sync reads, so every
            // change committed after it is also streamed afterwards and re-applied from the
            // current rows.
            let summary = initial_sync(cfg, plan.clone(), sink.clone(), None).await?;
            println!("{summary}");
            store
                .save(&n.slot, &CheckpointRecord::at(boot.start))
                .await?;
            Prepared {
                start: boot.start,
                initial: Some(summary),
            }
        }
    })
}

/// [`run_index`]'s second half: streams from `start` until `stop` turns true; returns how many
/// documents the search engine rejected meanwhile.
pub async fn stream_index(
    cfg: &Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    store: Store,
    start: u64,
    mut stop: watch::Receiver<bool>,
) -> Result<u64> {
    let index = plan.spec.index.clone();
    let n = names(cfg, &plan);
    let shown = match cfg.capture.mode {
        CaptureMode::Wal => slot::format_lsn(start),
        CaptureMode::Notify => format!("xid {start}"),
    };
    tracing::info!(index = %index, slot = %n.slot, start = %shown, "streaming changes");

    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<Error>();
    let stats = Arc::new(super::progress::Stats::default());
    // Back to front: writers, fetchers, checkpointer, coalescer, WAL reader.
    let (write_lanes, writer_dones) = spawn_writers(
        cfg,
        &sink,
        &index,
        &stats,
        &err_tx,
        Duration::from_millis(5),
        cfg.capture.queue_depth,
    );
    let fetch_lanes = spawn_fetchers(
        cfg,
        &plan,
        None,
        &write_lanes,
        &stats,
        &err_tx,
        cfg.pipeline.fetchers,
        cfg.capture.queue_depth,
    );
    drop(write_lanes);
    let (cp_tx, cp_rx) = mpsc::unbounded_channel();
    let (frontier_tx, frontier_rx) = watch::channel(start);
    {
        let (store, key) = (store.clone(), n.slot.clone());
        Checkpointer::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            Checkpointer::new(key, store, start, cp_rx, frontier_tx)
        });
    }
    let (tx_tx, tx_rx) = mpsc::channel(cfg.pipeline.channel_capacity.max(1) * 16);
    let (co_done_tx, co_done_rx) = tokio::sync::oneshot::channel();
    {
        let settings = CoalesceSettings {
            window: Duration::from_millis(cfg.capture.coalesce_window_ms),
            max_changes: cfg.capture.coalesce_max_changes.max(1),
        };
        let (plan, connect, errs, frontier) = (
            plan.clone(),
            connector(cfg, &plan.spec.database),
            err_tx.clone(),
            frontier_rx.clone(),
        );
        Coalescer::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            Coalescer::new(
                plan,
                settings,
                tx_rx,
                connect,
                fetch_lanes,
                cp_tx,
                frontier,
                errs,
                co_done_tx,
            )
        });
    }
    let (reader_stop_tx, reader_stop_rx) = watch::channel(false);
    let reader = match cfg.capture.mode {
        CaptureMode::Wal => crate::source::wal::spawn_reader(
            cfg,
            &plan.spec.database,
            &n.slot,
            &n.publication,
            tx_tx,
            frontier_rx.clone(),
            reader_stop_rx,
            err_tx.clone(),
        ),
        CaptureMode::Notify => notify::spawn_listener(
            cfg,
            &plan.spec.database,
            notify::ListenerSettings {
                names: log_names(cfg, &plan),
                poll_interval: Duration::from_millis(cfg.capture.poll_interval_ms.max(10)),
                page_rows: cfg.capture.coalesce_max_changes.max(1) as i64,
            },
            start,
            tx_tx,
            frontier_rx.clone(),
            reader_stop_rx,
            err_tx.clone(),
        ),
    };

    // Run until asked to stop or a stage fails.
    let failure = tokio::select! {
        _ = async { while !*stop.borrow_and_update() { if stop.changed().await.is_err() { break; } } } => None,
        Some(e) = err_rx.recv() => Some(e),
    };
    let _ = reader_stop_tx.send(true);
    if let Some(e) = failure {
        return Err(e);
    }
    // Drain: the reader closes the coalescer's input, which closes the fetchers', which close the
    // writers'; the checkpointer stops once every completion has reported.
    let _ = reader.await;
    let _ = co_done_rx.await;
    for d in writer_dones {
        let _ = d.await;
    }
    let mut f = frontier_rx;
    while f.changed().await.is_ok() {}
    let last = *f.borrow();
    if let Ok(e) = err_rx.try_recv() {
        return Err(e);
    }
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    match cfg.capture.mode {
        // The reader is gone: move the slot forward ourselves so WAL is released now.
        CaptureMode::Wal => {
            slot::advance_slot(&client, &n.slot, last).await?;
        }
        CaptureMode::Notify => {
            notify::purge(&client, &log_names(cfg, &plan), last).await?;
        }
    }
    tracing::info!(index = %index, checkpoint = last, "stopped cleanly");
    Ok(stats.failed())
}
