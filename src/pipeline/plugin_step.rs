//! The fetcher's plugin step. For an index whose schema entry lists plugins, the documents of a
//! chunk are held back unframed and run through the plugin chain as one batch; the fetcher then
//! frames what comes back: a kept document is indexed, a dropped one gets nothing (not even a
//! delete: its root row still exists, and PGSync sends nothing either), a failed one is logged
//! with its traceback and handed to the writer as [`Refused`], which records it in the
//! dead-letter store like a document the engine rejected.

use super::messages::Refused;
use super::progress::Stats;
use crate::plugin::{PluginChain, PluginOutcome};
use crate::schema::resolve::IndexPlan;
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

/// A document the plugins kept: what to index.
pub struct Kept {
    /// `_id`.
    pub id: String,
    /// Routing.
    pub routing: Option<String>,
    /// The `_source` the plugins returned.
    pub source: Vec<u8>,
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

/// Runs `chain` over the held documents (emptying `held`): the documents to index, and those a
/// plugin failed on.
pub async fn apply_plugins(
    chain: &PluginChain,
    index: &str,
    held: &mut HeldDocs,
    stats: &Stats,
) -> (Vec<Kept>, Vec<Refused>) {
    let HeldDocs { docs, routings, .. } = std::mem::take(held);
    let inputs: Vec<(String, Vec<u8>)> = docs.clone();
    let outcomes = chain.apply(index, docs).await;
    let (mut kept, mut refused) = (vec![], vec![]);
    for (((id, input), routing), outcome) in inputs.into_iter().zip(routings).zip(outcomes) {
        match outcome {
            PluginOutcome::Keep(source) => kept.push(Kept {
                id,
                routing,
                source,
            }),
            PluginOutcome::Drop => {}
            PluginOutcome::Failed { traceback } => {
                tracing::error!(index = %index, id = %id, traceback = %traceback, "a plugin failed: document not indexed");
                stats.add_failed(1);
                refused.push(Refused {
                    id,
                    reason: format!("plugin failed: {traceback}"),
                    document: String::from_utf8(input).ok(),
                });
            }
        }
    }
    (kept, refused)
}
