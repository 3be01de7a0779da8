//! Command-line interface: `pgsync validate | bootstrap | run | teardown | status`.

mod admin;
mod commands;
mod dead_letters;

use crate::config::{self, Config, LogFormat};
use crate::ErrorKind;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Keeps Elasticsearch/OpenSearch in sync with PostgreSQL from a PGSync schema.json.
#[derive(Debug, Parser)]
#[command(name = "pgsync", version, about)]
pub struct Cli {
    /// Runtime configuration (pgsync.toml). Optional: defaults and environment variables apply.
    #[arg(long, short = 'c', global = true, env = "PGSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// schema.json to use instead of `schema.path` from the configuration.
    #[arg(long, short = 's', global = true)]
    pub schema: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check schema.json and the database; report every problem at once.
    Validate,
    /// Create what change capture needs (publication and slot, or triggers); idempotent.
    Bootstrap,
    /// Initial sync when needed, then keep documents current until stopped.
    Run {
        /// Do the initial sync, then exit.
        #[arg(long)]
        once: bool,
        /// Delete and recreate the index before syncing.
        #[arg(long)]
        recreate: bool,
    },
    /// Remove everything bootstrap created.
    Teardown,
    /// Show slot position, lag and checkpoint per index.
    Status,
    /// List or retry the documents the search engine rejected for good.
    DeadLetters {
        /// `list` or `retry`.
        #[command(subcommand)]
        action: dead_letters::DeadLetterAction,
    },
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let (cfg, warnings) = match config::load_with(cli.config.as_deref(), config::process_env()) {
        Ok(config::Loaded {
            config: mut c,
            warnings,
        }) => {
            if let Some(s) = &cli.schema {
                c.schema.path = s.clone();
            }
            (c, warnings)
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    init_logging(&cfg);
    crate::pipeline::stage::record_panics();
    let _faults = crate::fault::setup();
    // Logged only now: before logging is set up they would be lost.
    for w in &warnings {
        tracing::warn!("config: {w}");
    }
    let mut cfg = cfg;
    if let Err(e) = crate::plugin::apply_auth(&mut cfg) {
        eprintln!("error: {e}");
        return 2;
    }
    let system = actix::System::new();
    let result = system.block_on(commands::dispatch(cli.command, cfg));
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

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
