//! Listing the `_id` (and routing) of every document of an index, page by page, so that
//! documents whose root row is gone can be found without holding every id in memory. A scroll
//! (`?scroll=`, sorted by `_doc`) is used: Elasticsearch 7–9 and OpenSearch 1–3 all have it, it
//! reads one consistent view of the index however it changes meanwhile, and it needs no sortable
//! field (Elasticsearch 8 refuses to sort on `_id` by default).
//!
//! Only the first request is retried: a continuation that failed in flight may have moved the
//! scroll on, so a retry could skip a page; it fails instead, and the caller starts again.

use super::search::{index_path, SearchSink};
use super::Method;
use crate::{Error, ErrorKind, Result};
use serde_json::{json, Value};

/// How long the engine keeps the scroll between two pages.
const KEEP_ALIVE: &str = "5m";

/// One indexed document, as far as a delete needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    /// The document `_id`.
    pub id: String,
    /// The routing it was indexed with, if any.
    pub routing: Option<String>,
    /// The document itself, when the scan was opened with [`SearchSink::scan_documents`].
    pub source: Option<Value>,
}

/// An open scroll over an index's documents.
pub struct IdScan {
    sink: SearchSink,
    index: String,
    scroll_id: Option<String>,
    first: Option<Vec<DocRef>>,
}

impl SearchSink {
    /// Opens a scroll over every document of `index`, `page` per page. A missing index has no
    /// documents.
    pub async fn scan_ids(&self, index: &str, page: usize) -> Result<IdScan> {
        self.scan(index, page, false).await
    }

    /// Like [`SearchSink::scan_ids`], with each document's `_source`: what a comparison of the
    /// index with the database reads (`migrate-from-pgsync`), one page in memory at a time.
    pub async fn scan_documents(&self, index: &str, page: usize) -> Result<IdScan> {
        self.scan(index, page, true).await
    }

    async fn scan(&self, index: &str, page: usize, source: bool) -> Result<IdScan> {
        let path = index_path(index, &format!("/_search?scroll={KEEP_ALIVE}"))?;
        let body = json!({
            "size": page.max(1),
            "_source": source,
            "sort": ["_doc"],
            "query": {"match_all": {}},
        });
        let (status, v) = self.json(Method::Post, &path, Some(&body)).await?;
        let mut scan = IdScan {
            sink: self.clone(),
            index: index.to_owned(),
            scroll_id: None,
            first: Some(vec![]),
        };
        if status == 404 {
            return Ok(scan);
        }
        scan.first = Some(scan.page(status, &v, &format!("POST {path}"))?);
        Ok(scan)
    }
}

impl IdScan {
    /// The next page, or `None` once every document was listed.
    pub async fn next(&mut self) -> Result<Option<Vec<DocRef>>> {
        if let Some(first) = self.first.take() {
            return Ok((!first.is_empty()).then_some(first));
        }
        let Some(id) = self.scroll_id.clone() else {
            return Ok(None);
        };
        let body = json!({"scroll": KEEP_ALIVE, "scroll_id": id});
        let (status, v) = self
            .sink
            .json_retrying(Method::Post, "/_search/scroll", Some(&body), 0)
            .await?;
        let docs = self.page(status, &v, "POST /_search/scroll")?;
        Ok((!docs.is_empty()).then_some(docs))
    }

    /// Frees the scroll on the engine (it would expire by itself).
    pub async fn close(self) {
        if let Some(id) = self.scroll_id {
            let body = json!({"scroll_id": id});
            let _ = self
                .sink
                .json_retrying(Method::Delete, "/_search/scroll", Some(&body), 0)
                .await;
        }
    }

    fn page(&mut self, status: u16, v: &Value, what: &str) -> Result<Vec<DocRef>> {
        if !(200..300).contains(&status) {
            let kind = if status == 429 || status >= 500 {
                ErrorKind::SinkTransient
            } else {
                ErrorKind::SinkRejected
            };
            return Err(Error::new(
                kind,
                format!(
                    "search engine at {} answered {status} to {what} while listing the documents of index {}: {v}",
                    self.sink.url(),
                    self.index
                ),
            ));
        }
        if let Some(id) = v["_scroll_id"].as_str() {
            self.scroll_id = Some(id.to_owned());
        }
        Ok(v["hits"]["hits"]
            .as_array()
            .map(|hits| hits.iter().filter_map(doc_ref).collect())
            .unwrap_or_default())
    }
}

fn doc_ref(hit: &Value) -> Option<DocRef> {
    Some(DocRef {
        id: hit["_id"].as_str()?.to_owned(),
        routing: hit["_routing"].as_str().map(str::to_owned),
        source: hit.get("_source").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_give_ids_and_routings() {
        let hit = json!({"_id": "7", "_index": "i", "_routing": "r1", "sort": [3]});
        assert_eq!(
            doc_ref(&hit),
            Some(DocRef {
                id: "7".into(),
                routing: Some("r1".into()),
                source: None,
            })
        );
        assert_eq!(doc_ref(&json!({"_id": "8"})).unwrap().routing, None);
        assert_eq!(doc_ref(&json!({"sort": [1]})), None);
    }
}
