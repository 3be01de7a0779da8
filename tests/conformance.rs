//! Conformance with PGSync 7.3: for every fixture directory in
//! `../shared/fixtures` (PGSync's own documents for its example schemas,
//! see `../shared/README.md`), our documents must equal PGSync's.
//!
//! Two phases, one test each, looping over every fixture found (a new
//! directory is picked up with no code change) and collecting every
//! failure before failing:
//!
//! - `initial_sync_matches_pgsync`: fresh database from `setup.sql`,
//!   `pgsync run --once`, every document compared with `initial.json`.
//! - `streaming_matches_pgsync`: fresh database, `pgsync run --once`, then
//!   the daemon; once its slot is active, `mutations.sql` is applied one
//!   transaction at a time (as psql in autocommit mode does), and the index
//!   must converge to `resync.json` (PGSync's full re-sync of the final
//!   state). SIGTERM must then stop the daemon with exit code 0, and the
//!   index must still match.
//!
//! Documents are compared by `_id`, field by field; arrays that PostgreSQL
//! aggregated (`one_to_many` children) compare as multisets, `_meta` value
//! lists as sets (see `conformance/compare.rs`). Deliberate differences
//! from PGSync are listed once, in [`ALLOWED`]; an entry that no longer
//! matches anything fails the test so that the list cannot rot.
//!
//! Environment: `PGSYNC_CONFORMANCE_ONLY=book,through` runs a subset;
//! `PGSYNC_CONFORMANCE_TIMEOUT_SECS` (default 90) bounds each wait.

mod common;
mod harness;

#[path = "conformance/compare.rs"]
mod compare;
#[path = "conformance/sqlsplit.rs"]
mod sqlsplit;

use common::daemon::{active_slots, drop_database_and_slots};
use compare::{compare_index, parse_dump, ArrayRules, Diff, Dump};
use harness::{pg_bin_dir, pgsync_bin, Osmem, Postgres, Watchdog};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Deliberate differences from PGSync 7.3: `(fixture, field path, reason)`.
/// A path covers that field and everything below it (`languages` covers
/// `languages[]`), in every document and in both phases.
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "book",
        "languages",
        "PGSync 7.3 bug: a scalar child through book_language (also a direct child node) is always []; we emit the real codes",
    ),
    (
        "book_plugins",
        "languages",
        "PGSync 7.3 bug (the book example again): a scalar child through book_language (also a direct child node) is always []; we emit the real codes",
    ),
    (
        "chains",
        "country",
        "PGSync 7.3 bug: a one_to_one object child through a through table is a one-element list holding only its first column ([{\"id\": 1}], [null] for an empty through row); we emit the object with every column, or null",
    ),
];

// ---------------------------------------------------------------------------
// The two phases.

#[test]
fn initial_sync_matches_pgsync() {
    run_phase(Phase::Initial);
}

#[test]
fn streaming_matches_pgsync() {
    run_phase(Phase::Streaming);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Initial,
    Streaming,
}

impl Phase {
    fn title(self) -> &'static str {
        match self {
            Phase::Initial => "initial sync (pgsync run --once vs initial.json)",
            Phase::Streaming => "streaming (daemon + mutations.sql vs resync.json)",
        }
    }

    fn slot_prefix(self) -> &'static str {
        match self {
            Phase::Initial => "conformance_initial",
            Phase::Streaming => "conformance_stream",
        }
    }
}

/// What one fixture produced in one phase.
struct Outcome {
    /// No unallowed difference and no error.
    passed: bool,
    /// Human-readable lines: errors, differences, allowed differences.
    lines: Vec<String>,
    /// Indices into [`ALLOWED`] that suppressed at least one difference.
    used: BTreeSet<usize>,
}

fn run_phase(phase: Phase) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../shared/fixtures");
    // Our own references, produced by the real PGSync with scripts/pgsync-reference.sh for
    // shapes the shared fixtures lack (through-table chains).
    let own = manifest.join("tests/fixtures/pgsync");
    if !shared.is_dir() {
        eprintln!(
            "conformance: shared fixtures SKIPPED: {} is absent \
             (CI has ../shared beside the clone); running {} only",
            shared.display(),
            own.display()
        );
    }
    let only: Option<BTreeSet<String>> = std::env::var("PGSYNC_CONFORMANCE_ONLY")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let mut dirs: Vec<PathBuf> = [&shared, &own]
        .into_iter()
        .filter(|r| r.is_dir())
        .flat_map(|r| {
            std::fs::read_dir(r)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", r.display()))
                .flatten()
                .map(|e| e.path())
        })
        .filter(|p| p.is_dir())
        .filter(|p| only.as_ref().is_none_or(|o| o.contains(&file_name(p))))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        eprintln!(
            "conformance suite: no fixture in {} or {} (filter {only:?})",
            shared.display(),
            own.display()
        );
        return;
    }

    let pg = Postgres::start();
    let mut results: Vec<(String, Outcome)> = vec![];
    for dir in &dirs {
        let name = file_name(dir);
        let started = Instant::now();
        let outcome = run_fixture(&pg, dir, phase);
        eprintln!(
            "[conformance {phase:?}] {} {name} ({:.1}s){}",
            if outcome.passed { "PASS" } else { "FAIL" },
            started.elapsed().as_secs_f64(),
            outcome
                .lines
                .iter()
                .map(|l| format!("\n    {l}"))
                .collect::<String>()
        );
        results.push((name, outcome));
    }

    // Allow-list entries that nothing needed any more. Only judged on
    // fixtures that otherwise pass: on a failing one the comparison may not
    // have got far enough to need the entry.
    let mut stale = vec![];
    for (i, (fixture, path, reason)) in ALLOWED.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(*fixture)) {
            continue;
        }
        match results.iter().find(|(n, _)| n == fixture) {
            None => stale.push(format!(
                "allow-list entry ({fixture}, {path}) names a fixture that does not exist ({reason})"
            )),
            Some((_, o)) if o.passed && !o.used.contains(&i) => stale.push(format!(
                "allow-list entry ({fixture}, {path}) is not needed any more: remove it ({reason})"
            )),
            _ => {}
        }
    }

    let passed: Vec<&str> = results
        .iter()
        .filter(|(_, o)| o.passed)
        .map(|(n, _)| n.as_str())
        .collect();
    let failed: Vec<&(String, Outcome)> = results.iter().filter(|(_, o)| !o.passed).collect();
    let mut summary = format!(
        "conformance, {}: {} of {} fixture(s) pass\n  passed: {}\n  failed: {}\n",
        phase.title(),
        passed.len(),
        results.len(),
        if passed.is_empty() {
            "-".to_string()
        } else {
            passed.join(", ")
        },
        if failed.is_empty() {
            "-".to_string()
        } else {
            failed
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    for (name, o) in &failed {
        summary.push_str(&format!("\nFAIL {name}:\n"));
        for l in &o.lines {
            summary.push_str(&format!("    {l}\n"));
        }
    }
    for s in &stale {
        summary.push_str(&format!("\n{s}\n"));
    }
    eprintln!("{summary}");
    if !failed.is_empty() || !stale.is_empty() {
        panic!("{summary}");
    }
}

// ---------------------------------------------------------------------------
// One fixture.

struct Fixture {
    name: String,
    dir: PathBuf,
    database: String,
    /// The schema.json tree, for array rules per index.
    schema: Value,
}

impl Fixture {
    fn load(dir: &Path) -> Result<Fixture, String> {
        let name = file_name(dir);
        for f in [
            "schema.json",
            "setup.sql",
            "initial.json",
            "mutations.sql",
            "resync.json",
        ] {
            if !dir.join(f).is_file() {
                return Err(format!("fixture has no {f}"));
            }
        }
        let schema: Value = serde_json::from_str(&read(&dir.join("schema.json"))?)
            .map_err(|e| format!("schema.json: {e}"))?;
        let dbs: BTreeSet<String> = schema
            .as_array()
            .ok_or("schema.json is not an array")?
            .iter()
            .filter_map(|e| e.get("database").and_then(Value::as_str).map(String::from))
            .collect();
        if dbs.len() != 1 {
            return Err(format!(
                "schema.json names {} databases {dbs:?}; setup.sql loads exactly one",
                dbs.len()
            ));
        }
        Ok(Fixture {
            name,
            dir: dir.to_path_buf(),
            database: dbs.into_iter().next().unwrap(),
            schema,
        })
    }

    fn dump(&self, file: &str) -> Result<Dump, String> {
        parse_dump(&read(&self.dir.join(file))?).map_err(|e| format!("{file}: {e}"))
    }

    /// "mutation statements that failed in psql: N" from NOTES.md.
    fn expected_failed_statements(&self) -> Option<usize> {
        let notes = std::fs::read_to_string(self.dir.join("NOTES.md")).ok()?;
        notes.lines().find_map(|l| {
            let (_, n) = l.split_once("mutation statements that failed in psql:")?;
            n.trim().trim_end_matches('.').parse().ok()
        })
    }
}

fn run_fixture(pg: &Postgres, dir: &Path, phase: Phase) -> Outcome {
    let mut out = Outcome {
        passed: false,
        lines: vec![],
        used: BTreeSet::new(),
    };
    let fx = match Fixture::load(dir) {
        Ok(f) => f,
        Err(e) => {
            out.lines.push(format!("broken fixture: {e}"));
            return out;
        }
    };
    let result = catch_unwind(AssertUnwindSafe(|| match phase {
        Phase::Initial => initial_phase(pg, &fx, &mut out),
        Phase::Streaming => streaming_phase(pg, &fx, &mut out),
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.lines.insert(0, format!("error: {e}")),
        Err(panic) => out
            .lines
            .insert(0, format!("panicked: {}", panic_text(&panic))),
    }
    // Never panics: what it cannot drop it says on stderr.
    drop_database_and_slots(pg, &fx.database);
    out
}

/// Sets `out.passed` and its lines from a comparison.
fn record(fx: &Fixture, diffs: Vec<Diff>, out: &mut Outcome) -> bool {
    let mut bad = vec![];
    let mut allowed = vec![];
    for d in diffs {
        match allow_entry(&fx.name, &d) {
            Some(i) => {
                out.used.insert(i);
                allowed.push(format!("allowed ({}): {d}", ALLOWED[i].2));
            }
            None => bad.push(d.to_string()),
        }
    }
    const MAX: usize = 150;
    let n = bad.len();
    if n > 0 {
        out.lines.push(format!("{n} difference(s) from PGSync:"));
    }
    out.lines
        .extend(bad.into_iter().take(MAX).map(|l| format!("  {l}")));
    if n > MAX {
        out.lines.push(format!("  … and {} more", n - MAX));
    }
    let n_allowed = allowed.len();
    out.lines.extend(allowed.into_iter().take(20));
    if n_allowed > 20 {
        out.lines.push(format!(
            "… and {} more allowed difference(s)",
            n_allowed - 20
        ));
    }
    n == 0
}

fn allow_entry(fixture: &str, d: &Diff) -> Option<usize> {
    if d.path.is_empty() {
        return None;
    }
    ALLOWED.iter().position(|(f, path, _)| {
        *f == fixture
            && (d.path == *path
                || d.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('[')))
    })
}

/// Differences between every index of `expected` and the search engine.
fn compare_all(fx: &Fixture, expected: &Dump, os: &Osmem) -> Vec<Diff> {
    let mut diffs = vec![];
    for (index, docs) in expected {
        let rules = ArrayRules::from_schema(&fx.schema, index);
        match os.try_all_docs(index) {
            None => diffs.push(Diff {
                id: None,
                path: String::new(),
                what: format!(
                    "index {index} does not exist ({} document(s) expected)",
                    docs.len()
                ),
            }),
            Some(actual) => diffs.extend(compare_index(docs, &actual, &rules)),
        }
    }
    diffs
}

fn is_clean(fx: &Fixture, diffs: &[Diff]) -> bool {
    diffs.iter().all(|d| allow_entry(&fx.name, d).is_some())
}

fn initial_phase(pg: &Postgres, fx: &Fixture, out: &mut Outcome) -> Result<(), String> {
    let expected = fx.dump("initial.json")?;
    create_database(pg, fx)?;
    let os = Osmem::start();
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = write_config(work.path(), pg, &os, fx, Phase::Initial)?;
    run_once(&config, &work.path().join("once.log"))?;
    out.passed = record(fx, compare_all(fx, &expected, &os), out);
    Ok(())
}

fn streaming_phase(pg: &Postgres, fx: &Fixture, out: &mut Outcome) -> Result<(), String> {
    let expected = fx.dump("resync.json")?;
    if let Ok(after) = fx.dump("after.json") {
        let differs = after.iter().any(|(index, docs)| {
            let rules = ArrayRules::from_schema(&fx.schema, index);
            expected.get(index).is_none_or(|e| {
                let as_actual = docs
                    .iter()
                    .map(|(id, d)| {
                        let mut s = d.source.clone();
                        if let (Some(o), Some(m)) = (s.as_object_mut(), &d.meta) {
                            o.insert("_meta".into(), m.clone());
                        }
                        (id.clone(), s)
                    })
                    .collect();
                !compare_index(e, &as_actual, &rules).is_empty()
            })
        });
        if differs {
            out.lines.push(
                "note: PGSync's own streaming (after.json) differs from its re-sync; resync.json is the truth".into(),
            );
        }
    }
    create_database(pg, fx)?;
    let os = Osmem::start();
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = write_config(work.path(), pg, &os, fx, Phase::Streaming)?;
    run_once(&config, &work.path().join("once.log"))?;

    let mut daemon = Daemon::start(&config, &work.path().join("daemon.log"))?;
    let t = timeout();
    let streaming = poll(t, || {
        daemon.check_alive()?;
        Ok(active_slots(pg, &fx.database) > 0)
    })?;
    if !streaming {
        return Err(format!(
            "the daemon's replication slot was not active after {t:?}\n{}",
            daemon.log_tail()
        ));
    }

    let (failed, total) = apply_mutations(pg, fx)?;
    if let Some(want) = fx.expected_failed_statements() {
        if failed.len() != want {
            out.lines.push(format!(
                "mutations.sql: {} statement(s) failed in psql, PGSync's run had {want}; \
                 the expected documents do not describe this database",
                failed.len()
            ));
            out.lines.extend(failed.iter().map(|f| format!("  {f}")));
            return Ok(());
        }
    }
    eprintln!(
        "[conformance] {}: applied {total} transaction(s) from mutations.sql ({} statement(s) failed, as for PGSync)",
        fx.name,
        failed.len()
    );

    let mut last = vec![];
    let converged = poll(t, || {
        daemon.check_alive()?;
        last = compare_all(fx, &expected, &os);
        Ok(is_clean(fx, &last))
    });
    let converged = match converged {
        Ok(c) => c,
        Err(e) => {
            record(fx, last, out);
            return Err(e);
        }
    };
    if !converged {
        out.lines.push(format!(
            "index did not converge to resync.json within {t:?}; last differences:"
        ));
        record(fx, last, out);
        out.lines.push(daemon.log_tail());
        return Ok(());
    }

    let status = daemon.terminate(Duration::from_secs(30))?;
    if !status.success() {
        out.lines.push(format!(
            "daemon exited with {status} after SIGTERM (expected 0)\n{}",
            daemon.log_tail()
        ));
    }
    // Whatever the daemon wrote while draining must not undo the result.
    let ok = record(fx, compare_all(fx, &expected, &os), out);
    out.passed = ok && status.success();
    Ok(())
}

// ---------------------------------------------------------------------------
// PostgreSQL.

fn create_database(pg: &Postgres, fx: &Fixture) -> Result<(), String> {
    drop_database_and_slots(pg, &fx.database);
    pg.create_database(&fx.database);
    pg.psql_file(&fx.database, fx.dir.join("setup.sql"));
    Ok(())
}

/// Runs mutations.sql one transaction at a time through psql without
/// ON_ERROR_STOP (as PGSync's run did). Returns the failed statements'
/// errors and the number of transactions.
fn apply_mutations(pg: &Postgres, fx: &Fixture) -> Result<(Vec<String>, usize), String> {
    let txs = sqlsplit::transactions(&read(&fx.dir.join("mutations.sql"))?);
    let mut failed = vec![];
    for tx in &txs {
        let mut sql = String::new();
        for stmt in tx {
            sql.push_str(stmt);
            sql.push_str(";\n");
        }
        let mut child = Command::new(pg_bin_dir().join("psql"))
            .args(["-X", "-q", "-At", "-d"])
            .arg(pg.url(&fx.database))
            .args(["-f", "-"])
            .env("PGTZ", "UTC")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .map_err(|e| format!("psql stdin: {e}"))?;
        let output = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "psql could not run a mutation ({}): {stderr}\nSQL:\n{sql}",
                output.status
            ));
        }
        for line in stderr.lines().filter(|l| l.contains("ERROR:")) {
            failed.push(format!(
                "{} -- in: {}",
                line.trim(),
                sql.trim().replace('\n', " ")
            ));
        }
    }
    Ok((failed, txs.len()))
}

// ---------------------------------------------------------------------------
// The pgsync binary.

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap() // a JSON string is a valid TOML basic string
}

fn write_config(
    work: &Path,
    pg: &Postgres,
    os: &Osmem,
    fx: &Fixture,
    phase: Phase,
) -> Result<PathBuf, String> {
    let schema = fx.dir.join("schema.json");
    let schema = schema.canonicalize().unwrap_or(schema);
    let text = format!(
        "[postgres]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\n\n\
         [search]\nurl = {url}\nengine = \"opensearch\"\n\n\
         [schema]\npath = {schema}\n\n\
         [checkpoint]\ndir = {state}\n\n\
         [documents]\nmeta = true\n\n\
         [capture]\nslot_prefix = {prefix}\n",
        port = pg.port(),
        url = toml_str(os.url()),
        schema = toml_str(&schema.to_string_lossy()),
        state = toml_str(&work.join("state").to_string_lossy()),
        prefix = toml_str(phase.slot_prefix()),
    );
    // PGSync imports its plugins from the package `plugins`; the fixture ships it.
    let plugins = fx.dir.join("plugins");
    let text = if plugins.is_dir() {
        format!(
            "{text}\n[plugins]\npath = {}\n",
            toml_str(&plugins.to_string_lossy())
        )
    } else {
        text
    };
    let path = work.join("pgsync.toml");
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn spawn_pgsync(args: &[&str], config: &Path, log: &Path) -> Result<Child, String> {
    let file = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    Command::new(pgsync_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", pgsync_bin().display()))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        lines[from..].join("\n")
    )
}

/// `pgsync run --once`: must exit 0.
fn run_once(config: &Path, log: &Path) -> Result<(), String> {
    let mut child = spawn_pgsync(&["run", "--once"], config, log)?;
    let t = timeout();
    let deadline = Instant::now() + t;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            return Err(format!(
                "pgsync run --once exited with {status}\n{}",
                log_tail(log)
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "pgsync run --once did not finish within {t:?}\n{}",
                log_tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pgsync run` as a daemon. Killed on drop; a watchdog kills it if the
/// test process dies without unwinding.
struct Daemon {
    child: Child,
    /// Dropped after the child is killed in `drop`.
    _watchdog: Watchdog,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: &Path) -> Result<Daemon, String> {
        let child = spawn_pgsync(&["run"], config, log)?;
        let _watchdog = Watchdog::kill_on_exit(child.id());
        Ok(Daemon {
            child,
            _watchdog,
            log: log.to_path_buf(),
        })
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(s)) => Err(format!(
                "the daemon exited early with {s}\n{}",
                self.log_tail()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGTERM, then wait up to `grace` for the exit.
    fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, String> {
        if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "the daemon had already exited with {s}\n{}",
                self.log_tail()
            ));
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not exit within {grace:?} of SIGTERM\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

fn timeout() -> Duration {
    let secs = std::env::var("PGSYNC_CONFORMANCE_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    Duration::from_secs(secs)
}

/// Polls `f` until it yields `Ok(true)` (then `Ok(true)`), an error, or the
/// timeout (then `Ok(false)`).
fn poll(timeout: Duration, mut f: impl FnMut() -> Result<bool, String>) -> Result<bool, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}
