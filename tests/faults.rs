//! Fault injection on real services: the `pgsync run` daemon streams the library fixture while a
//! random workload changes every table, and a fault hits it — the replication connection
//! terminated, PostgreSQL restarted, the search engine frozen or killed and started again empty,
//! Redis restarted, SIGKILL of the daemon at random points, a rejected document, a fetch that
//! fails or panics. Each case ends with the index equal, document for document, to a fresh full
//! build of the final rows, and the daemon never exited on a transient fault.
//!
//! The daemons here retry fast (`[resilience] retry_initial_ms = 100`) so the suite stays short;
//! each prints what it saw (outage lengths, restarts) for the record. Every wait polls for state;
//! the only timed waits are the faults themselves (the 90 s freeze, random SIGKILL points).

mod common;
mod harness;

use common::daemon::{poll, Daemon, Mode};
use common::stream::{Stream, START_TIMEOUT};
use common::workload::{seed, Rng, Target, Workload, CASCADING_FOREIGN_KEYS};
use harness::{Osmem, Postgres, Redis};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Fast retries, and request retries that give up soon so the supervisor's restarts are
/// exercised too.
const FAST_RETRIES: &str = "[resilience]
retry_initial_ms = 100
retry_max_ms = 2000

[pipeline]
max_retries = 2
retry_backoff_ms = 100
";

/// More books, so an initial sync takes long enough to be killed part-way.
fn extra_books(n: usize) -> String {
    format!(
        "INSERT INTO book (id, isbn, title, publisher_id, price, status, in_print)
         SELECT 1000 + g, 'isbn-' || g, 'Generated ' || g, 1 + g % 3, g % 100, 'published', g % 2 = 0
         FROM generate_series(1, {n}) g;"
    )
}

/// A test bed that restarts fast, on the shared server.
fn bed(prefix: &str, mode: Mode, setup: &str) -> Stream {
    let s = Stream::with_setup(prefix, mode, &format!("{CASCADING_FOREIGN_KEYS}\n{setup}"));
    s.work.append_toml(FAST_RETRIES);
    s
}

/// A private PostgreSQL for a test that restarts it (the shared one serves other tests).
fn private_postgres() -> &'static Postgres {
    Box::leak(Box::new(Postgres::start()))
}

fn workload(s: &Stream, what: &str, survive_restarts: bool) -> Workload {
    let target = Target {
        port: s.pg.port(),
        db: s.db.clone(),
        survive_restarts,
    };
    Workload::start_on(target, seed(what), 3)
}

/// The outages the daemon logged, as `what ... after <duration>` lines, printed for the record;
/// at least one must have ended.
fn report_outages(s: &mut Stream, case: &str) -> Vec<String> {
    let log = s.daemon().log();
    let ended: Vec<String> = log
        .lines()
        .filter(|l| l.contains("outage ended after"))
        .map(|l| l.split("INFO ").nth(1).unwrap_or(l).to_owned())
        .collect();
    let started = log.lines().filter(|l| l.contains("outage started")).count();
    eprintln!(
        "{case}: {started} outage(s) started, {} ended:",
        ended.len()
    );
    for l in &ended {
        eprintln!("  {l}");
    }
    assert!(
        !ended.is_empty(),
        "{case}: the daemon logged no recovered outage\n{}",
        s.daemon().log_tail()
    );
    ended
}

#[test]
fn a_terminated_replication_connection_mid_burst_is_survived_and_nothing_is_lost() {
    let mut s = bed("f_walsender", Mode::Wal, "");
    s.start_daemon();
    let mut work = workload(&s, "walsender terminated", false);
    work.grant(600);
    for at in [150, 350] {
        work.wait_finished(at);
        let n = s.sql(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE database = current_database() AND active_pid IS NOT NULL",
        );
        eprintln!("terminated {n} walsender(s) after {at} transactions");
    }
    work.finish();
    s.expect_fresh_build("after the walsenders were terminated twice");
    report_outages(&mut s, "walsender terminated");
}

fn postgres_restart_mid_burst(mode: Mode) {
    let pg = private_postgres();
    let mut s = Stream::with_setup_on(pg, "f_pgrestart", mode, CASCADING_FOREIGN_KEYS);
    s.work.append_toml(FAST_RETRIES);
    s.start_daemon();
    let mut work = workload(&s, "postgres restart", true);
    work.grant(600);
    work.wait_finished(200);
    let t = Instant::now();
    pg.restart();
    eprintln!("PostgreSQL restarted (-m fast) in {:?}", t.elapsed());
    work.finish();
    s.expect_fresh_build("after PostgreSQL restarted mid-burst");
    report_outages(&mut s, "postgres restart");
}

#[test]
fn postgres_restarted_mid_burst_is_survived_and_nothing_is_lost_in_wal_mode() {
    postgres_restart_mid_burst(Mode::Wal);
}

#[test]
fn postgres_restarted_mid_burst_is_survived_and_nothing_is_lost_in_notify_mode() {
    postgres_restart_mid_burst(Mode::Notify);
}

/// How long the engine is frozen: longer than a request's timeout and every retry of it.
const FREEZE: Duration = Duration::from_secs(90);

#[test]
fn a_search_engine_frozen_for_90_seconds_is_survived_and_nothing_is_lost() {
    let mut s = bed("f_freeze", Mode::Wal, "");
    // Requests time out during the freeze (osmem, stopped, accepts connections but never
    // answers; a real engine under a GC pause or a network partition does the same).
    s.start_daemon_with_env(&[("PGSYNC_SEARCH__TIMEOUT_SECS", "5")]);
    let mut work = workload(&s, "engine frozen", false);
    work.grant(200);
    work.wait_finished(100);
    common::daemon::signal(s.os.pid(), "STOP");
    let frozen = Instant::now();
    work.finish();
    let mut work = workload(&s, "engine frozen, more", false);
    work.grant(200);
    work.finish();
    while frozen.elapsed() < FREEZE {
        s.daemon().assert_alive("while the engine is frozen");
        std::thread::sleep(Duration::from_millis(500));
    }
    common::daemon::signal(s.os.pid(), "CONT");
    eprintln!("engine frozen for {:?}", frozen.elapsed());
    s.expect_fresh_build("after a 90 s freeze of the engine");
    report_outages(&mut s, "engine frozen");
}

#[test]
fn a_search_engine_killed_and_started_again_empty_gets_every_document_back() {
    let mut s = bed("f_enginekill", Mode::Wal, "");
    s.start_daemon();
    let mut work = workload(&s, "engine killed", false);
    work.grant(400);
    work.wait_finished(150);
    let port = s.os.port();
    s.os.kill();
    work.wait_finished(300);
    // In-memory: the new server on the same port has no index at all.
    s.os = Osmem::start_on(port);
    work.finish();
    s.expect_fresh_build("after the engine came back empty");
    let log = s.daemon().log();
    assert!(
        log.contains("was deleted or re-created") || log.contains("created index book"),
        "the daemon must notice the lost index and write it again\n{}",
        s.daemon().log_tail()
    );
    report_outages(&mut s, "engine killed");
}

#[test]
fn a_redis_restart_with_redis_checkpoints_is_survived_and_nothing_is_lost() {
    let redis = Redis::start();
    let mut s = bed("f_redis", Mode::Wal, "");
    let toml = std::fs::read_to_string(&s.work.config).unwrap();
    let toml = toml.replacen(
        "[checkpoint]\n",
        &format!(
            "[checkpoint]\nstore = \"redis\"\nredis_url = \"{}\"\n",
            redis.url()
        ),
        1,
    );
    std::fs::write(&s.work.config, toml).unwrap();
    s.start_daemon();
    let mut work = workload(&s, "redis restart", false);
    work.grant(500);
    work.wait_finished(150);
    redis.restart();
    work.wait_finished(300);
    redis.restart();
    work.finish();
    s.expect_fresh_build("after two Redis restarts");
    s.daemon().assert_alive("after the Redis restarts");
}

#[test]
fn twenty_sigkills_at_random_points_of_the_initial_sync_and_of_streaming_end_equal_to_a_fresh_build(
) {
    let mut s = bed("f_sigkill", Mode::Wal, &extra_books(3000));
    // Slow writes, so the initial sync is long enough to be killed part-way.
    let faults = [("FAILPOINTS", "write=return(40)")];
    let mut rng = Rng(seed("twenty SIGKILLs"));
    let mut work = workload(&s, "twenty SIGKILLs workload", false);
    for round in 0..8 {
        work.grant(25);
        let mut d = Daemon::start_with_env(&s.work, "daemon.log", &faults);
        let after = Duration::from_millis(rng.int(200, 2500) as u64);
        std::thread::sleep(after);
        d.assert_alive("before its SIGKILL");
        d.kill();
        let streamed = d.log().contains("streaming changes");
        eprintln!("round {round}: SIGKILL after {after:?} (streaming: {streamed})");
    }
    for round in 8..20 {
        s.start_daemon();
        work.grant(60);
        let after = Duration::from_millis(rng.int(0, 800) as u64);
        std::thread::sleep(after);
        s.daemon().kill();
        s.daemon = None;
        eprintln!("round {round}: SIGKILL {after:?} into a burst");
    }
    s.start_daemon();
    work.finish();
    s.expect_fresh_build("after twenty SIGKILLs");
    let log = s.daemon().log();
    assert!(log.contains("streaming changes"));
}

#[test]
fn an_initial_sync_killed_part_way_resumes_from_the_ranges_it_finished() {
    let mut s = bed("f_resume", Mode::Wal, &extra_books(3000));
    let faults = [("FAILPOINTS", "write=return(100)")];
    let checkpoint = |s: &Stream| -> Option<Value> {
        let dir = s.work.dir.path().join("state");
        let slot = pgsync_rs::source::slot::slot_name("pgsync", &s.db, "book");
        let text = std::fs::read_to_string(dir.join(format!("{slot}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    };
    let done = |v: &Value| -> (usize, usize) {
        let ranges = v["initial"]["ranges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let n = ranges.iter().filter(|r| r["done"] == true).count();
        (n, ranges.len())
    };
    let mut d = Daemon::start_with_env(&s.work, "daemon.log", &faults);
    let part_way = poll(START_TIMEOUT, || {
        d.check_alive()?;
        Ok(checkpoint(&s).is_some_and(|v| {
            let (n, of) = done(&v);
            n > 0 && n < of
        }))
    });
    assert_eq!(
        part_way,
        Ok(true),
        "never saw a part-done initial sync\n{}",
        d.log_tail()
    );
    d.kill();
    let (n, of) = done(&checkpoint(&s).unwrap());
    eprintln!("killed with {n} of {of} ranges of book written");
    s.start_daemon();
    let log = s.daemon().log();
    let resumed = log
        .lines()
        .find(|l| l.contains("resumes from the ranges it finished") && l.contains("index=book"))
        .unwrap_or_else(|| panic!("no resume logged\n{}", s.daemon().log_tail()));
    eprintln!("{resumed}");
    let left: usize = resumed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("left="))
        .and_then(|v| v.parse().ok())
        .expect("left=N");
    assert!(
        left <= of - n,
        "resumed {left} ranges, {n} of {of} were done"
    );
    let written: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("index book: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("the resumed run's summary line");
    eprintln!("the resumed run wrote {written} book documents of 3004");
    assert!(written < 3004, "a resumed sync must not start from zero");
    s.expect_fresh_build("after the resumed initial sync");
}

#[test]
fn a_rejected_document_is_dead_lettered_then_accepted_after_a_later_change() {
    // `copies` as a short: 200000 copies cannot be stored (the fixture's one such printing is
    // made storable first, so only the change below is rejected).
    let mut s = bed(
        "f_deadletter",
        Mode::Wal,
        "UPDATE edition_printing SET copies = 2000 WHERE copies > 32767",
    );
    let schema = std::fs::read_to_string(&s.work.schema).unwrap();
    let anchor = "\"index\": \"edition\",";
    let schema = schema.replace(
        anchor,
        &format!(
            "{anchor} \"mapping\": {{\"printings\": {{\"properties\": {{\"copies\": {{\"type\": \"short\"}}}}}}}},"
        ),
    );
    s.work.write_schema(&schema);
    s.start_daemon();
    let entry = |s: &Stream| {
        s.os.try_all_docs("edition-dead-letter")
            .and_then(|d| d.get("1|1").cloned())
    };
    s.sql("UPDATE edition_printing SET copies = 200000 WHERE book_id = 1 AND edition_number = 1");
    let recorded = poll(Duration::from_secs(30), || {
        s.daemon.as_mut().unwrap().check_alive()?;
        Ok(entry(&s).is_some())
    });
    assert_eq!(
        recorded,
        Ok(true),
        "no dead letter for 1|1\n{}",
        s.daemon().log_tail()
    );
    let e = entry(&s).unwrap();
    eprintln!("dead letter: {e}");
    assert_eq!(e["index"], "edition");
    assert!(e["reason"].as_str().unwrap().contains("copies"), "{e}");
    assert!(e["position"].as_str().unwrap().contains('/'), "an LSN: {e}");
    let listed = s.work.pgsync(&["dead-letters", "list"]);
    listed.assert_code(0, "dead-letters list");
    assert!(
        listed.stdout.contains("edition\t1|1\t"),
        "{}",
        listed.output()
    );
    let status = s.work.pgsync(&["status"]);
    assert!(
        status.stdout.contains("index edition: dead_letters=1"),
        "{}",
        status.output()
    );
    // The slot moved on: a later change to another document goes through.
    s.sql("UPDATE book SET title = 'After the rejection' WHERE id = 2");
    let moved = poll(Duration::from_secs(30), || {
        Ok(s.os
            .doc("book", "2")
            .is_some_and(|d| d["book_title"] == "After the rejection"))
    });
    assert_eq!(moved, Ok(true), "a rejected document stalled the stream");
    // Fixed by a later change: accepted, and its dead letter is gone.
    s.sql("UPDATE edition_printing SET copies = 300 WHERE book_id = 1 AND edition_number = 1");
    let cleared = poll(Duration::from_secs(30), || Ok(entry(&s).is_none()));
    assert_eq!(
        cleared,
        Ok(true),
        "the dead letter stayed after the document was accepted"
    );
    s.expect_fresh_build("after the rejected document was accepted");
}

#[test]
fn an_injected_failing_fetch_and_an_injected_panicking_fetch_lose_nothing() {
    let mut s = bed("f_inject", Mode::Wal, "");
    s.start_daemon_with_env(&[(
        "FAILPOINTS",
        "fetch-keys=1*return(injected failure)->2*off->1*panic(injected panic)",
    )]);
    for (i, id) in ["1", "2", "3"].iter().enumerate() {
        let title = format!("Changed {i}");
        s.sql(&format!(
            "UPDATE book SET title = '{title}' WHERE id = {id}"
        ));
        let seen = poll(Duration::from_secs(30), || {
            s.daemon.as_mut().unwrap().check_alive()?;
            Ok(s.os
                .doc("book", id)
                .is_some_and(|d| d["book_title"] == title.as_str()))
        });
        assert_eq!(
            seen,
            Ok(true),
            "change {i} never reached the index\n{}",
            s.daemon().log_tail()
        );
    }
    let log = s.daemon().log();
    assert!(
        log.contains("injected failure"),
        "the failure was not injected\n{log}"
    );
    assert!(
        log.contains("panicked: injected panic"),
        "the panic was not reported\n{log}"
    );
    s.expect_fresh_build("after an injected failure and an injected panic");
    report_outages(&mut s, "injected faults");
}

#[test]
fn a_daemon_started_before_its_search_engine_waits_for_it_then_syncs() {
    let mut s = bed("f_wait", Mode::Wal, "");
    let port = s.os.port();
    s.os.kill();
    let mut d = Daemon::start(&s.work, "daemon.log");
    let waiting = poll(START_TIMEOUT, || {
        d.check_alive()?;
        Ok(d.log().contains("waiting for the search engine at"))
    });
    assert_eq!(
        waiting,
        Ok(true),
        "the daemon must say what it waits for\n{}",
        d.log_tail()
    );
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("waiting for"))
        .unwrap()
        .to_owned();
    eprintln!("{line}");
    assert!(
        line.contains(&format!("127.0.0.1:{port}")),
        "names the engine: {line}"
    );
    s.os = Osmem::start_on(port);
    s.daemon = Some(d);
    s.expect(&common::expected_documents(), "once the engine is up");
    assert!(s.daemon().log().contains("is up after"));
}
