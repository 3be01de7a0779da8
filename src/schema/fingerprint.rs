//! What changed in an index's definition between the run that built its index and this one, and
//! whether the change needs a rebuild (the documents, or a static setting, change) or can be
//! applied to the live index in place (a mapping field added, a dynamic setting changed).

use serde_json::{Map, Value};

/// Settings the engines change on a live index (`PUT /{index}/_settings`).
const DYNAMIC_SETTINGS: &[&str] = &[
    "number_of_replicas",
    "refresh_interval",
    "max_result_window",
    "max_inner_result_window",
    "max_terms_count",
    "max_ngram_diff",
    "max_shingle_diff",
    "auto_expand_replicas",
    "gc_deletes",
    "default_pipeline",
    "final_pipeline",
];

/// A stable short hash of a definition (keys are sorted by serde_json's map).
pub fn fingerprint(definition: &Value) -> String {
    let text = serde_json::to_string(definition).expect("JSON serializes");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// How a definition changed.
#[derive(Debug, Clone, PartialEq)]
pub enum DefinitionChange {
    /// Nothing that matters.
    Unchanged,
    /// Applied to the live index: new mappings (a superset of the old) and dynamic settings.
    InPlace {
        /// The whole new mapping to PUT, when it grew.
        mappings: Option<Value>,
        /// Dynamic settings to PUT.
        settings: Map<String, Value>,
        /// What changed, for `pgsync plan`.
        changes: Vec<String>,
    },
    /// A new physical index is built and swapped in: the documents or a static setting change.
    Rebuild {
        /// What changed, for `pgsync plan` and the log.
        changes: Vec<String>,
    },
}

/// Compares the definition the live index was built with (`old`) with `new`; `mappings` are
/// the index bodies' `mappings` (generated from the definition) of each.
pub fn classify(old: &Value, new: &Value, old_body: &Value, new_body: &Value) -> DefinitionChange {
    let mut changes = vec![];
    diff("", old, new, &mut changes);
    if changes.is_empty() {
        return DefinitionChange::Unchanged;
    }
    let documents_change = [
        "database", "nodes", "routing", "pipeline", "plugins", "index",
    ]
    .iter()
    .any(|k| old.get(k) != new.get(k));
    let settings = dynamic_settings(old_body, new_body);
    let mappings_grew = is_superset(&new_body["mappings"], &old_body["mappings"]);
    if documents_change || settings.is_none() || !mappings_grew {
        return DefinitionChange::Rebuild { changes };
    }
    let mappings =
        (old_body["mappings"] != new_body["mappings"]).then(|| new_body["mappings"].clone());
    DefinitionChange::InPlace {
        mappings,
        settings: settings.unwrap_or_default(),
        changes,
    }
}

/// The changed dynamic settings, or `None` when a static one changed.
fn dynamic_settings(old_body: &Value, new_body: &Value) -> Option<Map<String, Value>> {
    let empty = Map::new();
    let old = old_body["settings"]["index"].as_object().unwrap_or(&empty);
    let new = new_body["settings"]["index"].as_object().unwrap_or(&empty);
    let mut out = Map::new();
    for k in old.keys().chain(new.keys()) {
        if old.get(k) == new.get(k) || out.contains_key(k) {
            continue;
        }
        if !DYNAMIC_SETTINGS.contains(&k.as_str()) {
            return None;
        }
        out.insert(k.clone(), new.get(k).cloned().unwrap_or(Value::Null));
    }
    Some(out)
}

/// Whether `big` contains everything `small` has (objects by key, other values equal).
fn is_superset(big: &Value, small: &Value) -> bool {
    match (big, small) {
        (_, Value::Null) => true,
        (Value::Object(b), Value::Object(s)) => s
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|bv| is_superset(bv, v))),
        (b, s) => b == s,
    }
}

/// Every path where `old` and `new` differ: `+ path`, `- path`, `~ path`.
fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = join(path, k);
                match b.get(k) {
                    Some(w) => diff(&p, v, w, out),
                    None => out.push(format!("- {p}")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("+ {}", join(path, k)));
            }
        }
        (a, b) if a != b => out.push(format!(
            "~ {}: {} -> {}",
            if path.is_empty() { "." } else { path },
            short(a),
            short(b)
        )),
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let mut end = 77;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(columns: Value) -> Value {
        json!({"database": "db", "index": "books", "nodes": {"table": "book", "columns": columns}})
    }

    #[test]
    fn fingerprints_ignore_key_order_and_see_any_change() {
        let a: Value = serde_json::from_str(r#"{"index":"b","database":"d"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"database":"d","index":"b"}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&json!({"database": "d", "index": "c"}))
        );
    }

    #[test]
    fn a_new_column_rebuilds_and_says_where() {
        let (old, new) = (def(json!(["id"])), def(json!(["id", "title"])));
        let body = json!({});
        match classify(&old, &new, &body, &body) {
            DefinitionChange::Rebuild { changes } => {
                assert_eq!(
                    changes,
                    vec![r#"~ nodes.columns: ["id"] -> ["id","title"]"#]
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_added_mapping_field_and_a_dynamic_setting_apply_in_place() {
        let old = json!({"index": "b", "mapping": {"a": {"type": "keyword"}}});
        let new = json!({"index": "b", "mapping": {"a": {"type": "keyword"}, "b": {"type": "text"}},
                          "setting": {"refresh_interval": "5s"}});
        let old_body = json!({"mappings": {"properties": {"a": {"type": "keyword"}}}});
        let new_body = json!({"settings": {"index": {"refresh_interval": "5s"}},
                               "mappings": {"properties": {"a": {"type": "keyword"}, "b": {"type": "text"}}}});
        match classify(&old, &new, &old_body, &new_body) {
            DefinitionChange::InPlace {
                mappings, settings, ..
            } => {
                assert_eq!(mappings.unwrap()["properties"]["b"]["type"], "text");
                assert_eq!(settings["refresh_interval"], "5s");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_changed_mapping_type_or_a_static_setting_rebuilds() {
        let old = json!({"mapping": {"a": {"type": "keyword"}}});
        let new = json!({"mapping": {"a": {"type": "text"}}});
        let ob = json!({"mappings": {"properties": {"a": {"type": "keyword"}}}});
        let nb = json!({"mappings": {"properties": {"a": {"type": "text"}}}});
        assert!(matches!(
            classify(&old, &new, &ob, &nb),
            DefinitionChange::Rebuild { .. }
        ));
        let nb =
            json!({"settings": {"index": {"number_of_shards": 3}}, "mappings": ob["mappings"]});
        let new =
            json!({"mapping": {"a": {"type": "keyword"}}, "setting": {"number_of_shards": 3}});
        assert!(matches!(
            classify(&old, &new, &ob, &nb),
            DefinitionChange::Rebuild { .. }
        ));
        assert_eq!(classify(&old, &old, &ob, &ob), DefinitionChange::Unchanged);
    }
}
