//! Where one index's documents go. Users search the index named in schema.json, an alias; the
//! pipeline writes to the physical index behind it, so a migration can build a new physical
//! index beside the live one and swap the alias atomically (see `migration.rs`).

use super::writer::Rejections;
use crate::schema::resolve::IndexPlan;
use std::sync::Arc;

/// A definition and the physical index its documents are written to.
#[derive(Clone)]
pub struct Destination {
    /// The resolved definition the documents follow.
    pub plan: Arc<IndexPlan>,
    /// The physical index written (the alias itself for an index that is not behind one).
    pub physical: Arc<str>,
    /// What to do with rejected documents.
    pub rejections: Rejections,
}

impl Destination {
    /// The index name users search (schema.json's `index`).
    pub fn alias(&self) -> &str {
        &self.plan.spec.index
    }
}
