//! Command-line interface: `pgsync validate | bootstrap | run | teardown | status`, and PGSync's
//! own command lines (`pgsync -c schema.json [-d]`, `bootstrap -c schema.json [-t]`,
//! `parallel_sync -c schema.json`), picked by the name the binary is called by and by whether a
//! subcommand is given.

mod admin;
mod args;
mod catch_up;
mod commands;
mod dead_letters;
mod logging;
mod migrate_pgsync;
mod pgsync_forms;
mod probe;
mod schema_change;

pub use args::{Action, Cli, Command, Invocation};

use crate::config::{self, Config};
use crate::ErrorKind;
use clap::Parser;
use std::path::{Path, PathBuf};

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    // Before any thread: `.env` is loaded into the process environment.
    let (env, dotenv_warnings) = config::environment();
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_default();
    let args: Vec<String> = argv.collect();
    let name = Path::new(&program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pgsync")
        .to_owned();
    let parsed = match name.as_str() {
        "bootstrap" => pgsync_forms::bootstrap(&args),
        "parallel_sync" => pgsync_forms::parallel_sync(&args),
        _ if args.is_empty() || args == ["--help"] || args == ["-h"] => {
            // A bare `pgsync` or `pgsync --help`: this program's own help, which lists
            // PGSync's forms too. (A bare `pgsync` with SCHEMA set is PGSync's one pass.)
            if args.is_empty() && env.iter().any(|(k, _)| k == "SCHEMA") {
                pgsync_forms::pgsync(&args)
            } else {
                Cli::try_parse_from(std::iter::once(name.clone()).chain(args))
                    .map(|c| Some(c.invocation()))
            }
        }
        _ if args::is_native(&args) => {
            Cli::try_parse_from(std::iter::once(name.clone()).chain(args))
                .map(|c| Some(c.invocation()))
        }
        _ => pgsync_forms::pgsync(&args),
    };
    match parsed {
        Ok(Some(inv)) => run(inv, env, dotenv_warnings),
        Ok(None) => 0,
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
    }
}

/// Loads the configuration the invocation names from `env` and does what it asks.
pub fn run(inv: Invocation, mut env: Vec<(String, String)>, mut warnings: Vec<String>) -> i32 {
    env.extend(inv.overrides.iter().cloned());
    let cfg = match load(&inv, env) {
        Ok((cfg, w)) => {
            warnings.extend(w);
            cfg
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    logging::init(&cfg);
    crate::pipeline::stage::record_panics();
    let _faults = crate::fault::setup();
    // Logged only now: before logging is set up they would be lost.
    for w in warnings.iter().chain(&inv.warnings) {
        tracing::warn!("config: {w}");
    }
    let mut cfg = cfg;
    if let Err(e) = crate::plugin::apply_auth(&mut cfg) {
        eprintln!("error: {e}");
        return 2;
    }
    let system = actix::System::new();
    let result = system.block_on(commands::dispatch(inv.action, cfg));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e.kind {
                ErrorKind::Schema | ErrorKind::Config => 2,
                _ => 1,
            }
        }
    }
}

/// The configuration from the `-c` files (told apart by [`file_kind`]) and `env`.
fn load(inv: &Invocation, env: Vec<(String, String)>) -> crate::Result<(Config, Vec<String>)> {
    let mut toml: Option<&PathBuf> = None;
    let mut schema = inv.schema.as_ref();
    for f in &inv.files {
        let slot = match file_kind(f)? {
            FileKind::Runtime => &mut toml,
            FileKind::Schema => &mut schema,
        };
        if let Some(first) = slot.replace(f) {
            if first != f {
                return Err(crate::Error::config(format!(
                    "-c {} and -c {} are both {}: give one of each at most",
                    first.display(),
                    f.display(),
                    if toml == Some(f) {
                        "pgsync.toml files"
                    } else {
                        "schemas"
                    }
                )));
            }
        }
    }
    let config::Loaded {
        config: mut cfg,
        warnings,
    } = config::load_with(toml.map(PathBuf::as_path), env)?;
    if let Some(s) = schema {
        cfg.schema.path = s.clone();
    }
    Ok((cfg, warnings))
}

/// What a `-c` file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `pgsync.toml`.
    Runtime,
    /// PGSync's `schema.json`.
    Schema,
}

/// `.toml` is the configuration and `.json` the schema; any other name is the schema when its
/// content parses as JSON (PGSync's schema is JSON), else the configuration.
pub fn file_kind(path: &Path) -> crate::Result<FileKind> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("toml") => return Ok(FileKind::Runtime),
        Some("json") => return Ok(FileKind::Schema),
        _ => {}
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::Error::config(format!("-c {}: {e}", path.display()))
            .with_hint("pass pgsync.toml or PGSync's schema.json")
    })?;
    Ok(match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(_) => FileKind::Schema,
        Err(_) => FileKind::Runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_are_told_apart_by_name_then_content() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert_eq!(
            file_kind(Path::new("/x/pgsync.toml")).unwrap(),
            FileKind::Runtime
        );
        assert_eq!(
            file_kind(Path::new("/x/Schema.JSON")).unwrap(),
            FileKind::Schema
        );
        let schema = write(
            "schema.conf",
            "[{\"database\": \"d\", \"index\": \"i\", \"nodes\": {}}]",
        );
        assert_eq!(file_kind(&schema).unwrap(), FileKind::Schema);
        let toml = write("pgsync.conf", "[postgres]\nhost = \"db\"\n");
        assert_eq!(file_kind(&toml).unwrap(), FileKind::Runtime);
        let e = file_kind(&dir.path().join("missing.conf")).unwrap_err();
        assert!(e.message.contains("missing.conf"), "{e}");
    }
}
