//! PGSync's own command lines — `pgsync`, `bootstrap` and `parallel_sync` with the flags of its
//! `sync.py`, `bin/bootstrap` and `bin/parallel_sync` — read into an [`Invocation`], so its
//! docker entrypoint and scripts run this binary unchanged. `-h` is the host here, as in PGSync
//! (help is `--help`).

use super::args::{Action, Invocation, PGSYNC_FORMS};
use clap::Parser;
use std::path::PathBuf;

/// PGSync's sslmode choices (case-insensitive, as click's).
const SSLMODES: [&str; 6] = [
    "allow",
    "disable",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// What replaces PGSync's producer/consumer split.
const ONE_PROCESS: &str = "one process captures and syncs; for a standby run a second daemon with checkpoint.store = \"redis\" (REDIS_CHECKPOINT=true)";

/// `pgsync` as PGSync's `sync.py` main takes it.
#[derive(Debug, Parser)]
#[command(
    name = "pgsync",
    about = "PGSync's command line: one catch-up pass, or a daemon with -d",
    after_help = PGSYNC_FORMS,
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct PgsyncForm {
    #[command(flatten)]
    common: Common,
    /// Run as a daemon.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Bootstrap the database first (the pass and the daemon always create what is missing).
    #[arg(short = 'b', long)]
    bootstrap: bool,
    /// PGSync's producer-only mode; no effect here.
    #[arg(long)]
    producer: bool,
    /// PGSync's consumer-only mode; no effect here.
    #[arg(long)]
    consumer: bool,
    /// PGSync's polling mode; no effect here (see capture.mode).
    #[arg(long)]
    polling: bool,
    /// Capture from the WAL (capture.mode = wal).
    #[arg(short = 'w', long)]
    wal: bool,
    /// PG_SSLMODE override.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SSLMODES), ignore_case = true)]
    sslmode: Option<String>,
    /// PG_SSLROOTCERT override.
    #[arg(long)]
    sslrootcert: Option<PathBuf>,
    /// Check the schema against the database and report (runs `validate`).
    #[arg(short = 'a', long)]
    analyze: bool,
    /// Concurrent document fetchers (pipeline.fetchers), PGSync's NUM_WORKERS.
    #[arg(short = 'n', long = "num_workers", alias = "num-workers")]
    num_workers: Option<usize>,
    /// Show the version.
    #[arg(long)]
    version: bool,
}

/// `bootstrap` as PGSync's `bin/bootstrap` takes it.
#[derive(Debug, Parser)]
#[command(
    name = "bootstrap",
    about = "PGSync's bootstrap: create (or with -t remove) what change capture needs",
    disable_help_flag = true
)]
pub struct BootstrapForm {
    #[command(flatten)]
    common: Common,
    /// Tear down the publication, slot, triggers and checkpoint instead.
    #[arg(short = 't', long)]
    teardown: bool,
    /// PGSync's -nc: skip creating objects; no effect here.
    #[arg(long = "no-create")]
    no_create: bool,
}

/// `parallel_sync` as PGSync's `bin/parallel_sync` takes it.
#[derive(Debug, Parser)]
#[command(
    name = "parallel_sync",
    about = "PGSync's parallel_sync: one catch-up pass (the initial sync is always parallel)",
    disable_help_flag = true
)]
pub struct ParallelSyncForm {
    /// Schema config (schema.json), or pgsync.toml.
    #[arg(short = 'c', long = "config", action = clap::ArgAction::Append)]
    config: Vec<PathBuf>,
    /// URL of the schema; not yet supported.
    #[arg(long = "schema_url")]
    schema_url: Option<String>,
    /// S3 URL of the schema; not yet supported.
    #[arg(long = "s3_schema_url")]
    s3_schema_url: Option<String>,
    /// Turn on verbosity (debug logging).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Parallel workers (pipeline.fetchers).
    #[arg(short = 'n', long = "nprocs")]
    nprocs: Option<usize>,
    /// PGSync's worker model; no effect here.
    #[arg(short = 'm', long = "mode")]
    mode: Option<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// The flags `pgsync` and `bootstrap` share.
#[derive(Debug, clap::Args)]
struct Common {
    /// Schema config (schema.json), or pgsync.toml; may be given twice.
    #[arg(short = 'c', long = "config", action = clap::ArgAction::Append, help = super::args::CONFIG_HELP)]
    config: Vec<PathBuf>,
    /// URL of the schema; not yet supported.
    #[arg(long = "schema_url")]
    schema_url: Option<String>,
    /// S3 URL of the schema; not yet supported.
    #[arg(long = "s3_schema_url")]
    s3_schema_url: Option<String>,
    /// PG_HOST override.
    #[arg(short = 'h', long)]
    host: Option<String>,
    /// Prompt for the database password.
    #[arg(long)]
    password: bool,
    /// PG_PORT override.
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// PG_USER override.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Turn on verbosity (debug logging).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// What a form asked for beyond the action, as overrides and warnings.
struct Builder {
    inv: Invocation,
}

impl Builder {
    fn new(files: Vec<PathBuf>, action: Action) -> Builder {
        Builder {
            inv: Invocation {
                files,
                schema: None,
                overrides: vec![],
                warnings: vec![],
                action,
            },
        }
    }

    fn set(&mut self, key: &str, value: impl ToString) {
        self.inv.overrides.push((key.to_owned(), value.to_string()));
    }

    fn warn(&mut self, flag: &str, on: bool, what: &str) {
        if on {
            self.inv
                .warnings
                .push(format!("{flag} has no effect here: {what}"));
        }
    }

    fn schema_urls(&self, url: &Option<String>, s3: &Option<String>) -> Result<(), String> {
        for (flag, v) in [("--schema_url", url), ("--s3_schema_url", s3)] {
            if v.is_some() {
                return Err(format!(
                    "{flag} is not yet supported: download the schema and pass it with -c"
                ));
            }
        }
        Ok(())
    }

    fn common(&mut self, c: &Common) -> Result<(), String> {
        self.schema_urls(&c.schema_url, &c.s3_schema_url)?;
        if let Some(h) = &c.host {
            self.set("PGSYNC_POSTGRES__HOST", h);
        }
        if let Some(p) = c.port {
            self.set("PGSYNC_POSTGRES__PORT", p);
        }
        if let Some(u) = &c.user {
            self.set("PGSYNC_POSTGRES__USER", u);
        }
        if c.password {
            let pw = rpassword::prompt_password("Password: ").map_err(|e| {
                format!("--password: cannot read the password from the terminal: {e}")
            })?;
            self.set("PGSYNC_POSTGRES__PASSWORD", pw);
        }
        if c.verbose {
            self.set("PGSYNC_LOG__LEVEL", "info,pgsync_rs=debug");
        }
        Ok(())
    }
}

/// `pgsync ...` in PGSync's form. `Ok(None)` when it only printed something (`--version`).
pub fn pgsync(args: &[String]) -> Result<Option<Invocation>, clap::Error> {
    let f = PgsyncForm::try_parse_from(with_name("pgsync", args))?;
    if f.version {
        println!("Version: {} (pgsync-rs)", env!("CARGO_PKG_VERSION"));
        return Ok(None);
    }
    if f.analyze && f.daemon {
        return Err(usage(
            "--analyze cannot be combined with --daemon (as in PGSync)",
        ));
    }
    let action = match (f.analyze, f.daemon) {
        (true, _) => Action::Validate { strict: false },
        (false, true) => Action::Daemon { recreate: false },
        (false, false) => Action::CatchUp { recreate: false },
    };
    let mut b = Builder::new(f.common.config.clone(), action);
    b.common(&f.common).map_err(|e| usage(&e))?;
    if let Some(m) = &f.sslmode {
        b.set("PGSYNC_POSTGRES__SSLMODE", m.to_ascii_lowercase());
    }
    if let Some(r) = &f.sslrootcert {
        b.set("PGSYNC_POSTGRES__SSLROOTCERT", r.display());
    }
    if let Some(n) = f.num_workers {
        b.set("PGSYNC_PIPELINE__FETCHERS", n);
    }
    if f.wal {
        b.set("PGSYNC_CAPTURE__MODE", "wal");
    }
    b.warn("--producer", f.producer, ONE_PROCESS);
    b.warn("--consumer", f.consumer, ONE_PROCESS);
    b.warn(
        "--polling",
        f.polling,
        "changes come from capture.mode = wal (replication slot) or notify (triggers, PGSYNC_CAPTURE__MODE=notify)",
    );
    let _ = f.bootstrap; // Bootstrapping what is missing is part of every run.
    Ok(Some(b.inv))
}

/// `bootstrap ...` in PGSync's form.
pub fn bootstrap(args: &[String]) -> Result<Option<Invocation>, clap::Error> {
    let f = BootstrapForm::try_parse_from(with_name("bootstrap", &short_no_create(args)))?;
    let action = if f.teardown {
        Action::Teardown
    } else {
        Action::Bootstrap
    };
    let mut b = Builder::new(f.common.config.clone(), action);
    b.common(&f.common).map_err(|e| usage(&e))?;
    b.warn(
        "--no-create (-nc)",
        f.no_create,
        "bootstrap creates only what is missing, and runs do so too",
    );
    Ok(Some(b.inv))
}

/// `parallel_sync ...` in PGSync's form.
pub fn parallel_sync(args: &[String]) -> Result<Option<Invocation>, clap::Error> {
    let f = ParallelSyncForm::try_parse_from(with_name("parallel_sync", args))?;
    let mut b = Builder::new(f.config.clone(), Action::CatchUp { recreate: false });
    b.schema_urls(&f.schema_url, &f.s3_schema_url)
        .map_err(|e| usage(&e))?;
    if f.verbose {
        b.set("PGSYNC_LOG__LEVEL", "info,pgsync_rs=debug");
    }
    if let Some(n) = f.nprocs {
        b.set("PGSYNC_PIPELINE__FETCHERS", n);
    }
    b.warn(
        "--mode (-m)",
        f.mode.is_some(),
        "the initial sync always runs pipeline.fetchers fetchers in parallel",
    );
    let _ = f.help;
    Ok(Some(b.inv))
}

fn with_name(name: &str, args: &[String]) -> Vec<String> {
    std::iter::once(name.to_owned())
        .chain(args.iter().cloned())
        .collect()
}

/// click lets `bootstrap` take `-nc`; clap's short options are one letter.
fn short_no_create(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a == "-nc" {
                "--no-create".into()
            } else {
                a.clone()
            }
        })
        .collect()
}

fn usage(msg: &str) -> clap::Error {
    clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{msg}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn get<'a>(inv: &'a Invocation, key: &str) -> Option<&'a str> {
        inv.overrides
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn pgsyncs_main_flags() {
        let i = pgsync(&v(&["-c", "schema.json"])).unwrap().unwrap();
        assert_eq!(i.action, Action::CatchUp { recreate: false });
        assert_eq!(i.files, vec![PathBuf::from("schema.json")]);
        let i = pgsync(&v(&["--config", "schema.json", "--daemon", "-b"]))
            .unwrap()
            .unwrap();
        assert_eq!(i.action, Action::Daemon { recreate: false });
        let i = pgsync(&v(&[
            "-c",
            "s.json",
            "-d",
            "-h",
            "db",
            "-p",
            "6543",
            "-u",
            "app",
            "--sslmode",
            "VERIFY-FULL",
            "--sslrootcert",
            "/ca.pem",
            "-n",
            "4",
            "-w",
            "-v",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(get(&i, "PGSYNC_POSTGRES__HOST"), Some("db"));
        assert_eq!(get(&i, "PGSYNC_POSTGRES__PORT"), Some("6543"));
        assert_eq!(get(&i, "PGSYNC_POSTGRES__USER"), Some("app"));
        assert_eq!(get(&i, "PGSYNC_POSTGRES__SSLMODE"), Some("verify-full"));
        assert_eq!(get(&i, "PGSYNC_POSTGRES__SSLROOTCERT"), Some("/ca.pem"));
        assert_eq!(get(&i, "PGSYNC_PIPELINE__FETCHERS"), Some("4"));
        assert_eq!(get(&i, "PGSYNC_CAPTURE__MODE"), Some("wal"));
        assert!(get(&i, "PGSYNC_LOG__LEVEL").unwrap().contains("debug"));
        assert!(i.warnings.is_empty(), "{:?}", i.warnings);
        let i = pgsync(&v(&["-c", "s.json", "-a"])).unwrap().unwrap();
        assert_eq!(i.action, Action::Validate { strict: false });
        assert!(pgsync(&v(&["-c", "s.json", "-a", "-d"])).is_err());
        assert!(pgsync(&v(&["-c", "s.json", "--sslmode", "sometimes"])).is_err());
    }

    #[test]
    fn flags_with_no_use_are_accepted_with_what_replaces_them() {
        let i = pgsync(&v(&[
            "-c",
            "s.json",
            "-d",
            "--polling",
            "--producer",
            "--consumer",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(i.warnings.len(), 3, "{:?}", i.warnings);
        assert!(i.warnings[0].contains("--producer") && i.warnings[0].contains("redis"));
        assert!(i.warnings[2].contains("--polling") && i.warnings[2].contains("notify"));
        let i = bootstrap(&v(&["-c", "s.json", "-nc"])).unwrap().unwrap();
        assert_eq!(i.action, Action::Bootstrap);
        assert!(i.warnings[0].contains("-nc"));
        let i = parallel_sync(&v(&["-c", "s.json", "-m", "multiprocess", "-n", "3"]))
            .unwrap()
            .unwrap();
        assert_eq!(i.action, Action::CatchUp { recreate: false });
        assert_eq!(get(&i, "PGSYNC_PIPELINE__FETCHERS"), Some("3"));
        assert!(i.warnings[0].contains("--mode"));
        let e = pgsync(&v(&["--schema_url", "http://x/schema.json"])).unwrap_err();
        assert!(e.to_string().contains("not yet supported"), "{e}");
    }

    #[test]
    fn bootstrap_teardown_and_host_flag() {
        let i = bootstrap(&v(&["-c", "s.json", "-t", "-h", "db"]))
            .unwrap()
            .unwrap();
        assert_eq!(i.action, Action::Teardown);
        assert_eq!(get(&i, "PGSYNC_POSTGRES__HOST"), Some("db"));
        assert_eq!(
            bootstrap(&v(&["--config", "s.json"]))
                .unwrap()
                .unwrap()
                .action,
            Action::Bootstrap
        );
    }
}
