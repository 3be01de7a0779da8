//! A leader lock per index in Redis/Valkey, so that two daemons never write one index: the
//! leader holds `pgsync:leader:<slot>` (set with `SET NX PX`, renewed every third of its
//! lifetime by a compare-and-set script, released by compare-and-delete), and any other daemon
//! waits as a standby until the key is gone.
//!
//! Safety rests on the leader giving up *before* the key can expire: it counts the lock valid
//! for `ttl` from the moment it sent its last successful renewal (Redis starts the expiry later
//! than that), and declares the lock lost a safety margin (a fifth of `ttl`) earlier. A renewal
//! that finds another process's token also means the lock is lost. Either way the caller must
//! stop writing at once. A key that vanished while the lock was still valid (Redis restarted
//! without persistence) is taken again by the renewal.

use crate::config::{CheckpointConfig, CheckpointStore};
use crate::{Error, ErrorKind, Result};
use fred::clients::Client;
use fred::interfaces::{KeysInterface, LuaInterface};
use fred::types::{Expiration, SetOptions};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// The shortest lock lifetime accepted: below it, renewals every third of it would be dominated
/// by network and scheduling delays and a healthy leader would keep losing its lock.
pub const MIN_TTL: Duration = Duration::from_millis(300);

/// Extends the key if it still holds our token; takes it again if it is gone (Redis lost it, e.g.
/// restarted without persistence); otherwise names the holder, so the loss is reported without
/// another round trip.
const RENEW: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 'extended'
elseif not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'reacquired'
end
return 'taken:' .. v
"#;

/// Deletes the key only if it holds our token, so a late release never frees another leader.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The Redis key of the leader lock of the index streaming from `slot`.
pub fn lock_key(slot: &str) -> String {
    format!("pgsync:leader:{slot}")
}

/// This process's lock token, `hostname:pid:random`: unique per process, and readable in Redis
/// so an operator can tell which daemon leads an index.
pub fn process_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}:{:016x}", std::process::id(), random_u64())
    })
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    // No /dev/urandom: std's per-process random hash keys, mixed with the time.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The key held our token; its lifetime starts over.
    Extended,
    /// The key was gone (Redis lost it) and is ours again.
    Reacquired,
    /// Another process, whose token this is, holds the key: our lock is lost.
    Taken(String),
}

/// Where `pgsync run` takes its leader locks: a Redis client of their own, whose commands time
/// out well within the lock's lifetime (a checkpoint write stuck on a dead connection must not
/// delay a renewal).
#[derive(Clone)]
pub struct LeaderLocks {
    client: Client,
    ttl: Duration,
}

impl LeaderLocks {
    /// Connects when the configuration asks for leader locks (`store = "redis"` and
    /// `leader_lock = true`); `None` otherwise.
    pub async fn open(cfg: &CheckpointConfig) -> Result<Option<LeaderLocks>> {
        if cfg.store != CheckpointStore::Redis || !cfg.leader_lock {
            return Ok(None);
        }
        let ttl = checked_ttl(cfg.lock_ttl_ms)?;
        let url = cfg.redis_url.as_ref().ok_or_else(|| {
            Error::config("checkpoint.store = \"redis\" needs checkpoint.redis_url (or REDIS_URL)")
        })?;
        let client =
            super::store::redis_client_tls(url, cfg.redis_ca_cert.as_deref(), command_timeout(ttl))
                .await?;
        Ok(Some(LeaderLocks { client, ttl }))
    }

    /// The lock of the index streaming from `slot`, with this process's token.
    pub fn for_slot(&self, slot: &str) -> LeaderLock {
        LeaderLock {
            client: self.client.clone(),
            key: lock_key(slot),
            token: process_token().to_owned(),
            ttl: self.ttl,
        }
    }
}

fn checked_ttl(ms: u64) -> Result<Duration> {
    let ttl = Duration::from_millis(ms);
    if ttl < MIN_TTL {
        return Err(Error::config(format!(
            "checkpoint.lock_ttl_ms = {ms} is too short for the leader lock"
        ))
        .with_hint(format!(
            "use at least {} (the default is 10000)",
            MIN_TTL.as_millis()
        )));
    }
    Ok(ttl)
}

/// Each lock command gives up after this, so that a retry still fits in the lock's lifetime.
fn command_timeout(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(50))
}

/// One index's leader lock, as held (or wanted) by this process.
#[derive(Clone)]
pub struct LeaderLock {
    client: Client,
    key: String,
    token: String,
    ttl: Duration,
}

impl LeaderLock {
    /// A lock on `key` for `token`. Other processes must use other tokens. The client's commands
    /// should time out within a fraction of `ttl` (see [`LeaderLocks`]).
    pub fn new(
        client: Client,
        key: impl Into<String>,
        token: impl Into<String>,
        ttl: Duration,
    ) -> Result<LeaderLock> {
        checked_ttl(ttl.as_millis() as u64)?;
        Ok(LeaderLock {
            client,
            key: key.into(),
            token: token.into(),
            ttl,
        })
    }

    /// The Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value the key holds while we lead.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How long the lock lives without a renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    fn error(&self, what: &str, e: &fred::error::Error) -> Error {
        Error::new(
            ErrorKind::Checkpoint,
            format!("leader lock {}: cannot {what}: {}", self.key, e.details()),
        )
        .with_hint("check checkpoint.redis_url (or REDIS_URL) and that Redis/Valkey is up")
    }

    async fn try_acquire_raw(&self) -> Result<bool, fred::error::Error> {
        let set: Option<String> = self
            .client
            .set(
                self.key.as_str(),
                self.token.as_str(),
                Some(Expiration::PX(self.ttl_ms())),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(set.is_some())
    }

    /// One attempt: `SET key token NX PX ttl`. `true` if the lock is now ours.
    pub async fn try_acquire(&self) -> Result<bool> {
        self.try_acquire_raw()
            .await
            .map_err(|e| self.error("acquire", &e))
    }

    async fn renew_raw(&self) -> Result<Renewal, fred::error::Error> {
        let r: String = self
            .client
            .eval(
                RENEW,
                vec![self.key.as_str()],
                vec![self.token.clone(), self.ttl_ms().to_string()],
            )
            .await?;
        Ok(match r.as_str() {
            "extended" => Renewal::Extended,
            "reacquired" => Renewal::Reacquired,
            other => Renewal::Taken(other.strip_prefix("taken:").unwrap_or(other).to_owned()),
        })
    }

    /// One renewal: extends the key's lifetime to `ttl` if it still holds our token.
    pub async fn renew(&self) -> Result<Renewal> {
        self.renew_raw().await.map_err(|e| self.error("renew", &e))
    }

    /// Compare-and-delete: removes the key only if it holds our token; `true` if it did.
    pub async fn release(&self) -> Result<bool> {
        let n: i64 = self
            .client
            .eval(RELEASE, vec![self.key.as_str()], vec![self.token.clone()])
            .await
            .map_err(|e| self.error("release", &e))?;
        Ok(n == 1)
    }

    /// The token of whoever holds the lock now, if anyone (for logs and tests).
    pub async fn holder(&self) -> Result<Option<String>> {
        self.client
            .get(self.key.as_str())
            .await
            .map_err(|e| self.error("read", &e))
    }

    /// Waits until the lock is ours, trying every third of `ttl` (a standby logs once that it
    /// waits, and who leads), and starts renewing it. `None` if `stop` turned true first.
    /// Redis being unreachable is waited out; only errors an operator must fix end the wait.
    pub async fn acquire(&self, mut stop: watch::Receiver<bool>) -> Result<Option<Leadership>> {
        let mut standby = false;
        let mut unreachable = false;
        loop {
            if *stop.borrow_and_update() {
                return Ok(None);
            }
            let sent = Instant::now();
            match self.try_acquire_raw().await {
                Ok(true) => {
                    if standby {
                        tracing::info!(lock = %self.key, token = %self.token, "took over as leader: the previous leader's lock expired or was released");
                    } else {
                        tracing::info!(lock = %self.key, token = %self.token, "acquired the leader lock");
                    }
                    return Ok(Some(self.hold(sent)));
                }
                Ok(false) => {
                    unreachable = false;
                    if !standby {
                        standby = true;
                        let holder = self.holder().await.ok().flatten().unwrap_or_default();
                        tracing::info!(
                            lock = %self.key,
                            leader = %holder,
                            retry_ms = (self.ttl / 3).as_millis() as u64,
                            "standby: another daemon leads this index; waiting to take over"
                        );
                    }
                }
                Err(e) if super::store::is_transient(&e) => {
                    if !unreachable {
                        unreachable = true;
                        tracing::warn!(lock = %self.key, error = %e.details(), "cannot reach Redis for the leader lock; retrying");
                    }
                }
                Err(e) => return Err(self.error("acquire", &e)),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.ttl / 3) => {}
                r = stop.changed() => if r.is_err() {
                    // Nobody can ask us to stop any more: keep waiting for the lock.
                    tokio::time::sleep(self.ttl / 3).await;
                }
            }
        }
    }

    /// Starts renewing a lock this process acquired at `acquired_at` (taken just before the
    /// acquiring command was sent).
    pub fn hold(&self, acquired_at: Instant) -> Leadership {
        let (lost_tx, lost_rx) = oneshot::channel();
        let task = tokio::spawn(renew_loop(self.clone(), acquired_at, lost_tx));
        Leadership {
            lock: self.clone(),
            lost: Some(lost_rx),
            task,
        }
    }
}

/// Renews every third of `ttl` until the lock is lost, then reports why on `lost`.
async fn renew_loop(lock: LeaderLock, acquired_at: Instant, lost: oneshot::Sender<Error>) {
    let ttl = lock.ttl;
    let margin = ttl / 5;
    let retry = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut valid_until = acquired_at + ttl;
    let mut next = acquired_at + ttl / 3;
    let mut failures = 0u32;
    let mut last_error = String::new();
    let lost_error = |why: String| {
        Error::new(
            ErrorKind::Checkpoint,
            format!("lost the leader lock {}: {why}; stopped writing", lock.key),
        )
    };
    loop {
        tokio::time::sleep_until(next).await;
        let give_up = valid_until - margin;
        let sent = Instant::now();
        if sent >= give_up {
            let _ = lost.send(
                lost_error(format!(
                    "could not renew it for {} ms ({failures} failed attempts, last: {last_error})",
                    (sent - (valid_until - ttl)).as_millis()
                ))
                .with_hint(
                    "Redis/Valkey was unreachable for longer than checkpoint.lock_ttl_ms allows; \
                 another daemon may take over the index. Restart this one once Redis is back \
                 (it will wait as a standby if another daemon leads)",
                ),
            );
            return;
        }
        // Stop waiting for an answer when the lock would no longer be safe to assume.
        let outcome = tokio::select! {
            r = lock.renew_raw() => Some(r),
            _ = tokio::time::sleep_until(give_up) => None,
        };
        match outcome {
            Some(Ok(r @ (Renewal::Extended | Renewal::Reacquired))) => {
                if r == Renewal::Reacquired {
                    tracing::warn!(lock = %lock.key, "the leader lock had vanished from Redis (restarted or flushed?); took it again");
                }
                if failures > 0 {
                    tracing::info!(lock = %lock.key, failures, "renewed the leader lock again");
                }
                failures = 0;
                valid_until = sent + ttl;
                next = sent + ttl / 3;
            }
            Some(Ok(Renewal::Taken(holder))) => {
                let _ = lost.send(
                    lost_error(format!("another daemon ({holder}) holds it now")).with_hint(
                        "another daemon leads this index; restart this one to make it a standby",
                    ),
                );
                return;
            }
            Some(Err(e)) => {
                failures += 1;
                last_error = e.details().to_owned();
                if failures == 1 {
                    tracing::warn!(lock = %lock.key, error = %last_error, "cannot renew the leader lock; retrying while it is still valid");
                } else {
                    tracing::debug!(lock = %lock.key, error = %last_error, failures, "leader lock renewal failed");
                }
                next = Instant::now() + retry;
            }
            None => {
                failures += 1;
                last_error = "no answer from Redis".into();
                next = Instant::now();
            }
        }
    }
}

/// A held leader lock, renewed in the background until released or dropped.
pub struct Leadership {
    lock: LeaderLock,
    lost: Option<oneshot::Receiver<Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the lock is lost, with the reason; the caller must stop writing at once.
    /// Never resolves while the lock is held.
    pub async fn lost(&mut self) -> Error {
        if let Some(rx) = self.lost.as_mut() {
            if let Ok(e) = rx.await {
                self.lost = None;
                return e;
            }
            self.lost = None;
        }
        std::future::pending().await
    }

    /// The lock this leadership holds.
    pub fn lock(&self) -> &LeaderLock {
        &self.lock
    }

    /// Stops renewing and deletes the key if it is still ours, so a standby takes over at its
    /// next try instead of after the lock expires. Failures are logged, not returned: the key
    /// expires by itself.
    pub async fn release(self) {
        self.task.abort();
        match self.lock.release().await {
            Ok(true) => tracing::info!(lock = %self.lock.key, "released the leader lock"),
            Ok(false) => {
                tracing::warn!(lock = %self.lock.key, "the leader lock was no longer ours at release")
            }
            Err(e) => {
                tracing::warn!(lock = %self.lock.key, error = %e, "could not release the leader lock; it expires by itself")
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // An abandoned lock must expire rather than be kept alive by an orphaned renewer.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_host_and_process_and_is_stable() {
        let t = process_token();
        let parts: Vec<&str> = t.rsplitn(3, ':').collect();
        assert_eq!(parts.len(), 3, "{t}");
        assert_eq!(parts[1], std::process::id().to_string(), "{t}");
        assert_eq!(parts[0].len(), 16, "{t}");
        assert!(!parts[2].is_empty(), "{t}");
        assert_eq!(process_token(), t);
    }

    #[test]
    fn ttl_bounds_and_timeouts() {
        assert!(checked_ttl(299).is_err());
        let e = checked_ttl(0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.to_string().contains("checkpoint.lock_ttl_ms"), "{e}");
        assert_eq!(checked_ttl(10_000).unwrap(), Duration::from_secs(10));
        // A command times out before a renewal interval ends.
        let ttl = Duration::from_secs(10);
        assert!(command_timeout(ttl) < ttl / 3);
        assert_eq!(lock_key("s"), "pgsync:leader:s");
    }

    #[tokio::test]
    async fn no_locks_with_the_file_store_or_when_turned_off() {
        let cfg = CheckpointConfig::default();
        assert!(LeaderLocks::open(&cfg).await.unwrap().is_none());
        let cfg = CheckpointConfig {
            store: CheckpointStore::Redis,
            leader_lock: false,
            ..CheckpointConfig::default()
        };
        assert!(LeaderLocks::open(&cfg).await.unwrap().is_none());
    }
}
