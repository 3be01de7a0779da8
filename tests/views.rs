//! Views and materialized views as nodes (tests/fixtures/views): the daemon follows their base
//! tables in both capture modes. Every step changes rows while the daemon streams and waits until
//! the index equals, document for document, a fresh `pgsync run --once` of the rows as they are
//! then; each step also checks that the fresh build shows what the step is about, so an
//! unchanged index cannot pass.
//!
//! - `views_follow_...`: a root view and a child view over base tables (updates, deletes, rows
//!   filtered out and back in by the views' WHERE, a child moved between parents), a root view
//!   whose key no base-table change carries (whole rebuild, then the documents of rows that left
//!   the view deleted), and materialized views refreshed by the daemon, at most once per window.
//! - `user_refreshes_...`: with `capture.refresh_materialized_views = false` the daemon leaves
//!   the materialized views alone and follows the user's REFRESH (plain and CONCURRENTLY).

mod common;
mod harness;

use common::daemon::{
    active_slots, await_documents, drop_database_and_slots, fresh_build, poll, set_capture_mode,
    Daemon, IndexDocs, Mode,
};
use common::{with_database, PgsyncConfig, Workdir};
use harness::{Osmem, Postgres};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The indices of the views fixture's schema.json.
const INDICES: [&str; 3] = ["live_book", "prolific", "score"];

/// Longest wait for the daemon to start streaming, and for a change to show.
const TIMEOUT: Duration = Duration::from_secs(60);

/// `[capture]` key that leaves materialized views to the user.
const USER_REFRESHES: &str = "refresh_materialized_views = false\n";

fn fixture(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/views")
        .join(file)
}

fn schema_text(db: &str) -> String {
    let text = std::fs::read_to_string(fixture("schema.json")).expect("read schema.json");
    with_database(&text, db)
}

/// The views fixture in a fresh database, a private osmem, a work dir and the daemon.
struct Bed {
    pg: &'static Postgres,
    db: String,
    os: Osmem,
    work: Workdir,
    mode: Mode,
    /// Extra `[capture]` keys, also given to fresh builds.
    capture: String,
    daemon: Option<Daemon>,
    /// An index and its refresh count before the next step (see [`Bed::refreshing`]).
    expect_refresh: Option<(&'static str, usize)>,
}

impl Bed {
    fn new(prefix: &str, mode: Mode, capture: &str) -> Bed {
        let pg = harness::shared_postgres();
        let db = harness::unique_db_name(prefix);
        pg.create_database(&db);
        pg.psql_file(&db, fixture("setup.sql"));
        let os = Osmem::start();
        let work = Workdir::new(&PgsyncConfig::new(pg.port(), os.url()), &schema_text(&db));
        set_capture_mode(&work, mode);
        // Appended to the [capture] section set_capture_mode just wrote.
        work.append_toml(&format!(
            "{capture}\n[log]\nlevel = \"info,pgsync_rs::pipeline::views=debug\"\n"
        ));
        Bed {
            pg,
            db,
            os,
            work,
            mode,
            capture: capture.to_owned(),
            daemon: None,
            expect_refresh: None,
        }
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql)
    }

    fn start(&mut self) {
        let started = Instant::now();
        let mut d = Daemon::start(&self.work, "daemon.log");
        let ready = poll(TIMEOUT, || {
            d.check_alive()?;
            let logged = INDICES.iter().all(|i| d.streams(i));
            Ok(match self.mode {
                Mode::Wal => logged && active_slots(self.pg, &self.db) == INDICES.len(),
                Mode::Notify => logged,
            })
        });
        match ready {
            Ok(true) => eprintln!("daemon streaming after {:?}", started.elapsed()),
            Ok(false) => panic!("the daemon did not start streaming\n{}", d.log_tail()),
            Err(e) => panic!("{e}"),
        }
        self.daemon = Some(d);
    }

    /// A fresh full build of the rows as they are now, with the same `[capture]` keys.
    fn fresh(&self) -> IndexDocs {
        let extra = format!("[capture]\n{}", self.capture);
        fresh_build(self.pg, &schema_text(&self.db), &INDICES, &extra)
    }

    /// Runs `sql`, checks the fresh build with `check`, and waits until the index equals it.
    fn step(&mut self, sql: &str, check: impl FnOnce(&IndexDocs)) -> IndexDocs {
        if !sql.is_empty() {
            self.sql(sql);
        }
        let fresh = self.fresh();
        check(&fresh);
        let mut what = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        if what.len() > 100 {
            what = format!(
                "{}... ({} statements)",
                &what[..80],
                sql.matches(';').count()
            );
        }
        let d = self.daemon.as_mut().expect("the daemon is running");
        await_documents(&self.os, d, &fresh, TIMEOUT, &what);
        if let Some((index, before)) = self.expect_refresh.take() {
            let after = refreshes(&self.log(), index);
            assert!(
                after > before,
                "{what}: the daemon did not refresh for index {index}"
            );
        }
        fresh
    }

    /// Makes the next [`Bed::step`] also check that the daemon refreshed a materialized view for
    /// `index` before its documents converged.
    fn refreshing(&mut self, index: &'static str) {
        self.expect_refresh = Some((index, refreshes(&self.log(), index)));
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

impl Drop for Bed {
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

fn doc<'a>(docs: &'a IndexDocs, index: &str, id: &str) -> Option<&'a Value> {
    docs.get(index).and_then(|d| d.get(id))
}

fn ids(docs: &IndexDocs, index: &str) -> Vec<String> {
    docs[index].keys().cloned().collect()
}

fn review_ids(docs: &IndexDocs, book: &str) -> Vec<i64> {
    doc(docs, "live_book", book).expect("the book's document")["reviews"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
        .unwrap_or_default()
}

/// Whole-index rebuilds the daemon logged for `index`.
fn rebuilds(log: &str, index: &str) -> usize {
    let field = format!("index={index}");
    log.lines()
        .filter(|l| l.contains("rebuilding every document") && l.contains(&field))
        .count()
}

/// Refreshes the daemon logged for `index`.
fn refreshes(log: &str, index: &str) -> usize {
    let field = format!("index={index}");
    log.lines()
        .filter(|l| l.contains("refreshed materialized view") && l.contains(&field))
        .count()
}

fn views_follow_their_base_tables(mode: Mode) {
    let mut bed = Bed::new("views", mode, "");
    bed.start();
    bed.step("", |f| {
        assert_eq!(ids(f, "live_book"), ["1", "2", "3", "4", "6"]);
        assert_eq!(ids(f, "prolific"), ["1"]);
        assert_eq!(
            review_ids(f, "1"),
            [1],
            "review 2 (rating 2) is filtered out"
        );
    });
    // The fresh builds refresh the materialized views too (a full sync with the key on); the
    // daemon's own refreshes are counted in its log where a step depends on them.
    bed.refreshing("prolific");
    bed.step("UPDATE book SET title = 'War & Peace' WHERE id = 1", |f| {
        let d = doc(f, "live_book", "1").unwrap();
        assert_eq!(d["title"], "War & Peace");
        let titles = &doc(f, "prolific", "1").unwrap()["titles"];
        assert_eq!(
            titles[0], "War & Peace",
            "the materialized child is refreshed"
        );
    });
    bed.step("UPDATE book SET status = 'draft' WHERE id = 2", |f| {
        assert!(
            doc(f, "live_book", "2").is_none(),
            "a row filtered out of the root view"
        );
    });
    bed.step("UPDATE book SET status = 'live' WHERE id = 5", |f| {
        assert!(doc(f, "live_book", "5").is_some());
        assert_eq!(
            ids(f, "prolific"),
            ["1", "3"],
            "found by rebuilding the index"
        );
    });
    bed.step("UPDATE book SET status = 'draft' WHERE id = 4", |f| {
        assert!(doc(f, "live_book", "4").is_none());
        assert_eq!(ids(f, "prolific"), ["1"], "author 3 left the view: pruned");
    });
    bed.step("UPDATE book SET status = 'live' WHERE id = 2", |f| {
        assert!(doc(f, "live_book", "2").is_some(), "back in the root view");
    });
    bed.refreshing("score");
    bed.step("UPDATE review SET rating = 1 WHERE id = 1", |f| {
        assert!(
            review_ids(f, "1").is_empty(),
            "filtered out of the child view"
        );
        assert_eq!(doc(f, "score", "1").unwrap()["total"], 3);
    });
    bed.step("UPDATE review SET rating = 5 WHERE id = 1", |f| {
        assert_eq!(review_ids(f, "1"), [1], "back in the child view");
    });
    bed.refreshing("score");
    bed.step("UPDATE review SET book_id = 3 WHERE id = 3", |f| {
        assert_eq!(review_ids(f, "3"), [3, 4], "moved to its new parent");
        assert!(review_ids(f, "2").is_empty(), "and gone from its old one");
        assert!(
            doc(f, "score", "2").is_none(),
            "book 2's last review left it"
        );
        assert_eq!(doc(f, "live_book", "2").unwrap()["score"], Value::Null);
    });
    bed.step(
        "BEGIN; DELETE FROM review WHERE book_id = 5; DELETE FROM book WHERE id = 5; COMMIT;",
        |f| {
            assert!(doc(f, "live_book", "5").is_none());
            assert!(doc(f, "score", "5").is_none());
        },
    );
    bed.step("UPDATE author SET name = 'Lev Tolstoy' WHERE id = 1", |f| {
        assert_eq!(doc(f, "prolific", "1").unwrap()["name"], "Lev Tolstoy");
        assert_eq!(
            doc(f, "live_book", "6").unwrap()["author"]["name"],
            "Lev Tolstoy"
        );
    });
    bed.step(
        "BEGIN; INSERT INTO book VALUES (7, 'Hadji Murat', 1, 'live'); \
         INSERT INTO review VALUES (7, 7, 4, 'short'); COMMIT;",
        |f| {
            assert_eq!(review_ids(f, "7"), [7]);
            let titles = &doc(f, "prolific", "1").unwrap()["titles"];
            assert_eq!(titles[3], "Hadji Murat");
        },
    );
    burst_costs_one_refresh_per_window(&mut bed);
    // Only the index whose key no book change carries needed whole rebuilds.
    let log = bed.log();
    assert_eq!(
        rebuilds(&log, "live_book"),
        0,
        "live_book was not narrowed\n{log}"
    );
    assert_eq!(rebuilds(&log, "score"), 0, "score was not narrowed\n{log}");
    assert!(
        rebuilds(&log, "prolific") > 0,
        "prolific never rebuilt?\n{log}"
    );
}

/// 200 single-row transactions on a base table of the materialized views: the daemon refreshes
/// per window of changes, far fewer times than there are changes.
fn burst_costs_one_refresh_per_window(bed: &mut Bed) {
    let before = refreshes(&bed.log(), "score");
    let mut burst = String::new();
    for i in 0..200 {
        burst.push_str(&format!(
            "UPDATE review SET rating = {} WHERE id = 4;\n",
            1 + i % 5
        ));
    }
    burst.push_str("UPDATE review SET rating = 4 WHERE id = 4;\n");
    bed.step(&burst, |f| {
        assert_eq!(doc(f, "score", "3").unwrap()["total"], 8);
    });
    let during = refreshes(&bed.log(), "score") - before;
    eprintln!("201 changes cost {during} refreshes of review_score for index score");
    assert!(
        (1..=100).contains(&during),
        "{during} refreshes for 201 changes: not coalesced per window"
    );
}

fn user_refreshes_are_followed(mode: Mode) {
    let mut bed = Bed::new("userrefresh", mode, USER_REFRESHES);
    bed.start();
    bed.step("", |f| {
        assert_eq!(doc(f, "score", "3").unwrap()["total"], 3);
    });
    // The daemon does not refresh: the materialized view, and its documents, keep the old total,
    // while the plain view's documents follow at once.
    bed.step("UPDATE review SET rating = 5 WHERE id = 4", |f| {
        assert_eq!(doc(f, "score", "3").unwrap()["total"], 3, "not refreshed");
        assert_eq!(doc(f, "live_book", "3").unwrap()["reviews"][0]["rating"], 5);
    });
    assert_eq!(
        bed.sql("SELECT total FROM review_score WHERE book_id = 3")
            .trim(),
        "3",
        "the daemon refreshed a materialized view it was told to leave alone"
    );
    bed.step("REFRESH MATERIALIZED VIEW CONCURRENTLY review_score", |f| {
        assert_eq!(doc(f, "score", "3").unwrap()["total"], 5);
        assert_eq!(doc(f, "live_book", "3").unwrap()["score"]["total"], 5);
    });
    bed.step(
        "DELETE FROM review WHERE book_id = 4; REFRESH MATERIALIZED VIEW review_score",
        |f| {
            assert!(
                doc(f, "score", "4").is_none(),
                "its row left the view: pruned"
            );
        },
    );
    bed.step(
        "UPDATE book SET title = 'Resurrección' WHERE id = 6; REFRESH MATERIALIZED VIEW author_titles",
        |f| {
            let titles = &doc(f, "prolific", "1").unwrap()["titles"];
            assert_eq!(titles[2], "Resurrección", "plain REFRESH by the user");
        },
    );
    assert!(rebuilds(&bed.log(), "score") >= 2, "each REFRESH rebuilds");
    assert_eq!(refreshes(&bed.log(), "score"), 0, "the daemon refreshed");
}

macro_rules! view_cases {
    ($mode:expr) => {
        #[test]
        fn views_follow_their_base_tables_and_materialized_views_are_refreshed_per_window() {
            $crate::views_follow_their_base_tables($mode)
        }

        #[test]
        fn user_refreshes_of_materialized_views_are_followed_when_the_daemon_leaves_them_alone() {
            $crate::user_refreshes_are_followed($mode)
        }
    };
}

mod wal {
    view_cases!(crate::Mode::Wal);
}

mod notify {
    view_cases!(crate::Mode::Notify);
}

/// `pgsync validate` on the fixture and on two variants of it: the output lines that start with
/// `prefix`.
fn validate_lines(bed: &Bed, schema: &str, prefix: &str) -> (Option<i32>, Vec<String>, String) {
    bed.work.write_schema(schema);
    let out = bed.work.pgsync(&["validate"]);
    let lines = out
        .stdout
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(String::from)
        .collect();
    (out.code, lines, out.output())
}

#[test]
fn validate_says_how_each_view_is_followed() {
    let bed = Bed::new("viewsvalidate", Mode::Wal, "");
    let schema = schema_text(&bed.db);
    let (code, notes, out) = validate_lines(&bed, &schema, "note: ");
    assert_eq!(code, Some(0), "{out}");
    let expect = [
        "note: index live_book: a change to public.book rebuilds only the documents of the rows of public.live_book it names",
        "note: index live_book: a change to public.review rebuilds only the documents of the rows of public.good_review it names",
        "note: index prolific: a change to public.book rebuilds the whole index, then deletes the documents of rows gone from the root view",
        "note: index prolific: materialized view public.author_titles has no unique index, so the daemon refreshes it with a plain REFRESH",
        "note: index score: materialized view public.review_score is refreshed CONCURRENTLY",
    ];
    for e in expect {
        assert!(
            notes.iter().any(|n| n.starts_with(e)),
            "no line {e:?} in\n{out}"
        );
    }
    assert!(!out.contains("warning: "), "{out}");

    // A table the view reads that base_tables leaves out.
    let unlisted = schema.replace(
        r#""base_tables": ["author", "book"]"#,
        r#""base_tables": ["book"]"#,
    );
    assert_ne!(unlisted, schema);
    let (code, warnings, out) = validate_lines(&bed, &unlisted, "warning: ");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        warnings,
        ["warning: index prolific: view public.prolific reads public.author, which its base_tables \
          does not list: changes to public.author do not reach its documents (add it to base_tables)"],
        "{out}"
    );

    // Refreshes left to the user: validate says the event trigger is missing until bootstrap.
    let toml = std::fs::read_to_string(&bed.work.config).expect("read pgsync.toml");
    let user = toml.replace(
        "mode = \"wal\"",
        &format!("mode = \"wal\"\n{USER_REFRESHES}"),
    );
    assert_ne!(toml, user);
    std::fs::write(&bed.work.config, user).expect("write pgsync.toml");
    let (_, warnings, out) = validate_lines(&bed, &schema, "warning: ");
    assert_eq!(
        warnings.len(),
        3,
        "one per index with a materialized view\n{out}"
    );
    assert!(warnings[0].contains("does not exist yet"), "{out}");
    bed.work.pgsync(&["bootstrap"]).assert_code(0, "bootstrap");
    let (_, warnings, out) = validate_lines(&bed, &schema, "warning: ");
    assert!(warnings.is_empty(), "{out}");
    std::fs::write(&bed.work.config, toml).expect("write pgsync.toml");

    // A base table that is not a table.
    let not_a_table = schema.replace(
        r#""base_tables": ["review"]"#,
        r#""base_tables": ["good_review"]"#,
    );
    let out = {
        bed.work.write_schema(&not_a_table);
        bed.work.pgsync(&["validate"])
    };
    out.assert_code(2, "validate with a view as a base table");
    assert!(
        out.stderr
            .contains("base_tables[0]: found \"public.good_review\" (relkind v: not a table"),
        "{}",
        out.output()
    );
}

#[test]
fn a_full_sync_into_an_existing_index_deletes_the_documents_of_rows_gone_from_a_root_view() {
    let bed = Bed::new("viewsresync", Mode::Wal, "");
    bed.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "first run --once");
    assert!(bed.os.all_docs("live_book").contains_key("2"));
    // Row 2 leaves the view and author 1 leaves "prolific" while nothing streams.
    bed.sql("UPDATE book SET status = 'draft' WHERE id IN (1, 2)");
    bed.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "second run --once into the same index");
    let fresh = bed.fresh();
    assert!(!fresh["live_book"].contains_key("2") && fresh["prolific"].is_empty());
    let found = common::daemon::differences(&bed.os, &fresh);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Following the user's refreshes needs an event trigger, which only a superuser may create:
/// bootstrap by another role fails and says what to do.
#[test]
fn following_user_refreshes_without_a_superuser_fails_bootstrap_saying_what_to_do() {
    let bed = Bed::new("viewsnosuper", Mode::Notify, USER_REFRESHES);
    let role = format!("app_{}", bed.db);
    bed.sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT CREATE ON SCHEMA public TO {role}; \
         GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA public TO {role};"
    ));
    let toml = std::fs::read_to_string(&bed.work.config).expect("read pgsync.toml");
    let as_role = toml.replace("user = \"postgres\"", &format!("user = \"{role}\""));
    assert_ne!(toml, as_role);
    std::fs::write(&bed.work.config, as_role).expect("write pgsync.toml");
    let out = bed.work.pgsync(&["bootstrap"]);
    let text = out.output();
    eprintln!("{text}");
    bed.sql(&format!(
        "REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}; DROP ROLE {role};"
    ));
    assert_ne!(out.code, Some(0), "{text}");
    for needle in [
        "creating event trigger",
        "public.review_score",
        "only a superuser can create event triggers",
        "capture.refresh_materialized_views = true",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
}
