//! The dead-letter store: documents the engine rejected for good (a mapping conflict, a value it
//! cannot parse, a document too large), one entry per document `_id` with the source index, the
//! engine's reason, the stream position, the time and the document. The pipeline records an
//! entry instead of losing the document, moves on (one bad row never stalls the slot), and
//! removes the entry when a later rebuild of the document is accepted. `pgsync dead-letters`
//! lists them and retries them from the current rows.
//!
//! Kept in an index of the same engine (default `<index>-dead-letter`) or in an NDJSON file per
//! index (entries and removals appended; reading folds them).

use super::{ItemFailure, Method, SearchSink, Sink};
use crate::config::{DeadLetterConfig, DeadLetterStore};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One rejected document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The document `_id`.
    pub doc_id: String,
    /// The index it was meant for.
    pub index: String,
    /// The engine's status for the item, e.g. 400.
    pub status: u16,
    /// The engine's error type and reason.
    pub reason: String,
    /// Stream position of the change that rebuilt it (`0/1A2B3C` or `xid 1234`), or
    /// `initial sync`.
    pub position: String,
    /// When it was rejected (RFC 3339, UTC).
    pub time: String,
    /// The document as it was sent, when it is valid JSON.
    pub document: Option<Value>,
}

impl Entry {
    /// An entry for `failure`, rejected now at `position`.
    pub fn new(index: &str, failure: &ItemFailure, position: String) -> Entry {
        Entry {
            doc_id: failure.id.clone(),
            index: index.to_owned(),
            status: failure.status,
            reason: failure.reason.clone(),
            position,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            document: failure
                .document
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
        }
    }
}

/// The dead letters of one index. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// `_id`s with an entry, so an accepted rebuild removes it without asking the store.
    known: Mutex<HashSet<String>>,
}

enum Backend {
    Index { sink: SearchSink, name: String },
    File(PathBuf),
    Off,
}

/// Mapping of a dead-letter index: the document is kept but not indexed, so whatever made the
/// engine refuse it cannot make it refuse the entry.
fn index_body() -> Value {
    json!({"mappings": {"dynamic": false, "properties": {
        "doc_id": {"type": "keyword"},
        "index": {"type": "keyword"},
        "status": {"type": "integer"},
        "reason": {"type": "text"},
        "position": {"type": "keyword"},
        "time": {"type": "date"},
        "document": {"type": "object", "enabled": false}
    }}})
}

impl DeadLetters {
    /// Where the dead letters of `index` are kept: the engine index or file the configuration
    /// names (nowhere with `store = "off"`, or when the output is a file or discard and the
    /// store is an index; files under `dir` for the document targets). Creates the index when missing and loads the known `_id`s.
    pub async fn open(cfg: &DeadLetterConfig, sink: &Sink, index: &str) -> Result<DeadLetters> {
        Self::connect(cfg, sink, index, true).await
    }

    /// Like [`DeadLetters::open`], but creates nothing: for `pgsync status`.
    pub async fn inspect(cfg: &DeadLetterConfig, sink: &Sink, index: &str) -> Result<DeadLetters> {
        Self::connect(cfg, sink, index, false).await
    }

    async fn connect(
        cfg: &DeadLetterConfig,
        sink: &Sink,
        index: &str,
        create: bool,
    ) -> Result<DeadLetters> {
        let backend = match (cfg.store, sink) {
            (DeadLetterStore::Off, _) => Backend::Off,
            (DeadLetterStore::Index, Sink::Search(s)) => Backend::Index {
                sink: s.clone(),
                name: cfg.index.replace("{index}", index),
            },
            // A document target has no index to keep them in: files, rather than losing them.
            (DeadLetterStore::Index, s) if !s.plain_indexes() => Backend::Off,
            (DeadLetterStore::Index | DeadLetterStore::File, _) => {
                if create {
                    std::fs::create_dir_all(&cfg.dir).map_err(|e| {
                        Error::new(
                            ErrorKind::Io,
                            format!("dead_letter.dir {}: {e}", cfg.dir.display()),
                        )
                    })?;
                }
                Backend::File(cfg.dir.join(format!("{index}.dead-letter.ndjson")))
            }
        };
        if let (Backend::Index { sink, name }, true) = (&backend, create) {
            sink.ensure_index(name, &index_body(), false).await?;
        }
        let dl = DeadLetters {
            inner: Arc::new(Inner {
                backend,
                known: Mutex::new(HashSet::new()),
            }),
        };
        let ids: HashSet<String> = dl.list().await?.into_iter().map(|e| e.doc_id).collect();
        *dl.known() = ids;
        Ok(dl)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the entries go, for messages.
    pub fn describe(&self) -> String {
        match &self.inner.backend {
            Backend::Index { name, .. } => format!("index {name}"),
            Backend::File(p) => format!("file {}", p.display()),
            Backend::Off => "nowhere (dead_letter.store = \"off\")".into(),
        }
    }

    /// Whether entries are kept at all.
    pub fn is_off(&self) -> bool {
        matches!(self.inner.backend, Backend::Off)
    }

    /// Records `entries` (replacing earlier entries of the same `_id`s).
    pub async fn record(&self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        match &self.inner.backend {
            Backend::Off => return Ok(()),
            Backend::Index { sink, name } => record_in_index(sink, name, entries).await?,
            Backend::File(path) => {
                let lines: Vec<Value> = entries
                    .iter()
                    .map(|e| json!({"op": "add", "entry": e}))
                    .collect();
                append_lines(path, &lines).await?;
            }
        }
        self.known()
            .extend(entries.iter().map(|e| e.doc_id.clone()));
        Ok(())
    }

    /// Removes the entries of the `_id`s among `ids` that have one: their documents were
    /// accepted since. Costs nothing when there are no dead letters.
    pub async fn accepted<'a>(&self, ids: impl Iterator<Item = &'a String>) -> Result<()> {
        let gone: Vec<String> = {
            let known = self.known();
            if known.is_empty() {
                return Ok(());
            }
            ids.filter(|id| known.contains(*id)).cloned().collect()
        };
        if gone.is_empty() {
            return Ok(());
        }
        self.remove(&gone).await
    }

    /// Removes the entries of `ids`.
    pub async fn remove(&self, ids: &[String]) -> Result<()> {
        match &self.inner.backend {
            Backend::Off => {}
            Backend::Index { sink, name } => {
                let mut body = Vec::new();
                for id in ids {
                    super::push_delete_action(&mut body, super::Target::new(name, id));
                }
                let out = sink.bulk(super::BulkBatch::new(body, ids.to_vec())).await?;
                if let Some(f) = out.failures.first() {
                    return Err(Error::new(
                        ErrorKind::SinkRejected,
                        format!("removing dead letter {} from {name}: {}", f.id, f.reason),
                    ));
                }
            }
            Backend::File(path) => {
                let lines: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"op": "remove", "doc_id": id}))
                    .collect();
                append_lines(path, &lines).await?;
            }
        }
        let mut known = self.known();
        for id in ids {
            known.remove(id);
        }
        Ok(())
    }

    /// Every entry, by `_id`.
    pub async fn list(&self) -> Result<Vec<Entry>> {
        match &self.inner.backend {
            Backend::Off => Ok(vec![]),
            Backend::Index { sink, name } => list_index(sink, name).await,
            Backend::File(path) => list_file(path).await,
        }
    }
}

/// Indexes entries; one the engine refuses (say, too large) is kept without its document.
async fn record_in_index(sink: &SearchSink, name: &str, entries: &[Entry]) -> Result<()> {
    let batch = |entries: &[Entry]| {
        let mut body = Vec::new();
        let mut ids = Vec::new();
        for e in entries {
            let doc = serde_json::to_vec(e).expect("entry serializes");
            super::push_index_action(&mut body, super::Target::new(name, &e.doc_id), None, &doc);
            ids.push(e.doc_id.clone());
        }
        super::BulkBatch::new(body, ids)
    };
    let out = sink.bulk(batch(entries)).await?;
    if out.failures.is_empty() {
        return Ok(());
    }
    let retry: Vec<Entry> = out
        .failures
        .iter()
        .filter_map(|f| entries.get(f.position))
        .map(|e| Entry {
            document: None,
            reason: format!(
                "{} (document not kept: the dead-letter index refused it)",
                e.reason
            ),
            ..e.clone()
        })
        .collect();
    let again = sink.bulk(batch(&retry)).await?;
    match again.failures.first() {
        None => Ok(()),
        Some(f) => Err(Error::new(
            ErrorKind::SinkRejected,
            format!(
                "dead-letter index {name} refused the entry of document {}: {}",
                f.id, f.reason
            ),
        )),
    }
}

async fn list_index(sink: &SearchSink, name: &str) -> Result<Vec<Entry>> {
    let (status, _) = sink.json(Method::Head, &format!("/{name}"), None).await?;
    if status == 404 {
        return Ok(vec![]);
    }
    sink.json_ok(Method::Post, &format!("/{name}/_refresh"), None)
        .await?;
    let mut out = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut q = json!({"size": 500, "sort": [{"doc_id": "asc"}], "query": {"match_all": {}}});
        if let Some(a) = &after {
            q["search_after"] = a.clone();
        }
        let v = sink
            .json_ok(Method::Post, &format!("/{name}/_search"), Some(&q))
            .await?;
        let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            return Ok(out);
        }
        after = hits.last().map(|h| h["sort"].clone());
        for h in hits {
            if let Ok(e) = serde_json::from_value::<Entry>(h["_source"].clone()) {
                out.push(e);
            }
        }
    }
}

async fn append_lines(path: &std::path::Path, lines: &[Value]) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut text = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut text, l).expect("JSON serializes");
        text.push(b'\n');
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("dead-letter file {}: {e}", path.display()),
            )
        })?;
    f.write_all(&text).await?;
    f.sync_data().await?;
    Ok(())
}

async fn list_file(path: &std::path::Path) -> Result<Vec<Entry>> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Io,
                format!("dead-letter file {}: {e}", path.display()),
            ))
        }
    };
    let mut by_id: BTreeMap<String, Entry> = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("dead-letter file {} line {}: {e}", path.display(), n + 1),
            )
        })?;
        match v["op"].as_str() {
            Some("add") => {
                if let Ok(e) = serde_json::from_value::<Entry>(v["entry"].clone()) {
                    by_id.insert(e.doc_id.clone(), e);
                }
            }
            Some("remove") => {
                if let Some(id) = v["doc_id"].as_str() {
                    by_id.remove(id);
                }
            }
            _ => {}
        }
    }
    Ok(by_id.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(id: &str) -> ItemFailure {
        ItemFailure {
            id: id.into(),
            position: 0,
            status: 400,
            reason: "mapper_parsing_exception: failed to parse field [pages]".into(),
            document: Some(r#"{"pages":"many"}"#.into()),
        }
    }

    #[tokio::test]
    async fn file_entries_are_replaced_and_removed_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DeadLetterConfig {
            store: DeadLetterStore::File,
            dir: dir.path().to_owned(),
            ..DeadLetterConfig::default()
        };
        let dl = DeadLetters::open(&cfg, &Sink::Discard, "books")
            .await
            .unwrap();
        dl.record(&[Entry::new("books", &failure("1"), "0/16B3748".into())])
            .await
            .unwrap();
        dl.record(&[
            Entry::new("books", &failure("1"), "0/16B9999".into()),
            Entry::new("books", &failure("2"), "initial sync".into()),
        ])
        .await
        .unwrap();
        let all = dl.list().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0].position, "0/16B9999",
            "the newer entry replaces the older"
        );
        assert_eq!(all[0].document, Some(json!({"pages": "many"})));
        dl.accepted([String::from("2"), String::from("3")].iter())
            .await
            .unwrap();
        let reopened = DeadLetters::open(&cfg, &Sink::Discard, "books")
            .await
            .unwrap();
        let ids: Vec<String> = reopened
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.doc_id)
            .collect();
        assert_eq!(ids, vec!["1"]);
    }
}
