//! Row changes as the sources capture them, before the pipeline turns them into documents.

use crate::schema::TableId;
use std::collections::HashMap;
use std::sync::Arc;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// A new row.
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
    /// Every row of the table removed.
    Truncate,
    /// A materialized view was refreshed (by someone else): any of its rows may have changed.
    Refresh,
}

/// Column values of one row in PostgreSQL's text format. A column whose value is not known
/// (an unchanged TOAST value, or a column outside the replica identity) is absent; SQL NULL is
/// `Some(None)`-style: present with `None`.
pub type Row = HashMap<String, Option<String>>;

/// One row change, as captured from the WAL or the trigger change log.
#[derive(Debug, Clone)]
pub struct Change {
    /// The changed table.
    pub table: Arc<TableId>,
    /// Insert, update, delete, truncate or refresh.
    pub op: ChangeOp,
    /// Values before the change (update/delete; may hold only the key columns).
    pub old: Option<Row>,
    /// Values after the change (insert/update).
    pub new: Option<Row>,
}

/// The changes of one committed transaction, in commit order.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Position to acknowledge once every document this transaction affects is written:
    /// the commit's end LSN in `wal` mode, the change-log id in `notify` mode.
    pub position: u64,
    /// Row changes in the order they were made.
    pub changes: Vec<Change>,
    /// The transaction id (`wal` mode): what is read for these changes waits until it is
    /// visible (see [`crate::sql::visibility`]). `None` when the source only hands on committed
    /// and visible changes (`notify` mode).
    pub xid: Option<u32>,
}
