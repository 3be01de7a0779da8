//! `pgsync migrate-from-pgsync` against a live PGSync 7.3 deployment: the real PGSync (PyPI
//! `pgsync==7.3.0`, in the venv `scripts/install-deps.sh` creates; `PGSYNC_VENV`, default
//! `/opt/pgsync-venv`) bootstrapped and running as a daemon against the harness's PostgreSQL,
//! Redis and osmem-server, on the through-table chains of `tests/fixtures/pgsync/chains`.
//!
//! - An index PGSync wrote and that matches the database is kept as it is: same index (uuid),
//!   nothing rewritten.
//! - With changes committed all through the switch (PGSync stopped with changes in flight,
//!   `migrate-from-pgsync`, then `pgsync run`), none is lost: the index equals a fresh full
//!   build once the changes stop, and it is still the index PGSync created.
//!
//! Skipped, with a message, when the venv is absent.

mod common;
mod harness;

use common::daemon::{poll, Daemon};
use common::{run_program, Outcome, PgsyncConfig, Workdir};
use harness::{shared_postgres, unique_db_name, Osmem, Postgres, Redis, Watchdog};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The indices of the chains fixture used here (`invoice_country` differs from PGSync on
/// purpose, see tests/conformance.rs, and is left out so that "matches" means every document).
const INDICES: [&str; 2] = ["company_employees", "post_moderators"];

const WAIT: Duration = Duration::from_secs(90);

fn venv() -> Option<PathBuf> {
    let dir =
        PathBuf::from(std::env::var("PGSYNC_VENV").unwrap_or_else(|_| "/opt/pgsync-venv".into()));
    dir.join("bin/pgsync").is_file().then_some(dir)
}

macro_rules! venv_or_skip {
    () => {
        match venv() {
            Some(v) => v,
            None => {
                eprintln!(
                    "SKIPPED: no PGSync 7.3 venv (PGSYNC_VENV or /opt/pgsync-venv): run scripts/install-deps.sh"
                );
                return;
            }
        }
    };
}

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pgsync/chains")
        .join(file)
}

/// The chains schema for `db`, without `invoice_country`.
fn schema_text(db: &str) -> String {
    let text = std::fs::read_to_string(fixture("schema.json")).expect("chains schema.json");
    let mut v: Vec<Value> = serde_json::from_str(&text).expect("schema.json is a list");
    v.retain(|d| INDICES.contains(&d["index"].as_str().unwrap_or("")));
    for d in &mut v {
        d["database"] = Value::String(db.to_owned());
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// A deployment: the database, the search server, Redis, and our work dir (`_meta` on, as
/// PGSync writes it).
struct Bed {
    pg: &'static Postgres,
    db: String,
    os: Osmem,
    redis: Redis,
    work: Workdir,
    venv: PathBuf,
}

impl Bed {
    fn new(venv: PathBuf, prefix: &str) -> Bed {
        let pg = shared_postgres();
        let db = unique_db_name(prefix);
        pg.create_database(&db);
        pg.psql_file(&db, fixture("setup.sql"));
        let os = Osmem::start();
        let redis = Redis::start();
        let work = Workdir::new(&PgsyncConfig::new(pg.port(), os.url()), &schema_text(&db));
        with_meta(&work);
        Bed {
            pg,
            db,
            os,
            redis,
            work,
            venv,
        }
    }

    /// PGSync's variables, as a docker-compose file sets them.
    fn pgsync_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PG_HOST", "127.0.0.1".into()),
            ("PG_PORT", self.pg.port().to_string()),
            ("PG_USER", "postgres".into()),
            ("PG_PASSWORD", String::new()),
            ("ELASTICSEARCH_HOST", "127.0.0.1".into()),
            ("ELASTICSEARCH_PORT", self.os.port().to_string()),
            ("ELASTICSEARCH_SCHEME", "http".into()),
            ("OPENSEARCH", "true".into()),
            // PGSync gzips its requests by default; osmem-server times out on its gzipped
            // index creation (real engines take it). Not a setting the migration depends on.
            ("ELASTICSEARCH_HTTP_COMPRESS", "false".into()),
            // PGSync's 10 s request timeout is short on a loaded 2-core CI machine.
            ("ELASTICSEARCH_TIMEOUT", "60".into()),
            ("REDIS_HOST", "127.0.0.1".into()),
            ("REDIS_PORT", self.redis.port().to_string()),
            (
                "CHECKPOINT_PATH",
                self.work.dir.path().display().to_string(),
            ),
        ]
    }

    /// `bootstrap --config schema.json`, then `pgsync --config schema.json --daemon`, until
    /// PGSync's initial sync wrote every document.
    fn start_pgsync(&self) -> PgsyncDaemon {
        let schema = self.work.schema.display().to_string();
        let env = self.pgsync_env();
        let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
        // PGSync's bootstrap probes with a cluster-wide temporary slot `_tmp_`: one at a time.
        static BOOTSTRAP: Mutex<()> = Mutex::new(());
        let _one = BOOTSTRAP.lock().unwrap_or_else(|e| e.into_inner());
        let out = run_program(
            &self.venv.join("bin/bootstrap"),
            &["--config", &schema],
            self.work.dir.path(),
            &env_ref,
        );
        out.assert_code(0, "PGSync's bootstrap");
        let log = self.work.dir.path().join("pgsync-daemon.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(self.venv.join("bin/pgsync"))
            .args(["--config", &schema, "--daemon"])
            .current_dir(self.work.dir.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start PGSync's daemon");
        let watchdog = Watchdog::kill_on_exit(child.id());
        let d = PgsyncDaemon {
            child,
            _watchdog: watchdog,
            log,
        };
        let synced = poll(WAIT, || {
            Ok(INDICES
                .iter()
                .all(|i| self.os.index_exists(i) && self.os.count(i) == initial_count(i)))
        });
        assert_eq!(synced, Ok(true), "PGSync's initial sync\n{}", d.log_tail());
        d
    }

    fn psql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql)
    }

    fn index_uuid(&self, index: &str) -> String {
        let v = self.os.get_json(&format!("/{index}/_settings"));
        let uuid = v
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|s| s["settings"]["index"]["uuid"].as_str());
        uuid.unwrap_or_else(|| panic!("no uuid for {index}: {v}"))
            .to_owned()
    }

    /// Every document of a fresh full build of the rows as they are now (`_meta` included).
    fn fresh_build(&self) -> BTreeMap<String, BTreeMap<String, Value>> {
        let os = Osmem::start();
        let work = Workdir::new(
            &PgsyncConfig::new(self.pg.port(), os.url()),
            &schema_text(&self.db),
        );
        with_meta(&work);
        work.pgsync(&["run", "--once", "--full"])
            .assert_code(0, "pgsync run --once --full (fresh build)");
        INDICES
            .iter()
            .map(|i| (i.to_string(), os.all_docs(i)))
            .collect()
    }

    fn migrate(&self) -> Outcome {
        let out = self.work.pgsync(&["migrate-from-pgsync"]);
        eprintln!("migrate-from-pgsync:\n{}", out.output());
        out.assert_code(0, "pgsync migrate-from-pgsync");
        out
    }

    /// PGSync's slot, triggers and view are gone; ours is there.
    fn assert_pgsync_objects_gone(&self) {
        let left = self.psql(&format!(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE plugin = 'test_decoding' AND database = '{db}') \
             || ',' || (SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE p.proname = 'table_notify') \
             || ',' || (SELECT count(*) FROM pg_matviews WHERE matviewname = '_view') \
             || ',' || (SELECT count(*) FROM pg_replication_slots WHERE plugin = 'pgoutput' AND database = '{db}')",
            db = self.db
        ));
        let want = format!("0,0,0,{}", INDICES.len());
        assert_eq!(
            left.trim(),
            want,
            "PGSync slots, triggers, views left; our slots"
        );
    }
}

fn with_meta(work: &Workdir) {
    let toml = std::fs::read_to_string(&work.config).unwrap();
    std::fs::write(&work.config, toml.replace("meta = false", "meta = true")).unwrap();
}

fn initial_count(index: &str) -> u64 {
    match index {
        "company_employees" => 3,
        _ => 4,
    }
}

/// PGSync's daemon process.
struct PgsyncDaemon {
    child: Child,
    _watchdog: Watchdog,
    log: PathBuf,
}

impl PgsyncDaemon {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- PGSync's log (last lines) ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Stops it as `docker compose stop` would (SIGTERM, then SIGKILL).
    fn stop(&mut self) {
        common::daemon::signal(self.child.id(), "TERM");
        let gone = poll(Duration::from_secs(10), || {
            Ok(self.child.try_wait().map_err(|e| e.to_string())?.is_some())
        });
        if gone != Ok(true) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Commits changes to every table of both chains, one transaction each, until `stop`.
fn mutate(
    pg: &'static Postgres,
    db: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> usize {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        done.store(n, Ordering::SeqCst);
        let sql = match n % 5 {
            0 => format!(
                "INSERT INTO employee (department_id, name) VALUES ({}, 'w{n}')",
                n % 4 + 1
            ),
            1 => format!(
                "UPDATE employee SET name = 'e{n}' WHERE id = (SELECT min(id) FROM employee)"
            ),
            2 => format!(
                "UPDATE department SET company_id = {} WHERE name = 'Sales'",
                n % 3 + 1
            ),
            3 => format!(
                "INSERT INTO moderator (forum_id, name) VALUES ({}, 'm{n}')",
                n % 3 + 1
            ),
            _ => format!(
                "UPDATE post SET forum_id = {} WHERE body = 'orphan'",
                n % 3 + 1
            ),
        };
        pg.psql(&db, &sql);
    }
    n
}

#[test]
fn an_index_pgsync_wrote_that_matches_the_database_is_kept_as_it_is() {
    let venv = venv_or_skip!();
    let bed = Bed::new(venv, "migrate_keep");
    let mut pgsync = bed.start_pgsync();
    let uuids: Vec<String> = INDICES.iter().map(|i| bed.index_uuid(i)).collect();
    // At start-up (and in validate) PGSync's objects are named, with the way to remove them.
    let out = bed.work.pgsync(&["validate"]);
    out.assert_code(0, "pgsync validate with PGSync's objects present");
    let slot = format!("{}_company_employees", bed.db);
    assert!(
        out.stderr.contains(&slot) && out.stderr.contains("migrate-from-pgsync"),
        "validate names PGSync's slot {slot} and the command that removes it\n{}",
        out.output()
    );
    pgsync.stop();
    let out = bed.migrate();
    for i in INDICES {
        let n = initial_count(i);
        assert!(
            out.stdout.contains(&format!(
                "index {i}: {n} of {n} document(s) already matched the database; 0 rewritten, 0 deleted; index kept as it is"
            )),
            "{i} kept unchanged\n{}",
            out.output()
        );
    }
    bed.assert_pgsync_objects_gone();
    let after: Vec<String> = INDICES.iter().map(|i| bed.index_uuid(i)).collect();
    assert_eq!(
        after, uuids,
        "the indices PGSync created are still the ones in use"
    );
}

#[test]
fn a_live_pgsync_deployment_is_taken_over_with_no_change_lost() {
    let venv = venv_or_skip!();
    let bed = Bed::new(venv, "migrate_live");
    let mut pgsync = bed.start_pgsync();
    let uuids: Vec<String> = INDICES.iter().map(|i| bed.index_uuid(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (db, stop, done) = (bed.db.clone(), stop.clone(), done.clone());
        let pg = bed.pg;
        std::thread::spawn(move || mutate(pg, db, stop, done))
    };
    // PGSync applies the live changes...
    let applied = poll(WAIT, || {
        Ok(bed.os.try_all_docs("company_employees").is_some_and(|d| {
            d.values()
                .any(|doc| doc.to_string().contains("\"e1\"") || doc.to_string().contains("\"w"))
        }))
    });
    assert_eq!(
        applied,
        Ok(true),
        "PGSync streams the changes\n{}",
        pgsync.log_tail()
    );
    // ...until it is stopped with changes still coming, as a deployment switch does.
    pgsync.stop();
    bed.migrate();
    bed.assert_pgsync_objects_gone();
    let mut daemon = Daemon::start(&bed.work, "daemon.log");
    let streaming = poll(WAIT, || {
        daemon.check_alive()?;
        Ok(INDICES.iter().all(|i| daemon.streams(i)))
    });
    assert_eq!(
        streaming,
        Ok(true),
        "our daemon streams\n{}",
        daemon.log_tail()
    );
    // Changes while we stream, too.
    let from = done.load(Ordering::SeqCst);
    let more = poll(WAIT, || Ok(done.load(Ordering::SeqCst) >= from + 20));
    assert_eq!(more, Ok(true), "the mutation thread keeps committing");
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().expect("mutation thread");
    eprintln!("{n} transaction(s) committed during the switch");
    let expected = bed.fresh_build();
    common::daemon::await_documents(&bed.os, &mut daemon, &expected, WAIT, "after the switch");
    let after: Vec<String> = INDICES.iter().map(|i| bed.index_uuid(i)).collect();
    assert_eq!(
        after, uuids,
        "the indices were repaired in place, not rebuilt"
    );
    daemon.terminate(Duration::from_secs(20));
}
