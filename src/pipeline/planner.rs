//! Planner stage of the initial sync: splits the root table into page (ctid) ranges of equal size
//! so the fetchers share the work evenly, whatever the key type. Views and partitioned tables
//! have no usable ctid and are read as one range.

use crate::schema::resolve::IndexPlan;
use crate::sql::document::RootFilter;
use crate::Result;
use tokio_postgres::Client;

/// The root table's kind, size in pages, and estimated row count.
pub async fn root_size(client: &Client, plan: &IndexPlan) -> Result<(char, u64, Option<u64>)> {
    let t = &plan.root.table;
    let row = client
        .query_one(
            "SELECT c.relkind::text, \
                    (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint, \
                    c.reltuples::bigint \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&t.schema, &t.name],
        )
        .await?;
    let kind: String = row.get(0);
    let pages: i64 = row.get(1);
    let tuples: i64 = row.get(2);
    Ok((
        kind.chars().next().unwrap_or('r'),
        pages.max(0) as u64,
        (tuples >= 0).then_some(tuples as u64),
    ))
}

/// Splits `pages` into at most `n` ranges; the last one is open-ended so rows on pages added
/// after sizing are still read.
pub fn split(kind: char, pages: u64, n: usize) -> Vec<RootFilter> {
    if !matches!(kind, 'r' | 'm') || pages < 2 || n < 2 {
        return vec![RootFilter::All];
    }
    let n = (n as u64).min(pages);
    let step = pages.div_ceil(n);
    let mut out = vec![];
    let mut from = 0;
    while from < pages {
        let to = from + step;
        out.push(RootFilter::CtidRange {
            from,
            to: if to >= pages { None } else { Some(to) },
        });
        from = to;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_into_contiguous_ranges_with_an_open_end() {
        let r = split('r', 10, 3);
        assert_eq!(
            r,
            vec![
                RootFilter::CtidRange {
                    from: 0,
                    to: Some(4)
                },
                RootFilter::CtidRange {
                    from: 4,
                    to: Some(8)
                },
                RootFilter::CtidRange { from: 8, to: None },
            ]
        );
        assert_eq!(split('v', 10, 3), vec![RootFilter::All]);
        assert_eq!(split('r', 1, 3), vec![RootFilter::All]);
    }
}
