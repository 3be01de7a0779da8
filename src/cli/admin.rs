//! `pgsync bootstrap`, `teardown` and `status`: one-shot commands on what capture made.

use crate::checkpoint::Store;
use crate::config::{CaptureMode, Config};
use crate::pipeline::bootstrap::{bootstrap_index, log_names, names};
use crate::pipeline::views::event_names;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::dead_letter::DeadLetters;
use crate::sink::Sink;
use crate::source::{notify, refreshes, slot};
use crate::Result;

/// `pgsync bootstrap`.
pub async fn bootstrap(cfg: &Config) -> Result<()> {
    let file = load_schema(cfg)?;
    for plan in resolve_all(cfg, &file).await? {
        let boot = bootstrap_index(cfg, &plan).await?;
        println!("index {}: {}", plan.spec.index, boot.summary);
    }
    Ok(())
}

/// `pgsync teardown`: removes what bootstrap made in either capture mode (a slot, publication or
/// change log that does not exist is skipped), and the checkpoint.
pub async fn teardown(cfg: &Config) -> Result<()> {
    let file = load_schema(cfg)?;
    let store = Store::open(&cfg.checkpoint).await?;
    for plan in resolve_all(cfg, &file).await? {
        let mut client = crate::config::connect(cfg, &plan.spec.database).await?;
        let n = names(cfg, &plan);
        slot::teardown(&client, &n.slot, &n.publication).await?;
        let log = log_names(cfg, &plan);
        // Before the change log its function writes to.
        refreshes::remove(&client, &event_names(cfg, &plan)).await?;
        notify::remove(&mut client, &log, &plan.tables()).await?;
        store.remove(&n.slot).await?;
        println!(
            "index {}: removed slot {}, publication {}, change log {} with its triggers, and checkpoint",
            plan.spec.index, n.slot, n.publication, log.table
        );
    }
    Ok(())
}

/// `pgsync status`.
pub async fn status(cfg: &Config) -> Result<()> {
    let file = load_schema(cfg)?;
    let store = Store::open(&cfg.checkpoint).await?;
    let sink = Sink::from_config(cfg)?;
    for plan in resolve_all(cfg, &file).await? {
        let client = crate::config::connect(cfg, &plan.spec.database).await?;
        let n = names(cfg, &plan);
        let cp = store.load(&n.slot).await?;
        print_dead_letters(cfg, &sink, &plan.spec.index).await;
        match slot::slot_status(&client, &n.slot).await? {
            Some(s) => println!(
                "index {}: slot {} active={} confirmed_flush_lsn={} retained_wal_bytes={} checkpoint={}",
                plan.spec.index,
                n.slot,
                s.active,
                slot::format_lsn(s.confirmed_flush_lsn),
                s.retained_wal_bytes,
                cp.as_ref().map(|c| slot::format_lsn(c.position)).unwrap_or_else(|| "none".into())
            ),
            None if cfg.capture.mode == CaptureMode::Wal => {
                println!("index {}: not bootstrapped (no slot {})", plan.spec.index, n.slot)
            }
            None => {}
        }
        if cfg.capture.mode == CaptureMode::Notify {
            let log = log_names(cfg, &plan);
            match notify::backlog(&client, &log).await? {
                Some((rows, oldest)) => println!(
                    "index {}: change log {} rows={} oldest_xid={} checkpoint={}",
                    plan.spec.index,
                    log.table,
                    rows,
                    oldest
                        .map(|x| x.to_string())
                        .unwrap_or_else(|| "none".into()),
                    cp.map(|c| c.position.to_string())
                        .unwrap_or_else(|| "none".into())
                ),
                None => println!(
                    "index {}: not bootstrapped (no change log {})",
                    plan.spec.index, log.table
                ),
            }
        }
    }
    Ok(())
}

/// `index X: dead_letters=N (where)`; an unreachable store is said, not fatal.
async fn print_dead_letters(cfg: &Config, sink: &Sink, index: &str) {
    let counted = async {
        let dl = DeadLetters::inspect(&cfg.dead_letter, sink, index).await?;
        Ok::<_, crate::Error>((dl.list().await?.len(), dl.describe()))
    }
    .await;
    match counted {
        Ok((n, at)) => println!("index {index}: dead_letters={n} ({at})"),
        Err(e) => println!("index {index}: dead_letters=unknown ({})", e.message),
    }
}
