//! Checks a parsed schema against the live database and resolves it into a [`IndexPlan`]: every
//! node's real columns, key, and the join to its parent (reflected from foreign keys in either
//! direction, given explicitly, or through a join table). Both the document query builder and
//! change capture work from this one tree, so they can never disagree about how tables relate.

use super::model::*;
use super::TableId;
use crate::Result;
use std::collections::{BTreeSet, HashMap};
use tokio_postgres::Client;

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Column name, case preserved.
    pub name: String,
    /// `format_type` output, e.g. `integer`, `character varying(256)`, `jsonb`.
    pub type_name: String,
    /// `pg_type.typcategory`: `S` string, `N` numeric, `B` boolean, `U` user (json), `A` array...
    pub category: char,
}

/// A foreign key constraint: `columns` of the owning table reference `ref_columns` of `ref_table`.
#[derive(Debug, Clone)]
pub struct ForeignKeyInfo {
    /// Referencing columns.
    pub columns: Vec<String>,
    /// The referenced table.
    pub ref_table: TableId,
    /// Referenced columns, pairwise with `columns`.
    pub ref_columns: Vec<String>,
}

/// What the catalog says about one table or view.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `r` table, `p` partitioned, `v` view, `m` materialized view, `f` foreign.
    pub kind: char,
    /// Columns in attribute order.
    pub columns: Vec<ColumnInfo>,
    /// Primary key columns (empty for views and keyless tables).
    pub primary_key: Vec<String>,
    /// Foreign keys this table owns.
    pub foreign_keys: Vec<ForeignKeyInfo>,
}

impl TableInfo {
    /// Looks a column up by exact name.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The catalog of the schemas a `schema.json` touches, loaded once.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Tables and views by id.
    pub tables: HashMap<TableId, TableInfo>,
    /// Schemas that exist.
    pub schemas: BTreeSet<String>,
}

impl Catalog {
    /// Loads tables, columns, primary keys and foreign keys of `schemas` in three queries.
    pub async fn load(client: &Client, schemas: &[String]) -> Result<Catalog> {
        let mut cat = Catalog::default();
        for row in client
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE nspname = ANY($1)",
                &[&schemas],
            )
            .await?
        {
            cat.schemas.insert(row.get(0));
        }
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, c.relkind::text, a.attname::text, \
                        format_type(a.atttypid, a.atttypmod), t.typcategory::text \
                 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE c.relkind IN ('r','p','v','m','f') AND n.nspname = ANY($1) \
                 ORDER BY 1, 2, a.attnum",
                &[&schemas],
            )
            .await?;
        for r in rows {
            let id = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
            let kind: String = r.get(2);
            let entry = cat.tables.entry(id).or_insert_with(|| TableInfo {
                kind: kind.chars().next().unwrap_or('r'),
                columns: vec![],
                primary_key: vec![],
                foreign_keys: vec![],
            });
            let category: String = r.get(5);
            entry.columns.push(ColumnInfo {
                name: r.get(3),
                type_name: r.get(4),
                category: category.chars().next().unwrap_or('X'),
            });
        }
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                        array_agg(a.attname::text ORDER BY k.ord) \
                 FROM pg_constraint con \
                 JOIN pg_class c ON c.oid = con.conrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 WHERE con.contype = 'p' AND n.nspname = ANY($1) \
                 GROUP BY con.oid, n.nspname, c.relname",
                &[&schemas],
            )
            .await?;
        for r in rows {
            let id = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
            if let Some(t) = cat.tables.get_mut(&id) {
                t.primary_key = r.get(2);
            }
        }
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                        array_agg(a.attname::text ORDER BY k.ord), \
                        rn.nspname::text, rc.relname::text, \
                        array_agg(ra.attname::text ORDER BY k.ord) \
                 FROM pg_constraint con \
                 JOIN pg_class c ON c.oid = con.conrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_class rc ON rc.oid = con.confrelid \
                 JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
                 CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(attnum, fattnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                 JOIN pg_attribute ra ON ra.attrelid = rc.oid AND ra.attnum = k.fattnum \
                 WHERE con.contype = 'f' AND n.nspname = ANY($1) \
                 GROUP BY con.oid, n.nspname, c.relname, rn.nspname, rc.relname \
                 ORDER BY con.oid",
                &[&schemas],
            )
            .await?;
        for r in rows {
            let id = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
            let fk = ForeignKeyInfo {
                columns: r.get(2),
                ref_table: TableId::new(r.get::<_, String>(3), r.get::<_, String>(4)),
                ref_columns: r.get(5),
            };
            if let Some(t) = cat.tables.get_mut(&id) {
                t.foreign_keys.push(fk);
            }
        }
        Ok(cat)
    }

    /// Table names in `schema`, for "did you mean" hints.
    fn names_in(&self, schema: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tables
            .keys()
            .filter(|t| t.schema == schema)
            .map(|t| t.name.clone())
            .collect();
        v.sort();
        v
    }
}

/// A JSON operator applied to a json/jsonb column in a `columns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonStep {
    /// `->key` or `->>key`.
    Key(String),
    /// `->3` or `->>3`.
    Index(i64),
    /// `#>{a,b}` or `#>>{a,b}`.
    Path(Vec<String>),
}

/// One `columns` entry: a plain column, or a column followed by JSON operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnExpr {
    /// The table column.
    pub column: String,
    /// JSON steps with, for each, whether it yields text (`->>`, `#>>`) rather than JSON.
    pub steps: Vec<(JsonStep, bool)>,
}

impl ColumnExpr {
    /// Parses `doc->a->0`, `doc#>{a,b,c}->4`, `doc->>name`. A plain name has no steps.
    pub fn parse(text: &str) -> ColumnExpr {
        let ops = ["#>>", "#>", "->>", "->"];
        let first = ops.iter().filter_map(|o| text.find(o)).min();
        let Some(start) = first else {
            return ColumnExpr {
                column: text.to_owned(),
                steps: vec![],
            };
        };
        let column = text[..start].to_owned();
        let mut rest = &text[start..];
        let mut steps = vec![];
        while !rest.is_empty() {
            let op = ops.iter().find(|o| rest.starts_with(**o)).copied();
            let Some(op) = op else { break };
            rest = &rest[op.len()..];
            let end = ops
                .iter()
                .filter_map(|o| rest.find(o))
                .min()
                .unwrap_or(rest.len());
            let arg = &rest[..end];
            rest = &rest[end..];
            let as_text = op.ends_with(">>");
            let step = if op.starts_with('#') {
                let inner = arg.trim_start_matches('{').trim_end_matches('}');
                JsonStep::Path(inner.split(',').map(|s| s.trim().to_owned()).collect())
            } else if let Ok(i) = arg.parse::<i64>() {
                JsonStep::Index(i)
            } else {
                JsonStep::Key(arg.to_owned())
            };
            steps.push((step, as_text));
        }
        ColumnExpr { column, steps }
    }

    /// PGSync's field name for the expression: operators become `_`, braces are dropped
    /// (`doc#>{a,b,c}->4` is `doc_a,b,c_4`).
    pub fn field_name(&self) -> String {
        let mut s = self.column.clone();
        for (step, _) in &self.steps {
            s.push('_');
            match step {
                JsonStep::Key(k) => s.push_str(k),
                JsonStep::Index(i) => s.push_str(&i.to_string()),
                JsonStep::Path(p) => s.push_str(&p.join(",")),
            }
        }
        s
    }
}

/// One output field of a node, after replace and rename.
#[derive(Debug, Clone)]
pub struct FieldPlan {
    /// Field name in the document.
    pub name: String,
    /// Where the value comes from.
    pub source: FieldSource,
}

/// The value of an output field.
#[derive(Debug, Clone)]
pub enum FieldSource {
    /// A column or JSON path into one, with `replace` pairs applied when the value is text.
    Column {
        /// The column expression.
        expr: ColumnExpr,
        /// Catalog facts about the base column.
        info: ColumnInfo,
        /// `replace` pairs (old, new), applied in order to text values.
        replace: Vec<(String, String)>,
    },
    /// A `concat` transform: parts are other field names of this node or literals.
    Concat {
        /// Field names (resolved to their sources) or literal strings.
        parts: Vec<ConcatPart>,
        /// Separator.
        delimiter: String,
    },
}

/// One part of a concat.
#[derive(Debug, Clone)]
pub enum ConcatPart {
    /// The value of another field of the node (its index in `fields`).
    Field(usize),
    /// A literal string.
    Literal(String),
}

/// How a child node's rows are found from its parent row.
#[derive(Debug, Clone)]
pub enum Join {
    /// `child.child_cols = parent.parent_cols` pairwise (either table may own the foreign key).
    Direct {
        /// Columns on the child table.
        child_cols: Vec<String>,
        /// Columns on the parent table.
        parent_cols: Vec<String>,
    },
    /// Through a join table: `through.to_parent = parent.parent_cols` and
    /// `through.to_child = child.child_cols`.
    Through {
        /// The join table.
        table: TableId,
        /// Its key columns (for `_meta` and change capture).
        key: Vec<String>,
        /// Join-table columns referencing the parent.
        to_parent: Vec<String>,
        /// Parent columns they reference.
        parent_cols: Vec<String>,
        /// Join-table columns referencing the child.
        to_child: Vec<String>,
        /// Child columns they reference.
        child_cols: Vec<String>,
    },
}

/// A resolved node.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Preorder number, unique in the index; used for SQL aliases.
    pub id: usize,
    /// JSON path in `schema.json`.
    pub path: String,
    /// The table or view.
    pub table: TableId,
    /// Field name in the parent.
    pub label: String,
    /// Key columns (primary key, or `primary_key` for views).
    pub key: Vec<String>,
    /// Output fields, in order.
    pub fields: Vec<FieldPlan>,
    /// `rename` map, applied to child labels too.
    pub rename: HashMap<String, String>,
    /// Variant and type; `None` on the root.
    pub relationship: Option<(Variant, RelationType)>,
    /// How to reach this node's rows from its parent; `None` on the root.
    pub join: Option<Join>,
    /// Nested nodes.
    pub children: Vec<PlanNode>,
    /// Tables under a view, whose changes affect this node.
    pub base_tables: Vec<TableId>,
    /// Whether `table` is a table (plain or partitioned) whose row changes can be captured;
    /// false for a view, materialized view or foreign table, which cannot be published or
    /// carry triggers (its changes come through `base_tables`).
    pub capturable: bool,
    /// For a view or materialized view: how its rows follow its base tables (filled in by
    /// [`super::view::load`] once the tree is resolved).
    pub view: Option<super::view::ViewInfo>,
}

impl PlanNode {
    /// The key under which a child appears in this node's object (rename applies to labels).
    pub fn child_key<'a>(&'a self, child: &'a PlanNode) -> &'a str {
        self.rename
            .get(&child.label)
            .map(String::as_str)
            .unwrap_or(&child.label)
    }

    /// Visits this node and every descendant in preorder, with the parent of each.
    pub fn walk<'a>(
        &'a self,
        parent: Option<&'a PlanNode>,
        f: &mut impl FnMut(&'a PlanNode, Option<&'a PlanNode>),
    ) {
        f(self, parent);
        for c in &self.children {
            c.walk(Some(self), f);
        }
    }
}

/// A fully resolved index definition.
#[derive(Debug, Clone)]
pub struct IndexPlan {
    /// The definition as parsed.
    pub spec: IndexSpec,
    /// The resolved node tree.
    pub root: PlanNode,
    /// Index of the routing field among the root's fields.
    pub routing_field: Option<usize>,
    /// Column types (`format_type`) of every table involved, for casting text key values.
    pub column_types: HashMap<TableId, HashMap<String, String>>,
}

impl IndexPlan {
    /// The SQL type of `column` of `table`, `text` when unknown.
    pub fn column_type(&self, table: &TableId, column: &str) -> &str {
        self.column_types
            .get(table)
            .and_then(|m| m.get(column))
            .map(String::as_str)
            .unwrap_or("text")
    }
}

impl IndexPlan {
    /// Every table whose changes can affect a document: node tables, join tables, base tables.
    /// Views (and other relations without row changes of their own) are not among them: they
    /// cannot be published or carry triggers.
    pub fn tables(&self) -> Vec<TableId> {
        self.collect_relations(false)
    }

    /// Every relation the documents read: [`IndexPlan::tables`] plus node views.
    pub fn relations(&self) -> Vec<TableId> {
        self.collect_relations(true)
    }

    fn collect_relations(&self, with_views: bool) -> Vec<TableId> {
        let mut set = BTreeSet::new();
        self.root.walk(None, &mut |n, _| {
            if with_views || n.capturable {
                set.insert(n.table.clone());
            }
            if let Some(Join::Through { table, .. }) = &n.join {
                set.insert(table.clone());
            }
            for b in &n.base_tables {
                set.insert(b.clone());
            }
        });
        set.into_iter().collect()
    }

    /// Every node, preorder, with its parent.
    pub fn nodes(&self) -> Vec<(&PlanNode, Option<&PlanNode>)> {
        let mut v = vec![];
        self.root.walk(None, &mut |n, p| v.push((n, p)));
        v
    }
}

/// Resolves every index of `file` against `catalog`, collecting every problem.
pub fn resolve(
    file: &SchemaFile,
    catalog: &Catalog,
) -> std::result::Result<Vec<IndexPlan>, Vec<SchemaProblem>> {
    let mut problems = vec![];
    let mut plans = vec![];
    for spec in &file.indices {
        let mut next_id = 0;
        let root = resolve_node(&spec.nodes, None, catalog, &mut next_id, &mut problems);
        if let Some(root) = root {
            let mut routing_field = None;
            if let Some(r) = &spec.routing {
                routing_field = root.fields.iter().position(|f| &f.name == r);
                if routing_field.is_none() {
                    problems.push(SchemaProblem {
                        path: format!("{}.routing", spec.path),
                        found: format!("{r:?}"),
                        allowed: format!(
                            "a field of the root document: {}",
                            root.fields
                                .iter()
                                .map(|f| f.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
            let mut plan = IndexPlan {
                spec: spec.clone(),
                root,
                routing_field,
                column_types: HashMap::new(),
            };
            for t in plan.relations() {
                if let Some(info) = catalog.tables.get(&t) {
                    let m = info
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), c.type_name.clone()))
                        .collect();
                    plan.column_types.insert(t, m);
                }
            }
            plans.push(plan);
        }
    }
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(problems)
    }
}

/// Every schema a file refers to (node schemas), for [`Catalog::load`].
pub fn schemas_of(file: &SchemaFile) -> Vec<String> {
    fn walk(n: &NodeSpec, out: &mut BTreeSet<String>) {
        out.insert(n.schema.clone());
        for t in n
            .relationship
            .iter()
            .flat_map(|r| r.through_tables.iter())
            .chain(n.base_tables.iter())
        {
            if let Some((s, _)) = t.split_once('.') {
                out.insert(s.to_owned());
            }
        }
        for c in &n.children {
            walk(c, out);
        }
    }
    let mut set = BTreeSet::new();
    for i in &file.indices {
        walk(&i.nodes, &mut set);
    }
    set.into_iter().collect()
}

fn table_ref(name: &str, default_schema: &str) -> TableId {
    match name.split_once('.') {
        Some((s, t)) => TableId::new(s, t),
        None => TableId::new(default_schema, name),
    }
}

fn problem(
    problems: &mut Vec<SchemaProblem>,
    path: String,
    found: impl Into<String>,
    allowed: impl Into<String>,
) {
    problems.push(SchemaProblem {
        path,
        found: found.into(),
        allowed: allowed.into(),
    });
}

fn resolve_node(
    spec: &NodeSpec,
    parent: Option<(&PlanNode, &TableInfo)>,
    catalog: &Catalog,
    next_id: &mut usize,
    problems: &mut Vec<SchemaProblem>,
) -> Option<PlanNode> {
    let id = *next_id;
    *next_id += 1;
    let table = TableId::new(&spec.schema, &spec.table);
    if !catalog.schemas.contains(&spec.schema) {
        problem(
            problems,
            format!("{}.schema", spec.path),
            format!("{:?} (no such schema in the database)", spec.schema),
            "an existing PostgreSQL schema",
        );
        return None;
    }
    let Some(info) = catalog.tables.get(&table) else {
        problem(
            problems,
            format!("{}.table", spec.path),
            format!(
                "{:?} (no such table or view in schema {:?})",
                spec.table, spec.schema
            ),
            format!("one of: {}", catalog.names_in(&spec.schema).join(", ")),
        );
        return None;
    };
    let column_list = || {
        info.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    // Key.
    let key = if !spec.primary_key.is_empty() {
        for (i, k) in spec.primary_key.iter().enumerate() {
            if info.column(k).is_none() {
                problem(
                    problems,
                    format!("{}.primary_key[{i}]", spec.path),
                    format!("{k:?} (no such column in {table})"),
                    format!("one of: {}", column_list()),
                );
            }
        }
        spec.primary_key.clone()
    } else if !info.primary_key.is_empty() {
        info.primary_key.clone()
    } else {
        problem(
            problems,
            format!("{}.table", spec.path),
            format!("{table} has no primary key"),
            "a table with a primary key, or \"primary_key\": [columns] on the node (required for views)",
        );
        vec![]
    };

    // Fields: columns (all when empty), replace, rename, concat.
    let rename: HashMap<String, String> = spec.transform.rename.iter().cloned().collect();
    let mut fields: Vec<FieldPlan> = vec![];
    let column_names: Vec<String> = if spec.columns.is_empty() {
        info.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        spec.columns.clone()
    };
    for (i, text) in column_names.iter().enumerate() {
        let expr = ColumnExpr::parse(text);
        let Some(col) = info.column(&expr.column) else {
            problem(
                problems,
                format!("{}.columns[{i}]", spec.path),
                format!("{:?} (no such column in {table})", expr.column),
                format!("one of: {}", column_list()),
            );
            continue;
        };
        if !expr.steps.is_empty() && !col.type_name.starts_with("json") {
            problem(
                problems,
                format!("{}.columns[{i}]", spec.path),
                format!(
                    "{text:?}: JSON operator on column {:?} of type {}",
                    expr.column, col.type_name
                ),
                "JSON operators only on json or jsonb columns",
            );
            continue;
        }
        let base = expr.field_name();
        let replace = spec
            .transform
            .replace
            .iter()
            .find(|(c, _)| *c == base)
            .map(|(_, pairs)| pairs.clone())
            .unwrap_or_default();
        let name = rename.get(&base).cloned().unwrap_or(base);
        fields.push(FieldPlan {
            name,
            source: FieldSource::Column {
                expr,
                info: col.clone(),
                replace,
            },
        });
    }
    for (ci, c) in spec.transform.concat.iter().enumerate() {
        let parts = c
            .columns
            .iter()
            .map(|p| match fields.iter().position(|f| &f.name == p) {
                Some(i) => ConcatPart::Field(i),
                None => ConcatPart::Literal(p.clone()),
            })
            .collect();
        let _ = ci;
        let fp = FieldPlan {
            name: c.destination.clone(),
            source: FieldSource::Concat {
                parts,
                delimiter: c.delimiter.clone(),
            },
        };
        match fields.iter().position(|f| f.name == c.destination) {
            Some(i) => fields[i] = fp,
            None => fields.push(fp),
        }
    }

    // Join to parent.
    let mut join = None;
    let mut relationship = None;
    if let (Some(rel), Some((pnode, pinfo))) = (&spec.relationship, parent) {
        relationship = Some((rel.variant, rel.kind));
        if rel.variant == Variant::Scalar && fields.len() != 1 {
            problem(
                problems,
                format!("{}.columns", spec.path),
                format!("{} columns", fields.len()),
                "exactly one column for a scalar relationship",
            );
        }
        join = resolve_join(spec, rel, &table, info, pnode, pinfo, catalog, problems);
    }
    let base_tables = spec
        .base_tables
        .iter()
        .map(|b| table_ref(b, &spec.schema))
        .collect();
    let mut node = PlanNode {
        id,
        path: spec.path.clone(),
        table,
        label: spec.label().to_owned(),
        key,
        fields,
        rename,
        relationship,
        join,
        children: vec![],
        base_tables,
        capturable: matches!(info.kind, 'r' | 'p'),
        view: None,
    };
    let mut children = vec![];
    for c in &spec.children {
        if let Some(child) = resolve_node(c, Some((&node, info)), catalog, next_id, problems) {
            children.push(child);
        }
    }
    node.children = children;
    Some(node)
}

#[allow(clippy::too_many_arguments)]
fn resolve_join(
    spec: &NodeSpec,
    rel: &RelationshipSpec,
    table: &TableId,
    info: &TableInfo,
    pnode: &PlanNode,
    pinfo: &TableInfo,
    catalog: &Catalog,
    problems: &mut Vec<SchemaProblem>,
) -> Option<Join> {
    let ptable = &pnode.table;
    if let Some(through) = rel.through_tables.first() {
        let ends = ThroughEnds {
            table,
            info,
            ptable,
            pinfo,
        };
        resolve_through(spec, through, &ends, catalog, problems)
    } else if let Some(fk) = &rel.foreign_key {
        let mut ok = true;
        for (i, c) in fk.child.iter().enumerate() {
            if info.column(c).is_none() {
                ok = false;
                problem(
                    problems,
                    format!("{}.relationship.foreign_key.child[{i}]", spec.path),
                    format!("{c:?} (no such column in {table})"),
                    format!("a column of {table}"),
                );
            }
        }
        for (i, c) in fk.parent.iter().enumerate() {
            if pinfo.column(c).is_none() {
                ok = false;
                problem(
                    problems,
                    format!("{}.relationship.foreign_key.parent[{i}]", spec.path),
                    format!("{c:?} (no such column in {ptable})"),
                    format!("a column of {ptable}"),
                );
            }
        }
        ok.then(|| Join::Direct {
            child_cols: fk.child.clone(),
            parent_cols: fk.parent.clone(),
        })
    } else {
        // Child references parent (preferred: also the self-referencing case), else parent
        // references child.
        if let Some(f) = info.foreign_keys.iter().find(|f| &f.ref_table == ptable) {
            return Some(Join::Direct {
                child_cols: f.columns.clone(),
                parent_cols: f.ref_columns.clone(),
            });
        }
        if let Some(f) = pinfo.foreign_keys.iter().find(|f| &f.ref_table == table) {
            return Some(Join::Direct {
                child_cols: f.ref_columns.clone(),
                parent_cols: f.columns.clone(),
            });
        }
        problem(
            problems,
            format!("{}.relationship", spec.path),
            format!("no foreign key between {table} and its parent {ptable}"),
            "a foreign key constraint in either direction, \"foreign_key\": {\"child\": [...], \"parent\": [...]}, or \"through_tables\"",
        );
        None
    }
}

/// The two ends a through table links: the child node's table and its parent's.
struct ThroughEnds<'a> {
    table: &'a TableId,
    info: &'a TableInfo,
    ptable: &'a TableId,
    pinfo: &'a TableInfo,
}

/// A `through_tables` entry as PGSync reads it: an intermediate table linked to the parent and to
/// the child by a foreign key in either direction. A join table holds both keys; a chain
/// (`child -> through -> parent`, `parent -> through -> child`, or both ends referencing it) holds
/// one or none. Each hop becomes an equality between through-table and end columns.
fn resolve_through(
    spec: &NodeSpec,
    through: &str,
    ends: &ThroughEnds<'_>,
    catalog: &Catalog,
    problems: &mut Vec<SchemaProblem>,
) -> Option<Join> {
    let path = format!("{}.relationship.through_tables[0]", spec.path);
    let ttable = table_ref(through, &spec.schema);
    let Some(tinfo) = catalog.tables.get(&ttable) else {
        problem(
            problems,
            path,
            format!("{through:?} (no such table in schema {:?})", ttable.schema),
            format!("one of: {}", catalog.names_in(&ttable.schema).join(", ")),
        );
        return None;
    };
    let to_parent = link(&ttable, tinfo, ends.ptable, ends.pinfo, None);
    let used = to_parent.as_ref().and_then(|l| l.through_fk);
    let to_child = link(&ttable, tinfo, ends.table, ends.info, used);
    let (Some(p), Some(c)) = (to_parent, to_child) else {
        problem(
            problems,
            path,
            format!(
                "no foreign key between {ttable} and {}",
                if link(&ttable, tinfo, ends.ptable, ends.pinfo, None).is_none() {
                    ends.ptable
                } else {
                    ends.table
                }
            ),
            format!(
                "a table linked by foreign keys (in either direction) to both {} and {}",
                ends.ptable, ends.table
            ),
        );
        return None;
    };
    let key = if tinfo.primary_key.is_empty() {
        let mut k = p.through_cols.clone();
        k.extend(
            c.through_cols
                .iter()
                .filter(|x| !p.through_cols.contains(x))
                .cloned(),
        );
        k
    } else {
        tinfo.primary_key.clone()
    };
    Some(Join::Through {
        table: ttable,
        key,
        to_parent: p.through_cols,
        parent_cols: p.end_cols,
        to_child: c.through_cols,
        child_cols: c.end_cols,
    })
}

/// One hop of a through chain: `through.through_cols = end.end_cols`.
struct Link {
    through_cols: Vec<String>,
    end_cols: Vec<String>,
    /// The through table's own foreign key used, when it holds the key.
    through_fk: Option<usize>,
}

/// The foreign key between the through table and an end: the through table's own (except
/// `skip`, already used for the other end of a self-referencing pair), else the end's.
fn link(
    ttable: &TableId,
    tinfo: &TableInfo,
    end: &TableId,
    einfo: &TableInfo,
    skip: Option<usize>,
) -> Option<Link> {
    if let Some(i) = (0..tinfo.foreign_keys.len())
        .find(|&i| &tinfo.foreign_keys[i].ref_table == end && Some(i) != skip)
    {
        let f = &tinfo.foreign_keys[i];
        return Some(Link {
            through_cols: f.columns.clone(),
            end_cols: f.ref_columns.clone(),
            through_fk: Some(i),
        });
    }
    let f = einfo.foreign_keys.iter().find(|f| &f.ref_table == ttable)?;
    Some(Link {
        through_cols: f.ref_columns.clone(),
        end_cols: f.columns.clone(),
        through_fk: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cols: &[&str], fks: &[(&str, &str, &str)]) -> TableInfo {
        TableInfo {
            kind: 'r',
            columns: cols
                .iter()
                .map(|c| ColumnInfo {
                    name: c.to_string(),
                    type_name: "int4".into(),
                    category: 'N',
                })
                .collect(),
            primary_key: vec!["id".into()],
            foreign_keys: fks
                .iter()
                .map(|(col, t, rcol)| ForeignKeyInfo {
                    columns: vec![col.to_string()],
                    ref_table: TableId::new("public", *t),
                    ref_columns: vec![rcol.to_string()],
                })
                .collect(),
        }
    }

    /// The through join of child `c` under root `p` through `t`.
    fn through_join(tables: &[(&str, TableInfo)]) -> Join {
        let text = r#"[{"database": "d", "nodes": {"table": "p", "columns": ["id"], "children": [
            {"table": "c", "columns": ["id"], "relationship": {"variant": "object",
             "type": "one_to_many", "through_tables": ["t"]}}]}}]"#;
        let file = super::super::parse::parse_str(text, std::path::Path::new("s.json")).unwrap();
        let mut catalog = Catalog::default();
        catalog.schemas.insert("public".into());
        for (n, info) in tables {
            catalog
                .tables
                .insert(TableId::new("public", *n), info.clone());
        }
        let plans = resolve(&file, &catalog).unwrap_or_else(|p| panic!("{p:?}"));
        plans[0].root.children[0].join.clone().unwrap()
    }

    fn hops(j: &Join) -> [Vec<String>; 4] {
        match j {
            Join::Through {
                to_parent,
                parent_cols,
                to_child,
                child_cols,
                ..
            } => [
                to_parent.clone(),
                parent_cols.clone(),
                to_child.clone(),
                child_cols.clone(),
            ],
            Join::Direct { .. } => panic!("not a through join"),
        }
    }

    #[test]
    fn through_tables_link_in_either_direction() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Join table: t -> p, t -> c.
        let j = through_join(&[
            ("p", table(&["id"], &[])),
            ("c", table(&["id"], &[])),
            (
                "t",
                table(
                    &["id", "p_id", "c_id"],
                    &[("p_id", "p", "id"), ("c_id", "c", "id")],
                ),
            ),
        ]);
        assert_eq!(
            hops(&j),
            [v(&["p_id"]), v(&["id"]), v(&["c_id"]), v(&["id"])]
        );
        // Chain c -> t -> p.
        let j = through_join(&[
            ("p", table(&["id"], &[])),
            ("c", table(&["id", "t_id"], &[("t_id", "t", "id")])),
            ("t", table(&["id", "p_id"], &[("p_id", "p", "id")])),
        ]);
        assert_eq!(
            hops(&j),
            [v(&["p_id"]), v(&["id"]), v(&["id"]), v(&["t_id"])]
        );
        // Chain p -> t -> c.
        let j = through_join(&[
            ("p", table(&["id", "t_id"], &[("t_id", "t", "id")])),
            ("c", table(&["id"], &[])),
            ("t", table(&["id", "c_id"], &[("c_id", "c", "id")])),
        ]);
        assert_eq!(
            hops(&j),
            [v(&["id"]), v(&["t_id"]), v(&["c_id"]), v(&["id"])]
        );
        // Both ends reference t.
        let j = through_join(&[
            ("p", table(&["id", "t_id"], &[("t_id", "t", "id")])),
            ("c", table(&["id", "t_id"], &[("t_id", "t", "id")])),
            ("t", table(&["id"], &[])),
        ]);
        assert_eq!(
            hops(&j),
            [v(&["id"]), v(&["t_id"]), v(&["id"]), v(&["t_id"])]
        );
    }

    #[test]
    fn json_operators_parse_into_steps_and_pgsync_field_names() {
        let e = ColumnExpr::parse("doc#>{a,b,c}->4");
        assert_eq!(e.column, "doc");
        assert_eq!(
            e.steps,
            vec![
                (
                    JsonStep::Path(vec!["a".into(), "b".into(), "c".into()]),
                    false
                ),
                (JsonStep::Index(4), false)
            ]
        );
        assert_eq!(e.field_name(), "doc_a,b,c_4");
        let e = ColumnExpr::parse("doc->>name");
        assert_eq!(e.steps, vec![(JsonStep::Key("name".into()), true)]);
        assert_eq!(e.field_name(), "doc_name");
        let e = ColumnExpr::parse("doc->x->0->y");
        assert_eq!(e.field_name(), "doc_x_0_y");
        assert_eq!(e.steps.len(), 3);
        let e = ColumnExpr::parse("doc#>>{a,b}");
        assert_eq!(
            e.steps,
            vec![(JsonStep::Path(vec!["a".into(), "b".into()]), true)]
        );
        assert_eq!(ColumnExpr::parse("plain").steps, vec![]);
    }
}
