//! What every stage of a pipeline run shares: the threads its actors run on, so a failed run can
//! be torn down completely before the supervisor starts the next one, and a guard that reports a
//! stage ending without finishing its work (a panic, a cancelled future) so the failure is never
//! silent.

use crate::Error;
use actix::{Arbiter, ArbiterHandle};
use std::cell::RefCell;
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedSender};

/// Where stages report the error that ends a pipeline run.
pub type Errors = UnboundedSender<Error>;

/// Opens a PostgreSQL connection for a stage, on the stage's own thread.
pub type Connector = std::sync::Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, crate::Result<tokio_postgres::Client>>
        + Send
        + Sync,
>;

/// A connector for `database` from the configuration.
pub fn connector(cfg: &crate::config::Config, database: &str) -> Connector {
    let cfg = std::sync::Arc::new(cfg.clone());
    let db = database.to_owned();
    std::sync::Arc::new(move || {
        let cfg = cfg.clone();
        let db = db.clone();
        Box::pin(async move { crate::config::connect(&cfg, &db).await })
    })
}

/// The span a stage's work runs in, so every line it logs names the stage and the index (under
/// `span` in JSON logs, as a `stage{...}:` prefix in text).
pub fn stage_span(stage: &'static str, index: &str) -> tracing::Span {
    tracing::info_span!("stage", stage, index)
}

/// The arbiter threads of one pipeline run. Stopping them drops every actor still running, with
/// everything it holds: work in flight is then not written and never checkpointed.
#[derive(Default)]
pub struct Threads(Vec<Arbiter>);

impl Threads {
    /// A new thread for one stage instance.
    pub fn spawn(&mut self) -> ArbiterHandle {
        let arbiter = Arbiter::new();
        let handle = arbiter.handle();
        self.0.push(arbiter);
        handle
    }

    /// Stops every thread and waits until they are gone.
    pub async fn stop(self) {
        for a in &self.0 {
            a.stop();
        }
        let arbiters = self.0;
        let _ = tokio::task::spawn_blocking(move || {
            for a in arbiters {
                let _ = a.join();
            }
        })
        .await;
    }
}

thread_local! {
    /// The message of the last panic on this thread, kept by [`record_panics`] so the guard of
    /// the stage that panicked can name it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that keeps each panic's message for [`StageGuard`] and logs it (after
/// the default hook's report), so a panicking stage is explained in the log.
pub fn record_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = match (
            info.payload().downcast_ref::<&str>(),
            info.payload().downcast_ref::<String>(),
        ) {
            (Some(s), _) => (*s).to_owned(),
            (_, Some(s)) => s.clone(),
            _ => "panic".to_owned(),
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
        default(info);
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {msg}{at}");
    }));
}

/// Held by a stage for as long as it runs. Dropped without [`StageGuard::finish`] — the stage
/// panicked or was dropped mid-work — it reports a [`crate::ErrorKind::StageFailed`] error, which
/// restarts the pipeline from the last stored checkpoint.
pub struct StageGuard {
    name: String,
    errors: Errors,
    finished: bool,
}

impl StageGuard {
    /// A guard for the stage called `name` (e.g. `fetcher 2 of index books`).
    pub fn new(name: impl Into<String>, errors: Errors) -> Self {
        StageGuard {
            name: name.into(),
            errors,
            finished: false,
        }
    }

    /// The stage ended as it should: its input closed and its work was handed on.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The stage's name, for its log lines.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let why = if std::thread::panicking() {
            let msg = LAST_PANIC.with(|p| p.borrow_mut().take());
            format!(
                "panicked: {}",
                msg.unwrap_or_else(|| "unknown panic".into())
            )
        } else {
            "stopped before finishing its work".to_owned()
        };
        let _ = self
            .errors
            .send(Error::stage(format!("{} {why}", self.name)));
    }
}

/// The error to report for a failed run: a unit of work left unwritten is the consequence of a
/// stage's failure, so when that stage's own error is already queued, it is the cause.
pub async fn cause(first: Error, rx: &mut mpsc::UnboundedReceiver<Error>) -> Error {
    if !first.message.contains(UNWRITTEN) {
        return first;
    }
    let specific = async {
        while let Some(e) = rx.recv().await {
            if !e.message.contains(UNWRITTEN) {
                return Some(e);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_millis(200), specific).await {
        Ok(Some(e)) => e,
        _ => first,
    }
}

/// What the message of a unit left unwritten says (see the query builder).
pub const UNWRITTEN: &str = "were not all written";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_dropped_in_a_panic_reports_the_panic_message() {
        record_panics();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let r = std::thread::spawn(move || {
            let _g = StageGuard::new("fetcher 1", tx);
            panic!("injected fault");
        })
        .join();
        assert!(r.is_err());
        let e = rx.try_recv().unwrap();
        assert_eq!(e.kind, crate::ErrorKind::StageFailed);
        assert!(
            e.message.contains("fetcher 1 panicked: injected fault"),
            "{e}"
        );
    }

    #[test]
    fn a_finished_guard_reports_nothing() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut g = StageGuard::new("writer 1", tx);
        g.finish();
        drop(g);
        assert!(rx.try_recv().is_err());
    }
}
