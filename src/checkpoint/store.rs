//! Where checkpoints live: a small JSON file per index (written atomically by rename), or a key
//! in Redis/Valkey through `fred`.

use crate::config::{CheckpointConfig, CheckpointStore, Secret};
use crate::{Error, ErrorKind, Result};
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A stored checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Stream position (LSN in `wal` mode, transaction-id horizon in `notify` mode).
    pub position: u64,
    /// The initial sync of the index finished.
    pub initial_sync_done: bool,
    /// An initial sync under way: the ranges it split the root table into and which are
    /// written, so a restart resumes instead of starting over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<InitialProgress>,
    /// The engine's identity (`uuid`) of the index the documents were written to: a different
    /// one at start-up means the index was deleted or re-created, and is synced again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_uuid: Option<String>,
    /// The physical index behind the alias that the documents are written to (`None`: the index
    /// of the alias's own name, from before aliases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<String>,
    /// The definition (schema.json entry) the index was built with: a different one at start-up
    /// is a migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<serde_json::Value>,
    /// Physical indexes replaced by a migration, deleted once `migration.keep_old_secs` passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Retired>,
}

/// A physical index an alias no longer points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// Its name.
    pub physical: String,
    /// When it may be deleted (seconds since the epoch).
    pub delete_after: u64,
}

/// Progress of an initial sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialProgress {
    /// Where streaming starts once the sync is done (the slot's consistent point, or the
    /// transaction-id horizon read after the triggers existed).
    pub start: u64,
    /// The ranges, in order.
    pub ranges: Vec<RangeState>,
}

/// One range of an initial sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeState {
    /// Which root rows.
    pub filter: crate::sql::document::RootFilter,
    /// Every document of it is acknowledged by the engine.
    pub done: bool,
}

impl CheckpointRecord {
    /// A record after the initial sync, at `position`.
    pub fn at(position: u64) -> Self {
        CheckpointRecord {
            position,
            initial_sync_done: true,
            initial: None,
            index_uuid: None,
            physical: None,
            definition: None,
            retired: vec![],
        }
    }

    /// The same record at another position.
    pub fn with_position(&self, position: u64) -> Self {
        CheckpointRecord {
            position,
            ..self.clone()
        }
    }
}

/// A checkpoint store.
#[derive(Clone)]
pub enum Store {
    /// One file per key in a directory.
    File(PathBuf),
    /// Redis/Valkey.
    Redis(fred::clients::Client),
}

impl Store {
    /// Opens the configured store (connecting to Redis when configured). An unreachable Redis
    /// fails here, at start-up, where the operator sees it; later outages are retried.
    pub async fn open(cfg: &CheckpointConfig) -> Result<Store> {
        match cfg.store {
            CheckpointStore::File => {
                std::fs::create_dir_all(&cfg.dir).map_err(|e| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!("checkpoint.dir {}: {e}", cfg.dir.display()),
                    )
                })?;
                Ok(Store::File(cfg.dir.clone()))
            }
            CheckpointStore::Redis => {
                let url = cfg.redis_url.as_ref().ok_or_else(|| {
                    Error::config(
                        "checkpoint.store = \"redis\" needs checkpoint.redis_url (or REDIS_URL)",
                    )
                })?;
                Ok(Store::Redis(
                    redis_client_tls(url, cfg.redis_ca_cert.as_deref(), COMMAND_TIMEOUT).await?,
                ))
            }
        }
    }

    fn file(dir: &std::path::Path, key: &str) -> PathBuf {
        dir.join(format!("{key}.json"))
    }

    /// Reads the checkpoint of `key`, if any.
    pub async fn load(&self, key: &str) -> Result<Option<CheckpointRecord>> {
        let text: Option<String> = match self {
            Store::File(dir) => match tokio::fs::read_to_string(Self::file(dir, key)).await {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Checkpoint,
                        format!("checkpoint {key}: {e}"),
                    ))
                }
            },
            Store::Redis(c) => {
                let k = redis_key(key);
                retrying(key, "read", Some(LOAD_PATIENCE), || {
                    c.get::<Option<String>, _>(k.clone())
                })
                .await?
            }
        };
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| {
                Error::new(
                    ErrorKind::Checkpoint,
                    format!("checkpoint {key} is corrupt: {e}"),
                )
            })
        })
        .transpose()
    }

    /// Stores the checkpoint of `key`.
    pub async fn save(&self, key: &str, rec: &CheckpointRecord) -> Result<()> {
        let text = serde_json::to_string(rec).map_err(|e| Error::internal(e.to_string()))?;
        match self {
            Store::File(dir) => {
                let path = Self::file(dir, key);
                let tmp = path.with_extension("json.tmp");
                tokio::fs::write(&tmp, text.as_bytes()).await?;
                tokio::fs::rename(&tmp, &path).await?;
                Ok(())
            }
            // Retried until Redis is back: a restart or outage must not stop the daemon (the
            // leader lock, when on, bounds how long that can last).
            Store::Redis(c) => {
                let k = redis_key(key);
                retrying(key, "store", None, || {
                    c.set::<(), _, _>(k.clone(), text.clone(), None, None, false)
                })
                .await
            }
        }
    }

    /// Removes the checkpoint of `key` (teardown).
    pub async fn remove(&self, key: &str) -> Result<()> {
        match self {
            Store::File(dir) => match tokio::fs::remove_file(Self::file(dir, key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Store::Redis(c) => {
                let k = redis_key(key);
                retrying(key, "remove", Some(LOAD_PATIENCE), || {
                    c.del::<(), _>(k.clone())
                })
                .await
            }
        }
    }
}

/// How long a read or removal keeps retrying a Redis outage before giving up (one-shot commands
/// such as `status` must end); stores retry for as long as it takes.
const LOAD_PATIENCE: Duration = Duration::from_secs(30);

/// Each Redis command gives up after this; the caller's retry loop then tries again.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis key of a checkpoint.
pub fn redis_key(key: &str) -> String {
    format!("pgsync:checkpoint:{key}")
}

/// A Redis/Valkey client for `url` that reconnects by itself, forever, after a restart or outage
/// (exponential backoff, 100 ms up to 2 s), and whose commands time out instead of hanging
/// while it is disconnected (after `command_timeout`). The first connection must succeed, so a
/// wrong URL fails at once.
pub async fn redis_client(
    url: &Secret,
    command_timeout: Duration,
) -> Result<fred::clients::Client> {
    redis_client_tls(url, None, command_timeout).await
}

/// Like [`redis_client`]; a `rediss://` (or `valkeys://`) URL connects over TLS (rustls), the
/// server's certificate checked against `ca` (PEM) when given, else the system's CAs, and its
/// name against the URL's host. `user:password@` in the URL logs in as that ACL user.
pub async fn redis_client_tls(
    url: &Secret,
    ca: Option<&Path>,
    command_timeout: Duration,
) -> Result<fred::clients::Client> {
    let shown = url.masked_url();
    // fred's own TLS set-up asks rustls for the process-wide provider.
    crate::config::tls::crypto_provider();
    let mut config = fred::types::config::Config::from_url(url.expose()).map_err(|e| {
        Error::config(format!(
            "checkpoint.redis_url {shown}: {}",
            e.details().replace(url.expose(), &shown)
        ))
        .with_hint("expected redis://[[user]:password@]host:port/db, or rediss:// for TLS")
    })?;
    match (ca, config.tls.is_some()) {
        (Some(ca), true) => config.tls = Some(redis_tls(ca)?.into()),
        (Some(ca), false) => {
            return Err(Error::config(format!(
                "checkpoint.redis_ca_cert {} is set but checkpoint.redis_url {shown} is not rediss:// (TLS)",
                ca.display()
            )))
        }
        _ => {}
    }
    let client = fred::types::Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.internal_command_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .build()
        .map_err(|e| Error::config(format!("checkpoint.redis_url {shown}: {}", e.details())))?;
    client.init().await.map_err(|e| {
        // A wrong password is for an operator to fix; a Redis not up yet is waited for.
        let kind = if is_transient(&e) {
            ErrorKind::Checkpoint
        } else {
            ErrorKind::Auth
        };
        Error::new(
            kind,
            format!("cannot connect to Redis at {shown}: {}", e.details()),
        )
        .with_hint("check checkpoint.redis_url (or REDIS_URL / REDIS_HOST, REDIS_AUTH...) and that Redis/Valkey is up")
    })?;
    Ok(client)
}

/// A rustls connector trusting the CA certificates of the PEM file `ca`.
fn redis_tls(ca: &Path) -> Result<fred::types::config::TlsConnector> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad =
        |what: String| Error::config(format!("checkpoint.redis_ca_cert {}: {what}", ca.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect())
        .map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad("holds no usable CA certificate".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::config::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}

/// Whether a Redis error may go away by itself (connection lost, server restarting) rather than
/// needing an operator (wrong password, wrong type at the key).
pub fn is_transient(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind as K;
    match e.kind() {
        K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Routing | K::Protocol => true,
        _ => [
            "LOADING",
            "MASTERDOWN",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "READONLY",
        ]
        .iter()
        .any(|p| e.details().starts_with(p)),
    }
}

/// Runs a Redis command for checkpoint `key`, retrying transient failures with exponential
/// backoff (100 ms up to 5 s), logged, for at most `patience` (forever when `None`).
async fn retrying<T, F, Fut>(
    key: &str,
    what: &str,
    patience: Option<Duration>,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut outage = crate::outage::Outage::new(format!("checkpoint {key} in Redis ({what})"));
    loop {
        let e = match f().await {
            Ok(v) => {
                outage.recovered();
                return Ok(v);
            }
            Err(e) => e,
        };
        let err = Error::new(
            ErrorKind::Checkpoint,
            format!(
                "checkpoint {key}: cannot {what} it in Redis: {}",
                e.details()
            ),
        )
        .with_hint("check checkpoint.redis_url (or REDIS_URL) and that Redis/Valkey is up");
        if !is_transient(&e) {
            // Needs an operator: a wrong password, or something else stored at our key.
            let kind = match e.kind() {
                fred::error::ErrorKind::Auth => ErrorKind::Auth,
                _ => ErrorKind::Config,
            };
            return Err(Error { kind, ..err });
        }
        if patience.is_some_and(|p| started.elapsed() >= p) {
            return Err(err);
        }
        outage.failed(&err, delay);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as RedisError, ErrorKind as K};

    #[test]
    fn transient_redis_errors_are_retried_others_are_not() {
        for kind in [K::IO, K::Timeout, K::Canceled, K::Backpressure] {
            assert!(is_transient(&RedisError::new(kind, "x")));
        }
        assert!(is_transient(&RedisError::new(
            K::Unknown,
            "LOADING Redis is loading the dataset in memory"
        )));
        assert!(!is_transient(&RedisError::new(K::Auth, "WRONGPASS")));
        assert!(!is_transient(&RedisError::new(
            K::Unknown,
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert_eq!(redis_key("s"), "pgsync:checkpoint:s");
    }
}
