//! Typesense as a target: one collection per index, documents upserted through the import API
//! (`action=upsert`, one JSON line per document) and deleted by id. Typesense's `id` must be a
//! string, so it is the document's `_id` (replacing a top-level `id` field of the `_source`).
//! The collection's schema comes from the index's mapping (the rest stored, not indexed) or is
//! all auto-detected; nested fields are enabled either way.
//!
//! Within one batch only the last action of each `_id` is sent (Typesense keeps no versions:
//! the end state is what matters); the writer never has two batches holding the same `_id` in
//! flight, so the order of a document's changes holds.

use super::events::{decode, DocEvent, Op};
use super::http::{Answer, HttpTarget};
use super::{BulkBatch, BulkOutcome, ItemFailure};
use crate::config::{OutputConfig, TypesenseSchema};
use crate::{Error, ErrorKind, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Deletes sent at once.
const DELETES_IN_FLIGHT: usize = 8;

/// A Typesense server.
#[derive(Clone, Debug)]
pub struct TypesenseSink {
    http: HttpTarget,
    api_key: String,
    schema: TypesenseSchema,
}

impl TypesenseSink {
    /// The server at `output.url` with `output.api_key`. No network I/O.
    pub fn new(cfg: &OutputConfig) -> Result<TypesenseSink> {
        Ok(TypesenseSink {
            http: HttpTarget::new(cfg, "typesense")?,
            api_key: cfg
                .api_key
                .as_ref()
                .map(|k| k.expose().to_owned())
                .unwrap_or_default(),
            schema: cfg.collection_schema,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<bytes::Bytes>,
    ) -> Result<Answer> {
        let url = self.http.url(path);
        let what = format!("{method} {path}");
        let answer = self
            .http
            .send(&what, |c| {
                let r = c
                    .request(method.clone(), &url)
                    .header("X-TYPESENSE-API-KEY", &self.api_key);
                match &body {
                    Some(b) => r.body(b.clone()),
                    None => r,
                }
            })
            .await?;
        if answer.status == 401 || answer.status == 403 {
            return Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "typesense at {} refused {what}: {} {}",
                    self.http.shown(),
                    answer.status,
                    answer.text()
                ),
            )
            .with_hint("check output.api_key"));
        }
        Ok(answer)
    }

    fn rejected(&self, what: &str, a: &Answer) -> Error {
        Error::new(
            ErrorKind::SinkRejected,
            format!(
                "typesense at {} answered {} to {what}: {}",
                self.http.shown(),
                a.status,
                a.text()
            ),
        )
    }

    /// `GET /health`.
    pub async fn check(&self) -> Result<()> {
        let a = self.call(reqwest::Method::GET, "/health", None).await?;
        if a.ok() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::SinkTransient,
            format!(
                "typesense at {} is not healthy: {} {}",
                self.http.shown(),
                a.status,
                a.text()
            ),
        ))
    }

    /// Creates the collection `index` from the index `body` when missing (true), or after
    /// deleting it when `recreate`.
    pub async fn ensure_index(&self, index: &str, body: &Value, recreate: bool) -> Result<bool> {
        let path = collection_path(index);
        let a = self.call(reqwest::Method::GET, &path, None).await?;
        if a.ok() && !recreate {
            return Ok(false);
        }
        if a.ok() {
            self.delete_index(index).await?;
        }
        let schema = collection_schema(index, body, self.schema);
        self.create(&schema).await?;
        Ok(true)
    }

    async fn create(&self, schema: &Value) -> Result<()> {
        let body = bytes::Bytes::from(schema.to_string());
        let a = self
            .call(reqwest::Method::POST, "/collections", Some(body))
            .await?;
        match a.status {
            s if (200..300).contains(&s) => Ok(()),
            409 => Ok(()),
            _ => Err(self.rejected("POST /collections", &a).with_hint(
                "check the index's mapping, or set output.collection_schema = \"auto\"",
            )),
        }
    }

    /// Applies a batch: the last action of each `_id` (upserts in one import, deletes by id).
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        let events = last_per_id(decode(&batch)?);
        let (upserts, deletes): (Vec<_>, Vec<_>) =
            events.into_iter().partition(|e| e.op == Op::Index);
        let mut out = BulkOutcome::default();
        let (failures, retries) = self.import(&upserts).await?;
        out.retries = retries;
        for chunk in deletes.chunks(DELETES_IN_FLIGHT) {
            let retried =
                futures::future::try_join_all(chunk.iter().map(|e| self.delete(e))).await?;
            out.retries += retried.iter().sum::<u32>();
        }
        out.succeeded = batch.len() - failures.len();
        out.failures = failures;
        Ok(out)
    }

    /// One import of `docs`; answers the documents refused and the retries.
    async fn import(&self, docs: &[DocEvent]) -> Result<(Vec<ItemFailure>, u32)> {
        let Some(index) = docs.first().map(|e| e.index.as_str()) else {
            return Ok((vec![], 0));
        };
        let mut body = Vec::new();
        for e in docs {
            body.extend_from_slice(&with_id(e)?);
            body.push(b'\n');
        }
        let path = format!("{}/documents/import?action=upsert", collection_path(index));
        let a = self
            .call(reqwest::Method::POST, &path, Some(body.into()))
            .await?;
        if !a.ok() {
            return Err(self.rejected(&format!("POST {path}"), &a));
        }
        let lines: Vec<&[u8]> = a
            .body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if lines.len() != docs.len() {
            return Err(Error::new(
                ErrorKind::SinkTransient,
                format!(
                    "typesense import into {index} answered {} lines for {} documents",
                    lines.len(),
                    docs.len()
                ),
            ));
        }
        let mut failures = Vec::new();
        for (e, line) in docs.iter().zip(lines) {
            let r: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            if r["success"] == true {
                continue;
            }
            let code = r["code"].as_u64().unwrap_or(400) as u16;
            if code == 429 || code >= 500 {
                return Err(Error::new(
                    ErrorKind::SinkTransient,
                    format!(
                        "typesense import into {index}: document {} answered {code}: {}",
                        e.id, r["error"]
                    ),
                ));
            }
            failures.push(ItemFailure {
                id: e.id.clone(),
                position: e.action,
                status: code,
                reason: r["error"].as_str().unwrap_or("rejected").to_owned(),
                document: Some(e.doc_json().to_owned()),
            });
        }
        Ok((failures, a.retries))
    }

    /// Deletes one document; a missing one is fine.
    async fn delete(&self, e: &DocEvent) -> Result<u32> {
        let path = format!("{}/documents/{}", collection_path(&e.index), encode(&e.id));
        let a = self.call(reqwest::Method::DELETE, &path, None).await?;
        match a.status {
            200..=299 | 404 => Ok(a.retries),
            _ => Err(self.rejected(&format!("DELETE {path}"), &a)),
        }
    }

    /// Empties `index`: the collection is re-created with the schema it has now.
    pub async fn delete_all_documents(&self, index: &str) -> Result<()> {
        let path = collection_path(index);
        let a = self.call(reqwest::Method::GET, &path, None).await?;
        if a.status == 404 {
            return Ok(());
        }
        if !a.ok() {
            return Err(self.rejected(&format!("GET {path}"), &a));
        }
        let current: Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let schema = json!({
            "name": index,
            "fields": current["fields"],
            "enable_nested_fields": true,
        });
        self.delete_index(index).await?;
        self.create(&schema).await
    }

    /// Deletes the collection; a missing one is fine.
    pub async fn delete_index(&self, index: &str) -> Result<()> {
        let path = collection_path(index);
        let a = self.call(reqwest::Method::DELETE, &path, None).await?;
        match a.status {
            200..=299 | 404 => Ok(()),
            _ => Err(self.rejected(&format!("DELETE {path}"), &a)),
        }
    }
}

fn collection_path(index: &str) -> String {
    format!("/collections/{}", encode(index))
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The last event of each `_id`, in the order of those last events.
fn last_per_id(events: Vec<DocEvent>) -> Vec<DocEvent> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        last.insert(e.id.clone(), i);
    }
    events
        .into_iter()
        .enumerate()
        .filter(|(i, e)| last[&e.id] == *i)
        .map(|(_, e)| e)
        .collect()
}

/// The document with Typesense's string `id` set to its `_id`.
fn with_id(e: &DocEvent) -> Result<Vec<u8>> {
    let mut doc: Map<String, Value> = serde_json::from_str(e.doc_json())
        .map_err(|err| Error::internal(format!("document {} is not a JSON object: {err}", e.id)))?;
    doc.insert("id".into(), Value::String(e.id.clone()));
    Ok(serde_json::to_vec(&doc).expect("a map serializes"))
}

/// The collection schema of `index`, nested fields enabled. `Mapping`: the top-level fields the
/// mapping types are indexed (all optional); every other field is stored whole but not indexed,
/// so any document round-trips (Typesense refuses, in indexed fields, arrays holding `null`
/// and values of another type than the first document's). A schema needs one field, so with
/// none mapped an unindexed placeholder stands in. `Auto`: a `.*` auto field indexes
/// everything, within those limits (a document beyond them is dead-lettered).
pub fn collection_schema(index: &str, body: &Value, mode: TypesenseSchema) -> Value {
    let mut fields = Vec::new();
    match mode {
        TypesenseSchema::Mapping => {
            if let Some(props) = body["mappings"]["properties"].as_object() {
                for (name, m) in props {
                    if let Some(t) = m["type"].as_str().and_then(typesense_type) {
                        fields.push(json!({"name": name, "type": t, "optional": true}));
                    }
                }
            }
            if fields.is_empty() {
                fields.push(
                    json!({"name": UNINDEXED, "type": "string", "optional": true, "index": false}),
                );
            }
        }
        TypesenseSchema::Auto => {
            fields.push(json!({"name": ".*", "type": "auto", "optional": true}));
        }
    }
    json!({"name": index, "fields": fields, "enable_nested_fields": true})
}

/// The placeholder field of a collection whose mapping types no field.
const UNINDEXED: &str = "_pgsync_unindexed";

/// The Typesense type of an Elasticsearch field type; `None` leaves the field to auto-detection.
fn typesense_type(es: &str) -> Option<&'static str> {
    Some(match es {
        // Elasticsearch strings may hold one value or an array of them.
        "text" | "keyword" | "wildcard" | "constant_keyword" | "match_only_text" => "string*",
        "long" | "integer" | "short" | "byte" | "unsigned_long" => "int64",
        "double" | "float" | "half_float" | "scaled_float" => "float",
        "boolean" => "bool",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_indexes_mapped_fields_and_auto_detects_only_in_auto_mode() {
        let body = json!({"mappings": {"properties": {
            "title": {"type": "text"}, "price": {"type": "scaled_float"},
            "n": {"type": "long"}, "when": {"type": "date"}, "a": {"properties": {}}
        }}});
        let s = collection_schema("book", &body, TypesenseSchema::Mapping);
        assert_eq!(s["enable_nested_fields"], true);
        let names: Vec<_> = s["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [("n", "int64"), ("price", "float"), ("title", "string*"),]
        );
        let auto = collection_schema("book", &body, TypesenseSchema::Auto);
        assert_eq!(auto["fields"][0]["type"], "auto");
        let none = collection_schema("book", &json!({}), TypesenseSchema::Mapping);
        assert_eq!(none["fields"][0]["index"], false);
    }

    #[test]
    fn only_the_last_change_of_a_document_in_a_batch_is_sent() {
        let ev = |id: &str, op| DocEvent {
            id: id.into(),
            op,
            ..DocEvent::truncate("i")
        };
        let out = last_per_id(vec![
            ev("1", Op::Index),
            ev("2", Op::Index),
            ev("1", Op::Delete),
        ]);
        let got: Vec<_> = out.iter().map(|e| (e.id.as_str(), e.op)).collect();
        assert_eq!(got, [("2", Op::Index), ("1", Op::Delete)]);
    }
}
