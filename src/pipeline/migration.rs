//! Zero-downtime schema migrations. The index a schema.json entry names is an alias over a
//! physical index `<index>-<n>`. When a run starts with a definition different from the one the
//! live index was built with (or `pgsync reindex` asked for it), a new physical index is created
//! with the new settings and mappings and backfilled with the new definition's documents while the
//! stream keeps applying every change to both (each window is checkpointed only once both wrote
//! it); once the backfill is done and the new index has caught up with what the source delivered,
//! the alias is swapped in one atomic request. The versioned writes keep a backfilled document
//! from overwriting a newer streamed one. A migration killed at any point resumes at the next
//! start from its recorded progress, and the alias never points at a partial index.

use super::bootstrap::Boot;
use super::destination::Destination;
use super::initial::{initial_sync, RangeLog};
use super::streaming::{Positions, Until};
use super::writer::Rejections;
use crate::checkpoint::{CheckpointRecord, InitialProgress, Retired, Store};
use crate::config::Config;
use crate::schema::fingerprint::{classify, DefinitionChange};
use crate::schema::mapping::index_body;
use crate::schema::resolve::IndexPlan;
use crate::sink::alias::AliasState;
use crate::sink::Sink;
use crate::{Error, ErrorKind, Result};
use std::sync::Arc;
use std::time::Duration;

/// One index, as the migration steps see it.
pub struct Index<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// The definition in schema.json now.
    pub plan: Arc<IndexPlan>,
    /// The engine.
    pub sink: Sink,
    /// The checkpoint store.
    pub store: Store,
    /// The checkpoint key (the slot name).
    pub key: String,
}

/// What a run does before it streams, or while it streams.
pub enum Step {
    /// Build a physical index from scratch (no index yet, a lost one, `--recreate`, or a
    /// concrete index being adopted), then point the alias at it; `record` holds the sync's
    /// progress.
    Build {
        /// The record to build under (its `physical` and `initial` set).
        record: CheckpointRecord,
        /// What the alias's name is now.
        from: AliasState,
    },
    /// Stream into the live index.
    Stream(CheckpointRecord),
    /// Stream into the live index and a new one being backfilled, then swap.
    Migrate(Box<Migration>),
}

/// A migration under way.
pub struct Migration {
    /// The main record (the live index's).
    pub record: CheckpointRecord,
    /// The live index's own definition, when it still resolves (else it is not updated while
    /// the new one is built).
    pub live: Option<Arc<IndexPlan>>,
    /// The migration's progress, under [`side_key`].
    pub side: CheckpointRecord,
    /// What the alias is now.
    pub from: AliasState,
}

/// Where a migration's own progress is stored.
pub fn side_key(key: &str) -> String {
    format!("{key}.migration")
}

/// Where `pgsync reindex` leaves its request.
pub fn reindex_key(key: &str) -> String {
    format!("{key}.reindex")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The physical index after `current` (`<alias>-<n+1>`).
fn next_physical(alias: &str, current: Option<&str>) -> String {
    let n = current
        .and_then(|c| c.strip_prefix(alias))
        .and_then(|s| s.strip_prefix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{alias}-{}", n + 1)
}

/// A record that builds `physical` from scratch, streaming from `boot.start` afterwards.
fn build_record(
    ix: &Index<'_>,
    boot: &Boot,
    physical: String,
    retired: Vec<Retired>,
) -> CheckpointRecord {
    CheckpointRecord {
        position: boot.start,
        initial: Some(InitialProgress {
            start: boot.start,
            ranges: vec![],
        }),
        physical: Some(physical),
        definition: Some(ix.plan.spec.raw.clone()),
        retired,
        ..Default::default()
    }
}

/// Decides what this run does, creating the physical index a build or migration needs.
pub async fn plan_step(
    ix: &Index<'_>,
    stored: Option<CheckpointRecord>,
    boot: &Boot,
    recreate: bool,
) -> Result<Step> {
    if ix.sink.plain_indexes() {
        return super::in_place::plan_step(ix, stored, boot, recreate).await;
    }
    let alias = ix.plan.spec.index.as_str();
    let from = ix.sink.alias_state(alias).await?;
    let live = match &from {
        AliasState::Alias(over) => over.first().cloned(),
        AliasState::Concrete => Some(alias.to_owned()),
        AliasState::Missing => None,
    };
    let stored = match stored {
        Some(r) => Some(adopt_finished_swap(ix, r, live.as_deref()).await?),
        None => None,
    };
    let record = match stored {
        Some(r)
            if !recreate
                && !boot.created
                && live.is_some()
                && r.physical.as_deref().or(Some(alias)) == live.as_deref() =>
        {
            r
        }
        Some(r)
            if !recreate
                && !boot.created
                && r.initial.is_some()
                && !r.initial_sync_done
                && r.physical.is_some() =>
        {
            // An interrupted build: resume it (its physical index is not behind the alias yet).
            return resume_build(ix, r, from).await;
        }
        r => {
            let retired = r.map(|r| r.retired).unwrap_or_default();
            return fresh_build(ix, boot, live.as_deref(), from, retired).await;
        }
    };
    if !record.initial_sync_done {
        return resume_build(ix, record, from).await;
    }
    if recorded_uuid_changed(ix, &record).await? {
        tracing::warn!(index = %alias, "index {alias} is not the one the checkpoint wrote to: it was deleted or re-created; building it again");
        return fresh_build(ix, boot, live.as_deref(), from, record.retired).await;
    }
    live_step(ix, record, from).await
}

/// A migration killed between its swap and recording it: the alias already points at the new
/// index, so the migration's record becomes the live one.
async fn adopt_finished_swap(
    ix: &Index<'_>,
    mut record: CheckpointRecord,
    live: Option<&str>,
) -> Result<CheckpointRecord> {
    let Some(side) = ix.store.load(&side_key(&ix.key)).await? else {
        return Ok(record);
    };
    if side.physical.is_none()
        || side.physical.as_deref() != live
        || record.physical.as_deref() == live
    {
        return Ok(record);
    }
    if let Some(old) = record.physical.take() {
        record.retired.push(Retired {
            physical: old,
            delete_after: now_secs() + ix.cfg.migration.keep_old_secs,
        });
    }
    record.physical = side.physical;
    record.definition = side.definition;
    record.index_uuid = side.index_uuid;
    ix.store.save(&ix.key, &record).await?;
    ix.store.remove(&side_key(&ix.key)).await?;
    tracing::info!(index = %ix.plan.spec.index, "a migration had swapped the alias before it stopped: recorded");
    Ok(record)
}

/// Whether the live index's uuid is not the one recorded.
async fn recorded_uuid_changed(ix: &Index<'_>, record: &CheckpointRecord) -> Result<bool> {
    let physical = record.physical.as_deref().unwrap_or(&ix.plan.spec.index);
    let uuid = ix.sink.index_uuid(physical).await?;
    Ok(record.index_uuid.is_some() && record.index_uuid != uuid)
}

async fn fresh_build(
    ix: &Index<'_>,
    boot: &Boot,
    live: Option<&str>,
    from: AliasState,
    retired: Vec<Retired>,
) -> Result<Step> {
    let physical = next_physical(&ix.plan.spec.index, live);
    create_physical(ix, &ix.plan, &physical).await?;
    let mut record = build_record(ix, boot, physical, retired);
    record.index_uuid = ix
        .sink
        .index_uuid(record.physical.as_deref().unwrap_or_default())
        .await?;
    ix.store.save(&ix.key, &record).await?;
    Ok(Step::Build { record, from })
}

async fn resume_build(ix: &Index<'_>, record: CheckpointRecord, from: AliasState) -> Result<Step> {
    let physical = record
        .physical
        .clone()
        .unwrap_or_else(|| ix.plan.spec.index.clone());
    let uuid = ix.sink.index_uuid(&physical).await?;
    if uuid.is_none() || uuid != record.index_uuid {
        // The half-built index is gone: start that build over.
        create_physical(ix, &ix.plan, &physical).await?;
        let mut fresh = record.clone();
        fresh.initial = fresh.initial.map(|p| InitialProgress {
            ranges: vec![],
            ..p
        });
        fresh.index_uuid = ix.sink.index_uuid(&physical).await?;
        ix.store.save(&ix.key, &fresh).await?;
        return Ok(Step::Build {
            record: fresh,
            from,
        });
    }
    Ok(Step::Build { record, from })
}

/// Creates `physical` with `plan`'s settings and mappings, replacing a leftover of that name.
async fn create_physical(ix: &Index<'_>, plan: &IndexPlan, physical: &str) -> Result<()> {
    ix.sink
        .ensure_index(physical, &index_body(plan), true)
        .await?;
    Ok(())
}

/// The step for an index whose live physical index is in place: stream, applying an in-place
/// change first, or migrate.
async fn live_step(ix: &Index<'_>, mut record: CheckpointRecord, from: AliasState) -> Result<Step> {
    let alias = ix.plan.spec.index.clone();
    let new = ix.plan.spec.raw.clone();
    let reindex = ix.store.load(&reindex_key(&ix.key)).await?.is_some();
    let Some(old) = record.definition.clone() else {
        // Built before definitions were recorded: adopt the current one.
        record.definition = Some(new);
        return Ok(Step::Stream(record));
    };
    let old_body = match resolve_definition(ix.cfg, &old).await {
        Ok(p) => index_body(&p),
        Err(_) => serde_json::json!({}),
    };
    let change = classify(&old, &new, &old_body, &index_body(&ix.plan));
    match (change, reindex) {
        (DefinitionChange::Unchanged, false) => Ok(Step::Stream(record)),
        (
            DefinitionChange::InPlace {
                mappings,
                settings,
                changes,
            },
            false,
        ) => {
            let physical = record.physical.clone().unwrap_or_else(|| alias.clone());
            apply_in_place(ix, &physical, mappings, settings).await?;
            tracing::info!(index = %alias, "definition changed in place: {}", changes.join("; "));
            record.definition = Some(new);
            ix.store.save(&ix.key, &record).await?;
            Ok(Step::Stream(record))
        }
        (change, _) => {
            let why = match change {
                DefinitionChange::Rebuild { changes }
                | DefinitionChange::InPlace { changes, .. } => changes.join("; "),
                DefinitionChange::Unchanged => "reindex requested".to_owned(),
            };
            start_migration(ix, record, &old, from, &why).await
        }
    }
}

async fn apply_in_place(
    ix: &Index<'_>,
    physical: &str,
    mappings: Option<serde_json::Value>,
    settings: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let crate::sink::Sink::Search(s) = &ix.sink else {
        return Ok(());
    };
    if let Some(m) = mappings {
        s.put_mapping(physical, &m).await?;
    }
    if !settings.is_empty() {
        s.put_settings(physical, &serde_json::json!({ "index": settings }))
            .await?;
    }
    Ok(())
}

/// Starts (or resumes) the migration to the current definition.
async fn start_migration(
    ix: &Index<'_>,
    record: CheckpointRecord,
    old: &serde_json::Value,
    from: AliasState,
    why: &str,
) -> Result<Step> {
    let alias = &ix.plan.spec.index;
    let side_name = side_key(&ix.key);
    let new = &ix.plan.spec.raw;
    let resumable = ix
        .store
        .load(&side_name)
        .await?
        .filter(|s| s.definition.as_ref() == Some(new));
    let side = match resumable {
        Some(s) if side_index_intact(ix, &s).await? => {
            tracing::info!(index = %alias, target = ?s.physical, "resuming the migration to the new definition");
            s
        }
        _ => {
            let live = record.physical.clone().unwrap_or_else(|| alias.clone());
            let physical = next_physical(alias, Some(&live));
            create_physical(ix, &ix.plan, &physical).await?;
            let side = CheckpointRecord {
                initial: Some(InitialProgress::default()),
                index_uuid: ix.sink.index_uuid(&physical).await?,
                physical: Some(physical),
                definition: Some(new.clone()),
                ..Default::default()
            };
            ix.store.save(&side_name, &side).await?;
            tracing::info!(index = %alias, target = ?side.physical, "migration to a new definition ({why}): building the new index beside the live one");
            side
        }
    };
    ix.store.remove(&reindex_key(&ix.key)).await?;
    let live = match resolve_definition(ix.cfg, old).await {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::warn!(index = %alias, "the live index's definition no longer resolves ({}): it is not updated until the swap", e.message);
            None
        }
    };
    Ok(Step::Migrate(Box::new(Migration {
        record,
        live,
        side,
        from,
    })))
}

async fn side_index_intact(ix: &Index<'_>, side: &CheckpointRecord) -> Result<bool> {
    let Some(p) = &side.physical else {
        return Ok(false);
    };
    Ok(side.index_uuid.is_some() && ix.sink.index_uuid(p).await? == side.index_uuid)
}

/// Resolves a recorded definition (a schema.json entry) against the database as it is now.
pub async fn resolve_definition(cfg: &Config, raw: &serde_json::Value) -> Result<IndexPlan> {
    let text = format!("[{raw}]");
    let file =
        crate::schema::parse::parse_str(&text, std::path::Path::new("<recorded definition>"))?;
    let mut plans = crate::schema::resolve_all(cfg, &file).await?;
    plans
        .pop()
        .ok_or_else(|| Error::internal("a recorded definition resolved to nothing"))
}

/// Points the alias at a freshly built index and records it as live; retires the previous one.
pub async fn finish_build(
    ix: &Index<'_>,
    mut record: CheckpointRecord,
    from: &AliasState,
) -> Result<CheckpointRecord> {
    let physical = record.physical.clone().unwrap_or_default();
    if !ix.sink.plain_indexes() {
        swap(ix, from, &physical, &mut record).await?;
    }
    record.initial_sync_done = true;
    record.initial = None;
    ix.store.save(&ix.key, &record).await?;
    Ok(record)
}

/// The atomic swap, and the replaced physical index retired.
async fn swap(
    ix: &Index<'_>,
    from: &AliasState,
    to: &str,
    record: &mut CheckpointRecord,
) -> Result<()> {
    let alias = &ix.plan.spec.index;
    ix.sink.swap_alias(alias, from, to).await?;
    tracing::info!(index = %alias, to, "alias {alias} now points at {to}");
    if let AliasState::Alias(over) = from {
        let delete_after = now_secs() + ix.cfg.migration.keep_old_secs;
        for old in over.iter().filter(|o| *o != to) {
            record.retired.push(Retired {
                physical: old.clone(),
                delete_after,
            });
        }
    }
    Ok(())
}

/// An end condition for a plain streaming run: `pgsync reindex` asked for a rebuild (checked
/// every few seconds), so the run ends and the next one migrates.
pub fn reindex_requested(ix: &Index<'_>) -> Until {
    let (store, key) = (ix.store.clone(), reindex_key(&ix.key));
    Box::new(move |_| {
        Box::pin(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Ok(Some(_)) = store.load(&key).await {
                    tracing::info!("a reindex was requested: rebuilding into a new index");
                    return Ok(());
                }
            }
        })
    })
}

/// Deletes the retired physical indexes whose time has come; keeps the others listed.
pub async fn delete_retired(ix: &Index<'_>, record: &mut CheckpointRecord) -> Result<()> {
    let now = now_secs();
    let (due, kept): (Vec<Retired>, Vec<Retired>) = record
        .retired
        .drain(..)
        .partition(|r| r.delete_after <= now);
    record.retired = kept;
    for r in &due {
        ix.sink.delete_index(&r.physical).await?;
        tracing::info!(index = %ix.plan.spec.index, physical = %r.physical, "deleted the replaced physical index");
    }
    if !due.is_empty() {
        ix.store.save(&ix.key, record).await?;
    }
    Ok(())
}

/// The destinations a migration streams into (the live index when its definition resolves, and
/// the new one), and its end condition: backfill the new index, wait until it caught up, swap.
pub fn migration_run(
    ix: &Index<'_>,
    m: &Migration,
    rejections: &Rejections,
) -> (Vec<Destination>, Until) {
    let alias = ix.plan.spec.index.clone();
    let live_physical: Arc<str> = m
        .record
        .physical
        .clone()
        .unwrap_or_else(|| alias.clone())
        .into();
    let new_physical: Arc<str> = m.side.physical.clone().unwrap_or_default().into();
    let new = Destination {
        plan: ix.plan.clone(),
        physical: new_physical,
        rejections: rejections.clone(),
    };
    let mut dests = vec![];
    if let Some(live) = &m.live {
        dests.push(Destination {
            plan: live.clone(),
            physical: live_physical,
            rejections: rejections.clone(),
        });
    }
    dests.push(new.clone());
    let (cfg, sink, store, key, side) = (
        ix.cfg.clone(),
        ix.sink.clone(),
        ix.store.clone(),
        ix.key.clone(),
        m.side.clone(),
    );
    let until: Until = Box::new(move |positions: Positions| {
        Box::pin(
            async move { backfill_and_catch_up(cfg, sink, store, key, side, new, positions).await },
        )
    });
    (dests, until)
}

async fn backfill_and_catch_up(
    cfg: Config,
    sink: Sink,
    store: Store,
    key: String,
    side: CheckpointRecord,
    new: Destination,
    mut positions: Positions,
) -> Result<()> {
    let log = RangeLog {
        store: store.clone(),
        key: side_key(&key),
        record: side,
    };
    let summary = initial_sync(&cfg, sink.clone(), &new, Some(log)).await?;
    tracing::info!(index = %new.alias(), "migration backfill done: {summary}");
    sink.refresh(&new.physical).await?;
    // Caught up: every change the source delivered so far is written to both indexes.
    let target = *positions.received.borrow();
    let reached = tokio::time::timeout(
        Duration::from_secs(600),
        positions.frontier.wait_for(|f| *f >= target),
    )
    .await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Error::new(
            ErrorKind::StageFailed,
            format!(
                "the new index of {} did not catch up with the stream",
                new.alias()
            ),
        )),
    }
}

/// After a migration run finished: swaps the alias, records the new index as live and retires
/// the old one.
pub async fn finish_migration(ix: &Index<'_>, m: &Migration) -> Result<()> {
    // The checkpointer stored newer positions while the run went on: start from those.
    let mut record = ix
        .store
        .load(&ix.key)
        .await?
        .unwrap_or_else(|| m.record.clone());
    let to = m.side.physical.clone().unwrap_or_default();
    swap(ix, &m.from, &to, &mut record).await?;
    crate::fault::pause("after-swap").await;
    record.physical = Some(to);
    record.definition = m.side.definition.clone();
    record.index_uuid = m.side.index_uuid.clone();
    ix.store.save(&ix.key, &record).await?;
    ix.store.remove(&side_key(&ix.key)).await?;
    delete_retired(ix, &mut record).await
}
