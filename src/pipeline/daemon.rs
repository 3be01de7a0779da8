//! `pgsync run` as a daemon, and `bootstrap` / `teardown` / `status`. Per index: bootstrap the
//! publication and slot (idempotent), run the initial sync when there is no checkpoint, then
//! stream: WAL reader → coalescer → fetchers → writers, with the checkpointer advancing the slot
//! only over positions whose documents are all written. SIGTERM/SIGINT stop the reader, drain
//! what is in flight, store the checkpoint and exit 0.

use super::coalescer::{CoalesceSettings, Coalescer};
use super::initial::{connector, initial_sync, spawn_fetchers, spawn_writers};
use crate::checkpoint::{CheckpointRecord, Checkpointer, Store};
use crate::cli::{load_schema, resolve_all};
use crate::config::Config;
use crate::schema::mapping::index_body;
use crate::schema::resolve::IndexPlan;
use crate::sink::Sink;
use crate::source::slot;
use crate::{Error, Result};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Names of what bootstrap creates for an index.
pub struct Names {
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
}

/// Slot and publication names for `plan`.
pub fn names(cfg: &Config, plan: &IndexPlan) -> Names {
    let p = &cfg.capture.slot_prefix;
    Names {
        slot: slot::slot_name(p, &plan.spec.database, &plan.spec.index),
        publication: slot::publication_name(p, &plan.spec.database, &plan.spec.index),
    }
}

/// Tables that need REPLICA IDENTITY FULL: every table except one that appears only as the root
/// (its key alone identifies the document; other tables need their old foreign-key values).
pub fn full_identity_tables(plan: &IndexPlan) -> Vec<crate::pipeline::messages::TableId> {
    let root = &plan.root.table;
    let elsewhere = plan.nodes().iter().skip(1).any(|(n, _)| &n.table == root);
    plan.tables()
        .into_iter()
        .filter(|t| t != root || elsewhere)
        .collect()
}

async fn bootstrap_index(cfg: &Config, plan: &IndexPlan) -> Result<slot::BootstrapOutcome> {
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let n = names(cfg, plan);
    slot::check_replication_ready(&client, &n.slot).await?;
    slot::bootstrap(
        &client,
        &n.slot,
        &n.publication,
        &plan.tables(),
        &full_identity_tables(plan),
    )
    .await
    .map_err(|e| e.context(format!("bootstrap of index {}", plan.spec.index)))
}

/// `pgsync bootstrap`.
pub async fn bootstrap(cfg: &Config) -> Result<()> {
    let file = load_schema(cfg)?;
    for plan in resolve_all(cfg, &file).await? {
        let out = bootstrap_index(cfg, &plan).await?;
        let n = names(cfg, &plan);
        println!(
            "index {}: slot {} ({}), publication {} ({})",
            plan.spec.index,
            n.slot,
            if out.slot_created {
                "created"
            } else {
                "exists"
            },
            n.publication,
            if out.publication_changed {
                "created or updated"
            } else {
                "unchanged"
            },
        );
    }
    Ok(())
}

/// `pgsync teardown`.
pub async fn teardown(cfg: &Config) -> Result<()> {
    let file = load_schema(cfg)?;
    let store = Store::open(&cfg.checkpoint).await?;
    for plan in resolve_all(cfg, &file).await? {
        let client = crate::config::connect(cfg, &plan.spec.database).await?;
        let n = names(cfg, &plan);
        slot::teardown(&client, &n.slot, &n.publication).await?;
        store.remove(&n.slot).await?;
        println!(
            "index {}: removed slot {}, publication {} and checkpoint",
            plan.spec.index, n.slot, n.publication
        );
    }
    Ok(())
}

/// `pgsync status`.
pub async fn status(cfg: &Config) -> Result<()> {
    let file = load_schema(cfg)?;
    let store = Store::open(&cfg.checkpoint).await?;
    for plan in resolve_all(cfg, &file).await? {
        let client = crate::config::connect(cfg, &plan.spec.database).await?;
        let n = names(cfg, &plan);
        let cp = store.load(&n.slot).await?;
        match slot::slot_status(&client, &n.slot).await? {
            Some(s) => println!(
                "index {}: slot {} active={} confirmed_flush_lsn={} retained_wal_bytes={} checkpoint={}",
                plan.spec.index,
                n.slot,
                s.active,
                slot::format_lsn(s.confirmed_flush_lsn),
                s.retained_wal_bytes,
                cp.map(|c| slot::format_lsn(c.position)).unwrap_or_else(|| "none".into())
            ),
            None => println!("index {}: not bootstrapped (no slot {})", plan.spec.index, n.slot),
        }
    }
    Ok(())
}

/// `pgsync run` without `--once`.
pub async fn run(cfg: &Config, recreate: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    let sink = Sink::from_config(cfg)?;
    sink.check().await?;
    let store = Store::open(&cfg.checkpoint).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested: draining in-flight work");
        let _ = stop_tx.send(true);
    });
    let mut tasks = vec![];
    for plan in plans {
        let (cfg, sink, store, stop) = (cfg.clone(), sink.clone(), store.clone(), stop_rx.clone());
        tasks.push(
            async move { run_index(&cfg, Arc::new(plan), sink, store, stop, recreate).await },
        );
    }
    for r in futures::future::join_all(tasks).await {
        r?;
    }
    Ok(0)
}

async fn wait_for_signal() {
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
    mut stop: watch::Receiver<bool>,
    recreate: bool,
) -> Result<()> {
    let index = plan.spec.index.clone();
    crate::cli::warn_plugins(&plan);
    let boot = bootstrap_index(cfg, &plan).await?;
    let n = names(cfg, &plan);
    let created = sink
        .ensure_index(&index, &index_body(&plan), recreate)
        .await?;
    let cp = store.load(&n.slot).await?;
    let start = match cp {
        Some(c) if c.initial_sync_done && !recreate && !boot.slot_created && !created => c.position,
        _ => {
            // The slot exists before the snapshot the sync reads, so every change committed
            // after it is also streamed afterwards and re-applied from the current rows.
            let summary = initial_sync(cfg, plan.clone(), sink.clone(), None).await?;
            println!("{summary}");
            store
                .save(&n.slot, &CheckpointRecord::at(boot.consistent_lsn))
                .await?;
            boot.consistent_lsn
        }
    };
    tracing::info!(index = %index, slot = %n.slot, start = %slot::format_lsn(start), "streaming changes");

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
    );
    let fetch_lanes = spawn_fetchers(
        cfg,
        &plan,
        None,
        &write_lanes,
        &stats,
        &err_tx,
        cfg.pipeline.fetchers,
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
    let reader = crate::source::wal::spawn_reader(
        cfg,
        &plan.spec.database,
        &n.slot,
        &n.publication,
        tx_tx,
        frontier_rx.clone(),
        reader_stop_rx,
        err_tx.clone(),
    );

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
    // The reader is gone: move the slot forward ourselves so WAL is released now.
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    slot::advance_slot(&client, &n.slot, last).await?;
    tracing::info!(index = %index, checkpoint = %slot::format_lsn(last), "stopped cleanly");
    Ok(())
}
