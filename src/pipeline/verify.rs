//! A streamed comparison of an existing index with the documents the database gives now, so an
//! index written by someone else (PGSync, before `migrate-from-pgsync`) is kept only when it is
//! right, never on trust. The index is scrolled page by page into a map of `_id` to a digest of
//! the document; the database's documents are then streamed (one `REPEATABLE READ` snapshot)
//! and each is compared with its digest. A differing or missing document is written from the
//! database, a document whose root row is gone is deleted: afterwards the index equals the
//! snapshot, and the change stream (started before the snapshot) carries it on from there.
//!
//! Documents compare as PGSync's would be read: object keys in any order, arrays as multisets
//! (PostgreSQL aggregates children in no particular order), `_meta` included when
//! `documents.meta` is on. Plugins are not applied here: an index of plugin-transformed
//! documents compares as different and is rewritten.

use super::meta;
use crate::config::Config;
use crate::schema::resolve::IndexPlan;
use crate::sink::{push_delete_action, push_index_action, BulkBatch, Sink, Target};
use crate::sql::document::{cols, document_query, RootFilter};
use crate::{Error, Result};
use futures::{pin_mut, TryStreamExt};
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Documents per scroll page and per bulk request.
const PAGE: usize = 1000;

/// What a comparison found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Documents the database gives.
    pub expected: usize,
    /// Of those, already equal in the index.
    pub matched: usize,
    /// Written because they differed or were missing.
    pub rewritten: usize,
    /// Deleted because their root row is gone.
    pub deleted: usize,
}

impl Verification {
    /// The index needed no change at all.
    pub fn all_matched(&self) -> bool {
        self.matched == self.expected && self.deleted == 0
    }
}

/// Compares `index` with the database's documents of `plan` and repairs what differs.
pub async fn verify_and_repair(
    cfg: &Config,
    plan: &IndexPlan,
    sink: &Sink,
    index: &str,
) -> Result<Verification> {
    let mut indexed = index_digests(sink, index).await?;
    let mut client = crate::config::connect(cfg, &plan.spec.database).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: String = tx
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::text",
            &[],
        )
        .await?
        .get(0);
    let version: u64 = version
        .parse()
        .map_err(|_| Error::internal(format!("unexpected WAL position {version:?}")))?;
    let sql = document_query(plan, &RootFilter::All, cfg.documents.meta);
    let rows = tx.query_raw(&sql, Vec::<String>::new()).await?;
    pin_mut!(rows);
    let mut out = Verification::default();
    let mut batch = Batch::default();
    while let Some(row) = rows.try_next().await? {
        let id: String = row.get(cols::ID);
        let doc = document(&row, &id, index)?;
        out.expected += 1;
        if indexed.remove(&id).map(|(d, _)| d) == Some(digest(&doc)) {
            out.matched += 1;
            continue;
        }
        out.rewritten += 1;
        let routing: Option<String> = row.get(cols::ROUTING);
        let target = Target::new(index, &id)
            .routing(routing.as_deref())
            .version(Some(version));
        push_index_action(
            &mut batch.body,
            target,
            plan.spec.pipeline.as_deref(),
            &serde_json::to_vec(&doc).map_err(|e| Error::internal(e.to_string()))?,
        );
        batch.ids.push(id.clone());
        batch.flush_when_full(sink).await?;
    }
    tx.commit().await?;
    for (id, (_, routing)) in indexed.drain() {
        out.deleted += 1;
        let target = Target::new(index, &id)
            .routing(routing.as_deref())
            .version(Some(version));
        push_delete_action(&mut batch.body, target);
        batch.ids.push(id);
        batch.flush_when_full(sink).await?;
    }
    batch.flush(sink).await?;
    sink.refresh(index).await?;
    Ok(out)
}

/// A document row as JSON with its `_meta` folded in.
fn document(row: &tokio_postgres::Row, id: &str, index: &str) -> Result<Value> {
    let text: String = row.get(cols::DOC);
    let mut doc: Value = serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("document {id} of index {index}: {e}")))?;
    let m: Option<String> = row.get(cols::META);
    if let (Some(obj), Some(m)) = (doc.as_object_mut(), m) {
        let triples: Value =
            serde_json::from_str(&m).map_err(|e| Error::internal(format!("_meta of {id}: {e}")))?;
        obj.insert("_meta".into(), meta::fold(&triples));
    }
    Ok(doc)
}

/// `_id` to (digest, routing) of every document of the index.
async fn index_digests(sink: &Sink, index: &str) -> Result<HashMap<String, (u64, Option<String>)>> {
    let mut out = HashMap::new();
    let Some(mut scan) = sink.scan_documents(index, PAGE).await? else {
        return Ok(out);
    };
    while let Some(page) = scan.next().await? {
        for d in page {
            let source = d.source.unwrap_or(Value::Null);
            out.insert(d.id, (digest(&source), d.routing));
        }
    }
    scan.close().await;
    Ok(out)
}

/// Equal for documents equal up to key order and array order (see the module docs).
fn digest(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    canonical(v).hash(&mut h);
    h.finish()
}

/// A text form with object keys sorted and array items sorted by their own text form.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut items: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            items.sort();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(a) => {
            let mut items: Vec<String> = a.iter().map(canonical).collect();
            items.sort();
            format!("[{}]", items.join(","))
        }
        Value::Number(n) => match n.as_f64() {
            // 1 and 1.0 are the same number to the engine.
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Actions waiting to be sent.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    ids: Vec<String>,
}

impl Batch {
    async fn flush_when_full(&mut self, sink: &Sink) -> Result<()> {
        if self.ids.len() >= PAGE {
            self.flush(sink).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, sink: &Sink) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let batch = BulkBatch::new(
            std::mem::take(&mut self.body),
            std::mem::take(&mut self.ids),
        );
        let outcome = sink.bulk(batch).await?;
        if let Some(f) = outcome.failures.first() {
            return Err(Error::internal(format!(
                "{} document(s) refused while repairing the index, the first {}: {}",
                outcome.failures.len(),
                f.id,
                f.reason
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_equal_up_to_key_and_array_order_have_one_digest() {
        let a = json!({"id": 1, "tags": [{"n": "x", "k": 1}, null, "b"], "_meta": {"t": {"id": [2, 1]}}});
        let b = json!({"_meta": {"t": {"id": [1, 2]}}, "tags": ["b", null, {"k": 1.0, "n": "x"}], "id": 1});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"id": 1, "tags": ["b"]})));
        assert_ne!(digest(&json!({"a": null})), digest(&json!({})));
    }
}
