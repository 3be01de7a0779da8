//! Typed messages passed between pipeline stages. Each stage owns a bounded channel receiver and
//! holds the sender of the next stage, so a slow stage blocks the ones before it.

use std::sync::Arc;

/// Runs a callback once every chunk carrying a clone of it has been written: the last clone
/// dropped without [`Completion::fail`] having been called fires it. Checkpoints use it to learn
/// that a position's documents are all written; barriers use it to wait for a step to finish.
#[derive(Clone)]
pub struct Completion(Arc<CompletionInner>);

type Callback = Box<dyn FnOnce() + Send>;

struct CompletionInner {
    failed: std::sync::atomic::AtomicBool,
    on_done: std::sync::Mutex<Option<Callback>>,
}

impl Completion {
    /// A completion that calls `on_done` when the work it travels with is written.
    pub fn new(on_done: impl FnOnce() + Send + 'static) -> Self {
        Completion(Arc::new(CompletionInner {
            failed: Default::default(),
            on_done: std::sync::Mutex::new(Some(Box::new(on_done))),
        }))
    }
    /// Records that a chunk could not be written: the callback must never fire.
    pub fn fail(&self) {
        self.0
            .failed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CompletionInner {
    fn drop(&mut self) {
        if !self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(f) = self.on_done.lock().ok().and_then(|mut g| g.take()) {
                f();
            }
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

/// One root document to rebuild: its key values (text, in key column order), its `_id`, and the
/// routing value last seen for it (needed to delete it when the row is gone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RootKey {
    /// Key column values in the root's key order.
    pub values: Vec<String>,
    /// The document `_id`.
    pub id: String,
    /// Routing of the existing document, when routing is configured and known.
    pub routing: Option<String>,
}

/// Work for a fetcher.
#[derive(Debug)]
pub enum FetchRequest {
    /// Build every document in a slice of the root table (initial sync, full rebuild).
    Range {
        /// Which root rows.
        filter: crate::sql::document::RootFilter,
        /// Fired once written.
        completion: Option<Completion>,
    },
    /// Rebuild these documents; any that no longer exist are deleted.
    Keys {
        /// Root rows to rebuild.
        keys: Vec<RootKey>,
        /// Reported done once written.
        completion: Option<Completion>,
    },
    /// Delete every document of the index (root table truncated).
    DeleteAll {
        /// Reported done once deleted.
        completion: Option<Completion>,
    },
}

/// Bulk actions ready to write: NDJSON lines for a number of documents.
#[derive(Debug, Default)]
pub struct DocChunk {
    /// NDJSON bulk actions.
    pub body: Vec<u8>,
    /// `_id` of each action, in order.
    pub ids: Vec<String>,
    /// Reported done once written.
    pub completion: Option<Completion>,
    /// When set, the writer flushes everything it holds before and after this chunk.
    pub barrier: bool,
    /// Delete every document of the index before writing this chunk.
    pub delete_all: bool,
    /// Documents of this chunk that are not in `body` because a plugin failed on them:
    /// (`_id`, what failed, with the Python traceback). Already logged at ERROR.
    pub rejected: Vec<(String, String)>,
}
