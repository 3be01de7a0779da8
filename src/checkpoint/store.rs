//! Where checkpoints live: a small JSON file per index (written atomically by rename), or a key
//! in Redis/Valkey through `fred`.

use crate::config::{CheckpointConfig, CheckpointStore};
use crate::{Error, ErrorKind, Result};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Stream position (LSN in `wal` mode, change-log id in `notify` mode).
    pub position: u64,
    /// The initial sync of the index finished.
    pub initial_sync_done: bool,
}

impl CheckpointRecord {
    /// A record after the initial sync, at `position`.
    pub fn at(position: u64) -> Self {
        CheckpointRecord {
            position,
            initial_sync_done: true,
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
    /// Opens the configured store (connecting to Redis when configured).
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
                let config = fred::types::config::Config::from_url(url.expose())
                    .map_err(|e| Error::config(format!("checkpoint.redis_url: {e}")))?;
                let client = fred::types::Builder::from_config(config)
                    .build()
                    .map_err(|e| Error::config(format!("checkpoint.redis_url: {e}")))?;
                client.init().await.map_err(|e| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!("cannot connect to Redis for checkpoints: {e}"),
                    )
                    .with_hint(
                        "check checkpoint.redis_url (or REDIS_URL) and that Redis/Valkey is up",
                    )
                })?;
                Ok(Store::Redis(client))
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
            Store::Redis(c) => c
                .get::<Option<String>, _>(format!("pgsync:checkpoint:{key}"))
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!("checkpoint {key} in Redis: {e}"),
                    )
                })?,
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
            Store::Redis(c) => c
                .set::<(), _, _>(format!("pgsync:checkpoint:{key}"), text, None, None, false)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!("checkpoint {key} in Redis: {e}"),
                    )
                }),
        }
    }

    /// Removes the checkpoint of `key` (teardown).
    pub async fn remove(&self, key: &str) -> Result<()> {
        match self {
            Store::File(dir) => match tokio::fs::remove_file(Self::file(dir, key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Store::Redis(c) => c
                .del::<(), _>(format!("pgsync:checkpoint:{key}"))
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Checkpoint,
                        format!("checkpoint {key} in Redis: {e}"),
                    )
                }),
        }
    }
}
