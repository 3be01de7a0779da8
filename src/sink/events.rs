//! Documents as events: the bulk body a writer built, read back as one [`DocEvent`] per action,
//! and the JSON envelope every event target sends (`{"_index","_id","op","doc","position",
//! "version"}`). The envelope carries the whole current nested document (or `null` for a
//! delete), so a consumer never has to join streams to know what a document looks like.

use super::actions::split_actions;
use super::BulkBatch;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// What happened to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The document was created or changed: `doc` is its whole current `_source`.
    Index,
    /// The document is gone: a tombstone, `doc` is `null`.
    Delete,
    /// Every document of the index is gone (its root table was truncated).
    Truncate,
}

impl Op {
    /// The name in messages and subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Index => "index",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One document change, as every event target sends it.
#[derive(Debug, Clone, Serialize)]
pub struct DocEvent {
    /// The index the document belongs to.
    #[serde(rename = "_index")]
    pub index: String,
    /// The document `_id`.
    #[serde(rename = "_id")]
    pub id: String,
    /// `index`, `delete` or `truncate`.
    pub op: Op,
    /// The whole nested `_source`; `null` for deletes.
    pub doc: Option<Box<RawValue>>,
    /// The change-stream position (LSN in wal mode, change-log id in notify mode); 0 for the
    /// initial sync.
    pub position: u64,
    /// The document's external version (grows with every change of the document).
    pub version: Option<u64>,
    /// Which action of the batch it came from (for [`super::ItemFailure::position`]).
    #[serde(skip)]
    pub action: usize,
}

impl DocEvent {
    /// The event that empties `index`.
    pub fn truncate(index: &str) -> DocEvent {
        DocEvent {
            index: index.to_owned(),
            id: String::new(),
            op: Op::Truncate,
            doc: None,
            position: 0,
            version: None,
            action: 0,
        }
    }

    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }

    /// The document as JSON text (`null` for a tombstone).
    pub fn doc_json(&self) -> &str {
        self.doc.as_ref().map_or("null", |d| d.get())
    }
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    version: Option<u64>,
}

/// Every action of `batch`, in order.
pub fn decode(batch: &BulkBatch) -> Result<Vec<DocEvent>> {
    let body = &batch.body[..];
    let ranges = split_actions(body)?;
    let mut out = Vec::with_capacity(ranges.len());
    for (n, range) in ranges.into_iter().enumerate() {
        let text = &body[range];
        let (head, rest) = match text.iter().position(|&b| b == b'\n') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, &text[text.len()..]),
        };
        let action: HashMap<String, Meta> = serde_json::from_slice(head)
            .map_err(|e| Error::internal(format!("unreadable bulk action line: {e}")))?;
        let Some((kind, meta)) = action.into_iter().next() else {
            return Err(Error::internal("empty bulk action line"));
        };
        let (op, doc) = match kind.as_str() {
            "delete" => (Op::Delete, None),
            _ => {
                let doc: Box<RawValue> = serde_json::from_slice(rest.trim_ascii())
                    .map_err(|e| Error::internal(format!("unreadable bulk document: {e}")))?;
                (Op::Index, Some(doc))
            }
        };
        out.push(DocEvent {
            index: meta.index,
            id: meta.id,
            op,
            doc,
            position: batch.position_of(n).unwrap_or(0),
            version: meta.version,
            action: n,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{push_delete_action, push_index_action, Target};
    use super::*;

    #[test]
    fn a_batch_reads_back_as_events_in_order_with_positions() {
        let mut buf = Vec::new();
        let t = Target::new("book", "1").version(Some(7));
        push_index_action(&mut buf, t, None, br#"{"a":{"b":[1,2]}}"#);
        push_delete_action(&mut buf, Target::new("book", "2").version(Some(9)));
        let batch = BulkBatch::new(buf, vec!["1".into(), "2".into()])
            .with_positions(vec![(1, None), (2, Some(42))]);
        let ev = decode(&batch).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(
            String::from_utf8(ev[0].to_json()).unwrap(),
            r#"{"_index":"book","_id":"1","op":"index","doc":{"a":{"b":[1,2]}},"position":0,"version":7}"#
        );
        assert_eq!(
            String::from_utf8(ev[1].to_json()).unwrap(),
            r#"{"_index":"book","_id":"2","op":"delete","doc":null,"position":42,"version":9}"#
        );
        assert_eq!(ev[1].action, 1);
        assert_eq!(ev[1].doc_json(), "null");
    }
}
