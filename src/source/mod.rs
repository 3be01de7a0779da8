//! Where changes come from: the WAL through a logical replication slot (`wal`), or row triggers
//! writing a change log and waking us with `pg_notify` (`notify`).

pub mod change;
pub mod notify;
pub mod pgoutput;
pub mod pgsync_objects;
pub mod refreshes;
mod replication_tls;
pub mod slot;
pub mod wal;
