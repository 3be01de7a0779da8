//! The WAL reader stage: streams a logical replication slot with pgwire-replication, decodes the
//! pgoutput messages, groups the changes of each committed transaction into a [`Transaction`]
//! sent to a bounded channel, and acknowledges to PostgreSQL the positions the pipeline reports
//! as durable, so the slot's `confirmed_flush_lsn` advances and the server can recycle WAL.
//!
//! [`run`] is the stage as a plain future; [`WalReader`] wraps it as an actix actor, and
//! [`spawn_reader`] starts that actor on its own arbiter from the daemon's configuration.
//!
//! # Transactions and acknowledgement
//!
//! pgoutput protocol version 1 (the only one pgwire-replication speaks) sends a transaction's
//! changes after its commit, between a Begin and a Commit event. The reader buffers the changes of
//! one transaction and sends `Transaction { position: <commit end LSN>, changes }`, awaiting
//! channel capacity, so a slow consumer stops the reader, which stops reading the socket (the
//! crate keeps answering the server's keepalives meanwhile).
//!
//! Transactions with no changes for the published tables are **not** forwarded. PostgreSQL 15
//! does not even send those, but keepalives and the rare empty transaction (e.g. one holding only
//! `pg_logical_emit_message`) still carry positions past them. The reader acknowledges such a
//! position itself, and only once every transaction it forwarded is acknowledged, so the slot
//! does not retain WAL that holds nothing for us while the pipeline is idle.
//!
//! A transaction larger than [`WalReaderConfig::max_batch_changes`] is sent in several pieces so
//! memory stays bounded. Every piece but the last carries the transaction's commit LSN (from
//! Begin): acknowledging it is safe, since the server re-sends a transaction whose commit is not
//! before the confirmed position, and it is above every position forwarded before, so no piece
//! shares a position with an earlier transaction. (In the rare case that the previous commit
//! record ends exactly where this one starts, the first piece waits until that previous
//! transaction is acknowledged.) The last piece, possibly without changes, carries the commit end.
//!
//! # Value formats
//!
//! Values arrive in PostgreSQL's text format, produced by the walsender session. The reader pins
//! that session's `DateStyle`, `TimeZone`, `IntervalStyle`, `extra_float_digits` and
//! `bytea_output` through the startup `options` ([`SESSION_OPTIONS`]), so a database-level
//! setting such as `ALTER DATABASE ... SET timezone` cannot change how timestamps look.

use crate::config::Secret;
use crate::error::{Error, ErrorKind, Result};
use crate::source::change::{Change, ChangeOp, Transaction};
use crate::source::pgoutput::{decode, RelationCache};
use crate::source::slot::format_lsn;
use actix::prelude::*;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Startup `options` of the replication session: pins every setting that changes the text format
/// of values (ISO dates, UTC timestamps, PostgreSQL intervals, shortest exact floats, hex bytea),
/// matching what the initial load reads.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=1 -c bytea_output=hex";

/// What the WAL reader connects to and how it streams.
#[derive(Debug, Clone)]
pub struct WalReaderConfig {
    /// Host name or IP, or a Unix socket directory (starting with `/`, never with TLS).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role with REPLICATION (or superuser).
    pub user: String,
    /// Password (SCRAM-SHA-256 or MD5; unused with trust authentication).
    pub password: Secret,
    /// Database holding the slot.
    pub database: String,
    /// Logical replication slot (plugin `pgoutput`), created by `slot::bootstrap`.
    pub slot: String,
    /// Publication listing the synced tables.
    pub publication: String,
    /// Where to start: 0 resumes from the slot's `confirmed_flush_lsn`. A non-zero position is
    /// also reported as acknowledged at once, so pass only a position that is durable.
    pub start_lsn: u64,
    /// How often acknowledged positions are reported to the server; the slot's
    /// `confirmed_flush_lsn` trails an acknowledgement by at most about this long.
    pub status_interval: Duration,
    /// Largest number of changes buffered from one transaction before a piece of it is sent.
    pub max_batch_changes: usize,
    /// Replication events buffered between the crate's socket reader and this stage.
    pub event_buffer: usize,
    /// `application_name` of the session, shown in `pg_stat_replication`.
    pub application_name: String,
    /// Longest wait for the connection, authentication and START_REPLICATION.
    pub connect_timeout: Duration,
    /// TLS, with libpq's sslmode meanings (see `source::replication_tls`).
    pub tls: crate::config::tls::PgTls,
    /// Busy time (decoding a transaction) and time blocked on the coalescer's input.
    pub times: crate::telemetry::StageTimes,
}

impl WalReaderConfig {
    /// A configuration with defaults: start at the slot's position, report acknowledgements every
    /// second, pieces of at most 10,000 changes.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: Secret,
        database: impl Into<String>,
        slot: impl Into<String>,
        publication: impl Into<String>,
    ) -> Self {
        WalReaderConfig {
            host: host.into(),
            port,
            user: user.into(),
            password,
            database: database.into(),
            slot: slot.into(),
            publication: publication.into(),
            start_lsn: 0,
            status_interval: Duration::from_secs(1),
            max_batch_changes: 10_000,
            event_buffer: 4096,
            application_name: "pgsync-rs".into(),
            connect_timeout: Duration::from_secs(30),
            tls: crate::config::tls::PgTls::disabled(),
            times: Default::default(),
        }
    }

    /// The replication connection matching an ordinary connection's settings (first host and
    /// port, user, password, database, application name, connect timeout), e.g. from
    /// `Config::postgres_for(database)`; TLS comes from [`WalReaderConfig::tls`].
    pub fn from_postgres_config(
        pg: &tokio_postgres::Config,
        slot: impl Into<String>,
        publication: impl Into<String>,
    ) -> Result<Self> {
        use tokio_postgres::config::Host;
        let database = pg
            .get_dbname()
            .ok_or_else(|| Error::config("the replication connection needs a database name"))?;
        let host = match pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(dir)) => dir.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let mut cfg = WalReaderConfig::new(
            host,
            pg.get_ports().first().copied().unwrap_or(5432),
            pg.get_user().unwrap_or("postgres"),
            Secret::new(password),
            database,
            slot,
            publication,
        );
        if let Some(name) = pg.get_application_name() {
            cfg.application_name = name.to_owned();
        }
        if let Some(t) = pg.get_connect_timeout() {
            cfg.connect_timeout = *t;
        }
        Ok(cfg)
    }

    fn replication_config(&self, tls: pgwire_replication::TlsConfig) -> ReplicationConfig {
        ReplicationConfig::new(
            self.host.as_str(),
            self.user.as_str(),
            self.password.expose(),
            self.database.as_str(),
            self.slot.as_str(),
            self.publication.as_str(),
        )
        .with_port(self.port)
        .with_start_lsn(Lsn::from_u64(self.start_lsn))
        .with_status_interval(self.status_interval)
        .with_buffer_size(self.event_buffer.max(1))
        .with_options(SESSION_OPTIONS)
        .with_application_name(self.application_name.as_str())
        .with_tls(tls)
    }
}

/// Converts a pgwire-replication error into ours, classified as [`crate::error::sqlstate_kind`]
/// does for ordinary connections: a lost connection or a server restarting is retried, a refusal
/// names what to change.
fn wire_error(e: PgWireError, cfg: &WalReaderConfig) -> Error {
    let text = e.to_string();
    let target = format!("{}:{}/{}", cfg.host, cfg.port, cfg.database);
    match e {
        PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Protocol(_) => Error::new(
            ErrorKind::SourceUnreachable,
            format!("replication connection to {target} lost: {text}"),
        ),
        PgWireError::Tls(_) => Error::new(
            ErrorKind::SourceUnreachable,
            format!("replication connection to {target}: {text}"),
        ),
        PgWireError::Auth(_) => Error::new(
            ErrorKind::Auth,
            format!("replication connection to {target}: {text}"),
        )
        .with_hint("check [postgres] user/password (PG_USER, PG_PASSWORD) and pg_hba.conf's replication entries"),
        PgWireError::Server(msg) => server_error(&msg, cfg),
        _ => Error::replication(format!("replication stream of slot {}: {text}", cfg.slot)),
    }
}

/// The SQLSTATE a pgwire-replication server error carries (`... (SQLSTATE 57P01)`).
fn sqlstate_of(msg: &str) -> Option<&str> {
    let (_, rest) = msg.rsplit_once("(SQLSTATE ")?;
    rest.strip_suffix(')')
}

fn server_error(msg: &str, cfg: &WalReaderConfig) -> Error {
    let slot = &cfg.slot;
    let code = sqlstate_of(msg).unwrap_or("");
    if msg.contains("does not exist") && code == "42704"
        || msg.contains("has been invalidated")
        || msg.contains("can no longer get changes")
    {
        return Error::new(
            ErrorKind::SlotLost,
            format!("replication slot {slot} was dropped or invalidated by someone else: {msg}"),
        );
    }
    if msg.contains("is active") {
        return Error::new(ErrorKind::SourceUnreachable, format!("replication slot {slot}: {msg}"))
            .with_hint("another connection streams from this slot (see pg_replication_slots.active_pid); it is retried until that connection ends");
    }
    match crate::error::sqlstate_kind(code) {
        Some(ErrorKind::SourceUnreachable) => Error::new(
            ErrorKind::SourceUnreachable,
            format!(
                "replication connection to {}:{}/{} lost: {msg}",
                cfg.host, cfg.port, cfg.database
            ),
        ),
        Some(ErrorKind::Auth) => {
            Error::new(ErrorKind::Auth, format!("replication connection: {msg}"))
        }
        Some(ErrorKind::Permission) => Error::new(
            ErrorKind::Permission,
            format!("replication slot {slot}: {msg}"),
        )
        .with_hint("the role needs REPLICATION: ALTER ROLE <user> WITH REPLICATION"),
        _ if msg.contains("must be superuser") || msg.contains("permission denied") => Error::new(
            ErrorKind::Permission,
            format!("replication slot {slot}: {msg}"),
        )
        .with_hint("the role needs REPLICATION: ALTER ROLE <user> WITH REPLICATION"),
        _ => Error::replication(format!("replication slot {slot}: {msg}")),
    }
}

/// Decides which position to report to the server as flushed.
///
/// `forwarded` is the highest position sent downstream, `acked` the highest the pipeline
/// reported durable. `idle` is the highest position known to hold nothing to forward (an empty
/// transaction's end, a keepalive's WAL end outside a transaction); it may be reported only when
/// everything forwarded is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AckTracker {
    forwarded: u64,
    acked: u64,
    idle: u64,
    reported: u64,
}

impl AckTracker {
    fn new(start: u64) -> Self {
        AckTracker {
            forwarded: start,
            acked: start,
            idle: start,
            reported: start,
        }
    }

    fn target(&self) -> u64 {
        if self.acked >= self.forwarded {
            self.acked.max(self.idle)
        } else {
            self.acked
        }
    }

    /// The position to report now, if it advanced.
    fn take_report(&mut self) -> Option<u64> {
        let t = self.target();
        (t > self.reported).then(|| {
            self.reported = t;
            t
        })
    }
}

/// Stop requests: the caller's shutdown flag and, for the actor, its own.
struct StopSignals(Vec<watch::Receiver<bool>>);

impl StopSignals {
    fn is_set(&self) -> bool {
        self.0.iter().any(|r| *r.borrow())
    }

    /// Resolves once a flag is true; a flag whose sender is gone can no longer stop us.
    /// Cancel-safe.
    async fn wait(&mut self) {
        loop {
            if self.is_set() {
                return;
            }
            if self.0.is_empty() {
                return std::future::pending().await;
            }
            let (res, idx) = {
                let (res, idx, _rest) =
                    futures::future::select_all(self.0.iter_mut().map(|r| Box::pin(r.changed())))
                        .await;
                (res, idx)
            };
            if res.is_err() && !*self.0[idx].borrow() {
                self.0.remove(idx);
            }
        }
    }
}

/// One streaming session's state.
struct Session<'a> {
    cfg: &'a WalReaderConfig,
    client: ReplicationClient,
    out: mpsc::Sender<Transaction>,
    acks: Option<watch::Receiver<u64>>,
    stop: StopSignals,
    tracker: AckTracker,
    /// Time spent decoding since the last transaction was forwarded (its busy time).
    decoding: Duration,
}

/// Why the loop ended without an error.
enum End {
    Stopped,
    ConsumerGone,
}

impl Session<'_> {
    fn read_acks(&mut self) {
        if let Some(acks) = &mut self.acks {
            let acked = *acks.borrow_and_update();
            self.tracker.acked = self.tracker.acked.max(acked);
        }
        self.report();
    }

    fn report(&mut self) {
        if let Some(lsn) = self.tracker.take_report() {
            tracing::debug!(slot = %self.cfg.slot, lsn = %format_lsn(lsn), "acknowledging");
            self.client.update_applied_lsn(Lsn::from_u64(lsn));
        }
    }

    /// Waits for a change of the acknowledged position; never resolves once its sender is gone.
    async fn ack_changed(acks: &mut Option<watch::Receiver<u64>>) {
        let closed = match acks {
            Some(rx) => rx.changed().await.is_err(),
            None => std::future::pending().await,
        };
        if closed {
            *acks = None;
        }
    }

    /// Waits until the pipeline acknowledged `position`. `Err(end)` when stopped first.
    async fn wait_acked(&mut self, position: u64) -> std::result::Result<(), End> {
        while self.tracker.acked < position {
            if self.acks.is_none() {
                // Nobody acknowledges any more, so no position can be confused either.
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = self.stop.wait() => return Err(End::Stopped),
                _ = Self::ack_changed(&mut self.acks) => self.read_acks(),
            }
        }
        Ok(())
    }

    /// Sends `txn` downstream, waiting for capacity while still taking acknowledgements.
    /// `Err(end)` when stopped or the consumer is gone.
    async fn forward(&mut self, txn: Transaction) -> std::result::Result<(), End> {
        self.cfg.times.busy(std::mem::take(&mut self.decoding));
        let (waited, full) = (std::time::Instant::now(), self.out.capacity() == 0);
        let permit = loop {
            // An owned permit does not borrow `self`, so acknowledgements can be read meanwhile.
            let reserve = self.out.clone().reserve_owned();
            tokio::select! {
                biased;
                _ = self.stop.wait() => return Err(End::Stopped),
                _ = Self::ack_changed(&mut self.acks) => self.read_acks(),
                permit = reserve => break permit.map_err(|_| End::ConsumerGone)?,
            }
        };
        if full {
            self.cfg.times.blocked(waited.elapsed());
        }
        permit.send(txn);
        Ok(())
    }

    async fn run(&mut self) -> Result<End> {
        let mut cache = RelationCache::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut in_txn = false;
        // Commit LSN of the current transaction (from Begin): the position of its pieces.
        let mut final_lsn = 0;
        // Its transaction id (from Begin).
        let mut xid = 0;
        // Pieces of the current transaction already sent (see the module docs).
        let mut split = false;
        self.read_acks();
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(End::Stopped),
                _ = Self::ack_changed(&mut self.acks) => {
                    self.read_acks();
                    continue;
                }
                ev = self.client.recv() => ev,
            };
            let event = match event {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::SourceUnreachable,
                        format!("replication stream of slot {} ended", self.cfg.slot),
                    ))
                }
                Err(e) => return Err(wire_error(e, self.cfg)),
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn: commit,
                    xid: begun,
                    ..
                } => {
                    in_txn = true;
                    xid = begun;
                    final_lsn = commit.as_u64();
                    split = false;
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let started = std::time::Instant::now();
                    cache.apply(decode(&data)?, &mut changes)?;
                    self.decoding += started.elapsed();
                    if changes.len() >= self.cfg.max_batch_changes.max(1) {
                        if !split && final_lsn <= self.tracker.forwarded {
                            // The previous commit ends exactly where this one starts: a piece
                            // would share its position, so let that transaction be acknowledged
                            // first (see the module docs).
                            if let Err(end) = self.wait_acked(self.tracker.forwarded).await {
                                return Ok(end);
                            }
                        }
                        let piece = Transaction {
                            position: final_lsn,
                            changes: std::mem::take(&mut changes),
                            xid: Some(xid),
                        };
                        split = true;
                        if let Err(end) = self.forward(piece).await {
                            return Ok(end);
                        }
                        self.tracker.forwarded = self.tracker.forwarded.max(final_lsn);
                    }
                }
                ReplicationEvent::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    in_txn = false;
                    let end_lsn = end_lsn.as_u64();
                    if changes.is_empty() && !split {
                        self.tracker.idle = self.tracker.idle.max(end_lsn);
                    } else {
                        crate::telemetry::lag::committed(
                            &self.cfg.slot,
                            end_lsn,
                            crate::telemetry::lag::pg_time(commit_time_micros),
                        );
                        let txn = Transaction {
                            position: end_lsn,
                            changes: std::mem::take(&mut changes),
                            xid: Some(xid),
                        };
                        if let Err(end) = self.forward(txn).await {
                            return Ok(end);
                        }
                        self.tracker.forwarded = self.tracker.forwarded.max(end_lsn);
                    }
                    self.report();
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if !in_txn {
                        self.tracker.idle = self.tracker.idle.max(wal_end.as_u64());
                        self.report();
                    }
                }
                // A refresh of a materialized view recorded by this index's event trigger (see
                // `refreshes`); other logical messages are not ours.
                ReplicationEvent::Message {
                    transactional: true,
                    prefix,
                    content,
                    ..
                } if prefix == super::refreshes::message_prefix(&self.cfg.slot) => {
                    if let Some(view) = super::refreshes::parse_message(&content) {
                        changes.push(Change {
                            table: std::sync::Arc::new(view),
                            op: ChangeOp::Refresh,
                            old: None,
                            new: None,
                        });
                    }
                }
                // StoppedAt needs a stop LSN, never set.
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
    }

    /// Ends the session: gives the crate up to one status interval to report the last
    /// acknowledged position (it reports on a timer and not when stopping), then stops it.
    async fn close(mut self) {
        // A stop request wins over a simultaneous acknowledgement in the loop: take it now.
        self.read_acks();
        let metrics = self.client.metrics();
        let deadline =
            tokio::time::Instant::now() + self.cfg.status_interval + Duration::from_millis(500);
        while metrics.last_applied_lsn().as_u64() < self.tracker.reported
            && tokio::time::Instant::now() < deadline
            && self.client.is_running()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.client.shutdown())
            .await
            .is_err()
        {
            self.client.abort();
        }
    }
}

/// Streams `cfg.slot` until `shutdown` becomes true or the receiver of `out` is dropped (both
/// `Ok`), or the stream fails (`Err`: [`ErrorKind::SourceUnreachable`] for connection problems,
/// worth a reconnect; [`ErrorKind::Replication`] otherwise).
///
/// Sends one [`Transaction`] per committed transaction with changes, awaiting capacity in `out`.
/// `acks` carries the highest position the pipeline made durable; it is reported to the server so
/// the slot's `confirmed_flush_lsn` follows. Each call is one replication session: reconnecting
/// after an error means calling it again (with `start_lsn` 0, to resume from the slot).
pub async fn run(
    cfg: WalReaderConfig,
    out: mpsc::Sender<Transaction>,
    acks: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    run_until(cfg, out, acks, StopSignals(vec![shutdown]), None).await
}

/// How long [`run_until`] waits for a slot another connection still holds.
const SLOT_BUSY_WAIT: Duration = Duration::from_secs(30);

/// Connects and starts streaming, trying TLS and plain in libpq's order for the sslmode; `None`
/// when asked to stop meanwhile.
async fn start_stream(
    cfg: &WalReaderConfig,
    stop: &mut StopSignals,
) -> Result<Option<ReplicationClient>> {
    use super::replication_tls::{server_refuses_tls, tls_config, worth_next_attempt};
    use crate::config::tls::Attempt;
    let attempts = cfg.tls.attempts();
    let mut failures = vec![];
    for (i, &attempt) in attempts.iter().enumerate() {
        let fallback = i + 1 < attempts.len() && !cfg.host.starts_with('/');
        if attempt == Attempt::Tls && fallback && server_refuses_tls(&cfg.host, cfg.port).await {
            failures.push((attempt, "server does not support TLS".to_string()));
            continue;
        }
        let tls = tls_config(&cfg.tls, attempt, &cfg.host, cfg.port).await?;
        match start_attempt(cfg, tls, stop).await {
            Err(e) if i + 1 < attempts.len() && worth_next_attempt(&e) => {
                failures.push((attempt, e.to_string()))
            }
            Err(e) => {
                let e = wire_error(e, cfg);
                if failures.is_empty() {
                    return Err(e);
                }
                failures.push((attempt, e.message.clone()));
                let all = crate::config::tls::describe_failures(&failures);
                return Err(Error::new(e.kind, all));
            }
            Ok(client) => return Ok(client),
        }
    }
    Err(Error::internal(
        "no replication connection attempt was made",
    ))
}

/// One connection attempt with the given TLS settings.
async fn start_attempt(
    cfg: &WalReaderConfig,
    tls: pgwire_replication::TlsConfig,
    stop: &mut StopSignals,
) -> std::result::Result<Option<ReplicationClient>, PgWireError> {
    let mut client = ReplicationClient::connect(cfg.replication_config(tls)).await?;
    tokio::select! {
        biased;
        _ = stop.wait() => {
            client.abort();
            return Ok(None);
        }
        started = tokio::time::timeout(cfg.connect_timeout, client.wait_started()) => match started {
            Ok(started) => started?,
            Err(_) => {
                client.abort();
                return Err(PgWireError::Io(std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("did not start within {:?}", cfg.connect_timeout),
                ))));
            }
        },
    }
    Ok(Some(client))
}

async fn run_until(
    cfg: WalReaderConfig,
    out: mpsc::Sender<Transaction>,
    acks: watch::Receiver<u64>,
    mut stop: StopSignals,
    started: Option<watch::Sender<bool>>,
) -> Result<()> {
    // A slot still held by a previous daemon's walsender (it was just killed, or a failed-over
    // leader's connection is closing) is released within moments: wait for it, within reason.
    let deadline = tokio::time::Instant::now() + SLOT_BUSY_WAIT;
    let client = loop {
        match start_stream(&cfg, &mut stop).await {
            Ok(Some(client)) => break client,
            Ok(None) => return Ok(()),
            Err(e) if e.message.contains("is active") && tokio::time::Instant::now() < deadline => {
                tracing::info!(slot = %cfg.slot, "slot still held by another connection; retrying");
                tokio::select! {
                    _ = stop.wait() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(
        slot = %cfg.slot,
        publication = %cfg.publication,
        start = %format_lsn(cfg.start_lsn),
        "streaming changes from the WAL"
    );
    if let Some(s) = &started {
        s.send_replace(true);
    }
    let mut session = Session {
        cfg: &cfg,
        client,
        out,
        acks: Some(acks),
        stop,
        tracker: AckTracker::new(cfg.start_lsn),
        decoding: Duration::ZERO,
    };
    let result = session.run().await;
    match &result {
        Ok(End::Stopped) => tracing::info!(slot = %cfg.slot, "WAL reader stopped"),
        Ok(End::ConsumerGone) => {
            tracing::info!(slot = %cfg.slot, "WAL reader stopped: its consumer is gone")
        }
        Err(e) => tracing::debug!(slot = %cfg.slot, error = %e, "WAL reader failed"),
    }
    session.close().await;
    result.map(|_| ())
}

/// The WAL reader as an actix actor. Start it on its own [`Arbiter`] (the actix System thread is
/// single-threaded): [`WalReader::start_on`]. It streams from `started` until the shutdown flag is
/// set, its consumer goes away, it receives [`StopWalReader`] or the stream fails, then stops
/// itself and reports the outcome through the optional [`on_exit`](WalReader::on_exit) channel.
pub struct WalReader {
    cfg: WalReaderConfig,
    io: Option<(
        mpsc::Sender<Transaction>,
        watch::Receiver<u64>,
        watch::Receiver<bool>,
    )>,
    stop: watch::Sender<bool>,
    running: bool,
    finished: bool,
    exit: Option<oneshot::Sender<Result<()>>>,
    started: Option<watch::Sender<bool>>,
}

impl WalReader {
    /// A reader with the same inputs as [`run`].
    pub fn new(
        cfg: WalReaderConfig,
        out: mpsc::Sender<Transaction>,
        acks: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        WalReader {
            cfg,
            io: Some((out, acks, shutdown)),
            stop: watch::Sender::new(false),
            running: false,
            finished: false,
            exit: None,
            started: None,
        }
    }

    /// Turns `tx` true once the stream started (connected, slot acquired): the supervisor's sign
    /// that an outage is over.
    pub fn on_started(mut self, tx: watch::Sender<bool>) -> Self {
        self.started = Some(tx);
        self
    }

    /// Sends the stream's outcome to `tx` when the actor stops, so a supervisor can tell a clean
    /// stop from a failure (and retry connection errors).
    pub fn on_exit(mut self, tx: oneshot::Sender<Result<()>>) -> Self {
        self.exit = Some(tx);
        self
    }

    /// Starts the actor on `arbiter`.
    pub fn start_on(self, arbiter: &ArbiterHandle) -> Addr<WalReader> {
        WalReader::start_in_arbiter(arbiter, move |_| self)
    }

    fn finish(&mut self, result: Result<()>) {
        self.finished = true;
        if let Some(tx) = self.exit.take() {
            let _ = tx.send(result);
        }
    }
}

impl Actor for WalReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some((out, acks, shutdown)) = self.io.take() else {
            ctx.stop();
            return;
        };
        self.running = true;
        let stop = StopSignals(vec![shutdown, self.stop.subscribe()]);
        let span = tracing::info_span!("stage", stage = "wal_reader", slot = %self.cfg.slot);
        let fut = tracing::Instrument::instrument(
            run_until(self.cfg.clone(), out, acks, stop, self.started.take()),
            span,
        );
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.running = false;
            act.finish(result);
            ctx.stop();
        }));
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if self.running {
            // Let the stream end cleanly (report the last acknowledgement, release the slot);
            // its completion stops the actor again.
            self.stop.send_replace(true);
            Running::Continue
        } else {
            Running::Stop
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // The stream did not end by itself: the arbiter or System shut down under it.
        if !self.finished {
            self.finish(Err(Error::new(
                ErrorKind::Shutdown,
                format!("WAL reader of slot {} stopped", self.cfg.slot),
            )));
        }
    }
}

/// Asks a [`WalReader`] to end its stream and stop.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopWalReader;

impl Handler<StopWalReader> for WalReader {
    type Result = ();

    fn handle(&mut self, _msg: StopWalReader, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Starts a [`WalReader`] for one index on its own [`Arbiter`] (a tokio task when no actix System
/// runs on this thread), as the daemon wires it: the
/// connection settings of `cfg.postgres_for(database)`, streaming from the slot's confirmed
/// position (`acks` should start at the checkpoint, which is then reported at once). A failure is
/// sent to `errors`. The returned task ends once the reader stopped (after `stop` turned true, or
/// the receiver of `out` was dropped, which closes `out` in turn) and its arbiter is shut down.
#[allow(clippy::too_many_arguments)] // one argument per pipeline wire, as the daemon holds them
pub fn spawn_reader(
    cfg: &crate::config::Config,
    database: &str,
    slot: &str,
    publication: &str,
    times: crate::telemetry::StageTimes,
    out: mpsc::Sender<Transaction>,
    acks: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    errors: mpsc::UnboundedSender<Error>,
    started: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    let reader_cfg =
        WalReaderConfig::from_postgres_config(&cfg.postgres_for(database), slot, publication)
            .and_then(|mut r| {
                r.tls = cfg.postgres_tls()?;
                r.times = times;
                Ok(r)
            });
    let (exit_tx, exit_rx) = oneshot::channel();
    let arbiter = match reader_cfg {
        // Arbiters need a running actix System; without one, a plain tokio task does the work.
        Ok(reader_cfg) if actix::System::try_current().is_some() => {
            let arbiter = Arbiter::new();
            WalReader::new(reader_cfg, out, acks, stop)
                .on_exit(exit_tx)
                .on_started(started)
                .start_on(&arbiter.handle());
            Some(arbiter)
        }
        Ok(reader_cfg) => {
            tokio::spawn(async move {
                let stop = StopSignals(vec![stop]);
                let r = run_until(reader_cfg, out, acks, stop, Some(started)).await;
                let _ = exit_tx.send(r);
            });
            None
        }
        Err(e) => {
            let _ = exit_tx.send(Err(e));
            None
        }
    };
    tokio::spawn(async move {
        let outcome = exit_rx.await.unwrap_or_else(|_| {
            Err(Error::internal(
                "the WAL reader ended without reporting why",
            ))
        });
        if let Err(e) = outcome {
            if e.kind != ErrorKind::Shutdown {
                let _ = errors.send(e);
            }
        }
        if let Some(arbiter) = arbiter {
            arbiter.stop();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_report_forwarded_positions_only_when_acknowledged() {
        let mut t = AckTracker::new(0);
        t.forwarded = 100;
        assert_eq!(t.take_report(), None);
        t.acked = 50;
        assert_eq!(t.take_report(), Some(50));
        t.acked = 100;
        assert_eq!(t.take_report(), Some(100));
        assert_eq!(t.take_report(), None);
    }

    #[test]
    fn idle_positions_wait_for_everything_forwarded() {
        let mut t = AckTracker::new(10);
        // T1 forwarded at 100, then an empty stretch up to 150, then T2 at 200.
        t.forwarded = 100;
        t.idle = 150;
        assert_eq!(t.take_report(), None, "T1 not durable yet");
        t.forwarded = 200;
        t.acked = 100;
        assert_eq!(t.take_report(), Some(100), "T2 pending: idle 150 must wait");
        t.acked = 200;
        assert_eq!(t.take_report(), Some(200));
        t.idle = 250;
        assert_eq!(
            t.take_report(),
            Some(250),
            "all durable: idle position reported"
        );
        // A stale acknowledgement never moves the report back.
        t.acked = 120;
        assert_eq!(t.take_report(), None);
    }

    #[test]
    fn start_position_counts_as_reported() {
        let mut t = AckTracker::new(500);
        assert_eq!(t.take_report(), None);
        t.idle = 400;
        assert_eq!(t.take_report(), None);
    }

    #[tokio::test]
    async fn stop_signals_ignore_dropped_senders() {
        let (a_tx, a_rx) = watch::channel(false);
        let (b_tx, b_rx) = watch::channel(false);
        let mut stop = StopSignals(vec![a_rx, b_rx]);
        drop(a_tx);
        let waiter = tokio::time::timeout(Duration::from_millis(50), stop.wait()).await;
        assert!(waiter.is_err(), "a dropped sender is not a stop request");
        b_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), stop.wait())
            .await
            .expect("stop seen");
    }

    #[test]
    fn config_from_an_ordinary_connection() {
        let pg: tokio_postgres::Config =
            "postgres://app:s3cret@db.example:6543/shop?application_name=sync&connect_timeout=7"
                .parse()
                .unwrap();
        let cfg = WalReaderConfig::from_postgres_config(&pg, "slot_a", "pub_a").unwrap();
        assert_eq!(
            (
                cfg.host.as_str(),
                cfg.port,
                cfg.user.as_str(),
                cfg.database.as_str()
            ),
            ("db.example", 6543, "app", "shop")
        );
        assert_eq!(cfg.password.expose(), "s3cret");
        assert_eq!(
            (cfg.slot.as_str(), cfg.publication.as_str()),
            ("slot_a", "pub_a")
        );
        assert_eq!(cfg.application_name, "sync");
        assert_eq!(cfg.connect_timeout, Duration::from_secs(7));
        assert_eq!(cfg.start_lsn, 0);
        let rc = cfg.replication_config(pgwire_replication::TlsConfig::disabled());
        assert_eq!(rc.options.as_deref(), Some(SESSION_OPTIONS));
        assert!(!rc.is_unix_socket());

        let unix: tokio_postgres::Config = "host=/run/postgresql port=5433 dbname=shop user=u"
            .parse()
            .unwrap();
        let cfg = WalReaderConfig::from_postgres_config(&unix, "s", "p").unwrap();
        assert_eq!((cfg.host.as_str(), cfg.port), ("/run/postgresql", 5433));
        assert!(cfg
            .replication_config(pgwire_replication::TlsConfig::disabled())
            .is_unix_socket());
        let no_db: tokio_postgres::Config = "host=h".parse().unwrap();
        assert!(WalReaderConfig::from_postgres_config(&no_db, "s", "p").is_err());
    }

    #[test]
    fn server_errors_are_classified_by_sqlstate() {
        let cfg = WalReaderConfig::new("h", 1, "u", Secret::new("p"), "db", "s", "p");
        let server = |m: &str| wire_error(PgWireError::Server(m.into()), &cfg);
        let e = server("replication slot \"s\" does not exist (SQLSTATE 42704)");
        assert_eq!(e.kind, ErrorKind::SlotLost);
        assert!(e.hint.unwrap().contains("teardown"));
        let e = server("terminating connection due to administrator command (SQLSTATE 57P01)");
        assert_eq!(e.kind, ErrorKind::SourceUnreachable);
        assert!(!e.to_string().contains("wal_level"), "{e}");
        let e = server("the database system is shutting down (SQLSTATE 57P03)");
        assert_eq!(e.kind, ErrorKind::SourceUnreachable);
        let e = server("can no longer get changes from replication slot \"s\" (SQLSTATE 55000)");
        assert_eq!(e.kind, ErrorKind::SlotLost);
        let e = server("password authentication failed for user \"u\" (SQLSTATE 28P01)");
        assert_eq!(e.kind, ErrorKind::Auth);
        let e = server("must be superuser or replication role to start walsender (SQLSTATE 42501)");
        assert_eq!(e.kind, ErrorKind::Permission);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = wire_error(PgWireError::Io(std::sync::Arc::new(io)), &cfg);
        assert_eq!(e.kind, ErrorKind::SourceUnreachable);
    }
}
