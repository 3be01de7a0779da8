//! End-to-end initial sync: the `library` fixture is loaded into a real PostgreSQL, `pgsync run
//! --once` writes it to a real osmem-server, and every document read back must equal
//! tests/fixtures/library/expected.json exactly (written by hand from setup.sql).

mod common;
mod harness;

use common::{
    assert_documents, expected_documents, library_schema, load_library, LibraryBed, PgsyncConfig,
    Workdir,
};
use harness::{free_port, http_request, shared_postgres, Osmem};
use std::collections::BTreeMap;

/// A database with the fixture, a private osmem, and a work dir whose config points at both.
struct Library {
    db: String,
    os: Osmem,
    work: Workdir,
}

fn library(prefix: &str) -> Library {
    let LibraryBed { db, os, work, .. } = LibraryBed::new(prefix);
    Library { db, os, work }
}

impl Library {
    /// Asserts both indices hold exactly the expected documents.
    fn assert_all_expected(&self) {
        for (index, docs) in expected_documents() {
            assert_documents(&index, &self.os.all_docs(&index), &docs);
        }
    }
}

#[test]
fn initial_sync_writes_exactly_the_expected_documents() {
    let lib = library("initial_sync");
    let run = lib.work.pgsync(&["run", "--once"]);
    run.assert_code(0, "pgsync run --once");
    lib.assert_all_expected();
    assert_eq!(lib.os.count("book"), 4);
    assert_eq!(lib.os.count("edition"), 5);
}

#[test]
fn numeric_values_keep_their_scale_in_the_stored_source() {
    let lib = library("numeric_scale");
    lib.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "pgsync run --once");
    // osmem stores `_source` as sent (compacted), so the raw reply shows the number's text.
    for (id, text) in [
        ("1", "\"price\":12.50"),
        ("2", "\"price\":9.99"),
        ("3", "\"price\":15.00"),
    ] {
        let (status, body) = http_request(
            lib.os.port(),
            "GET",
            &format!("/book/_doc/{id}"),
            "application/json",
            b"",
        )
        .expect("GET document");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(text),
            "book {id} should contain {text}: {body}"
        );
    }
}

#[test]
fn transform_and_document_mappings_are_applied_to_the_created_index() {
    let lib = library("mappings");
    lib.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "pgsync run --once");
    let mapping = lib.os.mappings("book");
    let props = &mapping["properties"];
    assert_eq!(props["isbn"]["type"], "keyword", "{mapping}");
    assert_eq!(props["book_title"]["type"], "text", "{mapping}");
    assert_eq!(props["authors"]["type"], "nested", "{mapping}");
    assert_eq!(
        props["reviews"]["properties"]["text"]["type"], "text",
        "{mapping}"
    );
}

#[test]
fn a_second_run_leaves_the_same_documents_and_count() {
    let lib = library("idempotent");
    lib.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "first run");
    let first: BTreeMap<_, _> = ["book", "edition"]
        .map(|i| (i, lib.os.all_docs(i)))
        .into_iter()
        .collect();
    lib.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "second run");
    lib.assert_all_expected();
    for (index, docs) in first {
        assert_documents(index, &lib.os.all_docs(index), &docs);
    }
    assert_eq!(lib.os.count("book"), 4);
    assert_eq!(lib.os.count("edition"), 5);
}

#[test]
fn recreate_replaces_the_index_so_stray_documents_are_gone() {
    let lib = library("recreate");
    lib.work
        .pgsync(&["run", "--once"])
        .assert_code(0, "first run");
    lib.os.put_json(
        "/book/_doc/stray",
        &serde_json::json!({"book_title": "not in PostgreSQL"}),
    );
    lib.os.put_json(
        "/edition/_doc/9%7C9",
        &serde_json::json!({"format": "stray"}),
    );
    assert_eq!(lib.os.count("book"), 5);
    let run = lib.work.pgsync(&["run", "--once", "--recreate"]);
    run.assert_code(0, "pgsync run --once --recreate");
    lib.assert_all_expected();
    assert_eq!(lib.os.count("book"), 4);
    assert_eq!(lib.os.count("edition"), 5);
    // The recreated index got the schema's mapping again.
    let mapping = lib.os.mappings("book");
    assert_eq!(mapping["properties"]["isbn"]["type"], "keyword");
}

/// The library fixture with `copies` mapped as a short: edition 1|2's printing of 200000 copies
/// cannot be stored; every other value (5000, 2500, 100, null) can.
fn library_with_one_rejected_document(prefix: &str) -> Library {
    let lib = library(prefix);
    let schema = library_schema(&lib.db);
    let anchor = "\"index\": \"edition\",";
    assert!(schema.contains(anchor));
    let schema = schema.replace(
        anchor,
        &format!(
            "{anchor} \"mapping\": {{\"printings\": {{\"properties\": {{\"copies\": {{\"type\": \"short\"}}}}}}}},"
        ),
    );
    lib.work.write_schema(&schema);
    lib
}

/// Every document but edition 1|2 is in the engine.
fn assert_all_but_the_rejected_one(lib: &Library) {
    let mut expected = expected_documents();
    expected.get_mut("edition").unwrap().remove("1|2");
    for (index, docs) in expected {
        assert_documents(&index, &lib.os.all_docs(&index), &docs);
    }
}

#[test]
fn a_rejected_document_goes_to_the_dead_letter_index_with_its_reason_and_the_rest_is_written() {
    let lib = library_with_one_rejected_document("deadletter");
    let run = lib.work.pgsync(&["run", "--once"]);
    run.assert_code(0, "a dead-lettered document does not fail the run");
    assert!(
        run.stdout
            .contains("1 rejected document(s) recorded in index edition-dead-letter"),
        "{}",
        run.output()
    );
    assert_all_but_the_rejected_one(&lib);
    let entries = lib.os.all_docs("edition-dead-letter");
    assert_eq!(
        entries.keys().collect::<Vec<_>>(),
        vec!["1|2"],
        "{entries:?}"
    );
    let e = &entries["1|2"];
    assert_eq!(e["index"], "edition");
    assert_eq!(e["status"], 400);
    assert_eq!(e["position"], "initial sync");
    assert!(
        e["reason"].as_str().unwrap().contains("printings.copies"),
        "{e}"
    );
    assert_eq!(e["document"]["printings"][0]["copies"], 200000, "{e}");
    assert!(lib.os.all_docs("book-dead-letter").is_empty());
}

#[test]
fn with_on_rejected_fail_a_rejected_document_fails_the_run_naming_its_id_and_reason() {
    let lib = library_with_one_rejected_document("rejected");
    lib.work
        .append_toml("[dead_letter]\non_rejected = \"fail\"\n");
    let run = lib.work.pgsync(&["run", "--once"]);
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "a rejected document must fail the run\n{}",
        run.output()
    );
    assert!(
        run.stderr.contains("1|2"),
        "stderr must name the rejected _id 1|2\n{}",
        run.output()
    );
    assert!(
        run.stderr.contains("printings.copies") || run.stderr.contains("200000"),
        "stderr must give the engine's reason (field printings.copies, value 200000)\n{}",
        run.output()
    );
    assert!(
        run.stderr.contains("on_rejected"),
        "the hint names the key\n{}",
        run.output()
    );
    for id in ["1|1", "2|1", "3|1", "3|2"] {
        let line = run.stderr.lines().find(|l| l.contains(id));
        assert!(
            line.is_none(),
            "{id} was not rejected, yet stderr names it: {line:?}"
        );
    }
}

#[test]
fn an_unreachable_postgres_is_named_by_host_and_port_without_the_password() {
    let os = Osmem::start();
    let port = free_port();
    let password = "pg-Secret-4711";
    let mut cfg = PgsyncConfig::new(port, os.url());
    cfg.pg_password = Some(password.into());
    cfg.pg_connect_timeout_secs = Some(5);
    let work = Workdir::new(&cfg, &library_schema("nowhere"));
    for args in [&["run", "--once"][..], &["validate"][..]] {
        let run = work.pgsync(args);
        assert!(
            matches!(run.code, Some(c) if c != 0),
            "pgsync {args:?} must fail\n{}",
            run.output()
        );
        let target = format!("127.0.0.1:{port}");
        assert!(
            run.stderr.contains(&target),
            "pgsync {args:?}: stderr must name {target}\n{}",
            run.output()
        );
        assert!(
            !run.stderr.contains(password) && !run.stdout.contains(password),
            "pgsync {args:?} printed the password\n{}",
            run.output()
        );
    }
}

#[test]
fn an_unreachable_postgres_url_is_reported_with_its_password_masked() {
    let os = Osmem::start();
    let port = free_port();
    let password = "url-Secret-2718";
    let work = Workdir::new(
        &PgsyncConfig::new(5432, os.url()),
        &library_schema("nowhere"),
    );
    // Swap host/port for a URL carrying the password.
    let toml = std::fs::read_to_string(&work.config).unwrap().replace(
        "[postgres]\n",
        &format!(
            "[postgres]\nurl = \"postgres://postgres:{password}@127.0.0.1:{port}/postgres\"\n"
        ),
    );
    std::fs::write(&work.config, toml).unwrap();
    let run = work.pgsync(&["run", "--once"]);
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "must fail\n{}",
        run.output()
    );
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")),
        "stderr must name 127.0.0.1:{port}\n{}",
        run.output()
    );
    assert!(
        !run.stderr.contains(password) && !run.stdout.contains(password),
        "the URL's password was printed\n{}",
        run.output()
    );
}

#[test]
fn an_unreachable_search_engine_is_named_by_url_without_the_password() {
    let pg = shared_postgres();
    let db = load_library(pg, "search_down");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let password = "search-Secret-0815";
    let mut cfg = PgsyncConfig::new(pg.port(), &url);
    cfg.search_credentials = Some(("elastic".into(), password.into()));
    cfg.search_timeout_secs = Some(5);
    let work = Workdir::new(&cfg, &library_schema(&db));
    let run = work.pgsync(&["run", "--once"]);
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "must fail\n{}",
        run.output()
    );
    assert!(
        run.stderr.contains(&url),
        "stderr must name {url}\n{}",
        run.output()
    );
    assert!(
        !run.stderr.contains(password) && !run.stdout.contains(password),
        "the search password was printed\n{}",
        run.output()
    );
}
