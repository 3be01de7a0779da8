//! The streaming test bed: the library fixture in a fresh database, a private osmem, a work dir
//! configured for a capture mode, and the daemon once started; helpers to change rows and wait
//! until the index holds what it must. Used by the streaming and fault-injection suites.

use super::daemon::LIBRARY_INDICES as INDICES;
use super::daemon::{
    active_slots, await_documents, drop_database_and_slots, parse_lsn, poll, set_capture_mode,
    Daemon, IndexDocs, Mode,
};
use super::targets::{self, Bed, Reader};
use super::{expected_documents, json_diff, LibraryBed, Workdir};
use crate::harness::{Osmem, Postgres};
use std::time::{Duration, Instant};

/// Longest wait for the daemon to finish its initial sync and start streaming.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for a small hand-written change to show in the index.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the daemon to catch up after a random workload.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The fixture in a fresh database, a private osmem, a work dir configured for `mode`, and the
/// daemon once started. Dropping it kills the daemon and drops the database with its slots.
pub struct Stream {
    pub pg: &'static Postgres,
    pub db: String,
    pub os: Osmem,
    pub work: Workdir,
    pub mode: Mode,
    pub daemon: Option<Daemon>,
    /// The target the daemon writes to, when it is not `os`.
    pub reader: Option<Box<dyn Reader>>,
}

impl Stream {
    /// The fixture, plus `setup` run on it before anything else.
    pub fn with_setup(prefix: &str, bed: impl Into<Bed>, setup: &str) -> Stream {
        Stream::with_setup_on(crate::harness::shared_postgres(), prefix, bed, setup)
    }

    /// The same on another server (a private one, for tests that restart it).
    pub fn with_setup_on(
        pg: &'static Postgres,
        prefix: &str,
        bed: impl Into<Bed>,
        setup: &str,
    ) -> Stream {
        let Bed { mode, target } = bed.into();
        Stream::on_target(pg, prefix, mode, setup, targets::start(target))
    }

    /// The fixture (plus `setup`) on `pg`, the daemon writing to `reader`'s server (osmem when
    /// `None`), with dead letters in `<work dir>/dead-letters/`.
    pub fn on_target(
        pg: &'static Postgres,
        prefix: &str,
        mode: Mode,
        setup: &str,
        reader: Option<Box<dyn Reader>>,
    ) -> Stream {
        let LibraryBed { pg, db, os, work } = LibraryBed::on(pg, prefix);
        if !setup.is_empty() {
            pg.psql(&db, setup);
        }
        set_capture_mode(&work, mode);
        if let Some(r) = &reader {
            work.append_toml(&format!(
                "{}\n[dead_letter]\nstore = \"file\"\ndir = \"{}\"\n",
                r.toml(),
                work.dir.path().join("dead-letters").display()
            ));
        }
        Stream {
            pg,
            db,
            os,
            work,
            mode,
            daemon: None,
            reader,
        }
    }

    /// The fixture with the daemon streaming and the expected initial documents indexed.
    pub fn started(prefix: &str, bed: impl Into<Bed>) -> Stream {
        let mut s = Stream::with_setup(prefix, bed, "");
        s.start_daemon();
        s.expect(&expected_documents(), "initial sync");
        s
    }

    /// Starts (or restarts) the daemon and waits until it streams changes of every index.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with_env(&[]);
    }

    /// Like [`Stream::start_daemon`], with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_daemon_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let started = Instant::now();
        let mut d = Daemon::start_with_env(&self.work, "daemon.log", env);
        let ready = poll(START_TIMEOUT, || {
            d.check_alive()?;
            Ok(self.streaming(&d))
        });
        match ready {
            Ok(true) => eprintln!("daemon streaming after {:?}", started.elapsed()),
            Ok(false) => panic!(
                "the daemon did not start streaming within {START_TIMEOUT:?}\n{}",
                d.log_tail()
            ),
            Err(e) => panic!("{e}"),
        }
        self.daemon = Some(d);
    }

    /// Whether `d` streams changes of every index: it logged so, and (wal) both slots are read.
    pub fn streaming(&self, d: &Daemon) -> bool {
        let logged = INDICES.iter().all(|i| d.streams(i));
        match self.mode {
            Mode::Wal => logged && active_slots(self.pg, &self.db) == INDICES.len(),
            Mode::Notify => logged,
        }
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("the daemon is running")
    }

    /// Runs `sql` on the test database (one psql session; wrap several statements in
    /// BEGIN/COMMIT to make one transaction).
    pub fn sql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql)
    }

    /// Waits until the index holds exactly `expected`.
    pub fn expect(&mut self, expected: &IndexDocs, what: &str) {
        self.await_documents(expected, CHANGE_TIMEOUT, what);
    }

    /// Waits until the target (osmem unless another was chosen) holds exactly `expected`.
    fn await_documents(&mut self, expected: &IndexDocs, timeout: Duration, what: &str) {
        let d = self.daemon.as_mut().expect("the daemon is running");
        match &self.reader {
            None => await_documents(&self.os, d, expected, timeout, what),
            Some(r) => await_target(r.as_ref(), d, expected, timeout, what),
        }
    }

    /// Runs `sql`, then waits until the index holds exactly `expected`.
    pub fn change(&mut self, sql: &str, expected: &IndexDocs) {
        self.sql(sql);
        let what = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        self.expect(expected, &what);
    }

    /// Every document of a full `pgsync run --once` of the current rows into a new server.
    pub fn fresh_build(&self) -> IndexDocs {
        super::daemon::fresh_library_build(self.pg, &self.db)
    }

    /// Waits until the daemon's index equals a fresh build of the current rows.
    pub fn expect_fresh_build(&mut self, what: &str) {
        let fresh = self.fresh_build();
        eprintln!(
            "{what}: fresh build has {} book and {} edition documents",
            fresh["book"].len(),
            fresh["edition"].len()
        );
        assert!(
            !fresh["book"].is_empty() && !fresh["edition"].is_empty(),
            "{what}: the workload left an empty index, which proves little; change the workload"
        );
        self.await_documents(&fresh, CATCH_UP_TIMEOUT, what);
    }

    /// Slot name and checkpoint of every index, from `pgsync status`.
    pub fn status(&self) -> Vec<(String, String, Option<u64>)> {
        let out = self.work.pgsync(&["status"]);
        out.assert_code(0, "pgsync status");
        out.stdout
            .lines()
            .filter_map(|l| {
                if !l.contains(": slot ") {
                    return None;
                }
                let index = l.strip_prefix("index ")?.split(':').next()?.to_string();
                let field = |name: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(String::from)
                };
                let slot = l.split_whitespace().nth(3)?.to_string();
                let checkpoint = field("checkpoint=").filter(|c| c != "none");
                Some((index, slot, checkpoint.map(|c| parse_lsn(&c))))
            })
            .collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            if std::thread::panicking() {
                eprintln!("{}", d.log_tail());
            }
            d.kill();
        }
        drop_database_and_slots(self.pg, &self.db);
    }
}

/// Every difference between what `reader` holds for the indices of `expected` and `expected`.
pub fn target_differences(reader: &dyn Reader, expected: &IndexDocs) -> Vec<String> {
    let mut out = vec![];
    for (index, want) in expected {
        let found = reader.documents(index).unwrap_or_default();
        for (id, exp) in want {
            let exp = reader.normalize(exp);
            match found.get(id) {
                Some(doc) => json_diff(&format!("{index}/{id}"), doc, &exp, &mut out),
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

/// Waits until `reader` holds exactly `expected`, checking that `daemon` keeps running.
pub fn await_target(
    reader: &dyn Reader,
    daemon: &mut Daemon,
    expected: &IndexDocs,
    timeout: Duration,
    what: &str,
) {
    let started = Instant::now();
    let mut last = vec![];
    let done = poll(timeout, || {
        daemon.check_alive()?;
        last = target_differences(reader, expected);
        Ok(last.is_empty())
    });
    match done {
        Ok(true) => eprintln!("{what}: documents converged in {:?}", started.elapsed()),
        Ok(false) => panic!(
            "{what}: the target did not reach the expected documents within {timeout:?}; {} difference(s):\n  {}\n{}\n{}",
            last.len(),
            last.join("\n  "),
            reader.dump(),
            daemon.log_tail()
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}
