//! Documents built on a read replica: before a fetch reads, the replica must have replayed
//! the changes the fetch serves, so a document is never older than its change. The target is
//! the change's commit LSN when the stream gives one (wal mode), else the primary's current WAL
//! position read just before (notify mode, initial sync, pruning).

use super::stage::Connector;
use crate::{Error, Result};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// After this long without the replica catching up, each wait logs a warning (and goes on
/// waiting: serving an older document would lose the change).
const WARN_AFTER: Duration = Duration::from_secs(10);

/// The longest pause between two polls of the replica's replay position.
const MAX_POLL: Duration = Duration::from_millis(100);

/// One fetcher's view of the primary, for waiting on the replica.
pub struct ReplicaGate {
    primary: Connector,
    client: Option<Client>,
    /// Whether request positions are commit LSNs (wal mode).
    positions_are_lsns: bool,
}

impl ReplicaGate {
    /// A gate reading the primary through `primary` (connected at the first need).
    pub fn new(primary: Connector, positions_are_lsns: bool) -> ReplicaGate {
        ReplicaGate {
            primary,
            client: None,
            positions_are_lsns,
        }
    }

    /// Waits until `replica` has replayed what a request answering to `position` (a change's
    /// stream position, `None` for a range or a prune) must see.
    pub async fn wait(&mut self, replica: &Client, position: Option<u64>) -> Result<()> {
        let target = match position.filter(|_| self.positions_are_lsns) {
            Some(lsn) => lsn,
            None => self.primary_lsn().await?,
        };
        wait_for_replay(replica, target).await
    }

    /// The primary's current WAL position.
    async fn primary_lsn(&mut self) -> Result<u64> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some((self.primary)().await?);
        }
        let client = self.client.as_ref().expect("connected above");
        let row = client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::text", &[])
            .await
            .map_err(|e| Error::from(e).context("reading the primary's WAL position"))?;
        parse_lsn_number(&row.get::<_, String>(0))
    }
}

/// Polls `replica` (short, growing pauses) until `pg_last_wal_replay_lsn() >= lsn`; a server
/// that is not in recovery counts as caught up.
pub async fn wait_for_replay(replica: &Client, lsn: u64) -> Result<()> {
    let target = lsn_text(lsn);
    let started = Instant::now();
    let mut warned = false;
    let mut pause = Duration::from_millis(2);
    loop {
        let row = replica
            .query_one(
                "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, NOT pg_is_in_recovery()), \
                 pg_last_wal_replay_lsn()::text",
                &[&target],
            )
            .await
            .map_err(|e| Error::from(e).context("reading the read replica's replay position"))?;
        if row.get::<_, bool>(0) {
            if warned {
                tracing::info!(lsn = %target, waited_ms = started.elapsed().as_millis() as u64, "the read replica caught up");
            }
            return Ok(());
        }
        if !warned && started.elapsed() >= WARN_AFTER {
            warned = true;
            let at: Option<String> = row.get(1);
            tracing::warn!(
                lsn = %target,
                replayed = at.as_deref().unwrap_or("none"),
                "the read replica (postgres.read_replica_url) has not replayed {target} after {WARN_AFTER:?}; documents wait for it (check its replication lag)"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// `X/Y`, PostgreSQL's text form of an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn parse_lsn_number(s: &str) -> Result<u64> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| Error::internal(format!("WAL position {s:?} is not a number")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsns_print_as_postgresql_prints_them() {
        assert_eq!(super::lsn_text(0), "0/0");
        assert_eq!(super::lsn_text(0x1_0000_00A0), "1/A0");
        assert_eq!(super::lsn_text(0x16B3748), "0/16B3748");
    }
}
