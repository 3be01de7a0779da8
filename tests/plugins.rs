//! PGSync plugins end to end: the real binary, PostgreSQL and osmem-server, with a plugin package
//! written by the test into the work dir (found there as the default `[plugins] path`,
//! `./plugins`). Plugin semantics in detail (ordering, sub-packages, loading errors) are unit
//! tests in `src/plugin/tests.rs`; the fixture `book_plugins` runs in `tests/conformance.rs`.

#![cfg(feature = "plugins")]

mod common;
mod harness;

use common::daemon::{
    await_documents, confirmed_flush_lsn, drop_database_and_slots, parse_lsn, poll, sql_literal,
    Daemon, IndexDocs,
};
use common::{PgsyncConfig, Workdir};
use harness::{shared_postgres, unique_db_name, Osmem, Postgres};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `Skip` drops documents whose title starts with "skip", `Shout` adds the title in capitals,
/// `Explode` raises on titles starting with "boom"; they run in the schema's order.
const PLUGINS: &[(&str, &str)] = &[
    ("__init__.py", ""),
    (
        "gate.py",
        r#"from pgsync import plugin


class Skip(plugin.Plugin):
    name = "Skip"

    def transform(self, doc, **kwargs):
        if doc["title"].startswith("skip"):
            return None
        return doc
"#,
    ),
    ("text/__init__.py", ""),
    (
        "text/shout.py",
        r#"from pgsync import plugin


class Shout(plugin.Plugin):
    name = "Shout"

    def transform(self, doc, **kwargs):
        doc["shout"] = doc["title"].upper()
        return doc
"#,
    ),
    (
        "explode.py",
        r#"from pgsync import plugin


class Explode(plugin.Plugin):
    name = "Explode"

    def transform(self, doc, **kwargs):
        if doc["title"].startswith("boom"):
            raise ValueError(f"refusing document {kwargs['_id']}")
        return doc
"#,
    ),
];

/// A database with table `item`, a work dir whose schema lists the plugins, and the plugin
/// package in `<work dir>/plugins`.
struct Bed {
    pg: &'static Postgres,
    db: String,
    os: Osmem,
    work: Workdir,
}

impl Bed {
    fn new(prefix: &str) -> Bed {
        let pg = shared_postgres();
        let db = unique_db_name(prefix);
        pg.create_database(&db);
        pg.psql(
            &db,
            "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL);
             INSERT INTO item VALUES (1, 'alpha'), (2, 'boom'), (3, 'gamma'), (4, 'skip me');",
        );
        let os = Osmem::start();
        let schema = json!([{
            "database": db,
            "index": "item",
            "nodes": {"table": "item", "columns": ["id", "title"]},
            "plugins": ["Skip", "Shout", "Explode"],
        }]);
        let work = Workdir::new(&PgsyncConfig::new(pg.port(), os.url()), &schema.to_string());
        write_package(&work.dir.path().join("plugins"), PLUGINS);
        Bed { pg, db, os, work }
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop_database_and_slots(self.pg, &self.db);
    }
}

fn write_package(dir: &Path, files: &[(&str, &str)]) {
    for (path, source) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, source).unwrap();
    }
}

fn item(id: u32, title: &str) -> (String, serde_json::Value) {
    let doc = json!({"id": id, "title": title, "shout": title.to_uppercase()});
    (id.to_string(), doc)
}

fn docs(items: Vec<(String, serde_json::Value)>) -> IndexDocs {
    IndexDocs::from([("item".to_string(), items.into_iter().collect())])
}

#[test]
fn a_plugin_that_raises_fails_only_its_document_and_the_daemon_keeps_streaming() {
    let bed = Bed::new("plugins_raise");
    let mut daemon = Daemon::start(&bed.work, "daemon.log");

    // Initial sync: 2 raised, 4 was dropped by Skip; the others went through every plugin.
    let initial = docs(vec![item(1, "alpha"), item(3, "gamma")]);
    await_documents(&bed.os, &mut daemon, &initial, TIMEOUT, "initial sync");
    let log = daemon.log();
    for part in [
        "a plugin failed: document not indexed",
        "id=2",
        "plugin Explode failed",
        "explode.py",
        "ValueError: refusing document 2",
    ] {
        assert!(log.contains(part), "{part:?} not in the log:\n{log}");
    }

    // Streaming: a rebuilt document the plugins now drop gets nothing (no delete), one they now
    // fail on keeps its last version, the one that failed before is indexed now.
    bed.sql("UPDATE item SET title = 'skip now' WHERE id = 1");
    bed.sql("UPDATE item SET title = 'boom again' WHERE id = 3");
    bed.sql("UPDATE item SET title = 'fine now' WHERE id = 2");
    bed.sql("INSERT INTO item VALUES (5, 'epsilon')");
    let end = parse_lsn(&bed.sql("SELECT pg_current_wal_lsn()"));
    let after = docs(vec![
        item(1, "alpha"),
        item(2, "fine now"),
        item(3, "gamma"),
        item(5, "epsilon"),
    ]);
    await_documents(&bed.os, &mut daemon, &after, TIMEOUT, "changes");
    // Once the slot has passed the last change, every rebuild is written: nothing deleted 1 or 3.
    let slot = bed.sql(&format!(
        "SELECT slot_name FROM pg_replication_slots WHERE database = {}",
        sql_literal(&bed.db)
    ));
    let passed = poll(TIMEOUT, || {
        daemon.check_alive()?;
        Ok(confirmed_flush_lsn(bed.pg, &slot).is_some_and(|l| l >= end))
    });
    assert_eq!(
        passed,
        Ok(true),
        "slot {slot} never passed {end:X}\n{}",
        daemon.log_tail()
    );
    await_documents(
        &bed.os,
        &mut daemon,
        &after,
        TIMEOUT,
        "after the slot passed",
    );
    let log = daemon.log();
    assert!(
        log.contains("id=3") && log.contains("ValueError: refusing document 3"),
        "the streamed failure of 3 is not logged:\n{log}"
    );

    let status = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM: exit {status}\n{}",
        daemon.log_tail()
    );
}

#[test]
fn validate_loads_the_plugins_and_reports_a_broken_one_with_its_file_and_traceback() {
    let bed = Bed::new("plugins_validate");
    let ok = bed.work.pgsync(&["validate"]);
    ok.assert_code(0, "validate with working plugins");
    assert!(
        ok.stdout
            .contains("ok: index item: plugins Skip, Shout, Explode loaded"),
        "{}",
        ok.output()
    );

    // A document a plugin failed on goes to the dead-letter index, with the traceback; the rest
    // is indexed and the run succeeds.
    let once = bed.work.pgsync(&["run", "--once"]);
    once.assert_code(0, "run --once with a plugin raising for document 2");
    assert!(
        once.stdout
            .contains("1 rejected document(s) recorded in index item-dead-letter"),
        "{}",
        once.output()
    );
    bed.os.refresh("item");
    let found: Vec<String> = bed.os.all_docs("item").into_keys().collect();
    assert_eq!(found, ["1", "3"], "documents indexed by run --once");
    let letters = bed.os.all_docs("item-dead-letter");
    let reason = letters["2"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refusing document 2") && reason.contains("explode.py"),
        "the dead letter of document 2 carries the traceback: {reason}"
    );

    let package = bed.work.dir.path().join("plugins");
    std::fs::write(package.join("text/shout.py"), "def broken(:\n").unwrap();
    let bad = bed.work.pgsync(&["validate"]);
    bad.assert_code(2, "validate with a syntax error in a plugin module");
    for part in [
        r#"index item: plugins ["Skip", "Shout", "Explode"]"#,
        "cannot import module plugins.text.shout",
        "text/shout.py",
        "SyntaxError",
        &package.display().to_string(),
    ] {
        assert!(
            bad.stderr.contains(part),
            "{part:?} not in:\n{}",
            bad.output()
        );
    }

    std::fs::remove_dir_all(&package).unwrap();
    // Without its plugins, 2 and 4 would be indexed too.
    let missing = bed.work.pgsync(&["run", "--once"]);
    missing.assert_code(2, "run --once without the plugin package");
    for part in ["No module named 'plugins'", "PYTHONPATH", "./plugins"] {
        assert!(
            missing.stderr.contains(part),
            "{part:?} not in:\n{}",
            missing.output()
        );
    }
    let after: Vec<String> = bed.os.all_docs("item").into_keys().collect();
    assert_eq!(
        after,
        ["1", "3"],
        "run --once without its plugins must not index anything"
    );
}
