//! The PGSync `schema.json` document as typed values. Parsing (with JSON paths for every problem)
//! lives in `parse.rs`; checking against the live database and resolving joins in `resolve.rs`.

use serde_json::{Map, Value};
use std::path::PathBuf;

/// A whole `schema.json`: a list of index definitions.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Where it was read from, for error messages.
    pub path: PathBuf,
    /// One entry per element of the top-level JSON array, in file order.
    pub indices: Vec<IndexSpec>,
    /// What PGSync ignores (unknown document or transform keys, `"label": null`): logged at
    /// start-up, an error only for `validate --strict`, so a PGSync schema runs unchanged.
    pub warnings: Vec<SchemaProblem>,
}

/// One element of the top-level array: a database, a target index and its node tree.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    /// JSON path of this element, e.g. `[0]`.
    pub path: String,
    /// PostgreSQL database the documents come from.
    pub database: String,
    /// Search index name; PGSync defaults it to the database name.
    pub index: String,
    /// The root node.
    pub nodes: NodeSpec,
    /// Index settings passed through at creation (`setting`).
    pub setting: Option<Value>,
    /// Extra properties merged into the generated mapping (`mapping`).
    pub mapping: Option<Map<String, Value>>,
    /// A complete mapping that replaces the generated one (`mappings`).
    pub mappings: Option<Value>,
    /// Document field whose value is sent as `routing` on every action.
    pub routing: Option<String>,
    /// Ingest pipeline named on every action.
    pub pipeline: Option<String>,
    /// PGSync Python plugin names, applied in this order.
    pub plugins: Vec<String>,
    /// The entry as written in schema.json (after `${VAR}` substitution): what a change of
    /// definition is detected and described against.
    pub raw: Value,
}

/// How a child's rows become a value inside its parent's document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Each row becomes a JSON object of its columns.
    Object,
    /// Each row becomes the value of its single column.
    Scalar,
}

/// Whether a parent row has at most one child row or many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationType {
    /// A single value (or null).
    OneToOne,
    /// A JSON array of values.
    OneToMany,
}

/// User-given join columns: `child[i]` on the child table equals `parent[i]` on the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKeySpec {
    /// Columns of the child table.
    pub child: Vec<String>,
    /// Columns of the parent table, pairwise with `child`.
    pub parent: Vec<String>,
}

/// A child node's `relationship` object.
#[derive(Debug, Clone)]
pub struct RelationshipSpec {
    /// `object` or `scalar`.
    pub variant: Variant,
    /// `one_to_one` or `one_to_many`.
    pub kind: RelationType,
    /// Explicit join columns; reflected from constraints when absent.
    pub foreign_key: Option<ForeignKeySpec>,
    /// Join tables between parent and child (PGSync supports one).
    pub through_tables: Vec<String>,
}

/// One `concat` entry of a transform.
#[derive(Debug, Clone)]
pub struct ConcatSpec {
    /// Field names (after rename) or literal strings, in order.
    pub columns: Vec<String>,
    /// The new field.
    pub destination: String,
    /// Joins the parts; PGSync's default is the empty string.
    pub delimiter: String,
}

/// A node's `transform`, applied as PGSync does: replace, then rename, then concat.
#[derive(Debug, Clone, Default)]
pub struct TransformSpec {
    /// `{column: {old: new, ...}}`, in file order.
    pub replace: Vec<(String, Vec<(String, String)>)>,
    /// `{column: new_name}`.
    pub rename: Vec<(String, String)>,
    /// New fields made by joining others.
    pub concat: Vec<ConcatSpec>,
    /// Per-field mapping types for index creation, keyed by the final field name.
    pub mapping: Option<Map<String, Value>>,
}

/// One node of the tree: a table (or view) and how its rows nest into the parent.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// JSON path of this node, e.g. `[0].nodes.children[1]`.
    pub path: String,
    /// Table or view name, as written (case preserved).
    pub table: String,
    /// PostgreSQL schema, `public` unless given.
    pub schema: String,
    /// Columns to include; empty means every column of the table, as in PGSync.
    pub columns: Vec<String>,
    /// Field name in the parent document; defaults to the table name.
    pub label: Option<String>,
    /// Key columns for views or tables without a primary key.
    pub primary_key: Vec<String>,
    /// How this node joins its parent; `None` only on the root.
    pub relationship: Option<RelationshipSpec>,
    /// Nested nodes.
    pub children: Vec<NodeSpec>,
    /// Field transforms.
    pub transform: TransformSpec,
    /// Tables underneath a view, whose changes affect this node.
    pub base_tables: Vec<String>,
}

impl NodeSpec {
    /// The field name this node's value gets in its parent.
    pub fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.table)
    }
}

/// One problem found in a schema, with where it is, what was found and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// JSON path, e.g. `[0].nodes.children[1].relationship.type`.
    pub path: String,
    /// What the file (or database) has there.
    pub found: String,
    /// What would be accepted.
    pub allowed: String,
}

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: found {}; expected {}",
            self.path, self.found, self.allowed
        )
    }
}
