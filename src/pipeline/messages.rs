//! Typed messages passed between pipeline stages. Each stage owns a bounded channel receiver and
//! holds the sender of the next stage, so a slow stage blocks the ones before it.

pub use super::completion::Completion;
use crate::sink::DocRef;
use crate::source::change::Change;
use crate::sql::document::RootFilter;

/// One root document to rebuild: its key values (text, in key column order), its `_id`, and the
/// routing values seen for it in the changes (old and new), so a document that moved shard or
/// whose row is gone is deleted where it was indexed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RootKey {
    /// Key column values in the root's key order.
    pub values: Vec<String>,
    /// The document `_id`.
    pub id: String,
    /// Routing values the document may have been indexed with, when routing is configured.
    pub routings: Vec<String>,
}

/// A window of coalesced changes, for the query builder to turn into documents to rebuild.
#[derive(Debug, Clone)]
pub struct Window {
    /// The changes, in commit order (shared by every destination of a migration).
    pub changes: std::sync::Arc<Vec<Change>>,
    /// Position to checkpoint once every document they affect is written.
    pub position: u64,
    /// Ids of the transactions the changes come from (`wal` mode), to wait for until they are
    /// visible before anything is read for them (see [`crate::sql::visibility`]).
    pub xids: Vec<u32>,
    /// Settled once every destination wrote every document the window affects.
    pub completion: Completion,
}

/// Work for a fetcher.
#[derive(Debug)]
pub enum FetchRequest {
    /// Build every document in a slice of the root table (initial sync, full rebuild).
    Range {
        /// Which root rows.
        filter: RootFilter,
        /// Settled once every document of the range is acknowledged.
        completion: Option<Completion>,
    },
    /// Rebuild these documents; any that no longer exist are deleted.
    Keys {
        /// Root rows to rebuild.
        keys: Vec<RootKey>,
        /// Stream position the rebuild answers to (for dead letters).
        position: u64,
        /// Settled once every document is acknowledged.
        completion: Option<Completion>,
    },
    /// Delete those of these indexed documents whose root row is gone (after a whole-index
    /// rebuild of a view root, whose vanished rows no change names).
    Prune {
        /// Documents found in the index.
        docs: Vec<DocRef>,
        /// Settled once the deletes are acknowledged.
        completion: Option<Completion>,
    },
    /// Delete every document of the index (root table truncated).
    DeleteAll {
        /// Settled once the engine deleted them.
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
    /// Stream position the documents answer to; `None` in an initial sync.
    pub position: Option<u64>,
    /// Settled once written.
    pub completion: Option<Completion>,
    /// When set, the writer flushes everything it holds before and after this chunk.
    pub barrier: bool,
    /// Delete every document of the index before writing this chunk.
    pub delete_all: bool,
    /// Documents of this chunk that are not in `body` because a stage refused them (a plugin
    /// failed on them); recorded like documents the engine rejects.
    pub refused: Vec<Refused>,
}

/// A document refused before it reached the engine.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The document `_id`.
    pub id: String,
    /// Why, e.g. the plugin's Python traceback.
    pub reason: String,
    /// The document as it was built, when known.
    pub document: Option<String>,
}
