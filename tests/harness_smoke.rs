//! Proves the test harness works: each real service starts, answers, and
//! goes away with the test process.

mod harness;

use harness::{
    shared_postgres, unique_db_name, wait_until, wait_until_blocking, Osmem, Postgres, Redis, Resp,
};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn postgres_starts_with_logical_wal_level() {
    let t = Instant::now();
    let pg = Postgres::start();
    eprintln!("Postgres::start took {:?}", t.elapsed());
    assert_eq!(pg.psql("postgres", "SHOW wal_level"), "logical");
    assert_eq!(pg.psql("postgres", "SHOW max_replication_slots"), "64");
    assert_eq!(pg.psql("postgres", "SHOW max_wal_senders"), "20");
    assert_eq!(pg.psql("postgres", "SHOW fsync"), "off");
    assert_eq!(pg.psql("postgres", "SHOW TimeZone"), "UTC");
    assert_eq!(pg.psql("postgres", "SELECT current_user"), "postgres");
    assert_eq!(pg.psql("postgres", "SELECT 1; SELECT 2"), "1\n2");
    assert!(pg.url("x").starts_with("postgres://postgres@127.0.0.1:"));
    let dir = pg.data_dir();
    drop(pg);
    assert!(!dir.exists(), "data dir is removed on drop");
}

#[test]
fn postgres_can_create_a_logical_replication_slot() {
    let pg = shared_postgres();
    let db = unique_db_name("slot");
    pg.create_database(&db);
    pg.psql(
        &db,
        "CREATE TABLE book (id int PRIMARY KEY, title text);
         CREATE PUBLICATION pub FOR ALL TABLES;",
    );
    let slot = format!("{db}_slot");
    pg.psql(
        &db,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"),
    );
    pg.psql(&db, "INSERT INTO book VALUES (1, 'Dune')");
    // Commits are asynchronous and decoding reads only flushed WAL, so the
    // change shows up a moment later, not necessarily on the first read.
    let mut changes = String::new();
    wait_until_blocking(Duration::from_secs(10), "the insert is decoded", || {
        changes += &pg.psql(
            &db,
            &format!("SELECT data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL)"),
        );
        changes.contains("table public.book: INSERT: id[integer]:1 title[text]:'Dune'")
    });
    pg.psql(&db, &format!("SELECT pg_drop_replication_slot('{slot}')"));
    pg.drop_database(&db);
}

#[test]
fn postgres_runs_sql_files() {
    let pg = shared_postgres();
    let db = unique_db_name("file");
    pg.create_database(&db);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "CREATE TABLE t (n int);\nINSERT INTO t SELECT generate_series(1, 3);\n",
    )
    .unwrap();
    pg.psql_file(&db, file.path());
    assert_eq!(pg.psql(&db, "SELECT sum(n) FROM t"), "6");
}

#[test]
#[should_panic(expected = "relation \"no_such_table\" does not exist")]
fn psql_panics_with_the_server_error() {
    shared_postgres().psql("postgres", "SELECT * FROM no_such_table");
}

#[test]
fn postgres_keeps_its_port_and_data_across_a_restart() {
    let pg = Postgres::start();
    let port = pg.port();
    pg.psql(
        "postgres",
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
    );
    let t = Instant::now();
    pg.restart();
    eprintln!("Postgres::restart took {:?}", t.elapsed());
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("postgres", "SELECT x FROM kept"), "7");
}

#[test]
fn shared_postgres_is_one_server_and_database_names_are_unique() {
    assert!(std::ptr::eq(shared_postgres(), shared_postgres()));
    let a = unique_db_name("My-Test");
    let b = unique_db_name("My-Test");
    assert_ne!(a, b);
    assert!(a.starts_with("my_test_"), "{a}");
    assert!(unique_db_name(&"x".repeat(100)).len() <= 63);
}

#[test]
fn osmem_indexes_a_document_and_finds_it() {
    let t = Instant::now();
    let os = Osmem::start();
    eprintln!("Osmem::start took {:?}", t.elapsed());
    assert!(os.get_json("/")["version"]["number"].is_string());
    assert!(os.try_all_docs("book").is_none());
    assert!(!os.index_exists("book"));
    os.put_json("/book/_doc/1", &json!({"title": "Dune", "year": 1965}));
    assert!(os.index_exists("book"));
    assert_eq!(
        os.doc("book", "1"),
        Some(json!({"title": "Dune", "year": 1965}))
    );
    let found = os.post_json(
        "/book/_search",
        &json!({"query": {"match": {"title": "dune"}}}),
    );
    assert_eq!(found["hits"]["hits"][0]["_id"], "1");
    let docs = os.all_docs("book");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs["1"]["title"], "Dune");
    assert_eq!(os.count("book"), 1);
    let (status, _) = os.delete("/book/_doc/1");
    assert_eq!(status, 200);
    assert_eq!(os.doc("book", "1"), None);
}

#[test]
fn osmem_all_docs_reads_every_page() {
    let os = Osmem::start();
    let mut bulk = String::new();
    for i in 0..2500 {
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"many\",\"_id\":\"{i}\"}}}}\n"
        ));
        bulk.push_str(&format!("{{\"n\":{i}}}\n"));
    }
    let (status, reply) = os
        .request_raw("POST", "/_bulk", "application/x-ndjson", bulk.as_bytes())
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(reply["errors"], false);
    let docs = os.all_docs("many");
    assert_eq!(docs.len(), 2500);
    assert_eq!(docs["2499"], json!({"n": 2499}));
}

#[test]
fn redis_answers_ping_over_tcp() {
    let t = Instant::now();
    let redis = Redis::start();
    eprintln!("Redis::start took {:?}", t.elapsed());
    let mut s = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    assert_eq!(redis.cmd(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    assert_eq!(redis.cmd(&["GET", "k"]), Resp::Bulk(Some("v".into())));
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}

#[test]
fn redis_restarts_empty_on_the_same_port() {
    let redis = Redis::start();
    let port = redis.port();
    redis.cmd(&["RPUSH", "q", "a"]);
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cmd(&["LLEN", "q"]), Resp::Int(0));
}

#[tokio::test]
async fn wait_until_returns_once_the_condition_holds() {
    let start = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "200 ms have passed",
        || async move { start.elapsed() > Duration::from_millis(200) },
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
#[should_panic(expected = "waiting until the moon turns blue")]
async fn wait_until_panics_naming_what_it_waited_for() {
    wait_until(
        Duration::from_millis(200),
        "the moon turns blue",
        || async { false },
    )
    .await;
}

#[test]
fn the_pgsync_binary_is_built_for_tests() {
    assert!(harness::pgsync_bin().is_file());
}

const PROBE_ENV: &str = "PGSYNC_HARNESS_ORPHAN_PROBE";

/// Helper for the next test, run only in a child copy of this binary:
/// starts every service, never drops them, and SIGKILLs its own process.
#[test]
#[ignore = "run by services_do_not_outlive_a_killed_test_process"]
fn orphan_probe_child() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let pg = shared_postgres();
    let redis = Redis::start();
    let os = Osmem::start();
    println!(
        "PROBE {} {} {} {} {}",
        pg.pid().unwrap(),
        pg.data_dir().parent().unwrap().display(),
        redis.pid().unwrap(),
        redis.dir().display(),
        os.pid(),
    );
    std::io::stdout().flush().unwrap();
    std::mem::forget((redis, os));
    let me = std::process::id().to_string();
    std::process::Command::new("kill")
        .args(["-s", "KILL", &me])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(30));
    unreachable!("SIGKILL did not arrive");
}

#[test]
fn services_do_not_outlive_a_killed_test_process() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["orphan_probe_child", "--exact", "--ignored", "--nocapture"])
        .env(PROBE_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PROBE "))
        .unwrap_or_else(|| {
            panic!(
                "probe printed no PROBE line:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<&str> = line.split(' ').collect();
    let (pids, dirs) = ([f[0], f[2], f[4]], [f[1], f[3]]);
    wait_until_blocking(
        Duration::from_secs(20),
        "the probe's services are gone and their dirs removed",
        || {
            pids.iter().all(|pid| !alive(pid))
                && dirs.iter().all(|d| !std::path::Path::new(d).exists())
        },
    );
}

/// A process counts as gone once it no longer exists or is a zombie
/// (PID 1 in a container may not reap orphans).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}
