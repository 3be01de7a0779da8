//! The daemon's monitor of one index: every `metrics.poll_secs` it writes a heartbeat when one
//! is due (with `metrics.listen` set), reads the slot (lag in bytes, retained WAL, `wal_status`), the stored checkpoint and
//! the heartbeats the pipeline confirmed (lag in seconds), probes the search engine, and
//! publishes it all as metrics and as the readiness `/readyz` answers. It also warns once when
//! the slot keeps more WAL than `capture.slot_wal_warn_bytes`, and says plainly when PostgreSQL
//! invalidated the slot. It only reads and writes heartbeats, so a failure here is logged and
//! retried on the next poll, never fatal.

use super::bootstrap::{log_names, names};
use crate::checkpoint::Store;
use crate::config::{CaptureMode, Config};
use crate::schema::resolve::IndexPlan;
use crate::sink::Sink;
use crate::source::notify;
use crate::telemetry::lag::Heartbeats;
use crate::telemetry::{health, names as m};
use crate::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Prefix of the heartbeat logical messages (wal mode); the WAL reader ignores messages that
/// are not its own.
pub const HEARTBEAT_PREFIX: &str = "pgsync-heartbeat";

/// What one index's monitor watches.
pub struct Monitor {
    cfg: Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    store: Store,
    client: Option<tokio_postgres::Client>,
    heartbeats: Heartbeats,
    last_heartbeat: Option<Instant>,
    checkpoint: Option<(u64, Instant)>,
    warned_wal: bool,
    warned_lost: bool,
}

/// What a poll read from the slot.
struct SlotFacts {
    lag_bytes: i64,
    retained: i64,
    confirmed: u64,
    wal_status: Option<String>,
}

impl Monitor {
    /// A monitor of `plan`'s index.
    pub fn new(cfg: &Config, plan: Arc<IndexPlan>, sink: Sink, store: Store) -> Self {
        Monitor {
            cfg: cfg.clone(),
            plan,
            sink,
            store,
            client: None,
            heartbeats: Heartbeats::default(),
            last_heartbeat: None,
            checkpoint: None,
            warned_wal: false,
            warned_lost: false,
        }
    }

    /// Polls until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_secs(self.cfg.metrics.poll_secs.max(1));
        loop {
            self.poll().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn index(&self) -> &str {
        &self.plan.spec.index
    }

    /// Whether `/readyz` and the metrics are served: only then are heartbeats written and the
    /// engine probed (the slot is watched either way).
    fn serving(&self) -> bool {
        self.cfg.metrics.listen.is_some()
    }

    async fn poll(&mut self) {
        if self.serving() {
            self.probe_engine().await;
        }
        if let Err(e) = self.poll_source().await {
            tracing::debug!(index = %self.index(), "monitor: {e}");
            self.client = None;
        }
        let measured = self.serving() && self.cfg.metrics.heartbeat_secs > 0;
        let lag = measured.then(|| self.heartbeats.lag_secs());
        if let Some(l) = lag {
            metrics::gauge!(m::LAG_SECONDS, "index" => self.index().to_owned()).set(l);
        }
        health::set_lag(self.index(), lag);
    }

    /// Asks the engine whether it answers, within the poll interval.
    async fn probe_engine(&self) {
        let limit = Duration::from_secs(self.cfg.metrics.poll_secs.max(1));
        let error = match tokio::time::timeout(limit, self.sink.probe()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.message),
            Err(_) => Some(format!("no answer within {limit:?}")),
        };
        health::set_engine(self.index(), error);
    }

    async fn poll_source(&mut self) -> Result<()> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(crate::config::connect(&self.cfg, &self.plan.spec.database).await?);
        }
        self.heartbeat().await?;
        let slot = names(&self.cfg, &self.plan).slot;
        let stored = self.store.load(&slot).await?.map(|r| r.position);
        self.checkpoint_age(stored);
        match self.cfg.capture.mode {
            CaptureMode::Wal => {
                if let Some(f) = self.slot_facts(&slot).await? {
                    self.heartbeats.confirmed_below(f.confirmed);
                    self.publish_slot(&slot, &f);
                }
            }
            CaptureMode::Notify => {
                if let Some(p) = stored {
                    self.heartbeats.confirmed_below(p);
                }
            }
        }
        Ok(())
    }

    /// Writes a heartbeat when one is due.
    async fn heartbeat(&mut self) -> Result<()> {
        let every = Duration::from_secs(self.cfg.metrics.heartbeat_secs);
        if !self.serving()
            || every.is_zero()
            || self.last_heartbeat.is_some_and(|t| t.elapsed() < every)
        {
            return Ok(());
        }
        let Some(client) = &self.client else {
            return Ok(());
        };
        let position = match self.cfg.capture.mode {
            CaptureMode::Wal => {
                let lsn: String = client
                    .query_one(
                        "SELECT pg_logical_emit_message(true, $1, now()::text)::text",
                        &[&HEARTBEAT_PREFIX],
                    )
                    .await
                    .map_err(|e| crate::Error::from(e).context("writing a heartbeat message"))?
                    .get(0);
                crate::source::slot::parse_lsn(&lsn)?
            }
            CaptureMode::Notify => {
                notify::heartbeat(client, &log_names(&self.cfg, &self.plan)).await?
            }
        };
        self.last_heartbeat = Some(Instant::now());
        self.heartbeats.sent(position);
        Ok(())
    }

    /// `pgsync_checkpoint_age_seconds`: time since the stored position last moved.
    fn checkpoint_age(&mut self, stored: Option<u64>) {
        let Some(p) = stored else { return };
        match self.checkpoint {
            Some((q, _)) if q == p => {}
            _ => self.checkpoint = Some((p, Instant::now())),
        }
        if let Some((_, since)) = self.checkpoint {
            metrics::gauge!(m::CHECKPOINT_AGE, "index" => self.index().to_owned())
                .set(since.elapsed().as_secs_f64());
        }
    }

    async fn slot_facts(&self, slot: &str) -> Result<Option<SlotFacts>> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let row = client
            .query_opt(
                "SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
                        COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
                        COALESCE(confirmed_flush_lsn, '0/0')::text,
                        wal_status::text
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| crate::Error::from(e).context(format!("reading slot {slot}")))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SlotFacts {
            lag_bytes: row.get(0),
            retained: row.get(1),
            confirmed: crate::source::slot::parse_lsn(row.get(2))?,
            wal_status: row.get(3),
        }))
    }

    /// Slot gauges, the retained-WAL warning and the invalidation report.
    fn publish_slot(&mut self, slot: &str, f: &SlotFacts) {
        let index = self.index().to_owned();
        let label = || ("index", index.clone());
        metrics::gauge!(m::LAG_BYTES, &[label()]).set(f.lag_bytes.max(0) as f64);
        metrics::gauge!(m::SLOT_RETAINED_WAL, &[label()]).set(f.retained.max(0) as f64);
        let limit = self.cfg.capture.slot_wal_warn_bytes;
        let over = limit > 0 && f.retained.max(0) as u64 > limit;
        metrics::gauge!(m::SLOT_WAL_OVER, &[label()]).set(if over { 1.0 } else { 0.0 });
        if over && !self.warned_wal {
            tracing::warn!(index = %index, slot = %slot, retained_wal_bytes = f.retained, "replication slot {slot} keeps {} MiB of WAL on the server (capture.slot_wal_warn_bytes = {limit}): the index is falling behind or the daemon is stuck; PostgreSQL invalidates the slot once it passes max_slot_wal_keep_size", f.retained >> 20);
        }
        self.warned_wal = over;
        let lost = f.wal_status.as_deref() == Some("lost");
        metrics::gauge!(m::SLOT_LOST, &[label()]).set(if lost { 1.0 } else { 0.0 });
        if lost && !self.warned_lost {
            tracing::error!(index = %index, slot = %slot, "{}", super::daemon::slot_lost_message(&index, slot));
        }
        self.warned_lost = lost;
    }
}
