//! The document query: one statement per index that builds each root row's whole nested document
//! inside PostgreSQL, so the client only moves bytes. Children are aggregated in derived tables
//! grouped by their join key (hash-join friendly for a full sync); when the roots are restricted
//! (a key range or a set of keys), the restriction is pushed into every derived table as a
//! semi-join, so a change re-fetch touches only the rows it needs.

use super::{quote_ident, quote_literal};
use crate::schema::model::{RelationType, Variant};
use crate::schema::resolve::{ConcatPart, FieldSource, IndexPlan, Join, JsonStep, PlanNode};
use std::fmt::Write;

/// Which root rows a document query returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RootFilter {
    /// Every row.
    All,
    /// Rows whose physical location is in pages `[from, to)` (`to = None`: to the end). Cheap,
    /// uniform split of a table for parallel fetchers; not available on views.
    CtidRange {
        /// First page.
        from: u64,
        /// Page after the last, or open-ended.
        to: Option<u64>,
    },
    /// Rows whose key is in parameters `$1..$k`: one `text[]` per key column, in key order.
    Keys,
}

/// Output column positions of a document query.
pub mod cols {
    /// `_id` as text.
    pub const ID: usize = 0;
    /// The document as JSON text.
    pub const DOC: usize = 1;
    /// The routing value as text, or NULL.
    pub const ROUTING: usize = 2;
    /// `_meta` triples as JSON text, or NULL.
    pub const META: usize = 3;
}

/// For a child reached through a through table (LEFT JOINed, see `child_join`): the condition
/// of a through row without a child, which PGSync aggregates as a `null` entry of a one_to_many
/// list (a one_to_one child takes the first real row instead).
fn missing_child(join: &Join, a: &str) -> Option<String> {
    match join {
        Join::Through { child_cols, .. } => {
            Some(format!("{a}.{} IS NULL", quote_ident(&child_cols[0])))
        }
        Join::Direct { .. } => None,
    }
}

/// `expr`, or NULL where `missing` holds.
fn null_when(missing: &Option<String>, expr: String) -> String {
    match missing {
        Some(m) => format!("CASE WHEN {m} THEN NULL ELSE {expr} END"),
        None => expr,
    }
}

/// Builds the document query for `plan`. Columns: see [`cols`].
pub fn document_query(plan: &IndexPlan, filter: &RootFilter, with_meta: bool) -> String {
    let root = &plan.root;
    let a = alias(root);
    let b = Builder {
        plan,
        with_meta,
        filter,
    };
    let mut from = format!("{} {a}", table_sql(&root.table));
    for c in &root.children {
        b.child_join(&mut from, root, c, &[root]);
    }
    let routing = match plan.routing_field {
        Some(i) => format!("({})::text", b.field_text(root, i, &a)),
        None => "NULL::text".into(),
    };
    let meta = if with_meta {
        format!("({})::text", b.row_meta(root, &a, None, true))
    } else {
        "NULL::text".into()
    };
    let mut sql = format!(
        "SELECT {id} AS _id, ({obj})::text AS doc, {routing} AS routing, {meta} AS meta FROM {from}",
        id = id_expr(root, &a),
        obj = b.object(root, &a),
    );
    if let Some(w) = root_filter_sql(plan, filter, &a) {
        write!(sql, " WHERE {w}").unwrap();
    }
    sql
}

/// The `_id` expression: key values ordered by key column name, joined by `|` (PGSync's format).
pub fn id_expr(root: &PlanNode, alias: &str) -> String {
    let mut keys: Vec<&String> = root.key.iter().collect();
    keys.sort();
    if keys.len() == 1 {
        return format!("{alias}.{}::text", quote_ident(keys[0]));
    }
    let parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{alias}.{}::text", quote_ident(k)))
        .collect();
    format!("concat_ws('|', {})", parts.join(", "))
}

/// The `_id` of a root row from its key values given by column name; must agree with [`id_expr`].
pub fn doc_id(root: &PlanNode, value_of: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut keys: Vec<&String> = root.key.iter().collect();
    keys.sort();
    let mut parts = Vec::with_capacity(keys.len());
    for k in keys {
        parts.push(value_of(k)?);
    }
    Some(parts.join("|"))
}

/// The key values (in key order) of the root row a document `_id` was made from: the inverse
/// of [`doc_id`]. `None` when the `_id` does not split into one value per key column (a
/// composite key whose values contain `|`).
pub fn key_values_of_id(root: &PlanNode, id: &str) -> Option<Vec<String>> {
    let mut sorted: Vec<&String> = root.key.iter().collect();
    sorted.sort();
    let parts: Vec<&str> = if sorted.len() == 1 {
        vec![id]
    } else {
        id.split('|').collect()
    };
    if parts.len() != sorted.len() {
        return None;
    }
    root.key
        .iter()
        .map(|k| {
            let i = sorted.iter().position(|s| *s == k)?;
            Some(parts[i].to_owned())
        })
        .collect()
}

/// The `_id`s of root rows that exist, among those asked for: by key values (`$1..$k`, one
/// `text[]` per key column, in key order; index lookups) or, with `by_text`, by `_id` text
/// (`$1 text[]`; a scan, for ids whose key values cannot be told apart).
pub fn existing_ids_query(plan: &IndexPlan, by_text: bool) -> String {
    let root = &plan.root;
    let a = alias(root);
    let from = format!("{} {a}", table_sql(&root.table));
    if by_text {
        return format!(
            "SELECT s._id FROM (SELECT {} AS _id FROM {from}) s WHERE s._id = ANY($1::text[])",
            id_expr(root, &a)
        );
    }
    let cond = root_filter_sql(plan, &RootFilter::Keys, &a).unwrap_or_else(|| "true".into());
    format!(
        "SELECT {} AS _id FROM {from} WHERE {cond}",
        id_expr(root, &a)
    )
}

/// The SQL alias of a node's table.
pub fn alias(n: &PlanNode) -> String {
    format!("t{}", n.id)
}

/// Schema-qualified, quoted table name.
pub fn table_sql(t: &crate::schema::TableId) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

fn cols_sql(alias: &str, cols: &[String]) -> String {
    let v: Vec<String> = cols
        .iter()
        .map(|c| format!("{alias}.{}", quote_ident(c)))
        .collect();
    if v.len() == 1 {
        v[0].clone()
    } else {
        format!("({})", v.join(", "))
    }
}

/// `(a.x, a.y) IN (SELECT v.c0::T0, v.c1::T1 FROM unnest($p::text[], ...) v)`: a key-set
/// restriction on text parameters starting at `$first`, cast to the columns' types so indexes apply.
pub fn keys_in_params(alias: &str, cols: &[String], types: &[&str], first: usize) -> String {
    if cols.len() == 1 {
        return format!(
            "{alias}.{} = ANY(${first}::text[]::{}[])",
            quote_ident(&cols[0]),
            types[0]
        );
    }
    let params: Vec<String> = (0..cols.len())
        .map(|i| format!("${}::text[]", first + i))
        .collect();
    let names: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = (0..cols.len())
        .map(|i| format!("v.c{i}::{}", types[i]))
        .collect();
    format!(
        "{} IN (SELECT {} FROM unnest({}) AS v({}))",
        cols_sql(alias, cols),
        casts.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

fn root_filter_sql(plan: &IndexPlan, filter: &RootFilter, a: &str) -> Option<String> {
    match filter {
        RootFilter::All => None,
        RootFilter::CtidRange { from, to } => Some(match to {
            Some(to) => format!("{a}.ctid >= '({from},0)'::tid AND {a}.ctid < '({to},0)'::tid"),
            None => format!("{a}.ctid >= '({from},0)'::tid"),
        }),
        RootFilter::Keys => {
            let root = &plan.root;
            let types: Vec<&str> = root
                .key
                .iter()
                .map(|k| plan.column_type(&root.table, k))
                .collect();
            Some(keys_in_params(a, &root.key, &types, 1))
        }
    }
}

struct Builder<'a> {
    plan: &'a IndexPlan,
    with_meta: bool,
    filter: &'a RootFilter,
}

impl Builder<'_> {
    /// A restriction on `alias` (an alias of `chain.last()`'s table) to rows that belong to the
    /// filtered roots, or None when every row is wanted.
    fn restrict(&self, chain: &[&PlanNode], alias: &str) -> Option<String> {
        let (node, ancestors) = chain.split_last()?;
        if ancestors.is_empty() {
            return root_filter_sql(self.plan, self.filter, alias);
        }
        let parent = ancestors.last().unwrap();
        match node.join.as_ref()? {
            Join::Direct {
                child_cols,
                parent_cols,
            } => {
                let f = format!("f{}", parent.id);
                let inner = self.restrict(ancestors, &f)?;
                Some(format!(
                    "{} IN (SELECT {} FROM {} {f} WHERE {inner})",
                    cols_sql(alias, child_cols),
                    cols_sql(&f, parent_cols).trim_matches(|c| c == '(' || c == ')'),
                    table_sql(&parent.table),
                ))
            }
            Join::Through {
                table,
                to_parent,
                parent_cols,
                to_child,
                child_cols,
                ..
            } => {
                let f = format!("f{}", parent.id);
                let u = format!("w{}", node.id);
                let inner = self.restrict(ancestors, &f)?;
                Some(format!(
                    "{} IN (SELECT {} FROM {} {u} WHERE {} IN (SELECT {} FROM {} {f} WHERE {inner}))",
                    cols_sql(alias, child_cols),
                    cols_sql(&u, to_child).trim_matches(|c| c == '(' || c == ')'),
                    table_sql(table),
                    cols_sql(&u, to_parent),
                    cols_sql(&f, parent_cols).trim_matches(|c| c == '(' || c == ')'),
                    table_sql(&parent.table),
                ))
            }
        }
    }

    /// Appends `LEFT JOIN (derived table of child) jN ON ...` to `from`.
    fn child_join(
        &self,
        from: &mut String,
        parent: &PlanNode,
        child: &PlanNode,
        chain: &[&PlanNode],
    ) {
        let Some(join) = &child.join else { return };
        let a = alias(child);
        let j = format!("j{}", child.id);
        let mut chain_c: Vec<&PlanNode> = chain.to_vec();
        chain_c.push(child);
        let mut inner_from = match join {
            Join::Direct { .. } => format!("{} {a}", table_sql(&child.table)),
            Join::Through {
                table,
                to_child,
                child_cols,
                ..
            } => {
                let u = format!("u{}", child.id);
                let on: Vec<String> = to_child
                    .iter()
                    .zip(child_cols)
                    .map(|(t, c)| format!("{u}.{} = {a}.{}", quote_ident(t), quote_ident(c)))
                    .collect();
                // LEFT: a through row without a child is an empty entry, as in PGSync.
                format!(
                    "{} {u} LEFT JOIN {} {a} ON {}",
                    table_sql(table),
                    table_sql(&child.table),
                    on.join(" AND ")
                )
            }
        };
        for g in &child.children {
            self.child_join(&mut inner_from, child, g, &chain_c);
        }
        let (group_alias, group_cols, parent_cols) = match join {
            Join::Direct {
                child_cols,
                parent_cols,
            } => (a.clone(), child_cols, parent_cols),
            Join::Through {
                to_parent,
                parent_cols,
                ..
            } => (format!("u{}", child.id), to_parent, parent_cols),
        };
        let keys: Vec<String> = group_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{group_alias}.{} AS k{i}", quote_ident(c)))
            .collect();
        let group_by: Vec<String> = group_cols
            .iter()
            .map(|c| format!("{group_alias}.{}", quote_ident(c)))
            .collect();
        let (variant, kind) = child
            .relationship
            .unwrap_or((Variant::Object, RelationType::OneToMany));
        let value = match variant {
            Variant::Object => self.object(child, &a),
            Variant::Scalar => self.field_value(child, 0, &a),
        };
        let missing = missing_child(join, &a);
        let value = null_when(&missing, value);
        let one_filter = match &missing {
            Some(m) => format!(" FILTER (WHERE NOT ({m}))"),
            None => String::new(),
        };
        let order = {
            let k: Vec<String> = child
                .key
                .iter()
                .map(|k| format!("{a}.{}", quote_ident(k)))
                .collect();
            if k.is_empty() {
                String::new()
            } else {
                format!(" ORDER BY {}", k.join(", "))
            }
        };
        let agg = match kind {
            RelationType::OneToMany => format!("json_agg({value}{order})"),
            RelationType::OneToOne => {
                format!("(array_agg(to_json({value}){order}){one_filter})[1]")
            }
        };
        let mut sql = format!("SELECT {}, {agg} AS v", keys.join(", "));
        if self.with_meta {
            let through_alias =
                matches!(join, Join::Through { .. }).then(|| format!("u{}", child.id));
            let m = self.row_meta(child, &a, through_alias.as_deref(), false);
            write!(sql, ", json_agg({}) AS m", null_when(&missing, m)).unwrap();
        }
        write!(sql, " FROM {inner_from}").unwrap();
        if let Some(r) = self.restrict_group(&chain_c, join, &a) {
            write!(sql, " WHERE {r}").unwrap();
        }
        write!(sql, " GROUP BY {}", group_by.join(", ")).unwrap();
        let pa = alias(parent);
        let on: Vec<String> = parent_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{j}.k{i} = {pa}.{}", quote_ident(c)))
            .collect();
        write!(from, " LEFT JOIN ({sql}) {j} ON {}", on.join(" AND ")).unwrap();
    }

    /// The restriction for a child's derived table: on the group columns (through table or child).
    fn restrict_group(&self, chain: &[&PlanNode], join: &Join, a: &str) -> Option<String> {
        match join {
            Join::Direct { .. } => self.restrict(chain, a),
            Join::Through {
                to_parent,
                parent_cols,
                ..
            } => {
                let (node, ancestors) = chain.split_last()?;
                let parent = ancestors.last()?;
                let f = format!("f{}", parent.id);
                let inner = self.restrict(ancestors, &f)?;
                Some(format!(
                    "{} IN (SELECT {} FROM {} {f} WHERE {inner})",
                    cols_sql(&format!("u{}", node.id), to_parent),
                    cols_sql(&f, parent_cols).trim_matches(|c| c == '(' || c == ')'),
                    table_sql(&parent.table),
                ))
            }
        }
    }

    /// `json_build_object(...)` of a node's fields and children.
    fn object(&self, n: &PlanNode, a: &str) -> String {
        let mut pairs: Vec<String> = Vec::new();
        for (i, f) in n.fields.iter().enumerate() {
            pairs.push(format!(
                "{}, {}",
                quote_literal(&f.name),
                self.field_value(n, i, a)
            ));
        }
        for c in &n.children {
            if c.join.is_some() {
                pairs.push(format!("{}, j{}.v", quote_literal(n.child_key(c)), c.id));
            }
        }
        if pairs.is_empty() {
            return "json_build_object()".into();
        }
        // json_build_object takes at most 100 arguments: merge chunks through jsonb when wider.
        if pairs.len() <= 50 {
            return format!("json_build_object({})", pairs.join(", "));
        }
        let chunks: Vec<String> = pairs
            .chunks(50)
            .map(|c| format!("jsonb_build_object({})", c.join(", ")))
            .collect();
        format!("({})::json", chunks.join(" || "))
    }

    /// The SQL value of field `i` of node `n`.
    fn field_value(&self, n: &PlanNode, i: usize, a: &str) -> String {
        match &n.fields[i].source {
            FieldSource::Column {
                expr,
                info,
                replace,
            } => {
                let mut s = format!("{a}.{}", quote_ident(&expr.column));
                let mut is_text = info.category == 'S' && expr.steps.is_empty();
                for (step, as_text) in &expr.steps {
                    let op = match (step, as_text) {
                        (JsonStep::Path(_), true) => "#>>",
                        (JsonStep::Path(_), false) => "#>",
                        (_, true) => "->>",
                        (_, false) => "->",
                    };
                    let arg = match step {
                        JsonStep::Key(k) => quote_literal(k),
                        JsonStep::Index(i) => i.to_string(),
                        JsonStep::Path(p) => {
                            format!("{}::text[]", quote_literal(&format!("{{{}}}", p.join(","))))
                        }
                    };
                    s = format!("({s} {op} {arg})");
                    is_text = *as_text;
                }
                if is_text {
                    for (old, new) in replace {
                        s = format!(
                            "replace({s}, {}, {})",
                            quote_literal(old),
                            quote_literal(new)
                        );
                    }
                }
                s
            }
            FieldSource::Concat { parts, delimiter } => {
                let ps: Vec<String> = parts
                    .iter()
                    .map(|p| match p {
                        ConcatPart::Literal(l) => quote_literal(l),
                        ConcatPart::Field(j) => self.field_text(n, *j, a),
                    })
                    .collect();
                format!("concat_ws({}, {})", quote_literal(delimiter), ps.join(", "))
            }
        }
    }

    /// Field `i` rendered as text the way PGSync's Python would print the JSON value
    /// (`True`/`False` for booleans, JSON text otherwise).
    fn field_text(&self, n: &PlanNode, i: usize, a: &str) -> String {
        let v = self.field_value(n, i, a);
        match &n.fields[i].source {
            FieldSource::Column { expr, info, .. }
                if expr.steps.is_empty() && info.category == 'B' =>
            {
                // PGSync drops falsy values from a concat: `false` disappears, `true` prints `True`.
                format!("CASE WHEN {v} THEN 'True' END")
            }
            FieldSource::Column { expr, info, .. }
                if expr.steps.is_empty() && info.category == 'S' =>
            {
                v
            }
            FieldSource::Concat { .. } => v,
            _ => format!("(to_json({v}) #>> '{{}}')"),
        }
    }

    /// `_meta` triples of one row and its children: `[[table, column, value], ..., child m, ...]`.
    /// A node reached through a through table names, as PGSync does, the columns that link it
    /// to that table (its key for a join table holding a foreign key to it).
    fn row_meta(&self, n: &PlanNode, a: &str, through: Option<&str>, as_text: bool) -> String {
        let mut parts = vec![];
        let own = match (&n.join, through) {
            (Some(Join::Through { child_cols, .. }), Some(_)) => child_cols,
            _ => &n.key,
        };
        for k in own {
            let v = if as_text {
                format!("{a}.{}::text", quote_ident(k))
            } else {
                format!("{a}.{}", quote_ident(k))
            };
            parts.push(format!(
                "json_build_array({}, {}, {v})",
                quote_literal(&n.table.name),
                quote_literal(k)
            ));
        }
        if let (Some(u), Some(Join::Through { table, key, .. })) = (through, &n.join) {
            for k in key {
                parts.push(format!(
                    "json_build_array({}, {}, {u}.{})",
                    quote_literal(&table.name),
                    quote_literal(k),
                    quote_ident(k)
                ));
            }
        }
        for c in &n.children {
            if c.join.is_some() {
                parts.push(format!("j{}.m", c.id));
            }
        }
        format!("json_build_array({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TableId;

    fn root(key: &[&str]) -> PlanNode {
        PlanNode {
            id: 0,
            path: "[0].nodes".into(),
            table: TableId::new("public", "edition"),
            label: "edition".into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            fields: vec![],
            rename: Default::default(),
            relationship: None,
            join: None,
            children: vec![],
            base_tables: vec![],
            capturable: true,
            view: None,
        }
    }

    #[test]
    fn document_ids_give_back_their_key_values_in_key_order() {
        let r = root(&["number", "book_id"]);
        let vals = vec!["2".to_string(), "17".to_string()];
        let id = doc_id(&r, |k| {
            r.key.iter().position(|x| x == k).map(|i| vals[i].clone())
        });
        assert_eq!(id.as_deref(), Some("17|2"));
        assert_eq!(key_values_of_id(&r, "17|2"), Some(vals));
        assert_eq!(key_values_of_id(&r, "17|2|x"), None, "a value held a |");
        let single = root(&["id"]);
        assert_eq!(
            key_values_of_id(&single, "a|b"),
            Some(vec!["a|b".to_string()])
        );
    }
}
