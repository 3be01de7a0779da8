//! Bootstrap and teardown of what logical replication needs on the source database: a
//! publication listing the synced tables, REPLICA IDENTITY FULL where old rows are needed, and a
//! `pgoutput` logical replication slot. Also slot status and LSN text helpers.
//!
//! Everything here runs on an ordinary (non-replication) `tokio_postgres::Client` and is
//! idempotent: running [`bootstrap`] or [`teardown`] again changes nothing.

use crate::error::{Error, ErrorKind, Result};
use crate::schema::TableId;
use crate::sql::{quote_ident, quote_table};
use std::collections::BTreeSet;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Parses PostgreSQL's `X/Y` LSN text (two hex numbers of up to 8 digits) into a u64.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let bad = || {
        Error::replication(format!(
            "invalid LSN {text:?}: expected two hex numbers like 16/B374D848"
        ))
        .with_hint("pass an LSN as PostgreSQL prints it, e.g. 0/16B3748")
    };
    let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
    let part = |s: &str| {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u32::from_str_radix(s, 16).map_err(|_| bad())
    };
    Ok((u64::from(part(hi)?) << 32) | u64::from(part(lo)?))
}

/// Formats a u64 LSN as PostgreSQL prints it (`X/Y`, uppercase hex, no leading zeros).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// 64-bit FNV-1a: a hash that is stable across Rust versions and platforms, so derived names
/// never change between releases.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds a replication-safe identifier: the `parts` joined by `_`, lowercased with every other
/// character than `[a-z0-9_]` turned into `_`, cut so the whole fits in 63 bytes, then `_` and 8 hex
/// digits of a hash of the exact parts, then `suffix`. The hash keeps distinct inputs apart even
/// when the readable part is the same (`my-index` vs `my_index`, or database `a_b` + index `c`
/// vs database `a` + index `b_c`). The readable part never starts with a digit, because
/// pgwire-replication sends the slot name unquoted in `START_REPLICATION`.
pub(crate) fn identifier(parts: &[&str], suffix: &str) -> String {
    let mut name: String = parts
        .join("_")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert(0, '_');
    }
    // Hash each part separately (NUL never occurs in a name), so the split points count.
    let h = fnv1a(parts.join("\u{0}").as_bytes());
    let hash = format!("_{:08x}", (h >> 32) as u32 ^ h as u32);
    name.truncate(MAX_IDENTIFIER_LEN - hash.len() - suffix.len());
    name + &hash + suffix
}

/// The replication slot name for one index of one database, e.g. `pgsync_shop_books_e1a0e546`:
/// lowercase `[a-z0-9_]`, at most 63 bytes, the same for the same inputs in every release.
pub fn slot_name(prefix: &str, database: &str, index: &str) -> String {
    identifier(&[prefix, database, index], "")
}

/// The publication name for one index of one database: the slot name plus `_pub` (shortened the
/// same way), so it needs no quoting in `publication_names` and visibly pairs with its slot.
pub fn publication_name(prefix: &str, database: &str, index: &str) -> String {
    identifier(&[prefix, database, index], "_pub")
}

/// Checks that the server can serve logical replication to this role: `wal_level = logical`, a
/// free replication slot (unless `slot` already exists), a free WAL sender, and the REPLICATION
/// attribute (or superuser, or `rds_replication` membership on Amazon RDS).
pub async fn check_replication_ready(client: &Client, slot: &str) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*)::int FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_setting('max_wal_senders')::int,
                    r.rolname::text, r.rolreplication, r.rolsuper,
                    CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')
                         THEN pg_has_role(r.oid, 'rds_replication', 'MEMBER') ELSE false END
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&slot],
        )
        .await
        .map_err(|e| Error::from(e).context("checking replication settings"))?;
    check_facts(&ReadinessFacts {
        wal_level: row.get(0),
        max_slots: row.get(1),
        used_slots: row.get(2),
        slot_exists: row.get(3),
        max_senders: row.get(4),
        role: row.get(5),
        replication: row.get(6),
        superuser: row.get(7),
        rds_replication: row.get(8),
    })
}

/// What [`check_replication_ready`] reads from the server.
#[derive(Debug, Clone)]
struct ReadinessFacts {
    wal_level: String,
    max_slots: i32,
    used_slots: i32,
    slot_exists: bool,
    max_senders: i32,
    role: String,
    replication: bool,
    superuser: bool,
    rds_replication: bool,
}

fn check_facts(f: &ReadinessFacts) -> Result<()> {
    if f.wal_level != "logical" {
        let msg = format!(
            "wal_level is '{}'; set wal_level = logical in postgresql.conf and restart",
            f.wal_level
        );
        return Err(Error::replication(msg.clone()).with_hint(msg));
    }
    if !f.slot_exists && f.used_slots >= f.max_slots {
        return Err(Error::replication(format!(
            "no free replication slot: max_replication_slots is {} and {} are in use",
            f.max_slots, f.used_slots
        ))
        .with_hint(
            "raise max_replication_slots in postgresql.conf and restart, or drop unused slots (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active)",
        ));
    }
    if f.max_senders < 1 {
        return Err(Error::replication(
            "max_wal_senders is 0: no replication connection is possible",
        )
        .with_hint("set max_wal_senders = 10 in postgresql.conf and restart"));
    }
    if !(f.replication || f.superuser || f.rds_replication) {
        let role = quote_ident(&f.role);
        return Err(Error::replication(format!(
            "role {role} has neither REPLICATION nor SUPERUSER"
        ))
        .with_hint(format!(
            "run ALTER ROLE {role} WITH REPLICATION as a superuser (on Amazon RDS: GRANT rds_replication TO {role})"
        )));
    }
    Ok(())
}

/// What [`bootstrap`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOutcome {
    /// The slot did not exist and was created now: the caller must run an initial sync, since
    /// the slot only holds changes from `consistent_lsn` on.
    pub slot_created: bool,
    /// The slot's consistent point when created now, else its `confirmed_flush_lsn`.
    pub consistent_lsn: u64,
    /// The publication was created or its table list or operations were changed.
    pub publication_changed: bool,
    /// Tables switched to REPLICA IDENTITY FULL now.
    pub identity_changed: Vec<TableId>,
}

/// Prepares logical replication for `tables`, idempotently:
///
/// 1. checks every table exists and can publish updates and deletes (a primary key, or a replica
///    identity other than NOTHING); publishing a table without one makes its UPDATEs and DELETEs
///    fail on the source, so that is refused;
/// 2. sets REPLICA IDENTITY FULL on `full_identity` tables that are not FULL yet;
/// 3. creates `publication` FOR TABLE `tables`, or sets its table list when it differs, and
///    makes it publish insert, update, delete and truncate, with changes of partitions published
///    as their partitioned table (`publish_via_partition_root`, PostgreSQL 13+);
/// 4. creates the `pgoutput` slot with `pg_create_logical_replication_slot` when missing (last, so
///    the publication and identities are in place for every change the slot sees). This waits
///    for transactions running at that moment to finish.
pub async fn bootstrap(
    client: &Client,
    slot: &str,
    publication: &str,
    tables: &[TableId],
    full_identity: &[TableId],
) -> Result<BootstrapOutcome> {
    if tables.is_empty() {
        return Err(Error::internal(
            "bootstrap needs at least one table to publish",
        ));
    }
    let wanted: BTreeSet<&TableId> = tables.iter().collect();

    // 1. Tables and their replica identities: check them all before changing anything.
    let all: BTreeSet<&TableId> = wanted.iter().copied().chain(full_identity).collect();
    let mut identity_changed = Vec::new();
    for &t in &all {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| Error::from(e).context(format!("looking up table {t}")))?
            .ok_or_else(|| {
                Error::schema(format!("table {t} does not exist"))
                    .with_hint("check the schema and table names in schema.json (case matters)")
            })?;
        let ident: String = row.get(0);
        let has_pk: bool = row.get(1);
        let to_full = full_identity.contains(t) && ident != "f";
        let why = match ident.as_str() {
            "n" => Some("REPLICA IDENTITY NOTHING"),
            "d" if !has_pk => Some("no primary key and REPLICA IDENTITY DEFAULT"),
            _ => None,
        };
        if let (Some(why), false) = (why, to_full) {
            return Err(Error::replication(format!(
                "table {t} has no replica identity ({why})"
            ))
            .with_hint(format!(
                "publishing it would make UPDATE and DELETE on it fail; add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL",
                quote_table(t)
            )));
        }
        if to_full {
            identity_changed.push(t.clone());
        }
    }
    for t in &identity_changed {
        client
            .batch_execute(&format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL",
                quote_table(t)
            ))
            .await
            .map_err(|e| Error::from(e).context(format!("setting REPLICA IDENTITY FULL on {t}")))?;
    }

    // 2. Publication.
    let publication_changed = ensure_publication(client, publication, &wanted).await?;

    // 3. Slot.
    let (slot_created, consistent_lsn) = match existing_slot(client, slot).await? {
        Some(lsn) => (false, lsn),
        None => {
            let created = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await;
            match created {
                Ok(row) => (true, parse_lsn(row.get(0))?),
                // Someone created it between our look and our create: use theirs.
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {
                    match existing_slot(client, slot).await? {
                        Some(lsn) => (false, lsn),
                        None => return Err(Error::from(e).context(format!("creating slot {slot}"))),
                    }
                }
                Err(e) => {
                    return Err(
                        replication_error(e).context(format!("creating replication slot {slot}"))
                    )
                }
            }
        }
    };
    Ok(BootstrapOutcome {
        slot_created,
        consistent_lsn,
        publication_changed,
        identity_changed,
    })
}

/// A PostgreSQL error from a replication statement, as an [`ErrorKind::Replication`] error that
/// keeps the server's message and hint.
fn replication_error(e: tokio_postgres::Error) -> Error {
    let mut err = Error::from(e);
    if err.kind == ErrorKind::SourceQuery {
        err.kind = ErrorKind::Replication;
    }
    err
}

/// Creates the publication or brings its table list and operations to what we need; returns
/// whether anything changed.
async fn ensure_publication(
    client: &Client,
    publication: &str,
    wanted: &BTreeSet<&TableId>,
) -> Result<bool> {
    let table_list = wanted
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    let pub_ident = quote_ident(publication);
    let ctx = || format!("publication {publication}");
    // Changes of a partitioned table's partitions are published as the partitioned table the
    // schema names (PostgreSQL 13 and later), not as the partition they landed in.
    let via_root = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 130000",
            &[],
        )
        .await
        .map_err(|e| Error::from(e).context(ctx()))?
        .get::<_, bool>(0);
    let options = if via_root {
        "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
    } else {
        "publish = 'insert, update, delete, truncate'"
    };
    // to_jsonb: pubviaroot does not exist before PostgreSQL 13.
    let row = client
        .query_opt(
            "SELECT puballtables,
                    pubinsert AND pubupdate AND pubdelete AND pubtruncate
                      AND COALESCE((to_jsonb(p) ->> 'pubviaroot')::bool, $2) = $2
             FROM pg_publication p WHERE pubname = $1",
            &[&publication, &via_root],
        )
        .await
        .map_err(|e| Error::from(e).context(ctx()))?;
    let Some(row) = row else {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {pub_ident} FOR TABLE {table_list} WITH ({options})"
            ))
            .await
            .map_err(|e| Error::from(e).context(format!("creating publication {publication}")))?;
        return Ok(true);
    };
    let (all_tables, all_ops): (bool, bool) = (row.get(0), row.get(1));
    if all_tables {
        return Err(Error::replication(format!(
            "publication {publication} is FOR ALL TABLES; pgsync manages its own table list"
        ))
        .with_hint(format!(
            "drop it (DROP PUBLICATION {pub_ident}) or choose another capture.slot_prefix"
        )));
    }
    let mut changed = false;
    // pg_publication_rel lists the tables as named (a partitioned parent stays one entry), unlike
    // pg_publication_tables, which expands partitions and would make every run look different.
    let current: BTreeSet<TableId> = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_publication_rel pr
             JOIN pg_publication p ON p.oid = pr.prpubid
             JOIN pg_class c ON c.oid = pr.prrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::from(e).context(ctx()))?
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    if current.iter().ne(wanted.iter().copied()) {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {pub_ident} SET TABLE {table_list}"
            ))
            .await
            .map_err(|e| Error::from(e).context(format!("changing tables of {}", ctx())))?;
        changed = true;
    }
    if !all_ops {
        client
            .batch_execute(&format!("ALTER PUBLICATION {pub_ident} SET ({options})"))
            .await
            .map_err(|e| Error::from(e).context(ctx()))?;
        changed = true;
    }
    Ok(changed)
}

/// The confirmed position of `slot` if it exists; an error if it exists but is not a `pgoutput`
/// logical slot of this database.
async fn existing_slot(client: &Client, slot: &str) -> Result<Option<u64>> {
    let row = client
        .query_opt(
            "SELECT slot_type, plugin::text, database::text, current_database()::text,
                    confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::from(e).context(format!("looking up slot {slot}")))?;
    let Some(row) = row else { return Ok(None) };
    let (kind, plugin): (String, Option<String>) = (row.get(0), row.get(1));
    let (db, current): (Option<String>, String) = (row.get(2), row.get(3));
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(&current)
    {
        return Err(Error::replication(format!(
            "replication slot {slot} exists but is a {kind} slot with plugin {} on database {}, not a pgoutput slot on {current}",
            plugin.as_deref().unwrap_or("none"),
            db.as_deref().unwrap_or("none"),
        ))
        .with_hint(format!(
            "drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another capture.slot_prefix"
        )));
    }
    row.get::<_, Option<&str>>(4).map(parse_lsn).transpose()
}

/// What [`teardown`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeardownOutcome {
    /// The slot existed and was dropped.
    pub slot_dropped: bool,
    /// The publication existed and was dropped.
    pub publication_dropped: bool,
}

/// Drops `slot` and `publication` if they exist. A slot in use by a replication connection is not
/// dropped: the error names the PID holding it. REPLICA IDENTITY settings are left as they are.
pub async fn teardown(client: &Client, slot: &str, publication: &str) -> Result<TeardownOutcome> {
    let row = client
        .query_opt(
            "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::from(e).context(format!("looking up slot {slot}")))?;
    let mut slot_dropped = false;
    if let Some(row) = row {
        let (active, pid): (bool, Option<i32>) = (row.get(0), row.get(1));
        if active {
            return Err(active_slot_error(slot, pid));
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => slot_dropped = true,
            // Dropped concurrently: the goal is reached.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
            // Became active since we looked.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                let pid = client
                    .query_opt(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await?
                    .and_then(|r| r.get::<_, Option<i32>>(0));
                return Err(active_slot_error(slot, pid));
            }
            Err(e) => return Err(replication_error(e).context(format!("dropping slot {slot}"))),
        }
    }
    let publication_dropped = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await?
        .get::<_, bool>(0);
    if publication_dropped {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(publication)
            ))
            .await
            .map_err(|e| Error::from(e).context(format!("dropping publication {publication}")))?;
    }
    Ok(TeardownOutcome {
        slot_dropped,
        publication_dropped,
    })
}

fn active_slot_error(slot: &str, pid: Option<i32>) -> Error {
    let holder = pid.map_or_else(|| "another process".to_owned(), |p| format!("PID {p}"));
    Error::replication(format!("replication slot {slot} is in use by {holder}")).with_hint(
        match pid {
            Some(p) => format!(
                "stop the pgsync process streaming from it, or run SELECT pg_terminate_backend({p}), then retry"
            ),
            None => "stop the pgsync process streaming from it, then retry".to_owned(),
        },
    )
}

/// Moves `slot`'s confirmed position forward to `lsn` without streaming, so the server releases
/// WAL up to the last durable position right away (e.g. after the WAL reader stopped, having had
/// no chance to report it). A position at or behind the slot's is left alone. A slot still held by
/// a stopping replication connection is waited for, up to 10 seconds. Returns the slot's confirmed
/// position afterwards (PostgreSQL stops at its current WAL flush position).
pub async fn advance_slot(client: &Client, slot: &str, lsn: u64) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = slot_status(client, slot).await?.ok_or_else(|| {
            Error::replication(format!("replication slot {slot} does not exist"))
                .with_hint("run `pgsync bootstrap` to create it")
        })?;
        if lsn <= status.confirmed_flush_lsn {
            return Ok(status.confirmed_flush_lsn);
        }
        // Held by a replication connection (the PID when known): wait for it to let go.
        let holder = if status.active {
            status.active_pid
        } else {
            let advanced = client
                .query_one(
                    "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
                    &[&slot, &format_lsn(lsn)],
                )
                .await;
            match advanced {
                Ok(row) => return parse_lsn(row.get(0)),
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => None,
                Err(e) => {
                    return Err(replication_error(e).context(format!("advancing slot {slot}")))
                }
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(active_slot_error(slot, holder));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// State of a replication slot, for progress reporting and lag alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// Output plugin (`pgoutput`), `None` for a physical slot.
    pub plugin: Option<String>,
    /// A replication connection is streaming from the slot now.
    pub active: bool,
    /// PID of that connection's walsender.
    pub active_pid: Option<i32>,
    /// Everything committed before this LSN was acknowledged by the consumer (0 if unknown).
    pub confirmed_flush_lsn: u64,
    /// Oldest WAL position the slot still needs (0 if unknown).
    pub restart_lsn: u64,
    /// WAL bytes the server keeps for this slot: current WAL position minus `restart_lsn`.
    pub retained_wal_bytes: u64,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13 and later).
    pub wal_status: Option<String>,
}

/// The status of `slot`, or `None` if it does not exist.
pub async fn slot_status(client: &Client, slot: &str) -> Result<Option<SlotStatus>> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, active, active_pid,
                    confirmed_flush_lsn::text, restart_lsn::text,
                    COALESCE(pg_wal_lsn_diff(
                        CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                             ELSE pg_current_wal_lsn() END,
                        restart_lsn), 0)::bigint,
                    to_jsonb(s) ->> 'wal_status'
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::from(e).context(format!("reading status of slot {slot}")))?;
    let Some(row) = row else { return Ok(None) };
    let lsn = |i: usize| -> Result<u64> {
        row.get::<_, Option<&str>>(i)
            .map(parse_lsn)
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok(Some(SlotStatus {
        name: row.get(0),
        plugin: row.get(1),
        active: row.get(2),
        active_pid: row.get(3),
        confirmed_flush_lsn: lsn(4)?,
        restart_lsn: lsn(5)?,
        retained_wal_bytes: u64::try_from(row.get::<_, i64>(6)).unwrap_or(0),
        wal_status: row.get(7),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(parse_lsn("0/0").unwrap(), 0);
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF").unwrap(), u64::MAX);
        assert_eq!(parse_lsn("0/16b3748").unwrap(), 0x16B_3748);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
        for v in [1, 0x1_0000_0000, 0xABCD_EF01_2345_6789] {
            assert_eq!(parse_lsn(&format_lsn(v)).unwrap(), v);
        }
    }

    #[test]
    fn bad_lsns_are_errors() {
        for s in [
            "",
            "0",
            "/0",
            "0/",
            "x/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            "+1/0",
        ] {
            let e = parse_lsn(s).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Replication, "{s}");
        }
    }

    fn valid(name: &str) -> bool {
        name.len() <= MAX_IDENTIFIER_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    }

    #[test]
    fn names_are_readable_with_a_stable_hash() {
        let h = fnv1a("pgsync\0shop\0books".as_bytes());
        let hash = format!("{:08x}", (h >> 32) as u32 ^ h as u32);
        assert_eq!(
            slot_name("pgsync", "shop", "books"),
            format!("pgsync_shop_books_{hash}")
        );
        assert_eq!(
            publication_name("pgsync", "shop", "books"),
            format!("pgsync_shop_books_{hash}_pub")
        );
        // Pinned: names must not change between releases, or restarts would lose their slot.
        assert_eq!(
            slot_name("pgsync", "shop", "books"),
            "pgsync_shop_books_e1a0e546"
        );
    }

    #[test]
    fn names_are_valid_deterministic_and_distinct() {
        let inputs = [
            ("pgsync", "shop", "books"),
            ("pgsync", "Shop", "books"),
            ("pgsync", "shop", "my-index"),
            ("pgsync", "shop", "my_index"),
            ("pgsync", "shop", "my.index"),
            ("", "", ""),
            ("1x", "db", "i"),
            ("pgsync", "a_b", "c"),
            ("pgsync", "a", "b_c"),
            ("pgsync", "ünïcødé", "índex"),
            ("pgsync", &"d".repeat(40), &"i".repeat(40)),
            ("pgsync", &"d".repeat(40), &"i".repeat(41)),
        ];
        let mut seen = BTreeSet::new();
        for (p, d, i) in inputs {
            for name in [slot_name(p, d, i), publication_name(p, d, i)] {
                assert!(valid(&name), "{name:?} from {p:?} {d:?} {i:?}");
                assert!(seen.insert(name.clone()), "duplicate {name}");
            }
            assert_eq!(slot_name(p, d, i), slot_name(p, d, i));
        }
        assert!(slot_name("1x", "db", "i").starts_with("_1x_db_i_"));
        let long = slot_name("pgsync", &"d".repeat(40), &"i".repeat(40));
        assert_eq!(long.len(), MAX_IDENTIFIER_LEN);
        assert!(long.starts_with("pgsync_ddd"));
        let long_pub = publication_name("pgsync", &"d".repeat(40), &"i".repeat(40));
        assert_eq!(long_pub.len(), MAX_IDENTIFIER_LEN);
        assert!(long_pub.ends_with("_pub"));
    }

    fn ready() -> ReadinessFacts {
        ReadinessFacts {
            wal_level: "logical".into(),
            max_slots: 10,
            used_slots: 0,
            slot_exists: false,
            max_senders: 10,
            role: "App".into(),
            replication: true,
            superuser: false,
            rds_replication: false,
        }
    }

    #[test]
    fn readiness_errors_name_what_to_change() {
        check_facts(&ready()).unwrap();
        let e = check_facts(&ReadinessFacts {
            wal_level: "replica".into(),
            ..ready()
        })
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Replication);
        assert_eq!(
            e.message,
            "wal_level is 'replica'; set wal_level = logical in postgresql.conf and restart"
        );
        let full = ReadinessFacts {
            used_slots: 10,
            ..ready()
        };
        let e = check_facts(&full).unwrap_err();
        assert!(
            e.message.contains("max_replication_slots is 10"),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("raise max_replication_slots"));
        // Our own slot already exists: no free slot needed.
        check_facts(&ReadinessFacts {
            slot_exists: true,
            ..full
        })
        .unwrap();
        let e = check_facts(&ReadinessFacts {
            max_senders: 0,
            ..ready()
        })
        .unwrap_err();
        assert!(e.hint.unwrap().contains("max_wal_senders"));
        let e = check_facts(&ReadinessFacts {
            replication: false,
            ..ready()
        })
        .unwrap_err();
        assert_eq!(
            e.message,
            "role \"App\" has neither REPLICATION nor SUPERUSER"
        );
        assert!(e
            .hint
            .unwrap()
            .contains("ALTER ROLE \"App\" WITH REPLICATION"));
        for ok in [
            ReadinessFacts {
                replication: false,
                superuser: true,
                ..ready()
            },
            ReadinessFacts {
                replication: false,
                rds_replication: true,
                ..ready()
            },
        ] {
            check_facts(&ok).unwrap();
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("Book"), "\"Book\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(
            quote_table(&TableId::new("Sales", "Order Items")),
            "\"Sales\".\"Order Items\""
        );
    }
}
