//! Which root documents a changed row belongs to. For every place a table appears in the tree we
//! know which of the changed row's columns link it to its parent; the parent rows holding those
//! values are then walked up to the root through the same joins the document query uses, in one
//! batched statement per place. This asks PostgreSQL, not the search engine, so documents written
//! a moment ago are never missed. A row of a view node's base table is first turned into the
//! view rows it names, through the view columns that pass its columns through
//! ([`crate::schema::view`]), and then follows the view's own effects.

use super::document::{keys_in_params, table_sql};
use super::quote_ident;
use crate::schema::resolve::{FieldSource, IndexPlan, Join, PlanNode};
use crate::schema::TableId;
use std::sync::Arc;

/// How a change to a table affects the documents of an index.
#[derive(Debug, Clone)]
pub enum Effect {
    /// The table is the root: the row's own key is the document's key.
    Root,
    /// The row links to parent rows through `row_cols` = `parent.parent_cols`; the roots are
    /// found with `sql`, whose parameters are one `text[]` per column of `row_cols`.
    Parent {
        /// Columns of the changed row that hold the link values.
        row_cols: Vec<String>,
        /// Statement returning root key values as text, one column per root key column.
        /// `None` when the parent is the root and the link columns are its key.
        sql: Option<String>,
    },
    /// A row of a base table of a view node (`view.table`): the view rows it produces, or
    /// produced, carry its values in `view.columns`, so the change is applied to the view as if
    /// its own rows had changed. Without such columns every document is rebuilt.
    View(Arc<ViewEffect>),
    /// No way to tell which documents changed: rebuild all.
    All,
}

/// How a change to a base table reaches the documents through a view node.
#[derive(Debug, Clone)]
pub struct ViewEffect {
    /// The view node's relation.
    pub table: Arc<TableId>,
    /// A materialized view: its rows change only when it is refreshed.
    pub materialized: bool,
    /// Pairs (base column, view column) of every view column the view's own effects read, when
    /// each passes a base column through; `None`: no narrower set than the whole index.
    pub columns: Option<Vec<(String, String)>>,
    /// The effects of a change to the view's rows (root or parent links).
    pub inner: Vec<Effect>,
}

/// Every effect a change to `table` has on `plan`'s documents.
pub fn effects(plan: &IndexPlan, table: &TableId) -> Vec<Effect> {
    let mut out = vec![];
    let mut chain: Vec<&PlanNode> = vec![];
    collect(plan, &plan.root, table, &mut chain, &mut out);
    out
}

fn collect<'a>(
    plan: &IndexPlan,
    node: &'a PlanNode,
    table: &TableId,
    chain: &mut Vec<&'a PlanNode>,
    out: &mut Vec<Effect>,
) {
    chain.push(node);
    let parent = if chain.len() >= 2 {
        Some(chain[chain.len() - 2])
    } else {
        None
    };
    if &node.table == table {
        match (parent, &node.join) {
            (None, _) => out.push(Effect::Root),
            (
                Some(p),
                Some(Join::Direct {
                    child_cols,
                    parent_cols,
                }),
            ) => out.push(parent_effect(
                plan,
                &chain[..chain.len() - 1],
                p,
                child_cols,
                parent_cols,
            )),
            (
                Some(_),
                Some(Join::Through {
                    to_child,
                    child_cols,
                    ..
                }),
            ) => {
                // The child row links to join-table rows, which link to the parent: walk from the
                // join table's rows (`to_child` = child_cols) upwards.
                out.push(through_child_effect(plan, chain, to_child, child_cols));
            }
            (Some(_), None) => {}
        }
    }
    if let (
        Some(p),
        Some(Join::Through {
            table: t,
            to_parent,
            parent_cols,
            ..
        }),
    ) = (parent, &node.join)
    {
        if t == table {
            out.push(parent_effect(
                plan,
                &chain[..chain.len() - 1],
                p,
                to_parent,
                parent_cols,
            ));
        }
    }
    if node.base_tables.contains(table) {
        out.push(view_effect(plan, node, table));
    }
    for c in &node.children {
        collect(plan, c, table, chain, out);
    }
    chain.pop();
}

/// A change to `base`, a base table of view node `node`, as a change to the view's own rows.
fn view_effect(plan: &IndexPlan, node: &PlanNode, base: &TableId) -> Effect {
    let inner: Vec<Effect> = effects(plan, &node.table)
        .into_iter()
        .filter(|e| matches!(e, Effect::Root | Effect::Parent { .. }))
        .collect();
    let mut needed: Vec<String> = vec![];
    for e in &inner {
        let cols = match e {
            Effect::Root => root_columns(plan),
            Effect::Parent { row_cols, .. } => row_cols.clone(),
            _ => vec![],
        };
        for c in cols {
            if !needed.contains(&c) {
                needed.push(c);
            }
        }
    }
    let info = node.view.as_ref();
    let columns = info
        .and_then(|v| v.base_columns(base, &needed))
        .map(|b| b.into_iter().zip(needed).collect());
    Effect::View(Arc::new(ViewEffect {
        table: Arc::new(node.table.clone()),
        materialized: info.is_some_and(|v| v.materialized),
        columns,
        inner,
    }))
}

/// The root's columns a change must carry: its key, and its routing column when routing is a
/// plain column (so the document is deleted where it was indexed).
pub fn root_columns(plan: &IndexPlan) -> Vec<String> {
    let mut cols = plan.root.key.clone();
    if let Some(i) = plan.routing_field {
        if let FieldSource::Column { expr, .. } = &plan.root.fields[i].source {
            if expr.steps.is_empty() && !cols.contains(&expr.column) {
                cols.push(expr.column.clone());
            }
        }
    }
    cols
}

/// The changed row's `row_cols` values equal `parent.parent_cols`; `chain` ends at `parent`.
fn parent_effect(
    plan: &IndexPlan,
    chain: &[&PlanNode],
    parent: &PlanNode,
    row_cols: &[String],
    parent_cols: &[String],
) -> Effect {
    let is_root = chain.len() == 1;
    if is_root && same_set(parent_cols, &parent.key) && parent_cols.len() == parent.key.len() {
        // Reorder values into key order at resolution time: keep row_cols in key order.
        let ordered: Vec<String> = parent
            .key
            .iter()
            .map(|k| row_cols[parent_cols.iter().position(|c| c == k).unwrap()].clone())
            .collect();
        return Effect::Parent {
            row_cols: ordered,
            sql: None,
        };
    }
    let alias = format!("a{}", parent.id);
    let types: Vec<&str> = parent_cols
        .iter()
        .map(|c| plan.column_type(&parent.table, c))
        .collect();
    let cond = keys_in_params(&alias, parent_cols, &types, 1);
    Effect::Parent {
        row_cols: row_cols.to_vec(),
        sql: Some(roots_sql(chain, cond)),
    }
}

/// A changed child row reached through a join table: its `child_cols` values equal the join
/// table's `to_child`; the join table rows' parents lead to the roots.
fn through_child_effect(
    plan: &IndexPlan,
    chain: &[&PlanNode],
    to_child: &[String],
    child_cols: &[String],
) -> Effect {
    let node = chain[chain.len() - 1];
    let parent_chain = &chain[..chain.len() - 1];
    let parent = parent_chain[parent_chain.len() - 1];
    let Some(Join::Through {
        table,
        to_parent,
        parent_cols,
        ..
    }) = &node.join
    else {
        return Effect::All;
    };
    let u = format!("w{}", node.id);
    let types: Vec<&str> = to_child
        .iter()
        .map(|c| plan.column_type(table, c))
        .collect();
    let inner = keys_in_params(&u, to_child, &types, 1);
    let alias = format!("a{}", parent.id);
    let cond = format!(
        "{} IN (SELECT {} FROM {} {u} WHERE {inner})",
        tuple(&alias, parent_cols),
        list(&u, to_parent),
        table_sql(table)
    );
    Effect::Parent {
        row_cols: child_cols.to_vec(),
        sql: Some(roots_sql(parent_chain, cond)),
    }
}

/// `SELECT root key::text ... FROM root WHERE ...` reaching `chain.last()` rows satisfying
/// `cond` (written on alias `a<id>` of the last node).
fn roots_sql(chain: &[&PlanNode], cond: String) -> String {
    let mut cond = cond;
    for i in (1..chain.len()).rev() {
        let node = chain[i];
        let parent = chain[i - 1];
        let a = format!("a{}", node.id);
        let pa = format!("a{}", parent.id);
        cond = match &node.join {
            Some(Join::Direct {
                child_cols,
                parent_cols,
            }) => format!(
                "{} IN (SELECT {} FROM {} {a} WHERE {cond})",
                tuple(&pa, parent_cols),
                list(&a, child_cols),
                table_sql(&node.table)
            ),
            Some(Join::Through {
                table,
                to_parent,
                parent_cols,
                to_child,
                child_cols,
                ..
            }) => {
                let u = format!("w{}", node.id);
                let on: Vec<String> = to_child
                    .iter()
                    .zip(child_cols)
                    .map(|(t, c)| format!("{u}.{} = {a}.{}", quote_ident(t), quote_ident(c)))
                    .collect();
                format!(
                    "{} IN (SELECT {} FROM {} {u} JOIN {} {a} ON {} WHERE {cond})",
                    tuple(&pa, parent_cols),
                    list(&u, to_parent),
                    table_sql(table),
                    table_sql(&node.table),
                    on.join(" AND ")
                )
            }
            None => cond,
        };
    }
    let root = chain[0];
    let a = format!("a{}", root.id);
    let keys: Vec<String> = root
        .key
        .iter()
        .map(|k| format!("{a}.{}::text", quote_ident(k)))
        .collect();
    format!(
        "SELECT DISTINCT {} FROM {} {a} WHERE {cond}",
        keys.join(", "),
        table_sql(&root.table)
    )
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

fn list(alias: &str, cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("{alias}.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn tuple(alias: &str, cols: &[String]) -> String {
    if cols.len() == 1 {
        list(alias, cols)
    } else {
        format!("({})", list(alias, cols))
    }
}
