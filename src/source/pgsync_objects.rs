//! What a running (or stopped) PGSync 7.3 left in the database for one index, so that switching
//! to this program neither leaves PGSync's slot holding WAL forever nor its triggers firing on
//! every write. The names come from PGSync's own source: the slot is
//! `re.sub("[^0-9a-zA-Z_]+", "", f"{database.lower()}_{index}")` with the `test_decoding` plugin
//! (sync.py), the triggers `"<schema>_<table>_notify"` and `"<schema>_<table>_truncate"` call
//! `<schema>.table_notify()` (base.py, trigger.py), and the materialized view `<schema>._view`
//! lists, per table, the indices that use it (view.py). The trigger function and the view are
//! shared by every PGSync index of the schema, so they are only removed when no other index
//! still uses them.

use crate::schema::resolve::IndexPlan;
use crate::schema::TableId;
use crate::sql::{quote_ident, quote_literal, quote_table};
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

/// PGSync's trigger function and materialized view names (constants.py).
const TRIGGER_FUNCTION: &str = "table_notify";
const VIEW: &str = "_view";

/// PGSync's objects for one index in its database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgsyncObjects {
    /// The index (schema.json's `index`).
    pub index: String,
    /// PGSync's slot name for the index (also its checkpoint file and Redis queue name).
    pub slot_name: String,
    /// The slot exists: `Some(bytes of WAL it retains)`.
    pub slot: Option<i64>,
    /// PGSync triggers on the index's tables: (table, trigger name).
    pub triggers: Vec<(TableId, String)>,
    /// Schemas holding PGSync's `_view` and `table_notify()`.
    pub shared: Vec<String>,
    /// PGSync indices listed in those views that are not being taken over, per table: what
    /// keeps the shared objects (and those tables' triggers) in place.
    pub others: BTreeMap<TableId, BTreeSet<String>>,
}

impl PgsyncObjects {
    /// Nothing of PGSync's is left.
    pub fn is_empty(&self) -> bool {
        self.slot.is_none() && self.triggers.is_empty() && self.shared.is_empty()
    }

    /// One line naming what was found, for logs.
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(bytes) = self.slot {
            parts.push(format!(
                "replication slot {} (test_decoding, retaining {} MiB of WAL)",
                self.slot_name,
                bytes / (1 << 20)
            ));
        }
        if !self.triggers.is_empty() {
            let names: Vec<String> = self
                .triggers
                .iter()
                .map(|(t, n)| format!("{n} on {t}"))
                .collect();
            parts.push(format!("triggers {}", names.join(", ")));
        }
        for s in &self.shared {
            parts.push(format!("{s}.{VIEW} and {s}.{TRIGGER_FUNCTION}()"));
        }
        parts.join("; ")
    }

    /// Tables of this index whose PGSync triggers other PGSync indices still need.
    pub fn shared_tables(&self) -> Vec<&TableId> {
        let mut out: Vec<&TableId> = vec![];
        for (t, _) in &self.triggers {
            if self.others.get(t).is_some_and(|o| !o.is_empty()) && !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// Some other PGSync index still uses the shared view and function.
    pub fn shared_in_use(&self) -> bool {
        self.others.values().any(|o| !o.is_empty())
    }

    /// The SQL that removes these objects (what `migrate-from-pgsync` runs after our own slot
    /// exists). With `force` false, what other PGSync indices still use is kept.
    pub fn removal_sql(&self, force: bool) -> Vec<String> {
        let mut sql = vec![];
        if self.slot.is_some() {
            sql.push(format!(
                "SELECT pg_drop_replication_slot({})",
                quote_literal(&self.slot_name)
            ));
        }
        let shared = self.shared_tables();
        for (t, name) in &self.triggers {
            if force || !shared.contains(&t) {
                sql.push(format!(
                    "DROP TRIGGER IF EXISTS {} ON {}",
                    quote_ident(name),
                    quote_table(t)
                ));
            }
        }
        if force || !self.shared_in_use() {
            for s in &self.shared {
                sql.push(format!(
                    "DROP MATERIALIZED VIEW IF EXISTS {}.{VIEW}",
                    quote_ident(s)
                ));
                sql.push(format!(
                    "DROP FUNCTION IF EXISTS {}.{TRIGGER_FUNCTION}() CASCADE",
                    quote_ident(s)
                ));
            }
        }
        sql
    }
}

/// PGSync's slot name for an index (sync.py).
pub fn slot_name(database: &str, index: &str) -> String {
    format!("{}_{index}", database.to_lowercase())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Finds PGSync's objects for `plan` in its database (`client` connects to it); `taken_over`
/// are the indices being moved off PGSync together (their use of the shared objects does not
/// keep them).
pub async fn detect(
    client: &Client,
    plan: &IndexPlan,
    taken_over: &[String],
) -> Result<PgsyncObjects> {
    let mut found = PgsyncObjects {
        index: plan.spec.index.clone(),
        slot_name: slot_name(&plan.spec.database, &plan.spec.index),
        ..Default::default()
    };
    let row = client
        .query_opt(
            "SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
             FROM pg_replication_slots \
             WHERE slot_name = $1 AND plugin = 'test_decoding' AND database = current_database()",
            &[&found.slot_name],
        )
        .await?;
    found.slot = row.map(|r| r.get(0));
    let tables: Vec<TableId> = plan.tables();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, t.tgname::text FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE p.proname = $1 AND NOT t.tgisinternal ORDER BY 1, 2, 3",
            &[&TRIGGER_FUNCTION],
        )
        .await?;
    for r in rows {
        let t = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
        if tables.contains(&t) {
            found.triggers.push((t, r.get(2)));
        }
    }
    let schemas: BTreeSet<String> = tables.iter().map(|t| t.schema.clone()).collect();
    for s in schemas {
        if shared_objects_exist(client, &s).await? {
            found.shared.push(s.clone());
            found
                .others
                .extend(other_indices(client, &s, taken_over).await?);
        }
    }
    Ok(found)
}

/// At start-up: says, per index, what PGSync left in the database (its slot retains WAL until
/// the disk fills; its triggers fire on every write), with the commands that remove it. Never
/// fails the start: a failed look-up is only logged.
pub async fn warn_at_startup(cfg: &crate::config::Config, plans: &[IndexPlan]) {
    let ours: Vec<String> = plans.iter().map(|p| p.spec.index.clone()).collect();
    for plan in plans {
        let found = match crate::config::connect(cfg, &plan.spec.database).await {
            Ok(client) => detect(&client, plan, &ours).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(f) if f.is_empty() => {}
            Ok(f) => tracing::warn!(
                index = %plan.spec.index,
                "PGSync's own objects for index {} are still in database {}: {}. Remove them with                  `pgsync migrate-from-pgsync --config <the same files>` (keeps the index when it                  matches), or by hand once PGSync is stopped: {}; and its checkpoint file .{} or                  Redis keys queue:{}*",
                plan.spec.index,
                plan.spec.database,
                f.describe(),
                f.removal_sql(false).join("; "),
                f.slot_name,
                f.slot_name
            ),
            Err(e) => {
                tracing::debug!(index = %plan.spec.index, "looking for PGSync's objects: {e}")
            }
        }
    }
}

/// PGSync's `_view` or `table_notify()` is in schema `s`.
async fn shared_objects_exist(client: &Client, s: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_matviews WHERE schemaname = $1 AND matviewname = $2) \
             OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                        WHERE n.nspname = $1 AND p.proname = $3)",
            &[&s, &VIEW, &TRIGGER_FUNCTION],
        )
        .await?;
    Ok(row.get(0))
}

/// Per table of schema `s`, the PGSync indices listed in `s._view` other than `taken_over`.
async fn other_indices(
    client: &Client,
    s: &str,
    taken_over: &[String],
) -> Result<BTreeMap<TableId, BTreeSet<String>>> {
    let mut out: BTreeMap<TableId, BTreeSet<String>> = BTreeMap::new();
    let has_view: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_matviews WHERE schemaname = $1 AND matviewname = $2)",
            &[&s, &VIEW],
        )
        .await?
        .get(0);
    if !has_view {
        return Ok(out);
    }
    let sql = format!(
        "SELECT table_name::text, i::text FROM {}.{VIEW}, unnest(indices) AS i \
         WHERE i <> ALL($1::text[])",
        quote_ident(s)
    );
    for r in client.query(&sql, &[&taken_over]).await? {
        out.entry(TableId::new(s.to_owned(), r.get::<_, String>(0)))
            .or_default()
            .insert(r.get(1));
    }
    Ok(out)
}

/// Drops PGSync's slot, first ending a session that reads it (PGSync's daemon polls it with
/// `pg_logical_slot_get_changes`), then runs the rest of [`PgsyncObjects::removal_sql`] in one
/// transaction.
pub async fn remove(client: &mut Client, found: &PgsyncObjects, force: bool) -> Result<()> {
    if found.slot.is_some() {
        client
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&found.slot_name],
            )
            .await?;
        drop_slot(client, &found.slot_name).await?;
    }
    let rest: Vec<String> = found
        .removal_sql(force)
        .into_iter()
        .filter(|s| !s.starts_with("SELECT pg_drop_replication_slot"))
        .collect();
    let tx = client.transaction().await?;
    // Objects already gone (dropped with another index's) need no "does not exist" notice.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    for s in &rest {
        tx.batch_execute(s).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Drops a slot, retrying while a terminated session still holds it.
async fn drop_slot(client: &Client, name: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        let r = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&name],
            )
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e)
                if tries < 50
                    && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_pgsync_lowercased_database_and_stripped_characters() {
        assert_eq!(slot_name("Book", "book-index.v2"), "book_bookindexv2");
        assert_eq!(slot_name("db", "Idx"), "db_Idx");
    }

    #[test]
    fn shared_triggers_and_view_are_kept_unless_forced() {
        let t = TableId::new("public", "book");
        let mut o = PgsyncObjects {
            index: "book".into(),
            slot_name: "db_book".into(),
            slot: Some(0),
            triggers: vec![(t.clone(), "public_book_notify".into())],
            shared: vec!["public".into()],
            others: BTreeMap::new(),
        };
        assert_eq!(o.removal_sql(false).len(), 4);
        o.others.insert(t, ["other".to_string()].into());
        let kept = o.removal_sql(false);
        assert_eq!(kept, vec!["SELECT pg_drop_replication_slot('db_book')"]);
        assert_eq!(o.removal_sql(true).len(), 4);
    }
}
