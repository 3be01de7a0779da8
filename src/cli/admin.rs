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

/// `pgsync status`: per index, lines of `key=value` facts, or (`--json`) one JSON document with
/// the same facts as the metrics: slot, position, retained WAL, lag, checkpoint, dead letters,
/// leader. Lag in seconds and the leader come from the running daemon's `/readyz` when
/// `metrics.listen` is set and it answers.
pub async fn status(cfg: &Config, json: bool) -> Result<()> {
    let file = load_schema(cfg)?;
    let store = Store::open(&cfg.checkpoint).await?;
    let sink = Sink::from_config(cfg)?;
    let daemon = daemon_view(cfg);
    let mut all = vec![];
    for plan in resolve_all(cfg, &file).await? {
        let facts = index_status(cfg, &store, &sink, &plan, daemon.as_ref()).await?;
        if !json {
            print_status(cfg, &facts);
        }
        all.push(facts);
    }
    if json {
        let doc = serde_json::json!({ "mode": cfg.capture.mode, "indices": all });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    Ok(())
}

/// What `status` says about one index.
#[derive(Debug, serde::Serialize)]
struct IndexStatus {
    index: String,
    /// Slot (wal) or change-log table (notify).
    slot: Option<String>,
    change_log: Option<String>,
    bootstrapped: bool,
    active: Option<bool>,
    /// The slot's confirmed flush LSN (wal).
    position: Option<String>,
    wal_status: Option<String>,
    retained_wal_bytes: Option<u64>,
    lag_bytes: Option<i64>,
    lag_secs: Option<f64>,
    /// Rows waiting in the change log (notify).
    backlog_rows: Option<i64>,
    checkpoint: Option<String>,
    initial_sync_done: Option<bool>,
    dead_letters: Option<usize>,
    dead_letters_at: String,
    /// `leader`, `standby`, or the phase the daemon reports; `None` without a daemon.
    daemon_phase: Option<String>,
}

async fn index_status(
    cfg: &Config,
    store: &Store,
    sink: &Sink,
    plan: &crate::schema::resolve::IndexPlan,
    daemon: Option<&serde_json::Value>,
) -> Result<IndexStatus> {
    let index = plan.spec.index.clone();
    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let n = names(cfg, plan);
    let cp = store.load(&n.slot).await?;
    let (dead_letters, dead_letters_at) = dead_letters(cfg, sink, &index).await;
    let from_daemon = daemon.and_then(|d| d.get("indices")?.get(&index));
    let mut st = IndexStatus {
        index,
        slot: None,
        change_log: None,
        bootstrapped: false,
        active: None,
        position: None,
        wal_status: None,
        retained_wal_bytes: None,
        lag_bytes: None,
        lag_secs: from_daemon.and_then(|d| d.get("lag_secs")?.as_f64()),
        backlog_rows: None,
        checkpoint: cp.as_ref().map(|c| match cfg.capture.mode {
            CaptureMode::Wal => slot::format_lsn(c.position),
            CaptureMode::Notify => c.position.to_string(),
        }),
        initial_sync_done: cp.as_ref().map(|c| c.initial_sync_done),
        dead_letters,
        dead_letters_at,
        daemon_phase: from_daemon.and_then(|d| Some(d.get("phase")?.as_str()?.to_owned())),
    };
    if cfg.capture.mode == CaptureMode::Wal {
        st.slot = Some(n.slot.clone());
        if let Some(s) = slot::slot_status(&client, &n.slot).await? {
            let lag: i64 = client
                .query_one(
                    "SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                    &[&n.slot],
                )
                .await?
                .get(0);
            st.bootstrapped = true;
            st.active = Some(s.active);
            st.position = Some(slot::format_lsn(s.confirmed_flush_lsn));
            st.wal_status = s.wal_status;
            st.retained_wal_bytes = Some(s.retained_wal_bytes);
            st.lag_bytes = Some(lag);
        }
    } else {
        let log = log_names(cfg, plan);
        st.change_log = Some(log.table.clone());
        if let Some((rows, _)) = notify::backlog(&client, &log).await? {
            st.bootstrapped = true;
            st.backlog_rows = Some(rows);
        }
    }
    Ok(st)
}

/// The text form of one index's status.
fn print_status(cfg: &Config, st: &IndexStatus) {
    let index = &st.index;
    let none = || "none".to_owned();
    match &st.dead_letters {
        Some(n) => println!("index {index}: dead_letters={n} ({})", st.dead_letters_at),
        None => println!(
            "index {index}: dead_letters=unknown ({})",
            st.dead_letters_at
        ),
    }
    let lag_secs = st
        .lag_secs
        .map(|l| format!(" lag_secs={l:.1}"))
        .unwrap_or_default();
    let phase = st
        .daemon_phase
        .as_ref()
        .map(|p| format!(" daemon={p}"))
        .unwrap_or_default();
    let checkpoint = st.checkpoint.clone().unwrap_or_else(none);
    match cfg.capture.mode {
        CaptureMode::Wal if st.bootstrapped => println!(
            "index {index}: slot {} active={} confirmed_flush_lsn={} retained_wal_bytes={} lag_bytes={} wal_status={} checkpoint={checkpoint}{lag_secs}{phase}",
            st.slot.clone().unwrap_or_default(),
            st.active.unwrap_or(false),
            st.position.clone().unwrap_or_else(none),
            st.retained_wal_bytes.unwrap_or(0),
            st.lag_bytes.unwrap_or(0),
            st.wal_status.clone().unwrap_or_else(none),
        ),
        CaptureMode::Wal => println!(
            "index {index}: not bootstrapped (no slot {})",
            st.slot.clone().unwrap_or_default()
        ),
        CaptureMode::Notify if st.bootstrapped => println!(
            "index {index}: change log {} rows={} checkpoint={checkpoint}{lag_secs}{phase}",
            st.change_log.clone().unwrap_or_default(),
            st.backlog_rows.unwrap_or(0),
        ),
        CaptureMode::Notify => println!(
            "index {index}: not bootstrapped (no change log {})",
            st.change_log.clone().unwrap_or_default()
        ),
    }
}

/// The running daemon's `/readyz` answer, when `metrics.listen` is set and it answers.
fn daemon_view(cfg: &Config) -> Option<serde_json::Value> {
    let listen = cfg.metrics.listen.as_deref()?;
    let (_, body) = super::probe::get(listen, "/readyz").ok()?;
    serde_json::from_str(&body).ok()
}

/// The number of dead letters of `index` and where they are; an unreachable store is said,
/// not fatal.
async fn dead_letters(cfg: &Config, sink: &Sink, index: &str) -> (Option<usize>, String) {
    let counted = async {
        let dl = DeadLetters::inspect(&cfg.dead_letter, sink, index).await?;
        Ok::<_, crate::Error>((dl.list().await?.len(), dl.describe()))
    }
    .await;
    match counted {
        Ok((n, at)) => (Some(n), at),
        Err(e) => (None, e.message),
    }
}
