//! Decoder for the `pgoutput` logical decoding plugin, protocol version 1.
//!
//! pgwire-replication 0.5 turns Begin, Commit and logical (`M`) messages into typed events and
//! hands every other pgoutput message over as raw bytes (`XLogData`). [`decode`] parses those
//! bytes into a [`Message`] (it also understands Begin, Commit and `M`, so captured streams can be
//! decoded whole), and a [`RelationCache`] remembers the Relation messages that describe the
//! tables and turns row messages into pipeline [`Change`]s.
//!
//! Wire format reference: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//! Every read is bounds-checked: malformed or truncated input is an error, never a panic.

use crate::error::{Error, Result};
use crate::schema::TableId;
use crate::source::change::{Change, ChangeOp, Row};
use std::collections::HashMap;
use std::sync::Arc;

/// Column flag bit meaning "part of the replica identity key" in a Relation message.
pub const COLUMN_FLAG_KEY: u8 = 1;

/// Truncate option bit for `TRUNCATE ... CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 1;

/// Truncate option bit for `TRUNCATE ... RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// One decoded pgoutput message; the variants mirror the protocol's message types.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `B`: a transaction starts (its changes follow; with v1 it has already committed).
    Begin(Begin),
    /// `C`: the transaction whose changes preceded it committed.
    Commit(Commit),
    /// `O`: the transaction came from another replication origin.
    Origin(Origin),
    /// `R`: describes a table; sent before its first change and again after it changed.
    Relation(Relation),
    /// `Y`: describes a non built-in data type used by a following Relation.
    Type(TypeInfo),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a `pg_logical_emit_message()` payload.
    LogicalMessage(LogicalMessage),
}

/// Begin message: identifies the transaction whose changes follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record of the transaction.
    pub final_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
    /// Transaction id.
    pub xid: u32,
}

/// Commit message: closes a transaction; `end_lsn` is the position to acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// LSN just past the commit record: what a consumer acknowledges.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
}

/// Origin message: the transaction was replayed from another node (e.g. a subscriber).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: u64,
    /// Name of the replication origin.
    pub name: String,
}

/// How much of the old row PostgreSQL logs for updates and deletes of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Result<Self> {
        Ok(match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => return Err(malformed(format!("unknown replica identity {other:#04x}"))),
        })
    }
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags; bit [`COLUMN_FLAG_KEY`] marks a replica identity key column.
    pub flags: u8,
    /// Column name, case preserved.
    pub name: String,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the replica identity key (so it is sent in `K` old tuples).
    pub fn is_key(&self) -> bool {
        self.flags & COLUMN_FLAG_KEY != 0
    }
}

/// Relation message: the shape of a published table, needed to read its tuples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID, used by row messages to refer to this table.
    pub id: u32,
    /// Schema name (`pg_catalog` is sent as an empty string).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// The table's replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attribute order (dropped and generated columns excluded).
    pub columns: Vec<RelationColumn>,
}

/// Type message: names a non built-in type (enum, domain, composite, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type OID.
    pub id: u32,
    /// Schema of the type.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL (or, in a `K` old tuple, a column outside the key).
    Null,
    /// `u`: an unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `t`: the value in PostgreSQL's text format.
    Text(String),
    /// `b`: the value in the type's binary format (only with the `binary` option).
    Binary(Vec<u8>),
}

/// Column values of one row, in the Relation's column order.
pub type Tuple = Vec<TupleValue>;

/// Which old-row image an update or delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity key columns are meaningful (others are sent as null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// The old-row image of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// Key-only or full.
    pub kind: OldKind,
    /// The values.
    pub tuple: Tuple,
}

/// Insert message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Relation OID.
    pub relation_id: u32,
    /// The new row.
    pub new: Tuple,
}

/// Update message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Relation OID.
    pub relation_id: u32,
    /// Old row: `K` when a key column changed, `O` with REPLICA IDENTITY FULL, else absent.
    pub old: Option<OldTuple>,
    /// The new row.
    pub new: Tuple,
}

/// Delete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Relation OID.
    pub relation_id: u32,
    /// The removed row's key (`K`) or whole row (`O`).
    pub old: OldTuple,
}

/// Truncate message: one statement may truncate several tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits: [`TRUNCATE_CASCADE`], [`TRUNCATE_RESTART_IDENTITY`].
    pub options: u8,
    /// OIDs of the truncated relations.
    pub relation_ids: Vec<u32>,
}

/// Logical decoding message emitted with `pg_logical_emit_message()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Bit 1: transactional.
    pub flags: u8,
    /// LSN of the message.
    pub lsn: u64,
    /// Application-chosen prefix.
    pub prefix: String,
    /// Payload.
    pub content: Vec<u8>,
}

fn malformed(msg: impl std::fmt::Display) -> Error {
    Error::replication(format!("malformed pgoutput message: {msg}")).with_hint(
        "the replication stream is not pgoutput protocol version 1; check that the slot was created with plugin 'pgoutput'",
    )
}

/// Bounds-checked big-endian reader over a message body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(malformed(format!(
                "{} truncated: needed {n} bytes at offset {}, {} left",
                self.what,
                self.pos,
                self.buf.len() - self.pos
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<String> {
        let rest = &self.buf[self.pos..];
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| {
            malformed(format!(
                "{} truncated: unterminated string at offset {}",
                self.what, self.pos
            ))
        })?;
        let s = utf8(&rest[..len], self.what)?;
        self.pos += len + 1;
        Ok(s)
    }

    fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} has {} unexpected trailing bytes",
                self.what,
                self.buf.len() - self.pos
            )))
        }
    }

    fn tuple(&mut self) -> Result<Tuple> {
        let n = self.u16()? as usize;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = self.u8()?;
            values.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.len()?;
                    TupleValue::Text(utf8(self.take(len)?, self.what)?)
                }
                b'b' => {
                    let len = self.len()?;
                    TupleValue::Binary(self.take(len)?.to_vec())
                }
                other => {
                    return Err(malformed(format!(
                        "{} has unknown tuple value kind {other:#04x}",
                        self.what
                    )))
                }
            });
        }
        Ok(values)
    }

    fn len(&mut self) -> Result<usize> {
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| malformed(format!("{} has length {len}", self.what)))
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::replication(format!("{what} contains text that is not valid UTF-8"))
            .with_hint("pgoutput sends text in the database encoding; use a UTF8-encoded database")
    })
}

/// Decodes one pgoutput (protocol version 1) message, as carried by one `XLogData` payload.
pub fn decode(data: &[u8]) -> Result<Message> {
    let (&tag, body) = data
        .split_first()
        .ok_or_else(|| malformed("empty message"))?;
    let mut r = Reader {
        buf: body,
        pos: 0,
        what: message_name(tag)?,
    };
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.u64()?,
            commit_time_micros: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time_micros: r.i64()?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.u64()?,
            name: r.cstr()?,
        }),
        b'R' => Message::Relation(read_relation(&mut r)?),
        b'Y' => Message::Type(TypeInfo {
            id: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        }),
        b'I' => Message::Insert(read_insert(&mut r)?),
        b'U' => Message::Update(read_update(&mut r)?),
        b'D' => Message::Delete(read_delete(&mut r)?),
        b'T' => Message::Truncate(read_truncate(&mut r, body.len())?),
        _ => Message::LogicalMessage(read_logical_message(&mut r)?),
    };
    r.finish()?;
    Ok(msg)
}

/// The message's name for errors, or an error for a tag pgoutput (protocol 1) never sends.
fn message_name(tag: u8) -> Result<&'static str> {
    Ok(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => {
            return Err(malformed(format!(
                "unknown message type {other:#04x} ({:?})",
                other as char
            )))
        }
    })
}

fn read_relation(r: &mut Reader<'_>) -> Result<Relation> {
    let id = r.u32()?;
    let namespace = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = ReplicaIdentity::from_byte(r.u8()?)?;
    let n = r.u16()? as usize;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        columns.push(RelationColumn {
            flags: r.u8()?,
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_insert(r: &mut Reader<'_>) -> Result<Insert> {
    let relation_id = r.u32()?;
    expect(r, b'N')?;
    Ok(Insert {
        relation_id,
        new: r.tuple()?,
    })
}

fn read_update(r: &mut Reader<'_>) -> Result<Update> {
    let relation_id = r.u32()?;
    let old = match r.u8()? {
        b'N' => None,
        k @ (b'K' | b'O') => {
            let tuple = r.tuple()?;
            expect(r, b'N')?;
            Some(OldTuple {
                kind: old_kind(k),
                tuple,
            })
        }
        other => return Err(malformed(format!("Update has tuple marker {other:#04x}"))),
    };
    Ok(Update {
        relation_id,
        old,
        new: r.tuple()?,
    })
}

fn read_delete(r: &mut Reader<'_>) -> Result<Delete> {
    let relation_id = r.u32()?;
    let kind = match r.u8()? {
        k @ (b'K' | b'O') => old_kind(k),
        other => return Err(malformed(format!("Delete has tuple marker {other:#04x}"))),
    };
    Ok(Delete {
        relation_id,
        old: OldTuple {
            kind,
            tuple: r.tuple()?,
        },
    })
}

fn read_truncate(r: &mut Reader<'_>, body_len: usize) -> Result<Truncate> {
    let n = r.u32()? as usize;
    let options = r.u8()?;
    // Never trust a count for an allocation: each id takes 4 bytes of the body.
    let mut relation_ids = Vec::with_capacity(n.min(body_len / 4));
    for _ in 0..n {
        relation_ids.push(r.u32()?);
    }
    Ok(Truncate {
        options,
        relation_ids,
    })
}

fn read_logical_message(r: &mut Reader<'_>) -> Result<LogicalMessage> {
    let flags = r.u8()?;
    let lsn = r.u64()?;
    let prefix = r.cstr()?;
    let len = r.len()?;
    Ok(LogicalMessage {
        flags,
        lsn,
        prefix,
        content: r.take(len)?.to_vec(),
    })
}

fn old_kind(marker: u8) -> OldKind {
    if marker == b'K' {
        OldKind::Key
    } else {
        OldKind::Full
    }
}

fn expect(r: &mut Reader<'_>, marker: u8) -> Result<()> {
    let got = r.u8()?;
    if got == marker {
        Ok(())
    } else {
        Err(malformed(format!(
            "{} expected tuple marker {:?}, got {got:#04x}",
            r.what, marker as char
        )))
    }
}

/// A Relation message with the shared table id handed to every [`Change`] of that table.
#[derive(Debug, Clone)]
struct CachedRelation {
    relation: Relation,
    table: Arc<TableId>,
}

/// Remembers Relation (and Type) messages of one replication session and turns row messages into
/// [`Change`]s. pgoutput sends a Relation before a table's first change in a session and again
/// after its definition changed (ALTER TABLE, TRUNCATE, ...); the newer one replaces the cached one.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, CachedRelation>,
    types: HashMap<u32, TypeInfo>,
}

impl RelationCache {
    /// An empty cache, for a new replication session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last Relation message received for `id`.
    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id).map(|c| &c.relation)
    }

    /// The table id of relation `id`, shared by all of its changes.
    pub fn table(&self, id: u32) -> Option<Arc<TableId>> {
        self.relations.get(&id).map(|c| Arc::clone(&c.table))
    }

    /// The last Type message received for type `oid` (only non built-in types are sent).
    pub fn type_info(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Applies one decoded message: Relation and Type messages update the cache, row messages
    /// append their [`Change`]s to `out` (a Truncate appends one per table), the others are
    /// ignored.
    pub fn apply(&mut self, msg: Message, out: &mut Vec<Change>) -> Result<()> {
        match msg {
            Message::Relation(rel) => {
                let table = Arc::new(TableId::new(rel.namespace.as_str(), rel.name.as_str()));
                self.relations.insert(
                    rel.id,
                    CachedRelation {
                        relation: rel,
                        table,
                    },
                );
            }
            Message::Type(t) => {
                self.types.insert(t.id, t);
            }
            Message::Insert(ins) => {
                let rel = self.get(ins.relation_id, "Insert")?;
                out.push(Change {
                    table: Arc::clone(&rel.table),
                    op: ChangeOp::Insert,
                    old: None,
                    new: Some(new_row(&rel.relation, ins.new, None)?),
                });
            }
            Message::Update(upd) => {
                let rel = self.get(upd.relation_id, "Update")?;
                let old = upd
                    .old
                    .map(|o| old_row(&rel.relation, o.kind, o.tuple))
                    .transpose()?;
                let new = new_row(&rel.relation, upd.new, old.as_ref())?;
                out.push(Change {
                    table: Arc::clone(&rel.table),
                    op: ChangeOp::Update,
                    old,
                    new: Some(new),
                });
            }
            Message::Delete(del) => {
                let rel = self.get(del.relation_id, "Delete")?;
                out.push(Change {
                    table: Arc::clone(&rel.table),
                    op: ChangeOp::Delete,
                    old: Some(old_row(&rel.relation, del.old.kind, del.old.tuple)?),
                    new: None,
                });
            }
            Message::Truncate(t) => {
                for id in t.relation_ids {
                    let rel = self.get(id, "Truncate")?;
                    out.push(Change {
                        table: Arc::clone(&rel.table),
                        op: ChangeOp::Truncate,
                        old: None,
                        new: None,
                    });
                }
            }
            Message::Begin(_)
            | Message::Commit(_)
            | Message::Origin(_)
            | Message::LogicalMessage(_) => {}
        }
        Ok(())
    }

    fn get(&self, id: u32, what: &str) -> Result<&CachedRelation> {
        self.relations.get(&id).ok_or_else(|| {
            Error::replication(format!(
                "pgoutput {what} refers to relation {id}, which no Relation message described"
            ))
            .with_hint("restart the replication stream; the server re-sends Relation messages on a new session")
        })
    }
}

fn check_width(rel: &Relation, tuple: &Tuple) -> Result<()> {
    if tuple.len() == rel.columns.len() {
        Ok(())
    } else {
        Err(Error::replication(format!(
            "pgoutput row for {}.{} has {} values but its Relation message has {} columns",
            rel.namespace,
            rel.name,
            tuple.len(),
            rel.columns.len()
        ))
        .with_hint("restart the replication stream so the server re-sends the Relation message"))
    }
}

fn text_value(rel: &Relation, column: &str, value: TupleValue) -> Result<Option<Option<String>>> {
    match value {
        TupleValue::Null => Ok(Some(None)),
        TupleValue::Text(s) => Ok(Some(Some(s))),
        TupleValue::UnchangedToast => Ok(None),
        TupleValue::Binary(_) => Err(Error::replication(format!(
            "pgoutput sent column {}.{}.{column} in binary format",
            rel.namespace, rel.name
        ))
        .with_hint(
            "start replication without the pgoutput 'binary' option; rows are read as text",
        )),
    }
}

/// The old row: for a key-only image only the key columns (the others are sent as meaningless
/// nulls); unchanged TOAST values are left out.
fn old_row(rel: &Relation, kind: OldKind, tuple: Tuple) -> Result<Row> {
    check_width(rel, &tuple)?;
    let mut row = Row::with_capacity(tuple.len());
    for (col, value) in rel.columns.iter().zip(tuple) {
        if kind == OldKind::Key && !col.is_key() {
            continue;
        }
        if let Some(v) = text_value(rel, &col.name, value)? {
            row.insert(col.name.clone(), v);
        }
    }
    Ok(row)
}

/// The new row: an unchanged TOAST value is taken from the old row when it has the column,
/// otherwise the column is left out.
fn new_row(rel: &Relation, tuple: Tuple, old: Option<&Row>) -> Result<Row> {
    check_width(rel, &tuple)?;
    let mut row = Row::with_capacity(tuple.len());
    for (col, value) in rel.columns.iter().zip(tuple) {
        match text_value(rel, &col.name, value)? {
            Some(v) => {
                row.insert(col.name.clone(), v);
            }
            None => {
                if let Some(v) = old.and_then(|o| o.get(&col.name)) {
                    row.insert(col.name.clone(), v.clone());
                }
            }
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    //! Tests decode real messages captured from PostgreSQL 15 by
    //! `tests/fixtures/pgoutput/capture.sh` (see that script for the SQL of each scenario).
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/pgoutput/messages.txt");

    /// The raw messages of one scenario of the fixture file.
    fn scenario(name: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let (mut inside, mut found) = (false, false);
        for line in FIXTURE.lines() {
            if let Some(n) = line.strip_prefix("# ") {
                inside = n == name;
                found |= inside;
                continue;
            }
            if inside && !line.is_empty() {
                let hex = line.split(' ').nth(2).expect("fixture line has 3 fields");
                out.push(unhex(hex));
            }
        }
        assert!(found, "scenario {name} missing");
        out
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn messages(name: &str) -> Vec<Message> {
        scenario(name).iter().map(|m| decode(m).unwrap()).collect()
    }

    /// Decodes a scenario through a fresh cache and returns its changes.
    fn changes(name: &str) -> Vec<Change> {
        let mut cache = RelationCache::new();
        let mut out = Vec::new();
        for m in messages(name) {
            cache.apply(m, &mut out).unwrap();
        }
        out
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(s.to_owned())
    }

    #[test]
    fn begin_relation_insert_commit() {
        let msgs = messages("insert");
        assert_eq!(msgs.len(), 6);
        let Message::Begin(b) = &msgs[0] else {
            panic!("{:?}", msgs[0])
        };
        let Message::Commit(c) = &msgs[5] else {
            panic!("{:?}", msgs[5])
        };
        assert_eq!(b.xid, 744);
        assert_eq!(b.final_lsn, c.commit_lsn);
        assert_eq!(c.flags, 0);
        assert_eq!(c.end_lsn, 0x0155_0CD0);
        assert_eq!(b.commit_time_micros, c.commit_time_micros);
        let Message::Relation(author) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(author.namespace, "public");
        assert_eq!(author.name, "author");
        assert_eq!(author.replica_identity, ReplicaIdentity::Default);
        let cols: Vec<_> = author
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.is_key(), c.type_oid, c.type_modifier))
            .collect();
        assert_eq!(
            cols,
            [
                ("id", true, 23, -1),
                ("name", false, 25, -1),
                ("bio", false, 25, -1)
            ]
        );
        assert_eq!(
            msgs[2],
            Message::Insert(Insert {
                relation_id: author.id,
                new: vec![text("1"), text("Ann"), TupleValue::Null],
            })
        );
        let Message::Relation(book) = &msgs[3] else {
            panic!("{:?}", msgs[3])
        };
        assert_eq!(book.name, "Book");
        assert_eq!(book.replica_identity, ReplicaIdentity::Full);
        // REPLICA IDENTITY FULL: every column is flagged as key.
        assert!(book.columns.iter().all(RelationColumn::is_key));
        let price = &book.columns[3];
        assert_eq!((price.name.as_str(), price.type_oid), ("price", 1700));
        // numeric(10,2): ((10 << 16) | 2) + VARHDRSZ
        assert_eq!(price.type_modifier, (10 << 16 | 2) + 4);
        assert_eq!(book.columns[1].name, "Title");
    }

    #[test]
    fn insert_changes_with_text_formats() {
        let ch = changes("insert");
        assert_eq!(ch.len(), 2);
        assert_eq!(*ch[0].table, TableId::new("public", "author"));
        assert_eq!(ch[0].op, ChangeOp::Insert);
        assert!(ch[0].old.is_none());
        assert_eq!(
            ch[0].new.as_ref().unwrap(),
            &row(&[("id", Some("1")), ("name", Some("Ann")), ("bio", None)])
        );
        assert_eq!(*ch[1].table, TableId::new("public", "Book"));
        let new = ch[1].new.as_ref().unwrap();
        assert_eq!(new["Title"].as_deref(), Some("Dune"));
        assert_eq!(new["price"].as_deref(), Some("9.99"));
        assert_eq!(new["published"].as_deref(), Some("1965-08-01"));
        assert_eq!(new["updated_at"].as_deref(), Some("2024-01-02 01:04:05+00"));
        assert_eq!(new["tags"].as_deref(), Some(r#"{sci-fi,"a b"}"#));
        assert_eq!(new["body"].as_deref(), Some("ab".repeat(1500).as_str()));
        assert_eq!(new.len(), 8);
    }

    #[test]
    fn update_without_key_change_has_no_old_row() {
        let msgs = messages("update_plain");
        let Message::Update(u) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        assert_eq!(u.old, None);
        let ch = changes("update_plain");
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].op, ChangeOp::Update);
        assert!(ch[0].old.is_none());
        assert_eq!(
            ch[0].new.as_ref().unwrap(),
            &row(&[("id", Some("1")), ("name", Some("Anna")), ("bio", None)])
        );
    }

    #[test]
    fn update_of_key_carries_key_only_old_row() {
        let msgs = messages("update_key");
        let Message::Update(u) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        let old = u.old.as_ref().unwrap();
        assert_eq!(old.kind, OldKind::Key);
        // Non-key columns are sent as nulls in a K tuple...
        assert_eq!(
            old.tuple,
            vec![text("1"), TupleValue::Null, TupleValue::Null]
        );
        let ch = changes("update_key");
        // ...and left out of the old Row, which would otherwise claim they were NULL.
        assert_eq!(ch[0].old.as_ref().unwrap(), &row(&[("id", Some("1"))]));
        assert_eq!(
            ch[0].new.as_ref().unwrap(),
            &row(&[("id", Some("2")), ("name", Some("Anna")), ("bio", None)])
        );
    }

    #[test]
    fn full_identity_update_fills_unchanged_toast_from_old_row() {
        let msgs = messages("update_full_toast");
        let Message::Update(u) = &msgs[2] else {
            panic!("{:?}", msgs[2])
        };
        let old = u.old.as_ref().unwrap();
        assert_eq!(old.kind, OldKind::Full);
        assert_eq!(old.tuple[7], text(&"ab".repeat(1500)));
        assert_eq!(u.new[7], TupleValue::UnchangedToast);
        assert_eq!(u.new[3], text("12.50"));
        let ch = changes("update_full_toast");
        let (old, new) = (ch[0].old.as_ref().unwrap(), ch[0].new.as_ref().unwrap());
        assert_eq!(old["price"].as_deref(), Some("9.99"));
        assert_eq!(old.len(), 8);
        assert_eq!(new["price"].as_deref(), Some("12.50"));
        assert_eq!(new["body"].as_deref(), Some("ab".repeat(1500).as_str()));
        assert_eq!(new.len(), 8);
    }

    #[test]
    fn default_identity_unchanged_toast_is_absent() {
        let ch = changes("update_default_toast");
        assert_eq!(ch.len(), 2);
        // First update wrote the TOASTed value itself.
        assert_eq!(
            ch[0].new.as_ref().unwrap()["bio"].as_deref(),
            Some("xy".repeat(1500).as_str())
        );
        // Second update left it unchanged: not sent, no old row to take it from.
        assert!(ch[1].old.is_none());
        assert_eq!(
            ch[1].new.as_ref().unwrap(),
            &row(&[("id", Some("2")), ("name", Some("Ann B"))])
        );
    }

    #[test]
    fn deletes_with_key_and_full_old_rows() {
        let ch = changes("delete");
        assert_eq!(ch.len(), 2);
        assert_eq!(ch[0].op, ChangeOp::Delete);
        assert!(ch[0].new.is_none());
        assert_eq!(ch[0].old.as_ref().unwrap(), &row(&[("id", Some("2"))]));
        assert_eq!(*ch[1].table, TableId::new("public", "Book"));
        let old = ch[1].old.as_ref().unwrap();
        assert_eq!(old.len(), 8);
        assert_eq!(old["id"].as_deref(), Some("10"));
        assert_eq!(old["price"].as_deref(), Some("12.50"));
    }

    #[test]
    fn unpublished_table_sends_nothing() {
        assert!(scenario("unpublished").is_empty());
    }

    #[test]
    fn truncate_yields_one_change_per_table() {
        let msgs = messages("truncate");
        let Message::Truncate(t) = &msgs[3] else {
            panic!("{:?}", msgs[3])
        };
        assert_eq!(t.options, TRUNCATE_RESTART_IDENTITY);
        assert_eq!(t.relation_ids.len(), 2);
        let ch = changes("truncate");
        let tables: Vec<_> = ch.iter().map(|c| (c.table.name.as_str(), c.op)).collect();
        assert_eq!(
            tables,
            [("author", ChangeOp::Truncate), ("Book", ChangeOp::Truncate)]
        );
        assert!(ch.iter().all(|c| c.old.is_none() && c.new.is_none()));
    }

    #[test]
    fn alter_table_resends_relation_and_replaces_cache_entry() {
        // A cache that saw the 3-column relation earlier in the session...
        let mut cache = RelationCache::new();
        let mut out = Vec::new();
        for m in messages("update_plain") {
            cache.apply(m, &mut out).unwrap();
        }
        let id = out[0].table.clone();
        let rel_id = match decode(&scenario("update_plain")[1]).unwrap() {
            Message::Relation(r) => r.id,
            m => panic!("{m:?}"),
        };
        assert_eq!(cache.relation(rel_id).unwrap().columns.len(), 3);
        // ...gets the Type message and the new Relation after ALTER TABLE ADD COLUMN.
        out.clear();
        let msgs = messages("alter_then_insert");
        let Message::Type(ty) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(
            (ty.namespace.as_str(), ty.name.as_str()),
            ("public", "mood")
        );
        for m in msgs.clone() {
            cache.apply(m, &mut out).unwrap();
        }
        let rel = cache.relation(rel_id).unwrap();
        assert_eq!(rel.columns.len(), 4);
        assert_eq!(rel.columns[3].name, "mood");
        assert_eq!(rel.columns[3].type_oid, ty.id);
        assert_eq!(cache.type_info(ty.id).unwrap().name, "mood");
        assert_eq!(*out[0].table, *id);
        assert_eq!(
            out[0].new.as_ref().unwrap(),
            &row(&[
                ("id", Some("3")),
                ("name", Some("Cy")),
                ("bio", None),
                ("mood", Some("sad"))
            ])
        );
    }

    #[test]
    fn origin_message() {
        let msgs = messages("origin");
        assert_eq!(
            msgs[1],
            Message::Origin(Origin {
                commit_lsn: 0xABCDEF,
                name: "upstream".into()
            })
        );
        assert_eq!(changes("origin").len(), 1);
    }

    #[test]
    fn binary_values_decode_but_are_refused_as_rows() {
        let msgs = messages("binary");
        let Message::Insert(i) = &msgs[3] else {
            panic!("{:?}", msgs[3])
        };
        assert_eq!(i.new[0], TupleValue::Binary(vec![0, 0, 0, 5]));
        assert_eq!(i.new[1], TupleValue::Binary(b"Ed".to_vec()));
        assert_eq!(i.new[2], TupleValue::Null);
        let mut cache = RelationCache::new();
        let mut out = Vec::new();
        let err = msgs
            .into_iter()
            .try_for_each(|m| cache.apply(m, &mut out))
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Replication);
        assert!(err.message.contains("binary"), "{}", err.message);
    }

    #[test]
    fn every_truncation_of_every_message_is_an_error() {
        for line in FIXTURE.lines().filter(|l| !l.starts_with('#')) {
            let msg = unhex(line.split(' ').nth(2).unwrap());
            decode(&msg).unwrap();
            for cut in 0..msg.len() {
                assert!(decode(&msg[..cut]).is_err(), "{line} cut at {cut}");
            }
            let mut longer = msg.clone();
            longer.push(0);
            assert!(decode(&longer).is_err(), "{line} with a trailing byte");
        }
    }

    #[test]
    fn unknown_and_corrupt_input_is_an_error() {
        let err = decode(b"Z\0\0").unwrap_err();
        assert!(
            err.message.contains("unknown message type"),
            "{}",
            err.message
        );
        // Insert with an unknown tuple value kind.
        let err = decode(b"I\0\0\0\x01N\0\x01x").unwrap_err();
        assert!(err.message.contains("tuple value kind"), "{}", err.message);
        // Negative length.
        assert!(decode(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff").is_err());
        // Huge truncate count must not allocate or panic.
        assert!(decode(b"T\xff\xff\xff\xff\0").is_err());
        // Invalid UTF-8 text.
        let err = decode(b"I\0\0\0\x01N\0\x01t\0\0\0\x01\xff").unwrap_err();
        assert!(err.message.contains("UTF-8"), "{}", err.message);
    }

    #[test]
    fn rows_for_unknown_relations_or_wrong_width_are_errors() {
        let mut cache = RelationCache::new();
        let mut out = Vec::new();
        let insert = decode(&scenario("insert")[2]).unwrap();
        let err = cache.apply(insert.clone(), &mut out).unwrap_err();
        assert!(
            err.message.contains("no Relation message"),
            "{}",
            err.message
        );
        // Describe the relation with one column fewer than the row has.
        let Message::Relation(mut rel) = decode(&scenario("insert")[1]).unwrap() else {
            panic!()
        };
        rel.columns.pop();
        cache.apply(Message::Relation(rel), &mut out).unwrap();
        let err = cache.apply(insert, &mut out).unwrap_err();
        assert!(err.message.contains("3 values"), "{}", err.message);
        assert!(out.is_empty());
    }
}
