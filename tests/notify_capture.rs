//! Trigger capture (`[capture] mode = "notify"`) on real PostgreSQL and osmem-server: what
//! bootstrap installs and teardown removes, catching up after downtime from the change log, a
//! transaction that commits after a later one is not skipped, and the log is emptied once its
//! documents are written. The change cases shared with WAL mode live in tests/streaming.rs.

mod common;
mod harness;

use common::daemon::{await_documents, set_capture_mode, Daemon, IndexDocs, Mode};
use common::{LibraryBed, Workdir};
use harness::{Osmem, Postgres};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

struct Setup {
    pg: &'static Postgres,
    db: String,
    os: Osmem,
    work: Workdir,
}

fn setup(prefix: &str) -> Setup {
    let LibraryBed { pg, db, os, work } = LibraryBed::new(prefix);
    set_capture_mode(&work, Mode::Notify);
    Setup { pg, db, os, work }
}

impl Setup {
    fn sql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql)
    }

    fn fresh_build(&self) -> IndexDocs {
        common::daemon::fresh_library_build(self.pg, &self.db)
    }

    fn streaming_daemon(&self, log: &str) -> Daemon {
        let mut d = Daemon::start(&self.work, log);
        harness::wait_until_blocking(CONVERGE, "the daemon streams both indices", || {
            d.check_alive().unwrap_or_else(|e| panic!("{e}"));
            d.streams("book") && d.streams("edition")
        });
        d
    }

    /// Rows left in the change logs of both indices.
    fn log_rows(&self) -> i64 {
        let logs = self.sql(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'pgsync\\_%\\_log'",
        );
        let logs: Vec<&str> = logs.lines().collect();
        assert_eq!(logs.len(), 2, "one change log per index: {logs:?}");
        logs.iter()
            .map(|t| {
                self.sql(&format!("SELECT count(*) FROM public.\"{t}\""))
                    .trim()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    }
}

/// Our triggers (name ends in `_row` / `_trunc` and starts with the prefix) on the database.
fn our_triggers(s: &Setup) -> Vec<String> {
    s.sql(
        "SELECT c.relname || ':' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgsync\\_%' ORDER BY 1",
    )
    .lines()
    .map(String::from)
    .collect()
}

#[test]
fn notify_bootstrap_installs_triggers_once_and_teardown_removes_them() {
    let s = setup("notify_boot");
    let out = s.work.pgsync(&["bootstrap"]);
    out.assert_code(0, "pgsync bootstrap");
    assert!(out.stdout.contains("(created)"), "{}", out.output());
    let triggers = our_triggers(&s);
    // book index: 7 tables (its view book_rating is covered by its base table review), edition
    // index: 3 tables; a row and a TRUNCATE trigger on each.
    assert_eq!(triggers.len(), 2 * (7 + 3), "{triggers:#?}");
    assert!(out.stdout.contains("on 7 table(s)"), "{}", out.output());
    let oids = s.sql("SELECT string_agg(oid::text, ',' ORDER BY oid) FROM pg_trigger WHERE tgname LIKE 'pgsync\\_%'");

    let again = s.work.pgsync(&["bootstrap"]);
    again.assert_code(0, "second pgsync bootstrap");
    assert!(again.stdout.contains("(exists)"), "{}", again.output());
    assert!(!again.stdout.contains("(created)"), "{}", again.output());
    assert_eq!(
        oids,
        s.sql("SELECT string_agg(oid::text, ',' ORDER BY oid) FROM pg_trigger WHERE tgname LIKE 'pgsync\\_%'"),
        "a second bootstrap must not re-create the triggers"
    );
    // No slot or publication in this mode.
    assert_eq!(s.sql("SELECT count(*) FROM pg_publication").trim(), "0");

    s.work
        .pgsync(&["teardown"])
        .assert_code(0, "pgsync teardown");
    assert!(our_triggers(&s).is_empty(), "{:?}", our_triggers(&s));
    assert_eq!(
        s.sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'pgsync\\_%'")
            .trim(),
        "0",
        "change logs left behind"
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM pg_proc WHERE proname LIKE 'pgsync\\_%'")
            .trim(),
        "0",
        "trigger functions left behind"
    );
}

#[test]
fn changes_made_while_the_daemon_is_down_are_applied_on_restart() {
    let s = setup("notify_down");
    let mut d = s.streaming_daemon("daemon.log");
    assert!(
        d.terminate(Duration::from_secs(30)).success(),
        "{}",
        d.log_tail()
    );

    // With nobody listening: a rename that fans out, a root delete, a root insert, a key change.
    s.sql("UPDATE author SET name = 'Gabo' WHERE id = 1");
    s.sql(
        "DELETE FROM book_author WHERE book_id = 2; DELETE FROM chapter WHERE book_id = 2; \
           DELETE FROM review WHERE book_id = 2; DELETE FROM edition_printing WHERE book_id = 2; \
           DELETE FROM edition WHERE book_id = 2; DELETE FROM book WHERE id = 2",
    );
    s.sql(
        "INSERT INTO book (id, isbn, title, publisher_id, status) \
           SELECT 90, '978-0000000090', 'Caught Up', publisher_id, status FROM book WHERE id = 1",
    );
    s.sql("UPDATE book SET id = 91 WHERE id = 90");
    assert!(s.log_rows() > 0, "the triggers logged nothing");

    let expected = s.fresh_build();
    assert!(expected["book"].contains_key("91") && !expected["book"].contains_key("2"));
    let mut d = s.streaming_daemon("daemon.log");
    await_documents(&s.os, &mut d, &expected, CONVERGE, "after restart");
    assert!(
        d.terminate(Duration::from_secs(30)).success(),
        "{}",
        d.log_tail()
    );
    assert_eq!(s.log_rows(), 0, "change log not emptied");
}

#[test]
fn a_transaction_that_commits_after_a_later_one_is_not_skipped() {
    let s = setup("notify_late");
    let mut d = s.streaming_daemon("daemon.log");
    let url = s.pg.url(&s.db);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            c
        };
        let early = connect().await;
        let late = connect().await;
        // `early` takes the smaller transaction id and its log row the smaller id, but commits last.
        early.batch_execute("BEGIN").await.unwrap();
        early
            .batch_execute("UPDATE book SET title = 'Early Writer' WHERE id = 1")
            .await
            .unwrap();
        late.batch_execute("UPDATE book SET title = 'Late Writer' WHERE id = 3")
            .await
            .unwrap();
        // Give the daemon the chance to read past the late row while the early one is open.
        tokio::time::sleep(Duration::from_millis(500)).await;
        early.batch_execute("COMMIT").await.unwrap();
    });
    let expected = s.fresh_build();
    assert_eq!(expected["book"]["1"]["book_title"], "Early Writer");
    assert_eq!(expected["book"]["3"]["book_title"], "Late Writer");
    await_documents(&s.os, &mut d, &expected, CONVERGE, "after both commits");
}

#[test]
fn truncate_and_key_changes_in_notify_mode_match_a_fresh_build() {
    let s = setup("notify_trunc");
    let mut d = s.streaming_daemon("daemon.log");
    s.sql("TRUNCATE chapter");
    s.sql("UPDATE \"press\".\"Publisher\" SET \"Name\" = 'Penguin' WHERE id = 1");
    s.sql("TRUNCATE edition_printing");
    let expected = s.fresh_build();
    await_documents(&s.os, &mut d, &expected, CONVERGE, "after truncates");
    assert!(
        d.terminate(Duration::from_secs(30)).success(),
        "{}",
        d.log_tail()
    );
}

/// An application role that may write the tables but has no right on the change log (nor to
/// create anything) still has its changes captured: the trigger functions run as the role that
/// bootstrapped them, with a pinned search_path.
#[test]
fn changes_by_an_application_role_without_rights_on_the_change_log_are_captured() {
    let s = setup("notify_app_role");
    let mut d = s.streaming_daemon("daemon.log");
    let role = format!("app_{}", s.db);
    s.sql(&format!(
        "CREATE ROLE {role};
         GRANT USAGE ON SCHEMA public, press TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, press TO {role};"
    ));
    let logs = s.sql(
        "SELECT string_agg(format('public.%I', relname), ', ') FROM pg_class \
         WHERE relkind = 'r' AND relname LIKE 'pgsync\\_%\\_log'",
    );
    s.sql(&format!(
        "REVOKE ALL ON {logs} FROM {role}; REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
    ));
    // As the application role: the write succeeds and its trigger logs it.
    s.sql(&format!(
        "SET ROLE {role}; UPDATE book SET title = 'Written by the app' WHERE id = 1; RESET ROLE;"
    ));
    harness::wait_until_blocking(CONVERGE, "the app role's change is indexed", || {
        d.check_alive().unwrap_or_else(|e| panic!("{e}"));
        s.os.doc("book", "1")
            .is_some_and(|doc| doc["book_title"] == "Written by the app")
    });
    // The role cannot read the change log itself.
    let denied = std::process::Command::new(harness::pg_bin_dir().join("psql"))
        .args(["-X", "-At", "-d"])
        .arg(s.pg.url(&s.db))
        .arg("-c")
        .arg(format!("SET ROLE {role}; SELECT count(*) FROM {logs}"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "the role must not read the change log: {denied:?}"
    );
    d.terminate(Duration::from_secs(30));
    s.sql(&format!(
        "REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}; DROP ROLE {role};"
    ));
}
