//! What change capture needs in the database, per index: the publication and slot (`wal`), or
//! the change log and triggers (`notify`), created idempotently, and their names.

use crate::config::{CaptureMode, Config};
use crate::schema::resolve::IndexPlan;
use crate::source::{notify, slot};
use crate::{Error, Result};

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
/// of an unrouted index (its key alone identifies the document; other tables need their old
/// foreign-key values, and a routed root its old routing value).
pub fn full_identity_tables(plan: &IndexPlan) -> Vec<crate::schema::TableId> {
    let root = &plan.root.table;
    let elsewhere = plan.nodes().iter().skip(1).any(|(n, _)| &n.table == root);
    // With routing, a deleted root row must say which shard its document is on.
    let routed = plan.routing_field.is_some();
    plan.tables()
        .into_iter()
        .filter(|t| t != root || elsewhere || routed)
        .collect()
}

/// What bootstrap found or made for one index, in either capture mode.
pub struct Boot {
    /// The slot (wal) or change log (notify) is new: nothing was captured before, so the index
    /// needs an initial sync.
    pub created: bool,
    /// Where streaming starts after an initial sync: the slot's consistent point (wal), or the
    /// server's transaction-id horizon read after the triggers exist (notify).
    pub start: u64,
    /// A line for `pgsync bootstrap` to print.
    pub summary: String,
}

/// Creates (or finds) what capture needs for `plan`.
pub async fn bootstrap_index(cfg: &Config, plan: &IndexPlan) -> Result<Boot> {
    let n = names(cfg, plan);
    let ctx = |e: Error| e.context(format!("bootstrap of index {}", plan.spec.index));
    super::views::follow_refreshes(cfg, plan)
        .await
        .map_err(ctx)?;
    match cfg.capture.mode {
        CaptureMode::Wal => {
            let client = crate::config::connect(cfg, &plan.spec.database).await?;
            slot::check_replication_ready(&client, &n.slot).await?;
            let out = slot::bootstrap(
                &client,
                &n.slot,
                &n.publication,
                &plan.tables(),
                &full_identity_tables(plan),
            )
            .await
            .map_err(ctx)?;
            Ok(Boot {
                created: out.slot_created,
                start: out.consistent_lsn,
                summary: format!(
                    "slot {} ({}), publication {} ({})",
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
                ),
            })
        }
        CaptureMode::Notify => {
            let mut client = crate::config::connect(cfg, &plan.spec.database).await?;
            let log = log_names(cfg, plan);
            let out = notify::install(&mut client, &log, plan)
                .await
                .map_err(ctx)?;
            // Every transaction below this horizon has ended, and those that wrote a table did
            // so before its trigger existed or are in the log: a sync started now sees them all.
            let start = notify::current_xmin(&client).await.map_err(ctx)?;
            Ok(Boot {
                created: out.log_created,
                start,
                summary: format!(
                    "change log {}.{} ({}), triggers {} and {} on {} table(s), channel {}",
                    log.schema,
                    log.table,
                    if out.log_created { "created" } else { "exists" },
                    log.row_trigger,
                    log.truncate_trigger,
                    out.tables,
                    log.channel
                ),
            })
        }
    }
}

/// During a migration the live index's definition still streams: in wal mode the publication
/// also lists its tables (and their replica identity), so changes to a table the new definition
/// dropped still reach the live index until the swap. (Notify-mode triggers of such tables stay
/// from the live definition's own bootstrap.)
pub async fn include_tables(cfg: &Config, plan: &IndexPlan, also: &IndexPlan) -> Result<()> {
    if cfg.capture.mode != CaptureMode::Wal {
        return Ok(());
    }
    let n = names(cfg, plan);
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let mut tables = plan.tables();
    tables.extend(
        also.tables()
            .into_iter()
            .filter(|t| !tables.contains(t))
            .collect::<Vec<_>>(),
    );
    let mut full = full_identity_tables(plan);
    full.extend(
        full_identity_tables(also)
            .into_iter()
            .filter(|t| !full.contains(t))
            .collect::<Vec<_>>(),
    );
    slot::bootstrap(&client, &n.slot, &n.publication, &tables, &full)
        .await
        .map_err(|e| {
            e.context(format!(
                "bootstrap of index {} (migration)",
                plan.spec.index
            ))
        })?;
    Ok(())
}

/// Whether what capture needs for `plan` is still there (the slot, or the change log): a
/// checkpoint without it means someone dropped it, and the changes it held are gone.
pub async fn capture_exists(cfg: &Config, plan: &IndexPlan) -> Result<bool> {
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    Ok(match cfg.capture.mode {
        CaptureMode::Wal => slot::slot_status(&client, &names(cfg, plan).slot)
            .await?
            .is_some(),
        CaptureMode::Notify => notify::backlog(&client, &log_names(cfg, plan))
            .await?
            .is_some(),
    })
}

/// Change-log names of `plan` in notify mode.
pub fn log_names(cfg: &Config, plan: &IndexPlan) -> notify::LogNames {
    notify::LogNames::new(
        &cfg.capture.slot_prefix,
        &plan.spec.database,
        &plan.spec.index,
    )
}
