//! Deleting the documents whose root row is gone, for a root that is a view: when a change can
//! only be followed by rebuilding the whole index, the rows that left the view are named by no
//! change, so their documents are found by comparing the index with the view. The index is
//! listed a page at a time (a scroll, see [`crate::sink::IdScan`]) and each page is checked
//! against the view by a fetcher, in its lane, which deletes the documents of rows that no longer
//! exist in its snapshot (versioned deletes: a document rebuilt from a newer snapshot is kept).
//! Memory holds one page per lane, whatever the index size.

use super::lanes::Lanes;
use super::messages::{Completion, FetchRequest};
use crate::sink::{DocRef, Sink};
use crate::{Error, Result};

/// Documents listed per page.
const PAGE: usize = 1000;

/// Deletes every document of `index` whose root row is gone, through the fetchers `out`, and
/// waits until every delete is written. Returns the number of documents checked. Files and
/// discard cannot be listed: nothing to do there.
pub async fn prune_orphans(sink: &Sink, index: &str, out: &Lanes<FetchRequest>) -> Result<u64> {
    // Documents written before this point must be visible to the scroll.
    sink.refresh(index).await?;
    let Some(mut scan) = sink.scan_ids(index, PAGE).await? else {
        return Ok(0);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = Completion::new(
        move || {
            let _ = tx.send(());
        },
        || {},
    );
    let mut checked = 0u64;
    let sent = async {
        while let Some(page) = scan.next().await? {
            checked += page.len() as u64;
            send_page(out, page, &c).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    scan.close().await;
    sent?;
    c.done();
    rx.await
        .map_err(|_| Error::stage("deleting the documents of rows gone from the view failed"))?;
    tracing::info!(
        index,
        checked,
        "index checked against its root view: documents of rows gone from it deleted"
    );
    Ok(checked)
}

/// One page, split by the lane each `_id` belongs to.
async fn send_page(out: &Lanes<FetchRequest>, page: Vec<DocRef>, c: &Completion) -> Result<()> {
    let mut per_lane: Vec<Vec<DocRef>> = vec![vec![]; out.len()];
    for d in page {
        per_lane[out.lane_of(&d.id)].push(d);
    }
    for (lane, docs) in per_lane.into_iter().enumerate() {
        if docs.is_empty() {
            continue;
        }
        let req = FetchRequest::Prune {
            docs,
            completion: Some(c.clone()),
        };
        out.send_to(lane, req)
            .await
            .map_err(|_| Error::stage("the fetcher stage stopped"))?;
    }
    Ok(())
}
