//! PGSync's environment variables (every one of its `settings.py`), so that an existing PGSync
//! deployment runs unchanged: each is mapped to its configuration key, or, when set, named in one
//! start-up warning saying why it has no effect here. The README has the same table.

use super::load::{parse_bool, parse_port, EnvLayer, LIBPQ_VARS, PGSYNC_VARS};
use crate::{Error, Result};
use std::collections::BTreeMap;

type Env = BTreeMap<String, String>;

/// How a variable's text becomes the key's value.
#[derive(Clone, Copy)]
enum Kind {
    /// As is.
    Text,
    /// A positive or zero integer.
    Count,
    /// `true`/`false` and the other spellings environs accepts.
    Bool,
    /// Float seconds (`2.5`) to whole milliseconds.
    SecondsToMs,
    /// Float seconds to whole seconds, rounded up (at least 1 when positive).
    SecondsCeil,
}

/// Variables with a key of their own: `(variable, section, key, kind)`.
const DIRECT: &[(&str, &str, &str, Kind)] = &[
    ("PG_USER", "postgres", "user", Kind::Text),
    ("PG_WORK_MEM", "postgres", "work_mem", Kind::Text),
    ("SCHEMA", "schema", "path", Kind::Text),
    ("CHECKPOINT_PATH", "checkpoint", "dir", Kind::Text),
    ("QUERY_CHUNK_SIZE", "pipeline", "fetch_chunk", Kind::Count),
    ("NUM_WORKERS", "pipeline", "fetchers", Kind::Count),
    (
        "ELASTICSEARCH_CHUNK_SIZE",
        "pipeline",
        "batch_docs",
        Kind::Count,
    ),
    (
        "ELASTICSEARCH_MAX_CHUNK_BYTES",
        "pipeline",
        "batch_bytes",
        Kind::Count,
    ),
    (
        "ELASTICSEARCH_THREAD_COUNT",
        "pipeline",
        "writers",
        Kind::Count,
    ),
    (
        "ELASTICSEARCH_QUEUE_SIZE",
        "pipeline",
        "channel_capacity",
        Kind::Count,
    ),
    (
        "ELASTICSEARCH_MAX_RETRIES",
        "pipeline",
        "max_retries",
        Kind::Count,
    ),
    (
        "ELASTICSEARCH_INITIAL_BACKOFF",
        "pipeline",
        "retry_backoff_ms",
        Kind::SecondsToMs,
    ),
    (
        "ELASTICSEARCH_MAX_BACKOFF",
        "pipeline",
        "retry_max_backoff_ms",
        Kind::SecondsToMs,
    ),
    (
        "ELASTICSEARCH_TIMEOUT",
        "search",
        "timeout_secs",
        Kind::SecondsCeil,
    ),
    (
        "ELASTICSEARCH_HTTP_COMPRESS",
        "search",
        "http_compress",
        Kind::Bool,
    ),
    ("ELASTICSEARCH_CA_CERTS", "search", "ca_cert", Kind::Text),
    ("ELASTICSEARCH_CLOUD_ID", "search", "cloud_id", Kind::Text),
    (
        "ELASTICSEARCH_BEARER_AUTH",
        "search",
        "bearer_token",
        Kind::Text,
    ),
    (
        "ELASTICSEARCH_CLIENT_CERT",
        "search",
        "client_cert",
        Kind::Text,
    ),
    (
        "ELASTICSEARCH_CLIENT_KEY",
        "search",
        "client_key",
        Kind::Text,
    ),
    (
        "ELASTICSEARCH_AWS_REGION",
        "search",
        "aws_region",
        Kind::Text,
    ),
    (
        "POLL_INTERVAL",
        "capture",
        "poll_interval_ms",
        Kind::SecondsToMs,
    ),
    (
        "LOG_INTERVAL",
        "log",
        "progress_interval_secs",
        Kind::SecondsCeil,
    ),
];

/// Variables with no effect here, and why. Booleans set to PGSync's default are not reported.
const NO_EFFECT: &[(&str, Option<bool>, &str)] = &[
    ("BLOCK_SIZE", None, "the initial sync splits the root table into pipeline.ranges_per_fetcher key ranges per fetcher"),
    ("JOIN_QUERIES", Some(false), "each index's documents are built by one SQL statement"),
    ("LOGICAL_SLOT_CHUNK_SIZE", None, "changes are streamed from the slot, not fetched in chunks"),
    ("POLL_TIMEOUT", None, "changes arrive as they commit (replication stream or pg_notify)"),
    ("QUERY_LITERAL_BINDS", Some(false), "SQL is not logged with its values"),
    ("FILTER_CHUNK_SIZE", None, "the documents a change touches are found by SQL inside PostgreSQL"),
    ("REPLICATION_SLOT_CLEANUP_INTERVAL", None, "the slot is acknowledged as soon as documents are written"),
    ("USE_ASYNC", Some(false), "the pipeline is always asynchronous"),
    ("STREAM_RESULTS", Some(true), "rows are always streamed from server-side cursors (pipeline.fetch_chunk)"),
    ("FORMAT_WITH_COMMAS", Some(true), "log lines print plain numbers"),
    ("POLLING", Some(false), "polling is replaced by capture.mode = notify (triggers) or wal (PGSYNC_CAPTURE__MODE)"),
    ("WAL", Some(true), "the capture mode is capture.mode (wal unless PGSYNC_CAPTURE__MODE=notify)"),
    ("SQLALCHEMY_USE_NULLPOOL", Some(false), "there is no connection pool: each stage holds its own connections"),
    ("SQLALCHEMY_POOL_SIZE", None, "there is no connection pool: each stage holds its own connections"),
    ("SQLALCHEMY_MAX_OVERFLOW", None, "there is no connection pool: each stage holds its own connections"),
    ("SQLALCHEMY_POOL_PRE_PING", Some(true), "there is no connection pool: each stage holds its own connections"),
    ("SQLALCHEMY_POOL_RECYCLE", None, "there is no connection pool: each stage holds its own connections"),
    ("SQLALCHEMY_POOL_TIMEOUT", None, "there is no connection pool: each stage holds its own connections"),
    ("ELASTICSEARCH_OPAQUE_ID", None, "no X-Opaque-Id header is sent"),
    ("ELASTICSEARCH_SSL_CONTEXT", None, "TLS settings are ELASTICSEARCH_CA_CERTS and ELASTICSEARCH_VERIFY_CERTS"),
    ("ELASTICSEARCH_SSL_VERSION", None, "TLS 1.2 and 1.3 are negotiated"),
    ("ELASTICSEARCH_SSL_SHOW_WARN", Some(false), "certificate problems are always errors"),
    ("ELASTICSEARCH_SSL_ASSERT_HOSTNAME", None, "the host name is always checked against the certificate (unless ELASTICSEARCH_VERIFY_CERTS=false)"),
    ("ELASTICSEARCH_STREAMING_BULK", Some(false), "bulk requests are always built as documents stream in"),
    ("ELASTICSEARCH_POOL_MAXSIZE", None, "the HTTP client keeps its own connection pool"),
    ("ELASTICSEARCH_RAISE_ON_ERROR", Some(true), "a rejected document is always logged with its _id and reason and fails `run --once`"),
    ("ELASTICSEARCH_RAISE_ON_EXCEPTION", Some(true), "a failed request is always retried, then reported"),
    ("ELASTICSEARCH_IGNORE_STATUS", None, "a 404 on delete is always accepted, other errors never ignored"),
    ("PG_DATABASE", None, "each index connects to the database its schema.json entry names"),
    ("MYSQL_DATABASE", None, "MySQL and MariaDB are not supported"),
    ("USE_UTF8MB4", Some(false), "MySQL and MariaDB are not supported"),
    ("REDIS_POLL_INTERVAL", None, "Redis holds only checkpoints and leader locks here, not a change queue"),
    ("REDIS_READ_CHUNK_SIZE", None, "Redis holds only checkpoints and leader locks here, not a change queue"),
    ("REDIS_WRITE_CHUNK_SIZE", None, "Redis holds only checkpoints and leader locks here, not a change queue"),
    ("REDIS_SOCKET_TIMEOUT", None, "Redis commands time out after 2 s and are retried"),
    ("REDIS_RETRY_ON_TIMEOUT", Some(false), "Redis commands are always retried"),
    ("LOG_HANDLERS", None, "logs always go to stderr (log.format = text or json)"),
];

/// Variables for features not built yet: named in the warning, never silently ignored.
const NOT_YET: &[(&str, Option<bool>)] = &[
    ("SCHEMA_URL", None),
    ("S3_SCHEMA_URL", None),
    ("ELASTICSEARCH_SSL_ASSERT_FINGERPRINT", None),
];

/// What the variables said that has no effect, gathered for the one warning.
#[derive(Default)]
pub(super) struct Unused {
    no_effect: Vec<String>,
    not_yet: Vec<String>,
}

impl Unused {
    /// The one start-up warning, if any variable went unused.
    pub(super) fn warning(&self) -> Option<String> {
        let mut parts = vec![];
        if !self.no_effect.is_empty() {
            parts.push(format!(
                "PGSync settings with no effect here: {}",
                self.no_effect.join("; ")
            ));
        }
        if !self.not_yet.is_empty() {
            parts.push(format!(
                "PGSync settings not yet supported, ignored: {}",
                self.not_yet.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join(". "))
    }
}

/// The layer of PGSync's variables, and what went unused.
pub(super) fn pgsync_layer(env: &Env) -> Result<(EnvLayer, Unused)> {
    let mut l = EnvLayer::new(PGSYNC_VARS);
    let mut unused = Unused::default();
    for &(var, section, key, kind) in DIRECT {
        if let Some(v) = env.get(var) {
            set_kind(&mut l, var, section, key, kind, v)?;
        }
    }
    postgres(env, &mut l, &mut unused);
    read_replica(env, &mut l)?;
    search_url(env, &mut l)?;
    search_auth(env, &mut l, &mut unused)?;
    aws(env, &mut l)?;
    engine(env, &mut l)?;
    redis(env, &mut l, &mut unused)?;
    capture(env, &mut l)?;
    logging(env, &mut l, &mut unused);
    driver(env, &mut unused)?;
    for &(var, default, why) in NO_EFFECT {
        if reportable(env, var, default) {
            unused.no_effect.push(format!("{var} ({why})"));
        }
    }
    for &(var, default) in NOT_YET {
        if reportable(env, var, default) {
            unused.not_yet.push(var.to_owned());
        }
    }
    Ok((l, unused))
}

/// libpq's own TLS variables, read (as libpq reads them) under every explicit setting.
pub(super) fn libpq_layer(env: &Env) -> EnvLayer {
    let mut l = EnvLayer::new(LIBPQ_VARS);
    for (var, key) in [
        ("PGSSLMODE", "sslmode"),
        ("PGSSLROOTCERT", "sslrootcert"),
        ("PGSSLCERT", "sslcert"),
        ("PGSSLKEY", "sslkey"),
    ] {
        if let Some(v) = env.get(var) {
            l.set("postgres", key, v.as_str(), var);
        }
    }
    l
}

/// Set, and (for a boolean) not at PGSync's default.
fn reportable(env: &Env, var: &str, default: Option<bool>) -> bool {
    match (env.get(var), default) {
        (None, _) => false,
        (Some(v), Some(d)) => parse_bool(var, v).map(|b| b != d).unwrap_or(true),
        (Some(_), None) => true,
    }
}

fn set_kind(
    l: &mut EnvLayer,
    var: &str,
    section: &str,
    key: &str,
    kind: Kind,
    v: &str,
) -> Result<()> {
    match kind {
        Kind::Text => l.set(section, key, v, var),
        Kind::Count => l.set(section, key, parse_count(var, v)?, var),
        Kind::Bool => l.set(section, key, parse_bool(var, v)?, var),
        Kind::SecondsToMs => l.set(
            section,
            key,
            (parse_seconds(var, v)? * 1000.0).round() as u64,
            var,
        ),
        Kind::SecondsCeil => {
            let s = parse_seconds(var, v)?;
            let whole = if s > 0.0 { s.ceil().max(1.0) } else { 0.0 };
            l.set(section, key, whole as u64, var)
        }
    }
    Ok(())
}

fn parse_count(var: &str, v: &str) -> Result<u64> {
    v.trim().replace('_', "").parse::<u64>().map_err(|_| {
        Error::config(format!(
            "environment variable {var} = {v:?} is not a whole number"
        ))
    })
}

fn parse_seconds(var: &str, v: &str) -> Result<f64> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| {
            Error::config(format!(
                "environment variable {var} = {v:?} is not a number of seconds"
            ))
        })
}

/// PG_URL wins and, as in PGSync, makes PG_HOST, PG_PORT, PG_PASSWORD, PG_SSLMODE and
/// PG_SSLROOTCERT ignored.
fn postgres(env: &Env, l: &mut EnvLayer, unused: &mut Unused) {
    const CLEARED: [(&str, &str); 5] = [
        ("PG_HOST", "host"),
        ("PG_PORT", "port"),
        ("PG_PASSWORD", "password"),
        ("PG_SSLMODE", "sslmode"),
        ("PG_SSLROOTCERT", "sslrootcert"),
    ];
    if let Some(url) = env.get("PG_URL") {
        l.set("postgres", "url", url.as_str(), "PG_URL");
        for (var, _) in CLEARED {
            if env.contains_key(var) {
                unused
                    .no_effect
                    .push(format!("{var} (PG_URL is set and wins, as in PGSync)"));
            }
        }
        return;
    }
    for (var, key) in CLEARED {
        match (env.get(var), key) {
            (Some(v), "port") => match parse_port(var, v) {
                Ok(p) => l.set("postgres", key, p, var),
                // Left as text so the error names the variable and the key.
                Err(_) => l.set("postgres", key, v.as_str(), var),
            },
            (Some(v), _) => l.set("postgres", key, v.as_str(), var),
            (None, _) => {}
        }
    }
}

/// PG_URL_RO, else a URL of PG_HOST_RO/PG_PORT_RO/PG_USER_RO/PG_PASSWORD_RO/PG_SSLMODE_RO/
/// PG_SSLROOTCERT_RO, each falling back to the primary's variable.
fn read_replica(env: &Env, l: &mut EnvLayer) -> Result<()> {
    const PARTS: [&str; 6] = [
        "PG_HOST_RO",
        "PG_PORT_RO",
        "PG_USER_RO",
        "PG_PASSWORD_RO",
        "PG_SSLMODE_RO",
        "PG_SSLROOTCERT_RO",
    ];
    if let Some(url) = env.get("PG_URL_RO") {
        l.set("postgres", "read_replica_url", url.as_str(), "PG_URL_RO");
        return Ok(());
    }
    if !PARTS.iter().any(|v| env.contains_key(*v)) {
        return Ok(());
    }
    let get = |ro: &str| {
        env.get(ro)
            .or_else(|| env.get(ro.trim_end_matches("_RO")))
            .map(String::as_str)
    };
    let port = match get("PG_PORT_RO") {
        Some(p) => parse_port("PG_PORT_RO", p)?,
        None => 5432,
    };
    let user = userinfo(get("PG_USER_RO").unwrap_or("postgres"));
    let pass = get("PG_PASSWORD_RO")
        .map(|p| format!(":{}", userinfo(p)))
        .unwrap_or_default();
    let host = get("PG_HOST_RO").unwrap_or("localhost");
    let host = if host.starts_with('/') {
        userinfo(host)
    } else {
        bracket_ipv6(host)
    };
    let mut params = vec![];
    for (var, key) in [
        ("PG_SSLMODE_RO", "sslmode"),
        ("PG_SSLROOTCERT_RO", "sslrootcert"),
    ] {
        if let Some(v) = get(var) {
            params.push(format!("{key}={}", userinfo(v)));
        }
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    l.set(
        "postgres",
        "read_replica_url",
        format!("postgres://{user}{pass}@{host}:{port}/{query}"),
        "PG_HOST_RO/PG_PORT_RO/PG_USER_RO/PG_PASSWORD_RO/PG_SSLMODE_RO/PG_SSLROOTCERT_RO",
    );
    Ok(())
}

/// ELASTICSEARCH_URL, else ELASTICSEARCH_SCHEME/HOST/PORT with PGSync's defaults (https when
/// ELASTICSEARCH_USE_SSL is true and no scheme is given).
fn search_url(env: &Env, l: &mut EnvLayer) -> Result<()> {
    let get = |n: &str| env.get(n).map(String::as_str);
    if let Some(v) = get("ELASTICSEARCH_URL") {
        l.set("search", "url", v, "ELASTICSEARCH_URL");
        return Ok(());
    }
    let parts = [
        "ELASTICSEARCH_SCHEME",
        "ELASTICSEARCH_HOST",
        "ELASTICSEARCH_PORT",
        "ELASTICSEARCH_USE_SSL",
    ];
    if !parts.iter().any(|n| env.contains_key(*n)) {
        return Ok(());
    }
    let use_ssl = match get("ELASTICSEARCH_USE_SSL") {
        Some(v) => parse_bool("ELASTICSEARCH_USE_SSL", v)?,
        None => false,
    };
    let scheme = get("ELASTICSEARCH_SCHEME").unwrap_or(if use_ssl { "https" } else { "http" });
    let port = match get("ELASTICSEARCH_PORT") {
        Some(p) => parse_port("ELASTICSEARCH_PORT", p)?,
        None => 9200,
    };
    let host = bracket_ipv6(get("ELASTICSEARCH_HOST").unwrap_or("localhost"));
    l.set(
        "search",
        "url",
        format!("{scheme}://{host}:{port}"),
        "ELASTICSEARCH_SCHEME/ELASTICSEARCH_HOST/ELASTICSEARCH_PORT",
    );
    Ok(())
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// ELASTICSEARCH_USER/PASSWORD, ELASTICSEARCH_HTTP_AUTH (`user,password`),
/// ELASTICSEARCH_BASIC_AUTH (`user:password`, or base64 of it) and the API key.
fn search_auth(env: &Env, l: &mut EnvLayer, unused: &mut Unused) -> Result<()> {
    let get = |n: &str| env.get(n).map(String::as_str);
    let pair = match (
        get("ELASTICSEARCH_HTTP_AUTH"),
        get("ELASTICSEARCH_BASIC_AUTH"),
    ) {
        (Some(v), _) => Some((split_pair(v, ','), "ELASTICSEARCH_HTTP_AUTH")),
        (None, Some(v)) => Some((basic_auth_pair(v), "ELASTICSEARCH_BASIC_AUTH")),
        (None, None) => None,
    };
    if let Some((found, var)) = pair {
        let (user, pass) = found.ok_or_else(|| {
            Error::config(format!(
                "environment variable {var} is not a user and password (user,password or user:password)"
            ))
        })?;
        l.set("search", "username", user.trim(), var);
        l.set("search", "password", pass, var);
    }
    if let Some(v) = get("ELASTICSEARCH_USER") {
        l.set("search", "username", v, "ELASTICSEARCH_USER");
    }
    if let Some(v) = get("ELASTICSEARCH_PASSWORD") {
        l.set("search", "password", v, "ELASTICSEARCH_PASSWORD");
    }
    if get("ELASTICSEARCH_API_KEY").is_none() && get("ELASTICSEARCH_API_KEY_ID").is_some() {
        unused
            .no_effect
            .push("ELASTICSEARCH_API_KEY_ID (it needs ELASTICSEARCH_API_KEY, as in PGSync)".into());
    }
    if let Some(key) = get("ELASTICSEARCH_API_KEY") {
        // PGSync takes the id and the key separately; the sink understands `id:key`.
        match get("ELASTICSEARCH_API_KEY_ID") {
            Some(id) => l.set(
                "search",
                "api_key",
                format!("{id}:{key}"),
                "ELASTICSEARCH_API_KEY_ID/ELASTICSEARCH_API_KEY",
            ),
            None => l.set("search", "api_key", key, "ELASTICSEARCH_API_KEY"),
        }
    }
    if let Some(v) = get("ELASTICSEARCH_VERIFY_CERTS") {
        let verify = parse_bool("ELASTICSEARCH_VERIFY_CERTS", v)?;
        l.set(
            "search",
            "insecure_skip_verify",
            !verify,
            "ELASTICSEARCH_VERIFY_CERTS",
        );
    }
    Ok(())
}

/// ELASTICSEARCH_AWS_HOSTED / OPENSEARCH_AWS_HOSTED sign requests for `es`;
/// OPENSEARCH_AWS_SERVERLESS for `aoss` (in PGSync it refines OPENSEARCH_AWS_HOSTED; alone it can
/// only mean the same).
fn aws(env: &Env, l: &mut EnvLayer) -> Result<()> {
    let flag = |n: &str| -> Result<bool> {
        env.get(n)
            .map(|v| parse_bool(n, v))
            .transpose()
            .map(|b| b.unwrap_or(false))
    };
    if flag("OPENSEARCH_AWS_SERVERLESS")? {
        l.set("search", "aws_service", "aoss", "OPENSEARCH_AWS_SERVERLESS");
    } else if flag("OPENSEARCH_AWS_HOSTED")? {
        l.set("search", "aws_service", "es", "OPENSEARCH_AWS_HOSTED");
    } else if flag("ELASTICSEARCH_AWS_HOSTED")? {
        l.set("search", "aws_service", "es", "ELASTICSEARCH_AWS_HOSTED");
    }
    Ok(())
}

fn split_pair(v: &str, sep: char) -> Option<(String, String)> {
    v.split_once(sep).map(|(a, b)| (a.to_owned(), b.to_owned()))
}

/// `user:password`, or the base64 form elasticsearch-py sends as is.
fn basic_auth_pair(v: &str) -> Option<(String, String)> {
    use base64::Engine;
    split_pair(v, ':').or_else(|| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .ok()?;
        split_pair(&String::from_utf8(bytes).ok()?, ':')
    })
}

/// ELASTICSEARCH and OPENSEARCH, with PGSync's rule that exactly one is on.
fn engine(env: &Env, l: &mut EnvLayer) -> Result<()> {
    let flag = |n: &str| env.get(n).map(|v| parse_bool(n, v)).transpose();
    let (es, os) = (flag("ELASTICSEARCH")?, flag("OPENSEARCH")?);
    let opensearch = match (es, os) {
        (None, None) => return Ok(()),
        (Some(true), Some(true)) => {
            return Err(Error::config(
                "environment variables ELASTICSEARCH and OPENSEARCH are both true; enable one search backend",
            ))
        }
        (Some(false), Some(false)) => {
            return Err(Error::config(
                "environment variables ELASTICSEARCH and OPENSEARCH are both false; enable one search backend",
            ))
        }
        (_, Some(os)) => os,
        (Some(es), None) => !es,
    };
    let var = if os.is_some() {
        "OPENSEARCH"
    } else {
        "ELASTICSEARCH"
    };
    l.set(
        "search",
        "engine",
        if opensearch {
            "opensearch"
        } else {
            "elasticsearch"
        },
        var,
    );
    Ok(())
}

/// REDIS_URL, else REDIS_SCHEME/HOST/PORT/DB/USER/AUTH with PGSync's defaults; REDIS_CHECKPOINT
/// picks the Redis checkpoint store.
fn redis(env: &Env, l: &mut EnvLayer, unused: &mut Unused) -> Result<()> {
    let get = |n: &str| env.get(n).map(String::as_str);
    let store_in_redis = match get("REDIS_CHECKPOINT") {
        Some(v) => {
            let on = parse_bool("REDIS_CHECKPOINT", v)?;
            l.set(
                "checkpoint",
                "store",
                if on { "redis" } else { "file" },
                "REDIS_CHECKPOINT",
            );
            on
        }
        None => false,
    };
    if let Some(url) = get("REDIS_URL") {
        l.set("checkpoint", "redis_url", url.trim(), "REDIS_URL");
        return Ok(());
    }
    const PARTS: [&str; 6] = [
        "REDIS_SCHEME",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_DB",
        "REDIS_USER",
        "REDIS_AUTH",
    ];
    if !store_in_redis && !PARTS.iter().any(|n| env.contains_key(*n)) {
        return Ok(());
    }
    let scheme = get("REDIS_SCHEME").unwrap_or("redis");
    if !matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys") {
        return Err(Error::config(format!(
            "environment variable REDIS_SCHEME = {scheme:?} is not redis or rediss"
        )));
    }
    let port = match get("REDIS_PORT") {
        Some(p) => parse_port("REDIS_PORT", p)?,
        None => 6379,
    };
    let db = match get("REDIS_DB") {
        Some(d) => parse_count("REDIS_DB", d)?,
        None => 0,
    };
    let auth = match (get("REDIS_USER"), get("REDIS_AUTH")) {
        (Some(u), Some(p)) => format!("{}:{}@", userinfo(u), userinfo(p)),
        (None, Some(p)) => format!(":{}@", userinfo(p)),
        // PGSync sends a user only together with a password.
        (user, None) => {
            if user.is_some() {
                unused
                    .no_effect
                    .push("REDIS_USER (PGSync sends a user only together with REDIS_AUTH)".into());
            }
            String::new()
        }
    };
    let host = bracket_ipv6(get("REDIS_HOST").unwrap_or("localhost"));
    l.set(
        "checkpoint",
        "redis_url",
        format!("{scheme}://{auth}{host}:{port}/{db}"),
        "REDIS_SCHEME/REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_USER/REDIS_AUTH",
    );
    Ok(())
}

/// Percent-encodes URL user-info (everything but unreserved characters).
fn userinfo(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// WAL=true asks for the WAL capture mode.
fn capture(env: &Env, l: &mut EnvLayer) -> Result<()> {
    if let Some(v) = env.get("WAL") {
        if parse_bool("WAL", v)? {
            l.set("capture", "mode", "wal", "WAL");
        }
    }
    Ok(())
}

/// PGSync logs to the console at the higher of CONSOLE_LOGGING_HANDLER_MIN_LEVEL and
/// GENERAL_LOGGING_LEVEL; CUSTOM_LOGGING's `pgsync=LEVEL` sets this program's own level.
/// LOG_LEVEL (not PGSync's, but common in its compose files) counts when neither is set.
fn logging(env: &Env, l: &mut EnvLayer, unused: &mut Unused) {
    let levels: Vec<(&str, u8)> = ["CONSOLE_LOGGING_HANDLER_MIN_LEVEL", "GENERAL_LOGGING_LEVEL"]
        .iter()
        .filter_map(|n| env.get(*n).and_then(|v| python_level(v).map(|r| (*n, r))))
        .collect();
    // A message reaches the console only past both levels: the quieter one decides.
    let (mut filter, mut var) = match levels.iter().min_by_key(|(_, r)| *r) {
        Some((n, r)) => (LEVELS[*r as usize].to_owned(), n.to_string()),
        None => match env.get("LOG_LEVEL") {
            Some(v) => (python_log_level(v), "LOG_LEVEL".to_owned()),
            None => (String::new(), String::new()),
        },
    };
    if let Some(custom) = env.get("CUSTOM_LOGGING") {
        let mut others = vec![];
        for entry in custom.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some(("pgsync", level)) if python_level(level).is_some() => {
                    let lv = LEVELS[python_level(level).unwrap_or(2) as usize];
                    let base = if filter.is_empty() {
                        "info".to_owned()
                    } else {
                        filter
                    };
                    filter = format!("{base},pgsync_rs={lv}");
                    var = if var.is_empty() {
                        "CUSTOM_LOGGING".into()
                    } else {
                        format!("{var}/CUSTOM_LOGGING")
                    };
                }
                _ => others.push(entry.to_owned()),
            }
        }
        if !others.is_empty() {
            unused.no_effect.push(format!(
                "CUSTOM_LOGGING entries {} (only pgsync=LEVEL applies: the other loggers are PGSync's Python libraries)",
                others.join(",")
            ));
        }
    }
    if !filter.is_empty() {
        l.set("log", "level", filter, &var);
    }
}

/// `tracing` level names by rank, least to most verbose.
const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A Python level name as an index into [`LEVELS`] (the quieter, the lower).
fn python_level(v: &str) -> Option<u8> {
    Some(match v.trim().to_ascii_uppercase().as_str() {
        "CRITICAL" | "FATAL" | "ERROR" => 0,
        "WARNING" | "WARN" => 1,
        "INFO" => 2,
        "DEBUG" => 3,
        "NOTSET" => 4,
        _ => return None,
    })
}

/// Maps Python logging level names (`LOG_LEVEL=INFO`) to `tracing` filter names; other values
/// (already a filter, e.g. `pgsync_rs=debug`) pass through.
pub(super) fn python_log_level(v: &str) -> String {
    match python_level(v) {
        Some(r) => LEVELS[r as usize].to_owned(),
        None if v.trim().eq_ignore_ascii_case("trace") => "trace".into(),
        None => v.trim().to_owned(),
    }
}

/// PG_DRIVER: any PostgreSQL driver has no effect; a MySQL one cannot work.
fn driver(env: &Env, unused: &mut Unused) -> Result<()> {
    match env.get("PG_DRIVER").map(|d| d.trim().to_ascii_lowercase()) {
        None => Ok(()),
        Some(d) if ["pymysql", "mysqldb", "mariadbconnector"].contains(&d.as_str()) => {
            Err(Error::config(format!(
                "environment variable PG_DRIVER = {d:?}: MySQL and MariaDB are not supported, only PostgreSQL"
            )))
        }
        Some(_) => {
            unused
                .no_effect
                .push("PG_DRIVER (the PostgreSQL client is built in)".into());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{load_with, Config};

    /// Every variable PGSync 7.3's settings.py reads, with a value that differs from its default
    /// here.
    const SETTINGS: &[(&str, &str)] = &[
        ("BLOCK_SIZE", "100"),
        ("CHECKPOINT_PATH", "/var/lib/pgsync"),
        ("CONSOLE_LOGGING_HANDLER_MIN_LEVEL", "DEBUG"),
        ("CUSTOM_LOGGING", "pgsync=DEBUG,elasticsearch=WARNING"),
        ("ELASTICSEARCH", "false"),
        ("ELASTICSEARCH_API_KEY", "k"),
        ("ELASTICSEARCH_API_KEY_ID", "id"),
        ("ELASTICSEARCH_AWS_HOSTED", "true"),
        ("ELASTICSEARCH_AWS_REGION", "eu-west-1"),
        ("ELASTICSEARCH_BASIC_AUTH", "dXNlcjpwdw=="),
        ("ELASTICSEARCH_BEARER_AUTH", "token"),
        ("ELASTICSEARCH_CA_CERTS", "/ca.pem"),
        ("ELASTICSEARCH_CHUNK_SIZE", "77"),
        ("ELASTICSEARCH_CLIENT_CERT", "@rootcert"),
        ("ELASTICSEARCH_CLIENT_KEY", "@rootcert"),
        ("ELASTICSEARCH_CLOUD_ID", "d:aG9zdC5leGFtcGxlJHV1aWQk"),
        ("ELASTICSEARCH_HOST", "es"),
        ("ELASTICSEARCH_HTTP_AUTH", "user,pw"),
        ("ELASTICSEARCH_HTTP_COMPRESS", "true"),
        ("ELASTICSEARCH_IGNORE_STATUS", "404,409"),
        ("ELASTICSEARCH_INITIAL_BACKOFF", "2"),
        ("ELASTICSEARCH_MAX_BACKOFF", "600"),
        ("ELASTICSEARCH_MAX_CHUNK_BYTES", "1048576"),
        ("ELASTICSEARCH_MAX_RETRIES", "3"),
        ("ELASTICSEARCH_OPAQUE_ID", "x"),
        ("ELASTICSEARCH_PASSWORD", "pw"),
        ("ELASTICSEARCH_POOL_MAXSIZE", "10"),
        ("ELASTICSEARCH_PORT", "9300"),
        ("ELASTICSEARCH_QUEUE_SIZE", "5"),
        ("ELASTICSEARCH_RAISE_ON_ERROR", "false"),
        ("ELASTICSEARCH_RAISE_ON_EXCEPTION", "false"),
        ("ELASTICSEARCH_SCHEME", "https"),
        ("ELASTICSEARCH_SSL_ASSERT_FINGERPRINT", "ab:cd"),
        ("ELASTICSEARCH_SSL_ASSERT_HOSTNAME", "es"),
        ("ELASTICSEARCH_SSL_CONTEXT", "x"),
        ("ELASTICSEARCH_SSL_SHOW_WARN", "true"),
        ("ELASTICSEARCH_SSL_VERSION", "3"),
        ("ELASTICSEARCH_STREAMING_BULK", "true"),
        ("ELASTICSEARCH_THREAD_COUNT", "6"),
        ("ELASTICSEARCH_TIMEOUT", "10"),
        ("ELASTICSEARCH_URL", "http://es:9200"),
        ("ELASTICSEARCH_USER", "elastic"),
        ("ELASTICSEARCH_USE_SSL", "true"),
        ("ELASTICSEARCH_VERIFY_CERTS", "false"),
        ("FILTER_CHUNK_SIZE", "10"),
        ("FORMAT_WITH_COMMAS", "false"),
        ("GENERAL_LOGGING_LEVEL", "ERROR"),
        ("JOIN_QUERIES", "true"),
        ("LOGICAL_SLOT_CHUNK_SIZE", "10"),
        ("LOG_HANDLERS", "console"),
        ("LOG_INTERVAL", "0.5"),
        ("MYSQL_DATABASE", "x"),
        ("NUM_WORKERS", "5"),
        ("OPENSEARCH", "true"),
        ("OPENSEARCH_AWS_HOSTED", "true"),
        ("OPENSEARCH_AWS_SERVERLESS", "true"),
        ("PG_DATABASE", "defaultdb"),
        ("PG_DRIVER", "psycopg2"),
        ("PG_HOST", "db"),
        ("PG_HOST_RO", "replica"),
        ("PG_PASSWORD", "pw"),
        ("PG_PASSWORD_RO", "pw"),
        ("PG_PORT", "6543"),
        ("PG_PORT_RO", "6543"),
        ("PG_SSLMODE", "require"),
        ("PG_SSLMODE_RO", "require"),
        ("PG_SSLROOTCERT", "@rootcert"),
        ("PG_SSLROOTCERT_RO", "/ca.pem"),
        ("PG_URL", "postgres://u@db/x"),
        ("PG_URL_RO", "postgres://u@replica/x"),
        ("PG_USER", "app"),
        ("PG_USER_RO", "ro"),
        ("PG_WORK_MEM", "16MB"),
        ("POLLING", "true"),
        ("POLL_INTERVAL", "0.5"),
        ("POLL_TIMEOUT", "0.5"),
        ("QUERY_CHUNK_SIZE", "500"),
        ("QUERY_LITERAL_BINDS", "true"),
        ("REDIS_AUTH", "pw"),
        ("REDIS_CHECKPOINT", "true"),
        ("REDIS_DB", "1"),
        ("REDIS_HOST", "cache"),
        ("REDIS_POLL_INTERVAL", "1"),
        ("REDIS_PORT", "6380"),
        ("REDIS_READ_CHUNK_SIZE", "1"),
        ("REDIS_RETRY_ON_TIMEOUT", "true"),
        ("REDIS_SCHEME", "rediss"),
        ("REDIS_SOCKET_TIMEOUT", "1"),
        ("REDIS_URL", "redis://cache:6379/0"),
        ("REDIS_USER", "app"),
        ("REDIS_WRITE_CHUNK_SIZE", "1"),
        ("REPLICATION_SLOT_CLEANUP_INTERVAL", "60"),
        ("S3_SCHEMA_URL", "s3://b/schema.json"),
        ("SCHEMA", "/etc/schema.json"),
        ("SCHEMA_URL", "http://x/schema.json"),
        ("SQLALCHEMY_MAX_OVERFLOW", "1"),
        ("SQLALCHEMY_POOL_PRE_PING", "false"),
        ("SQLALCHEMY_POOL_RECYCLE", "1"),
        ("SQLALCHEMY_POOL_SIZE", "1"),
        ("SQLALCHEMY_POOL_TIMEOUT", "1"),
        ("SQLALCHEMY_USE_NULLPOOL", "true"),
        ("STREAM_RESULTS", "false"),
        ("USE_ASYNC", "true"),
        ("USE_UTF8MB4", "true"),
        ("WAL", "false"),
    ];

    fn json(c: &Config) -> serde_json::Value {
        serde_json::to_value(c).unwrap()
    }

    #[test]
    fn every_pgsync_setting_sets_a_key_or_is_named_in_the_one_warning() {
        assert_eq!(
            SETTINGS.len(),
            105,
            "PGSync 7.3's settings.py reads 105 variables"
        );
        let root = tempfile::NamedTempFile::new().unwrap();
        let defaults = json(&Config::default());
        for (var, value) in SETTINGS {
            let value = if *value == "@rootcert" {
                root.path().display().to_string()
            } else {
                value.to_string()
            };
            let l = load_with(None, vec![(var.to_string(), value.clone())])
                .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            let changed = json(&l.config) != defaults;
            let named = l.warnings.iter().any(|w| w.contains(var));
            assert!(
                changed || named,
                "{var}={value} neither sets a key nor is named in a warning: {:?}",
                l.warnings
            );
            assert!(
                l.warnings.len() <= 1,
                "{var}: one warning at most: {:?}",
                l.warnings
            );
        }
        // WAL=true asks for the default mode: it wins over a file's notify.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgsync.toml");
        std::fs::write(&p, "[capture]\nmode = \"notify\"\n").unwrap();
        let c = load_with(Some(&p), vec![("WAL".into(), "true".into())])
            .unwrap()
            .config;
        assert_eq!(c.capture.mode, super::super::CaptureMode::Wal);
    }

    #[test]
    fn tuning_knobs_reach_their_keys() {
        let vars = [
            ("ELASTICSEARCH_CHUNK_SIZE", "5000"),
            ("ELASTICSEARCH_MAX_CHUNK_BYTES", "104857600"),
            ("ELASTICSEARCH_THREAD_COUNT", "4"),
            ("ELASTICSEARCH_QUEUE_SIZE", "4"),
            ("ELASTICSEARCH_TIMEOUT", "2.5"),
            ("ELASTICSEARCH_MAX_RETRIES", "0"),
            ("ELASTICSEARCH_INITIAL_BACKOFF", "2"),
            ("ELASTICSEARCH_MAX_BACKOFF", "600"),
            ("ELASTICSEARCH_HTTP_COMPRESS", "True"),
            ("QUERY_CHUNK_SIZE", "10000"),
            ("LOG_INTERVAL", "0.5"),
            ("NUM_WORKERS", "3"),
            ("POLL_INTERVAL", "0.1"),
            ("CHECKPOINT_PATH", "/state"),
            ("CONSOLE_LOGGING_HANDLER_MIN_LEVEL", "WARNING"),
            ("GENERAL_LOGGING_LEVEL", "DEBUG"),
            ("PG_WORK_MEM", "16MB"),
        ];
        let c = load_with(None, vars.map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap()
            .config;
        let p = &c.pipeline;
        assert_eq!((p.batch_docs, p.batch_bytes), (5000, 104_857_600));
        assert_eq!((p.writers, p.channel_capacity, p.fetchers), (4, 4, 3));
        assert_eq!(
            (p.max_retries, p.retry_backoff_ms, p.retry_max_backoff_ms),
            (0, 2000, 600_000)
        );
        assert_eq!(p.fetch_chunk, 10_000);
        assert_eq!(c.search.timeout_secs, 3);
        assert!(c.search.http_compress);
        assert_eq!(c.log.progress_interval_secs, 1);
        assert_eq!(c.capture.poll_interval_ms, 100);
        assert_eq!(c.checkpoint.dir, std::path::PathBuf::from("/state"));
        // The console shows a message only past both levels: the quieter one wins.
        assert_eq!(c.log.level, "warn");
        assert_eq!(c.postgres.work_mem.as_deref(), Some("16MB"));
        let pg = c.postgres_for("db");
        assert_eq!(pg.get_options(), Some("-c work_mem=16MB"));
    }

    #[test]
    fn aws_cloud_and_replica_variables_reach_their_keys() {
        let vars = |v: &[(&str, &str)]| {
            load_with(None, v.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .unwrap()
                .config
        };
        let c = vars(&[
            ("OPENSEARCH_AWS_HOSTED", "true"),
            ("ELASTICSEARCH_AWS_REGION", "eu-west-1"),
        ]);
        assert_eq!(c.search.aws_service.as_deref(), Some("es"));
        assert_eq!(c.search.aws_region.as_deref(), Some("eu-west-1"));
        let c = vars(&[
            ("OPENSEARCH_AWS_HOSTED", "true"),
            ("OPENSEARCH_AWS_SERVERLESS", "true"),
        ]);
        assert_eq!(c.search.aws_service.as_deref(), Some("aoss"));
        let c = vars(&[("ELASTICSEARCH_AWS_HOSTED", "false")]);
        assert_eq!(c.search.aws_service, None);
        let c = vars(&[
            ("ELASTICSEARCH_CLOUD_ID", "d:aG9zdC5leGFtcGxlJHV1aWQk"),
            ("ELASTICSEARCH_BEARER_AUTH", "tok"),
        ]);
        assert_eq!(
            c.search.cloud_id.as_deref(),
            Some("d:aG9zdC5leGFtcGxlJHV1aWQk")
        );
        assert_eq!(
            c.search.bearer_token.as_ref().map(|t| t.expose()),
            Some("tok")
        );
        // The replica from its parts, each falling back to the primary's variable.
        let c = vars(&[
            ("PG_HOST_RO", "replica"),
            ("PG_USER", "app"),
            ("PG_PASSWORD", "p@ss"),
            ("PG_PORT_RO", "6432"),
            ("PG_SSLMODE_RO", "require"),
        ]);
        assert_eq!(
            c.postgres.read_replica_url.as_ref().map(|u| u.expose()),
            Some("postgres://app:p%40ss@replica:6432/?sslmode=require")
        );
        let ro = c.read_replica().unwrap();
        assert_eq!(ro.postgres.url, c.postgres.read_replica_url);
        let c = vars(&[("PG_URL_RO", "postgres://ro@r/x")]);
        assert_eq!(
            c.postgres.read_replica_url.as_ref().map(|u| u.expose()),
            Some("postgres://ro@r/x")
        );
        // A bad cloud id names the key and the variable.
        let e =
            load_with(None, vec![("ELASTICSEARCH_CLOUD_ID".into(), "nope".into())]).unwrap_err();
        assert!(e.message.contains("ELASTICSEARCH_CLOUD_ID"), "{e}");
    }

    #[test]
    fn pg_url_wins_and_names_what_it_overrides() {
        let l = load_with(
            None,
            [
                ("PG_URL", "postgres://u@db/x?sslmode=require"),
                ("PG_HOST", "ignored"),
                ("PG_SSLMODE", "disable"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        assert_eq!(l.config.postgres.host, "localhost");
        assert_eq!(l.config.postgres.sslmode, None);
        let w = &l.warnings[0];
        assert!(
            w.contains("PG_HOST") && w.contains("PG_SSLMODE") && w.contains("PG_URL"),
            "{w}"
        );
        assert_eq!(
            l.config.postgres_tls().unwrap().mode,
            super::super::tls::SslMode::Require
        );
    }

    #[test]
    fn a_mysql_driver_and_two_search_backends_are_refused() {
        let e = load_with(None, vec![("PG_DRIVER".into(), "pymysql".into())]).unwrap_err();
        assert!(e.message.contains("MySQL"), "{e}");
        let e = load_with(
            None,
            vec![
                ("ELASTICSEARCH".into(), "true".into()),
                ("OPENSEARCH".into(), "true".into()),
            ],
        )
        .unwrap_err();
        assert!(e.message.contains("both true"), "{e}");
    }
}
