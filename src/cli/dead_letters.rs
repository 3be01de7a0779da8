//! `pgsync dead-letters list | retry`: the documents the engine rejected for good, per index, and
//! rebuilding them from the current rows once the cause is fixed (a mapping, a bad value).

use crate::config::Config;
use crate::pipeline::destination::Destination;
use crate::pipeline::initial::rebuild;
use crate::pipeline::messages::RootKey;
use crate::pipeline::writer::Rejections;
use crate::schema::resolve::IndexPlan;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::dead_letter::Entry;
use crate::sink::Sink;
use crate::Result;
use std::sync::Arc;

/// What to do with the dead letters.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DeadLetterAction {
    /// List the rejected documents: index, `_id`, position, time and the engine's reason.
    List {
        /// Only this index.
        #[arg(long)]
        index: Option<String>,
        /// One JSON object per line, the document included.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the rejected documents from the current rows; accepted ones leave the store.
    Retry {
        /// Only this index.
        #[arg(long)]
        index: Option<String>,
        /// Only this document `_id` (repeatable).
        #[arg(long)]
        id: Vec<String>,
    },
}

/// Runs `pgsync dead-letters ...`.
pub async fn run(cfg: &Config, action: DeadLetterAction) -> Result<i32> {
    let file = load_schema(cfg)?;
    let sink = Sink::from_config(cfg)?;
    let wanted =
        |p: &IndexPlan, only: &Option<String>| only.as_ref().is_none_or(|i| *i == p.spec.index);
    let mut left = 0;
    for plan in resolve_all(cfg, &file).await? {
        let rejections = match &action {
            DeadLetterAction::List { index, .. } | DeadLetterAction::Retry { index, .. }
                if !wanted(&plan, index) =>
            {
                continue
            }
            _ => Rejections::open(cfg, &sink, &plan.spec.index).await?,
        };
        let entries = rejections.store.list().await?;
        match &action {
            DeadLetterAction::List { json, .. } => print_entries(&entries, *json),
            DeadLetterAction::Retry { id, .. } => {
                let chosen: Vec<&Entry> = entries
                    .iter()
                    .filter(|e| id.is_empty() || id.contains(&e.doc_id))
                    .collect();
                left += retry(cfg, Arc::new(plan), &sink, rejections, &chosen).await?;
            }
        }
    }
    Ok(if left > 0 { 1 } else { 0 })
}

fn print_entries(entries: &[Entry], json: bool) {
    for e in entries {
        if json {
            println!("{}", serde_json::to_string(e).expect("entry serializes"));
        } else {
            println!(
                "{}\t{}\t{}\t{}\t{} {}",
                e.index, e.doc_id, e.position, e.time, e.status, e.reason
            );
        }
    }
}

/// Rebuilds `entries` from the current rows; returns how many are still rejected.
async fn retry(
    cfg: &Config,
    plan: Arc<IndexPlan>,
    sink: &Sink,
    rejections: Rejections,
    entries: &[&Entry],
) -> Result<usize> {
    let index = plan.spec.index.clone();
    let keys: Vec<RootKey> = entries
        .iter()
        .filter_map(|e| key_of(&plan, &e.doc_id))
        .collect();
    if keys.is_empty() {
        println!("index {index}: no dead letters to retry");
        return Ok(0);
    }
    let store = rejections.store.clone();
    let physical = sink.physical_of(&index).await?;
    let dest = Destination {
        plan,
        physical: physical.into(),
        rejections,
    };
    let summary = rebuild(cfg, sink.clone(), &dest, keys).await?;
    sink.refresh(&index).await?;
    let still: Vec<String> = store.list().await?.into_iter().map(|e| e.doc_id).collect();
    let still = entries.iter().filter(|e| still.contains(&e.doc_id)).count();
    println!(
        "index {index}: retried {} document(s): {} accepted, {still} still rejected ({})",
        entries.len(),
        entries.len() - still,
        summary
    );
    Ok(still)
}

/// The root key of a document `_id`: its values joined by `|` in key-column name order (the
/// format [`crate::sql::document::doc_id`] writes).
fn key_of(plan: &IndexPlan, id: &str) -> Option<RootKey> {
    let root = &plan.root;
    let mut sorted: Vec<&String> = root.key.iter().collect();
    sorted.sort();
    let parts: Vec<&str> = if sorted.len() == 1 {
        vec![id]
    } else {
        id.split('|').collect()
    };
    if parts.len() != sorted.len() {
        tracing::warn!(index = %plan.spec.index, id, "cannot tell the key values of this _id (a key value holds '|'); retry it by changing its row");
        return None;
    }
    let values = root
        .key
        .iter()
        .map(|k| parts[sorted.iter().position(|s| *s == k).unwrap_or(0)].to_owned())
        .collect();
    Some(RootKey {
        values,
        id: id.to_owned(),
        routings: vec![],
    })
}
