//! One error type for the whole crate. Every error carries a kind, classified once here, that
//! decides whether the daemon retries (a transient fault: wait, back off, restart the pipeline
//! from the last stored checkpoint) or stops (a permanent fault: exit non-zero with the exact
//! cause), and an operator-facing hint that says what to change.

use std::fmt;

/// What went wrong, coarse enough to decide a retry rule and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration file or environment is invalid.
    Config,
    /// `schema.json` is malformed or does not match the database (a missing table or column).
    Schema,
    /// PostgreSQL cannot serve us right now: connection refused, reset or closed, the server
    /// shutting down or starting up (57P01–57P03), out of resources (class 53), a serialization
    /// failure or deadlock (40001, 40P01), a lost replication connection.
    SourceUnreachable,
    /// PostgreSQL answered with an error to a statement we sent, which retrying cannot fix.
    SourceQuery,
    /// A service refused our credentials (PostgreSQL class 28, engine 401, Redis WRONGPASS).
    Auth,
    /// A service refused an operation for lack of a privilege (SQLSTATE 42501, engine 403).
    Permission,
    /// Logical replication is unavailable or misconfigured (wal_level, slots, publication).
    Replication,
    /// The replication slot was dropped or invalidated by someone else: the changes it held are
    /// gone, so streaming cannot resume without a re-sync.
    SlotLost,
    /// The search engine could not be reached, timed out or answered 429/5xx.
    SinkTransient,
    /// The search engine rejected a request or a document for good (4xx).
    SinkRejected,
    /// The checkpoint store (a file or Redis) could not be read or written for now.
    Checkpoint,
    /// Local I/O failed.
    Io,
    /// The process is shutting down; not a failure.
    Shutdown,
    /// A pipeline stage stopped without finishing its work (it panicked, or its work was
    /// dropped): nothing it held is checkpointed, and the pipeline restarts.
    StageFailed,
    /// A bug: an invariant did not hold.
    Internal,
}

/// Whether an operation that failed with this kind is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRule {
    /// Retrying cannot help until an operator changes something: stop, say what to change.
    Never,
    /// A transient condition: retry with capped exponential backoff and jitter.
    Backoff,
}

impl ErrorKind {
    /// The retry rule the supervisor, the sinks and the stores apply to this kind.
    pub fn retry_rule(self) -> RetryRule {
        match self {
            ErrorKind::SourceUnreachable
            | ErrorKind::SinkTransient
            | ErrorKind::Checkpoint
            | ErrorKind::StageFailed => RetryRule::Backoff,
            _ => RetryRule::Never,
        }
    }

    /// Which service or part of the pipeline the kind is about: labels outages in logs and
    /// metrics.
    pub fn service(self) -> &'static str {
        match self {
            ErrorKind::SourceUnreachable
            | ErrorKind::SourceQuery
            | ErrorKind::Replication
            | ErrorKind::SlotLost => "postgres",
            ErrorKind::SinkTransient | ErrorKind::SinkRejected => "search",
            ErrorKind::Checkpoint => "checkpoint",
            ErrorKind::StageFailed | ErrorKind::Internal => "pipeline",
            ErrorKind::Config | ErrorKind::Schema => "configuration",
            ErrorKind::Auth | ErrorKind::Permission => "credentials",
            ErrorKind::Io | ErrorKind::Shutdown => "local",
        }
    }

    fn default_hint(self) -> Option<&'static str> {
        match self {
            ErrorKind::SourceUnreachable => {
                Some("check [postgres] host/port/user/password (or PG_HOST, PG_PORT, PG_USER, PG_PASSWORD, PG_URL) and that the server accepts connections")
            }
            ErrorKind::SinkTransient => {
                Some("check [search] url (or ELASTICSEARCH_URL) and that the search engine is up")
            }
            ErrorKind::Replication => {
                Some("logical replication needs wal_level = logical, max_replication_slots > 0 and a role with REPLICATION; or set capture.mode = \"notify\"")
            }
            ErrorKind::SlotLost => {
                Some("the changes the slot held are gone: run `pgsync teardown` then `pgsync run` to re-sync, and set max_slot_wal_keep_size large enough (or keep the daemon running)")
            }
            ErrorKind::Permission => {
                Some("grant the role the privilege named above, or connect as a role that has it")
            }
            _ => None,
        }
    }
}

/// The kind a PostgreSQL SQLSTATE code stands for, when it says more than "this statement
/// failed": the transient classes, and the permanent ones that need an operator.
pub fn sqlstate_kind(code: &str) -> Option<ErrorKind> {
    match code {
        // Connection exceptions, the server shutting down or starting up, out of resources,
        // serialization failures and deadlocks: all pass by themselves.
        c if c.starts_with("08") || c.starts_with("53") => Some(ErrorKind::SourceUnreachable),
        "57P01" | "57P02" | "57P03" | "40001" | "40P01" => Some(ErrorKind::SourceUnreachable),
        c if c.starts_with("28") => Some(ErrorKind::Auth),
        "42501" => Some(ErrorKind::Permission),
        // Undefined table, column, schema or function: schema.json no longer matches.
        "42P01" | "42703" | "3F000" | "42883" | "3D000" => Some(ErrorKind::Schema),
        _ => None,
    }
}

/// The crate's error: a kind, a message naming the file/key/table/document involved, and a hint.
#[derive(Debug)]
pub struct Error {
    /// Decides the retry rule.
    pub kind: ErrorKind,
    /// What happened, naming the thing involved.
    pub message: String,
    /// What the operator should change, when we know.
    pub hint: Option<String>,
}

impl Error {
    /// Builds an error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: kind.default_hint().map(str::to_owned),
        }
    }

    /// Replaces the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with context (e.g. the index or table being processed).
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    /// The retry rule of this error's kind.
    pub fn retry_rule(&self) -> RetryRule {
        self.kind.retry_rule()
    }

    /// Whether retrying may succeed without an operator.
    pub fn is_transient(&self) -> bool {
        self.retry_rule() == RetryRule::Backoff
    }

    /// Shorthand constructors, one per kind used across the crate.
    pub fn config(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, m)
    }
    /// See [`ErrorKind::Schema`].
    pub fn schema(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Schema, m)
    }
    /// See [`ErrorKind::SourceQuery`].
    pub fn query(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::SourceQuery, m)
    }
    /// See [`ErrorKind::Replication`].
    pub fn replication(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Replication, m)
    }
    /// See [`ErrorKind::StageFailed`].
    pub fn stage(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::StageFailed, m)
    }
    /// See [`ErrorKind::Internal`].
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let mut msg = format!("postgres: {}", db.message());
            if let Some(d) = db.detail() {
                msg.push_str(&format!(" ({d})"));
            }
            let kind = sqlstate_kind(db.code().code()).unwrap_or(ErrorKind::SourceQuery);
            let mut err = Error::new(kind, msg);
            if let Some(h) = db.hint() {
                err = err.with_hint(h.to_owned());
            }
            err
        } else if e.is_closed() || has_io_source(&e) || e.to_string().contains("timeout") {
            Error::new(ErrorKind::SourceUnreachable, format!("postgres: {e}"))
        } else {
            Error::new(ErrorKind::SourceQuery, format!("postgres: {e}"))
        }
    }
}

/// Whether an I/O error (reset, refused, broken pipe, ...) is somewhere in the chain.
fn has_io_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = e.source();
    while let Some(s) = src {
        if s.is::<std::io::Error>() {
            return true;
        }
        src = s.source();
    }
    false
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_sqlstates_are_retried_and_operator_ones_are_not() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "40001", "40P01",
        ] {
            let k = sqlstate_kind(code).unwrap();
            assert_eq!(k.retry_rule(), RetryRule::Backoff, "{code}");
        }
        assert_eq!(sqlstate_kind("28P01"), Some(ErrorKind::Auth));
        assert_eq!(sqlstate_kind("42501"), Some(ErrorKind::Permission));
        assert_eq!(sqlstate_kind("42P01"), Some(ErrorKind::Schema));
        assert_eq!(sqlstate_kind("42703"), Some(ErrorKind::Schema));
        assert_eq!(sqlstate_kind("23505"), None);
        for k in [
            ErrorKind::Auth,
            ErrorKind::Permission,
            ErrorKind::Schema,
            ErrorKind::SlotLost,
        ] {
            assert_eq!(k.retry_rule(), RetryRule::Never, "{k:?}");
        }
    }

    #[test]
    fn a_lost_stage_is_restarted_and_labelled_as_the_pipeline() {
        let e = Error::stage("fetcher 1 panicked");
        assert!(e.is_transient());
        assert_eq!(e.kind.service(), "pipeline");
    }
}
