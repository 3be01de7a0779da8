//! Building and splitting NDJSON bulk bodies. The builders run once per document, so they write
//! bytes directly; splitting only runs when some items of a batch must be re-sent.

use crate::{Error, Result};
use std::ops::Range;

/// Appends `s` as a JSON string literal (quotes included), escaping `"`, `\` and control
/// characters; everything else, including non-ASCII UTF-8, is copied as is.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[(b >> 4) as usize]);
            buf.push(HEX[(b & 0xf) as usize]);
        } else {
            buf.extend_from_slice(esc);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Which document an action is about, and how the engine must apply it. Every action of the
/// pipeline carries an external version (see the README's "Failure handling"): the engine keeps
/// the highest, so a replay or a late writer never puts an older document over a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Index (or alias) name.
    pub index: &'a str,
    /// Document `_id`.
    pub id: &'a str,
    /// Shard routing; a delete must carry the routing the document was indexed with.
    pub routing: Option<&'a str>,
    /// External version (`version_type=external_gte`), when versioned.
    pub version: Option<u64>,
}

impl<'a> Target<'a> {
    /// An unrouted, unversioned target.
    pub fn new(index: &'a str, id: &'a str) -> Self {
        Target {
            index,
            id,
            routing: None,
            version: None,
        }
    }

    /// With a routing value.
    pub fn routing(mut self, routing: Option<&'a str>) -> Self {
        self.routing = routing;
        self
    }

    /// With an external version.
    pub fn version(mut self, version: Option<u64>) -> Self {
        self.version = version;
        self
    }
}

/// Writes `{"<op>":{"_index":…,"_id":…[,"routing":…][,"version":…,"version_type":"external_gte"]
/// [,"pipeline":…]}}\n`. No `_type`: it is gone from Elasticsearch 8+ and OpenSearch 2+, and
/// optional in 7 / 1. `version` and `version_type` are bulk action metadata in Elasticsearch 7–9
/// and OpenSearch 1–3 alike.
fn push_action_line(buf: &mut Vec<u8>, op: &str, t: Target<'_>, pipeline: Option<&str>) {
    buf.extend_from_slice(b"{\"");
    buf.extend_from_slice(op.as_bytes());
    buf.extend_from_slice(b"\":{\"_index\":");
    push_json_str(buf, t.index);
    buf.extend_from_slice(b",\"_id\":");
    push_json_str(buf, t.id);
    if let Some(r) = t.routing {
        buf.extend_from_slice(b",\"routing\":");
        push_json_str(buf, r);
    }
    if let Some(v) = t.version {
        buf.extend_from_slice(b",\"version\":");
        buf.extend_from_slice(v.to_string().as_bytes());
        buf.extend_from_slice(b",\"version_type\":\"external_gte\"");
    }
    if let Some(p) = pipeline {
        buf.extend_from_slice(b",\"pipeline\":");
        push_json_str(buf, p);
    }
    buf.extend_from_slice(b"}}\n");
}

/// Appends an `index` action and its document to a bulk body. `source_json` must be one JSON
/// object; raw line breaks in it (only possible as whitespace, e.g. a pretty-printed `json`
/// column embedded by PostgreSQL) are turned into spaces so the body stays valid NDJSON.
pub fn push_index_action(
    buf: &mut Vec<u8>,
    target: Target<'_>,
    pipeline: Option<&str>,
    source_json: &[u8],
) {
    push_action_line(buf, "index", target, pipeline);
    let src = source_json.trim_ascii();
    if src.contains(&b'\n') || src.contains(&b'\r') {
        buf.extend(src.iter().map(|&b| match b {
            b'\n' | b'\r' => b' ',
            b => b,
        }));
    } else {
        buf.extend_from_slice(src);
    }
    buf.push(b'\n');
}

/// Appends a `delete` action (no document line) to a bulk body. Routing must match the one used
/// when indexing, or the delete goes to the wrong shard.
pub fn push_delete_action(buf: &mut Vec<u8>, target: Target<'_>) {
    push_action_line(buf, "delete", target, None);
}

/// The byte range (with line ends) of every action of a bulk body: one line for `delete`, two
/// for `index`, `create` and `update`. Lets a retry re-send only some actions.
pub(crate) fn split_actions(body: &[u8]) -> Result<Vec<Range<usize>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    let next_line = |from: usize| -> usize {
        match body[from..].iter().position(|&b| b == b'\n') {
            Some(i) => from + i + 1,
            None => body.len(),
        }
    };
    while pos < body.len() {
        let start = pos;
        let line_end = next_line(pos);
        let line = body[start..line_end].trim_ascii();
        if line.is_empty() {
            pos = line_end;
            continue;
        }
        let op = first_key(line).ok_or_else(|| {
            Error::internal(format!(
                "bulk body: action line at byte {start} is not a JSON object with an operation"
            ))
        })?;
        pos = if op == b"delete" {
            line_end
        } else {
            if line_end >= body.len() {
                return Err(Error::internal(format!(
                    "bulk body: `{}` action at byte {start} has no document line",
                    String::from_utf8_lossy(op)
                )));
            }
            next_line(line_end)
        };
        out.push(start..pos);
    }
    Ok(out)
}

/// The first key of a JSON object line (`{"index":…` → `index`); operation names never contain
/// escapes.
fn first_key(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"{")?.trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn index_action_plain() {
        let mut buf = Vec::new();
        push_index_action(&mut buf, Target::new("books", "42"), None, br#"{"a":1}"#);
        assert_eq!(
            buf,
            b"{\"index\":{\"_index\":\"books\",\"_id\":\"42\"}}\n{\"a\":1}\n"
        );
    }

    #[test]
    fn index_action_routing_pipeline_and_escaping() {
        let mut buf = Vec::new();
        let id = "a\"b\\c\nd\te\u{1}f\u{7f}é|😀";
        push_index_action(
            &mut buf,
            Target::new("bo\"oks", id).routing(Some("r\"1")),
            Some("pipe"),
            b"{\n  \"x\": \"y\"\r\n}\n",
        );
        let text = std::str::from_utf8(&buf).unwrap();
        assert_eq!(text.matches('\n').count(), 2, "{text}");
        let v = lines(&buf);
        assert_eq!(v[0]["index"]["_index"], "bo\"oks");
        assert_eq!(v[0]["index"]["_id"], id);
        assert_eq!(v[0]["index"]["routing"], "r\"1");
        assert_eq!(v[0]["index"]["pipeline"], "pipe");
        assert_eq!(v[1]["x"], "y");
        assert!(
            text.contains("\\u0001") && text.contains("\\u007f"),
            "{text}"
        );
    }

    #[test]
    fn versioned_actions_carry_an_external_gte_version() {
        let mut buf = Vec::new();
        let t = Target::new("books", "7").version(Some(123456789));
        push_index_action(&mut buf, t, None, b"{}");
        push_delete_action(&mut buf, t.routing(Some("r")));
        let v = lines(&buf);
        assert_eq!(v[0]["index"]["version"], 123456789);
        assert_eq!(v[0]["index"]["version_type"], "external_gte");
        assert_eq!(v[2]["delete"]["version"], 123456789);
        assert_eq!(v[2]["delete"]["routing"], "r");
    }

    #[test]
    fn delete_action() {
        let mut buf = Vec::new();
        push_delete_action(&mut buf, Target::new("books", "7").routing(Some("p")));
        push_delete_action(&mut buf, Target::new("books", "8"));
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "{\"delete\":{\"_index\":\"books\",\"_id\":\"7\",\"routing\":\"p\"}}\n\
             {\"delete\":{\"_index\":\"books\",\"_id\":\"8\"}}\n"
        );
    }

    #[test]
    fn split_finds_each_action() {
        let mut buf = Vec::new();
        push_index_action(&mut buf, Target::new("i", "1"), None, b"{}");
        push_delete_action(&mut buf, Target::new("i", "2"));
        push_index_action(&mut buf, Target::new("i", "3"), None, br#"{"delete":1}"#);
        buf.extend_from_slice(b"{ \"update\":{\"_index\":\"i\",\"_id\":\"4\"}}\n{\"doc\":{}}");
        let r = split_actions(&buf).unwrap();
        assert_eq!(r.len(), 4);
        assert!(buf[r[1].clone()].starts_with(b"{\"delete\""));
        assert!(buf[r[2].clone()].ends_with(b"{\"delete\":1}\n"));
        assert_eq!(r[3].end, buf.len());
        assert!(split_actions(b"{\"index\":{}}\n").is_err());
        assert!(split_actions(b"garbage\n").is_err());
    }
}
