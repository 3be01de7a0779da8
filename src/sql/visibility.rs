//! Waiting until captured transactions are visible to new snapshots.
//!
//! Logical decoding sends a transaction once its commit record is flushed. With
//! `synchronous_commit = on` (PostgreSQL's default) the committing session flushes that record
//! *before* it marks the transaction finished for other sessions, and with synchronous
//! replication it then waits for the standby: a snapshot taken in between does not see the
//! transaction. A document read in that window would be written without the change, and no later
//! change would name it again: the index would stay stale for good. So the pipeline waits, once
//! per window, until every transaction of the window is visible, before reading anything for it.

use crate::{Error, Result};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The snapshot of a new statement, as `txid_current_snapshot()` prints it (also on
/// PostgreSQL before 13, where `pg_current_snapshot()` does not exist yet).
const SNAPSHOT_SQL: &str = "SELECT txid_current_snapshot()::text";

/// The first pause between two looks at the snapshot; it doubles up to 100 ms.
const FIRST_DELAY: Duration = Duration::from_millis(1);

/// How long a wait lasts before it is logged (then again at this interval).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A snapshot: transactions below `xmin` are finished, from `xmax` on not yet started, and
/// those in `xip` in progress. Full 64-bit transaction ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip,xip,...`.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => vec![],
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether the committed transaction `xid` (32 bits, as pgoutput sends it) is visible.
    /// `xid` is recent (it was just decoded), so it is compared with the snapshot's bounds in
    /// 32-bit modular arithmetic, as PostgreSQL compares transaction ids.
    pub fn sees(&self, xid: u32) -> bool {
        let precedes = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        if precedes(xid, self.xmin as u32) {
            return true;
        }
        precedes(xid, self.xmax as u32) && !self.xip.iter().any(|x| *x as u32 == xid)
    }
}

/// Waits until every transaction of `xids` is visible on `client`'s server, polling with a
/// growing delay. Never gives up: a transaction that is committed but not visible (a commit
/// waiting for a synchronous standby) is not visible to anyone, and becomes visible once the
/// server lets it; the wait is logged every [`REPORT_EVERY`] with what it waits for.
pub async fn await_visible(client: &Client, xids: &[u32]) -> Result<()> {
    if xids.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut reported = Duration::ZERO;
    let mut delay = FIRST_DELAY;
    loop {
        let text: String = client.query_one(SNAPSHOT_SQL, &[]).await?.get(0);
        let snapshot = Snapshot::parse(&text)
            .ok_or_else(|| Error::internal(format!("unexpected snapshot {text:?}")))?;
        let hidden: Vec<u32> = xids
            .iter()
            .copied()
            .filter(|x| !snapshot.sees(*x))
            .collect();
        if hidden.is_empty() {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= reported + REPORT_EVERY {
            reported = waited;
            tracing::warn!(xids = ?hidden, waited_s = waited.as_secs(), "waiting for committed transactions to become visible (a commit waiting for a synchronous standby?): their documents are read once they are");
        } else if delay == FIRST_DELAY {
            tracing::debug!(xids = ?hidden, "waiting for committed transactions to become visible");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_parses_with_and_without_transactions_in_progress() {
        assert_eq!(
            Snapshot::parse("10:20:12,15"),
            Some(Snapshot {
                xmin: 10,
                xmax: 20,
                xip: vec![12, 15]
            })
        );
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip, Vec::<u64>::new());
        assert_eq!(Snapshot::parse("garbage"), None);
    }

    #[test]
    fn a_transaction_in_progress_or_not_yet_started_is_not_seen() {
        let s = Snapshot::parse("100:110:103,107").unwrap();
        assert!(s.sees(99), "finished before xmin");
        assert!(s.sees(105), "finished between xmin and xmax");
        assert!(!s.sees(103), "in progress");
        assert!(!s.sees(110), "at xmax: not started for this snapshot");
        assert!(!s.sees(200), "after xmax");
    }

    #[test]
    fn ids_compare_across_the_32_bit_wraparound_of_the_epoch() {
        // Epoch 1: full ids 2^32 + 5 .. 2^32 + 9; pgoutput sends the low 32 bits.
        let base = 1u64 << 32;
        let s = Snapshot {
            xmin: base + 5,
            xmax: base + 9,
            xip: vec![base + 6],
        };
        assert!(s.sees(u32::MAX - 3), "late in the previous epoch: finished");
        assert!(s.sees(7));
        assert!(!s.sees(6));
        assert!(!s.sees(9));
    }
}
