//! `pgsync run` (no `--once`) as a long-running child process, for end-to-end streaming tests:
//! start it from a [`Workdir`](super::Workdir), wait until it streams, signal it (SIGTERM to
//! drain, SIGKILL to crash), and poll the search server until it holds what a test expects.
//! Also the PostgreSQL side of those tests: replication slot positions and dropping a test
//! database together with its slots (so slots never pile up in the shared server).

use super::{json_diff, Workdir};
use crate::harness::{Osmem, Postgres, Watchdog};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Documents of several indices: `{index: {_id: _source}}`.
pub type IndexDocs = BTreeMap<String, BTreeMap<String, Value>>;

/// The change capture mode of a daemon (`[capture] mode`). Every streaming case is written once,
/// taking a `Mode`, and run once per mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Logical decoding from a replication slot (the default).
    Wal,
    /// Triggers and `pg_notify`.
    Notify,
}

impl Mode {
    /// The value of `[capture] mode`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Wal => "wal",
            Mode::Notify => "notify",
        }
    }

    /// The `[capture]` section a daemon in this mode runs with.
    pub fn capture_toml(self) -> String {
        format!("\n[capture]\nmode = \"{}\"\n", self.name())
    }
}

/// Appends the `[capture]` section for `mode` to the work dir's pgsync.toml.
pub fn set_capture_mode(work: &Workdir, mode: Mode) {
    let mut toml = std::fs::read_to_string(&work.config).expect("read pgsync.toml");
    assert!(
        !toml.contains("[capture]"),
        "pgsync.toml already has [capture]:\n{toml}"
    );
    toml.push_str(&mode.capture_toml());
    std::fs::write(&work.config, toml).expect("write pgsync.toml");
}

/// A running `pgsync run --config <work>/pgsync.toml`, its stdout and stderr going to a log file
/// in the work dir. Killed on drop; a watchdog kills it if the test process dies without
/// unwinding.
pub struct Daemon {
    child: Child,
    /// Dropped after the child is killed in `drop`.
    _watchdog: Watchdog,
    log: PathBuf,
    /// Length of the log file when this daemon started: a restarted daemon appends to it.
    log_start: usize,
    /// How it ended, once reaped.
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts the daemon for `work`, logging to `<work dir>/<log_name>` (appending, so a
    /// restarted daemon can share one log).
    pub fn start(work: &Workdir, log_name: &str) -> Daemon {
        Daemon::start_with_env(work, log_name, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with_env(work: &Workdir, log_name: &str, env: &[(&str, &str)]) -> Daemon {
        let log = work.dir.path().join(log_name);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let log_start = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let err = file.try_clone().expect("clone log file handle");
        let mut cmd = Command::new(super::pgsync_bin());
        cmd.args(["run", "--config"])
            .arg(&work.config)
            .current_dir(work.dir.path())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        for keep in ["PATH", "HOME", "TMPDIR"] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", super::pgsync_bin().display()));
        let _watchdog = Watchdog::kill_on_exit(child.id());
        Daemon {
            child,
            _watchdog,
            log,
            log_start,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything this daemon has logged so far (not what an earlier one wrote to the file).
    pub fn log(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(self.log_start..).unwrap_or_default()).into_owned()
    }

    /// Reads the log later, without borrowing the daemon (for failure messages).
    pub fn logger(&self) -> impl Fn() -> String {
        let path = self.log.clone();
        move || std::fs::read_to_string(&path).unwrap_or_default()
    }

    /// Panics with the log when the daemon is no longer running.
    pub fn assert_alive(&mut self, what: &str) {
        if let Err(e) = self.check_alive() {
            panic!("{what}: {e}");
        }
    }

    /// Waits up to `timeout` for the daemon to exit by itself; panics with the log if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.reap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {timeout:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait for pgsync");
        }
        self.status
    }

    /// `Err` with the log when the daemon is no longer running (it must not stop by itself).
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.reap() {
            None => Ok(()),
            Some(s) => Err(format!(
                "the daemon exited unexpectedly with {s}\n{}",
                self.log_tail()
            )),
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit; panics with the log if it does not exit.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.reap() {
            panic!(
                "the daemon had already exited with {s} before SIGTERM\n{}",
                self.log_tail()
            );
        }
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = self.reap() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the daemon did not exit within {grace:?} of SIGTERM\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no chance to drain or store anything) and reap.
    pub fn kill(&mut self) {
        if self.reap().is_none() {
            let _ = self.child.kill();
        }
        self.status = Some(self.child.wait().expect("wait for killed pgsync"));
    }

    /// Log lines that say the daemon streams changes of `index` (logged once its initial sync
    /// is done and change capture starts).
    pub fn streams(&self, index: &str) -> bool {
        let field = format!("index={index}");
        self.log()
            .lines()
            .any(|l| l.contains("streaming changes") && l.split_whitespace().any(|w| w == field))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.reap().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a named signal through `kill(1)` (the tests do not link `libc`).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// Polls `f` every 100 ms until it yields `Ok(true)`; `Err` from `f` fails at once. Returns
/// whether it succeeded before `timeout`.
pub fn poll(
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<bool, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every difference between the documents `os` holds for the indices of `expected` and
/// `expected`, one line each (empty when equal).
pub fn differences(os: &Osmem, expected: &IndexDocs) -> Vec<String> {
    let mut out = vec![];
    for (index, want) in expected {
        let Some(found) = os.try_all_docs(index) else {
            out.push(format!("index {index} does not exist"));
            continue;
        };
        for (id, exp) in want {
            match found.get(id) {
                Some(doc) => json_diff(&format!("{index}/{id}"), doc, exp, &mut out),
                None => out.push(format!("{index}/{id}: missing document; expected {exp}")),
            }
        }
        for (id, doc) in &found {
            if !want.contains_key(id) {
                out.push(format!("{index}/{id}: unexpected document {doc}"));
            }
        }
    }
    out
}

/// Waits until `os` holds exactly `expected` (every index of it), checking that `daemon` keeps
/// running; panics with every remaining difference and the daemon's log after `timeout`.
pub fn await_documents(
    os: &Osmem,
    daemon: &mut Daemon,
    expected: &IndexDocs,
    timeout: Duration,
    what: &str,
) {
    let started = Instant::now();
    let mut last = vec![];
    let done = poll(timeout, || {
        daemon.check_alive()?;
        last = differences(os, expected);
        Ok(last.is_empty())
    });
    match done {
        Ok(true) => eprintln!("{what}: documents converged in {:?}", started.elapsed()),
        Ok(false) => panic!(
            "{what}: the index did not reach the expected documents within {timeout:?}; {} difference(s):\n  {}\n{}",
            last.len(),
            last.join("\n  "),
            daemon.log_tail()
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// `'text'` as an SQL literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `X/Y` (PostgreSQL's LSN text) as a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hi << 32) | lo
}

/// Number of active replication slots on database `db`.
pub fn active_slots(pg: &Postgres, db: &str) -> usize {
    pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = {} AND active",
            sql_literal(db)
        ),
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

/// `confirmed_flush_lsn` of a slot, `None` if there is no such slot (or it has none yet).
pub fn confirmed_flush_lsn(pg: &Postgres, slot: &str) -> Option<u64> {
    let out = pg.psql(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {}",
            sql_literal(slot)
        ),
    );
    let out = out.trim();
    (!out.is_empty()).then(|| parse_lsn(out))
}

/// Drops database `db` and every replication slot on it (terminating the walsenders that still
/// hold them), so a finished test leaves no slot behind in the shared server. Never panics (it
/// runs from destructors, also while a failed test unwinds); a failure is only printed.
pub fn drop_database_and_slots(pg: &Postgres, db: &str) {
    let lit = sql_literal(db);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = psql_quiet(
            pg,
            "postgres",
            &[
                &format!(
                    "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
                     WHERE database = {lit} AND active_pid IS NOT NULL"
                ),
                &format!(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                     WHERE database = {lit} AND NOT active"
                ),
                &format!("SELECT count(*) FROM pg_replication_slots WHERE database = {lit}"),
            ],
        );
        if left.as_deref().and_then(|l| l.lines().last()) == Some("0") {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("replication slots on {db} could not be dropped: {left:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drop = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        crate::harness::quote_ident(db)
    );
    if psql_quiet(pg, "postgres", &[&drop]).is_none() {
        eprintln!("could not drop database {db}");
    }
}

/// Each statement of `sql` through psql on `db` (in turn, each in its own transaction): the
/// output, or `None` (printed) if psql failed.
fn psql_quiet(pg: &Postgres, db: &str, sql: &[&str]) -> Option<String> {
    let mut cmd = Command::new(crate::harness::pg_bin_dir().join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d"])
        .arg(pg.url(db));
    for statement in sql {
        cmd.args(["-c", statement]);
    }
    let out = cmd
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim_end().into()),
        Ok(o) => {
            eprintln!(
                "psql on {db} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("cannot run psql: {e}");
            None
        }
    }
}

/// The indices of the library fixture's schema.json.
pub const LIBRARY_INDICES: [&str; 2] = ["book", "edition"];

/// Every document of `indices` after a fresh full build of the rows as they are now, with
/// `schema_text` (`pgsync run --once --full` into a new search server).
pub fn fresh_build_with(pg: &Postgres, schema_text: &str, indices: &[&str]) -> IndexDocs {
    fresh_build(pg, schema_text, indices, "")
}

/// Every document of `indices` after `pgsync run --once --full` of `schema_text` (its database
/// as it is now) into a new search server, with `extra_toml` (whole sections) added to the
/// configuration.
pub fn fresh_build(
    pg: &Postgres,
    schema_text: &str,
    indices: &[&str],
    extra_toml: &str,
) -> IndexDocs {
    let os = Osmem::start();
    let work = Workdir::new(&super::PgsyncConfig::new(pg.port(), os.url()), schema_text);
    if !extra_toml.is_empty() {
        work.append_toml(extra_toml);
    }
    work.pgsync(&["run", "--once", "--full"])
        .assert_code(0, "pgsync run --once --full (fresh build)");
    indices
        .iter()
        .map(|i| (i.to_string(), os.all_docs(i)))
        .collect()
}

/// Every document of the library fixture's indices after a fresh full build of database `db` as
/// it is now (`pgsync run --once --full` into a new search server, leaving the running daemon's
/// slot and checkpoint alone): what a streamed index must equal.
pub fn fresh_library_build(pg: &Postgres, db: &str) -> IndexDocs {
    fresh_build_with(pg, &super::library_schema(db), &LIBRARY_INDICES)
}
