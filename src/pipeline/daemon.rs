//! `pgsync run` as a daemon. It waits at start-up for services that are not up yet, then runs
//! each index under a supervisor: bootstrap (idempotent), the initial sync when there is no
//! checkpoint (resumed from the ranges it finished), then streaming. A transient fault restarts
//! the index's pipeline from the last stored checkpoint with backoff; a permanent one ends the
//! daemon with its cause. SIGTERM/SIGINT drain in-flight work, store the checkpoint and exit 0.

use super::bootstrap::{bootstrap_index, capture_exists, names};
use super::destination::Destination;
use super::initial::{initial_sync, RangeLog};
use super::migration::{self, Step};
use super::streaming::{stream, StreamEnd, StreamRun};
use super::supervisor::{await_service, supervise, Backoff};
use super::writer::Rejections;
use crate::checkpoint::{CheckpointRecord, LeaderLocks, Store};
use crate::config::{CaptureMode, Config};
use crate::schema::resolve::IndexPlan;
use crate::schema::{load as load_schema, resolve_all, SchemaFile};
use crate::sink::alias::AliasState;
use crate::sink::Sink;
use crate::source::slot;
use crate::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What every index of the daemon shares, once the services are up.
struct Services {
    plans: Vec<IndexPlan>,
    sink: Sink,
    store: Store,
    locks: Option<LeaderLocks>,
}

/// `pgsync run` without `--once`.
/// SIGHUP drains every index like SIGTERM, then reads schema.json again and starts over: a
/// changed definition then migrates without a restart of the process.
pub async fn run(cfg: &Config, recreate: bool) -> Result<i32> {
    if let Some(listen) = &cfg.metrics.listen {
        crate::telemetry::server::start(listen, cfg.metrics.ready_max_lag_secs)?;
    }
    let mut recreate = recreate;
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        let hup = tokio::spawn(async move {
            let reload = wait_for_signal_or_hup().await;
            if reload {
                tracing::info!("SIGHUP: draining, then reading schema.json again");
            } else {
                tracing::info!("stop requested: draining in-flight work");
            }
            let _ = stop_tx.send(true);
            reload
        });
        run_until_stopped(cfg, recreate, stop_rx).await?;
        let reload = hup.await.unwrap_or(false);
        if !reload {
            return Ok(0);
        }
        recreate = false;
    }
}

/// Waits for SIGTERM/SIGINT (false) or SIGHUP (true).
async fn wait_for_signal_or_hup() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tokio::select! {
            _ = wait_for_signal() => false,
            _ = hup.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        wait_for_signal().await;
        false
    }
}

/// Every index of schema.json, until `stop_rx` turns true.
async fn run_until_stopped(
    cfg: &Config,
    recreate: bool,
    stop_rx: watch::Receiver<bool>,
) -> Result<()> {
    let file = load_schema(cfg)?;
    let Some(services) = await_services(cfg, &file, stop_rx.clone()).await? else {
        return Ok(());
    };
    crate::source::pgsync_objects::warn_at_startup(cfg, &services.plans).await;
    let mut tasks = vec![];
    let mut monitors = vec![];
    for plan in services.plans {
        let lock = services
            .locks
            .as_ref()
            .map(|l| l.for_slot(&names(cfg, &plan).slot));
        let index = IndexRun {
            cfg,
            plan: Arc::new(plan),
            sink: services.sink.clone(),
            store: services.store.clone(),
        };
        let monitor = super::monitor::Monitor::new(
            cfg,
            index.plan.clone(),
            index.sink.clone(),
            index.store.clone(),
        );
        monitors.push(tokio::spawn(monitor.run(stop_rx.clone())));
        let stop = stop_rx.clone();
        tasks.push(async move {
            let work = supervise_index(&index, stop.clone(), recreate);
            as_leader(cfg, &index.plan, lock, stop, work).await
        });
    }
    // The first failure ends the daemon at once: a lost leader lock must stop every write now,
    // and a daemon silently syncing only some of its indices would go unnoticed.
    let outcome = futures::future::try_join_all(tasks).await;
    monitors.iter().for_each(|m| m.abort());
    outcome?;
    Ok(())
}

/// Waits for PostgreSQL, the search engine and the checkpoint store (docker-compose starts them
/// together), logging what is awaited; `None` when stopped meanwhile.
async fn await_services(
    cfg: &Config,
    file: &SchemaFile,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<Services>> {
    let backoff = || Backoff::from_config(&cfg.resilience);
    let give_up = cfg.resilience.give_up_after();
    let pg = crate::config::describe_target(&cfg.postgres_for("postgres"), "postgres");
    let pg = pg.split(" (database").next().unwrap_or(&pg).to_owned();
    let Some(plans) = await_service(
        &format!("PostgreSQL at {pg}"),
        backoff(),
        give_up,
        &mut stop,
        || resolve_all(cfg, file),
    )
    .await?
    else {
        return Ok(None);
    };
    crate::plugin::load_for(cfg, &plans)?;
    for p in &plans {
        for line in super::views::describe(p, cfg.capture.refresh_materialized_views) {
            match line.strip_prefix("warning: ") {
                Some(w) => tracing::warn!("{w}"),
                None => tracing::debug!("{}", line.trim_start_matches("note: ")),
            }
        }
    }
    let sink = Sink::from_config(cfg)?;
    let engine = format!(
        "the search engine at {}",
        crate::config::mask_url(&cfg.search.url)
    );
    if await_service(&engine, backoff(), give_up, &mut stop, || sink.check())
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let Some(store) = await_service(
        "the checkpoint store",
        backoff(),
        give_up,
        &mut stop,
        || Store::open(&cfg.checkpoint),
    )
    .await?
    else {
        return Ok(None);
    };
    let Some(locks) = await_service(
        "Redis (leader locks)",
        backoff(),
        give_up,
        &mut stop,
        || LeaderLocks::open(&cfg.checkpoint),
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Services {
        plans,
        sink,
        store,
        locks,
    }))
}

/// One index of the daemon, shared by its supervised runs.
struct IndexRun<'a> {
    cfg: &'a Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    store: Store,
}

/// One index run without supervision, until `stop` turns true: what a one-shot catch-up pass
/// runs (a pass fails fast rather than waiting out an outage).
pub async fn run_index_pass(
    cfg: &Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    store: Store,
    stop: watch::Receiver<bool>,
    recreate: bool,
) -> Result<()> {
    let ix = IndexRun {
        cfg,
        plan,
        sink,
        store,
    };
    let mut recreate = recreate;
    loop {
        let (healthy, _) = watch::channel(false);
        if !run_index_once(&ix, stop.clone(), healthy, recreate).await? {
            return Ok(());
        }
        recreate = false;
    }
}

/// Runs one index until stopped, restarting it after transient faults.
async fn supervise_index(
    ix: &IndexRun<'_>,
    stop: watch::Receiver<bool>,
    recreate: bool,
) -> Result<()> {
    let recreate = AtomicBool::new(recreate);
    let what = format!("index {}", ix.plan.spec.index);
    loop {
        let r = supervise(
            &what,
            Backoff::from_config(&ix.cfg.resilience),
            ix.cfg.resilience.give_up_after(),
            stop.clone(),
            |healthy| {
                run_index_once(
                    ix,
                    stop.clone(),
                    healthy,
                    recreate.swap(false, Ordering::SeqCst),
                )
            },
        )
        .await;
        match r {
            Err(e) if e.kind == ErrorKind::SlotLost && ix.cfg.capture.resync_on_slot_loss => {
                resync_after_slot_loss(ix, &e).await?;
            }
            Err(e) => {
                crate::telemetry::health::set_phase(
                    &ix.plan.spec.index,
                    crate::telemetry::health::Phase::Failing(e.message.clone()),
                );
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// What an operator reads when PostgreSQL invalidated the slot of `index`.
pub fn slot_lost_message(index: &str, slot: &str) -> String {
    format!(
        "index {index}: PostgreSQL invalidated replication slot {slot} (wal_status = 'lost'): it kept more WAL than max_slot_wal_keep_size allows while this index was behind, so the changes since its checkpoint are gone from the server; set capture.resync_on_slot_loss = true to re-sync the index from the current rows automatically, or run `pgsync teardown` and start again"
    )
}

/// `capture.resync_on_slot_loss`: drops what is left of the capture (the invalidated slot and
/// its publication, or the change log's triggers stay) and the checkpoint, so the next run
/// bootstraps again and rebuilds the index from the current rows.
async fn resync_after_slot_loss(ix: &IndexRun<'_>, e: &Error) -> Result<()> {
    let (cfg, plan) = (ix.cfg, &ix.plan);
    let n = names(cfg, plan);
    tracing::warn!(index = %plan.spec.index, slot = %n.slot, "{}; re-syncing the index from the current rows (capture.resync_on_slot_loss = true)", e.message);
    if cfg.capture.mode == CaptureMode::Wal {
        let client = crate::config::connect(cfg, &plan.spec.database).await?;
        slot::teardown(&client, &n.slot, &n.publication).await?;
    }
    ix.store.remove(&n.slot).await
}

/// In wal mode, the clear error for a slot PostgreSQL invalidated (`wal_status = 'lost'`).
async fn check_slot_valid(cfg: &Config, plan: &IndexPlan, slot_name: &str) -> Result<()> {
    if cfg.capture.mode != CaptureMode::Wal {
        return Ok(());
    }
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    match slot::slot_status(&client, slot_name).await? {
        Some(s) if s.wal_status.as_deref() == Some("lost") => Err(Error::new(
            ErrorKind::SlotLost,
            slot_lost_message(&plan.spec.index, slot_name),
        )),
        _ => Ok(()),
    }
}

/// One supervised run: bootstrap, then what the index needs (a build into a new physical index,
/// a migration, or nothing), then streaming until stopped. `Ok(true)`: run again at once (a
/// migration swapped in the new index).
async fn run_index_once(
    ix: &IndexRun<'_>,
    stop: watch::Receiver<bool>,
    healthy: watch::Sender<bool>,
    recreate: bool,
) -> Result<bool> {
    let (cfg, plan) = (ix.cfg, &ix.plan);
    let n = names(cfg, plan);
    crate::telemetry::health::set_phase(
        &plan.spec.index,
        crate::telemetry::health::Phase::Starting,
    );
    ix.sink.check().await?;
    check_slot_valid(cfg, plan, &n.slot).await?;
    let stored = ix.store.load(&n.slot).await?;
    if stored.as_ref().is_some_and(|r| r.initial_sync_done) && !capture_exists(cfg, plan).await? {
        return Err(lost_capture(cfg, plan, &n.slot));
    }
    let boot = bootstrap_index(cfg, plan).await?;
    tracing::info!(index = %plan.spec.index, "bootstrap: {}", boot.summary);
    let mix = migration::Index {
        cfg,
        plan: plan.clone(),
        sink: ix.sink.clone(),
        store: ix.store.clone(),
        key: n.slot.clone(),
    };
    let step = migration::plan_step(&mix, stored, &boot, recreate).await?;
    let (mut run, running) = prepare_run(&mix, step).await?;
    migration::delete_retired(&mix, &mut run.record).await?;
    check_server_position(cfg, plan, &run.record).await?;
    log_start(cfg, plan, &run.record, &n.slot);
    mark_streaming_when_started(&plan.spec.index, &healthy);
    let end = stream(run, stop, healthy).await.map_err(|e| match e.kind {
        ErrorKind::SlotLost => e.with_hint(
            "set capture.resync_on_slot_loss = true to re-sync the index from the current rows, or run `pgsync teardown` and start again",
        ),
        _ => e,
    })?;
    match (end, running) {
        (StreamEnd::Finished, Some(m)) => {
            migration::finish_migration(&mix, &m).await?;
            Ok(true)
        }
        // A reindex was asked for while streaming: the next run starts it.
        (StreamEnd::Finished, None) => Ok(true),
        (StreamEnd::Stopped, _) => Ok(false),
    }
}

/// Sets the index's phase to streaming once its source is connected.
fn mark_streaming_when_started(index: &str, healthy: &watch::Sender<bool>) {
    let mut started = healthy.subscribe();
    let index = index.to_owned();
    tokio::spawn(async move {
        if started.wait_for(|s| *s).await.is_ok() {
            crate::telemetry::health::set_phase(&index, crate::telemetry::health::Phase::Streaming);
        }
    });
}

/// Does what the step needs before streaming (a build), and the streaming run that follows
/// (into the live index, or into both indexes of a migration).
async fn prepare_run<'a>(
    ix: &migration::Index<'a>,
    step: Step,
) -> Result<(StreamRun<'a>, Option<Box<migration::Migration>>)> {
    let (cfg, plan) = (ix.cfg, &ix.plan);
    let rejections = Rejections::open(cfg, &ix.sink, &plan.spec.index).await?;
    let (record, destinations, until, running) = match step {
        Step::Build { record, from } => {
            let record = build(ix, record, &from, &rejections).await?;
            let dest = destination(plan, &record, &rejections);
            (record, vec![dest], migration::reindex_requested(ix), None)
        }
        Step::Stream(record) => {
            let dest = destination(plan, &record, &rejections);
            (record, vec![dest], migration::reindex_requested(ix), None)
        }
        Step::Migrate(m) => {
            if let Some(live) = &m.live {
                super::bootstrap::include_tables(cfg, plan, live).await?;
            }
            let (dests, until) = migration::migration_run(ix, &m, &rejections);
            (m.record.clone(), dests, until, Some(m))
        }
    };
    let n = names(cfg, plan);
    let run = StreamRun {
        cfg,
        destinations,
        sink: ix.sink.clone(),
        store: ix.store.clone(),
        key: n.slot.clone(),
        record,
        slot: n.slot,
        publication: n.publication,
        until: Some(until),
    };
    Ok((run, running))
}

fn log_start(cfg: &Config, plan: &IndexPlan, record: &CheckpointRecord, slot: &str) {
    let shown = match cfg.capture.mode {
        CaptureMode::Wal => slot::format_lsn(record.position),
        CaptureMode::Notify => format!("xid {}", record.position),
    };
    tracing::info!(index = %plan.spec.index, slot = %slot, start = %shown, "streaming changes");
}

/// The live destination of a record.
fn destination(
    plan: &Arc<IndexPlan>,
    record: &CheckpointRecord,
    rejections: &Rejections,
) -> Destination {
    Destination {
        plan: plan.clone(),
        physical: record
            .physical
            .clone()
            .unwrap_or_else(|| plan.spec.index.clone())
            .into(),
        rejections: rejections.clone(),
    }
}

/// Runs (or resumes) a build into a new physical index, then points the alias at it.
async fn build(
    ix: &migration::Index<'_>,
    record: CheckpointRecord,
    from: &AliasState,
    rejections: &Rejections,
) -> Result<CheckpointRecord> {
    crate::telemetry::health::set_phase(
        &ix.plan.spec.index,
        crate::telemetry::health::Phase::Syncing,
    );
    let dest = destination(&ix.plan, &record, rejections);
    let start = record.initial.as_ref().map_or(record.position, |p| p.start);
    let log = RangeLog {
        store: ix.store.clone(),
        key: ix.key.clone(),
        record: record.clone(),
    };
    // The slot (or the triggers) exist before the snapshots the sync reads, so every change
    // committed after them is also streamed afterwards and re-applied from the current rows.
    let summary = initial_sync(ix.cfg, ix.sink.clone(), &dest, Some(log)).await?;
    report(ix.cfg, dest.alias(), &summary.to_string());
    if summary.dead_lettered > 0 {
        let line = format!(
            "index {}: {} rejected document(s) recorded in {} (see `pgsync dead-letters list`)",
            dest.alias(),
            summary.dead_lettered,
            rejections.store.describe()
        );
        report(ix.cfg, dest.alias(), &line);
    }
    ix.sink.refresh(&dest.physical).await?;
    let done = CheckpointRecord {
        position: start,
        ..ix.store.load(&ix.key).await?.unwrap_or(record)
    };
    migration::finish_build(ix, done, from).await
}

/// A result line for the operator: on stdout (PGSync prints these), or with `log.format =
/// "json"` as a log line, so the container log stays one JSON object per line.
fn report(cfg: &Config, index: &str, line: &str) {
    match cfg.log.format {
        crate::config::LogFormat::Json => tracing::info!(index = %index, "{line}"),
        crate::config::LogFormat::Text => println!("{line}"),
    }
}

/// The error for a checkpoint whose slot or change log was dropped by someone else.
fn lost_capture(cfg: &Config, plan: &IndexPlan, slot: &str) -> Error {
    let what = match cfg.capture.mode {
        CaptureMode::Wal => format!("replication slot {slot}"),
        CaptureMode::Notify => format!(
            "change log {}",
            super::bootstrap::log_names(cfg, plan).table
        ),
    };
    Error::new(
        ErrorKind::SlotLost,
        format!(
            "index {}: the checkpoint says it is synced, but the {what} is gone (dropped by someone else?): changes made meanwhile are lost",
            plan.spec.index
        ),
    )
}

/// In wal mode, a checkpoint beyond the server's WAL position means this is not the server the
/// index was synced from (a restored backup, a new cluster): every versioned write would then be
/// refused as older than what the engine holds.
async fn check_server_position(
    cfg: &Config,
    plan: &IndexPlan,
    record: &CheckpointRecord,
) -> Result<()> {
    if cfg.capture.mode != CaptureMode::Wal {
        return Ok(());
    }
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let now: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let now = slot::parse_lsn(&now)?;
    if record.position > now {
        return Err(Error::new(
            ErrorKind::SlotLost,
            format!(
                "index {}: the checkpoint is at {} but the server's WAL is only at {}: this is not the server the index was synced from",
                plan.spec.index,
                slot::format_lsn(record.position),
                slot::format_lsn(now)
            ),
        )
        .with_hint("re-sync into a fresh index: `pgsync teardown`, then `pgsync run --recreate`"));
    }
    Ok(())
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
    crate::telemetry::health::set_phase(index, crate::telemetry::health::Phase::Standby);
    let Some(mut held) = lock
        .acquire(stop)
        .await
        .map_err(|e| e.context(format!("index {index}")))?
    else {
        tracing::info!(index = %index, "stop requested while standby");
        return Ok(());
    };
    crate::telemetry::health::set_phase(index, crate::telemetry::health::Phase::Starting);
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
    // Still held: the previous leader is frozen or cut off, its walsender waiting out
    // wal_sender_timeout. This daemon holds the lock, so that connection is not a leader's.
    let ended = client
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot_name],
        )
        .await;
    tracing::warn!(slot = %slot_name, terminated = ?ended.ok().map(|r| r.get::<_, i64>(0)), "the previous leader's replication connection did not end within {patience:?}: terminated it (this daemon holds the lock)");
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
