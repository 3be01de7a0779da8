//! Seeing `REFRESH MATERIALIZED VIEW` made by others, for indices whose materialized views the
//! daemon does not refresh itself (`capture.refresh_materialized_views = false`). A refresh
//! writes no row change that logical decoding or a row trigger could capture (materialized views
//! cannot be published and cannot carry triggers), but it fires `ddl_command_end` event
//! triggers. `bootstrap` installs one per index whose function records each refresh where the
//! index's changes come from: a transactional logical message (`pg_logical_emit_message`) in
//! `wal` mode, a change-log row with operation `R` in `notify` mode. Either arrives, in commit
//! order, as a [`ChangeOp::Refresh`](super::change::ChangeOp::Refresh) of the view.
//!
//! Only a superuser can create event triggers: a superuser runs `pgsync bootstrap` once, and
//! later bootstraps by another role find the trigger in place.

use super::notify::LogNames;
use crate::error::{Error, Result};
use crate::schema::TableId;
use crate::sql::{quote_ident, quote_literal};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Where a refresh is recorded.
pub enum Record<'a> {
    /// A logical message with this prefix, read from the index's slot.
    Message(&'a str),
    /// A row in the index's change log, and a wake-up on its channel.
    Log(&'a LogNames),
}

/// Names of the event trigger and its function for one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNames {
    /// The event trigger (event triggers are per database).
    pub trigger: String,
    /// Its function, in schema `public`.
    pub function: String,
}

impl EventNames {
    /// The names for `index` of `database`, with the configured name prefix.
    pub fn new(prefix: &str, database: &str, index: &str) -> Self {
        let parts = [prefix, database, index];
        EventNames {
            trigger: super::slot::identifier(&parts, "_mvrefresh"),
            function: super::slot::identifier(&parts, "_mvrefresh_fn"),
        }
    }

    fn function_sql(&self) -> String {
        format!("public.{}", quote_ident(&self.function))
    }
}

/// The prefix of the logical messages that record refreshes for the index streaming from `slot`.
pub fn message_prefix(slot: &str) -> String {
    format!("pgsync-rs.refresh:{slot}")
}

/// The materialized view a refresh message names (`{"schema": ..., "table": ...}`).
pub fn parse_message(content: &[u8]) -> Option<TableId> {
    let v: serde_json::Value = serde_json::from_slice(content).ok()?;
    Some(TableId::new(v["schema"].as_str()?, v["table"].as_str()?))
}

/// The event trigger function: one record per refreshed materialized view.
fn function_sql(names: &EventNames, record: &Record<'_>) -> String {
    let action = match record {
        Record::Message(prefix) => format!(
            "PERFORM pg_logical_emit_message(true, {}, json_build_object('schema', r.nspname, 'table', r.relname)::text);",
            quote_literal(prefix)
        ),
        // The change log is gone only after a partial teardown: never fail the user's REFRESH.
        Record::Log(log) => format!(
            "BEGIN
      INSERT INTO {}.{} (tbl_schema, tbl_name, op) VALUES (r.nspname, r.relname, 'R');
      PERFORM pg_notify({}, '');
    EXCEPTION WHEN undefined_table THEN NULL;
    END;",
            quote_ident(&log.schema),
            quote_ident(&log.table),
            quote_literal(&log.channel)
        ),
    };
    format!(
        "CREATE OR REPLACE FUNCTION {func}() RETURNS event_trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $pgsync$
DECLARE r record;
BEGIN
  FOR r IN SELECT n.nspname::text AS nspname, c.relname::text AS relname
           FROM pg_event_trigger_ddl_commands() e
           JOIN pg_class c ON c.oid = e.objid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE e.command_tag = 'REFRESH MATERIALIZED VIEW' LOOP
    {action}
  END LOOP;
END
$pgsync$",
        func = names.function_sql(),
    )
}

/// Creates the event trigger and its function unless the trigger exists. Returns whether it was
/// created. Without the right to (not a superuser), an error says what to do.
pub async fn install(
    client: &mut Client,
    names: &EventNames,
    record: Record<'_>,
    views: &[TableId],
) -> Result<bool> {
    if exists(client, names).await? {
        return Ok(false);
    }
    let denied = |e: tokio_postgres::Error| {
        let refused = e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE);
        let err = Error::from(e).context(format!(
            "creating event trigger {} (it tells the daemon when materialized views {} are refreshed)",
            names.trigger,
            views.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        ));
        if refused {
            err.with_hint("only a superuser can create event triggers: run `pgsync bootstrap` once as a superuser (later runs by this role find the trigger), or set capture.refresh_materialized_views = true to let the daemon refresh them itself")
        } else {
            err
        }
    };
    let tx = client.transaction().await?;
    tx.batch_execute(&function_sql(names, &record))
        .await
        .map_err(denied)?;
    tx.batch_execute(&format!(
        "CREATE EVENT TRIGGER {} ON ddl_command_end WHEN TAG IN ('REFRESH MATERIALIZED VIEW') EXECUTE FUNCTION {}()",
        quote_ident(&names.trigger),
        names.function_sql()
    ))
    .await
    .map_err(denied)?;
    tx.commit().await.map_err(denied)?;
    Ok(true)
}

/// Whether the event trigger exists.
pub async fn exists(client: &Client, names: &EventNames) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1)",
            &[&names.trigger],
        )
        .await?
        .get(0))
}

/// Drops the event trigger and its function, if they exist.
pub async fn remove(client: &Client, names: &EventNames) -> Result<()> {
    if !exists(client, names).await? {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "DROP EVENT TRIGGER IF EXISTS {}; DROP FUNCTION IF EXISTS {}();",
            quote_ident(&names.trigger),
            names.function_sql()
        ))
        .await
        .map_err(|e| {
            let denied = e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE);
            let err = Error::from(e).context(format!("dropping event trigger {}", names.trigger));
            if denied {
                err.with_hint("only its owner (the superuser who ran bootstrap) can drop it: run teardown as a superuser")
            } else {
                err
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_messages_name_the_view() {
        let t = parse_message(br#"{"schema": "public", "table": "Score"}"#);
        assert_eq!(t, Some(TableId::new("public", "Score")));
        assert_eq!(parse_message(b"not json"), None);
        assert_eq!(parse_message(br#"{"schema": "public"}"#), None);
    }

    #[test]
    fn names_are_per_index_and_short() {
        let a = EventNames::new("pgsync", "db", "books");
        let b = EventNames::new("pgsync", "db", "authors");
        assert_ne!(a.trigger, b.trigger);
        assert!(a.trigger.len() <= 63 && a.function.len() <= 63);
        let sql = function_sql(&a, &Record::Message("pgsync-rs.refresh:slot"));
        assert!(
            sql.contains("pg_logical_emit_message(true, 'pgsync-rs.refresh:slot'"),
            "{sql}"
        );
    }
}
