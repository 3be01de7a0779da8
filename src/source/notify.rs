//! Trigger capture (`capture.mode = "notify"`), for databases that forbid replication slots.
//!
//! `bootstrap` installs, on every table of an index, an AFTER INSERT/UPDATE/DELETE row trigger and
//! an AFTER TRUNCATE statement trigger. They write each change (table, operation, the old and new
//! values of the key and foreign-key columns the index needs, and the writing transaction's id)
//! into a change-log table of the index, and `pg_notify` a channel to wake the listener.
//!
//! # Reading the log without losing rows
//!
//! Log ids are handed out when rows are written, not when their transactions commit, so "every id
//! past the last one read" misses a row written by a transaction that commits late. The listener
//! instead orders by transaction id and only reads rows of transactions below the server's
//! snapshot `xmin` (`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below it has
//! ended, and every transaction still to write gets a larger id, so the range `[checkpoint, xmin)`
//! is complete and final once read. A checkpoint `P` means "every row with a transaction id below
//! `P` is written"; rows below the stored checkpoint are deleted. A daemon that was down catches
//! up from the log, since nothing is removed before its documents are written.
//!
//! The order within a range is by transaction id, not commit order; that is enough because every
//! change reduces to "rebuild these root documents from the rows as they are now", and the only
//! whole-index step, a root TRUNCATE, excludes concurrent writers by its lock.
//!
//! Cost: an open transaction that holds a transaction id (anywhere on the server) holds `xmin`
//! back, and changes wait for it; the README says so.

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::schema::resolve::{FieldSource, IndexPlan};
use crate::schema::TableId;
use crate::source::change::{Change, ChangeOp, Row, Transaction};
use crate::sql::roots::{effects, Effect};
use crate::sql::{quote_ident, quote_literal, quote_table};
use actix::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_postgres::Client;

/// Names of what notify-mode bootstrap creates for one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogNames {
    /// Schema of the change-log table and the trigger functions.
    pub schema: String,
    /// The change-log table.
    pub table: String,
    /// The `LISTEN` channel.
    pub channel: String,
    /// Name of the row trigger on every table (trigger names are per table).
    pub row_trigger: String,
    /// Name of the TRUNCATE trigger on every table.
    pub truncate_trigger: String,
    /// Prefix hashed with each table's name into its trigger function's name.
    prefix: String,
    database: String,
    index: String,
}

impl LogNames {
    /// Names for `index` of `database`, with the configured name prefix; the objects live in
    /// `public` (the schema every database has).
    pub fn new(prefix: &str, database: &str, index: &str) -> Self {
        let parts = [prefix, database, index];
        LogNames {
            schema: "public".into(),
            table: super::slot::identifier(&parts, "_log"),
            channel: super::slot::identifier(&parts, "_wake"),
            row_trigger: super::slot::identifier(&parts, "_row"),
            truncate_trigger: super::slot::identifier(&parts, "_trunc"),
            prefix: prefix.into(),
            database: database.into(),
            index: index.into(),
        }
    }

    /// The trigger function written for `table`.
    pub fn function(&self, table: &TableId) -> String {
        super::slot::identifier(
            &[
                &self.prefix,
                &self.database,
                &self.index,
                &table.schema,
                &table.name,
            ],
            "_fn",
        )
    }

    fn log_sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// The columns of `table` whose old and new values the index needs to find the documents a change
/// touches: the root key and routing column where `table` is the root, the link columns where it
/// is a child or join table. Sorted, so the trigger text is the same on every bootstrap.
pub fn captured_columns(plan: &IndexPlan, table: &TableId) -> Vec<String> {
    let mut cols = BTreeSet::new();
    for e in effects(plan, table) {
        match e {
            Effect::Root => {
                cols.extend(plan.root.key.iter().cloned());
                if let Some(i) = plan.routing_field {
                    if let FieldSource::Column { expr, .. } = &plan.root.fields[i].source {
                        if expr.steps.is_empty() {
                            cols.insert(expr.column.clone());
                        }
                    }
                }
            }
            Effect::Parent { row_cols, .. } => cols.extend(row_cols),
            // A base table of a view: the columns that name the view rows it produced.
            Effect::View(v) => cols.extend(v.columns.iter().flatten().map(|(b, _)| b.clone())),
            Effect::All => {}
        }
    }
    cols.into_iter().collect()
}

/// `jsonb_build_object('c', R."c"::text, ...)` for `cols` of the trigger row `r` (`OLD`/`NEW`).
fn row_json(r: &str, cols: &[String]) -> String {
    if cols.is_empty() {
        return "'{}'::jsonb".into();
    }
    // jsonb_build_object takes at most 100 arguments: concatenate objects of 50 columns.
    let parts: Vec<String> = cols
        .chunks(50)
        .map(|chunk| {
            let args: Vec<String> = chunk
                .iter()
                .map(|c| format!("{}, {r}.{}::text", quote_literal(c), quote_ident(c)))
                .collect();
            format!("jsonb_build_object({})", args.join(", "))
        })
        .collect();
    parts.join(" || ")
}

/// The trigger function for one table. It runs as its owner (`SECURITY DEFINER`, the role that
/// bootstrapped), so application roles that write the tables need no rights on the change log,
/// with `search_path` pinned so nothing the writing session put on its path can stand in for
/// what the body calls. `SET` clauses pin the text format of values to what the initial load and
/// the WAL reader see, whatever the writing session's settings are.
fn function_sql(names: &LogNames, table: &TableId, cols: &[String]) -> String {
    let body = function_body(names, cols);
    let tag = dollar_tag(&body);
    format!(
        "CREATE OR REPLACE FUNCTION {schema}.{func}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, MDY' SET timezone = 'UTC' SET intervalstyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex'
AS {tag}{body}{tag}",
        schema = quote_ident(&names.schema),
        func = quote_ident(&names.function(table)),
    )
}

/// A dollar-quoting tag that does not occur in `body` (a column may be called anything,
/// `$pgsync$` included).
fn dollar_tag(body: &str) -> String {
    (0..)
        .map(|n| {
            if n == 0 {
                "$pgsync$".to_owned()
            } else {
                format!("$pgsync{n}$")
            }
        })
        .find(|t| !body.contains(t.as_str()))
        .expect("some tag is free")
}

fn function_body(names: &LogNames, cols: &[String]) -> String {
    let log = names.log_sql();
    format!(
        "
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {log} (tbl_schema, tbl_name, op) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'T');
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {log} (tbl_schema, tbl_name, op, new_row) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'I', {new});
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO {log} (tbl_schema, tbl_name, op, old_row, new_row) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'U', {old}, {new});
  ELSE
    INSERT INTO {log} (tbl_schema, tbl_name, op, old_row) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'D', {old});
  END IF;
  PERFORM pg_notify({channel}, '');
  RETURN NULL;
END
",
        new = row_json("NEW", cols),
        old = row_json("OLD", cols),
        channel = quote_literal(&names.channel),
    )
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy)]
pub struct InstallOutcome {
    /// The change log did not exist: the caller must run an initial sync.
    pub log_created: bool,
    /// Tables that carry the triggers (views are covered by their base tables).
    pub tables: usize,
}

/// Creates the change log, trigger functions and triggers for `plan`, idempotently (running it
/// twice changes nothing that matters and never forces a re-index), in one transaction.
pub async fn install(
    client: &mut Client,
    names: &LogNames,
    plan: &IndexPlan,
) -> Result<InstallOutcome> {
    let fail = |what: String| {
        move |e: tokio_postgres::Error| {
            let denied = e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
            });
            let err = Error::from(e).context(what);
            if denied {
                err.with_hint(
                    "notify mode needs CREATE on schema public and ownership (or TRIGGER privilege) of every table in the schema; grant them, or run bootstrap as the tables' owner",
                )
            } else {
                err
            }
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(fail("starting the notify bootstrap".into()))?;
    // "already exists, skipping" notices say nothing to an operator.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(fail("starting the notify bootstrap".into()))?;
    let existed: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = $1 AND c.relname = $2)",
            &[&names.schema, &names.table],
        )
        .await
        .map_err(fail("looking up the change log".into()))?
        .get(0);
    let log = names.log_sql();
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {log} (
            id bigserial PRIMARY KEY,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            tbl_schema text NOT NULL,
            tbl_name text NOT NULL,
            op \"char\" NOT NULL,
            old_row jsonb,
            new_row jsonb);
         CREATE INDEX IF NOT EXISTS {idx} ON {log} (xid, id);",
        idx = quote_ident(&format!("{}_xid", names.table)),
    ))
    .await
    .map_err(fail(format!("creating the change log {log}")))?;
    let mut triggered = 0;
    for t in plan.tables() {
        let kind: Option<String> = tx
            .query_opt(
                "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(fail(format!("looking up table {t}")))?
            .map(|r| r.get(0));
        match kind.as_deref() {
            Some("r" | "p") => {}
            Some(_) => {
                // A view: its base tables (listed in `base_tables`) carry the triggers.
                continue;
            }
            None => {
                return Err(Error::schema(format!("table {t} does not exist"))
                    .with_hint("check the schema and table names in schema.json (case matters)"))
            }
        }
        triggered += 1;
        let cols = captured_columns(plan, &t);
        let func = format!(
            "{}.{}",
            quote_ident(&names.schema),
            quote_ident(&names.function(&t))
        );
        tx.batch_execute(&function_sql(names, &t, &cols))
            .await
            .map_err(fail(format!("creating trigger function {func} for {t}")))?;
        // Only missing triggers are created: a second bootstrap leaves the tables alone.
        let present: Vec<String> = tx
            .query(
                "SELECT tg.tgname::text FROM pg_trigger tg
                 JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND NOT tg.tgisinternal",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(fail(format!("looking up the triggers on {t}")))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let tbl = quote_table(&t);
        if !present.contains(&names.row_trigger) {
            tx.batch_execute(&format!(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {tbl}
                     FOR EACH ROW EXECUTE FUNCTION {func}()",
                quote_ident(&names.row_trigger)
            ))
            .await
            .map_err(fail(format!("creating the row trigger on {t}")))?;
        }
        if !present.contains(&names.truncate_trigger) {
            tx.batch_execute(&format!(
                "CREATE TRIGGER {} AFTER TRUNCATE ON {tbl}
                     FOR EACH STATEMENT EXECUTE FUNCTION {func}()",
                quote_ident(&names.truncate_trigger)
            ))
            .await
            .map_err(fail(format!("creating the TRUNCATE trigger on {t}")))?;
        }
    }
    tx.commit()
        .await
        .map_err(fail("committing the notify bootstrap".into()))?;
    Ok(InstallOutcome {
        log_created: !existed,
        tables: triggered,
    })
}

/// Removes the triggers, trigger functions and change log [`install`] made for `tables`.
pub async fn remove(client: &mut Client, names: &LogNames, tables: &[TableId]) -> Result<()> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    for t in tables {
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
                &[&t.schema, &t.name],
            )
            .await?
            .get(0);
        if exists {
            tx.batch_execute(&format!(
                "DROP TRIGGER IF EXISTS {} ON {tbl}; DROP TRIGGER IF EXISTS {} ON {tbl};",
                quote_ident(&names.row_trigger),
                quote_ident(&names.truncate_trigger),
                tbl = quote_table(t),
            ))
            .await
            .map_err(|e| Error::from(e).context(format!("dropping the triggers on {t}")))?;
        }
        tx.batch_execute(&format!(
            "DROP FUNCTION IF EXISTS {}.{}()",
            quote_ident(&names.schema),
            quote_ident(&names.function(t))
        ))
        .await?;
    }
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", names.log_sql()))
        .await
        .map_err(|e| Error::from(e).context("dropping the change log"))?;
    tx.commit().await?;
    Ok(())
}

/// The oldest transaction id still running on the server: every transaction below it has ended,
/// so its changes are in the log (or were rolled back).
pub async fn current_xmin(client: &Client) -> Result<u64> {
    let s: String = client
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await?
        .get(0);
    s.parse()
        .map_err(|_| Error::internal(format!("unexpected transaction id {s:?}")))
}

/// Rows in the change log and the oldest transaction id among them, for `pgsync status`.
pub async fn backlog(client: &Client, names: &LogNames) -> Result<Option<(i64, Option<u64>)>> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = $1 AND c.relname = $2)",
            &[&names.schema, &names.table],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!("SELECT count(*), min(xid)::text FROM {}", names.log_sql()),
            &[],
        )
        .await?;
    let oldest: Option<String> = row.get(1);
    Ok(Some((row.get(0), oldest.and_then(|s| s.parse().ok()))))
}

/// Removes log rows of transactions below `position`, whose documents are written and stored in
/// the checkpoint.
pub async fn purge(client: &Client, names: &LogNames, position: u64) -> Result<u64> {
    Ok(client
        .execute(
            &format!("DELETE FROM {} WHERE xid < $1::text::xid8", names.log_sql()),
            &[&position.to_string()],
        )
        .await?)
}

/// How the listener reads.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// The log and channel.
    pub names: LogNames,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// Rows read per statement (and at most per [`Transaction`] sent).
    pub page_rows: i64,
    /// Busy time (reading a page) and time blocked on the coalescer's input.
    pub times: crate::telemetry::StageTimes,
}

/// One page of the log: the changes, and the position that is complete once they are written.
struct Page {
    changes: Vec<Change>,
    position: u64,
    /// Where the next page starts: `(xid, id)` exclusive.
    next: (u64, i64),
    /// The log held more rows below `xmin` than one page.
    more: bool,
    /// The page held heartbeat rows (see [`heartbeat`]).
    heartbeat: bool,
}

/// The operation of a heartbeat row in the change log.
const HEARTBEAT_OP: &str = "H";

/// Writes a heartbeat row into the change log (the daemon's monitor does, every few seconds);
/// returns its transaction id: once the stored checkpoint passes it, the pipeline has read and
/// handed on everything written before it.
pub async fn heartbeat(client: &Client, names: &LogNames) -> Result<u64> {
    let xid: String = client
        .query_one(
            &format!(
                "INSERT INTO {} (tbl_schema, tbl_name, op) VALUES ('', '', 'H') RETURNING xid::text",
                names.log_sql()
            ),
            &[],
        )
        .await
        .map_err(|e| Error::from(e).context(format!("writing a heartbeat to {}", names.table)))?
        .get(0);
    xid.parse()
        .map_err(|_| Error::internal(format!("unexpected transaction id {xid:?}")))
}

fn parse_row(text: Option<String>) -> Result<Option<Row>> {
    let Some(text) = text else { return Ok(None) };
    let map: HashMap<String, Option<String>> = serde_json::from_str(&text).map_err(|e| {
        Error::internal(format!("change-log row is not a JSON object of text: {e}"))
    })?;
    Ok(Some(map))
}

async fn read_page(
    client: &Client,
    s: &ListenerSettings,
    from: (u64, i64),
    tables: &mut HashMap<(String, String), Arc<TableId>>,
) -> Result<Page> {
    let sql = format!(
        "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
         SELECT s.xmin::text, l.xid::text, l.id, l.tbl_schema, l.tbl_name, l.op::text,
                l.old_row::text, l.new_row::text
         FROM s LEFT JOIN LATERAL (
             SELECT * FROM {log}
             WHERE (xid, id) > ($1::text::xid8, $2::int8) AND xid < s.xmin
             ORDER BY xid, id LIMIT $3) l ON true",
        log = s.names.log_sql()
    );
    let rows = client
        .query(&sql, &[&from.0.to_string(), &from.1, &s.page_rows])
        .await
        .map_err(|e| Error::from(e).context(format!("reading the change log {}", s.names.table)))?;
    let parse = |t: &str| -> Result<u64> {
        t.parse()
            .map_err(|_| Error::internal(format!("unexpected transaction id {t:?}")))
    };
    let xmin = match rows.first() {
        Some(r) => parse(r.get::<_, &str>(0))?,
        None => from.0,
    };
    let mut changes = Vec::with_capacity(rows.len());
    let mut last = None;
    let mut heartbeats = 0;
    for r in &rows {
        let Some(xid) = r.get::<_, Option<&str>>(1) else {
            continue; // the LEFT JOIN's empty row: nothing to read
        };
        let xid = parse(xid)?;
        let id: i64 = r.get(2);
        let key = (r.get::<_, String>(3), r.get::<_, String>(4));
        let table = tables
            .entry(key.clone())
            .or_insert_with(|| Arc::new(TableId::new(key.0, key.1)))
            .clone();
        let op = match r.get::<_, &str>(5) {
            "I" => ChangeOp::Insert,
            "U" => ChangeOp::Update,
            "D" => ChangeOp::Delete,
            "T" => ChangeOp::Truncate,
            "R" => ChangeOp::Refresh,
            // A heartbeat of the daemon's monitor: no change, but the page's position must
            // still be handed on so the checkpoint passes it (that is how its lag is read).
            HEARTBEAT_OP => {
                heartbeats += 1;
                last = Some((xid, id));
                continue;
            }
            other => {
                return Err(Error::internal(format!(
                    "change-log row {id} has unknown operation {other:?}"
                )))
            }
        };
        changes.push(Change {
            table,
            op,
            old: parse_row(r.get(6))?,
            new: parse_row(r.get(7))?,
        });
        last = Some((xid, id));
    }
    let more = (changes.len() + heartbeats) as i64 >= s.page_rows;
    let heartbeat = heartbeats > 0;
    Ok(match (last, more) {
        // A full page: everything below the last row's transaction is complete; that
        // transaction's remaining rows follow on the next page.
        (Some((xid, id)), true) => Page {
            changes,
            position: xid,
            next: (xid, id),
            more,
            heartbeat,
        },
        // Everything below xmin is read.
        _ => Page {
            changes,
            position: xmin.max(from.0),
            next: (xmin.max(from.0), 0),
            more: false,
            heartbeat,
        },
    })
}

/// Connects with the notifications of the session forwarded to `wake` (tokio-postgres delivers
/// them only to whoever drives the connection's `poll_message`).
async fn connect_listening(cfg: &Config, database: &str, wake: Arc<Notify>) -> Result<Client> {
    use futures::StreamExt;
    let (client, mut connection) = crate::config::connect_raw(cfg, database)
        .await
        .map_err(|e| e.context("the notify listener's connection"))?;
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("notify listener connection ended: {e}");
                    break;
                }
            }
        }
        // Wake the loop so it notices the closed connection.
        wake.notify_one();
    });
    Ok(client)
}

/// The listener loop: read the log past `start` whenever woken (or every poll interval), send
/// each page as a [`Transaction`] (awaiting channel capacity: backpressure), and purge rows below
/// every stored checkpoint published on `frontier`.
#[allow(clippy::too_many_arguments)] // one argument per pipeline wire
pub async fn run(
    cfg: Config,
    database: String,
    settings: ListenerSettings,
    start: u64,
    out: mpsc::Sender<Transaction>,
    mut frontier: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    started: watch::Sender<bool>,
) -> Result<()> {
    let wake = Arc::new(Notify::new());
    let client = connect_listening(&cfg, &database, wake.clone()).await?;
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(&settings.names.channel)))
        .await
        .map_err(|e| Error::from(e).context("LISTEN on the change-log channel"))?;
    tracing::info!(log = %settings.names.table, channel = %settings.names.channel, "listening for changes");
    started.send_replace(true);
    let mut tables = HashMap::new();
    let mut cursor = (start, 0i64);
    let mut purged = start;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if client.is_closed() {
            return Err(Error::new(
                ErrorKind::SourceUnreachable,
                "the notify listener lost its PostgreSQL connection",
            ));
        }
        // Read until the log below xmin is exhausted.
        loop {
            let started = std::time::Instant::now();
            let page = read_page(&client, &settings, cursor, &mut tables).await?;
            settings.times.busy(started.elapsed());
            cursor = page.next;
            if !page.changes.is_empty() || page.heartbeat {
                crate::telemetry::lag::committed(
                    &settings.names.table,
                    page.position,
                    std::time::SystemTime::now(),
                );
                let tx = Transaction {
                    position: page.position,
                    changes: page.changes,
                    xid: None,
                };
                let (waited, full) = (std::time::Instant::now(), out.capacity() == 0);
                tokio::select! {
                    r = out.send(tx) => if r.is_err() { return Ok(()) },
                    _ = stop.changed() => return Ok(()),
                }
                if full {
                    settings.times.blocked(waited.elapsed());
                }
            }
            if !page.more || *stop.borrow() {
                break;
            }
        }
        let stored = *frontier.borrow_and_update();
        if stored > purged {
            let n = purge(&client, &settings.names, stored).await?;
            tracing::debug!(rows = n, below = stored, "purged the change log");
            purged = stored;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
            _ = frontier.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// The notify listener as an actor on its own arbiter, like the WAL reader.
pub struct NotifyListener {
    job: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>>,
    exit: Option<oneshot::Sender<Result<()>>>,
}

impl Actor for NotifyListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(job) = self.job.take() else {
            ctx.stop();
            return;
        };
        ctx.spawn(job.into_actor(self).map(|r, act, ctx| {
            if let Some(exit) = act.exit.take() {
                let _ = exit.send(r);
            }
            ctx.stop();
        }));
    }
}

/// Starts the listener for one index; the task ends once it stopped (after `stop` turned true, or
/// the receiver of `out` was dropped). A failure is sent to `errors`.
#[allow(clippy::too_many_arguments)] // one argument per pipeline wire, as the daemon holds them
pub fn spawn_listener(
    cfg: &Config,
    database: &str,
    settings: ListenerSettings,
    start: u64,
    out: mpsc::Sender<Transaction>,
    frontier: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    errors: mpsc::UnboundedSender<Error>,
    started: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    let (exit_tx, exit_rx) = oneshot::channel();
    let span = tracing::info_span!("stage", stage = "notify_listener", log = %settings.names.table);
    let job = Box::pin(tracing::Instrument::instrument(
        run(
            cfg.clone(),
            database.to_string(),
            settings,
            start,
            out,
            frontier,
            stop,
            started,
        ),
        span,
    ));
    let arbiter = Arbiter::new();
    let listener = NotifyListener {
        job: Some(job),
        exit: Some(exit_tx),
    };
    NotifyListener::start_in_arbiter(&arbiter.handle(), move |_| listener);
    tokio::spawn(async move {
        let outcome = exit_rx.await.unwrap_or_else(|_| {
            Err(Error::internal(
                "the notify listener ended without reporting why",
            ))
        });
        if let Err(e) = outcome {
            let _ = errors.send(e);
        }
        arbiter.stop();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_distinct_identifiers() {
        let n = LogNames::new(
            "pgsync",
            "a_very_long_database_name_for_testing",
            "an_index_name_that_is_long",
        );
        for s in [&n.table, &n.channel, &n.row_trigger, &n.truncate_trigger] {
            assert!(s.len() <= 63, "{s}");
        }
        let f1 = n.function(&TableId::new("public", "book"));
        let f2 = n.function(&TableId::new("public", "author"));
        assert_ne!(f1, f2);
        assert_ne!(n.table, n.channel);
    }

    #[test]
    fn row_json_builds_text_values_and_splits_long_column_lists() {
        assert_eq!(
            row_json("NEW", &["id".into(), "Author Id".into()]),
            "jsonb_build_object('id', NEW.\"id\"::text, 'Author Id', NEW.\"Author Id\"::text)"
        );
        let many: Vec<String> = (0..120).map(|i| format!("c{i}")).collect();
        let sql = row_json("OLD", &many);
        assert_eq!(sql.matches("jsonb_build_object(").count(), 3);
        assert_eq!(row_json("OLD", &[]), "'{}'::jsonb");
    }

    #[test]
    fn a_column_named_like_the_dollar_tag_cannot_end_the_function_body() {
        let names = LogNames::new("pgsync", "db", "books");
        let cols = vec![
            "id".to_owned(),
            "x$pgsync$y".to_owned(),
            "$pgsync1$".to_owned(),
        ];
        let sql = function_sql(&names, &TableId::new("public", "book"), &cols);
        let tag = "$pgsync2$";
        assert!(sql.contains(&format!("AS {tag}\nBEGIN")), "{sql}");
        assert_eq!(sql.matches(tag).count(), 2, "{sql}");
        assert!(sql.contains("SECURITY DEFINER SET search_path = pg_catalog, pg_temp"));
    }

    #[test]
    fn change_log_rows_parse_to_text_values() {
        let r = parse_row(Some(r#"{"id": "7", "parent_id": null}"#.into()))
            .unwrap()
            .unwrap();
        assert_eq!(r.get("id"), Some(&Some("7".to_string())));
        assert_eq!(r.get("parent_id"), Some(&None));
        assert!(parse_row(None).unwrap().is_none());
        assert!(parse_row(Some("[1]".into())).is_err());
    }
}
