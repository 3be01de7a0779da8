//! Change-capture benchmark on the generated book data set, every figure printed beside the
//! limit it is judged by, all measured in the same run:
//!
//! - limits: PostgreSQL alone building the documents; this project's initial sync on the same
//!   data and sink (`run --once --full`); the engine alone overwriting the same documents (one
//!   client, 1,000 per bulk) — not measured with the file sink;
//! - latency, commit to visible, by kind: a root row, a child row, a through-table row, and an
//!   author rename that fans out to 150 books (visible when all 150 are), p50/p95/max;
//! - a burst of mixed changes applied as fast as PostgreSQL takes them: drain time;
//! - catch-up: the daemon stopped (SIGTERM) while a backlog of single-row transactions commits,
//!   then started again; drain rate beside the initial-sync rate and the engine's, and the
//!   daemon's peak RSS while it drains.
//!
//! Run: `cargo bench --bench streaming -- 100000 --ndjson` (roots; default 100,000). Options:
//! `--burst N` (default 20,000 changes), `--backlog N` (default 200,000 changes),
//! `--samples N` (per latency kind, default 40). With `--ndjson` the daemon writes bulk bodies
//! to a file and "visible" means "appended to that file": the pipeline's own figures, at sizes
//! osmem cannot hold (it keeps every document in memory and overwrites slowly). `BENCH_DAEMON_LOG=debug`
//! sets the daemons' log level (their logs go to the bench's stderr).

mod common;
#[path = "../tests/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Books an author of the fan-out set is linked to.
const FAN_OUT: u64 = 150;

struct Args {
    roots: u64,
    burst: u64,
    backlog: u64,
    samples: u64,
    ndjson: bool,
}

impl Args {
    fn parse() -> Args {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let opt = |name: &str, default: u64| {
            argv.iter()
                .position(|a| a == name)
                .and_then(|i| argv.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let roots = argv
            .iter()
            .enumerate()
            .find(|(i, a)| a.parse::<u64>().is_ok() && (*i == 0 || !argv[i - 1].starts_with("--")))
            .and_then(|(_, a)| a.parse().ok())
            .unwrap_or(100_000);
        Args {
            roots,
            burst: opt("--burst", 20_000),
            backlog: opt("--backlog", 200_000),
            samples: opt("--samples", 40),
            ndjson: argv.iter().any(|a| a == "--ndjson"),
        }
    }
}

fn main() {
    let a = Args::parse();
    let n = a.roots;
    let out_file = std::env::temp_dir().join(format!("pgsync-bench-{}.ndjson", std::process::id()));
    let _ = std::fs::remove_file(&out_file);
    let extra = if a.ndjson {
        format!(
            "[output]\nkind = \"ndjson\"\npath = \"{}\"\n",
            out_file.display()
        )
    } else {
        String::new()
    };
    let env = common::setup(n, &extra);
    env.pg.psql("bench", &latency_fixtures_sql(n, a.samples));
    let cfg = pgsync_rs::config::load(Some(&env.config)).unwrap();

    let (pg_docs, pg_secs) = common::pg_alone(&cfg, &env.schema, cfg.pipeline.fetchers);
    let initial = common::run_pgsync(&env.config, &[]);
    let _ = std::fs::remove_file(&out_file);
    let mut seen = Seen::new(a.ndjson, &env.osmem, &out_file);
    let engine_rate = (!a.ndjson).then(|| engine_alone_rate(&env.osmem, n));
    let limits = Limits {
        pg_rate: pg_docs as f64 / pg_secs,
        initial_rate: initial.docs as f64 / initial.secs,
        initial_rss: initial.peak_rss_mb,
        engine_rate,
    };

    let daemon = start_daemon(&env);
    let latency = measure_latency(&env, &mut seen, &a);
    let fan_engine_ms = (!a.ndjson).then(|| engine_fan_out_ms(&env.osmem, n));
    let burst = measure_burst(&env, &mut seen, n, a.burst);
    stop(daemon);
    let catch_up = measure_catch_up(&env, &mut seen, n, a.backlog);
    let _ = std::fs::remove_file(&out_file);

    let sink = if a.ndjson {
        "NDJSON file sink"
    } else {
        "osmem-server"
    };
    println!(
        "streaming benchmark, {n} roots, {sink}, fetchers={}",
        cfg.pipeline.fetchers
    );
    limits.print();
    print_latency(&latency, a.ndjson, fan_engine_ms);
    burst.print();
    catch_up.print(&limits, a.ndjson);
}

/// The daemons' log level: `BENCH_DAEMON_LOG` (e.g. `debug`) or warnings only.
fn daemon_log_level() -> String {
    std::env::var("BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into())
}

/// Rows the latency samples need: authors with no books yet, linked one per sample (a
/// through-table change), and authors linked to `FAN_OUT` books each (a fan-out).
fn latency_fixtures_sql(n: u64, samples: u64) -> String {
    let base = marker_author(n, 0);
    format!(
        "INSERT INTO author SELECT {base} + k, 'Link author ' || k, NULL FROM generate_series(0, {samples} - 1) k;
         INSERT INTO author SELECT {fan} + k, 'Fan author ' || k, NULL FROM generate_series(0, {samples} - 1) k;
         INSERT INTO book_author SELECT 1 + ((k * {FAN_OUT} + j) * 7) % {n}, {fan} + k
           FROM generate_series(0, {samples} - 1) k, generate_series(0, {FAN_OUT} - 1) j ON CONFLICT DO NOTHING;
         ANALYZE author; ANALYZE book_author;",
        fan = fan_author(n, 0),
    )
}

fn marker_author(n: u64, i: u64) -> u64 {
    n / 10 + 1_000 + i
}

fn fan_author(n: u64, i: u64) -> u64 {
    n / 10 + 100_000 + i
}

/// The books fan-out author `k` is linked to.
fn fan_books(n: u64, k: u64) -> Vec<String> {
    let mut ids: Vec<u64> = (0..FAN_OUT)
        .map(|j| 1 + ((k * FAN_OUT + j) * 7) % n)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(u64::to_string).collect()
}

struct Limits {
    pg_rate: f64,
    initial_rate: f64,
    initial_rss: f64,
    engine_rate: Option<f64>,
}

impl Limits {
    fn print(&self) {
        println!("limits measured in this run:");
        println!(
            "  PostgreSQL alone building the documents: {:.0} docs/s",
            self.pg_rate
        );
        println!(
            "  initial sync, this project, same sink:   {:.0} docs/s (peak RSS {:.1} MB)",
            self.initial_rate, self.initial_rss
        );
        match self.engine_rate {
            Some(r) => {
                println!("  engine alone overwriting these documents: {r:.0} docs/s (one client)")
            }
            None => println!("  engine alone: not measured with the file sink"),
        }
    }
}

/// The daemon streaming from its slot, started after the initial sync left a checkpoint.
fn start_daemon(env: &common::BenchEnv) -> Child {
    let daemon = Command::new(harness::pgsync_bin())
        .args(["run", "--config"])
        .arg(&env.config)
        .env("LOG_LEVEL", daemon_log_level())
        .stdout(Stdio::null())
        .spawn()
        .expect("start pgsync");
    harness::wait_until_blocking(
        Duration::from_secs(1800),
        "the daemon streams from its slot",
        || {
            env.pg.psql(
                "bench",
                "SELECT count(*) FROM pg_replication_slots WHERE active",
            ) == "1"
        },
    );
    daemon
}

/// Sorted latencies in milliseconds, per kind of change.
struct Latency {
    kinds: Vec<(&'static str, Vec<f64>)>,
}

fn measure_latency(env: &common::BenchEnv, seen: &mut Seen, a: &Args) -> Latency {
    let n = a.roots;
    let mut kinds = vec![];
    let id = |i: u64| 1 + (i * 7919) % n;
    let sample = |seen: &mut Seen, sql: String, ids: Vec<String>, marker: &str| {
        let port = env.pg.port();
        psql_fast(port, &sql);
        let committed = Instant::now();
        let want = ids.len();
        seen.wait(&ids, marker, want, committed);
        std::thread::sleep(Duration::from_millis(100));
        committed.elapsed().as_secs_f64() * 1000.0 - 100.0
    };
    let mut root = vec![];
    let mut child = vec![];
    let mut through = vec![];
    let mut fan = vec![];
    for i in 0..a.samples {
        let m = format!("root-{i}-mark");
        root.push(sample(
            seen,
            format!("UPDATE book SET title = '{m}' WHERE id = {}", id(i)),
            vec![id(i).to_string()],
            &m,
        ));
        let b = id(i + a.samples);
        let m = format!("child-{i}-mark");
        let sql = format!("UPDATE rating SET comment = '{m}' WHERE id = (SELECT min(id) FROM rating WHERE book_id = {b})");
        child.push(sample(seen, sql, vec![b.to_string()], &m));
        let b = id(i + 2 * a.samples);
        let sql = format!(
            "INSERT INTO book_author VALUES ({b}, {}) ON CONFLICT DO NOTHING",
            marker_author(n, i)
        );
        through.push(sample(
            seen,
            sql,
            vec![b.to_string()],
            &format!("Link author {i}\""),
        ));
        let m = format!("fan-{i}-mark");
        let sql = format!(
            "UPDATE author SET name = '{m}' WHERE id = {}",
            fan_author(n, i)
        );
        fan.push(sample(seen, sql, fan_books(n, i), &m));
    }
    for (name, mut v) in [
        ("root row", root),
        ("child row", child),
        ("through-table row", through),
        ("fan-out", fan),
    ] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        kinds.push((name, v));
    }
    Latency { kinds }
}

fn print_latency(l: &Latency, ndjson: bool, fan_engine_ms: Option<f64>) {
    let extra = if ndjson { 0.0 } else { 10.0 };
    println!(
        "latency, commit to visible ({} samples of each kind, 100 ms apart):",
        l.kinds[0].1.len()
    );
    for (name, v) in &l.kinds {
        let (p50, p95, max) = (
            common::percentile(v, 50.0),
            common::percentile(v, 95.0),
            v.last().copied().unwrap_or(0.0),
        );
        let target = if *name == "fan-out" {
            match fan_engine_ms {
                Some(e) => format!(
                    "target p95 <= engine alone {e:.1} ms + 25 ms = {:.1} ms",
                    e + 25.0
                ),
                None => "target p95 <= engine alone + 25 ms (file sink: ~0 ms + 25 ms)".to_string(),
            }
        } else {
            format!(
                "target p50 <= {:.0} ms, p95 <= {:.0} ms",
                10.0 + extra,
                25.0 + extra
            )
        };
        let label = if *name == "fan-out" {
            format!("fan-out of {FAN_OUT} documents")
        } else {
            name.to_string()
        };
        println!("  {label:<28} p50 {p50:7.1} ms  p95 {p95:7.1} ms  max {max:7.1} ms   ({target})");
    }
}

struct Burst {
    changes: u64,
    applied: f64,
    drained: f64,
}

impl Burst {
    fn print(&self) {
        println!(
            "burst of {} mixed changes: applied by psql in {:.2} s, all reflected {:.2} s after the first commit",
            self.changes, self.applied, self.drained
        );
    }
}

/// A burst of mixed changes (title updates, rating inserts and deletes, subject moves, author
/// renames, new books) in one psql session, one transaction per statement.
fn measure_burst(env: &common::BenchEnv, seen: &mut Seen, n: u64, burst: u64) -> Burst {
    let authors = (n / 10).max(1);
    let mut sql = String::new();
    for i in 0..burst {
        let b = 1 + (i * 104_729) % n;
        sql.push_str(&match i % 10 {
            0..=3 => format!("UPDATE book SET title = 'burst {i}' WHERE id = {b};\n"),
            4 | 5 => format!("INSERT INTO rating (book_id, stars, comment) VALUES ({b}, {}, 'burst');\n", 1 + i % 5),
            6 => format!("DELETE FROM rating WHERE id = (SELECT min(id) FROM rating WHERE book_id = {b});\n"),
            7 => format!("UPDATE book_subject SET subject_id = {} WHERE book_id = {b};\n", 1 + i % 50),
            8 => format!("UPDATE author SET name = 'Author {i} renamed' WHERE id = {};\n", 1 + (i * 31) % authors),
            _ => format!("INSERT INTO book (id, isbn, title, publisher_id) VALUES ({}, 'burst-{i}', 'new {i}', 1);\n", n + 1 + i),
        });
    }
    let marker = format!("burst-end-{burst}");
    sql.push_str(&format!(
        "UPDATE book SET title = '{marker}' WHERE id = 1;\n"
    ));
    let file = env.dir.path().join("burst.sql");
    std::fs::write(&file, sql).unwrap();
    let start = Instant::now();
    psql_file(env.pg.port(), &file);
    let applied = start.elapsed().as_secs_f64();
    seen.wait(&["1".to_string()], &marker, 1, start);
    Burst {
        changes: burst,
        applied,
        drained: start.elapsed().as_secs_f64(),
    }
}

struct CatchUp {
    changes: u64,
    documents: u64,
    commit_secs: f64,
    drain_secs: f64,
    peak_rss_mb: f64,
}

impl CatchUp {
    fn print(&self, l: &Limits, ndjson: bool) {
        let rate = self.documents as f64 / self.drain_secs;
        println!(
            "catch-up: {} single-row transactions committed while stopped ({:.1} s), {} documents; \
             drained {:.2} s after the restart = {rate:.0} docs/s",
            self.changes, self.commit_secs, self.documents, self.drain_secs
        );
        println!(
            "  {:.0}% of the initial-sync rate (target >= 70% with the file sink)",
            100.0 * rate / l.initial_rate
        );
        if let (Some(e), false) = (l.engine_rate, ndjson) {
            println!(
                "  {:.0}% of the engine-alone rate (target >= 80%)",
                100.0 * rate / e
            );
        }
        println!(
            "  peak RSS while draining: {:.1} MB (target < 300 MB)",
            self.peak_rss_mb
        );
    }
}

/// Commits `backlog` single-row transactions while the daemon is stopped, then starts it and
/// times the drain, sampling its peak RSS.
fn measure_catch_up(env: &common::BenchEnv, seen: &mut Seen, n: u64, backlog: u64) -> CatchUp {
    let marker = format!("backlog-end-{backlog}");
    let sql = format!(
        "DO $$ BEGIN FOR i IN 0..{backlog} - 2 LOOP \
           UPDATE book SET title = 'backlog ' || i WHERE id = 2 + (i * 7919) % ({n} - 1); COMMIT; \
         END LOOP; END $$;
         UPDATE book SET title = '{marker}' WHERE id = 1;"
    );
    // From a file: psql runs each statement on its own, so the DO block may COMMIT.
    let file = env.dir.path().join("backlog.sql");
    std::fs::write(&file, sql).unwrap();
    let t = Instant::now();
    psql_file(env.pg.port(), &file);
    let commit_secs = t.elapsed().as_secs_f64();
    let documents = (backlog - 1).min(n - 1) + 1;
    let start = Instant::now();
    let mut daemon = Command::new(harness::pgsync_bin())
        .args(["run", "--config"])
        .arg(&env.config)
        .env("LOG_LEVEL", daemon_log_level())
        .stdout(Stdio::null())
        .spawn()
        .expect("restart pgsync");
    let pid = daemon.id();
    let mut peak_kb = 0;
    while !seen.poll(&["1".to_string()], &marker, 1) {
        peak_kb = peak_kb.max(vm_hwm_kb(pid));
        if start.elapsed() > Duration::from_secs(3600) || daemon.try_wait().unwrap().is_some() {
            panic!("the backlog did not drain (daemon exited or an hour passed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain_secs = start.elapsed().as_secs_f64();
    peak_kb = peak_kb.max(vm_hwm_kb(pid));
    stop(daemon);
    CatchUp {
        changes: backlog,
        documents,
        commit_secs,
        drain_secs,
        peak_rss_mb: peak_kb as f64 / 1024.0,
    }
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The engine's own rate for what catch-up asks of it: overwriting existing documents of the
/// index with their current sources, one client, 1,000 per bulk request. (osmem's cost of an
/// overwrite grows with the index, so probing with new documents would overstate its rate.)
fn engine_alone_rate(osmem: &harness::Osmem, n: u64) -> f64 {
    let mut busy = Duration::ZERO;
    let mut sent = 0;
    while sent < 3_000.min(n) {
        let ids: Vec<String> = (0..1000u64)
            .map(|j| (1 + ((sent + j) * 7919) % n).to_string())
            .collect();
        let (docs, t) = overwrite(osmem, &ids);
        busy += t;
        sent += docs;
    }
    sent as f64 / busy.as_secs_f64()
}

/// The engine alone writing one fan-out's documents in one bulk request, in milliseconds.
fn engine_fan_out_ms(osmem: &harness::Osmem, n: u64) -> f64 {
    let (_, t) = overwrite(osmem, &fan_books(n, 0));
    t.as_secs_f64() * 1000.0
}

/// Overwrites documents `ids` with their current sources in one bulk request: documents, time.
fn overwrite(osmem: &harness::Osmem, ids: &[String]) -> (u64, Duration) {
    let (_, got) = osmem
        .request(
            "POST",
            "/book/_mget",
            Some(&serde_json::json!({ "ids": ids })),
        )
        .expect("_mget");
    let mut body = String::new();
    let mut docs = 0;
    for d in got["docs"].as_array().expect("docs") {
        if let (Some(id), Some(src)) = (d["_id"].as_str(), d.get("_source")) {
            body.push_str(&format!(
                "{{\"index\":{{\"_index\":\"book\",\"_id\":\"{id}\"}}}}\n{src}\n"
            ));
            docs += 1;
        }
    }
    let t = Instant::now();
    let (status, _) = harness::http_request(
        osmem.port(),
        "POST",
        "/_bulk",
        "application/x-ndjson",
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200);
    (docs, t.elapsed())
}

/// SIGTERM, then the exit status (a graceful stop exits 0).
fn stop(mut daemon: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit after SIGTERM: {status}");
}

/// Where the bench looks for a change: the search server's documents, or the NDJSON output.
enum Seen<'a> {
    Search(&'a harness::Osmem),
    File {
        path: PathBuf,
        offset: u64,
        /// The last bytes already read, so a marker split across two reads is still found.
        carry: Vec<u8>,
        /// Occurrences of the current marker seen so far.
        count: usize,
        marker: String,
    },
}

impl<'a> Seen<'a> {
    fn new(ndjson: bool, osmem: &'a harness::Osmem, path: &Path) -> Seen<'a> {
        if !ndjson {
            return Seen::Search(osmem);
        }
        Seen::File {
            path: path.to_owned(),
            offset: 0,
            carry: vec![],
            count: 0,
            marker: String::new(),
        }
    }

    /// Polls every 1 ms until `want` of documents `ids` show `marker`; panics after 120 s.
    fn wait(&mut self, ids: &[String], marker: &str, want: usize, since: Instant) {
        while !self.poll(ids, marker, want) {
            assert!(
                since.elapsed() < Duration::from_secs(120),
                "{marker} not visible after 120 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether at least `want` of documents `ids` now show `marker`. For the file, each call
    /// consumes what was appended since the last one and counts the marker's occurrences.
    fn poll(&mut self, ids: &[String], marker: &str, want: usize) -> bool {
        match self {
            Seen::Search(osmem) => {
                let Ok((200, got)) = osmem.request(
                    "POST",
                    "/book/_mget",
                    Some(&serde_json::json!({ "ids": ids })),
                ) else {
                    return false;
                };
                let docs = got["docs"].as_array().cloned().unwrap_or_default();
                docs.iter()
                    .filter(|d| {
                        d.get("_source")
                            .is_some_and(|s| s.to_string().contains(marker))
                    })
                    .count()
                    >= want
            }
            Seen::File {
                path,
                offset,
                carry,
                count,
                marker: current,
            } => {
                use std::io::{Read, Seek, SeekFrom};
                if current != marker {
                    *current = marker.to_owned();
                    *count = 0;
                }
                let Ok(mut f) = std::fs::File::open(&*path) else {
                    return false;
                };
                let mut new = Vec::new();
                f.seek(SeekFrom::Start(*offset)).unwrap();
                f.read_to_end(&mut new).unwrap();
                *offset += new.len() as u64;
                carry.extend_from_slice(&new);
                *count += carry
                    .windows(marker.len())
                    .filter(|w| *w == marker.as_bytes())
                    .count();
                // Fewer bytes than the marker stay, so no occurrence is counted twice.
                let keep = carry.len().saturating_sub(marker.len() - 1);
                carry.drain(..keep);
                *count >= want
            }
        }
    }
}

fn psql_fast(port: u16, sql: &str) {
    let out = psql(port).arg("-c").arg(sql).output().expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn psql_file(port: u16, file: &Path) {
    let out = psql(port).arg("-f").arg(file).output().expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn psql(port: u16) -> Command {
    let mut c = Command::new(harness::pg_bin_dir().join("psql"));
    c.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "bench",
        "-p",
    ])
    .arg(port.to_string());
    c
}
