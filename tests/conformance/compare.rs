//! Document comparison for the conformance suite: documents by `_id`, a
//! per-field diff with readable paths, arrays that PostgreSQL aggregated
//! compared as multisets, `_meta` compared with its value lists sorted.
//!
//! Paths: `title`, `publisher_label.publisher_name`, `tags[2]` (an ordered
//! array: a column value), `authors[].name` (an element of an aggregated
//! array, matched regardless of position), `_meta.book.id`.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One expected document of a dump: `{"_id", "_source", "_meta"}`.
#[derive(Debug, Clone)]
pub struct ExpectedDoc {
    pub source: Value,
    pub meta: Option<Value>,
}

/// `{index: [doc, ...]}` as written by the fixture generator.
pub type Dump = BTreeMap<String, BTreeMap<String, ExpectedDoc>>;

/// Parses a fixture dump (`initial.json`, `after.json`, `resync.json`).
pub fn parse_dump(text: &str) -> Result<Dump, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("top level is not an object {index: [docs]}")?;
    let mut dump = Dump::new();
    for (index, docs) in obj {
        let docs = docs
            .as_array()
            .ok_or_else(|| format!("{index}: not an array of documents"))?;
        let mut by_id = BTreeMap::new();
        for (i, d) in docs.iter().enumerate() {
            let id = match d.get("_id") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => return Err(format!("{index}[{i}]: no _id")),
            };
            let source = d
                .get("_source")
                .cloned()
                .ok_or_else(|| format!("{index}[{i}]: no _source"))?;
            let meta = d.get("_meta").cloned();
            if by_id
                .insert(id.clone(), ExpectedDoc { source, meta })
                .is_some()
            {
                return Err(format!("{index}: duplicate _id {id}"));
            }
        }
        dump.insert(index.clone(), by_id);
    }
    Ok(dump)
}

/// Where arrays are aggregations (order not meaningful): the key paths
/// (object keys from the document root, array levels skipped) of every
/// `one_to_many` child node of the schema, for one index.
#[derive(Debug, Clone, Default)]
pub struct ArrayRules {
    multiset: BTreeSet<Vec<String>>,
}

impl ArrayRules {
    /// Reads the schema.json node tree of the entry whose `index` is
    /// `index` (PGSync defaults the index to the database name).
    pub fn from_schema(schema: &Value, index: &str) -> ArrayRules {
        let mut rules = ArrayRules::default();
        for entry in schema.as_array().into_iter().flatten() {
            let name = entry
                .get("index")
                .or_else(|| entry.get("database"))
                .and_then(Value::as_str);
            if name == Some(index) {
                if let Some(root) = entry.get("nodes") {
                    rules.walk(root, &[]);
                }
            }
        }
        rules
    }

    fn walk(&mut self, node: &Value, at: &[String]) {
        // A parent's `transform.rename` renames its children's labels too.
        let rename = node
            .pointer("/transform/rename")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for child in node
            .get("children")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let label = child
                .get("label")
                .or_else(|| child.get("table"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let label = rename
                .get(label)
                .and_then(Value::as_str)
                .unwrap_or(label)
                .to_string();
            let mut path = at.to_vec();
            path.push(label);
            let many =
                child.pointer("/relationship/type").and_then(Value::as_str) == Some("one_to_many");
            if many {
                self.multiset.insert(path.clone());
            }
            self.walk(child, &path);
        }
    }

    fn is_multiset(&self, keys: &[String]) -> bool {
        // Every array of `_meta` is a list of key values: a set.
        keys.first().map(String::as_str) == Some("_meta") || self.multiset.contains(keys)
    }
}

/// One difference between expected and actual.
#[derive(Debug, Clone)]
pub struct Diff {
    /// The document, `None` for index-level problems.
    pub id: Option<String>,
    /// Field path inside the document (empty for whole-document problems).
    pub path: String,
    /// What differs.
    pub what: String,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.id, self.path.is_empty()) {
            (Some(id), false) => write!(f, "_id={id} {}: {}", self.path, self.what),
            (Some(id), true) => write!(f, "_id={id}: {}", self.what),
            (None, _) => write!(f, "{}", self.what),
        }
    }
}

/// Compares one index: `actual` is `_id -> _source` as read back from the
/// search engine, with `_meta` still inside `_source` (split out here).
pub fn compare_index(
    expected: &BTreeMap<String, ExpectedDoc>,
    actual: &BTreeMap<String, Value>,
    rules: &ArrayRules,
) -> Vec<Diff> {
    let mut diffs = vec![];
    for (id, exp) in expected {
        let Some(act) = actual.get(id) else {
            diffs.push(Diff {
                id: Some(id.clone()),
                path: String::new(),
                what: format!("missing document (expected _source {})", short(&exp.source)),
            });
            continue;
        };
        let mut act_source = act.clone();
        let act_meta = act_source.as_object_mut().and_then(|o| o.remove("_meta"));
        let mut found = vec![];
        diff_value(
            &exp.source,
            &act_source,
            &mut Vec::new(),
            &mut String::new(),
            rules,
            &mut found,
        );
        match (&exp.meta, &act_meta) {
            (Some(e), Some(a)) => diff_value(
                e,
                a,
                &mut vec!["_meta".into()],
                &mut "_meta".into(),
                rules,
                &mut found,
            ),
            (Some(e), None) => {
                found.push(("_meta".into(), format!("missing (expected {})", short(e))))
            }
            (None, Some(a)) => {
                found.push(("_meta".into(), format!("unexpected (got {})", short(a))))
            }
            (None, None) => {}
        }
        diffs.extend(found.into_iter().map(|(path, what)| Diff {
            id: Some(id.clone()),
            path,
            what,
        }));
    }
    for (id, act) in actual {
        if !expected.contains_key(id) {
            diffs.push(Diff {
                id: Some(id.clone()),
                path: String::new(),
                what: format!("unexpected document (got _source {})", short(act)),
            });
        }
    }
    diffs
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON text cut to a readable length.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 240 {
        let cut: String = s.chars().take(240).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// Numbers are equal when their values are: `1` and `1.0` are the same
/// number to the search engine (and to PGSync's Python `json`).
fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether two values are equal under the same rules as [`diff_value`].
fn equal(a: &Value, b: &Value, keys: &mut Vec<String>, rules: &ArrayRules) -> bool {
    let mut found = vec![];
    diff_value(a, b, keys, &mut String::new(), rules, &mut found);
    found.is_empty()
}

/// Appends `(path, what)` for every difference between `exp` and `act`.
/// `keys` is the key path (for [`ArrayRules`]), `path` the display path.
fn diff_value(
    exp: &Value,
    act: &Value,
    keys: &mut Vec<String>,
    path: &mut String,
    rules: &ArrayRules,
    out: &mut Vec<(String, String)>,
) {
    match (exp, act) {
        (Value::Object(e), Value::Object(a)) => diff_object(e, a, keys, path, rules, out),
        (Value::Array(e), Value::Array(a)) if rules.is_multiset(keys) => {
            diff_multiset(e, a, keys, path, rules, out)
        }
        (Value::Array(e), Value::Array(a)) => {
            let len = path.len();
            for i in 0..e.len().max(a.len()) {
                path.push_str(&format!("[{i}]"));
                match (e.get(i), a.get(i)) {
                    (Some(x), Some(y)) => diff_value(x, y, keys, path, rules, out),
                    (Some(x), None) => out.push((
                        path.clone(),
                        format!("missing element (expected {})", short(x)),
                    )),
                    (None, Some(y)) => out.push((
                        path.clone(),
                        format!("unexpected element (got {})", short(y)),
                    )),
                    (None, None) => unreachable!(),
                }
                path.truncate(len);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            if !numbers_equal(x, y) {
                out.push((path.clone(), format!("expected {x}, got {y}")));
            }
        }
        (e, a) if e == a => {}
        (e, a) if kind(e) != kind(a) => out.push((
            path.clone(),
            format!(
                "expected {} {}, got {} {}",
                kind(e),
                short(e),
                kind(a),
                short(a)
            ),
        )),
        (e, a) => out.push((
            path.clone(),
            format!("expected {}, got {}", short(e), short(a)),
        )),
    }
}

fn diff_object(
    e: &Map<String, Value>,
    a: &Map<String, Value>,
    keys: &mut Vec<String>,
    path: &mut String,
    rules: &ArrayRules,
    out: &mut Vec<(String, String)>,
) {
    let names: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
    for name in names {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
        keys.push(name.clone());
        match (e.get(name), a.get(name)) {
            (Some(x), Some(y)) => diff_value(x, y, keys, path, rules, out),
            (Some(x), None) => out.push((
                path.clone(),
                format!("missing field (expected {})", short(x)),
            )),
            (None, Some(y)) => {
                out.push((path.clone(), format!("unexpected field (got {})", short(y))))
            }
            (None, None) => unreachable!(),
        }
        keys.pop();
        path.truncate(len);
    }
}

/// Arrays whose order is not meaningful: equal elements are matched
/// first; what is left is paired by likeness (most equal top-level fields)
/// and diffed field by field; the rest is listed as missing or unexpected.
fn diff_multiset(
    e: &[Value],
    a: &[Value],
    keys: &mut Vec<String>,
    path: &mut String,
    rules: &ArrayRules,
    out: &mut Vec<(String, String)>,
) {
    let mut a_left: Vec<Option<&Value>> = a.iter().map(Some).collect();
    let mut e_left = vec![];
    for x in e {
        let hit = a_left
            .iter()
            .position(|y| y.is_some_and(|y| equal(x, y, keys, rules)));
        match hit {
            Some(i) => a_left[i] = None,
            None => e_left.push(x),
        }
    }
    let mut a_left: Vec<&Value> = a_left.into_iter().flatten().collect();
    let len = path.len();
    path.push_str("[]");
    for x in e_left {
        if a_left.is_empty() {
            out.push((
                path.clone(),
                format!("missing element (expected {})", short(x)),
            ));
            continue;
        }
        let best = (0..a_left.len())
            .max_by_key(|&i| (likeness(x, a_left[i], keys, rules), std::cmp::Reverse(i)))
            .unwrap();
        let y = a_left.remove(best);
        diff_value(x, y, keys, path, rules, out);
    }
    for y in a_left {
        out.push((
            path.clone(),
            format!("unexpected element (got {})", short(y)),
        ));
    }
    path.truncate(len);
}

/// How many top-level fields two objects share with equal values.
fn likeness(x: &Value, y: &Value, keys: &mut Vec<String>, rules: &ArrayRules) -> usize {
    match (x, y) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .filter(|(k, v)| {
                b.get(*k).is_some_and(|w| {
                    keys.push((*k).clone());
                    let same = equal(v, w, keys, rules);
                    keys.pop();
                    same
                })
            })
            .count(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(exp: Value, act: Value, schema: Value) -> Vec<String> {
        let rules = ArrayRules::from_schema(&schema, "i");
        let mut out = vec![];
        diff_value(
            &exp,
            &act,
            &mut vec![],
            &mut String::new(),
            &rules,
            &mut out,
        );
        out.into_iter().map(|(p, w)| format!("{p}: {w}")).collect()
    }

    fn schema() -> Value {
        json!([{"database": "d", "index": "i", "nodes": {"table": "t", "children": [
            {"table": "a", "label": "authors", "relationship": {"type": "one_to_many"},
             "children": [{"table": "c", "relationship": {"type": "one_to_many"}}]},
            {"table": "p", "relationship": {"type": "one_to_one"}}
        ]}}])
    }

    #[test]
    fn aggregated_arrays_ignore_order_column_arrays_do_not() {
        let exp =
            json!({"authors": [{"id": 1, "c": [1, 2]}, {"id": 2, "c": []}], "tags": ["a", "b"]});
        let act =
            json!({"authors": [{"id": 2, "c": []}, {"id": 1, "c": [2, 1]}], "tags": ["b", "a"]});
        assert_eq!(
            run(exp, act, schema()),
            vec![
                r#"tags[0]: expected "a", got "b""#,
                r#"tags[1]: expected "b", got "a""#
            ]
        );
    }

    #[test]
    fn changed_element_of_a_multiset_is_diffed_by_field() {
        let exp = json!({"authors": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]});
        let act = json!({"authors": [{"id": 2, "name": "y"}, {"id": 1, "name": "z"}, {"id": 3, "name": "w"}]});
        assert_eq!(
            run(exp, act, schema()),
            vec![
                r#"authors[].name: expected "x", got "z""#.to_string(),
                r#"authors[]: unexpected element (got {"id":3,"name":"w"})"#.to_string(),
            ]
        );
    }

    #[test]
    fn numbers_compare_by_value_and_types_strictly() {
        let exp = json!({"a": 1, "b": "1", "p": null, "m": 1.5});
        let act = json!({"a": 1.0, "b": 1, "m": 1.5, "x": true});
        assert_eq!(
            run(exp, act, schema()),
            vec![
                r#"b: expected string "1", got number 1"#,
                "p: missing field (expected null)",
                "x: unexpected field (got true)",
            ]
        );
    }

    #[test]
    fn meta_lists_are_sets_and_documents_are_matched_by_id() {
        let dump = parse_dump(
            r#"{"i": [{"_id": "1", "_source": {"n": 1}, "_meta": {"t": {"id": [1, 2]}}},
                      {"_id": "2", "_source": {"n": 2}, "_meta": {}}]}"#,
        )
        .unwrap();
        let mut actual = BTreeMap::new();
        actual.insert(
            "1".to_string(),
            json!({"n": 1, "_meta": {"t": {"id": [2, 1]}}}),
        );
        actual.insert("3".to_string(), json!({"n": 3}));
        let diffs: Vec<String> = compare_index(&dump["i"], &actual, &ArrayRules::default())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            diffs,
            vec![
                r#"_id=2: missing document (expected _source {"n":2})"#,
                r#"_id=3: unexpected document (got _source {"n":3})"#,
            ]
        );
    }
}
