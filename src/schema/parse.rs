//! Parses `schema.json` into [`SchemaFile`], reporting every problem with its JSON path.
//!
//! The file is read into an order-keeping JSON tree (objects as key/value lists, so `rename` and
//! `replace` keep the file's order without serde_json's `preserve_order`), `${VAR}` references in
//! string values are substituted, and then every document is checked in one pass that records
//! problems instead of stopping at the first. Nothing here needs the database; `resolve.rs` does
//! the checks that do.

use super::model::{
    ConcatSpec, ForeignKeySpec, IndexSpec, NodeSpec, RelationType, RelationshipSpec, SchemaFile,
    SchemaProblem, TransformSpec, Variant,
};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a `schema.json` could not be turned into a [`SchemaFile`]; each variant names the file so
/// the operator knows which one to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// The file could not be read (missing, no permission, not UTF-8).
    Unreadable {
        /// The schema file.
        path: PathBuf,
        /// The operating system's explanation.
        reason: String,
    },
    /// The file is not JSON at all; nothing else can be checked until this is fixed.
    InvalidJson {
        /// The schema file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the JSON parser expected.
        reason: String,
    },
    /// Valid JSON that is not a valid PGSync schema: every problem found, in file order.
    Problems {
        /// The schema file.
        path: PathBuf,
        /// Each with its JSON path, what was found and what is allowed.
        problems: Vec<SchemaProblem>,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::Unreadable { path, reason } => {
                write!(f, "{}: cannot read the schema: {reason}", path.display())
            }
            SchemaError::InvalidJson {
                path,
                line,
                column,
                reason,
            } => write!(
                f,
                "{}:{line}:{column}: invalid JSON: {reason}",
                path.display()
            ),
            SchemaError::Problems { path, problems } => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}: {p}", path.display())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SchemaError {}

impl From<SchemaError> for crate::Error {
    fn from(e: SchemaError) -> Self {
        let err = crate::Error::schema(e.to_string());
        match e {
            SchemaError::Unreadable { .. } => {
                err.with_hint("check [schema] path in the configuration")
            }
            _ => err,
        }
    }
}

/// Reads and parses the schema at `path`, substituting `${VAR}` from the process environment.
pub fn parse_file(path: &Path) -> Result<SchemaFile, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|e| SchemaError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse_str(&text, path)
}

/// Parses schema text; `path` is only used in messages and [`SchemaFile::path`].
pub fn parse_str(text: &str, path: &Path) -> Result<SchemaFile, SchemaError> {
    parse_str_with_env(text, path, &|name| std::env::var(name).ok())
}

/// Like [`parse_str`], with `${VAR}` looked up through `env` instead of the process environment,
/// for callers that take variables from elsewhere (a `.env` file, tests).
pub fn parse_str_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SchemaFile, SchemaError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let json: Json = serde_json::from_str(text).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let suffix = format!(" at line {line} column {column}");
        SchemaError::InvalidJson {
            path: path.to_owned(),
            line,
            column,
            reason: full.strip_suffix(&suffix).unwrap_or(&full).to_owned(),
        }
    })?;
    let mut checker = Checker::default();
    let mut docs = match json {
        Json::Array(items) if items.is_empty() => {
            checker.report(TOP_LEVEL, "an empty array", TOP_LEVEL_EXPECTED);
            vec![]
        }
        Json::Array(items) => items,
        // Not accepted by PGSync 7.3 (it iterates the top level); harmless to accept here.
        obj @ Json::Object(_) => vec![obj],
        other => {
            checker.report(TOP_LEVEL, describe(&other), TOP_LEVEL_EXPECTED);
            vec![]
        }
    };
    for (i, doc) in docs.iter_mut().enumerate() {
        prepare(doc, &index_path("", i), env, &mut checker);
    }
    let indices: Vec<IndexSpec> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, doc)| checker.document(doc, index_path("", i)))
        .collect();
    if checker.problems.is_empty() {
        Ok(SchemaFile {
            path: path.to_owned(),
            indices,
            warnings: checker.warnings,
        })
    } else {
        Err(SchemaError::Problems {
            path: path.to_owned(),
            problems: checker.problems,
        })
    }
}

const TOP_LEVEL: &str = "top level";
const TOP_LEVEL_EXPECTED: &str =
    "a non-empty array of index definitions (objects with \"database\" and \"nodes\")";
const DOCUMENT_KEYS: &[&str] = &[
    "database", "index", "nodes", "setting", "mapping", "mappings", "routing", "pipeline",
    "plugins",
];
const NODE_KEYS: &[&str] = &[
    "table",
    "schema",
    "columns",
    "label",
    "primary_key",
    "relationship",
    "children",
    "transform",
    "base_tables",
];
const RELATIONSHIP_KEYS: &[&str] = &["variant", "type", "foreign_key", "through_tables"];
const FOREIGN_KEY_KEYS: &[&str] = &["child", "parent"];
const TRANSFORM_KEYS: &[&str] = &["rename", "replace", "concat", "mapping", "move"];
const CONCAT_KEYS: &[&str] = &["columns", "destination", "delimiter"];
const VARIANTS: &[&str] = &["object", "scalar"];
const TYPES: &[&str] = &["one_to_one", "one_to_many"];
const NON_EMPTY: &str = "a non-empty string";
const OBJECT: &str = "an object";
const STRINGS: &str = "an array of strings";
const COLUMN_NAMES: &str = "a non-empty array of column names";
const DOCUMENT: &str = "an object with \"database\" and \"nodes\"";
const DATABASE: &str = "a non-empty string (the PostgreSQL database name)";
const INDEX: &str = "a non-empty string (the search index name)";
const ROOT: &str = "an object (the root node)";
const NODE: &str = "an object with at least \"table\"";
const TABLE: &str = "a non-empty string (the table or view name)";
const CHILDREN: &str = "an array of node objects";
const RELATIONSHIP: &str = "an object with \"variant\" and \"type\" (every child node needs one)";
const ROOT_RELATIONSHIP: &str = "no relationship on the root node (only children join a parent)";
const FOREIGN_KEY: &str = "an object with \"child\" and \"parent\" column arrays";
const THROUGH: &str = "an array of at most one table name";
const RENAME: &str = "an object {column: new_name}";
const NEW_NAME: &str = "a non-empty string (the new field name)";
const REPLACE: &str = "an object {column: {old: new}}";
const REPLACE_PAIRS: &str = "an object {old: new} of strings";
const CONCAT: &str = "an object with \"columns\" and \"destination\", or an array of them";
const CONCAT_ITEM: &str = "an object with \"columns\" and \"destination\"";
const CONCAT_COLUMNS: &str = "a non-empty array of field names or literal strings";
const MAPPING: &str = "an object {field: mapping}";
const FIELD_MAPPING: &str = "an object (a field mapping such as {\"type\": \"keyword\"})";
/// Longest string value quoted in full in a problem's "found".
const MAX_SHOWN_CHARS: usize = 60;

/// A JSON value whose objects keep the file's key order (and, until [`prepare`], duplicates).
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The serde_json value, for pass-through parts (settings, mappings) where order is moot.
    fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(entries) => Value::Object(to_map(entries)),
        }
    }
}

fn to_map(entries: &[(String, Json)]) -> Map<String, Value> {
    entries
        .iter()
        .map(|(k, v)| (k.clone(), v.to_value()))
        .collect()
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

/// Before any check: reports duplicate keys (keeping the last value at the first position, as
/// Python's `json` does) and substitutes `${VAR}` in every string value.
fn prepare(value: &mut Json, path: &str, env: &dyn Fn(&str) -> Option<String>, c: &mut Checker) {
    match value {
        Json::String(s) => substitute(s, path, env, c),
        Json::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                prepare(item, &index_path(path, i), env, c);
            }
        }
        Json::Object(entries) => {
            let mut unique: Vec<(String, Json)> = Vec::with_capacity(entries.len());
            let mut position: HashMap<String, usize> = HashMap::new();
            for (k, v) in entries.drain(..) {
                match position.get(&k) {
                    Some(&i) => {
                        c.report(
                            key_path(path, &k),
                            format!("the key {} twice", quote(&k)),
                            "each key once",
                        );
                        unique[i].1 = v;
                    }
                    None => {
                        position.insert(k.clone(), unique.len());
                        unique.push((k, v));
                    }
                }
            }
            for (k, v) in unique.iter_mut() {
                prepare(v, &key_path(path, k), env, c);
            }
            *entries = unique;
        }
        Json::Null | Json::Bool(_) | Json::Number(_) => {}
    }
}

/// Replaces each `${NAME}` (NAME: letters, digits, `_`, not starting with a digit) with the
/// variable's value; an unset one is reported and left as written. Other `$` text is literal.
fn substitute(s: &mut String, path: &str, env: &dyn Fn(&str) -> Option<String>, c: &mut Checker) {
    if !s.contains("${") {
        return;
    }
    let original = s.clone();
    let mut out = String::with_capacity(s.len());
    let mut rest = original.as_str();
    let mut missing: Vec<&str> = vec![];
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name = after.find('}').map(|end| &after[..end]);
        match name {
            Some(name) if is_var_name(name) => {
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        if !missing.contains(&name) {
                            missing.push(name);
                        }
                        out.push_str(&rest[start..start + 3 + name.len()]);
                    }
                }
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    for name in missing {
        c.report(
            path,
            format!("{} ({name} is not set)", quote(&original)),
            format!("{name} set in the environment"),
        );
    }
    *s = out;
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `base.key`, or `base["key"]` when the key is not a plain identifier.
fn key_path(base: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (plain, base.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{base}.{key}"),
        (false, _) => format!("{base}[{}]", Value::String(key.to_owned())),
    }
}

fn index_path(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// A string as JSON, shortened with `…` past [`MAX_SHOWN_CHARS`].
fn quote(s: &str) -> String {
    let shown = if s.chars().count() > MAX_SHOWN_CHARS {
        let mut t: String = s.chars().take(MAX_SHOWN_CHARS - 1).collect();
        t.push('…');
        t
    } else {
        s.to_owned()
    };
    Value::String(shown).to_string()
}

/// What a problem's "found" says about a value: scalars as written, containers by kind.
fn describe(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => quote(s),
        Json::Array(items) if items.is_empty() => "an empty array".into(),
        Json::Array(_) => "an array".into(),
        Json::Object(entries) if entries.is_empty() => "an empty object".into(),
        Json::Object(_) => "an object".into(),
    }
}

fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| quote(o)).collect();
    format!("one of {}", quoted.join(", "))
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// An object of the schema with its JSON path.
struct Obj<'a> {
    entries: &'a [(String, Json)],
    path: String,
}

/// A value (`None` when its key is absent) with its JSON path.
type Slot<'a> = (Option<&'a Json>, String);

impl<'a> Obj<'a> {
    fn slot(&self, key: &str) -> Slot<'a> {
        let value = self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        (value, self.at(key))
    }

    fn at(&self, key: &str) -> String {
        key_path(&self.path, key)
    }
}

/// Collects problems while building the typed model. Each getter reports a present value of the
/// wrong kind and returns `None` for it; absence is only a problem after [`Checker::require`].
#[derive(Default)]
struct Checker {
    problems: Vec<SchemaProblem>,
    /// What PGSync ignores: reported, fatal only for `validate --strict`.
    warnings: Vec<SchemaProblem>,
}

impl Checker {
    fn report(
        &mut self,
        path: impl Into<String>,
        found: impl Into<String>,
        allowed: impl Into<String>,
    ) {
        self.problems.push(SchemaProblem {
            path: path.into(),
            found: found.into(),
            allowed: allowed.into(),
        });
    }

    fn known_keys(&mut self, o: &Obj<'_>, allowed: &[&str]) {
        for (k, _) in o.entries {
            if !allowed.contains(&k.as_str()) {
                self.report(
                    o.at(k),
                    format!("unknown key {}", quote(k)),
                    one_of(allowed),
                );
            }
        }
    }

    /// Keys PGSync ignores (document, transform and concat keys): a warning naming them.
    fn ignored_keys(&mut self, o: &Obj<'_>, allowed: &[&str]) {
        for (k, _) in o.entries {
            if !allowed.contains(&k.as_str()) {
                self.warnings.push(SchemaProblem {
                    path: o.at(k),
                    found: format!("unknown key {} (ignored, as PGSync does)", quote(k)),
                    allowed: one_of(allowed),
                });
            }
        }
    }

    /// `"label": null` means no label to PGSync (the table name is used): a warning.
    fn label(&mut self, o: &Obj<'_>) -> Option<String> {
        match o.slot("label") {
            (Some(Json::Null), path) => {
                self.warnings.push(SchemaProblem {
                    path,
                    found: "null (read as no label, as PGSync does)".into(),
                    allowed: NON_EMPTY.into(),
                });
                None
            }
            slot => self.text(slot, NON_EMPTY),
        }
    }

    /// Reports an absent value; passes the slot on either way.
    fn require<'a>(&mut self, slot: Slot<'a>, expected: &str) -> Slot<'a> {
        if slot.0.is_none() {
            self.report(&slot.1, "nothing", expected);
        }
        slot
    }

    fn object<'a>(&mut self, (v, path): Slot<'a>, expected: &str) -> Option<Obj<'a>> {
        match v? {
            Json::Object(entries) => Some(Obj { entries, path }),
            other => {
                self.report(path, describe(other), expected);
                None
            }
        }
    }

    /// A non-empty string.
    fn text(&mut self, (v, path): Slot<'_>, expected: &str) -> Option<String> {
        match v? {
            Json::String(s) if !s.is_empty() => Some(s.clone()),
            other => {
                self.report(path, describe(other), expected);
                None
            }
        }
    }

    fn required_text(&mut self, slot: Slot<'_>, expected: &str) -> Option<String> {
        let slot = self.require(slot, expected);
        self.text(slot, expected)
    }

    /// Any string, the empty one included.
    fn string(&mut self, (v, path): Slot<'_>) -> Option<String> {
        match v? {
            Json::String(s) => Some(s.clone()),
            other => {
                self.report(path, describe(other), "a string");
                None
            }
        }
    }

    /// An array of non-empty strings; bad elements are reported at their index and dropped.
    fn strings(&mut self, (v, path): Slot<'_>, expected: &str) -> Option<Vec<String>> {
        match v? {
            Json::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| {
                        self.text((Some(item), index_path(&path, i)), NON_EMPTY)
                    })
                    .collect(),
            ),
            other => {
                self.report(path, describe(other), expected);
                None
            }
        }
    }

    /// A present, non-empty array of non-empty strings.
    fn required_strings(&mut self, slot: Slot<'_>, expected: &str) -> Option<Vec<String>> {
        let (v, path) = self.require(slot, expected);
        if matches!(v, Some(Json::Array(items)) if items.is_empty()) {
            self.report(path, "an empty array", expected);
            return None;
        }
        self.strings((v, path), expected)
    }

    /// One of `options`, required, exactly as written (PGSync compares before lower-casing).
    fn choice<'o>(&mut self, (v, path): Slot<'_>, options: &[&'o str]) -> Option<&'o str> {
        let found = match v {
            Some(Json::String(s)) => match options.iter().find(|o| **o == s) {
                Some(o) => return Some(o),
                None => quote(s),
            },
            Some(other) => describe(other),
            None => "nothing".into(),
        };
        self.report(path, found, one_of(options));
        None
    }

    /// One element of the top-level array.
    fn document(&mut self, doc: &Json, path: String) -> Option<IndexSpec> {
        let o = self.object((Some(doc), path), DOCUMENT)?;
        self.ignored_keys(&o, DOCUMENT_KEYS);
        let database = self.required_text(o.slot("database"), DATABASE);
        let index = self.text(o.slot("index"), INDEX);
        let root = self.require(o.slot("nodes"), ROOT);
        let nodes = self.object(root, ROOT).and_then(|n| self.node(n, true));
        let setting = self.object(o.slot("setting"), OBJECT);
        let mapping = self.object(o.slot("mapping"), OBJECT);
        let mappings = self.object(o.slot("mappings"), OBJECT);
        let routing = self.text(o.slot("routing"), NON_EMPTY);
        let pipeline = self.text(o.slot("pipeline"), NON_EMPTY);
        let plugins = self.strings(o.slot("plugins"), STRINGS);
        let (database, nodes) = (database?, nodes?);
        Some(IndexSpec {
            path: o.path,
            index: index.unwrap_or_else(|| database.clone()),
            database,
            nodes,
            setting: setting.map(|s| Value::Object(to_map(s.entries))),
            mapping: mapping.map(|m| to_map(m.entries)),
            mappings: mappings.map(|m| Value::Object(to_map(m.entries))),
            routing,
            pipeline,
            plugins: plugins.unwrap_or_default(),
            raw: doc.to_value(),
        })
    }

    /// A node object and, recursively, its children.
    fn node(&mut self, o: Obj<'_>, is_root: bool) -> Option<NodeSpec> {
        self.known_keys(&o, NODE_KEYS);
        let table = self.required_text(o.slot("table"), TABLE);
        let schema = self.text(o.slot("schema"), NON_EMPTY);
        let columns = self.strings(o.slot("columns"), STRINGS).unwrap_or_default();
        if let (Some(Json::Array(items)), path) = o.slot("columns") {
            self.duplicate_columns(items, &path);
        }
        let label = self.label(&o);
        let primary_key = self.strings(o.slot("primary_key"), STRINGS);
        let base_tables = self.strings(o.slot("base_tables"), STRINGS);
        let relationship = match o.slot("relationship") {
            (Some(v), path) if is_root => {
                self.report(path, describe(v), ROOT_RELATIONSHIP);
                None
            }
            (None, _) if is_root => None,
            slot => {
                let slot = self.require(slot, RELATIONSHIP);
                self.object(slot, RELATIONSHIP)
                    .and_then(|r| self.relationship(&r))
            }
        };
        if let Some(rel) = &relationship {
            if rel.variant == Variant::Scalar && !columns.is_empty() && columns.len() != 1 {
                self.report(
                    o.at("columns"),
                    plural(columns.len(), "column"),
                    "exactly one column for a scalar relationship",
                );
            }
        }
        let transform = self
            .object(o.slot("transform"), OBJECT)
            .map(|t| self.transform(&t));
        let children: Vec<NodeSpec> = match o.slot("children") {
            (Some(Json::Array(items)), path) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let child = self.object((Some(item), index_path(&path, i)), NODE)?;
                    self.node(child, false)
                })
                .collect(),
            (Some(other), path) => {
                self.report(path, describe(other), CHILDREN);
                vec![]
            }
            (None, _) => vec![],
        };
        let transform = transform.unwrap_or_default();
        self.duplicate_labels(&children);
        self.rename_collisions(&o.path, &columns, &transform.rename, &children);
        Some(NodeSpec {
            path: o.path,
            table: table?,
            schema: schema.unwrap_or_else(|| "public".to_owned()),
            columns,
            label,
            primary_key: primary_key.unwrap_or_default(),
            relationship,
            children,
            transform,
            base_tables: base_tables.unwrap_or_default(),
        })
    }

    /// A later copy of a column is reported at its index.
    fn duplicate_columns(&mut self, items: &[Json], path: &str) {
        for (i, item) in items.iter().enumerate() {
            let Json::String(name) = item else { continue };
            if let Some(first) = items[..i].iter().position(|o| o == item) {
                self.report(
                    index_path(path, i),
                    format!("{}, also at columns[{first}]", quote(name)),
                    "each column once",
                );
            }
        }
    }

    /// Two siblings with the same label would write the same field of the parent document.
    fn duplicate_labels(&mut self, children: &[NodeSpec]) {
        for (i, child) in children.iter().enumerate() {
            if let Some(first) = children[..i].iter().find(|o| o.label() == child.label()) {
                let key = if child.label.is_some() {
                    "label"
                } else {
                    "table"
                };
                self.report(
                    key_path(&child.path, key),
                    format!(
                        "{}, already the label of {}",
                        quote(child.label()),
                        first.path
                    ),
                    "a label no sibling has (set \"label\" to tell them apart)",
                );
            }
        }
    }

    /// A rename target that another field of the node (a listed column that keeps its name,
    /// another rename target, a child's label) already has would overwrite it.
    fn rename_collisions(
        &mut self,
        path: &str,
        columns: &[String],
        rename: &[(String, String)],
        children: &[NodeSpec],
    ) {
        let renamed_away = |c: &str| rename.iter().any(|(s, d)| s == c && d != c);
        for (i, (src, dst)) in rename.iter().enumerate() {
            if src == dst {
                continue;
            }
            let earlier = rename[..i].iter().find(|(s, d)| d == dst && s != d);
            let found = if let Some((other, _)) = earlier {
                format!("{}, also the new name of {}", quote(dst), quote(other))
            } else if columns.iter().any(|c| c == dst && !renamed_away(c)) {
                format!("{}, already a column of this node", quote(dst))
            } else if let Some(child) = children.iter().find(|c| c.label() == dst) {
                format!("{}, already the label of {}", quote(dst), child.path)
            } else {
                continue;
            };
            let at = key_path(&key_path(&key_path(path, "transform"), "rename"), src);
            self.report(at, found, "a field name no other field of this node has");
        }
    }

    fn relationship(&mut self, o: &Obj<'_>) -> Option<RelationshipSpec> {
        self.known_keys(o, RELATIONSHIP_KEYS);
        let variant = self.choice(o.slot("variant"), VARIANTS);
        let kind = self.choice(o.slot("type"), TYPES);
        let foreign_key = self.object(o.slot("foreign_key"), FOREIGN_KEY);
        let foreign_key = foreign_key.and_then(|fk| self.foreign_key(&fk));
        let through_tables = self
            .strings(o.slot("through_tables"), THROUGH)
            .unwrap_or_default();
        if through_tables.len() > 1 {
            let names: Vec<String> = through_tables.iter().map(|t| quote(t)).collect();
            self.report(
                o.at("through_tables"),
                format!(
                    "{} ({})",
                    plural(through_tables.len(), "table"),
                    names.join(", ")
                ),
                "at most one table (PGSync supports a single through table)",
            );
        }
        Some(RelationshipSpec {
            variant: match variant? {
                "scalar" => Variant::Scalar,
                _ => Variant::Object,
            },
            kind: match kind? {
                "one_to_many" => RelationType::OneToMany,
                _ => RelationType::OneToOne,
            },
            foreign_key,
            through_tables,
        })
    }

    fn foreign_key(&mut self, o: &Obj<'_>) -> Option<ForeignKeySpec> {
        self.known_keys(o, FOREIGN_KEY_KEYS);
        let child = self.required_strings(o.slot("child"), COLUMN_NAMES);
        let parent = self.required_strings(o.slot("parent"), COLUMN_NAMES);
        let (child, parent) = (child?, parent?);
        if child.len() != parent.len() {
            self.report(
                &o.path,
                format!(
                    "{} and {}",
                    plural(child.len(), "child column"),
                    plural(parent.len(), "parent column")
                ),
                "as many parent columns as child columns (they pair up in order)",
            );
        }
        Some(ForeignKeySpec { child, parent })
    }

    fn transform(&mut self, o: &Obj<'_>) -> TransformSpec {
        self.ignored_keys(o, TRANSFORM_KEYS);
        let mut spec = TransformSpec::default();
        if let Some(rename) = self.object(o.slot("rename"), RENAME) {
            for (from, to) in rename.entries {
                if let Some(to) = self.text((Some(to), rename.at(from)), NEW_NAME) {
                    spec.rename.push((from.clone(), to));
                }
            }
        }
        if let Some(replace) = self.object(o.slot("replace"), REPLACE) {
            for (column, pairs) in replace.entries {
                let Some(pairs) = self.object((Some(pairs), replace.at(column)), REPLACE_PAIRS)
                else {
                    continue;
                };
                let pairs = pairs
                    .entries
                    .iter()
                    .filter_map(|(old, new)| {
                        Some((old.clone(), self.string((Some(new), pairs.at(old)))?))
                    })
                    .collect();
                spec.replace.push((column.clone(), pairs));
            }
        }
        match o.slot("concat") {
            (Some(Json::Array(items)), path) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(c) = self.object((Some(item), index_path(&path, i)), CONCAT_ITEM) {
                        spec.concat.extend(self.concat(&c));
                    }
                }
            }
            slot => {
                if let Some(c) = self.object(slot, CONCAT) {
                    spec.concat.extend(self.concat(&c));
                }
            }
        }
        if let Some(mapping) = self.object(o.slot("mapping"), MAPPING) {
            for (name, m) in mapping.entries {
                self.object((Some(m), mapping.at(name)), FIELD_MAPPING);
            }
            spec.mapping = Some(to_map(mapping.entries));
        }
        // `move` is accepted and ignored: PGSync 7.3 does not apply it either.
        spec
    }

    fn concat(&mut self, o: &Obj<'_>) -> Option<ConcatSpec> {
        self.ignored_keys(o, CONCAT_KEYS);
        let columns = self.required_strings(o.slot("columns"), CONCAT_COLUMNS);
        let destination = self.required_text(o.slot("destination"), NEW_NAME);
        let delimiter = self.string(o.slot("delimiter")).unwrap_or_default();
        Some(ConcatSpec {
            columns: columns?,
            destination: destination?,
            delimiter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<SchemaFile, SchemaError> {
        parse_str_with_env(text, Path::new("schema.json"), &no_env)
    }

    fn parsed(text: &str) -> SchemaFile {
        parse(text).unwrap_or_else(|e| panic!("expected a valid schema, got:\n{e}"))
    }

    /// Every problem as displayed (`path: found ...; expected ...`).
    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(SchemaError::Problems { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    /// One document whose root node is `nodes`.
    fn with_nodes(nodes: &str) -> String {
        format!(r#"[{{"database": "db", "nodes": {nodes}}}]"#)
    }

    /// A root `a` with the given children.
    fn with_children(children: &str) -> String {
        with_nodes(&format!(r#"{{"table": "a", "children": [{children}]}}"#))
    }

    /// A child `b` with an object/one_to_many relationship and extra keys.
    fn child(extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(
            r#"{{"table": "b", "relationship": {{"variant": "object", "type": "one_to_many"}}{sep}{extra}}}"#
        )
    }

    /// PGSync's fixture schema `name` from `../shared`, or `None` (said on stderr) when that
    /// directory is absent: CI always has it beside the checkout; a bare clone may not.
    fn fixture(name: &str) -> Option<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
        if !root.is_dir() {
            eprintln!(
                "SKIPPED: fixture directory {} is absent (CI has ../shared beside the clone)",
                root.display()
            );
            return None;
        }
        Some(root.join(name).join("schema.json"))
    }

    #[test]
    fn all_five_pgsync_fixture_schemas_parse_without_problems() {
        for name in ["book", "airbnb", "social", "through", "schemas"] {
            let Some(path) = fixture(name) else { return };
            let file = parse_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(file.indices.len(), 1, "{name}");
            assert_eq!(file.indices[0].database, name);
            assert_eq!(file.indices[0].path, "[0]");
            assert_eq!(file.indices[0].nodes.path, "[0].nodes");
        }
    }

    #[test]
    fn the_book_fixture_is_read_into_the_model_as_written() {
        let Some(path) = fixture("book") else { return };
        let file = parse_file(&path).unwrap();
        let index = &file.indices[0];
        assert_eq!(index.index, "book");
        assert!(index.setting.is_some() && index.mappings.is_some());
        assert!(index.mapping.as_ref().unwrap().contains_key("authors"));
        let root = &index.nodes;
        assert_eq!(
            (root.table.as_str(), root.schema.as_str()),
            ("book", "public")
        );
        assert!(root.relationship.is_none());
        assert_eq!(root.columns[7], "doc#>{a,b,c}->4");
        assert_eq!(
            root.transform.rename,
            [
                ("id", "book_id"),
                ("isbn", "book_isbn"),
                ("title", "book_title")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(
            root.transform.replace,
            vec![("isbn".to_owned(), vec![("00".to_owned(), "XX".to_owned())])]
        );
        let publisher = &root.children[0];
        assert_eq!(publisher.path, "[0].nodes.children[0]");
        assert_eq!(publisher.label(), "publisher_label");
        let rel = publisher.relationship.as_ref().unwrap();
        assert_eq!(
            (rel.variant, rel.kind),
            (Variant::Object, RelationType::OneToOne)
        );
        assert_eq!(
            rel.foreign_key,
            Some(ForeignKeySpec {
                child: vec!["id".into()],
                parent: vec!["publisher_id".into()],
            })
        );
        let concat = &publisher.transform.concat;
        assert_eq!(concat.len(), 2);
        assert_eq!(
            (concat[0].destination.as_str(), concat[0].delimiter.as_str()),
            ("xyz", "_")
        );
        assert_eq!(concat[1].columns[3], "bar");
        let languages = &root.children[3];
        let rel = languages.relationship.as_ref().unwrap();
        assert_eq!(
            (rel.variant, rel.kind),
            (Variant::Scalar, RelationType::OneToMany)
        );
        assert_eq!(rel.through_tables, ["book_language"]);
        let continent = &root.children[2].children[0].children[0].children[0];
        assert_eq!(
            continent.path,
            "[0].nodes.children[2].children[0].children[0].children[0]"
        );
        assert!(continent
            .transform
            .mapping
            .as_ref()
            .unwrap()
            .contains_key("name"));
    }

    #[test]
    fn rename_and_replace_keep_the_file_order_of_their_keys() {
        let file = parsed(&with_nodes(
            r#"{"table": "a", "columns": ["z", "b", "m"], "transform": {
                "rename": {"z": "z2", "b": "b2", "m": "m2"},
                "replace": {"z": {"y": "1", "a": "2"}, "b": {"c": "3"}}}}"#,
        ));
        let t = &file.indices[0].nodes.transform;
        let keys: Vec<&str> = t.rename.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "b", "m"]);
        let keys: Vec<&str> = t.replace.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "b"]);
        let olds: Vec<&str> = t.replace[0].1.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(olds, ["y", "a"]);
    }

    #[test]
    fn unknown_relationship_type_is_reported_with_its_path() {
        let text = with_children(&format!(
            r#"{}, {{"table": "c", "relationship": {{"variant": "object", "type": "one_to_few"}}}}"#,
            child("")
        ));
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"schema.json: [0].nodes.children[1].relationship.type: found "one_to_few"; expected one of "one_to_one", "one_to_many""#
        );
    }

    #[test]
    fn several_problems_are_all_reported_one_per_line_in_file_order() {
        let text = r#"[{"database": 5, "nodes": {"table": "a", "children": [
            {"table": "b", "relationship": {"variant": "objekt", "type": "one_to_one"}},
            {"table": "", "label": "x", "relationship": {"variant": "object"}}]}}]"#;
        let err = parse(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            [
                r#"schema.json: [0].database: found 5; expected a non-empty string (the PostgreSQL database name)"#,
                r#"schema.json: [0].nodes.children[0].relationship.variant: found "objekt"; expected one of "object", "scalar""#,
                r#"schema.json: [0].nodes.children[1].table: found ""; expected a non-empty string (the table or view name)"#,
                r#"schema.json: [0].nodes.children[1].relationship.type: found nothing; expected one of "one_to_one", "one_to_many""#,
            ]
            .join("\n")
        );
    }

    #[test]
    fn a_top_level_object_is_treated_as_a_one_element_list() {
        let file = parsed(r#"{"database": "db", "nodes": {"table": "a"}}"#);
        assert_eq!(file.indices.len(), 1);
        assert_eq!(file.indices[0].path, "[0]");
        assert_eq!(file.indices[0].nodes.path, "[0].nodes");
        assert_eq!(
            problems(r#"{"database": "db", "nodes": {}}"#),
            [
                r#"[0].nodes.table: found nothing; expected a non-empty string (the table or view name)"#
            ]
        );
    }

    #[test]
    fn an_empty_or_non_array_top_level_is_reported() {
        assert_eq!(
            problems("[]"),
            [
                r#"top level: found an empty array; expected a non-empty array of index definitions (objects with "database" and "nodes")"#
            ]
        );
        assert_eq!(
            problems(r#""db""#),
            [
                r#"top level: found "db"; expected a non-empty array of index definitions (objects with "database" and "nodes")"#
            ]
        );
    }

    #[test]
    fn a_top_level_element_that_is_not_an_object_is_reported() {
        assert_eq!(
            problems(r#"[{"database": "db", "nodes": {"table": "a"}}, [1]]"#),
            [r#"[1]: found an array; expected an object with "database" and "nodes""#]
        );
    }

    #[test]
    fn missing_database_and_nodes_are_reported() {
        assert_eq!(
            problems(r#"[{"index": "i"}]"#),
            [
                r#"[0].database: found nothing; expected a non-empty string (the PostgreSQL database name)"#,
                r#"[0].nodes: found nothing; expected an object (the root node)"#,
            ]
        );
        assert_eq!(
            problems(r#"[{"database": "db", "nodes": [{"table": "a"}]}]"#),
            [r#"[0].nodes: found an array; expected an object (the root node)"#]
        );
    }

    #[test]
    fn index_defaults_to_the_database_and_node_schema_to_public() {
        let file = parsed(&with_nodes(r#"{"table": "a"}"#));
        let index = &file.indices[0];
        assert_eq!(
            (index.index.as_str(), index.database.as_str()),
            ("db", "db")
        );
        assert_eq!(index.nodes.schema, "public");
        assert!(index.nodes.columns.is_empty() && index.plugins.is_empty());
        let file = parsed(r#"[{"database": "db", "index": "idx", "nodes": {"table": "a"}}]"#);
        assert_eq!(file.indices[0].index, "idx");
    }

    #[test]
    fn document_level_optional_keys_are_read_and_their_types_checked() {
        let file = parsed(
            r#"[{"database": "db", "nodes": {"table": "a"}, "setting": {"s": 1},
                "mapping": {"m": {"type": "nested"}}, "mappings": {"properties": {}},
                "routing": "r", "pipeline": "p", "plugins": ["Hero", "Villain"]}]"#,
        );
        let index = &file.indices[0];
        assert_eq!(index.setting, Some(serde_json::json!({"s": 1})));
        assert_eq!(index.mappings, Some(serde_json::json!({"properties": {}})));
        assert_eq!(index.routing.as_deref(), Some("r"));
        assert_eq!(index.pipeline.as_deref(), Some("p"));
        assert_eq!(index.plugins, ["Hero", "Villain"]);
        assert_eq!(
            problems(
                r#"[{"database": "db", "index": "", "nodes": {"table": "a"}, "setting": [],
                    "mapping": "m", "mappings": true, "routing": 1, "pipeline": null,
                    "plugins": ["ok", 2]}]"#
            ),
            [
                r#"[0].index: found ""; expected a non-empty string (the search index name)"#,
                r#"[0].setting: found an empty array; expected an object"#,
                r#"[0].mapping: found "m"; expected an object"#,
                r#"[0].mappings: found true; expected an object"#,
                r#"[0].routing: found 1; expected a non-empty string"#,
                r#"[0].pipeline: found null; expected a non-empty string"#,
                r#"[0].plugins[1]: found 2; expected a non-empty string"#,
            ]
        );
    }

    #[test]
    fn unknown_node_relationship_and_foreign_key_keys_list_the_allowed_keys() {
        // PGSync refuses these too (NodeAttributeError, RelationshipAttributeError).
        let text = r#"[{"database": "db", "nodes": {"table": "a", "colums": [],
            "children": [{"table": "b", "relationship": {"variant": "object", "type": "one_to_one",
                "through": ["t"], "foreign_key": {"child": ["x"], "parent": ["y"], "on": 1}}}]}}]"#;
        assert_eq!(
            problems(text),
            [
                r#"[0].nodes.colums: found unknown key "colums"; expected one of "table", "schema", "columns", "label", "primary_key", "relationship", "children", "transform", "base_tables""#,
                r#"[0].nodes.children[0].relationship.through: found unknown key "through"; expected one of "variant", "type", "foreign_key", "through_tables""#,
                r#"[0].nodes.children[0].relationship.foreign_key.on: found unknown key "on"; expected one of "child", "parent""#,
            ]
        );
    }

    #[test]
    fn what_pgsync_ignores_is_a_warning_not_a_problem() {
        let text = r#"[{"database": "db", "nodez": 1, "nodes": {"table": "a", "columns": ["x"],
            "transform": {"renam": {}, "concat": {"columns": ["x"], "destination": "d", "sep": "-"}},
            "children": [{"table": "b", "label": null,
                          "relationship": {"variant": "object", "type": "one_to_one"}}]}}]"#;
        let file = parsed(text);
        let warnings: Vec<String> = file.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                r#"[0].nodez: found unknown key "nodez" (ignored, as PGSync does); expected one of "database", "index", "nodes", "setting", "mapping", "mappings", "routing", "pipeline", "plugins""#,
                r#"[0].nodes.transform.renam: found unknown key "renam" (ignored, as PGSync does); expected one of "rename", "replace", "concat", "mapping", "move""#,
                r#"[0].nodes.transform.concat.sep: found unknown key "sep" (ignored, as PGSync does); expected one of "columns", "destination", "delimiter""#,
                r#"[0].nodes.children[0].label: found null (read as no label, as PGSync does); expected a non-empty string"#,
            ]
        );
        let b = &file.indices[0].nodes.children[0];
        assert_eq!((b.label.as_deref(), b.label()), (None, "b"));
    }

    #[test]
    fn node_keys_of_the_wrong_type_are_reported_at_their_paths() {
        let text = with_nodes(
            r#"{"table": ["a"], "schema": 1, "columns": "id", "label": {}, "primary_key": [1],
                "base_tables": "t", "transform": [], "children": {}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.table: found an array; expected a non-empty string (the table or view name)"#,
                r#"[0].nodes.schema: found 1; expected a non-empty string"#,
                r#"[0].nodes.columns: found "id"; expected an array of strings"#,
                r#"[0].nodes.label: found an empty object; expected a non-empty string"#,
                r#"[0].nodes.primary_key[0]: found 1; expected a non-empty string"#,
                r#"[0].nodes.base_tables: found "t"; expected an array of strings"#,
                r#"[0].nodes.transform: found an empty array; expected an object"#,
                r#"[0].nodes.children: found an empty object; expected an array of node objects"#,
            ]
        );
    }

    #[test]
    fn a_child_that_is_not_an_object_is_reported() {
        assert_eq!(
            problems(&with_children(r#""b""#)),
            [r#"[0].nodes.children[0]: found "b"; expected an object with at least "table""#]
        );
    }

    #[test]
    fn node_keys_are_read_into_the_model() {
        let file = parsed(&with_children(&child(
            r#""schema": "s", "columns": ["x", "y"], "label": "bs", "primary_key": ["x"],
               "base_tables": ["t1", "t2"]"#,
        )));
        let b = &file.indices[0].nodes.children[0];
        assert_eq!((b.schema.as_str(), b.label()), ("s", "bs"));
        assert_eq!(b.columns, ["x", "y"]);
        assert_eq!(b.primary_key, ["x"]);
        assert_eq!(b.base_tables, ["t1", "t2"]);
    }

    #[test]
    fn a_child_without_a_relationship_is_reported() {
        assert_eq!(
            problems(&with_children(r#"{"table": "b"}"#)),
            [
                r#"[0].nodes.children[0].relationship: found nothing; expected an object with "variant" and "type" (every child node needs one)"#
            ]
        );
        assert_eq!(
            problems(&with_children(
                r#"{"table": "b", "relationship": "object"}"#
            )),
            [
                r#"[0].nodes.children[0].relationship: found "object"; expected an object with "variant" and "type" (every child node needs one)"#
            ]
        );
    }

    #[test]
    fn a_relationship_on_the_root_is_reported() {
        assert_eq!(
            problems(&with_nodes(
                r#"{"table": "a", "relationship": {"variant": "object", "type": "one_to_one"}}"#
            )),
            [
                r#"[0].nodes.relationship: found an object; expected no relationship on the root node (only children join a parent)"#
            ]
        );
    }

    #[test]
    fn missing_or_unknown_variant_and_type_are_reported() {
        assert_eq!(
            problems(&with_children(r#"{"table": "b", "relationship": {}}"#)),
            [
                r#"[0].nodes.children[0].relationship.variant: found nothing; expected one of "object", "scalar""#,
                r#"[0].nodes.children[0].relationship.type: found nothing; expected one of "one_to_one", "one_to_many""#,
            ]
        );
        assert_eq!(
            problems(&with_children(
                r#"{"table": "b", "relationship": {"variant": "Object", "type": 1}}"#
            )),
            [
                r#"[0].nodes.children[0].relationship.variant: found "Object"; expected one of "object", "scalar""#,
                r#"[0].nodes.children[0].relationship.type: found 1; expected one of "one_to_one", "one_to_many""#,
            ]
        );
    }

    #[test]
    fn foreign_key_needs_non_empty_child_and_parent_string_arrays() {
        let rel = |fk: &str| {
            with_children(&format!(
                r#"{{"table": "b", "relationship": {{"variant": "object", "type": "one_to_one", "foreign_key": {fk}}}}}"#
            ))
        };
        let at = "[0].nodes.children[0].relationship.foreign_key";
        assert_eq!(
            problems(&rel(r#"["id"]"#)),
            [format!(
                r#"{at}: found an array; expected an object with "child" and "parent" column arrays"#
            )]
        );
        assert_eq!(
            problems(&rel(r#"{"child": ["id"]}"#)),
            [format!(
                r#"{at}.parent: found nothing; expected a non-empty array of column names"#
            )]
        );
        assert_eq!(
            problems(&rel(r#"{"child": [], "parent": "id"}"#)),
            [
                format!(
                    r#"{at}.child: found an empty array; expected a non-empty array of column names"#
                ),
                format!(r#"{at}.parent: found "id"; expected a non-empty array of column names"#),
            ]
        );
        assert_eq!(
            problems(&rel(r#"{"child": ["a", 2], "parent": ["x", ""]}"#)),
            [
                format!(r#"{at}.child[1]: found 2; expected a non-empty string"#),
                format!(r#"{at}.parent[1]: found ""; expected a non-empty string"#),
            ]
        );
    }

    #[test]
    fn foreign_key_child_and_parent_of_different_lengths_are_reported() {
        let text = with_children(
            r#"{"table": "b", "relationship": {"variant": "object", "type": "one_to_one",
                "foreign_key": {"child": ["a", "b"], "parent": ["x"]}}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.children[0].relationship.foreign_key: found 2 child columns and 1 parent column; expected as many parent columns as child columns (they pair up in order)"#
            ]
        );
    }

    #[test]
    fn more_than_one_through_table_is_reported() {
        let text = with_children(
            r#"{"table": "b", "relationship": {"variant": "object", "type": "one_to_many",
                "through_tables": ["t1", "t2"]}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.children[0].relationship.through_tables: found 2 tables ("t1", "t2"); expected at most one table (PGSync supports a single through table)"#
            ]
        );
        let text = with_children(
            r#"{"table": "b", "relationship": {"variant": "object", "type": "one_to_many",
                "through_tables": "t1"}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.children[0].relationship.through_tables: found "t1"; expected an array of at most one table name"#
            ]
        );
    }

    #[test]
    fn a_scalar_child_with_other_than_one_listed_column_is_reported() {
        let text = with_children(
            r#"{"table": "b", "columns": ["x", "y"],
                "relationship": {"variant": "scalar", "type": "one_to_many"}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.children[0].columns: found 2 columns; expected exactly one column for a scalar relationship"#
            ]
        );
        // No list means every column: only the database can tell, so resolve.rs checks that.
        parsed(&with_children(
            r#"{"table": "b", "relationship": {"variant": "scalar", "type": "one_to_many"}}"#,
        ));
    }

    #[test]
    fn duplicate_columns_are_reported_at_the_later_copy() {
        let text = with_nodes(r#"{"table": "a", "columns": ["id", "name", "id"]}"#);
        assert_eq!(
            problems(&text),
            [r#"[0].nodes.columns[2]: found "id", also at columns[0]; expected each column once"#]
        );
    }

    #[test]
    fn siblings_with_the_same_label_are_reported_at_the_later_sibling() {
        let text = with_children(&format!(
            r#"{}, {}, {}"#,
            child(r#""label": "items""#),
            r#"{"table": "c", "label": "items", "relationship": {"variant": "object", "type": "one_to_one"}}"#,
            child("")
        ));
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.children[1].label: found "items", already the label of [0].nodes.children[0]; expected a label no sibling has (set "label" to tell them apart)"#
            ]
        );
        let text = with_children(&format!("{}, {}", child(""), child("")));
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.children[1].table: found "b", already the label of [0].nodes.children[0]; expected a label no sibling has (set "label" to tell them apart)"#
            ]
        );
    }

    #[test]
    fn a_rename_target_that_another_field_already_has_is_reported() {
        let text = with_nodes(
            r#"{"table": "a", "columns": ["id", "name", "title", "code"],
                "transform": {"rename": {"id": "title", "name": "label", "code": "label"}},
                "children": [{"table": "b", "label": "kids",
                    "relationship": {"variant": "object", "type": "one_to_many"}}]}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.transform.rename.id: found "title", already a column of this node; expected a field name no other field of this node has"#,
                r#"[0].nodes.transform.rename.code: found "label", also the new name of "name"; expected a field name no other field of this node has"#,
            ]
        );
        let text = with_nodes(
            r#"{"table": "a", "transform": {"rename": {"id": "kids"}},
                "children": [{"table": "b", "label": "kids",
                    "relationship": {"variant": "object", "type": "one_to_many"}}]}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.transform.rename.id: found "kids", already the label of [0].nodes.children[0]; expected a field name no other field of this node has"#
            ]
        );
    }

    #[test]
    fn renaming_onto_a_column_that_is_itself_renamed_away_is_allowed() {
        let file = parsed(&with_nodes(
            r#"{"table": "a", "columns": ["a", "b"], "transform": {"rename": {"a": "b", "b": "c"}}}"#,
        ));
        assert_eq!(file.indices[0].nodes.transform.rename.len(), 2);
    }

    #[test]
    fn transform_parts_of_the_wrong_shape_are_reported() {
        let text = with_nodes(
            r#"{"table": "a", "transform": {"rename": {"id": 1, "doc->x": ""},
                "replace": {"code": "-", "name": {"a": 1}}, "mapping": {"id": "long"}}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.transform.rename.id: found 1; expected a non-empty string (the new field name)"#,
                r#"[0].nodes.transform.rename["doc->x"]: found ""; expected a non-empty string (the new field name)"#,
                r#"[0].nodes.transform.replace.code: found "-"; expected an object {old: new} of strings"#,
                r#"[0].nodes.transform.replace.name.a: found 1; expected a string"#,
                r#"[0].nodes.transform.mapping.id: found "long"; expected an object (a field mapping such as {"type": "keyword"})"#,
            ]
        );
        assert_eq!(
            problems(&with_nodes(
                r#"{"table": "a", "transform": {"rename": ["id"]}}"#
            )),
            [
                r#"[0].nodes.transform.rename: found an array; expected an object {column: new_name}"#
            ]
        );
    }

    #[test]
    fn concat_is_an_object_or_an_array_and_its_delimiter_defaults_to_empty() {
        let file = parsed(&with_nodes(
            r#"{"table": "a", "transform": {"concat": {"columns": ["x", "y"], "destination": "xy"}}}"#,
        ));
        let c = &file.indices[0].nodes.transform.concat;
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].destination.as_str(), c[0].delimiter.as_str()),
            ("xy", "")
        );
        let file = parsed(&with_nodes(
            r#"{"table": "a", "transform": {"concat": [
                {"columns": ["x"], "destination": "d1", "delimiter": "-"},
                {"columns": ["y"], "destination": "d2"}]}}"#,
        ));
        assert_eq!(file.indices[0].nodes.transform.concat[1].destination, "d2");
        let text = with_nodes(
            r#"{"table": "a", "transform": {"concat": [{"columns": [], "delimiter": 1}, "x"]}}"#,
        );
        assert_eq!(
            problems(&text),
            [
                r#"[0].nodes.transform.concat[0].columns: found an empty array; expected a non-empty array of field names or literal strings"#,
                r#"[0].nodes.transform.concat[0].destination: found nothing; expected a non-empty string (the new field name)"#,
                r#"[0].nodes.transform.concat[0].delimiter: found 1; expected a string"#,
                r#"[0].nodes.transform.concat[1]: found "x"; expected an object with "columns" and "destination""#,
            ]
        );
        assert_eq!(
            problems(&with_nodes(
                r#"{"table": "a", "transform": {"concat": "x"}}"#
            )),
            [
                r#"[0].nodes.transform.concat: found "x"; expected an object with "columns" and "destination", or an array of them"#
            ]
        );
    }

    #[test]
    fn move_is_accepted_and_ignored() {
        let file = parsed(&with_nodes(
            r#"{"table": "a", "transform": {"move": {"column": "id", "destination": "$root.x"}}}"#,
        ));
        let t = &file.indices[0].nodes.transform;
        assert!(t.rename.is_empty() && t.replace.is_empty() && t.concat.is_empty());
        assert!(t.mapping.is_none());
    }

    #[test]
    fn env_vars_are_substituted_in_every_string_value() {
        let env = |name: &str| match name {
            "DB" => Some("shop".to_owned()),
            "SUFFIX" => Some("v2".to_owned()),
            _ => None,
        };
        let text = r#"[{"database": "${DB}", "index": "${DB}_${SUFFIX}", "nodes": {
            "table": "a", "columns": ["${SUFFIX}"], "transform": {"rename": {"x": "$x-${SUFFIX}"}}},
            "setting": {"k": ["${DB}"]}}]"#;
        let file = parse_str_with_env(text, Path::new("schema.json"), &env).unwrap();
        let index = &file.indices[0];
        assert_eq!(
            (index.database.as_str(), index.index.as_str()),
            ("shop", "shop_v2")
        );
        assert_eq!(index.nodes.columns, ["v2"]);
        assert_eq!(index.nodes.transform.rename[0].1, "$x-v2");
        assert_eq!(index.setting, Some(serde_json::json!({"k": ["shop"]})));
    }

    #[test]
    fn env_vars_come_from_the_process_environment_by_default() {
        // Cargo sets this variable for the test process too.
        let text = r#"[{"database": "${CARGO_MANIFEST_DIR}", "nodes": {"table": "a"}}]"#;
        let file = parse_str(text, Path::new("schema.json")).unwrap();
        assert_eq!(file.indices[0].database, env!("CARGO_MANIFEST_DIR"));
    }

    #[test]
    fn an_unset_env_var_is_reported_at_its_path_naming_the_variable() {
        let text = r#"[{"database": "${PG_DB}", "nodes": {"table": "${T}_${T}"}}]"#;
        assert_eq!(
            problems(text),
            [
                r#"[0].database: found "${PG_DB}" (PG_DB is not set); expected PG_DB set in the environment"#,
                r#"[0].nodes.table: found "${T}_${T}" (T is not set); expected T set in the environment"#,
            ]
        );
    }

    #[test]
    fn dollar_text_that_is_not_a_var_reference_is_kept_as_written() {
        let file = parsed(&with_nodes(
            r#"{"table": "a", "columns": ["$x", "${", "${1a}", "a${}b", "${unclosed"]}"#,
        ));
        assert_eq!(
            file.indices[0].nodes.columns,
            ["$x", "${", "${1a}", "a${}b", "${unclosed"]
        );
    }

    #[test]
    fn a_duplicate_json_key_is_reported_and_the_last_value_wins() {
        let text = r#"[{"database": "db", "nodes": {"table": "a", "table": "b"}}]"#;
        assert_eq!(
            problems(text),
            [r#"[0].nodes.table: found the key "table" twice; expected each key once"#]
        );
        let mut json: Json = serde_json::from_str(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        prepare(&mut json, "", &no_env, &mut Checker::default());
        assert_eq!(json.to_value(), serde_json::json!({"a": 3, "b": 2}));
    }

    #[test]
    fn long_found_strings_are_shortened() {
        let long = "x".repeat(100);
        let got = problems(&with_nodes(&format!(
            r#"{{"table": "a", "label": 1, "schema": "{long}"}}"#
        )));
        assert_eq!(
            got,
            [r#"[0].nodes.label: found 1; expected a non-empty string"#]
        );
        let shown = quote(&long);
        assert_eq!(shown.chars().count(), MAX_SHOWN_CHARS + 2);
        assert!(shown.ends_with("x…\""));
    }

    #[test]
    fn invalid_json_reports_its_line_and_column() {
        let err = parse("[\n  {\"database\": \"db\",,}\n]").unwrap_err();
        assert_eq!(
            err,
            SchemaError::InvalidJson {
                path: "schema.json".into(),
                line: 2,
                column: 21,
                reason: "key must be a string".to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            "schema.json:2:21: invalid JSON: key must be a string"
        );
    }

    #[test]
    fn an_unreadable_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.json");
        let err = parse_file(&path).unwrap_err();
        let SchemaError::Unreadable { path: p, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(p, &path);
        assert!(!reason.is_empty());
        assert!(err
            .to_string()
            .starts_with(&format!("{}: cannot read the schema: ", path.display())));
    }

    #[test]
    fn schema_errors_become_crate_errors_of_kind_schema() {
        let err: crate::Error = parse("[]").unwrap_err().into();
        assert_eq!(err.kind, crate::ErrorKind::Schema);
        assert!(err
            .message
            .starts_with("schema.json: top level: found an empty array"));
        let unreadable = SchemaError::Unreadable {
            path: "s.json".into(),
            reason: "gone".into(),
        };
        let err: crate::Error = unreadable.into();
        assert_eq!(err.kind, crate::ErrorKind::Schema);
        assert_eq!(err.message, "s.json: cannot read the schema: gone");
        assert_eq!(
            err.hint.as_deref(),
            Some("check [schema] path in the configuration")
        );
    }
}
