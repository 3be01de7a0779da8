//! Outages of a service or of a supervised pipeline, logged once when they start (WARN, with the
//! cause) and once when they end (INFO, with the duration and how many failures it took), so an
//! operator sees each outage as two lines rather than one line per retry.

use crate::Error;
use tokio::time::{Duration, Instant};

/// One thing's outages: logged when one starts, counted while it lasts, logged with its duration
/// when it ends.
#[derive(Debug)]
pub struct Outage {
    what: String,
    current: Option<(Instant, String, u32)>,
}

impl Outage {
    /// Outages of `what` (e.g. `index books`).
    pub fn new(what: impl Into<String>) -> Self {
        Outage {
            what: what.into(),
            current: None,
        }
    }

    /// Records a failure; the first of an outage is logged at WARN with its cause, the others at
    /// DEBUG. Returns how long the outage has lasted.
    pub fn failed(&mut self, e: &Error, retry_in: Duration) -> Duration {
        match &mut self.current {
            None => {
                metrics::counter!(crate::telemetry::names::OUTAGES, "service" => e.kind.service())
                    .increment(1);
                tracing::warn!(
                    target: "pgsync_rs::outage",
                    service = e.kind.service(),
                    "{}: outage started: {}; retrying in {:?}, then with backoff until it recovers",
                    self.what, e.message, retry_in
                );
                self.current = Some((Instant::now(), e.message.clone(), 1));
                Duration::ZERO
            }
            Some((since, _, n)) => {
                *n += 1;
                tracing::debug!(target: "pgsync_rs::outage", attempts = *n, "{}: still failing: {}; retrying in {retry_in:?}", self.what, e.message);
                since.elapsed()
            }
        }
    }

    /// The thing works again: logs the end of the outage, if one was open.
    pub fn recovered(&mut self) {
        if let Some((since, cause, n)) = self.current.take() {
            tracing::info!(
                target: "pgsync_rs::outage",
                duration_secs = since.elapsed().as_secs_f64(),
                attempts = n,
                "{}: outage ended after {:.1?} and {n} failed attempt(s) (it began with: {cause})",
                self.what,
                since.elapsed()
            );
        }
    }

    /// Whether an outage is open.
    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }
}
