//! One catch-up pass, then exit: what PGSync's `pgsync -c schema.json` (without `-d`) and
//! `parallel_sync` do, and what `pgsync run --once` means. A full sync happens only when the
//! index has no checkpoint (or with `--recreate`); otherwise the changes committed since the
//! checkpoint are streamed until the position the database had when the pass started, the
//! checkpoint is stored, and the process exits.
//!
//! It is the daemon's own per-index run (`prepare_index`, then `stream_index`) with a stop signal of its own, raised
//! once the capture source is past that position: in `wal` mode when the slot's confirmed
//! position reaches the WAL position read at the start (the WAL reader confirms a position only
//! when everything before it is written, or held nothing to sync), in `notify` mode when the
//! change log holds no row of a transaction older than the start (rows are deleted only once
//! their documents are written).

use crate::checkpoint::{LeaderLocks, Store};
use crate::config::{CaptureMode, Config};
use crate::pipeline::bootstrap::{log_names, names};
use crate::pipeline::daemon::run_index_pass;
use crate::schema::resolve::IndexPlan;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::Sink;
use crate::source::{notify, slot};
use crate::{Error, ErrorKind, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the pass checks whether it caught up.
const POLL: Duration = Duration::from_millis(200);

/// Runs one catch-up pass of every index of the schema; returns the exit code.
pub async fn catch_up(cfg: &Config, recreate: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    crate::plugin::load_for(cfg, &plans)?;
    let sink = Sink::from_config(cfg)?;
    sink.check().await?;
    let store = Store::open(&cfg.checkpoint).await?;
    let locks = LeaderLocks::open(&cfg.checkpoint).await?;
    let mut tasks = vec![];
    for plan in plans {
        let (sink, store, locks) = (sink.clone(), store.clone(), locks.as_ref());
        tasks.push(async move {
            let plan = Arc::new(plan);
            let lock = locks.map(|l| l.for_slot(&names(cfg, &plan).slot));
            pass(cfg, plan, sink, store, lock, recreate).await
        });
    }
    futures::future::try_join_all(tasks).await?;
    Ok(0)
}

/// One index: the start position, the leader lock when locks are on (a pass does not wait for
/// a running daemon: it fails), then the daemon's run until caught up.
async fn pass(
    cfg: &Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    store: Store,
    lock: Option<crate::checkpoint::LeaderLock>,
    recreate: bool,
) -> Result<()> {
    let index = plan.spec.index.clone();
    let target = start_position(cfg, &plan).await?;
    let held = match lock {
        None => None,
        Some(lock) => {
            let sent = Instant::now();
            if !lock.try_acquire().await? {
                let holder = lock.holder().await.ok().flatten().unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Checkpoint,
                    format!("index {index}: another pgsync ({holder}) is syncing it (leader lock {})", lock.key()),
                )
                .with_hint("a one-shot pass does not wait for a running daemon: stop it, or let it keep the index current"));
            }
            Some(lock.hold(sent))
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_progress(cfg.clone(), plan.clone(), target, stop_tx));
    let work = run_index_pass(cfg, plan.clone(), sink.clone(), store, stop_rx, recreate);
    let outcome = match held {
        None => work.await,
        Some(mut held) => {
            let r = tokio::select! {
                r = work => r,
                e = held.lost() => Err(e.context(format!("index {index}"))),
            };
            held.release().await;
            r
        }
    };
    watcher.abort();
    outcome?;
    sink.refresh(&index).await?;
    println!("index {index}: caught up to {}", shown(cfg, target));
    Ok(())
}

/// Raises `stop` once the source is past `target`, or on SIGTERM/SIGINT.
async fn watch_progress(cfg: Config, plan: Arc<IndexPlan>, target: u64, stop: watch::Sender<bool>) {
    let signal = tokio::spawn(crate::pipeline::daemon::wait_for_signal());
    let mut client = None;
    loop {
        if signal.is_finished() {
            tracing::info!("stop requested: draining in-flight work");
            break;
        }
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = crate::config::connect(&cfg, &plan.spec.database).await.ok();
        }
        if let Some(c) = &client {
            match caught_up(c, &cfg, &plan, target).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "cannot tell yet whether the pass caught up"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
    signal.abort();
    let _ = stop.send(true);
}

/// Where the source is now: the WAL insert position, or the oldest transaction still running.
async fn start_position(cfg: &Config, plan: &IndexPlan) -> Result<u64> {
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let sql = match cfg.capture.mode {
        CaptureMode::Wal => "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
        CaptureMode::Notify => "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    };
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| Error::from(e).context("reading the start position of the pass"))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Whether everything committed before `target` is written.
async fn caught_up(
    client: &tokio_postgres::Client,
    cfg: &Config,
    plan: &IndexPlan,
    target: u64,
) -> Result<bool> {
    Ok(match cfg.capture.mode {
        CaptureMode::Wal => slot::slot_status(client, &names(cfg, plan).slot)
            .await?
            .is_some_and(|s| s.confirmed_flush_lsn >= target),
        CaptureMode::Notify => match notify::backlog(client, &log_names(cfg, plan)).await? {
            Some((_, None)) => true,
            Some((_, Some(oldest))) => oldest >= target,
            None => false,
        },
    })
}

fn shown(cfg: &Config, position: u64) -> String {
    match cfg.capture.mode {
        CaptureMode::Wal => slot::format_lsn(position),
        CaptureMode::Notify => format!("xid {position}"),
    }
}
