//! The OS threads that run plugins. A batch of documents is one job: a thread takes it from a
//! crossbeam channel, holds the interpreter lock for the whole batch, and answers on a oneshot
//! channel the async caller awaits, so no runtime thread ever blocks on Python.

use super::{python, PluginOutcome};
use pyo3::{Py, PyAny};
use std::sync::Arc;

struct Job {
    index: String,
    docs: Vec<(String, Vec<u8>)>,
    reply: tokio::sync::oneshot::Sender<Vec<PluginOutcome>>,
}

/// Threads sharing one chain object. Dropping the pool closes the channel: each thread ends after
/// its current batch.
pub(super) struct Pool {
    // Unbounded on purpose: every caller awaits its reply before sending again, so the queue
    // never holds more than one job per fetcher; a bounded send would block the runtime.
    jobs: crossbeam_channel::Sender<Job>,
}

impl Pool {
    /// `threads` threads applying `chain` (a `Chain` object of the plugin host).
    pub(super) fn start(chain: Py<PyAny>, threads: usize) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let chain = Arc::new(chain);
        for n in 0..threads {
            let (rx, chain) = (rx.clone(), chain.clone());
            std::thread::Builder::new()
                .name(format!("pgsync-plugins-{n}"))
                .spawn(move || run(&chain, &rx))
                .expect("spawn a plugin thread");
        }
        Pool { jobs: tx }
    }

    /// Runs the chain over `docs` on a pool thread.
    pub(super) async fn apply(
        &self,
        index: &str,
        docs: Vec<(String, Vec<u8>)>,
    ) -> Vec<PluginOutcome> {
        let n = docs.len();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            index: index.to_owned(),
            docs,
            reply,
        };
        if self.jobs.send(job).is_err() {
            return failed(n, "no plugin thread is running");
        }
        answer
            .await
            .unwrap_or_else(|_| failed(n, "the plugin thread stopped before answering"))
    }
}

fn run(chain: &Py<PyAny>, jobs: &crossbeam_channel::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let n = job.docs.len();
        // A panic in our conversion code must not take the thread (and later batches) down.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            python::apply(chain, &job.index, &job.docs)
        }))
        .unwrap_or_else(|_| {
            failed(
                n,
                "the plugin host panicked on this batch (a bug in pgsync)",
            )
        });
        let _ = job.reply.send(out);
    }
}

fn failed(n: usize, why: &str) -> Vec<PluginOutcome> {
    vec![
        PluginOutcome::Failed {
            traceback: why.to_owned()
        };
        n
    ]
}
