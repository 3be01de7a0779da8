//! Reading `_bulk` responses. Almost every response says `"errors":false`; that case is decided
//! from the first bytes without parsing the items.

use super::ItemFailure;
use crate::{Error, ErrorKind, Result};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The per-item verdict of one bulk response.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ParsedBulk {
    /// Items applied (including deletes of missing documents).
    pub succeeded: usize,
    /// Items refused because the engine holds a newer version of the document (409 on a
    /// versioned action): the end state is right, nothing to retry or record.
    pub stale: usize,
    /// Items rejected for good.
    pub failures: Vec<ItemFailure>,
    /// Positions (in the batch sent) of items rejected with 429 or 5xx: worth re-sending.
    pub retry: Vec<usize>,
    /// The reason of the first retryable item, for the message when retries run out.
    pub retry_reason: Option<String>,
}

/// Reads `"errors": <bool>` when it comes before `"items"` in the first bytes, as it does for
/// Elasticsearch (`{"took":…,"errors":…`) and OpenSearch; `None` means "look properly".
fn errors_flag_fast(body: &[u8]) -> Option<bool> {
    const KEY: &[u8] = b"\"errors\"";
    let head = &body[..body.len().min(256)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)?;
    if head[..at].contains(&b'[') {
        return None; // already inside "items": not the top-level flag
    }
    let rest = head[at + KEY.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    if rest.starts_with(b"false") {
        Some(false)
    } else if rest.starts_with(b"true") {
        Some(true)
    } else {
        None
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    errors: bool,
    #[serde(borrow, default)]
    items: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Parses a 2xx `_bulk` response for a batch whose actions had `ids`, in order.
pub(crate) fn parse_bulk_response(body: &[u8], ids: &[String]) -> Result<ParsedBulk> {
    let all_ok = ParsedBulk {
        succeeded: ids.len(),
        ..ParsedBulk::default()
    };
    if errors_flag_fast(body) == Some(false) {
        return Ok(all_ok);
    }
    let env: Envelope = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::SinkRejected,
            format!("bulk response is not valid JSON: {e}"),
        )
    })?;
    if !env.errors {
        return Ok(all_ok);
    }
    let items: Vec<BTreeMap<String, Item>> = match env.items {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| {
            Error::new(
                ErrorKind::SinkRejected,
                format!("bulk response items are not understood: {e}"),
            )
        })?,
        None => Vec::new(),
    };
    if items.len() != ids.len() {
        return Err(Error::new(
            ErrorKind::SinkRejected,
            format!(
                "bulk response has {} items for {} actions",
                items.len(),
                ids.len()
            ),
        ));
    }
    let mut out = ParsedBulk::default();
    for (pos, (item, id)) in items.iter().zip(ids).enumerate() {
        let Some((op, r)) = item.iter().next() else {
            return Err(Error::new(
                ErrorKind::SinkRejected,
                format!("bulk response item {pos} (document {id:?}) is empty"),
            ));
        };
        let ok = (200..300).contains(&r.status) || (op == "delete" && r.status == 404);
        if ok {
            out.succeeded += 1;
        } else if r.status == 409 && is_version_conflict(r.error.as_ref()) {
            out.stale += 1;
        } else if r.status == 429 || r.status >= 500 {
            out.retry.push(pos);
            if out.retry_reason.is_none() {
                out.retry_reason = Some(format!(
                    "document {id:?}: {} {}",
                    r.status,
                    error_text(r.error.as_ref())
                ));
            }
        } else {
            out.failures.push(ItemFailure {
                id: id.clone(),
                position: pos,
                status: r.status,
                reason: error_text(r.error.as_ref()),
                document: None,
            });
        }
    }
    Ok(out)
}

/// A 409 from a versioned write: the engine already holds this or a newer version.
fn is_version_conflict(error: Option<&serde_json::Value>) -> bool {
    error
        .and_then(|e| e["type"].as_str())
        .is_some_and(|t| t == "version_conflict_engine_exception")
}

/// `type: reason (caused by type: reason)` from an engine error object (or its text, for engines
/// that answer a bare string).
pub(crate) fn error_text(error: Option<&serde_json::Value>) -> String {
    fn one(e: &serde_json::Value) -> String {
        match (e["type"].as_str(), e["reason"].as_str()) {
            (Some(t), Some(r)) => format!("{t}: {r}"),
            (Some(t), None) => t.to_owned(),
            (None, Some(r)) => r.to_owned(),
            (None, None) => e.to_string(),
        }
    }
    match error {
        None => "no error details".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(e) => {
            let mut s = one(e);
            if let Some(c) = e.get("caused_by").filter(|c| c.is_object()) {
                s.push_str(&format!(" (caused by {})", one(c)));
            }
            s
        }
    }
}

/// The `error` of a non-2xx answer as text; falls back to the start of the body.
pub(crate) fn error_body_text(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.get("error").is_some() => error_text(v.get("error")),
        _ => {
            let s = String::from_utf8_lossy(body);
            let s = s.trim();
            if s.is_empty() {
                "empty body".to_owned()
            } else if s.len() > 300 {
                let mut end = 300;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &s[..end])
            } else {
                s.to_owned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| i.to_string()).collect()
    }

    #[test]
    fn fast_path_reads_the_flag_without_items() {
        // Elasticsearch order, OpenSearch/osmem order, filter_path output, whitespace.
        assert_eq!(
            errors_flag_fast(br#"{"took":3,"errors":false,"items":[x"#),
            Some(false)
        );
        assert_eq!(
            errors_flag_fast(br#"{"errors":false,"items":"#),
            Some(false)
        );
        assert_eq!(errors_flag_fast(b"{\n  \"errors\" : true,"), Some(true));
        // "errors" inside an item (not top level) is not the flag.
        assert_eq!(
            errors_flag_fast(br#"{"items":[{"index":{"errors":false}}],"errors":true}"#),
            None
        );
        // Items are deliberately malformed: the fast path must not look at them.
        let p =
            parse_bulk_response(br#"{"took":1,"errors":false,"items":[not json"#, &ids(3)).unwrap();
        assert_eq!(p.succeeded, 3);
    }

    #[test]
    fn slow_path_when_flag_is_late() {
        let body = br#"{"items":[{"index":{"status":201}}],"errors":false}"#;
        assert_eq!(parse_bulk_response(body, &ids(1)).unwrap().succeeded, 1);
    }

    #[test]
    fn item_failures_retries_and_missing_deletes() {
        // What osmem answers (sorted keys), trimmed.
        let body = br#"{"errors":true,"items":[
            {"index":{"_id":"1","status":201}},
            {"index":{"_id":"2","error":{"caused_by":{"reason":"For input string: \"abc\"","type":"illegal_argument_exception"},"reason":"failed to parse field [n] of type [long]","type":"mapper_parsing_exception"},"status":400}},
            {"delete":{"_id":"3","result":"not_found","status":404}},
            {"index":{"_id":"4","error":{"type":"es_rejected_execution_exception","reason":"queue full"},"status":429}},
            {"update":{"_id":"5","error":{"type":"document_missing_exception","reason":"[5]: document missing"},"status":404}},
            {"create":{"_id":"6","error":{"type":"version_conflict_engine_exception","reason":"conflict"},"status":409}},
            {"index":{"_id":"7","error":"something odd","status":503}}
        ],"took":1}"#;
        let p = parse_bulk_response(body, &ids(7)).unwrap();
        assert_eq!(p.succeeded, 2);
        assert_eq!(
            p.stale, 1,
            "a version conflict is a newer version already there"
        );
        assert_eq!(p.retry, vec![3, 6]);
        assert!(p
            .retry_reason
            .unwrap()
            .contains("es_rejected_execution_exception"));
        assert_eq!(p.failures.len(), 2);
        assert_eq!(p.failures[0].id, "2");
        assert_eq!(p.failures[0].status, 400);
        assert_eq!(
            p.failures[0].reason,
            "mapper_parsing_exception: failed to parse field [n] of type [long] \
             (caused by illegal_argument_exception: For input string: \"abc\")"
        );
        assert_eq!(
            (p.failures[1].id.as_str(), p.failures[1].status),
            ("5", 404)
        );
        assert_eq!(p.failures[1].position, 4);
    }

    #[test]
    fn item_count_mismatch_is_an_error() {
        let body = br#"{"errors":true,"items":[{"index":{"status":400}}]}"#;
        assert!(parse_bulk_response(body, &ids(2)).is_err());
        assert!(parse_bulk_response(b"<html>", &ids(1)).is_err());
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_body_text(br#"{"error":{"type":"x","reason":"y"},"status":400}"#),
            "x: y"
        );
        assert_eq!(
            error_body_text(
                br#"{"error":"Content-Type header [a] is not supported","status":406}"#
            ),
            "Content-Type header [a] is not supported"
        );
        assert_eq!(error_body_text(b"Bad Gateway"), "Bad Gateway");
        assert_eq!(error_body_text(b""), "empty body");
    }
}
