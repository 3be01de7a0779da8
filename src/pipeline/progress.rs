//! Counters shared by the stages, a progress bar on a terminal or periodic log lines otherwise,
//! and the final summary.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pipeline counters; cheap to update from any stage.
#[derive(Debug, Default)]
pub struct Stats {
    fetched: AtomicU64,
    written: AtomicU64,
    deleted: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    retries: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    /// Documents built by fetchers.
    pub fn add_fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Relaxed);
    }
    /// Delete actions queued because a root row is gone.
    pub fn add_deleted(&self, n: u64) {
        self.deleted.fetch_add(n, Relaxed);
    }
    /// Actions the search engine accepted, and the request's size.
    pub fn add_written(&self, n: u64, bytes: u64) {
        self.written.fetch_add(n, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.requests.fetch_add(1, Relaxed);
    }
    /// Actions the search engine rejected for good.
    pub fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Relaxed);
    }
    /// Rejected documents recorded in the dead-letter store.
    pub fn add_dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Relaxed);
    }
    /// Rejected documents recorded so far.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Relaxed)
    }
    /// Bulk requests retried.
    pub fn add_retries(&self, n: u64) {
        self.retries.fetch_add(n, Relaxed);
    }
    /// Documents fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Relaxed)
    }
    /// Actions written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }
    /// Actions rejected so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }
    /// Deletes queued so far.
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Relaxed)
    }
    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }
    /// Bytes sent so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
}

/// The outcome of a sync, printed at the end.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Index name.
    pub index: String,
    /// Actions written.
    pub written: u64,
    /// Actions rejected.
    pub failed: u64,
    /// Rejected documents recorded in the dead-letter store.
    pub dead_lettered: u64,
    /// Retries.
    pub retries: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Time senders waited on full channels (backpressure).
    pub blocked: Duration,
}

impl Summary {
    /// Documents per second.
    pub fn rate(&self) -> f64 {
        self.written as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "index {}: {} documents in {:.2}s ({:.0} docs/s), {} failed ({} dead-lettered), {} retries, {:.2}s blocked on backpressure",
            self.index,
            self.written,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.failed,
            self.dead_lettered,
            self.retries,
            self.blocked.as_secs_f64()
        )
    }
}

/// Reports progress until dropped: an indicatif bar on a terminal, log lines otherwise.
pub struct Progress {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `stats` for `index`, with `total` roots if known.
    pub fn start(
        index: &str,
        stats: Arc<Stats>,
        total: Option<u64>,
        interval: Duration,
    ) -> Progress {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let index = index.to_owned();
        let tty = std::io::stderr().is_terminal();
        let rows_done =
            metrics::gauge!(crate::telemetry::names::INITIAL_ROWS_DONE, "index" => index.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            if tty {
                let bar = match total {
                    Some(t) => indicatif::ProgressBar::new(t),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} docs ({per_sec})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_prefix(index);
                while !s2.load(Relaxed) {
                    rows_done.set(stats.fetched() as f64);
                    bar.set_position(stats.written());
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            } else {
                let mut last = Instant::now();
                while !s2.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    rows_done.set(stats.fetched() as f64);
                    if last.elapsed() >= interval {
                        last = Instant::now();
                        let w = stats.written();
                        tracing::info!(
                            index = %index,
                            written = w,
                            fetched = stats.fetched(),
                            failed = stats.failed(),
                            total = total.unwrap_or(0),
                            docs_per_sec = (w as f64 / start.elapsed().as_secs_f64()) as u64,
                            "progress"
                        );
                    }
                }
            }
        });
        Progress {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
