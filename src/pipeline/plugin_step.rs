//! The fetcher's plugin step. For an index whose schema entry lists plugins, the documents of a
//! chunk are held back unframed, run through the plugin chain as one batch, and only then turned
//! into bulk actions: a kept document is indexed, a dropped one gets nothing (not even a delete:
//! its root row still exists, PGSync sends nothing either), a failed one is logged with its
//! traceback and recorded in [`DocChunk::rejected`].

use super::messages::DocChunk;
use super::progress::Stats;
use crate::plugin::{PluginChain, PluginOutcome};
use crate::schema::resolve::IndexPlan;
use crate::sink::push_index_action;
use crate::{Error, Result};

/// Documents of the current chunk waiting for the plugins.
#[derive(Debug, Default)]
pub struct HeldDocs {
    docs: Vec<(String, Vec<u8>)>,
    routings: Vec<Option<String>>,
    bytes: usize,
}

impl HeldDocs {
    /// Holds one document (`_id`, routing, `_source` JSON).
    pub fn push(&mut self, id: &str, routing: Option<&str>, source: &[u8]) {
        self.bytes += source.len();
        self.docs.push((id.to_owned(), source.to_vec()));
        self.routings.push(routing.map(str::to_owned));
    }
    /// Documents held.
    pub fn len(&self) -> usize {
        self.docs.len()
    }
    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
    /// Bytes of `_source` held, for the chunk's size limit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Refuses to build documents of an index that lists plugins when they were not loaded: its
/// documents must never be indexed without them.
pub fn check_loaded(plan: &IndexPlan, chain: Option<&PluginChain>) -> Result<()> {
    if plan.spec.plugins.is_empty() || chain.is_some() {
        return Ok(());
    }
    Err(Error::internal(format!(
        "index {} lists plugins {:?} but they were not loaded before its documents were built",
        plan.spec.index, plan.spec.plugins
    )))
}

/// Runs `chain` over the held documents (emptying `held`) and appends to `chunk` an index action
/// for each document the plugins keep.
pub async fn apply_plugins(
    chain: &PluginChain,
    index: &str,
    pipeline: Option<&str>,
    held: &mut HeldDocs,
    chunk: &mut DocChunk,
    stats: &Stats,
) {
    let HeldDocs { docs, routings, .. } = std::mem::take(held);
    let ids: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
    let outcomes = chain.apply(index, docs).await;
    for ((id, routing), outcome) in ids.into_iter().zip(routings).zip(outcomes) {
        match outcome {
            PluginOutcome::Keep(source) => {
                push_index_action(
                    &mut chunk.body,
                    index,
                    &id,
                    routing.as_deref(),
                    pipeline,
                    &source,
                );
                chunk.ids.push(id);
            }
            PluginOutcome::Drop => {}
            PluginOutcome::Failed { traceback } => {
                tracing::error!(index = %index, id = %id, traceback = %traceback, "a plugin failed: document not indexed");
                stats.add_failed(1);
                chunk.rejected.push((id, traceback));
            }
        }
    }
}
