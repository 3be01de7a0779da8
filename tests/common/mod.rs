//! Shared code of the end-to-end tests that drive the `pgsync` binary against the `library`
//! fixture (tests/fixtures/library/): loading it into a fresh database, writing a pgsync.toml,
//! running the binary with a time limit, and comparing documents with a readable diff.
//!
//! Use with `mod harness; mod common;` in the test file.
#![allow(dead_code)]

pub mod daemon;
pub mod stream;
pub mod targets;
pub mod workload;

use crate::harness::{unique_db_name, Postgres};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The library fixture in a fresh database, a private osmem, and a work dir whose config points
/// at both: where most end-to-end tests start.
pub struct LibraryBed {
    pub pg: &'static Postgres,
    pub db: String,
    pub os: crate::harness::Osmem,
    pub work: Workdir,
}

impl LibraryBed {
    /// A database named after `prefix`, loaded with the fixture.
    pub fn new(prefix: &str) -> LibraryBed {
        LibraryBed::on(crate::harness::shared_postgres(), prefix)
    }

    /// The same on another server (a private one, for tests that restart it).
    pub fn on(pg: &'static Postgres, prefix: &str) -> LibraryBed {
        let db = load_library(pg, prefix);
        let os = crate::harness::Osmem::start();
        let work = Workdir::new(
            &PgsyncConfig::new(pg.port(), os.url()),
            &library_schema(&db),
        );
        LibraryBed { pg, db, os, work }
    }
}

/// The database name written in the fixture's schema.json; tests replace it with theirs.
pub const FIXTURE_DATABASE: &str = "library";

/// How long one `pgsync` invocation may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `tests/fixtures/library/<file>`.
pub fn fixture_file(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/library")
        .join(file)
}

/// A new database on `pg` holding the fixture's tables and rows; returns its name.
pub fn load_library(pg: &Postgres, prefix: &str) -> String {
    let db = unique_db_name(prefix);
    pg.create_database(&db);
    pg.psql_file(&db, fixture_file("setup.sql"));
    db
}

/// The fixture's schema.json text with its database set to `db`.
pub fn library_schema(db: &str) -> String {
    let text = std::fs::read_to_string(fixture_file("schema.json")).expect("read schema.json");
    with_database(&text, db)
}

/// `schema_text` with every `"database": "library"` replaced by `db` (text-level, so the key
/// order of the file is kept exactly).
pub fn with_database(schema_text: &str, db: &str) -> String {
    let from = format!("\"database\": \"{FIXTURE_DATABASE}\"");
    assert!(
        schema_text.contains(&from),
        "schema text has no {from}:\n{schema_text}"
    );
    schema_text.replace(&from, &format!("\"database\": \"{db}\""))
}

/// The fixture's schema.json as a JSON value with its database set to `db`, for tests that
/// change one part of it (serde_json sorts object keys; nothing in the fixture depends on the
/// order of keys).
pub fn library_schema_value(db: &str) -> Value {
    serde_json::from_str(&library_schema(db)).expect("schema.json is JSON")
}

/// expected.json: `{index: {_id: _source}}`.
pub fn expected_documents() -> BTreeMap<String, BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(fixture_file("expected.json")).expect("read expected.json");
    serde_json::from_str(&text).expect("expected.json is {index: {_id: document}}")
}

/// Settings of one pgsync.toml.
#[derive(Debug, Clone)]
pub struct PgsyncConfig {
    /// PostgreSQL host.
    pub pg_host: String,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// `[postgres] password`, when set.
    pub pg_password: Option<String>,
    /// `[postgres] connect_timeout_secs`, when set.
    pub pg_connect_timeout_secs: Option<u64>,
    /// `[search] url`.
    pub search_url: String,
    /// `[search] username` and `password`, when set.
    pub search_credentials: Option<(String, String)>,
    /// `[search] timeout_secs`, when set.
    pub search_timeout_secs: Option<u64>,
}

impl PgsyncConfig {
    /// Plain settings for a local PostgreSQL port and a search URL.
    pub fn new(pg_port: u16, search_url: &str) -> Self {
        PgsyncConfig {
            pg_host: "127.0.0.1".into(),
            pg_port,
            pg_password: None,
            pg_connect_timeout_secs: None,
            search_url: search_url.into(),
            search_credentials: None,
            search_timeout_secs: None,
        }
    }
}

/// A temp dir with `schema.json`, `pgsync.toml` and the checkpoint dir `state/`.
pub struct Workdir {
    /// Removed on drop.
    pub dir: tempfile::TempDir,
    /// `<dir>/pgsync.toml`.
    pub config: PathBuf,
    /// `<dir>/schema.json`.
    pub schema: PathBuf,
}

impl Workdir {
    /// Writes `schema_text` and a pgsync.toml for `cfg` into a new temp dir.
    pub fn new(cfg: &PgsyncConfig, schema_text: &str) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("pgsync-e2e-")
            .tempdir()
            .expect("create temp dir");
        let schema = dir.path().join("schema.json");
        std::fs::write(&schema, schema_text).expect("write schema.json");
        let config = dir.path().join("pgsync.toml");
        let state = dir.path().join("state");
        let mut toml = String::new();
        toml.push_str("[postgres]\n");
        toml.push_str(&format!("host = {}\n", toml_str(&cfg.pg_host)));
        toml.push_str(&format!("port = {}\n", cfg.pg_port));
        toml.push_str("user = \"postgres\"\n");
        if let Some(p) = &cfg.pg_password {
            toml.push_str(&format!("password = {}\n", toml_str(p)));
        }
        if let Some(t) = cfg.pg_connect_timeout_secs {
            toml.push_str(&format!("connect_timeout_secs = {t}\n"));
        }
        toml.push_str("\n[search]\n");
        toml.push_str(&format!("url = {}\n", toml_str(&cfg.search_url)));
        toml.push_str("engine = \"opensearch\"\n");
        if let Some((user, password)) = &cfg.search_credentials {
            toml.push_str(&format!("username = {}\n", toml_str(user)));
            toml.push_str(&format!("password = {}\n", toml_str(password)));
        }
        if let Some(t) = cfg.search_timeout_secs {
            toml.push_str(&format!("timeout_secs = {t}\n"));
        }
        toml.push_str("\n[schema]\n");
        toml.push_str(&format!(
            "path = {}\n",
            toml_str(&schema.display().to_string())
        ));
        toml.push_str("\n[checkpoint]\n");
        toml.push_str(&format!(
            "dir = {}\n",
            toml_str(&state.display().to_string())
        ));
        toml.push_str("\n[documents]\nmeta = false\n");
        std::fs::write(&config, toml).expect("write pgsync.toml");
        Workdir {
            dir,
            config,
            schema,
        }
    }

    /// Appends TOML (whole sections) to pgsync.toml.
    pub fn append_toml(&self, text: &str) {
        let mut toml = std::fs::read_to_string(&self.config).expect("read pgsync.toml");
        toml.push('\n');
        toml.push_str(text);
        std::fs::write(&self.config, toml).expect("write pgsync.toml");
    }

    /// Replaces schema.json.
    pub fn write_schema(&self, schema_text: &str) {
        std::fs::write(&self.schema, schema_text).expect("write schema.json");
    }

    /// The path of schema.json as the binary prints it in problems.
    pub fn schema_display(&self) -> String {
        self.schema.display().to_string()
    }

    /// `pgsync <args...> --config <pgsync.toml>`.
    pub fn pgsync(&self, args: &[&str]) -> Outcome {
        let mut all: Vec<&str> = args.to_vec();
        let config = self.config.display().to_string();
        all.extend(["--config", &config]);
        run_pgsync(&all, self.dir.path())
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl Outcome {
    /// Both streams, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Panics with the output unless the exit code is `code`.
    pub fn assert_code(&self, code: i32, what: &str) {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected exit code {code}\n{}",
            self.output()
        );
    }
}

/// The binary under test: `PGSYNC_E2E_BIN` when set (to run these tests against another build,
/// e.g. a release binary), else the one Cargo built for this test run.
pub fn pgsync_bin() -> PathBuf {
    match std::env::var_os("PGSYNC_E2E_BIN").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::harness::pgsync_bin(),
    }
}

/// Runs the `pgsync` binary with `args` in `cwd`, with an environment holding none of the
/// variables pgsync reads (PG_*, ELASTICSEARCH_*, PGSYNC_*, RUST_LOG, ...), so the machine's
/// environment cannot change what the test sees. Panics if it runs longer than [`RUN_TIMEOUT`].
pub fn run_pgsync(args: &[&str], cwd: &Path) -> Outcome {
    run_program(&pgsync_bin(), args, cwd, &[])
}

/// Like [`run_pgsync`] for `program` (e.g. the binary under another name, as PGSync's
/// `bootstrap`), with `env` added to the cleared environment.
pub fn run_program(program: &Path, args: &[&str], cwd: &Path, env: &[(&str, String)]) -> Outcome {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for keep in ["PATH", "HOME", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for pgsync") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let outcome = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    if status.is_none() {
        panic!(
            "{} {} did not finish within {RUN_TIMEOUT:?}\n{}",
            program.display(),
            args.join(" "),
            outcome.output()
        );
    }
    outcome
}

/// Whether two JSON values are equal, numbers compared by value (`15.00` equals `15.0` and `15`)
/// so the comparison does not depend on how the engine re-renders a number.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Every difference between `found` and `expected`, one line each, as
/// `<path>: found <value>; expected <value>` (missing fields say `found nothing`).
pub fn json_diff(path: &str, found: &Value, expected: &Value, out: &mut Vec<String>) {
    match (found, expected) {
        (Value::Object(f), Value::Object(e)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match f.get(k) {
                    Some(fv) => json_diff(&p, fv, ev, out),
                    None => out.push(format!("{p}: found nothing; expected {ev}")),
                }
            }
            for (k, fv) in f {
                if !e.contains_key(k) {
                    out.push(format!("{path}.{k}: found {fv}; expected nothing"));
                }
            }
        }
        (Value::Array(f), Value::Array(e)) if f.len() == e.len() => {
            for (i, (fv, ev)) in f.iter().zip(e).enumerate() {
                json_diff(&format!("{path}[{i}]"), fv, ev, out);
            }
        }
        _ => {
            if !json_eq(found, expected) {
                out.push(format!("{path}: found {found}; expected {expected}"));
            }
        }
    }
}

/// Asserts that `index` holds exactly the `expected` documents (same `_id`s, equal sources),
/// listing every difference of every document on failure.
pub fn assert_documents(
    index: &str,
    found: &BTreeMap<String, Value>,
    expected: &BTreeMap<String, Value>,
) {
    let mut problems = vec![];
    for (id, exp) in expected {
        match found.get(id) {
            Some(doc) => json_diff(&format!("{index}/{id}"), doc, exp, &mut problems),
            None => problems.push(format!("{index}/{id}: missing document; expected {exp}")),
        }
    }
    for (id, doc) in found {
        if !expected.contains_key(id) {
            problems.push(format!("{index}/{id}: unexpected document {doc}"));
        }
    }
    assert!(
        problems.is_empty(),
        "index {index}: {} difference(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
