//! A drop-in for PGSync deployments: PGSync's own command lines and variables, unchanged, against
//! this binary on real PostgreSQL, Redis and osmem-server. The binary is called through links
//! named `pgsync`, `bootstrap` and `parallel_sync`, as PGSync's docker image calls its scripts.

mod common;
mod harness;

use common::{library_schema, load_library, run_program, LibraryBed, Outcome};
use harness::{Osmem, Postgres, PostgresOptions, Redis, Resp, Watchdog};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A directory with `pgsync`, `bootstrap` and `parallel_sync` linked to the binary under test.
struct Bin {
    dir: tempfile::TempDir,
}

impl Bin {
    fn new() -> Bin {
        let dir = tempfile::Builder::new()
            .prefix("pgsync-bin-")
            .tempdir()
            .unwrap();
        for name in ["pgsync", "bootstrap", "parallel_sync"] {
            std::os::unix::fs::symlink(common::pgsync_bin(), dir.path().join(name)).unwrap();
        }
        Bin { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `PATH` with this directory first, as a container's would have PGSync's scripts.
    fn search_path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn run(&self, name: &str, args: &[&str], cwd: &Path, env: &[(&str, String)]) -> Outcome {
        run_program(&self.path(name), args, cwd, env)
    }
}

fn slots(pg: &Postgres, db: &str) -> usize {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{db}'"),
    )
    .parse()
    .unwrap()
}

#[test]
fn pgsyncs_command_lines_bootstrap_pass_again_parallel_sync_and_teardown() {
    let LibraryBed { pg, db, os, work } = LibraryBed::new("dropin_cli");
    let bin = Bin::new();
    let cwd = work.dir.path();
    // PGSync's variables only; the pass reads no pgsync.toml.
    let env = [
        ("PG_HOST", "127.0.0.1".to_string()),
        ("PG_PORT", pg.port().to_string()),
        ("PG_USER", "postgres".to_string()),
        ("ELASTICSEARCH_URL", os.url().to_string()),
        ("OPENSEARCH", "true".to_string()),
        (
            "CHECKPOINT_PATH",
            cwd.join("checkpoints").display().to_string(),
        ),
    ];
    bin.run("bootstrap", &["--config", "schema.json"], cwd, &env)
        .assert_code(0, "bootstrap --config schema.json");
    assert_eq!(slots(pg, &db), 2, "bootstrap creates one slot per index");

    // The first pass has no checkpoint: a full sync, then caught up.
    let first = bin.run("pgsync", &["-c", "schema.json"], cwd, &env);
    first.assert_code(0, "pgsync -c schema.json");
    assert!(
        first.stdout.contains("4 documents in"),
        "{}",
        first.output()
    );
    assert!(
        first.stdout.contains("index book: caught up"),
        "{}",
        first.output()
    );
    common::assert_documents(
        "book",
        &os.all_docs("book"),
        &common::expected_documents()["book"],
    );

    // The second pass starts from the checkpoint: no full sync, yet the change is there.
    pg.psql(&db, "UPDATE book SET title = 'Caught up' WHERE id = 2");
    let second = bin.run(
        "pgsync",
        &["-c", "schema.json", "--polling", "-v"],
        cwd,
        &env,
    );
    second.assert_code(0, "pgsync -c schema.json (second pass)");
    assert!(
        !second.stdout.contains("documents in"),
        "a full sync ran again:\n{}",
        second.output()
    );
    assert!(
        second.stderr.contains("--polling has no effect"),
        "{}",
        second.output()
    );
    os.refresh("book");
    assert_eq!(os.doc("book", "2").unwrap()["book_title"], "Caught up");

    // parallel_sync is the same pass.
    pg.psql(&db, "UPDATE book SET title = 'In parallel' WHERE id = 3");
    let par = bin.run(
        "parallel_sync",
        &["--config", "schema.json", "-n", "3"],
        cwd,
        &env,
    );
    par.assert_code(0, "parallel_sync --config schema.json");
    os.refresh("book");
    assert_eq!(os.doc("book", "3").unwrap()["book_title"], "In parallel");

    // bootstrap -t tears down slots and checkpoints.
    bin.run("bootstrap", &["-c", "schema.json", "-t"], cwd, &env)
        .assert_code(0, "bootstrap -c schema.json -t");
    assert_eq!(slots(pg, &db), 0, "teardown drops the slots");

    let version = bin.run("pgsync", &["--version"], cwd, &[]);
    version.assert_code(0, "pgsync --version");
    assert!(
        version.stdout.starts_with("Version: "),
        "{}",
        version.output()
    );
    // The native subcommands still work beside PGSync's forms.
    bin.run("pgsync", &["validate", "-c", "schema.json"], cwd, &env)
        .assert_code(0, "pgsync validate -c schema.json");
}

/// PGSync's docker-compose file (`pgsync-opensearch`): its variables, partly from a `.env` in the
/// working directory, Redis with `--requirepass`, the checkpoint in Redis (REDIS_CHECKPOINT),
/// and its entrypoint's two commands run by `sh`: `bootstrap --config schema.json`, then
/// `pgsync --config schema.json --daemon`.
#[test]
fn a_pgsync_docker_compose_deployment_runs_unchanged() {
    // The compose file's database: user pgsync with a password (scram), superuser.
    let pg = Postgres::start_with(PostgresOptions {
        hba: Some(
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n"
                .into(),
        ),
        ..Default::default()
    });
    pg.psql(
        "postgres",
        "CREATE ROLE pgsync LOGIN SUPERUSER REPLICATION PASSWORD 'PLEASE_CHANGE_ME'",
    );
    let db = load_library(&pg, "compose");
    let redis = Redis::start_with(vec!["--requirepass".into(), "PLEASE_CHANGE_ME".into()]);
    let os = Osmem::start();
    let os_port = os.port().to_string();

    let app = tempfile::Builder::new()
        .prefix("pgsync-compose-")
        .tempdir()
        .unwrap();
    std::fs::write(app.path().join("schema.json"), library_schema(&db)).unwrap();
    // Half of the variables come from .env (python-dotenv: the environment wins over it).
    std::fs::write(
        app.path().join(".env"),
        format!(
            "PG_PASSWORD=PLEASE_CHANGE_ME\nREDIS_HOST=127.0.0.1\nREDIS_PORT={}\nREDIS_AUTH=PLEASE_CHANGE_ME\n\
             REDIS_CHECKPOINT=true\nPG_PORT=1\n",
            redis.port()
        ),
    )
    .unwrap();
    let env = [
        ("PG_USER", "pgsync".to_string()),
        ("PG_HOST", "127.0.0.1".to_string()),
        ("PG_PORT", pg.port().to_string()),
        ("LOG_LEVEL", "INFO".to_string()),
        ("ELASTICSEARCH_PORT", os_port),
        ("ELASTICSEARCH_SCHEME", "http".to_string()),
        ("ELASTICSEARCH_HOST", "127.0.0.1".to_string()),
        ("OPENSEARCH", "true".to_string()),
    ];
    let bin = Bin::new();
    let log_path = app.path().join("entrypoint.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            "bootstrap --config schema.json && exec pgsync --config schema.json --daemon",
        ])
        .current_dir(app.path())
        .env_clear()
        .env("PATH", bin.search_path())
        .env("HOME", app.path())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run the entrypoint");
    let _watchdog = Watchdog::kill_on_exit(child.id());
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let alive = |child: &mut std::process::Child| {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the entrypoint exited with {status}:\n{}", read_log());
        }
    };
    harness::wait_until_blocking(
        Duration::from_secs(90),
        "the daemon streams both indices",
        || {
            alive(&mut child);
            let log = read_log();
            ["book", "edition"].iter().all(|i| {
                log.lines()
                    .any(|l| l.contains("streaming changes") && l.contains(&format!("index={i}")))
            })
        },
    );
    common::assert_documents(
        "book",
        &os.all_docs("book"),
        &common::expected_documents()["book"],
    );

    pg.psql(
        &db,
        "UPDATE book SET title = 'Streamed by the compose deployment' WHERE id = 4",
    );
    harness::wait_until_blocking(
        Duration::from_secs(60),
        "the change reaches the index",
        || {
            alive(&mut child);
            os.doc("book", "4")
                .is_some_and(|d| d["book_title"] == "Streamed by the compose deployment")
        },
    );

    // The checkpoints and leader locks are in Redis, behind its password.
    let keys = |pattern: &str| match redis.cmd_as(&["PLEASE_CHANGE_ME"], &["KEYS", pattern]) {
        Resp::Array(Some(k)) => k.len(),
        other => panic!("KEYS {pattern}: {other:?}"),
    };
    assert_eq!(keys("pgsync:checkpoint:*"), 2, "{}", read_log());
    assert_eq!(keys("pgsync:leader:*"), 2, "{}", read_log());
    let log = read_log();
    assert!(
        !log.contains("PLEASE_CHANGE_ME"),
        "a password is logged:\n{log}"
    );

    common::daemon::signal(child.id(), "TERM");
    let status = (0..300)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            child.try_wait().unwrap()
        })
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", read_log()));
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        read_log()
    );
}
