//! Operations: Prometheus metrics (recorded with the `metrics` macros, rendered by
//! `metrics-exporter-prometheus`), the readiness state behind `/readyz`, lag measurement, and
//! the listener serving `/metrics`, `/healthz` and `/readyz`. Until [`install`] runs (metrics
//! are off unless `[metrics] listen` is set) every macro is a no-op, so the pipeline pays
//! nothing for metrics it does not export.

pub mod health;
pub mod lag;
pub mod names;
pub mod server;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, Mutex, OnceLock};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds (seconds) of every histogram: from a fast bulk request to a long stall.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder once per process and describes every metric; later calls
/// return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("non-empty buckets")
                .install_recorder()
                .expect("the first metrics recorder of the process");
            describe();
            metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Whether metrics are recorded (the recorder is installed).
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// The current scrape in Prometheus text format (queue gauges sampled first).
pub fn render() -> String {
    sample_queues();
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, kind, _) in names::ALL {
        let help = help(name);
        match *kind {
            "counter" => describe_counter!(*name, help),
            "histogram" => describe_histogram!(*name, Unit::Seconds, help),
            _ => describe_gauge!(*name, help),
        }
    }
}

/// One line of help per metric (the README table says more).
pub fn help(name: &str) -> &'static str {
    use names::*;
    match name {
        BUILD_INFO => "Build of pgsync-rs that runs (label version).",
        READY => "1 when every index is ready (what /readyz answers), else 0.",
        LEADER => "1 while this process is the index's leader, 0 while a standby.",
        CHANGES_RECEIVED => "Changes read from PostgreSQL, by table and operation.",
        DOCUMENTS_INDEXED => "Documents the engine acknowledged as indexed.",
        DOCUMENTS_DELETED => "Documents the engine acknowledged as deleted.",
        DOCUMENTS_REJECTED => "Documents rejected for good (by the engine or a plugin).",
        DOCUMENTS_DEAD_LETTERED => "Rejected documents recorded in the dead-letter store.",
        BULK_REQUESTS => "Bulk requests sent.",
        BULK_DURATION => "Duration of a bulk request, retries included.",
        BULK_BYTES => "Bytes of bulk bodies sent, before compression.",
        BULK_RETRIES => "Bulk requests or rejected items sent again.",
        ENGINE_RETRIES => "Requests to the search engine retried, by cause.",
        END_TO_END => "From the commit in PostgreSQL to the engine's acknowledgement.",
        LAG_BYTES => "WAL bytes between the server position and the slot's confirmed flush.",
        LAG_SECONDS => "Age of the oldest heartbeat not yet through the pipeline.",
        SLOT_RETAINED_WAL => "WAL bytes the replication slot keeps on the server.",
        SLOT_WAL_OVER => "1 while the retained WAL is above capture.slot_wal_warn_bytes.",
        SLOT_LOST => "1 once PostgreSQL invalidated the replication slot.",
        CHECKPOINT_AGE => "Seconds since the stored checkpoint last moved.",
        QUEUE_DEPTH => "Messages waiting in a stage's input.",
        QUEUE_CAPACITY => "Capacity of a stage's input.",
        BLOCKED => "Waits of senders on a stage's full input (backpressure).",
        BUSY => "Units of work of a stage (a fetch, a bulk request).",
        INITIAL_ROWS_DONE => "Root rows the running initial sync has read.",
        INITIAL_ROWS_EXPECTED => "Root rows the initial sync expects (PostgreSQL's estimate).",
        INITIAL_RANGES_DONE => "Key ranges of the initial sync finished.",
        INITIAL_RANGES_PLANNED => "Key ranges the initial sync was split into.",
        RESTARTS => "Pipeline restarts after a transient failure, by cause.",
        OUTAGES => "Outages begun, by service.",
        _ => "pgsync-rs metric.",
    }
}

/// A stage's `pgsync_stage_busy_seconds` and the `pgsync_stage_blocked_seconds` of the stage it
/// sends to, looked up once, so stages that are not actors on [`crate::pipeline`]'s lanes (the
/// sources, the coalescer, the query builder, the checkpointer) report them too. Does nothing
/// while metrics are off.
#[derive(Clone, Default)]
pub struct StageTimes {
    busy: Option<metrics::Histogram>,
    blocked: Option<metrics::Histogram>,
}

impl std::fmt::Debug for StageTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.busy.is_some() {
            "StageTimes"
        } else {
            "StageTimes(off)"
        })
    }
}

impl StageTimes {
    /// The times of `stage` of `index`, which sends to `next` (if it sends anywhere bounded).
    pub fn new(index: &str, stage: &'static str, next: Option<&'static str>) -> Self {
        if !enabled() {
            return StageTimes::default();
        }
        let of = |stage: &'static str, name: &'static str| metrics::histogram!(name, "index" => index.to_owned(), "stage" => stage);
        StageTimes {
            busy: Some(of(stage, names::BUSY)),
            blocked: next.map(|n| of(n, names::BLOCKED)),
        }
    }

    /// One unit of the stage's work took `d`.
    pub fn busy(&self, d: std::time::Duration) {
        if let Some(h) = &self.busy {
            h.record(d.as_secs_f64());
        }
    }

    /// The stage waited `d` on the next stage's full input.
    pub fn blocked(&self, d: std::time::Duration) {
        if let Some(h) = &self.blocked {
            h.record(d.as_secs_f64());
        }
    }
}

/// Reads a stage input's `(depth, capacity)`; `None` once the channel is gone.
type Sampler = Box<dyn Fn() -> Option<(usize, usize)> + Send>;

/// Stage inputs whose depth `/metrics` reports, registered by the pipeline as it spawns.
static QUEUES: Mutex<Vec<(Arc<str>, &'static str, Sampler)>> = Mutex::new(Vec::new());

/// Reports the depth and capacity of a stage's input as `pgsync_stage_queue_depth` and
/// `_capacity` (summed over the stage's instances) without keeping the channel open.
pub fn watch_queue<T: Send + 'static>(
    index: &str,
    stage: &'static str,
    tx: &tokio::sync::mpsc::Sender<T>,
) {
    if !enabled() {
        return;
    }
    let weak = tx.downgrade();
    let sample: Sampler = Box::new(move || {
        let tx = weak.upgrade()?;
        Some((tx.max_capacity() - tx.capacity(), tx.max_capacity()))
    });
    let mut q = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    q.push((index.into(), stage, sample));
}

/// Sets the queue gauges from the registered inputs, dropping those that are gone (a finished
/// run's); a stage with none left reads 0.
fn sample_queues() {
    use std::collections::BTreeMap;
    let mut sums: BTreeMap<(Arc<str>, &'static str), (usize, usize)> = BTreeMap::new();
    let mut q = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    q.retain(|(index, stage, sample)| {
        let e = sums.entry((index.clone(), stage)).or_default();
        match sample() {
            Some((d, c)) => {
                e.0 += d;
                e.1 += c;
                true
            }
            None => false,
        }
    });
    drop(q);
    for ((index, stage), (depth, cap)) in sums {
        let labels = [("index", index.to_string()), ("stage", stage.to_owned())];
        metrics::gauge!(names::QUEUE_DEPTH, &labels).set(depth as f64);
        metrics::gauge!(names::QUEUE_CAPACITY, &labels).set(cap as f64);
    }
}
