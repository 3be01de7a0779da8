//! What each subcommand does.

use super::Action;
use crate::config::Config;
use crate::config::OnRejected;
use crate::pipeline::destination::Destination;
use crate::pipeline::initial::{initial_sync, prune_view_root};
use crate::pipeline::writer::Rejections;
use crate::schema::mapping::index_body;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::Sink;
use crate::{Error, Result};
use std::sync::Arc;

/// Does what was asked; returns the exit code.
pub async fn dispatch(action: Action, cfg: Config) -> Result<i32> {
    match action {
        Action::Validate { strict } => validate(&cfg, strict).await,
        Action::MigrateFromPgsync { force } => super::migrate_pgsync::migrate(&cfg, force).await,
        Action::CatchUp { recreate } => super::catch_up::catch_up(&cfg, recreate).await,
        Action::FullSync { recreate } => run_once(&cfg, recreate).await,
        Action::Daemon { recreate } => crate::pipeline::daemon::run(&cfg, recreate).await,
        Action::Bootstrap => super::admin::bootstrap(&cfg).await.map(|_| 0),
        Action::Teardown => super::admin::teardown(&cfg).await.map(|_| 0),
        Action::Status { json } => super::admin::status(&cfg, json).await.map(|_| 0),
        Action::Health { url, live } => Ok(super::probe::health(&cfg, url.as_deref(), live)),
        Action::DeadLetters(action) => super::dead_letters::run(&cfg, action).await,
        Action::Plan => super::schema_change::plan(&cfg).await,
        Action::Reindex(index) => super::schema_change::reindex(&cfg, &index).await,
    }
}

async fn validate(cfg: &Config, strict: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    if strict {
        crate::schema::strict(&file)?;
    }
    let plans = resolve_all(cfg, &file).await?;
    crate::plugin::load_for(cfg, &plans)?;
    crate::source::pgsync_objects::warn_at_startup(cfg, &plans).await;
    for p in &plans {
        if let Some(chain) = crate::plugin::chain_for(&p.spec.index) {
            println!(
                "ok: index {}: plugins {} loaded",
                p.spec.index,
                chain.names().join(", ")
            );
        }
        println!(
            "ok: index {} (database {}): {} nodes, tables {}",
            p.spec.index,
            p.spec.database,
            p.nodes().len(),
            p.relations()
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for line in crate::pipeline::views::describe(p, cfg.capture.refresh_materialized_views) {
            println!("{line}");
        }
        if let Some(w) = crate::pipeline::views::missing_event_trigger(cfg, p).await? {
            println!("{w}");
        }
    }
    if let Some(p) = plans.first() {
        if let Some(w) = slot_wal_limit_warning(cfg, &p.spec.database).await? {
            println!("{w}");
        }
    }
    Ok(0)
}

/// In wal mode, a warning when `max_slot_wal_keep_size` is unset: a slot of a daemon that is
/// down or stuck then keeps WAL without bound, until the server's disk is full.
async fn slot_wal_limit_warning(cfg: &Config, database: &str) -> Result<Option<String>> {
    if cfg.capture.mode != crate::config::CaptureMode::Wal {
        return Ok(None);
    }
    let client = crate::config::connect(cfg, database).await?;
    let v: String = client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await?
        .get(0);
    Ok((v == "-1").then(|| {
        "slot safety: max_slot_wal_keep_size is unset (-1): while the daemon is down or behind, its replication slot keeps WAL on the server without limit, until the disk is full; set it in postgresql.conf (e.g. max_slot_wal_keep_size = '50GB'); past it PostgreSQL invalidates the slot, which the daemon reports (or re-syncs with capture.resync_on_slot_loss = true)".to_owned()
    }))
}

/// `run --once --full`: creates the index if needed and rebuilds every document of every index
/// from the current rows, leaving capture and checkpoints alone.
pub async fn run_once(cfg: &Config, recreate: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    crate::plugin::load_for(cfg, &plans)?;
    let sink = Sink::from_config(cfg)?;
    sink.check().await?;
    let mut lost = 0;
    for plan in plans {
        let plan = Arc::new(plan);
        let created = sink
            .ensure_index(&plan.spec.index, &index_body(&plan), recreate)
            .await?;
        let rejections = Rejections::open(cfg, &sink, &plan.spec.index).await?;
        let where_to = rejections.store.describe();
        let dest = Destination {
            plan: plan.clone(),
            physical: sink.physical_of(&plan.spec.index).await?.into(),
            rejections,
        };
        if !created {
            prune_view_root(cfg, sink.clone(), &dest).await?;
        }
        let summary = initial_sync(cfg, sink.clone(), &dest, None).await?;
        sink.refresh(&plan.spec.index).await?;
        println!("{summary}");
        if summary.dead_lettered > 0 {
            println!(
                "index {}: {} rejected document(s) recorded in {where_to} (see `pgsync dead-letters list`)",
                plan.spec.index, summary.dead_lettered
            );
        }
        lost += summary.failed - summary.dead_lettered;
    }
    let skipping = cfg.dead_letter.on_rejected == OnRejected::Skip
        || cfg.dead_letter.store == crate::config::DeadLetterStore::Off;
    if lost > 0 && !skipping {
        return Err(Error::new(
            crate::ErrorKind::SinkRejected,
            format!("{lost} document(s) were not indexed and not recorded (rejected by the search engine, or a plugin failed on them); each is logged above with its _id and reason"),
        ));
    }
    Ok(0)
}
