//! What a run does for a target without aliases (Typesense, Redis streams, NATS, webhooks):
//! documents are written under the index name itself, so there is no physical `<index>-<n>` to
//! build beside the live one and swap in. An index is built when it has no finished build, and
//! built again in place (`--recreate`, or a changed definition) otherwise streamed.

use super::bootstrap::Boot;
use super::migration::{Index, Step};
use crate::checkpoint::{CheckpointRecord, InitialProgress};
use crate::schema::mapping::index_body;
use crate::sink::alias::AliasState;
use crate::Result;

/// The step for `ix` on a target without aliases.
pub async fn plan_step(
    ix: &Index<'_>,
    stored: Option<CheckpointRecord>,
    boot: &Boot,
    recreate: bool,
) -> Result<Step> {
    let index = ix.plan.spec.index.clone();
    let definition = Some(ix.plan.spec.raw.clone());
    match stored {
        Some(r) if !recreate && !boot.created && r.initial_sync_done => {
            if r.definition.is_some() && r.definition != definition {
                tracing::warn!(index = %index, "the definition of index {index} changed: building it again in place (this target has no aliases to migrate behind)");
                return build(ix, boot).await;
            }
            Ok(Step::Stream(r))
        }
        Some(r) if !recreate && !boot.created && r.initial.is_some() => Ok(Step::Build {
            record: r,
            from: AliasState::Missing,
        }),
        _ => build(ix, boot).await,
    }
}

/// A build from scratch into the index itself, emptied first (a Typesense collection is
/// re-created) so no document of an earlier build outlives its row.
async fn build(ix: &Index<'_>, boot: &Boot) -> Result<Step> {
    let index = ix.plan.spec.index.clone();
    ix.sink
        .ensure_index(&index, &index_body(&ix.plan), true)
        .await?;
    let record = CheckpointRecord {
        position: boot.start,
        initial: Some(InitialProgress {
            start: boot.start,
            ranges: vec![],
        }),
        physical: Some(index),
        definition: Some(ix.plan.spec.raw.clone()),
        ..Default::default()
    };
    ix.store.save(&ix.key, &record).await?;
    Ok(Step::Build {
        record,
        from: AliasState::Missing,
    })
}
