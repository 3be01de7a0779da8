//! pgsync-rs: keeps Elasticsearch/OpenSearch documents in sync with PostgreSQL, from a PGSync
//! `schema.json`. Documents are built inside PostgreSQL by one statement per index, streamed
//! through a staged actor pipeline on bounded channels, and bulk-written.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod error;
pub mod fault;
pub mod outage;
pub mod pipeline;
pub mod plugin;
pub mod schema;
pub mod sink;
pub mod source;
pub mod sql;
pub mod telemetry;

pub use error::{Error, ErrorKind, Result};
