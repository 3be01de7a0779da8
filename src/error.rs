//! One error type for the whole crate. Every error carries a kind that decides whether the
//! operation is retried, and an operator-facing hint that says what to change.

use std::fmt;

/// What went wrong, coarse enough to decide a retry rule and a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration file or environment is invalid.
    Config,
    /// `schema.json` is malformed or does not match the database.
    Schema,
    /// PostgreSQL could not be reached (connection refused, DNS, TLS, auth).
    SourceUnreachable,
    /// PostgreSQL answered with an error to a statement we sent.
    SourceQuery,
    /// Logical replication is unavailable or failed (wal_level, slots, publication).
    Replication,
    /// The search engine could not be reached or answered 429/5xx.
    SinkTransient,
    /// The search engine rejected a request or a document for good (4xx).
    SinkRejected,
    /// The checkpoint could not be read or written.
    Checkpoint,
    /// Local I/O failed.
    Io,
    /// The process is shutting down; not a failure.
    Shutdown,
    /// A bug: an invariant did not hold.
    Internal,
}

/// Whether an operation that failed with this kind is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRule {
    /// Retrying cannot help until an operator changes something.
    Never,
    /// A transient condition: retry with exponential backoff.
    Backoff,
}

impl ErrorKind {
    /// The retry rule the supervisor and the sinks apply to this kind.
    pub fn retry_rule(self) -> RetryRule {
        match self {
            ErrorKind::SourceUnreachable | ErrorKind::SinkTransient | ErrorKind::Checkpoint => {
                RetryRule::Backoff
            }
            _ => RetryRule::Never,
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
            _ => None,
        }
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
            let mut err = Error::new(ErrorKind::SourceQuery, msg);
            if let Some(h) = db.hint() {
                err = err.with_hint(h.to_owned());
            }
            err
        } else if e.is_closed() || e.to_string().contains("connect") {
            Error::new(ErrorKind::SourceUnreachable, format!("postgres: {e}"))
        } else {
            Error::new(ErrorKind::SourceQuery, format!("postgres: {e}"))
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
