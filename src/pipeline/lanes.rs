//! A set of bounded senders to the parallel instances of the next stage. Work with an identity
//! (a document `_id`) always goes to the same lane, so two versions of one document are never
//! written out of order; work without one is spread round-robin.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// Senders to each instance of a stage, with time spent blocked on backpressure counted.
pub struct Lanes<T> {
    senders: Vec<Sender<T>>,
    next: AtomicUsize,
    blocked_micros: Arc<std::sync::atomic::AtomicU64>,
    /// `pgsync_stage_blocked_seconds` of the stage, once [`Lanes::observed`].
    blocked_metric: Option<metrics::Histogram>,
}

impl<T> Clone for Lanes<T> {
    fn clone(&self) -> Self {
        Lanes {
            senders: self.senders.clone(),
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
            blocked_micros: self.blocked_micros.clone(),
            blocked_metric: self.blocked_metric.clone(),
        }
    }
}

impl<T: Send + 'static> Lanes<T> {
    /// Wraps the senders of a stage's instances.
    pub fn new(senders: Vec<Sender<T>>) -> Self {
        assert!(!senders.is_empty(), "a stage needs at least one lane");
        Lanes {
            senders,
            next: AtomicUsize::new(0),
            blocked_micros: Default::default(),
            blocked_metric: None,
        }
    }

    /// Reports the lanes as the input of `stage` of `index` in the metrics: queue depth and
    /// capacity, and the time senders wait on them.
    pub fn observed(mut self, index: &str, stage: &'static str) -> Self {
        if crate::telemetry::enabled() {
            for tx in &self.senders {
                crate::telemetry::watch_queue(index, stage, tx);
            }
            self.blocked_metric = Some(metrics::histogram!(
                crate::telemetry::names::BLOCKED,
                "index" => index.to_owned(), "stage" => stage));
        }
        self
    }

    /// Number of lanes.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Always false: a stage has at least one lane.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The lane a key belongs to.
    pub fn lane_of(&self, key: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.senders.len() as u64) as usize
    }

    /// Sends to a lane, waiting while it is full. Errors when the stage is gone.
    pub async fn send_to(&self, lane: usize, item: T) -> Result<(), ()> {
        let tx = &self.senders[lane];
        match tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(item)) => {
                let start = Instant::now();
                let r = tx.send(item).await.map_err(|_| ());
                let waited = start.elapsed();
                self.blocked_micros
                    .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                if let Some(h) = &self.blocked_metric {
                    h.record(waited.as_secs_f64());
                }
                r
            }
            Err(_) => Err(()),
        }
    }

    /// Whether every lane could take an item now without waiting.
    pub fn has_room(&self) -> bool {
        self.senders.iter().all(|s| s.capacity() > 0)
    }

    /// Sends to the next lane in turn.
    pub async fn send_any(&self, item: T) -> Result<(), ()> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.send_to(lane, item).await
    }

    /// Total time senders spent waiting on full lanes.
    pub fn blocked(&self) -> Duration {
        Duration::from_micros(self.blocked_micros.load(Ordering::Relaxed))
    }

    /// A handle on the blocked-time counter that does not keep the lanes open.
    pub fn blocked_counter(&self) -> BlockedCounter {
        BlockedCounter(self.blocked_micros.clone())
    }
}

/// A bounded tokio receiver as a `Stream`, to attach to an actor with `ctx.add_stream`.
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Reads a stage's time blocked on backpressure without holding its senders.
#[derive(Clone)]
pub struct BlockedCounter(Arc<std::sync::atomic::AtomicU64>);

impl BlockedCounter {
    /// Total time senders spent waiting on full lanes.
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}
