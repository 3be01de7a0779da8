//! What change capture needs to know about a view or materialized view node, read from the
//! catalog once at start-up: which of its columns pass a column of each base table through
//! unchanged (so a base-table row's old and new values name the view rows it produced), whether
//! each row of the view derives from one row of that base table, and, for a materialized view,
//! whether `REFRESH ... CONCURRENTLY` can be used.
//!
//! The column origins come from PostgreSQL itself: the view's definition
//! (`pg_get_viewdef`) is prepared, and the row description names, for every output column that is
//! a plain column reference, the table and column it comes from (what the server fills in for
//! any query). Whether a base-table row can affect view rows other than those carrying its own
//! values is read from the stored rule (`pg_rewrite.ev_action`): the base table must be read
//! once, and the view must use no window function, `LIMIT`/`OFFSET`, `DISTINCT ON`, set
//! operation, grouping sets or recursive query. Anything else leaves that base table opaque, and
//! a change to it rebuilds the whole index.

use super::model::SchemaProblem;
use super::resolve::{IndexPlan, PlanNode};
use super::TableId;
use crate::Result;
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::Client;

/// Catalog facts about a view (or materialized view) node.
#[derive(Debug, Clone, Default)]
pub struct ViewInfo {
    /// A materialized view, which the daemon refreshes (or follows the refreshes of).
    pub materialized: bool,
    /// It has a unique index on plain columns without a predicate, so
    /// `REFRESH MATERIALIZED VIEW CONCURRENTLY` can be used.
    pub concurrent_refresh: bool,
    /// For each table in `base_tables`: how the view's rows follow its rows.
    pub lineage: BTreeMap<TableId, Lineage>,
    /// Tables the view reads (directly or through other views) that `base_tables` does not list:
    /// their changes are not captured for this node.
    pub unlisted: Vec<TableId>,
}

/// How a view's rows follow one of its base tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lineage {
    /// Each view row derives from base rows carrying the same values in these columns
    /// (view column → base column).
    Columns(BTreeMap<String, String>),
    /// No such mapping; the reason, for `validate`.
    Opaque(String),
}

impl ViewInfo {
    /// The base column each of `view_cols` passes through from `base`, in order, when all do.
    pub fn base_columns(&self, base: &TableId, view_cols: &[String]) -> Option<Vec<String>> {
        let Some(Lineage::Columns(map)) = self.lineage.get(base) else {
            return None;
        };
        view_cols.iter().map(|c| map.get(c).cloned()).collect()
    }
}

/// Reads [`ViewInfo`] for every view and materialized view node of `plans`. A listed base table
/// that does not exist, or is not a table, is a problem of the schema.
pub async fn load(client: &Client, plans: &mut [IndexPlan]) -> Result<Vec<SchemaProblem>> {
    let mut problems = vec![];
    for plan in plans.iter_mut() {
        load_node(client, &mut plan.root, &mut problems).await?;
    }
    Ok(problems)
}

async fn load_node(
    client: &Client,
    node: &mut PlanNode,
    problems: &mut Vec<SchemaProblem>,
) -> Result<()> {
    if !node.capturable {
        if let Some((oid, kind)) = relation(client, &node.table).await? {
            if matches!(kind, 'v' | 'm') {
                check_base_tables(client, node, problems).await?;
                node.view = Some(view_info(client, node, oid, kind == 'm').await?);
            }
        }
    }
    for c in node.children.iter_mut() {
        Box::pin(load_node(client, c, problems)).await?;
    }
    Ok(())
}

/// The oid and kind of a relation, if it exists.
async fn relation(client: &Client, t: &TableId) -> Result<Option<(u32, char)>> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&t.schema, &t.name],
        )
        .await?;
    Ok(row.map(|r| {
        let kind: String = r.get(1);
        (r.get(0), kind.chars().next().unwrap_or('r'))
    }))
}

async fn check_base_tables(
    client: &Client,
    node: &PlanNode,
    problems: &mut Vec<SchemaProblem>,
) -> Result<()> {
    for (i, b) in node.base_tables.iter().enumerate() {
        let found = match relation(client, b).await? {
            Some((_, 'r' | 'p')) => continue,
            Some((_, k)) => {
                format!("\"{b}\" (relkind {k}: not a table, so its changes cannot be captured)")
            }
            None => format!("{:?} (no such table: {b})", b.name),
        };
        problems.push(SchemaProblem {
            path: format!("{}.base_tables[{i}]", node.path),
            found,
            allowed: format!(
                "a table that {} reads, as schema.table or a table of schema {:?}",
                node.table, node.table.schema
            ),
        });
    }
    Ok(())
}

async fn view_info(
    client: &Client,
    node: &PlanNode,
    oid: u32,
    materialized: bool,
) -> Result<ViewInfo> {
    let origins = column_origins(client, oid).await;
    let rule: Option<String> = client
        .query_opt(
            "SELECT ev_action::text FROM pg_rewrite WHERE ev_class = $1 AND rulename = '_RETURN'",
            &[&oid],
        )
        .await?
        .map(|r| r.get(0));
    let shape = rule.as_deref().and_then(unsafe_shape);
    let mut lineage = BTreeMap::new();
    for b in &node.base_tables {
        let l = match (&origins, &shape, relation(client, b).await?) {
            (Err(e), _, _) => Lineage::Opaque(e.clone()),
            (_, Some(why), _) => Lineage::Opaque(why.clone()),
            (_, _, None) => Lineage::Opaque(format!("{b} does not exist")),
            (Ok(o), None, Some((boid, _))) => {
                base_lineage(client, o, rule.as_deref().unwrap_or(""), b, boid).await?
            }
        };
        lineage.insert(b.clone(), l);
    }
    Ok(ViewInfo {
        materialized,
        concurrent_refresh: materialized && has_unique_index(client, oid).await?,
        lineage,
        unlisted: unlisted_tables(client, oid, &node.base_tables).await?,
    })
}

/// Each view column's name and, when it is a plain column reference, the table oid and attribute
/// number it comes from; `Err` with the reason when the definition cannot be prepared.
async fn column_origins(
    client: &Client,
    oid: u32,
) -> std::result::Result<Vec<(String, Option<(u32, i16)>)>, String> {
    let def: String = client
        .query_one("SELECT pg_get_viewdef($1::oid)", &[&oid])
        .await
        .map_err(|e| format!("its definition cannot be read: {e}"))?
        .get(0);
    let names: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(|e| format!("its columns cannot be read: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stmt = client
        .prepare(def.trim().trim_end_matches(';'))
        .await
        .map_err(|e| format!("its definition cannot be prepared: {e}"))?;
    if stmt.columns().len() != names.len() {
        return Err("its definition does not match its columns".into());
    }
    Ok(names
        .into_iter()
        .zip(stmt.columns())
        .map(|(n, c)| (n, c.table_oid().zip(c.column_id())))
        .collect())
}

/// Why a base-table row could affect view rows that do not carry its own values, judged from
/// the stored rule's query tree (every nested query included); `None` when nothing does.
fn unsafe_shape(rule: &str) -> Option<String> {
    let checks = [
        (":hasWindowFuncs true", "it uses a window function"),
        (":hasDistinctOn true", "it uses DISTINCT ON"),
        (":limitCount {", "it uses LIMIT"),
        (":limitOffset {", "it uses OFFSET"),
        (":setOperations {", "it uses UNION, INTERSECT or EXCEPT"),
        (":groupingSets (", "it uses GROUPING SETS, ROLLUP or CUBE"),
        (":hasRecursive true", "it uses WITH RECURSIVE"),
    ];
    checks
        .iter()
        .find(|(token, _)| rule.contains(token))
        .map(|(_, why)| why.to_string())
}

/// The view columns that pass a column of `base` through, when the rule reads `base` once.
async fn base_lineage(
    client: &Client,
    origins: &[(String, Option<(u32, i16)>)],
    rule: &str,
    base: &TableId,
    base_oid: u32,
) -> Result<Lineage> {
    let reads = rule
        .matches(&format!(":rtekind 0 :relid {base_oid} "))
        .count();
    if reads != 1 {
        return Ok(Lineage::Opaque(if reads == 0 {
            format!("it does not read {base} directly (through another view?)")
        } else {
            format!("it reads {base} {reads} times (a self-join or a subquery)")
        }));
    }
    let names: HashMap<i16, String> = client
        .query(
            "SELECT attnum, attname::text FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&base_oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let map: BTreeMap<String, String> = origins
        .iter()
        .filter_map(|(view_col, origin)| match origin {
            Some((t, a)) if *t == base_oid => Some((view_col.clone(), names.get(a)?.clone())),
            _ => None,
        })
        .collect();
    Ok(Lineage::Columns(map))
}

async fn has_unique_index(client: &Client, oid: u32) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1 AND indisunique \
             AND indisvalid AND indpred IS NULL AND indexprs IS NULL)",
            &[&oid],
        )
        .await?
        .get(0))
}

/// Tables the view reads, through other views too, that are not in `listed`.
async fn unlisted_tables(client: &Client, oid: u32, listed: &[TableId]) -> Result<Vec<TableId>> {
    let rows = client
        .query(
            "WITH RECURSIVE reads(oid) AS ( \
                 SELECT $1::oid \
                 UNION \
                 SELECT d.refobjid FROM reads \
                 JOIN pg_rewrite r ON r.ev_class = reads.oid \
                 JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                      AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> reads.oid) \
             SELECT DISTINCT n.nspname::text, c.relname::text FROM reads \
             JOIN pg_class c ON c.oid = reads.oid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') ORDER BY 1, 2",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|t| !listed.contains(t))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_with_rows_depending_on_other_rows_are_opaque() {
        let plain = ":hasWindowFuncs false :limitOffset <> :limitCount <> :setOperations <>";
        assert_eq!(unsafe_shape(plain), None);
        let limited = ":hasWindowFuncs false :limitOffset <> :limitCount {CONST :consttype 20}";
        assert_eq!(unsafe_shape(limited).as_deref(), Some("it uses LIMIT"));
        assert!(unsafe_shape(":hasWindowFuncs true").is_some());
        assert!(unsafe_shape(":groupingSets ({GROUPINGSET})").is_some());
    }

    #[test]
    fn base_columns_need_every_column_mapped() {
        let b = TableId::new("public", "book");
        let mut info = ViewInfo::default();
        info.lineage.insert(
            b.clone(),
            Lineage::Columns([("book_id".to_string(), "id".to_string())].into()),
        );
        assert_eq!(
            info.base_columns(&b, &["book_id".into()]),
            Some(vec!["id".to_string()])
        );
        assert_eq!(info.base_columns(&b, &["book_id".into(), "n".into()]), None);
        assert_eq!(
            info.base_columns(&TableId::new("public", "x"), &["book_id".into()]),
            None
        );
    }
}
