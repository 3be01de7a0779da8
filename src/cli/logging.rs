//! Log output: plain text without colour codes unless stderr is a terminal (and `NO_COLOR` is
//! unset), or with `log.format = "json"` one JSON object per line: the event's fields at the
//! top level (`index`, ...) and the stage it ran in under `span` (`stage`, `index`).

use crate::config::{Config, LogFormat};
use std::io::IsTerminal;

/// Installs the global subscriber from `[log]` (`RUST_LOG` wins over `log.level`).
pub fn init(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .try_init(),
    };
}

/// Colours only on a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (no-color.org): container logs and files get plain text.
fn colours(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(!colours(false, None));
        assert!(!colours(true, Some("1".into())));
        assert!(colours(true, Some("".into())));
    }
}
