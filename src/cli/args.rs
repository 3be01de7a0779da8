//! This program's own command line (`pgsync validate | bootstrap | run | teardown | status`), and
//! what every command line comes down to: an [`Invocation`].

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// How `-c` tells the two files apart, for `--help`.
pub const CONFIG_HELP: &str = "pgsync.toml or PGSync's schema.json; may be given twice, once for \
each. Told apart by the name (.toml is the configuration, .json the schema), else by the content \
(a file that parses as JSON is the schema).";

/// PGSync's command lines, for `--help`.
pub const PGSYNC_FORMS: &str = "PGSync's command lines work unchanged (this binary reads them when \
no subcommand is given, and when called bootstrap or parallel_sync):
  pgsync -c schema.json            one catch-up pass from the checkpoint (a full sync only when there is none), then exit
  pgsync -c schema.json -d         daemon: stream changes until stopped
  pgsync -c schema.json -b [-d]    bootstrap first (the daemon and the pass always bootstrap what is missing)
  bootstrap -c schema.json [-t]    create the publication and slot or triggers; -t tears them down
  parallel_sync -c schema.json     the same catch-up pass as pgsync -c (the initial sync is always parallel)
  with -h/--host, -p/--port, -u/--user, --password, --sslmode, --sslrootcert, -n/--num_workers (fetchers),
  -w/--wal, -a/--analyze (validate), -v/--verbose, --version. Flags with no use here (--polling,
  --producer, --consumer, parallel_sync -m, bootstrap -nc) are accepted with a warning saying what replaces them.
PGSync's environment variables and ./.env are read as PGSync reads them (see the README's table).";

/// Keeps Elasticsearch/OpenSearch in sync with PostgreSQL from a PGSync schema.json.
#[derive(Debug, Parser)]
#[command(name = "pgsync", version, about, after_help = PGSYNC_FORMS)]
pub struct Cli {
    /// pgsync.toml or schema.json (by extension, else by content: JSON is the schema); may be
    /// given twice. Optional: defaults and environment variables apply.
    #[arg(long, short = 'c', global = true, env = "PGSYNC_CONFIG", action = clap::ArgAction::Append)]
    pub config: Vec<PathBuf>,
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
    Validate {
        /// Also fail on what PGSync ignores (unknown document or transform keys, "label": null),
        /// which is otherwise a warning.
        #[arg(long)]
        strict: bool,
    },
    /// Take over from a running PGSync on the same database and index: create our slot, then
    /// drop PGSync's slot, triggers and view, and keep its index when its documents match.
    MigrateFromPgsync {
        /// Also remove PGSync's shared trigger function and view when other PGSync indexes of
        /// the database still use them (they stop receiving changes).
        #[arg(long)]
        force: bool,
    },
    /// Create what change capture needs (publication and slot, or triggers); idempotent.
    Bootstrap,
    /// Initial sync when needed, then keep documents current until stopped.
    Run {
        /// One catch-up pass, then exit: a full sync only when there is no checkpoint, else the
        /// changes since it (as PGSync's `pgsync -c schema.json` without -d).
        #[arg(long)]
        once: bool,
        /// Delete and recreate the index before syncing (a full sync).
        #[arg(long)]
        recreate: bool,
        /// With --once: rebuild every document from the current rows and exit, without
        /// bootstrapping or touching the checkpoint (a read-only rebuild, e.g. into another
        /// search server).
        #[arg(long, requires = "once")]
        full: bool,
    },
    /// Remove everything bootstrap created.
    Teardown,
    /// Show slot position, lag and checkpoint per index.
    Status {
        /// One JSON document for scripts (the same facts as the metrics).
        #[arg(long)]
        json: bool,
    },
    /// Probe a running daemon's /readyz (`metrics.listen`); exit 0 when ready, 1 otherwise.
    /// The container image's HEALTHCHECK (the image has no curl).
    Health {
        /// `host:port` or `http://host:port` of the daemon's listener, instead of
        /// `metrics.listen`.
        #[arg(long)]
        url: Option<String>,
        /// Probe /healthz (the process answers) instead of /readyz.
        #[arg(long)]
        live: bool,
    },
    /// What a changed schema.json does to each index (rebuild, change in place, nothing).
    Plan,
    /// Rebuild an index into a new physical index with no downtime (same definition).
    Reindex {
        /// The index (schema.json's `index`).
        index: String,
    },
    /// List or retry the documents the search engine (or a plugin) rejected for good.
    DeadLetters {
        /// `list` or `retry`.
        #[command(subcommand)]
        action: super::dead_letters::DeadLetterAction,
    },
}

/// What to do, whichever command line asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `validate [--strict]`.
    Validate {
        /// What PGSync ignores is an error too.
        strict: bool,
    },
    /// `migrate-from-pgsync [--force]`.
    MigrateFromPgsync {
        /// Remove PGSync's shared objects even when other PGSync indexes still use them.
        force: bool,
    },
    /// `bootstrap`.
    Bootstrap,
    /// `teardown`.
    Teardown,
    /// `status`.
    Status {
        /// As JSON.
        json: bool,
    },
    /// `health`.
    Health {
        /// Where the daemon listens, instead of `metrics.listen`.
        url: Option<String>,
        /// `/healthz` instead of `/readyz`.
        live: bool,
    },
    /// `run`: the daemon.
    Daemon {
        /// Recreate the index first.
        recreate: bool,
    },
    /// One catch-up pass.
    CatchUp {
        /// Recreate the index first.
        recreate: bool,
    },
    /// `run --once --full`: a read-only rebuild.
    FullSync {
        /// Recreate the index first.
        recreate: bool,
    },
    /// `dead-letters list | retry`.
    DeadLetters(super::dead_letters::DeadLetterAction),
    /// `plan`.
    Plan,
    /// `reindex <index>`.
    Reindex(String),
}

/// A parsed command line of any form.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `-c` files, still to be told apart.
    pub files: Vec<PathBuf>,
    /// An explicit schema (`-s`).
    pub schema: Option<PathBuf>,
    /// Settings given on the command line, as `PGSYNC_SECTION__KEY` variables over the
    /// environment.
    pub overrides: Vec<(String, String)>,
    /// Flags accepted with no effect, each with what replaces it.
    pub warnings: Vec<String>,
    /// What to do.
    pub action: Action,
}

impl Cli {
    /// This program's own command line as an invocation.
    pub fn invocation(self) -> Invocation {
        let action = match self.command {
            Command::Validate { strict } => Action::Validate { strict },
            Command::MigrateFromPgsync { force } => Action::MigrateFromPgsync { force },
            Command::Bootstrap => Action::Bootstrap,
            Command::Teardown => Action::Teardown,
            Command::Status { json } => Action::Status { json },
            Command::Health { url, live } => Action::Health { url, live },
            Command::DeadLetters { action } => Action::DeadLetters(action),
            Command::Plan => Action::Plan,
            Command::Reindex { index } => Action::Reindex(index),
            Command::Run {
                once: false,
                recreate,
                ..
            } => Action::Daemon { recreate },
            Command::Run {
                once: true,
                recreate,
                full: false,
            } => Action::CatchUp { recreate },
            Command::Run {
                once: true,
                recreate,
                full: true,
            } => Action::FullSync { recreate },
        };
        Invocation {
            files: self.config,
            schema: self.schema,
            overrides: vec![],
            warnings: vec![],
            action,
        }
    }
}

/// The subcommand names: a command line naming one is this program's own form.
pub const SUBCOMMANDS: [&str; 11] = [
    "validate",
    "health",
    "migrate-from-pgsync",
    "bootstrap",
    "run",
    "teardown",
    "status",
    "dead-letters",
    "plan",
    "reindex",
    "help",
];

/// Options of either form that take a value (so their value is not taken for a subcommand).
const VALUE_OPTIONS: [&str; 20] = [
    "-c",
    "--config",
    "-s",
    "--schema",
    "-h",
    "--host",
    "-p",
    "--port",
    "-u",
    "--user",
    "--sslmode",
    "--sslrootcert",
    "-n",
    "--num_workers",
    "--num-workers",
    "--schema_url",
    "--s3_schema_url",
    "-m",
    "--mode",
    "--nprocs",
];

/// Whether `args` (without the program name) is this program's own form: its first positional
/// argument is a subcommand.
pub fn is_native(args: &[String]) -> bool {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return false;
        }
        if VALUE_OPTIONS.contains(&a) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return SUBCOMMANDS.contains(&a);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subcommands_pick_the_native_form_and_anything_else_pgsyncs() {
        assert!(is_native(&v(&["run", "--once"])));
        assert!(is_native(&v(&["-c", "pgsync.toml", "validate"])));
        assert!(is_native(&v(&["--config", "run", "status"])));
        assert!(!is_native(&v(&["-c", "schema.json", "-d"])));
        assert!(!is_native(&v(&["-h", "run", "-c", "schema.json"])));
        assert!(!is_native(&v(&[])));
        assert!(!is_native(&v(&["--", "run"])));
    }

    #[test]
    fn native_command_lines_become_actions() {
        let inv = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("pgsync").chain(args.iter().copied()))
                .unwrap()
                .invocation()
        };
        assert_eq!(inv(&["run"]).action, Action::Daemon { recreate: false });
        assert_eq!(
            inv(&["run", "--once"]).action,
            Action::CatchUp { recreate: false }
        );
        assert_eq!(
            inv(&["run", "--once", "--full", "--recreate"]).action,
            Action::FullSync { recreate: true }
        );
        let i = inv(&["-c", "a.toml", "-c", "schema.json", "status"]);
        assert_eq!(
            i.files,
            vec![PathBuf::from("a.toml"), PathBuf::from("schema.json")]
        );
        assert!(Cli::try_parse_from(["pgsync", "run", "--full"]).is_err());
    }
}
