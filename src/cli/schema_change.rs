//! `pgsync plan` (what a changed schema.json will do to each index, as `terraform plan` does)
//! and `pgsync reindex <index>` (rebuild an index into a new physical index without changing its
//! definition, e.g. to change the shard count, with no downtime).

use crate::checkpoint::{CheckpointRecord, Store};
use crate::config::Config;
use crate::pipeline::bootstrap::names;
use crate::pipeline::migration::{reindex_key, resolve_definition, side_key};
use crate::schema::fingerprint::{classify, DefinitionChange};
use crate::schema::mapping::index_body;
use crate::schema::resolve::IndexPlan;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::alias::AliasState;
use crate::sink::Sink;
use crate::{Error, Result};

/// Prints, per index, what the next run does.
pub async fn plan(cfg: &Config) -> Result<i32> {
    let file = load_schema(cfg)?;
    let store = Store::open(&cfg.checkpoint).await?;
    let sink = Sink::from_config(cfg)?;
    for p in resolve_all(cfg, &file).await? {
        let key = names(cfg, &p).slot;
        let lines = describe(cfg, &p, &store, &sink, &key).await?;
        println!("index {}: {}", p.spec.index, lines.join("\n    "));
    }
    Ok(0)
}

async fn describe(
    cfg: &Config,
    p: &IndexPlan,
    store: &Store,
    sink: &Sink,
    key: &str,
) -> Result<Vec<String>> {
    let alias = &p.spec.index;
    let state = sink.alias_state(alias).await?;
    if let Some(side) = store.load(&side_key(key)).await? {
        let done = side
            .initial
            .as_ref()
            .map_or(0, |i| i.ranges.iter().filter(|r| r.done).count());
        let of = side.initial.as_ref().map_or(0, |i| i.ranges.len());
        return Ok(vec![format!(
            "migration under way into {} ({done} of {of} ranges backfilled); resumes at the next start",
            side.physical.unwrap_or_default()
        )]);
    }
    let Some(record) = store.load(key).await?.filter(|r| r.initial_sync_done) else {
        return Ok(vec![match state {
            AliasState::Concrete => format!("build {alias}-1, then replace the concrete index {alias} by an alias to it (adopted without downtime)"),
            _ => format!("initial build into {alias}-1, then alias {alias} -> {alias}-1"),
        }]);
    };
    let reindex = store.load(&reindex_key(key)).await?.is_some();
    let live = record.physical.clone().unwrap_or_else(|| alias.clone());
    let Some(old) = record.definition.clone() else {
        return Ok(vec![
            "unchanged (its definition is recorded at the next run)".into(),
        ]);
    };
    let old_body = resolve_definition(cfg, &old)
        .await
        .map(|o| index_body(&o))
        .unwrap_or_default();
    let change = classify(&old, &p.spec.raw, &old_body, &index_body(p));
    Ok(match (change, reindex) {
        (DefinitionChange::Unchanged, false) => vec![format!("unchanged (live: {live})")],
        (DefinitionChange::InPlace { changes, .. }, false) => {
            let mut v = vec![format!("change in place on {live} (no rebuild):")];
            v.extend(changes.into_iter().map(|c| format!("  {c}")));
            v
        }
        (change, _) => {
            let mut v = vec![format!(
                "rebuild with no downtime: a new physical index next to {live}, backfilled while changes stream into both, then the alias swapped:"
            )];
            match change {
                DefinitionChange::Rebuild { changes }
                | DefinitionChange::InPlace { changes, .. } => {
                    v.extend(changes.into_iter().map(|c| format!("  {c}")))
                }
                DefinitionChange::Unchanged => v.push("  (reindex requested)".into()),
            }
            v
        }
    })
}

/// Asks for `index` to be rebuilt into a new physical index (its definition unchanged): a
/// running daemon starts it within seconds, otherwise the next start does.
pub async fn reindex(cfg: &Config, index: &str) -> Result<i32> {
    let file = load_schema(cfg)?;
    let spec = file
        .indices
        .iter()
        .find(|s| s.index == index)
        .ok_or_else(|| {
            let known: Vec<&str> = file.indices.iter().map(|s| s.index.as_str()).collect();
            Error::config(format!(
                "{}: no index {index:?} (indices: {})",
                file.path.display(),
                known.join(", ")
            ))
        })?;
    let key = crate::source::slot::slot_name(&cfg.capture.slot_prefix, &spec.database, &spec.index);
    let store = Store::open(&cfg.checkpoint).await?;
    store
        .save(&reindex_key(&key), &CheckpointRecord::default())
        .await?;
    println!(
        "index {index}: reindex requested; a running daemon starts it within seconds (otherwise the next `pgsync run` does)"
    );
    Ok(0)
}
