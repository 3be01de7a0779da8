//! PGSync's Python plugins, run unchanged. A schema entry's `plugins` names classes of the Python
//! package `plugins` (subclasses of `pgsync.plugin.Plugin`, which we provide); each document's
//! `_source` goes through them in the listed order before it is indexed. The interpreter is
//! CPython embedded with PyO3 (cargo feature `plugins`); documents reach it in batches, on a small
//! pool of OS threads, so the async runtime never waits on Python. Without the feature, a schema
//! that lists plugins is refused: documents are never indexed without the plugins they name.

#[cfg(feature = "plugins")]
mod pool;
#[cfg(feature = "plugins")]
mod python;
#[cfg(test)]
mod tests;

use crate::config::{Config, PluginsConfig, Secret};
use crate::schema::resolve::IndexPlan;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// What the plugins made of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginOutcome {
    /// Index this `_source` (JSON).
    Keep(Vec<u8>),
    /// A plugin returned a falsy value: send nothing for this document, not even a delete.
    Drop,
    /// A plugin raised (or returned something that is not a document); not indexed.
    Failed {
        /// Which step failed, with the Python traceback.
        traceback: String,
    },
}

/// The loaded plugins of one schema entry, in application order, with the threads running them.
pub struct PluginChain {
    names: Vec<String>,
    #[cfg(feature = "plugins")]
    pool: pool::Pool,
    #[cfg(not(feature = "plugins"))]
    _unbuildable: std::convert::Infallible,
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginChain")
            .field("names", &self.names)
            .finish()
    }
}

impl PluginChain {
    /// Imports the plugin package and creates the plugins `names` (a schema's `plugins` list).
    /// A missing name, an import or syntax error, or a failing constructor is an error naming the
    /// file, the plugins and the Python traceback.
    #[cfg(feature = "plugins")]
    pub fn load(cfg: &PluginsConfig, names: &[String]) -> Result<PluginChain> {
        let dir = package_dir(cfg)?;
        let chain = python::load(dir.as_deref(), names).map_err(|e| {
            Error::config(format!("plugins {}: {e}", quoted(names),))
                .with_hint(where_hint(cfg, dir.as_deref()))
        })?;
        Ok(PluginChain {
            names: names.to_vec(),
            pool: pool::Pool::start(chain, cfg.threads.max(1)),
        })
    }

    /// Without the `plugins` feature there is no interpreter: always an error naming the plugins.
    #[cfg(not(feature = "plugins"))]
    pub fn load(_cfg: &PluginsConfig, names: &[String]) -> Result<PluginChain> {
        Err(Error::config(format!(
            "plugins {}: this pgsync was built without the cargo feature `plugins`, so it cannot \
             run PGSync's Python plugins",
            quoted(names)
        ))
        .with_hint("build with the default features (cargo build --release), or remove \"plugins\" from schema.json if the documents may be indexed without them"))
    }

    /// The plugins' names in application order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Runs the chain over `docs` (`_id`, `_source` JSON) of index `index`: one outcome per
    /// document, in order. Never fails as a whole: a plugin's exception is that document's
    /// [`PluginOutcome::Failed`].
    pub async fn apply(&self, index: &str, docs: Vec<(String, Vec<u8>)>) -> Vec<PluginOutcome> {
        #[cfg(feature = "plugins")]
        {
            self.pool.apply(index, docs).await
        }
        #[cfg(not(feature = "plugins"))]
        {
            let _ = (index, docs);
            match self._unbuildable {}
        }
    }
}

/// The directory to import as the package `plugins`, or `None` to import `plugins` from
/// `sys.path` (PYTHONPATH), PGSync's way.
#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
fn package_dir(cfg: &PluginsConfig) -> Result<Option<PathBuf>> {
    let p = &cfg.path;
    if p.is_dir() {
        return Ok(Some(p.canonicalize().unwrap_or_else(|_| p.clone())));
    }
    if p.exists() {
        return Err(Error::config(format!(
            "[plugins] path = {}: not a directory; it must be the directory of the Python package `plugins`",
            p.display()
        )));
    }
    Ok(None)
}

#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
fn where_hint(cfg: &PluginsConfig, dir: Option<&std::path::Path>) -> String {
    match dir {
        Some(d) => format!(
            "the plugin package is {} ([plugins] path, or PGSYNC_PLUGINS__PATH); fix the plugin, or the names in schema.json's \"plugins\"",
            d.display()
        ),
        None => format!(
            "[plugins] path = {} (or PGSYNC_PLUGINS__PATH) is not a directory, so the package `plugins` is imported from PYTHONPATH; set path to the directory holding the plugin modules",
            cfg.path.display()
        ),
    }
}

fn quoted(names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("[{}]", list.join(", "))
}

/// Plugin chains by index name. One interpreter and one `plugins` package serve the whole
/// process (as in PGSync), so the chains loaded at start-up are kept here for the fetchers.
static CHAINS: RwLock<Option<HashMap<String, Arc<PluginChain>>>> = RwLock::new(None);

/// Loads the plugins of every index that lists some and keeps them for [`chain_for`]; every
/// index's problem is reported at once. Replaces what an earlier call loaded.
pub fn load_for(cfg: &Config, plans: &[IndexPlan]) -> Result<()> {
    let mut chains = HashMap::new();
    let mut problems = vec![];
    for plan in plans.iter().filter(|p| !p.spec.plugins.is_empty()) {
        match PluginChain::load(&cfg.plugins, &plan.spec.plugins) {
            Ok(chain) => {
                tracing::info!(index = %plan.spec.index, plugins = ?chain.names(), "plugins loaded");
                chains.insert(plan.spec.index.clone(), Arc::new(chain));
            }
            Err(e) => problems.push(e.context(format!("index {}", plan.spec.index))),
        }
    }
    if let Some(first) = problems.first() {
        let kind = first.kind;
        let hint = first.hint.clone();
        let text: Vec<String> = problems.iter().map(|e| e.message.clone()).collect();
        let mut e = Error::new(kind, text.join("\n"));
        e.hint = hint;
        return Err(e);
    }
    *CHAINS.write().unwrap_or_else(|e| e.into_inner()) = Some(chains);
    Ok(())
}

/// The chain loaded by [`load_for`] for `index`, if it lists plugins.
pub fn chain_for(index: &str) -> Option<Arc<PluginChain>> {
    CHAINS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(index).cloned())
}

/// The keys PGSync asks an `Auth` plugin for, and what each sets here.
const AUTH_KEYS: [&str; 3] = ["PG_PASSWORD", "ELASTICSEARCH_PASSWORD", "REDIS_AUTH"];

/// PGSync's secrets hook: when the plugin package has a plugin named `Auth` with an
/// `auth(key)` method, its answers for `PG_PASSWORD`, `ELASTICSEARCH_PASSWORD` and `REDIS_AUTH`
/// replace `postgres.password` and `search.password`, and fill in the password of
/// `checkpoint.redis_url` when the URL has none. The package is looked for only when
/// `[plugins] path` is a directory or `PYTHONPATH` is set, so a deployment without plugins
/// never starts Python. Values are never logged. A package that fails to import is only a
/// warning here: the indices that use it fail on it at start-up, naming their plugins.
pub fn apply_auth(cfg: &mut Config) -> Result<()> {
    let consult =
        cfg.plugins.path.is_dir() || std::env::var_os("PYTHONPATH").is_some_and(|v| !v.is_empty());
    if !consult {
        return Ok(());
    }
    #[cfg(feature = "plugins")]
    {
        let dir = package_dir(&cfg.plugins)?;
        let (values, failures) = match python::auth(dir.as_deref(), &AUTH_KEYS) {
            Ok(answer) => answer,
            // The indices that list plugins report it again, with their names, and stop there.
            Err(e) => {
                tracing::warn!("the plugin package could not be loaded to look for an Auth plugin; passwords come from the configuration: {e}");
                return Ok(());
            }
        };
        for (key, exception) in &failures {
            tracing::warn!(key = %key, exception = %exception, "the Auth plugin failed; the configured value is used");
        }
        set_auth_values(cfg, &values);
    }
    #[cfg(not(feature = "plugins"))]
    tracing::warn!(
        path = %cfg.plugins.path.display(),
        "a plugin directory exists but this pgsync was built without the `plugins` feature: an Auth plugin in it is not consulted"
    );
    Ok(())
}

#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
fn set_auth_values(cfg: &mut Config, values: &HashMap<String, String>) {
    for key in AUTH_KEYS {
        let Some(value) = values.get(key) else {
            continue;
        };
        let applied = match key {
            "PG_PASSWORD" => {
                cfg.postgres.password = Some(Secret::new(value.clone()));
                true
            }
            "ELASTICSEARCH_PASSWORD" => {
                cfg.search.password = Some(Secret::new(value.clone()));
                true
            }
            _ => fill_redis_password(cfg, value),
        };
        if applied {
            tracing::info!(key = %key, "password taken from the Auth plugin");
        }
    }
}

/// Puts `password` into `checkpoint.redis_url` unless the URL already has one (PGSync lets
/// `REDIS_URL` win over the plugin).
fn fill_redis_password(cfg: &mut Config, password: &str) -> bool {
    let Some(url) = cfg.checkpoint.redis_url.as_ref() else {
        return false;
    };
    let Ok(mut parsed) = url::Url::parse(url.expose()) else {
        return false;
    };
    if parsed.password().is_some() || parsed.set_password(Some(password)).is_err() {
        return false;
    }
    cfg.checkpoint.redis_url = Some(Secret::new(parsed.to_string()));
    true
}
