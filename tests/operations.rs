//! Operations, end to end, on real services (PostgreSQL, osmem-server, Prometheus's `promtool`
//! and `prometheus` from Debian): the daemon's `/metrics`, `/healthz` and `/readyz` while rows
//! change and the engine freezes and thaws; a scrape passes `promtool check metrics` and holds
//! every metric the Grafana dashboard queries; a real Prometheus scrapes the daemon; JSON logs;
//! `pgsync status --json` and `pgsync health`; a slot PostgreSQL invalidated stops the daemon
//! with a clear error, or is re-synced when `capture.resync_on_slot_loss` is set.

mod common;
mod harness;

use common::daemon::{poll, signal, Mode};
use common::expected_documents;
use common::stream::Stream;
use harness::{free_port, http_request, Postgres, PostgresOptions};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `[metrics]` with the listener on `port` and fast heartbeats and polls, so a test sees the lag
/// move within seconds.
fn metrics_toml(port: u16) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\nheartbeat_secs = 1\npoll_secs = 1\nready_max_lag_secs = 30\n"
    )
}

/// `GET path` on the daemon's listener: status and body (an error reads as status 0).
fn get(port: u16, path: &str) -> (u16, String) {
    match http_request(port, "GET", path, "", b"") {
        Ok((status, body)) => (status, String::from_utf8_lossy(&body).into_owned()),
        Err(e) => (0, e.to_string()),
    }
}

fn scrape(port: u16) -> String {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn value(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric != name || !labels.iter().all(|l| series.contains(l)) {
            continue;
        }
        if let Ok(v) = v.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Waits until `/readyz` answers `want`; returns its last body.
fn await_ready(port: u16, want: u16, timeout: Duration, what: &str) -> String {
    let mut last = (0, String::new());
    let ok = poll(timeout, || {
        last = get(port, "/readyz");
        Ok(last.0 == want)
    })
    .unwrap();
    assert!(
        ok,
        "{what}: /readyz did not answer {want} within {timeout:?}; last: {} {}",
        last.0, last.1
    );
    last.1
}

/// Waits until `f` holds for a scrape.
fn await_scrape(port: u16, timeout: Duration, what: &str, mut f: impl FnMut(&str) -> bool) {
    let mut last = String::new();
    let ok = poll(timeout, || {
        last = scrape(port);
        Ok(f(&last))
    })
    .unwrap();
    assert!(ok, "{what} within {timeout:?}; last scrape:\n{last}");
}

/// `promtool check metrics` on `text`: Prometheus's own linter of the exposition format and
/// its naming conventions.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/install-deps.sh installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `pgsync_*` metric name the Grafana dashboard's queries use.
fn dashboard_metrics() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/pgsync.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = vec![];
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("pgsync_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.push(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "few metrics in the dashboard: {names:?}");
    names
}

/// Every stage of a wal-mode stream, each of which reports its busy time.
const STAGES: [&str; 6] = [
    "wal_reader",
    "coalescer",
    "query_builder",
    "fetcher",
    "writer",
    "checkpointer",
];

#[test]
fn metrics_move_with_changes_and_readiness_follows_a_frozen_engine() {
    let port = free_port();
    let mut s = Stream::with_setup("ops_metrics", Mode::Wal, "");
    s.work.append_toml(&metrics_toml(port));
    // A frozen engine must cost a request seconds, not minutes, so the run fails and restarts
    // (restarts and outages are counted) while the test watches.
    s.start_daemon_with_env(&[
        ("PGSYNC_SEARCH__TIMEOUT_SECS", "3"),
        ("PGSYNC_PIPELINE__MAX_RETRIES", "1"),
        ("PGSYNC_RESILIENCE__RETRY_MAX_MS", "1000"),
    ]);
    s.expect(&expected_documents(), "initial sync");
    await_ready(port, 200, Duration::from_secs(30), "after the initial sync");
    assert_eq!(get(port, "/healthz").0, 200);

    let before = scrape(port);
    let count = |text: &str, name: &str| value(text, name, &["index=\"book\""]).unwrap_or(0.0);
    let changes = count(&before, "pgsync_changes_received_total");
    let indexed = count(&before, "pgsync_documents_indexed_total");
    s.sql("UPDATE book SET title = 'War and Peace (revised)' WHERE id = 1");
    await_scrape(port, Duration::from_secs(30), "counters move", |t| {
        value(
            t,
            "pgsync_changes_received_total",
            &[
                "index=\"book\"",
                "table=\"public.book\"",
                "operation=\"update\"",
            ],
        )
        .unwrap_or(0.0)
            > changes
            && count(t, "pgsync_documents_indexed_total") > indexed
            && count(t, "pgsync_end_to_end_latency_seconds_count") > 0.0
            && value(t, "pgsync_replication_lag_bytes", &["index=\"book\""]).is_some()
            && value(t, "pgsync_stage_queue_capacity", &["stage=\"writer\""]).is_some()
            && STAGES.iter().all(|stage| {
                let stage = format!("stage=\"{stage}\"");
                let labels = ["index=\"book\"", stage.as_str()];
                value(t, "pgsync_stage_busy_seconds_count", &labels).unwrap_or(0.0) > 0.0
            })
    });
    promtool_check(&scrape(port));

    // Frozen engine: not ready, and the lag grows while a change waits.
    signal(s.os.pid(), "STOP");
    let frozen = Instant::now();
    s.sql("UPDATE book SET title = 'War and Peace (frozen)' WHERE id = 1");
    let body = await_ready(port, 503, Duration::from_secs(20), "engine frozen");
    assert!(body.contains("search engine"), "{body}");
    await_scrape(port, Duration::from_secs(30), "the lag grows", |t| {
        value(t, "pgsync_replication_lag_seconds", &["index=\"book\""]).unwrap_or(0.0) >= 3.0
    });
    // The bulk request waiting on the frozen engine times out, is retried once, and the run
    // fails and restarts.
    await_scrape(port, Duration::from_secs(40), "a restart is counted", |t| {
        value(t, "pgsync_restarts_total", &["index=\"book\""]).unwrap_or(0.0) >= 1.0
            && value(t, "pgsync_outages_total", &[]).unwrap_or(0.0) >= 1.0
    });
    signal(s.os.pid(), "CONT");
    eprintln!("engine frozen for {:?}", frozen.elapsed());
    await_ready(port, 200, Duration::from_secs(60), "engine thawed");
    await_scrape(port, Duration::from_secs(30), "the lag falls", |t| {
        value(t, "pgsync_replication_lag_seconds", &["index=\"book\""]).unwrap_or(99.0) < 3.0
    });
    let ok = poll(Duration::from_secs(30), || {
        s.os.refresh("book");
        Ok(s.os
            .doc("book", "1")
            .is_some_and(|d| d["book_title"] == "War and Peace (frozen)"))
    })
    .unwrap();
    assert!(ok, "the change made while frozen was not indexed");

    let text = scrape(port);
    promtool_check(&text);
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|m| !text.lines().any(|l| l.starts_with(m.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics a live scrape lacks: {missing:?}\n{text}"
    );
    eprintln!(
        "scrape excerpt:\n{}",
        text.lines()
            .filter(|l| l.contains("index=\"book\"") && !l.contains("_bucket"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );

    status_and_health_agree_with_the_daemon(&s);
}

/// `pgsync status --json` holds the facts per index, with the daemon's lag and phase, and
/// `pgsync health` says ready.
fn status_and_health_agree_with_the_daemon(s: &Stream) {
    let out = s.work.pgsync(&["status", "--json"]);
    out.assert_code(0, "pgsync status --json");
    let doc: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let book = doc["indices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["index"] == "book")
        .unwrap_or_else(|| panic!("no index book: {doc}"))
        .clone();
    for key in [
        "slot",
        "position",
        "retained_wal_bytes",
        "lag_bytes",
        "checkpoint",
        "wal_status",
    ] {
        assert!(!book[key].is_null(), "status --json lacks {key}: {book}");
    }
    assert_eq!(book["dead_letters"], 0, "{book}");
    assert_eq!(book["daemon_phase"], "streaming", "{book}");
    assert!(book["lag_secs"].is_number(), "{book}");
    let health = s.work.pgsync(&["health"]);
    health.assert_code(0, "pgsync health");
    assert!(health.stdout.contains("\"ready\""), "{}", health.output());
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_which_logs_json_lines_with_stage_fields() {
    let port = free_port();
    let mut s = Stream::with_setup("ops_prom", Mode::Notify, "");
    s.work.append_toml(&format!(
        "{}\n[log]\nformat = \"json\"\n",
        metrics_toml(port)
    ));
    // The harness spots "streaming changes" in text logs; a JSON log is awaited on /readyz.
    s.daemon = Some(common::daemon::Daemon::start(&s.work, "daemon.log"));
    await_ready(port, 200, Duration::from_secs(60), "JSON-logging daemon");
    s.expect(&expected_documents(), "initial sync");
    // Notify mode: heartbeat rows go through the change log, so the lag is measured there too.
    await_scrape(
        port,
        Duration::from_secs(20),
        "lag measured in notify mode",
        |t| {
            value(t, "pgsync_replication_lag_seconds", &["index=\"edition\""])
                .is_some_and(|l| l < 5.0)
        },
    );

    let prom_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pgsync\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run prometheus (scripts/install-deps.sh installs Debian's prometheus package)");
    let _watchdog = harness::Watchdog::kill_on_exit(prom.id());
    let mut answer = Value::Null;
    let up = poll(Duration::from_secs(40), || {
        let (status, body) = match http_request(
            prom_port,
            "GET",
            "/api/v1/query?query=pgsync_documents_indexed_total",
            "",
            b"",
        ) {
            Ok((st, b)) => (st, String::from_utf8_lossy(&b).into_owned()),
            Err(_) => return Ok(false),
        };
        answer = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(status == 200
            && answer["data"]["result"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["metric"]["index"] == "book")))
    })
    .unwrap();
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        up,
        "Prometheus never had pgsync_documents_indexed_total of index book: {answer}"
    );

    let log = s.daemon().log();
    let mut stages = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not one JSON object ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if let Some(stage) = v["span"]["stage"].as_str() {
            stages.insert(stage.to_owned());
        }
    }
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
    assert!(
        stages.contains("notify_listener"),
        "no line carries its stage: {stages:?}\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("\"index\":\"book\"")),
        "no line carries an index field:\n{log}"
    );
}

/// Generates WAL past `max_slot_wal_keep_size` and checkpoints until PostgreSQL invalidates
/// the slot of the stopped daemon.
fn invalidate_slot(pg: &Postgres, db: &str, slot: &str) {
    pg.psql(db, "CREATE TABLE IF NOT EXISTS ballast (x text)");
    let ok = poll(Duration::from_secs(60), || {
        pg.psql(
            db,
            "INSERT INTO ballast SELECT repeat(md5(i::text), 64) FROM generate_series(1, 3000) i;
             SELECT pg_switch_wal(); CHECKPOINT;",
        );
        let status = pg.psql(
            db,
            &format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        );
        Ok(status.trim() == "lost")
    })
    .unwrap();
    assert!(ok, "slot {slot} was not invalidated");
}

#[test]
fn an_invalidated_slot_stops_the_daemon_plainly_or_is_resynced_when_allowed() {
    let pg: &'static Postgres = Box::leak(Box::new(Postgres::start_with(PostgresOptions {
        settings: vec!["max_slot_wal_keep_size=1MB".into()],
        ..Default::default()
    })));
    let mut s = Stream::with_setup_on(pg, "ops_slot", Mode::Wal, "");
    let validate = s.work.pgsync(&["validate"]);
    assert!(
        !validate.stdout.contains("max_slot_wal_keep_size"),
        "validate warned although the limit is set: {}",
        validate.output()
    );
    s.start_daemon();
    s.expect(&expected_documents(), "initial sync");
    let slot = s
        .status()
        .into_iter()
        .find(|(i, _, _)| i == "book")
        .unwrap()
        .1;
    s.daemon().terminate(Duration::from_secs(30));
    s.daemon = None;
    s.sql("UPDATE book SET title = 'Written while the slot was lost' WHERE id = 1");
    invalidate_slot(pg, &s.db, &slot);

    let mut d = common::daemon::Daemon::start(&s.work, "lost.log");
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "the daemon went on with a lost slot:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("invalidated replication slot") && log.contains("resync_on_slot_loss"),
        "the error does not say what happened and what to do:\n{log}"
    );

    s.start_daemon_with_env(&[("PGSYNC_CAPTURE__RESYNC_ON_SLOT_LOSS", "true")]);
    let ok = poll(Duration::from_secs(60), || {
        s.os.refresh("book");
        Ok(s.os
            .doc("book", "1")
            .is_some_and(|d| d["book_title"] == "Written while the slot was lost"))
    })
    .unwrap();
    assert!(
        ok,
        "the re-sync did not bring the lost change:\n{}",
        s.daemon().log()
    );
    s.sql("UPDATE book SET title = 'Streamed after the re-sync' WHERE id = 1");
    let ok = poll(Duration::from_secs(30), || {
        s.os.refresh("book");
        Ok(s.os
            .doc("book", "1")
            .is_some_and(|d| d["book_title"] == "Streamed after the re-sync"))
    })
    .unwrap();
    assert!(ok, "no streaming after the re-sync:\n{}", s.daemon().log());
}

#[test]
fn validate_names_max_slot_wal_keep_size_when_it_is_unset() {
    let s = Stream::with_setup("ops_validate", Mode::Wal, "");
    let out = s.work.pgsync(&["validate"]);
    out.assert_code(0, "pgsync validate");
    assert!(
        out.stdout.contains("max_slot_wal_keep_size is unset"),
        "{}",
        out.output()
    );
}
