//! Materialized view nodes are refreshed before the documents that read them are rebuilt (with
//! `capture.refresh_materialized_views`, the default): before an initial sync, and by the query
//! builder for each window of changes that touches one of their base tables, never once per
//! change. `CONCURRENTLY` when the view has a unique index (readers of the view are not
//! blocked), a plain `REFRESH` otherwise.

use crate::config::{CaptureMode, Config};
use crate::schema::resolve::{IndexPlan, PlanNode};
use crate::schema::view::Lineage;
use crate::schema::TableId;
use crate::source::refreshes::{self, EventNames, Record};
use crate::sql::document::table_sql;
use crate::sql::roots::{effects, Effect};
use crate::{Error, Result};
use std::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The materialized view nodes of `plan`, in tree order (preorder), each relation once.
pub fn materialized_nodes(plan: &IndexPlan) -> Vec<&PlanNode> {
    let mut out: Vec<&PlanNode> = vec![];
    for (n, _) in plan.nodes() {
        let mat = n.view.as_ref().is_some_and(|v| v.materialized);
        if mat && !out.iter().any(|o| o.table == n.table) {
            out.push(n);
        }
    }
    out
}

/// Refreshes the materialized view `table` of `plan` (concurrently when it can).
pub async fn refresh(client: &Client, plan: &IndexPlan, table: &TableId) -> Result<()> {
    let concurrent = plan
        .nodes()
        .iter()
        .any(|(n, _)| &n.table == table && n.view.as_ref().is_some_and(|v| v.concurrent_refresh));
    let started = Instant::now();
    let name = table_sql(table);
    let mut how = if concurrent { "concurrently" } else { "plain" };
    let sql = format!(
        "REFRESH MATERIALIZED VIEW {} {name}",
        if concurrent { "CONCURRENTLY" } else { "" }
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {}
        // CONCURRENTLY needs a populated view (one created WITH NO DATA is not).
        Err(e) if concurrent && e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
            how = "plain (not yet populated)";
            client
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {name}"))
                .await
                .map_err(|e| refresh_error(e, table))?;
        }
        Err(e) => return Err(refresh_error(e, table)),
    }
    tracing::debug!(index = %plan.spec.index, view = %table, how, elapsed_ms = started.elapsed().as_millis() as u64, "refreshed materialized view");
    Ok(())
}

/// Refreshes every materialized view node of `plan` (before an initial sync reads them).
pub async fn refresh_all(client: &Client, plan: &IndexPlan) -> Result<()> {
    for n in materialized_nodes(plan) {
        refresh(client, plan, &n.table).await?;
    }
    Ok(())
}

fn refresh_error(e: tokio_postgres::Error, table: &TableId) -> Error {
    let denied = e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE);
    let err = Error::from(e).context(format!("refreshing materialized view {table}"));
    if denied {
        err.with_hint(format!(
            "REFRESH MATERIALIZED VIEW needs ownership of {table}: run pgsync as its owner, or set capture.refresh_materialized_views = false and refresh it yourself (the daemon then follows your refreshes)"
        ))
    } else {
        err
    }
}

/// The event trigger names of `plan`.
pub fn event_names(cfg: &Config, plan: &IndexPlan) -> EventNames {
    EventNames::new(
        &cfg.capture.slot_prefix,
        &plan.spec.database,
        &plan.spec.index,
    )
}

/// Makes sure the refreshes others make of `plan`'s materialized views reach the stream when
/// the daemon does not refresh them itself (see [`crate::source::refreshes`]); when it does, an
/// event trigger left from such a run is removed where this role may.
pub async fn follow_refreshes(cfg: &Config, plan: &IndexPlan) -> Result<()> {
    let views: Vec<TableId> = materialized_nodes(plan)
        .iter()
        .map(|n| n.table.clone())
        .collect();
    if views.is_empty() {
        return Ok(());
    }
    let names = event_names(cfg, plan);
    let mut client = crate::config::connect(cfg, &plan.spec.database).await?;
    if cfg.capture.refresh_materialized_views {
        if let Err(e) = refreshes::remove(&client, &names).await {
            tracing::warn!(index = %plan.spec.index, "event trigger {} left in place: {e}", names.trigger);
        }
        return Ok(());
    }
    let slot = super::bootstrap::names(cfg, plan).slot;
    let prefix = refreshes::message_prefix(&slot);
    let log = super::bootstrap::log_names(cfg, plan);
    let record = match cfg.capture.mode {
        CaptureMode::Wal => Record::Message(&prefix),
        CaptureMode::Notify => Record::Log(&log),
    };
    if refreshes::install(&mut client, &names, record, &views).await? {
        tracing::info!(index = %plan.spec.index, trigger = %names.trigger, "event trigger created: refreshes of the materialized views are followed");
    }
    Ok(())
}

/// What `validate` (and the daemon's start) says about how `plan`'s views are followed: one line
/// per fact, starting with `note:` or `warning:` (a change that is not followed).
pub fn describe(plan: &IndexPlan, refresh_views: bool) -> Vec<String> {
    let index = &plan.spec.index;
    let mut out = vec![];
    for (n, _) in plan.nodes() {
        let Some(info) = &n.view else { continue };
        let kind = if info.materialized {
            "materialized view"
        } else {
            "view"
        };
        let captured = plan.tables();
        for t in &info.unlisted {
            let reach = if captured.contains(t) {
                format!("a change to {t} reaches its documents only where {t} is itself a node of the tree")
            } else {
                format!("changes to {t} do not reach its documents")
            };
            out.push(format!(
                "warning: index {index}: {kind} {} reads {t}, which its base_tables does not list: {reach} (add it to base_tables)",
                n.table
            ));
        }
        for b in &n.base_tables {
            out.push(base_table_note(plan, n, b));
        }
        if info.materialized {
            out.push(refresh_note(
                index,
                n,
                info.concurrent_refresh,
                refresh_views,
            ));
        }
    }
    out
}

fn base_table_note(plan: &IndexPlan, node: &PlanNode, base: &TableId) -> String {
    let index = &plan.spec.index;
    let narrow = effects(plan, base)
        .iter()
        .any(|e| matches!(e, Effect::View(v) if *v.table == node.table && v.columns.is_some()));
    if narrow {
        return format!(
            "note: index {index}: a change to {base} rebuilds only the documents of the rows of {} it names (old and new values)",
            node.table
        );
    }
    let why = match node.view.as_ref().and_then(|v| v.lineage.get(base)) {
        Some(Lineage::Opaque(why)) => {
            format!("{} cannot be followed row by row: {why}", node.table)
        }
        _ => format!(
            "{} does not pass the columns its documents are found by through from {base} unchanged",
            node.table
        ),
    };
    let prune = if plan.root.capturable {
        ""
    } else {
        ", then deletes the documents of rows gone from the root view"
    };
    format!("note: index {index}: a change to {base} rebuilds the whole index{prune} ({why})")
}

fn refresh_note(index: &str, node: &PlanNode, concurrent: bool, refresh_views: bool) -> String {
    let t = &node.table;
    match (refresh_views, concurrent) {
        (false, _) => format!(
            "note: index {index}: materialized view {t} is refreshed by you (capture.refresh_materialized_views = false): each REFRESH rebuilds the documents that read it"
        ),
        (true, true) => format!(
            "note: index {index}: materialized view {t} is refreshed CONCURRENTLY by the daemon, once per window of changes to its base tables"
        ),
        (true, false) => format!(
            "note: index {index}: materialized view {t} has no unique index, so the daemon refreshes it with a plain REFRESH, which blocks every reader of {t} while it runs: add a unique index on its key columns to refresh it CONCURRENTLY"
        ),
    }
}

/// A warning when `plan`'s materialized views are left to the user but the event trigger that
/// reports their refreshes is not installed yet.
pub async fn missing_event_trigger(cfg: &Config, plan: &IndexPlan) -> Result<Option<String>> {
    if cfg.capture.refresh_materialized_views || materialized_nodes(plan).is_empty() {
        return Ok(None);
    }
    let names = event_names(cfg, plan);
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    if refreshes::exists(&client, &names).await? {
        return Ok(None);
    }
    Ok(Some(format!(
        "warning: index {}: event trigger {} does not exist yet, so your refreshes of its materialized views are not followed: run `pgsync bootstrap` as a superuser",
        plan.spec.index, names.trigger
    )))
}
