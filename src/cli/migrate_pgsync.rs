//! `pgsync migrate-from-pgsync`: takes an index over from PGSync 7.3 without losing a change and,
//! when PGSync's documents are right, without rebuilding it. Per index of schema.json:
//!
//! 1. our capture is bootstrapped first (publication and slot, or our triggers), so every change
//!    committed from here on is ours to stream;
//! 2. only then PGSync's slot, its `<schema>_<table>_notify`/`_truncate` triggers, and (when no
//!    other PGSync index uses them) its `_view` and `table_notify()` are dropped, with its
//!    checkpoint file `.<slot>` and Redis queue `queue:<slot>`; nothing falls between the two;
//! 3. the existing index is compared, document by document, with the database (see
//!    [`crate::pipeline::verify`]): what differs — a change PGSync had not applied yet — is
//!    rewritten, documents of deleted rows removed, and our checkpoint recorded at our slot's
//!    start, so `pgsync run` streams on into the same index instead of building a new one.

use crate::checkpoint::{redis_client, CheckpointRecord, Store};
use crate::config::Config;
use crate::pipeline::bootstrap::{bootstrap_index, names};
use crate::pipeline::verify::verify_and_repair;
use crate::schema::resolve::IndexPlan;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::alias::AliasState;
use crate::sink::Sink;
use crate::source::pgsync_objects::{self, PgsyncObjects};
use crate::Result;
use fred::interfaces::KeysInterface;
use std::path::PathBuf;
use std::time::Duration;

/// Runs the migration for every index, each step for all indices before the next (ours first
/// everywhere, then PGSync's removed, then the indices compared); returns the exit code.
pub async fn migrate(cfg: &Config, force: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    let sink = Sink::from_config(cfg)?;
    sink.check().await?;
    let store = Store::open(&cfg.checkpoint).await?;
    let taken_over: Vec<String> = plans.iter().map(|p| p.spec.index.clone()).collect();
    let mut steps = vec![];
    for plan in &plans {
        let client = crate::config::connect(cfg, &plan.spec.database).await?;
        let found = pgsync_objects::detect(&client, plan, &taken_over).await?;
        let index = &plan.spec.index;
        if found.is_empty() {
            println!(
                "index {index}: no PGSync slot, triggers or view in database {}",
                plan.spec.database
            );
        } else {
            println!("index {index}: found PGSync's {}", found.describe());
        }
        // 1. Ours first.
        let boot = bootstrap_index(cfg, plan).await?;
        println!("index {index}: bootstrap: {}", boot.summary);
        steps.push((plan, found, boot.start));
    }
    // 2. Then PGSync's.
    for (plan, found, _) in &steps {
        let mut client = crate::config::connect(cfg, &plan.spec.database).await?;
        pgsync_objects::remove(&mut client, found, force).await?;
        report_kept(found, force);
        remove_pgsync_checkpoints(cfg, found).await?;
    }
    // 3. The indices.
    for (plan, _, start) in &steps {
        take_over_index(cfg, plan, &sink, &store, *start).await?;
    }
    Ok(0)
}

/// Compares and repairs the index of `plan`, then records our checkpoint at `start`.
async fn take_over_index(
    cfg: &Config,
    plan: &IndexPlan,
    sink: &Sink,
    store: &Store,
    start: u64,
) -> Result<()> {
    let index = &plan.spec.index;
    let live = match sink.alias_state(index).await? {
        AliasState::Missing => {
            println!("index {index}: no index yet; `pgsync run` builds it");
            return Ok(());
        }
        AliasState::Concrete => None,
        AliasState::Alias(over) => over.first().cloned(),
    };
    let physical = live.clone().unwrap_or_else(|| index.clone());
    let v = verify_and_repair(cfg, plan, sink, &physical).await?;
    println!(
        "index {index}: {} of {} document(s) already matched the database; {} rewritten, {} deleted{}",
        v.matched,
        v.expected,
        v.rewritten,
        v.deleted,
        if v.all_matched() { "; index kept as it is" } else { "; index kept and repaired" }
    );
    let record = CheckpointRecord {
        position: start,
        initial_sync_done: true,
        index_uuid: sink.index_uuid(&physical).await?,
        physical: live,
        definition: Some(plan.spec.raw.clone()),
        ..Default::default()
    };
    store.save(&names(cfg, plan).slot, &record).await?;
    println!("index {index}: checkpoint recorded; `pgsync run` streams on from here");
    Ok(())
}

fn report_kept(found: &PgsyncObjects, force: bool) {
    if force {
        return;
    }
    for t in found.shared_tables() {
        let others: Vec<&str> = found.others[t].iter().map(String::as_str).collect();
        println!(
            "index {}: kept PGSync's trigger on {t}: PGSync indices {} still use it (migrate them too, or --force)",
            found.index,
            others.join(", ")
        );
    }
    if found.shared_in_use() && !found.shared.is_empty() {
        let mut others: Vec<&str> = found
            .others
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        others.sort();
        others.dedup();
        println!(
            "index {}: kept PGSync's {}._view and table_notify(): PGSync indices {} still use them",
            found.index,
            found.shared.join(", "),
            others.join(", ")
        );
    }
}

/// Where PGSync keeps its checkpoint file: `CHECKPOINT_PATH` (default `./`) and, when the
/// variable set ours, the same directory.
fn checkpoint_files(cfg: &Config, slot: &str) -> Vec<PathBuf> {
    let dir = std::env::var("CHECKPOINT_PATH").unwrap_or_else(|_| "./".into());
    let mut files = vec![PathBuf::from(dir).join(format!(".{slot}"))];
    let ours = cfg.checkpoint.dir.join(format!(".{slot}"));
    if !files.contains(&ours) {
        files.push(ours);
    }
    files
}

/// Removes PGSync's checkpoint file and Redis queue and metadata, so that a PGSync started again
/// by mistake cannot resume from a position whose slot is gone.
async fn remove_pgsync_checkpoints(cfg: &Config, found: &PgsyncObjects) -> Result<()> {
    for f in checkpoint_files(cfg, &found.slot_name) {
        if std::fs::remove_file(&f).is_ok() {
            println!(
                "index {}: removed PGSync's checkpoint file {}",
                found.index,
                f.display()
            );
        }
    }
    if let Some(url) = &cfg.checkpoint.redis_url {
        let client = redis_client(url, Duration::from_secs(5)).await?;
        let keys = [
            format!("queue:{}", found.slot_name),
            format!("queue:{}:meta", found.slot_name),
        ];
        let n: i64 = client.del(keys.to_vec()).await.map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::Checkpoint,
                format!("removing PGSync's Redis keys {keys:?}: {e}"),
            )
        })?;
        if n > 0 {
            println!(
                "index {}: removed PGSync's Redis queue {}",
                found.index,
                keys.join(", ")
            );
        }
    }
    Ok(())
}
