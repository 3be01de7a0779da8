//! Lag: how far the engine is behind PostgreSQL. In seconds it is measured with heartbeats the
//! daemon's monitor writes (a logical message in wal mode, a change-log row in notify mode):
//! the lag is the age of the oldest heartbeat the pipeline has not yet confirmed, so it is true
//! on an idle database too (a heartbeat goes through in milliseconds) and grows while anything
//! (the source, the pipeline, the engine) is stuck. End-to-end latency is measured per
//! transaction, from its commit time to the moment the checkpoint passed it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Transactions kept per run awaiting their acknowledgement; older ones are not measured.
const MAX_PENDING: usize = 100_000;

type Pending = BTreeMap<String, VecDeque<(u64, SystemTime)>>;

static COMMITS: Mutex<Pending> = Mutex::new(BTreeMap::new());

/// PostgreSQL's timestamp (microseconds since 2000-01-01) as a `SystemTime`.
pub fn pg_time(micros_since_2000: i64) -> SystemTime {
    let epoch_2000 = UNIX_EPOCH + Duration::from_secs(946_684_800);
    match u64::try_from(micros_since_2000) {
        Ok(m) => epoch_2000 + Duration::from_micros(m),
        Err(_) => epoch_2000,
    }
}

/// The source of run `key` handed on a transaction ending at `position`, committed at `at`.
pub fn committed(key: &str, position: u64, at: SystemTime) {
    if !super::enabled() {
        return;
    }
    let mut c = COMMITS.lock().unwrap_or_else(|p| p.into_inner());
    let q = c.entry(key.to_owned()).or_default();
    if q.len() >= MAX_PENDING {
        q.pop_front();
    }
    q.push_back((position, at));
}

/// The checkpoint of run `key` (of `index`) reached `frontier`: every transaction up to it is
/// acknowledged by the engine; records their end-to-end latency.
pub fn written(key: &str, index: &str, frontier: u64) {
    let done: Vec<SystemTime> = {
        let mut c = COMMITS.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = c.get_mut(key) else { return };
        let mut done = vec![];
        while q.front().is_some_and(|(p, _)| *p <= frontier) {
            done.extend(q.pop_front().map(|(_, t)| t));
        }
        done
    };
    if done.is_empty() {
        return;
    }
    let h = metrics::histogram!(super::names::END_TO_END, "index" => index.to_owned());
    let now = SystemTime::now();
    for t in done {
        h.record(now.duration_since(t).unwrap_or_default().as_secs_f64());
    }
}

/// A run of `key` ended: what it had not acknowledged is re-read by the next run.
pub fn forget(key: &str) {
    let mut c = COMMITS.lock().unwrap_or_else(|p| p.into_inner());
    c.remove(key);
}

/// Heartbeats written and not yet confirmed, oldest first.
#[derive(Debug, Default)]
pub struct Heartbeats {
    sent: VecDeque<(u64, Instant)>,
}

impl Heartbeats {
    /// A heartbeat at `position` (an LSN, or a transaction id in notify mode) was written now.
    pub fn sent(&mut self, position: u64) {
        if self.sent.len() >= 10_000 {
            self.sent.pop_front();
        }
        self.sent.push_back((position, Instant::now()));
    }

    /// Everything below `position` went through the pipeline.
    pub fn confirmed_below(&mut self, position: u64) {
        while self.sent.front().is_some_and(|(p, _)| *p < position) {
            self.sent.pop_front();
        }
    }

    /// Seconds since the oldest unconfirmed heartbeat was written; 0 when all are through.
    pub fn lag_secs(&self) -> f64 {
        self.sent
            .front()
            .map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
    }

    /// Whether every heartbeat written so far is confirmed.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_oldest_unconfirmed_heartbeat() {
        let mut h = Heartbeats::default();
        assert_eq!(h.lag_secs(), 0.0);
        h.sent(10);
        std::thread::sleep(Duration::from_millis(20));
        h.sent(20);
        assert!(h.lag_secs() >= 0.02);
        h.confirmed_below(11);
        assert!(h.lag_secs() < 0.02);
        h.confirmed_below(21);
        assert_eq!(h.lag_secs(), 0.0);
        assert!(h.is_empty());
    }

    #[test]
    fn postgres_timestamps_count_from_2000() {
        let t = pg_time(1_000_000);
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 946_684_801);
    }
}
