//! Zero-downtime schema migrations on real PostgreSQL and osmem-server: schema.json changes
//! (a child node added, a column dropped, a mapping type changed, a transform changed) while a
//! mutation storm runs across the fixture's tables; the daemon is signalled (SIGHUP) or
//! restarted, builds the new physical index beside the live one, and swaps the alias. A poller
//! reading through the alias every 50 ms must never see the count drop or an `_id` disappear
//! (the storm deletes no book), and at the end the alias serves exactly what a fresh full build
//! of the new definition gives, and the old physical index is gone. Also: SIGKILL during the
//! backfill and during the swap, and adopting a concrete index of an earlier deployment.

mod common;
mod harness;

use common::daemon::{await_documents, differences, fresh_build_with, poll, Daemon, Mode};
use common::stream::{Stream, CATCH_UP_TIMEOUT};
use harness::http_request;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INDICES: [&str; 2] = ["book", "edition"];

/// The new definition of `book`: a child node added, a column dropped, a mapping type changed,
/// a transform changed.
fn changed_schema(schema: &str) -> String {
    let edits = [
        ("\"price\",\n", ""),
        ("\"book_title\": {\n                        \"type\": \"text\"", "\"book_title\": {\n                        \"type\": \"keyword\""),
        ("\"-\": \"\"", "\"-\": \".\""),
        (
            "\"children\": [\n                {\n                    \"table\": \"Publisher\"",
            "\"children\": [\n                {\"table\": \"chapter\", \"label\": \"chapter_titles\", \"columns\": [\"title\"],\n                 \"relationship\": {\"variant\": \"scalar\", \"type\": \"one_to_many\"}},\n                {\n                    \"table\": \"Publisher\"",
        ),
    ];
    let mut out = schema.to_owned();
    for (from, to) in edits {
        assert!(
            out.contains(from),
            "the fixture schema changed: {from:?} not found"
        );
        out = out.replacen(from, to, 1);
    }
    out
}

/// Changes across the fixture's tables, one every few milliseconds, none deleting a book.
struct Storm {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Storm {
    fn start(s: &Stream) -> Storm {
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (port, db) = (s.pg.port(), s.db.clone());
        let (stop2, done2) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(
                    &format!("host=127.0.0.1 port={port} user=postgres dbname={db}"),
                    tokio_postgres::NoTls,
                )
                .await
                .expect("storm connection");
                tokio::spawn(conn);
                let mut n = 0u64;
                while !stop2.load(Ordering::SeqCst) {
                    n += 1;
                    let sql = match n % 5 {
                        0 => format!("INSERT INTO book (id, isbn, title, publisher_id, price, status, in_print) VALUES ({}, 'storm-{n}', 'Storm {n}', 1, 1.50, 'published', true)", 10_000 + n),
                        1 => format!("UPDATE book SET title = 'Title {n}' WHERE id = {}", 1 + n % 4),
                        2 => format!("INSERT INTO chapter (id, book_id, title) VALUES ({}, {}, 'Chapter {n}')", 100_000 + n, 1 + n % 3),
                        3 => format!("UPDATE review SET rating = {} WHERE id = 1", 1 + n % 5),
                        _ => format!("UPDATE author SET name = 'Author {n}' WHERE id = {}", 1 + n % 6),
                    };
                    client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                    done2.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        Storm {
            stop,
            done,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("storm thread");
        }
        self.done.load(Ordering::SeqCst)
    }
}

/// What the poller saw through the alias.
#[derive(Debug, Default)]
struct Trace {
    polls: usize,
    lowest: usize,
    highest: usize,
    /// Drops of the count, ids that disappeared, failed reads.
    violations: Vec<String>,
}

/// Reads `book` through the alias every 50 ms; an id seen once must stay, the count must not
/// drop, and every read must succeed.
struct Poller {
    stop: Arc<AtomicBool>,
    trace: Arc<Mutex<Trace>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn ids_through(port: u16, alias: &str) -> Result<BTreeSet<String>, String> {
    let query = br#"{"size": 10000, "_source": false, "query": {"match_all": {}}}"#;
    let (status, body) = http_request(
        port,
        "POST",
        &format!("/{alias}/_search"),
        "application/json",
        query,
    )
    .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(v["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["_id"].as_str().map(String::from))
        .collect())
}

impl Poller {
    fn start(port: u16) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let trace = Arc::new(Mutex::new(Trace {
            lowest: usize::MAX,
            ..Trace::default()
        }));
        let (stop2, trace2) = (stop.clone(), trace.clone());
        let thread = std::thread::spawn(move || {
            let mut last: Option<BTreeSet<String>> = None;
            while !stop2.load(Ordering::SeqCst) {
                let read = ids_through(port, "book");
                let mut t = trace2.lock().unwrap();
                t.polls += 1;
                match read {
                    Err(e) => t.violations.push(format!("read failed: {e}")),
                    Ok(ids) => {
                        t.lowest = t.lowest.min(ids.len());
                        t.highest = t.highest.max(ids.len());
                        if let Some(prev) = &last {
                            if ids.len() < prev.len() {
                                t.violations.push(format!(
                                    "count dropped {} -> {}",
                                    prev.len(),
                                    ids.len()
                                ));
                            }
                            let gone: Vec<&String> = prev.difference(&ids).take(5).collect();
                            if !gone.is_empty() {
                                t.violations.push(format!("ids disappeared: {gone:?}"));
                            }
                        }
                        last = Some(ids);
                    }
                }
                drop(t);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Poller {
            stop,
            trace,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Trace {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("poller thread");
        }
        std::mem::take(&mut *self.trace.lock().unwrap())
    }
}

/// Where the alias points.
fn alias_target(s: &Stream) -> Vec<String> {
    let (status, v) =
        s.os.request("GET", "/_alias/book", None)
            .expect("GET _alias");
    if status != 200 {
        return vec![];
    }
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn index_exists(s: &Stream, name: &str) -> bool {
    matches!(
        s.os.request("HEAD", &format!("/{name}"), None),
        Ok((200, _))
    )
}

/// Waits until the alias points at `to` and `gone` no longer exists.
fn await_swap(s: &mut Stream, to: &str, gone: &str) -> Duration {
    let started = Instant::now();
    let swapped = poll(CATCH_UP_TIMEOUT * 2, || {
        s.daemon.as_mut().unwrap().check_alive()?;
        Ok(alias_target(s) == vec![to.to_owned()] && !index_exists(s, gone))
    });
    assert_eq!(
        swapped,
        Ok(true),
        "the alias never moved to {to}\n{}",
        s.daemon.as_ref().unwrap().log_tail()
    );
    started.elapsed()
}

/// Waits until the alias serves what a fresh build of `schema` gives.
fn await_fresh_build(s: &mut Stream, schema: &str, what: &str) {
    let fresh = fresh_build_with(s.pg, schema, &INDICES);
    let os = &s.os;
    await_documents(
        os,
        s.daemon.as_mut().unwrap(),
        &fresh,
        CATCH_UP_TIMEOUT,
        what,
    );
}

#[test]
fn a_schema_change_under_a_mutation_storm_swaps_to_the_new_definition_with_no_gap() {
    let mut s = Stream::started("mig_storm", Mode::Wal);
    assert_eq!(
        alias_target(&s),
        vec!["book-1"],
        "a fresh deployment is an alias over book-1"
    );
    let storm = Storm::start(&s);
    let poller = Poller::start(s.os.port());
    std::thread::sleep(Duration::from_millis(500));
    let new_schema = changed_schema(&std::fs::read_to_string(&s.work.schema).unwrap());
    s.work.write_schema(&new_schema);
    let signalled = Instant::now();
    common::daemon::signal(s.daemon.as_ref().unwrap().pid(), "HUP");
    let took = await_swap(&mut s, "book-2", "book-1");
    let streamed = storm.done.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let total = storm.finish();
    let trace = poller.finish();
    let log = s.daemon.as_ref().unwrap().log();
    let backfill = log
        .lines()
        .find(|l| l.contains("migration backfill done"))
        .unwrap_or("")
        .to_owned();
    eprintln!(
        "migration: signalled to swap in {:?} ({:?} after the signal); {streamed} storm statements by then, {total} in all; \
         poller: {} reads, lowest count {}, highest {}; {backfill}",
        took,
        signalled.elapsed(),
        trace.polls,
        trace.lowest,
        trace.highest
    );
    assert!(
        trace.violations.is_empty(),
        "readers saw a gap: {:?}",
        trace.violations
    );
    assert!(
        trace.polls > 10,
        "the poller must have read during the migration"
    );
    await_fresh_build(&mut s, &new_schema, "after the migration");
    let mapping = s.os.mappings("book");
    assert_eq!(
        mapping["properties"]["book_title"]["type"], "keyword",
        "the new mapping is live"
    );
    assert!(differences(&s.os, &fresh_build_with(s.pg, &new_schema, &INDICES)).is_empty());
}

/// The library fixture with many more books, so a backfill takes long enough to be killed.
fn big_bed(prefix: &str) -> Stream {
    let more = "INSERT INTO book (id, isbn, title, publisher_id, price, status, in_print)
                SELECT 1000 + g, 'isbn-' || g, 'Generated ' || g, 1 + g % 3, g % 100, 'published', true
                FROM generate_series(1, 3000) g;";
    let s = Stream::with_setup(prefix, Mode::Wal, more);
    s.work
        .append_toml("[resilience]\nretry_initial_ms = 100\nretry_max_ms = 1000\n");
    s
}

fn slot_file(s: &Stream, suffix: &str) -> std::path::PathBuf {
    let slot = pgsync_rs::source::slot::slot_name("pgsync", &s.db, "book");
    s.work
        .dir
        .path()
        .join("state")
        .join(format!("{slot}{suffix}.json"))
}

#[test]
fn a_migration_killed_during_its_backfill_and_during_its_swap_ends_in_the_same_state() {
    let mut s = big_bed("mig_kill");
    s.start_daemon();
    await_swap(&mut s, "book-1", "book-0");
    let new_schema = changed_schema(&std::fs::read_to_string(&s.work.schema).unwrap());
    s.work.write_schema(&new_schema);
    s.daemon.as_mut().unwrap().kill();
    s.daemon = None;
    // Slow writes: the backfill of 3004 books takes seconds.
    let slow = [("FAILPOINTS", "write=return(30)")];
    let mut d = Daemon::start_with_env(&s.work, "daemon.log", &slow);
    let side = slot_file(&s, ".migration");
    let part_way = poll(CATCH_UP_TIMEOUT, || {
        d.check_alive()?;
        let text = std::fs::read_to_string(&side).unwrap_or_default();
        Ok(text.contains("\"done\":true") && text.contains("\"done\":false"))
    });
    assert_eq!(
        part_way,
        Ok(true),
        "never saw the backfill part-way\n{}",
        d.log_tail()
    );
    d.kill();
    assert_eq!(
        alias_target(&s),
        vec!["book-1"],
        "a killed backfill leaves the alias alone"
    );
    s.sql("UPDATE book SET title = 'During the kill' WHERE id = 2");
    // Resume, and kill again between the swap and its record.
    let pause = [("FAILPOINTS", "after-swap=return(20000)")];
    let mut d = Daemon::start_with_env(&s.work, "daemon.log", &pause);
    let paused = poll(CATCH_UP_TIMEOUT * 2, || {
        d.check_alive()?;
        Ok(d.log().contains("point=\"after-swap\"") || d.log().contains("point=after-swap"))
    });
    assert_eq!(paused, Ok(true), "never reached the swap\n{}", d.log_tail());
    assert!(
        d.log().contains("resuming the migration"),
        "the backfill resumed\n{}",
        d.log_tail()
    );
    d.kill();
    assert_eq!(
        alias_target(&s),
        vec!["book-2"],
        "the swap itself is atomic and done"
    );
    s.start_daemon();
    await_swap(&mut s, "book-2", "book-1");
    assert!(s
        .daemon
        .as_ref()
        .unwrap()
        .log()
        .contains("had swapped the alias before it stopped"));
    await_fresh_build(&mut s, &new_schema, "after two kills");
}

#[test]
fn a_concrete_index_of_an_earlier_deployment_is_adopted_without_downtime() {
    let mut s = Stream::with_setup("mig_adopt", Mode::Wal, "");
    // An earlier deployment wrote a concrete index `book` (as PGSync does).
    s.work
        .pgsync(&["run", "--once", "--full"])
        .assert_code(0, "earlier deployment");
    assert!(index_exists(&s, "book") && alias_target(&s).is_empty());
    let poller = Poller::start(s.os.port());
    std::thread::sleep(Duration::from_millis(300));
    s.start_daemon();
    await_swap(&mut s, "book-1", "book-nothing");
    std::thread::sleep(Duration::from_millis(300));
    let trace = poller.finish();
    eprintln!(
        "adoption: {} reads, lowest count {}",
        trace.polls, trace.lowest
    );
    assert!(
        trace.violations.is_empty(),
        "readers saw a gap: {:?}",
        trace.violations
    );
    assert!(
        trace.lowest >= 4,
        "the concrete index served until the swap"
    );
    s.sql("UPDATE book SET title = 'After adoption' WHERE id = 1");
    let schema = std::fs::read_to_string(&s.work.schema).unwrap();
    await_fresh_build(&mut s, &schema, "after adopting the concrete index");
}

#[test]
fn plan_says_what_a_changed_schema_does_and_reindex_rebuilds_an_unchanged_one() {
    let mut s = Stream::started("mig_plan", Mode::Wal);
    let plan = s.work.pgsync(&["plan"]);
    plan.assert_code(0, "plan");
    assert!(
        plan.stdout.contains("index book: unchanged (live: book-1)"),
        "{}",
        plan.output()
    );
    let schema = std::fs::read_to_string(&s.work.schema).unwrap();
    s.work.write_schema(&changed_schema(&schema));
    let plan = s.work.pgsync(&["plan"]);
    assert!(
        plan.stdout.contains("index book: rebuild with no downtime"),
        "{}",
        plan.output()
    );
    assert!(
        plan.stdout.contains("- nodes.columns") || plan.stdout.contains("nodes.columns"),
        "{}",
        plan.output()
    );
    assert!(
        plan.stdout.contains("index edition: unchanged"),
        "{}",
        plan.output()
    );
    // An additive change of the document-level mapping alone applies in place.
    let additive = schema.replacen(
        "\"authors\": {\n                \"type\": \"nested\"\n            }",
        "\"authors\": {\n                \"type\": \"nested\"\n            },\n            \"extra_note\": {\"type\": \"text\"}",
        1,
    );
    assert_ne!(additive, schema);
    s.work.write_schema(&additive);
    let plan = s.work.pgsync(&["plan"]);
    assert!(
        plan.stdout
            .contains("index book: change in place on book-1"),
        "{}",
        plan.output()
    );
    s.work.write_schema(&schema);
    // Reindex with the same definition: a new physical index, swapped in while running.
    let r = s.work.pgsync(&["reindex", "book"]);
    r.assert_code(0, "reindex");
    await_swap(&mut s, "book-2", "book-1");
    await_fresh_build(&mut s, &schema, "after reindex");
}
