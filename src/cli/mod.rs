//! Command-line interface: `pgsync validate | bootstrap | run | teardown | status`.

mod commands;

use crate::config::{self, Config, LogFormat};
use crate::schema::parse;
use crate::schema::resolve::{self, Catalog, IndexPlan};
use crate::schema::SchemaFile;
use crate::{Error, ErrorKind, Result};
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
    // Logged only now: before logging is set up they would be lost.
    for w in &warnings {
        tracing::warn!("config: {w}");
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

/// Reads schema.json named by the configuration.
pub fn load_schema(cfg: &Config) -> Result<SchemaFile> {
    parse::parse_file(&cfg.schema.path).map_err(Error::from)
}

/// Resolves every index of the schema against its database, reporting every problem at once.
pub async fn resolve_all(cfg: &Config, file: &SchemaFile) -> Result<Vec<IndexPlan>> {
    let mut by_db: Vec<(String, Vec<usize>)> = vec![];
    for (i, spec) in file.indices.iter().enumerate() {
        match by_db.iter_mut().find(|(d, _)| *d == spec.database) {
            Some((_, v)) => v.push(i),
            None => by_db.push((spec.database.clone(), vec![i])),
        }
    }
    let mut plans = vec![];
    let mut problems = vec![];
    for (db, idxs) in by_db {
        let client = config::connect(cfg, &db).await?;
        let sub = SchemaFile {
            path: file.path.clone(),
            indices: idxs.iter().map(|&i| file.indices[i].clone()).collect(),
        };
        let catalog = Catalog::load(&client, &resolve::schemas_of(&sub)).await?;
        match resolve::resolve(&sub, &catalog) {
            Ok(p) => plans.extend(p),
            Err(p) => problems.extend(p),
        }
    }
    if !problems.is_empty() {
        let mut msg = format!("{} problem(s) in {}:", problems.len(), file.path.display());
        for p in &problems {
            msg.push_str(&format!("\n  {}: {p}", file.path.display()));
        }
        return Err(Error::schema(msg));
    }
    Ok(plans)
}

/// Logs that PGSync plugins are not run.
pub fn warn_plugins(plan: &IndexPlan) {
    for plugin in &plan.spec.plugins {
        tracing::warn!(index = %plan.spec.index, plugin = %plugin, "PGSync plugins are Python code and are not run");
    }
}
