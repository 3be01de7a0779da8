//! Connections to PostgreSQL from the loaded configuration: the tokio-postgres settings of one
//! database, TLS resolved as libpq resolves it, and connecting with libpq's attempt order.

use super::tls::{describe_failures, Attempt, PgTls, TlsSettings};
use super::Config;
use crate::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection whose messages the caller drives itself (the notify listener reads its
/// notifications from it).
pub type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// tokio-postgres-rustls, except that a connection without a host name (a Unix socket, which
/// never uses TLS) does not fail for want of a TLS server name.
#[derive(Clone)]
struct Connector(MakeRustlsConnect);

impl MakeTlsConnect<Socket> for Connector {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        // Only reached with sslmode disable for a socket: the connector is never used then.
        let domain = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(&mut self.0, domain)
    }
}

/// libpq connection parameters about TLS that tokio-postgres does not parse itself; they are
/// taken out of `postgres.url` and handled here.
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq TLS parameters this client cannot honour: refused rather than ignored.
const UNSUPPORTED_PARAMS: [&str; 8] = [
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
];

/// A connection string split into what tokio-postgres parses and the TLS parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SplitConnString {
    /// The string without the TLS parameters.
    pub rest: String,
    /// `(name, value)` of each TLS parameter, in order.
    pub tls: Vec<(String, String)>,
}

impl SplitConnString {
    fn get(&self, name: &str) -> Option<&str> {
        self.tls
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a URL (`postgres://...?sslmode=verify-full`) or a `key=value` string. Errors name an
/// unsupported parameter, never the string (it may hold a password).
pub(crate) fn split_conn_string(s: &str) -> Result<SplitConnString> {
    let s = s.trim();
    let pairs = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        split_url(s)
    } else {
        split_key_values(s)
    }?;
    for (k, _) in &pairs.tls {
        if UNSUPPORTED_PARAMS.contains(&k.as_str()) {
            return Err(Error::config(format!(
                "connection parameter {k} is not supported (TLS here takes sslmode, sslrootcert, sslcert and an unencrypted sslkey)"
            )));
        }
    }
    Ok(pairs)
}

fn is_tls_param(k: &str) -> bool {
    TLS_PARAMS.contains(&k) || UNSUPPORTED_PARAMS.contains(&k)
}

fn split_url(s: &str) -> Result<SplitConnString> {
    let Some((base, query)) = s.split_once('?') else {
        return Ok(SplitConnString {
            rest: s.to_owned(),
            tls: vec![],
        });
    };
    let mut kept = vec![];
    let mut tls = vec![];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = super::load::percent_decode(k);
        if is_tls_param(&key) {
            tls.push((key, super::load::percent_decode(v)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(SplitConnString { rest, tls })
}

/// libpq's `key = value` syntax: values unquoted (backslash escapes) or in single quotes.
fn split_key_values(s: &str) -> Result<SplitConnString> {
    let mut kept = vec![];
    let mut tls = vec![];
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(Error::config(format!(
                "connection string: missing \"=\" after {key:?}"
            )));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let value = conn_value(&mut chars)?;
        let end = chars.peek().map(|(i, _)| *i).unwrap_or(s.len());
        if is_tls_param(&key) {
            tls.push((key, value));
        } else {
            kept.push(&s[start..end]);
        }
    }
    Ok(SplitConnString {
        rest: kept.join(" "),
        tls,
    })
}

fn conn_value(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Result<String> {
    let mut value = String::new();
    if chars.next_if(|(_, c)| *c == '\'').is_some() {
        loop {
            match chars.next().map(|(_, c)| c) {
                Some('\'') => return Ok(value),
                Some('\\') => value.extend(chars.next().map(|(_, c)| c)),
                Some(c) => value.push(c),
                None => {
                    return Err(Error::config(
                        "connection string: unterminated quoted value",
                    ))
                }
            }
        }
    }
    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
        if c == '\\' {
            value.extend(chars.next().map(|(_, c)| c));
        } else {
            value.push(c);
        }
    }
    Ok(value)
}

impl Config {
    /// The connection settings for one database (each index in `schema.json` names its own).
    /// `postgres.url` wins; the separate fields fill what the URL leaves out (host, user,
    /// password; a URL without a port means 5432, as with libpq). A host starting with `/` is a
    /// Unix socket directory. TLS is decided per attempt by [`connect`], so the mode here is
    /// `disable`.
    pub fn postgres_for(&self, database: &str) -> tokio_postgres::Config {
        let p = &self.postgres;
        let mut c = match &p.url {
            Some(url) => split_conn_string(url.expose())
                .ok()
                .and_then(|s| s.rest.parse::<tokio_postgres::Config>().ok())
                .unwrap_or_default(),
            None => tokio_postgres::Config::new(),
        };
        if c.get_hosts().is_empty() {
            c.host(&p.host);
        }
        if c.get_ports().is_empty() {
            c.port(p.port);
        }
        if c.get_user().is_none() {
            c.user(&p.user);
        }
        if c.get_password().is_none() {
            if let Some(pw) = p.password.as_ref().filter(|s| !s.is_empty()) {
                c.password(pw.expose());
            }
        }
        c.dbname(database);
        c.ssl_mode(SslMode::Disable);
        if c.get_connect_timeout().is_none() && p.connect_timeout_secs > 0 {
            c.connect_timeout(Duration::from_secs(p.connect_timeout_secs));
        }
        if c.get_application_name().is_none() {
            c.application_name("pgsync-rs");
        }
        if let Some(mem) = &p.work_mem {
            let opts = match c.get_options() {
                Some(o) if !o.is_empty() => format!("{o} -c work_mem={mem}"),
                _ => format!("-c work_mem={mem}"),
            };
            c.options(&opts);
        }
        c
    }

    /// The TLS settings of every PostgreSQL connection: `postgres.url`'s parameters win over
    /// the `postgres.ssl*` keys, as libpq's connection string wins over its environment.
    pub fn postgres_tls(&self) -> Result<PgTls> {
        let p = &self.postgres;
        let url = match &p.url {
            Some(u) => split_conn_string(u.expose())?,
            None => SplitConnString::default(),
        };
        let path =
            |k: &str, field: &Option<PathBuf>| url.get(k).map(PathBuf::from).or(field.clone());
        let settings = TlsSettings {
            sslmode: url.get("sslmode").map(str::to_owned).or(p.sslmode.clone()),
            sslrootcert: path("sslrootcert", &p.sslrootcert),
            sslcert: path("sslcert", &p.sslcert),
            sslkey: path("sslkey", &p.sslkey),
        };
        let home = std::env::var_os("HOME").map(PathBuf::from);
        PgTls::resolve(&settings, home.as_deref())
    }
}

/// Whether every host of `pg` is a Unix socket directory, where libpq never uses TLS.
pub(crate) fn unix_only(pg: &tokio_postgres::Config) -> bool {
    !pg.get_hosts().is_empty() && pg.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)))
}

/// Describes where a connection goes, without the password: `host:port as user (database db)`.
pub fn describe_target(c: &tokio_postgres::Config, database: &str) -> String {
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    format!(
        "{} as {} (database {database})",
        hosts.join(","),
        c.get_user().unwrap_or("?")
    )
}

/// Connects to `database` with the configured settings and drives the connection on the current
/// tokio runtime. Failures name host, port, user and database — never the password.
pub async fn connect(cfg: &Config, database: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = connect_raw(cfg, database).await?;
    let target = describe_target(&cfg.postgres_for(database), database);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection to {target} ended: {e}");
        }
    });
    Ok(client)
}

/// Like [`connect`], handing back the connection for the caller to drive. Attempts follow
/// libpq's order for the sslmode: `prefer` falls back to plain when TLS fails or the server
/// refuses it (including a `hostnossl` rule rejecting the TLS session), `allow` tries TLS when
/// the server refused the plain connection.
pub async fn connect_raw(
    cfg: &Config,
    database: &str,
) -> Result<(tokio_postgres::Client, PgConnection)> {
    let pg = cfg.postgres_for(database);
    let target = describe_target(&pg, database);
    let tls = if unix_only(&pg) {
        PgTls::disabled()
    } else {
        cfg.postgres_tls()
            .map_err(|e| e.context(format!("PostgreSQL at {target}")))?
    };
    let connector = Connector(MakeRustlsConnect::new(tls.client_config()?));
    let mut failures: Vec<(Attempt, String)> = vec![];
    // A refusal that needs an operator (wrong password, missing database) is permanent;
    // anything else at connection time (refused, reset, starting up) passes by itself.
    let mut kind = ErrorKind::SourceUnreachable;
    for &attempt in tls.attempts() {
        let mut c = pg.clone();
        c.ssl_mode(match attempt {
            Attempt::Plain => SslMode::Disable,
            // libpq's prefer: a server answering "no TLS" is used without it, on the same socket.
            Attempt::Tls if tls.mode == super::tls::SslMode::Prefer => SslMode::Prefer,
            Attempt::Tls => SslMode::Require,
        });
        match c.connect(connector.clone()).await {
            Ok(pair) => return Ok(pair),
            Err(e) => {
                let retry = worth_next_attempt(&e);
                kind = e
                    .as_db_error()
                    .and_then(|db| crate::error::sqlstate_kind(db.code().code()))
                    .unwrap_or(ErrorKind::SourceUnreachable);
                failures.push((attempt, reason(&e)));
                if !retry {
                    break;
                }
            }
        }
    }
    Err(Error::new(
        kind,
        format!(
            "cannot connect to PostgreSQL at {target}: {}",
            describe_failures(&failures)
        ),
    ))
}

/// libpq moves to the next attempt when the server answered (an error during start-up, such as
/// a pg_hba.conf rule for the other kind of connection) or the TLS handshake failed, not when the
/// server cannot be reached at all.
fn worth_next_attempt(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some() || e.to_string().starts_with("error performing TLS handshake")
}

fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_split_from_urls_and_key_value_strings() {
        let s = split_conn_string(
            "postgres://u:p%40w@db:5433/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.rest, "postgres://u:p%40w@db:5433/x?application_name=a");
        assert_eq!(s.get("sslmode"), Some("verify-full"));
        assert_eq!(s.get("sslrootcert"), Some("/etc/ca.pem"));

        let s = split_conn_string("postgresql://db/x?sslmode=require").unwrap();
        assert_eq!(s.rest, "postgresql://db/x");

        let s = split_conn_string(
            "host=db sslmode = verify-ca user='a b' sslrootcert='/x y/ca.pem' password=p\\ w",
        )
        .unwrap();
        assert_eq!(s.rest, "host=db user='a b' password=p\\ w");
        assert_eq!(s.get("sslmode"), Some("verify-ca"));
        assert_eq!(s.get("sslrootcert"), Some("/x y/ca.pem"));
        let parsed: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(parsed.get_user(), Some("a b"));
        assert_eq!(parsed.get_password(), Some(&b"p w"[..]));

        let e = split_conn_string("postgres://db/x?sslcrl=/c.pem").unwrap_err();
        assert!(e.message.contains("sslcrl"), "{e}");
        assert!(split_conn_string("host='db").is_err());
    }
}
