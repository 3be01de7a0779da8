//! Supervision: a pipeline run that fails with a transient error (a service down or restarting, a
//! stage that panicked) is torn down and started again from the last stored checkpoint, after a
//! capped exponential backoff with jitter, for as long as `resilience.give_up_after_secs` allows
//! (for ever by default). A permanent error ends the run with its cause. Each outage is logged
//! once when it starts and once when it ends, with its duration and the number of restarts.

use crate::config::ResilienceConfig;
use crate::outage::Outage;
use crate::Result;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Capped exponential backoff with full jitter in its upper half, so restarts of several
/// indices (or daemons) after one outage do not hit the service in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, never waiting longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// From `[resilience]`.
    pub fn from_config(r: &ResilienceConfig) -> Self {
        Backoff::new(
            Duration::from_millis(r.retry_initial_ms),
            Duration::from_millis(r.retry_max_ms),
        )
    }

    /// The next delay: `initial * 2^n` capped at `max`, then a random point in its upper half.
    pub fn next_delay(&mut self) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        half + half.mul_f64(random_fraction())
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random number in [0, 1) from std's per-call random hash keys.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` until it succeeds, fails permanently, or `stop` turns true. Each attempt gets a
/// `healthy` sender to flag once it is connected and working, which ends the outage in the log
/// and resets the backoff. An attempt that ends with `Ok(true)` asks to be run again at once (its
/// index changed shape: a migration swapped in a new index). Transient failures are retried
/// after the backoff for as long as `give_up_after` allows (`None`: for ever).
pub async fn supervise<F, Fut>(
    what: &str,
    mut backoff: Backoff,
    give_up_after: Option<Duration>,
    mut stop: watch::Receiver<bool>,
    mut attempt: F,
) -> Result<()>
where
    F: FnMut(watch::Sender<bool>) -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut outage = Outage::new(what);
    loop {
        let (healthy_tx, mut healthy_rx) = watch::channel(false);
        let run = attempt(healthy_tx);
        tokio::pin!(run);
        let mut watching = true;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                changed = healthy_rx.changed(), if watching => match changed {
                    Ok(()) if *healthy_rx.borrow() => {
                        outage.recovered();
                        backoff.reset();
                        watching = false;
                    }
                    Ok(()) => {}
                    Err(_) => watching = false,
                },
            }
        };
        let e = match result {
            Ok(true) => {
                outage.recovered();
                backoff.reset();
                continue;
            }
            Ok(false) => {
                outage.recovered();
                return Ok(());
            }
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) if *stop.borrow() => {
                tracing::warn!("{what}: stopped while failing: {e}");
                return Ok(());
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        record_restart(what, &e);
        let lasted = outage.failed(&e, delay);
        if let Some(limit) = give_up_after.filter(|l| lasted >= *l) {
            return Err(e.context(format!(
                "{what}: gave up after an outage of {lasted:.0?} (resilience.give_up_after_secs = {})",
                limit.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Counts a restart of `what` (`index <name>`) and marks the index as failing for `/readyz`.
fn record_restart(what: &str, e: &crate::Error) {
    let index = what.strip_prefix("index ").unwrap_or(what);
    metrics::counter!(crate::telemetry::names::RESTARTS,
        "index" => index.to_owned(), "cause" => format!("{:?}", e.kind))
    .increment(1);
    crate::telemetry::health::set_phase(
        index,
        crate::telemetry::health::Phase::Failing(e.message.clone()),
    );
}

/// Waits at start-up for a service that is not up yet (docker-compose starts everything
/// together): runs `probe` until it succeeds, logging once what is awaited and why, and retrying
/// transient failures with backoff. A permanent failure (wrong password, bad URL) is returned at
/// once; `None` from `stop` first.
pub async fn await_service<T, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    give_up_after: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
    mut probe: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let mut waiting = false;
    loop {
        match probe().await {
            Ok(v) => {
                if waiting {
                    tracing::info!("{what} is up after {:.1?}", started.elapsed());
                }
                return Ok(Some(v));
            }
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                if give_up_after.is_some_and(|l| started.elapsed() >= l) {
                    return Err(e.context(format!("gave up waiting for {what}")));
                }
                if !waiting {
                    waiting = true;
                    tracing::warn!("waiting for {what}: {}", e.message);
                } else {
                    tracing::debug!("still waiting for {what}: {}", e.message);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (i, full) in [100u64, 200, 400, 800, 1000, 1000].iter().enumerate() {
            let full = Duration::from_millis(*full);
            assert!(
                d[i] >= full / 2 && d[i] <= full,
                "{i}: {:?} vs {full:?}",
                d[i]
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_attempt_succeeds() {
        let calls = Arc::new(AtomicU32::new(0));
        let (_stop_tx, stop) = watch::channel(false);
        let c = calls.clone();
        let r = supervise(
            "index t",
            Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            None,
            stop,
            move |_healthy| {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err(Error::new(
                            ErrorKind::SourceUnreachable,
                            "connection refused",
                        ))
                    } else {
                        Ok(false)
                    }
                }
            },
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_ends_supervision_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let (_stop_tx, stop) = watch::channel(false);
        let c = calls.clone();
        let r = supervise(
            "index t",
            Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            None,
            stop,
            move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<bool, _>(Error::new(
                        ErrorKind::Auth,
                        "password authentication failed",
                    ))
                }
            },
        )
        .await;
        assert_eq!(r.unwrap_err().kind, ErrorKind::Auth);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_give_up_time_ends_with_its_cause() {
        let (_stop_tx, stop) = watch::channel(false);
        let r = supervise(
            "index t",
            Backoff::new(Duration::from_millis(100), Duration::from_millis(100)),
            Some(Duration::from_secs(1)),
            stop,
            |_| async { Err::<bool, _>(Error::new(ErrorKind::SinkTransient, "503 unavailable")) },
        )
        .await;
        let e = r.unwrap_err();
        assert!(e.message.contains("gave up after an outage"), "{e}");
        assert!(e.message.contains("503 unavailable"), "{e}");
    }
}
