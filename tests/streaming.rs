//! End-to-end streaming: the real `pgsync run` daemon (no `--once`) against a real PostgreSQL (a
//! fresh database per test holding the `library` fixture) and a private osmem-server. Every test
//! changes rows while the daemon runs and then waits (polling, with a timeout and a readable diff)
//! until the search server holds exactly the documents it must:
//!
//! - one test per kind of change on the fixture schema, with the documents afterwards written out
//!   by hand from setup.sql and expected.json;
//! - random concurrent changes across every table, compared document for document with a fresh
//!   `pgsync run --once` of the final rows into a second server;
//! - the same after a SIGKILL in the middle of the stream and a restart;
//! - SIGTERM drains and exits 0;
//! - (wal mode) the slot's `confirmed_flush_lsn` passes a change only once it is indexed.
//!
//! Every case is a function taking the capture [`Mode`]; [`streaming_cases!`] turns them into
//! one `#[test]` each for a mode, so another mode is one line:
//! `mod notify { streaming_cases!(super::Mode::Notify); }`. The change cases ([`change_cases!`])
//! also take a [`Bed`] — a mode and a target — and run once per target on its real server
//! (Typesense, a Redis stream, NATS JetStream, a webhook receiver), read back through
//! `common::targets`.
//!
//! The random tests print their seed; `PGSYNC_TEST_SEED=<seed>` replays the same statements
//! (their interleaving across threads still varies).

mod common;
mod harness;

use common::daemon::LIBRARY_INDICES as INDICES;
use common::daemon::{
    active_slots, confirmed_flush_lsn, differences, parse_lsn, poll, sql_literal, IndexDocs, Mode,
};
use common::expected_documents;
use common::stream::{Stream, CHANGE_TIMEOUT};
use common::targets::{Bed, Target};
use common::workload::{seed, Workload, CASCADING_FOREIGN_KEYS};
use harness::{Osmem, Postgres, PostgresOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One `#[test]` per change case for `$mode`: a capture mode, or a [`Bed`] (mode and target).
macro_rules! change_cases {
    ($mode:expr) => {
        #[test]
        fn a_root_insert_creates_its_document() {
            $crate::root_insert($mode)
        }

        #[test]
        fn a_root_update_rebuilds_its_document() {
            $crate::root_update($mode)
        }

        #[test]
        fn a_root_delete_deletes_its_document() {
            $crate::root_delete($mode)
        }

        #[test]
        fn a_root_key_change_deletes_the_old_id_and_indexes_the_new() {
            $crate::root_key_change($mode)
        }

        #[test]
        fn a_child_update_reindexes_every_document_containing_it() {
            $crate::child_update_fans_out($mode)
        }

        #[test]
        fn a_child_moved_to_another_parent_fixes_both_documents() {
            $crate::child_moved($mode)
        }

        #[test]
        fn a_grandchild_change_reindexes_the_root() {
            $crate::grandchild_change($mode)
        }

        #[test]
        fn a_through_table_insert_update_and_delete_reindex_the_books() {
            $crate::through_table_changes($mode)
        }

        #[test]
        fn truncating_the_root_deletes_every_document() {
            $crate::truncate_root($mode)
        }

        #[test]
        fn truncating_a_child_table_rebuilds_the_affected_documents() {
            $crate::truncate_child($mode)
        }

        #[test]
        fn random_concurrent_changes_end_equal_to_a_fresh_build() {
            $crate::random_changes($mode)
        }

        #[test]
        fn a_daemon_killed_mid_stream_resumes_and_ends_equal_to_a_fresh_build() {
            $crate::sigkill_mid_stream($mode)
        }
    };
}

/// One `#[test]` per streaming case for capture mode `$mode`.
macro_rules! streaming_cases {
    ($mode:expr) => {
        change_cases!($mode);

        #[test]
        fn a_routed_document_is_deleted_and_moved_on_the_shard_of_its_routing() {
            $crate::routed_deletes_and_moves($mode)
        }

        #[test]
        fn sigterm_drains_and_exits_zero_with_the_right_documents() {
            $crate::sigterm_drains($mode)
        }
    };
}

mod wal {
    use super::Mode;

    streaming_cases!(Mode::Wal);

    #[test]
    fn the_slot_confirmed_flush_lsn_passes_a_change_once_it_is_indexed() {
        super::slot_advances_after_indexing()
    }

    #[test]
    fn repeated_changes_behind_a_stalled_engine_merge_into_few_writes() {
        super::changes_merge_behind_a_stalled_engine()
    }

    #[test]
    fn a_change_decoded_before_its_commit_is_visible_is_read_once_it_is() {
        super::change_decoded_before_visible()
    }
}

/// The same cases with trigger capture: both modes must produce the same index.
mod notify {
    use super::Mode;

    streaming_cases!(Mode::Notify);
}

/// The change cases against every other target, each on its real server (wal capture): the
/// documents it holds (exported, or folded from its events) must be the search engine's.
mod typesense {
    use super::{Bed, Mode, Target};

    change_cases!(Bed::new(Mode::Wal, Target::Typesense));
}

mod redis_stream {
    use super::{Bed, Mode, Target};

    change_cases!(Bed::new(Mode::Wal, Target::RedisStream));
}

mod nats {
    use super::{Bed, Mode, Target};

    change_cases!(Bed::new(Mode::Wal, Target::Nats));
}

mod webhook {
    use super::{Bed, Mode, Target};

    change_cases!(Bed::new(Mode::Wal, Target::Webhook));
}

// ---------------------------------------------------------------------------
// The test bed.

/// A `test_decoding` slot on the test database that learns where each later commit ends: the
/// position pgoutput gives the daemon for that transaction (its commit record's end LSN). Left
/// for [`drop_database_and_slots`] if a test fails before [`Probe::commits`].
struct Probe(String);

impl Probe {
    fn create(s: &Stream) -> Probe {
        let name = format!("probe_{}", s.db);
        s.sql(&format!(
            "SELECT 'created' FROM pg_create_logical_replication_slot({}, 'test_decoding')",
            sql_literal(&name)
        ));
        Probe(name)
    }

    /// End LSNs of the commits on the test database since the probe was created, in commit
    /// order; drops the probe. Only flushed WAL is decoded, and the test server runs with
    /// `synchronous_commit = off`: commit with it on to be seen at once.
    fn commits(self, s: &Stream) -> Vec<u64> {
        let out = s.sql(&format!(
            "SELECT lsn FROM pg_logical_slot_peek_changes({0}, NULL, NULL) WHERE data LIKE 'COMMIT%';
             SELECT 'dropped' FROM pg_drop_replication_slot({0});",
            sql_literal(&self.0)
        ));
        out.lines()
            .filter(|l| *l != "dropped")
            .map(parse_lsn)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Expected documents, edited by hand from expected.json.

fn doc_mut<'a>(docs: &'a mut IndexDocs, index: &str, id: &str) -> &'a mut Value {
    docs.get_mut(index)
        .and_then(|d| d.get_mut(id))
        .unwrap_or_else(|| panic!("no expected document {index}/{id}"))
}

/// Sets the field at JSON pointer `path` of document `index/id`.
fn set(docs: &mut IndexDocs, index: &str, id: &str, path: &str, value: Value) {
    let doc = doc_mut(docs, index, id);
    *doc.pointer_mut(path)
        .unwrap_or_else(|| panic!("no field {path} in expected document {index}/{id}")) = value;
}

/// The value at JSON pointer `path` of document `index/id`.
fn get(docs: &IndexDocs, index: &str, id: &str, path: &str) -> Value {
    docs[index][id]
        .pointer(path)
        .unwrap_or_else(|| panic!("no field {path} in expected document {index}/{id}"))
        .clone()
}

fn remove(docs: &mut IndexDocs, index: &str, id: &str) -> Value {
    docs.get_mut(index)
        .and_then(|d| d.remove(id))
        .unwrap_or_else(|| panic!("no expected document {index}/{id}"))
}

fn insert(docs: &mut IndexDocs, index: &str, id: &str, doc: Value) {
    docs.get_mut(index)
        .expect("index")
        .insert(id.to_string(), doc);
}

/// A book document with every column NULL but these, and no children.
fn bare_book(id: i64, isbn: &str, title: &str, summary: &str) -> Value {
    json!({
        "book_id": id, "isbn": isbn, "book_title": title, "price": null,
        "published_at": null, "updated_at": null, "release": null, "uid": null, "tags": null,
        "doc_meta": null, "doc_name": null, "doc_a,b,c_4": null, "doc_a,b,label": null,
        "extra": null, "cover": null, "status": null, "in_print": null, "summary": summary,
        "publisher": null, "translator": null, "authors": null, "chapters": null,
        "reviews": null, "rating": null
    })
}

// ---------------------------------------------------------------------------
// One kind of change each.

fn root_insert(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_root_insert", bed);
    let mut want = expected_documents();

    insert(
        &mut want,
        "book",
        "5",
        json!({
            "book_id": 5, "isbn": "9781402894626", "book_title": "Kafka on the Shore",
            "price": 11.25, "published_at": null, "updated_at": null, "release": "2005-01-18",
            "uid": null, "tags": ["surreal"], "doc_meta": null, "doc_name": null,
            "doc_a,b,c_4": null, "doc_a,b,label": null, "extra": null, "cover": null,
            "status": "published", "in_print": false,
            "summary": "Kafka on the Shore / 9781402894626 / published / library",
            "publisher": {"id": 2, "Name": "Vintage", "HQ city": null},
            "translator": {"name": "Jay Rubin"},
            "authors": null, "chapters": null, "reviews": null, "rating": null
        }),
    );
    s.change(
        "INSERT INTO book (id, isbn, title, publisher_id, translator_id, price, release, tags, status, in_print)
         VALUES (5, '978-1-4028-9462-6', 'Kafka on the Shore', 2, 6, 11.25, '2005-01-18', '{surreal}', 'published', false)",
        &want,
    );

    // A root inserted together with its children in one transaction.
    let mut book6 = bare_book(
        6,
        "12",
        "Hear the Wind Sing",
        "Hear the Wind Sing / 12 / library",
    );
    book6["authors"] = json!([get(&want, "book", "3", "/authors/0")]);
    book6["chapters"] = json!(["One"]);
    insert(&mut want, "book", "6", book6);
    insert(
        &mut want,
        "edition",
        "6|1",
        json!({"book_id": 6, "number": 1, "format": "paperback",
               "book": {"title": "Hear the Wind Sing"}, "printings": null}),
    );
    s.change(
        "BEGIN;
         INSERT INTO book (id, isbn, title) VALUES (6, '1-2', 'Hear the Wind Sing');
         INSERT INTO book_author (book_id, author_id, role) VALUES (6, 3, 'author');
         INSERT INTO chapter (id, book_id, title) VALUES (10, 6, 'One');
         INSERT INTO edition (book_id, number, format) VALUES (6, 1, 'paperback');
         COMMIT;",
        &want,
    );
}

fn root_update(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_root_update", bed);
    let mut want = expected_documents();

    set(&mut want, "book", "1", "/book_title", json!("War & Peace"));
    set(&mut want, "book", "1", "/price", json!(13.00));
    set(&mut want, "book", "1", "/in_print", json!(false));
    set(&mut want, "book", "1", "/tags", json!(["classic"]));
    set(
        &mut want,
        "book",
        "1",
        "/summary",
        json!("War & Peace / 9780140447934 / published / library"),
    );
    // The book is a child in the other index.
    set(
        &mut want,
        "edition",
        "1|1",
        "/book/title",
        json!("War & Peace"),
    );
    set(
        &mut want,
        "edition",
        "1|2",
        "/book/title",
        json!("War & Peace"),
    );
    s.change(
        "UPDATE book SET title = 'War & Peace', price = 13.00, in_print = false, tags = '{classic}' WHERE id = 1",
        &want,
    );

    // Only a foreign key of the root changes: the child it points to now is embedded.
    set(
        &mut want,
        "book",
        "4",
        "/translator",
        json!({"name": "Edith Grossman"}),
    );
    s.change("UPDATE book SET translator_id = 4 WHERE id = 4", &want);
}

fn root_delete(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_root_delete", bed);
    let mut want = expected_documents();

    remove(&mut want, "book", "4");
    s.change("DELETE FROM book WHERE id = 4", &want);

    // A root deleted with its children in one transaction; it was a root in both indices.
    remove(&mut want, "book", "2");
    remove(&mut want, "edition", "2|1");
    s.change(
        "BEGIN;
         DELETE FROM chapter WHERE book_id = 2;
         DELETE FROM book_author WHERE book_id = 2;
         DELETE FROM edition WHERE book_id = 2;
         DELETE FROM book WHERE id = 2;
         COMMIT;",
        &want,
    );
}

fn root_key_change(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_root_key", bed);
    let mut want = expected_documents();

    let mut book = remove(&mut want, "book", "4");
    book["book_id"] = json!(40);
    insert(&mut want, "book", "40", book);
    s.change("UPDATE book SET id = 40 WHERE id = 4", &want);

    // A composite key: _id "book_id|number".
    let mut edition = remove(&mut want, "edition", "2|1");
    edition["number"] = json!(3);
    insert(&mut want, "edition", "2|3", edition);
    s.change(
        "UPDATE edition SET number = 3 WHERE book_id = 2 AND number = 1",
        &want,
    );
}

fn child_update_fans_out(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_child_update", bed);
    let mut want = expected_documents();

    // Murakami is an author of book 3 (through book_author), the mentor of book 3's other
    // author, and a mentee of book 2's author.
    set(
        &mut want,
        "book",
        "3",
        "/authors/0/name",
        json!("Murakami Haruki"),
    );
    set(
        &mut want,
        "book",
        "3",
        "/authors/1/mentor/name",
        json!("Murakami Haruki"),
    );
    set(
        &mut want,
        "book",
        "2",
        "/authors/0/mentees/0/name",
        json!("Murakami Haruki"),
    );
    s.change(
        "UPDATE author SET name = 'Murakami Haruki' WHERE id = 3",
        &want,
    );

    // Edith Grossman is book 2's translator (book.translator_id, not the root key) and a mentee.
    set(
        &mut want,
        "book",
        "2",
        "/translator/name",
        json!("E. Grossman"),
    );
    set(
        &mut want,
        "book",
        "2",
        "/authors/0/mentees/1/name",
        json!("E. Grossman"),
    );
    s.change("UPDATE author SET name = 'E. Grossman' WHERE id = 4", &want);

    // A publisher in another schema, mixed-case table and columns, now used by two books.
    set(
        &mut want,
        "book",
        "4",
        "/publisher",
        json!({"id": 3, "Name": "Alfred A. Knopf", "HQ city": "New York"}),
    );
    s.change("UPDATE book SET publisher_id = 3 WHERE id = 4", &want);
    for id in ["2", "4"] {
        set(
            &mut want,
            "book",
            id,
            "/publisher",
            json!({"id": 3, "Name": "Knopf", "HQ city": null}),
        );
    }
    s.change(
        r#"UPDATE press."Publisher" SET "Name" = 'Knopf', "HQ city" = NULL WHERE id = 3"#,
        &want,
    );
}

fn child_moved(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_child_moved", bed);
    let mut want = expected_documents();

    set(
        &mut want,
        "book",
        "1",
        "/chapters",
        json!(["Prologue", "Part I", "第一章"]),
    );
    set(&mut want, "book", "3", "/chapters", json!(null));
    s.change("UPDATE chapter SET book_id = 1 WHERE id = 7", &want);

    // review also feeds the book_rating view.
    set(
        &mut want,
        "book",
        "2",
        "/reviews",
        json!([{"id": 3, "rating": 3, "text": null}]),
    );
    set(
        &mut want,
        "book",
        "2",
        "/rating",
        json!({"n": 1, "total": 3}),
    );
    set(&mut want, "book", "3", "/reviews", json!(null));
    set(&mut want, "book", "3", "/rating", json!(null));
    s.change("UPDATE review SET book_id = 2 WHERE id = 3", &want);

    // A child linked by a composite foreign key, moved to another edition.
    set(&mut want, "edition", "1|2", "/printings", json!(null));
    set(
        &mut want,
        "edition",
        "3|2",
        "/printings",
        json!([
            {"id": 2, "printed_on": "2008-01-15", "copies": 200000},
            {"id": 4, "printed_on": "2010-07-07", "copies": null}
        ]),
    );
    s.change(
        "UPDATE edition_printing SET book_id = 3, edition_number = 2 WHERE id = 2",
        &want,
    );
}

fn grandchild_change(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_grandchild", bed);
    let mut want = expected_documents();

    // country under authors, and under authors → mentor.
    set(
        &mut want,
        "book",
        "3",
        "/authors/0/country",
        json!("Nippon"),
    );
    set(
        &mut want,
        "book",
        "3",
        "/authors/1/mentor/country",
        json!("Nippon"),
    );
    s.change(
        "UPDATE country SET name = 'Nippon' WHERE code = 'JP'",
        &want,
    );

    // Jay Rubin's mentor becomes Tolstoy: his mentor object, Murakami's mentees and Tolstoy's
    // mentees (in book 1) all change.
    set(
        &mut want,
        "book",
        "3",
        "/authors/1/mentor",
        json!({"id": 1, "name": "Leo Tolstoy", "country": "Россия"}),
    );
    set(&mut want, "book", "3", "/authors/0/mentees", json!(null));
    set(
        &mut want,
        "book",
        "1",
        "/authors/0/mentees",
        json!([{"id": 5, "name": "Aylmer Maude"}, {"id": 6, "name": "Jay Rubin"}]),
    );
    s.change("UPDATE author SET mentor_id = 1 WHERE id = 6", &want);

    // A grandchild's link to its own child changes.
    set(
        &mut want,
        "book",
        "1",
        "/authors/0/country",
        json!("France"),
    );
    set(
        &mut want,
        "book",
        "3",
        "/authors/1/mentor/country",
        json!("France"),
    );
    s.change("UPDATE author SET country_code = 'FR' WHERE id = 1", &want);
}

fn through_table_changes(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_through", bed);
    let mut want = expected_documents();

    let marquez = get(&want, "book", "2", "/authors/0");
    set(&mut want, "book", "4", "/authors", json!([marquez]));
    s.change(
        "INSERT INTO book_author (book_id, author_id, role) VALUES (4, 2, 'editor')",
        &want,
    );

    let murakami = get(&want, "book", "3", "/authors/0");
    set(&mut want, "book", "3", "/authors", json!([murakami]));
    s.change(
        "DELETE FROM book_author WHERE book_id = 3 AND author_id = 6",
        &want,
    );

    // A join row moved from book 2 to book 1.
    let tolstoy = get(&want, "book", "1", "/authors/0");
    set(
        &mut want,
        "book",
        "1",
        "/authors",
        json!([tolstoy, marquez]),
    );
    set(&mut want, "book", "2", "/authors", json!(null));
    s.change(
        "UPDATE book_author SET book_id = 1 WHERE book_id = 2 AND author_id = 2",
        &want,
    );
}

fn truncate_root(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_truncate_root", bed);
    let mut want = expected_documents();

    // The root of one index (and its child table) only.
    want.insert("edition".into(), Default::default());
    s.change("TRUNCATE edition CASCADE", &want);

    // The root of both: book is the root of one index and a child in the other.
    want.insert("book".into(), Default::default());
    s.change("TRUNCATE book CASCADE", &want);

    // Streaming goes on afterwards.
    insert(
        &mut want,
        "book",
        "7",
        bare_book(7, "7", "After", "After / 7 / library"),
    );
    insert(
        &mut want,
        "edition",
        "7|1",
        json!({"book_id": 7, "number": 1, "format": "ebook",
               "book": {"title": "After"}, "printings": null}),
    );
    s.change(
        "BEGIN;
         INSERT INTO book (id, isbn, title) VALUES (7, '7', 'After');
         INSERT INTO edition (book_id, number, format) VALUES (7, 1, 'ebook');
         COMMIT;",
        &want,
    );
}

fn truncate_child(bed: impl Into<Bed>) {
    let mut s = Stream::started("st_truncate_child", bed);
    let mut want = expected_documents();

    for id in ["1", "2", "3"] {
        set(&mut want, "book", id, "/chapters", json!(null));
    }
    s.change("TRUNCATE chapter", &want);

    // The join table.
    for id in ["1", "2", "3"] {
        set(&mut want, "book", id, "/authors", json!(null));
    }
    s.change("TRUNCATE book_author", &want);

    // A child that also feeds a view.
    for id in ["1", "3"] {
        set(&mut want, "book", id, "/reviews", json!(null));
        set(&mut want, "book", id, "/rating", json!(null));
    }
    s.change("TRUNCATE review", &want);

    for id in ["1|1", "1|2", "3|1", "3|2"] {
        set(&mut want, "edition", id, "/printings", json!(null));
    }
    s.change("TRUNCATE edition_printing", &want);
}

/// With `routing` on a three-shard index, a routing-key change must delete the document on its
/// old shard before indexing it on the new one, and a deleted row's document must be deleted on
/// its shard: a delete sent without (or with the wrong) routing misses it, the 404 reads as
/// success, and the document stays for ever. (osmem routes by shard like the real engines.)
fn routed_deletes_and_moves(mode: Mode) {
    let mut s = Stream::with_setup("st_routing", mode, CASCADING_FOREIGN_KEYS);
    let schema = std::fs::read_to_string(&s.work.schema).unwrap();
    let anchor = "\"index\": \"book\",";
    assert!(schema.contains(anchor));
    s.work.write_schema(&schema.replacen(
        anchor,
        &format!("{anchor} \"routing\": \"isbn\", \"setting\": {{\"number_of_shards\": 3}},"),
        1,
    ));
    s.start_daemon();
    let found = |s: &Stream, id: &str, routing: &str| -> bool {
        let (status, v) =
            s.os.request("GET", &format!("/book/_doc/{id}?routing={routing}"), None)
                .expect("GET book");
        status == 200 && v["found"] == true
    };
    // The isbn transform drops dashes: routing values are the indexed field's.
    let (old, new) = ("9780140447934", "1111");
    let ready = poll(CHANGE_TIMEOUT, || Ok(found(&s, "1", old)));
    assert_eq!(ready, Ok(true), "book 1 indexed with routing {old}");
    s.sql("UPDATE book SET isbn = '11-11' WHERE id = 1");
    let moved = poll(CHANGE_TIMEOUT, || {
        Ok(found(&s, "1", new) && !found(&s, "1", old))
    });
    assert_eq!(
        moved,
        Ok(true),
        "book 1 moved from routing {old} to {new}\n{}",
        s.daemon().log_tail()
    );
    let routing2 = "9780307389734";
    assert!(found(&s, "2", routing2));
    s.sql("DELETE FROM book WHERE id = 2");
    let gone = poll(CHANGE_TIMEOUT, || Ok(!found(&s, "2", routing2)));
    assert_eq!(
        gone,
        Ok(true),
        "book 2 deleted on its shard\n{}",
        s.daemon().log_tail()
    );
}

// ---------------------------------------------------------------------------
// Random changes.

fn random_changes(bed: impl Into<Bed>) {
    let seed = seed("random changes");
    let mut s = Stream::with_setup("st_random", bed, CASCADING_FOREIGN_KEYS);
    s.start_daemon();
    s.expect(&expected_documents(), "initial sync");

    let mut work = Workload::start(s.pg.port(), &s.db, seed, 4);
    work.grant(1500);
    work.finish();

    s.expect_fresh_build("random changes");
}

fn sigkill_mid_stream(bed: impl Into<Bed>) {
    let seed = seed("SIGKILL mid-stream");
    let mut s = Stream::with_setup("st_sigkill", bed, CASCADING_FOREIGN_KEYS);
    s.start_daemon();
    s.expect(&expected_documents(), "initial sync");

    let mut work = Workload::start(s.pg.port(), &s.db, seed, 3);
    // Killed while changes flow: half of the first batch is done, half is still to come.
    work.grant(400);
    work.wait_finished(200);
    s.daemon().kill();
    s.daemon = None;
    eprintln!(
        "SIGKILL after {} of 400 transactions",
        work.finished.load(Ordering::SeqCst)
    );
    // Changes go on while it is down, and after it is back.
    work.grant(400);
    work.wait_finished(800);
    s.start_daemon();
    work.grant(400);
    work.finish();

    s.expect_fresh_build("after SIGKILL and restart");
}

// ---------------------------------------------------------------------------
// Stopping.

fn sigterm_drains(mode: Mode) {
    let mut s = Stream::started("st_sigterm", mode);

    // 20 small transactions, then one touching both indices, then SIGTERM right away: the
    // daemon has taken in some prefix of them. Every state the rows pass through is listed.
    let mut states = vec![expected_documents()];
    let mut now = expected_documents();
    let mut sql = vec![];
    let mut chapters = vec![json!("Capítulo 1"), json!(null)];
    for i in 0..20 {
        sql.push(format!(
            "INSERT INTO chapter (id, book_id, title) VALUES ({}, 2, 'Extra {i:02}')",
            100 + i
        ));
        chapters.push(json!(format!("Extra {i:02}")));
        set(&mut now, "book", "2", "/chapters", json!(chapters));
        states.push(now.clone());
    }
    sql.push(
        "BEGIN;
         UPDATE book SET title = 'Voina i mir' WHERE id = 1;
         UPDATE author SET name = 'H. Murakami' WHERE id = 3;
         DELETE FROM book WHERE id = 4;
         COMMIT;"
            .into(),
    );
    set(&mut now, "book", "1", "/book_title", json!("Voina i mir"));
    set(
        &mut now,
        "book",
        "1",
        "/summary",
        json!("Voina i mir / 9780140447934 / published / True / library"),
    );
    set(
        &mut now,
        "edition",
        "1|1",
        "/book/title",
        json!("Voina i mir"),
    );
    set(
        &mut now,
        "edition",
        "1|2",
        "/book/title",
        json!("Voina i mir"),
    );
    set(
        &mut now,
        "book",
        "3",
        "/authors/0/name",
        json!("H. Murakami"),
    );
    set(
        &mut now,
        "book",
        "3",
        "/authors/1/mentor/name",
        json!("H. Murakami"),
    );
    set(
        &mut now,
        "book",
        "2",
        "/authors/0/mentees/0/name",
        json!("H. Murakami"),
    );
    remove(&mut now, "book", "4");
    states.push(now.clone());
    let last = now;

    let probe = (mode == Mode::Wal).then(|| Probe::create(&s));
    for stmt in &sql {
        s.sql(&format!("SET synchronous_commit = on;\n{stmt}"));
    }
    let status = s.daemon().terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}\n{}",
        s.daemon().log_tail()
    );
    let log = s.daemon().log();
    s.daemon = None;

    // (wal) The stored checkpoint of an index says every transaction up to it is written: those
    // transactions' states are the oldest a document may still show.
    let mut oldest = BTreeMap::new();
    if let Some(probe) = probe {
        let commits = probe.commits(&s);
        assert_eq!(commits.len(), sql.len(), "the probe decodes every commit");
        for (index, _, checkpoint) in s.status() {
            let checkpoint = checkpoint.expect("a checkpoint is stored");
            let covered = commits.iter().filter(|&&c| c <= checkpoint).count();
            eprintln!(
                "after SIGTERM: checkpoint of {index} covers {covered} of {} transactions",
                sql.len()
            );
            oldest.insert(index, covered);
        }
    }

    // Nothing half-written: every document is as in one of the states (a rebuilt document
    // reflects the rows when it was fetched, so documents may come from different states).
    let mut problems = vec![];
    for index in INDICES {
        let found = s.os.all_docs(index);
        let from = oldest.get(index).copied().unwrap_or(0);
        let mut ids: std::collections::BTreeSet<&String> = found.keys().collect();
        ids.extend(states.iter().flat_map(|st| st[index].keys()));
        for id in ids {
            let f = found.get(id);
            let matches = states[from..]
                .iter()
                .any(|st| match (st[index].get(id), f) {
                    (None, None) => true,
                    (Some(x), Some(f)) => common::json_eq(x, f),
                    _ => false,
                });
            if !matches {
                problems.push(format!(
                    "{index}/{id}: found {f:?}, which is in no state the rows passed through \
                     since transaction {from} (the checkpoint)"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "after SIGTERM:\n  {}\n{log}",
        problems.join("\n  ")
    );
    let released = poll(Duration::from_secs(10), || {
        Ok(active_slots(s.pg, &s.db) == 0)
    })
    .unwrap();
    assert!(released, "the daemon exited, yet its slots stay active");

    // A restart streams whatever was left, and an idle SIGTERM leaves the documents as they are.
    s.start_daemon();
    s.expect(&last, "after restart");
    let status = s.daemon().terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM of an idle daemon must exit 0, got {status}\n{}",
        s.daemon().log_tail()
    );
    s.daemon = None;
    let left = differences(&s.os, &last);
    assert!(
        left.is_empty(),
        "after the second SIGTERM:\n  {}",
        left.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The replication slot (wal mode).

fn slot_advances_after_indexing() {
    let mut s = Stream::started("st_slot_lsn", Mode::Wal);
    let slots: Vec<(String, String)> = s
        .status()
        .into_iter()
        .map(|(index, slot, _)| (index, slot))
        .collect();
    assert_eq!(
        slots.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
        INDICES,
        "pgsync status should list both indices"
    );

    // A probe slot decodes the change to learn the exact end of its commit record, the position
    // pgoutput gives the daemon for it.
    let probe = Probe::create(&s);
    s.sql(
        "BEGIN;
         SET LOCAL synchronous_commit = on;
         UPDATE book SET title = 'Anna Karenina' WHERE id = 1;
         COMMIT;",
    );
    let commits = probe.commits(&s);
    assert_eq!(
        commits.len(),
        1,
        "the probe decodes one commit: {commits:X?}"
    );
    let commit_end = commits[0];

    let want = book_1_titled_anna_karenina();

    // Watch every slot until it passes the commit; the moment it does, the index must already
    // hold the change (the slot may advance only over written documents).
    for (index, slot) in &slots {
        let mut index_want = IndexDocs::new();
        index_want.insert(index.clone(), want[index].clone());
        let mut seen = None;
        let passed = poll(CHANGE_TIMEOUT, || {
            s.daemon().check_alive()?;
            let lsn = confirmed_flush_lsn(s.pg, slot);
            seen = lsn;
            if lsn.is_some_and(|l| l >= commit_end) {
                let diff = differences(&s.os, &index_want);
                if !diff.is_empty() {
                    return Err(format!(
                        "slot {slot} confirmed {:X} past the commit at {commit_end:X} before index {index} held the change:\n  {}",
                        lsn.unwrap(),
                        diff.join("\n  ")
                    ));
                }
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            passed,
            "slot {slot} never confirmed the commit at {commit_end:X} (last confirmed_flush_lsn {seen:X?})\n{}",
            s.daemon().log_tail()
        );
    }
    s.expect(&want, "the change");

    // The stored checkpoints have passed it too.
    let ok = poll(CHANGE_TIMEOUT, || {
        Ok(s.status()
            .iter()
            .all(|(_, _, cp)| cp.is_some_and(|c| c >= commit_end)))
    })
    .unwrap();
    assert!(
        ok,
        "checkpoints never reached the commit at {commit_end:X}: {:?}",
        s.status()
    );
}

/// The fixture's documents after `UPDATE book SET title = 'Anna Karenina' WHERE id = 1`.
fn book_1_titled_anna_karenina() -> IndexDocs {
    let mut want = expected_documents();
    let title = json!("Anna Karenina");
    set(&mut want, "book", "1", "/book_title", title.clone());
    set(
        &mut want,
        "book",
        "1",
        "/summary",
        json!("Anna Karenina / 9780140447934 / published / True / library"),
    );
    set(&mut want, "edition", "1|1", "/book/title", title.clone());
    set(&mut want, "edition", "1|2", "/book/title", title);
    want
}

/// With `synchronous_commit = on` a commit's WAL is flushed (and decoded for the slot) before
/// other sessions see the transaction; a synchronous standby that never answers holds it there
/// for as long as we like. A document read meanwhile would miss the change, and nothing would
/// read it again: the daemon must wait until the transaction is visible, then read it.
fn change_decoded_before_visible() {
    let pg: &'static Postgres = Box::leak(Box::new(Postgres::start_with(PostgresOptions {
        settings: vec!["synchronous_standby_names=ghost".into()],
        ..Default::default()
    })));
    let mut s = Stream::with_setup_on(pg, "st_visible", Mode::Wal, "");
    s.start_daemon_with_env(&[("PGSYNC_LOG__LEVEL", "info,pgsync_rs=debug")]);
    s.expect(&expected_documents(), "initial sync");

    let db = s.db.clone();
    // Committed locally, flushed, then waiting for the standby `ghost` (only this session asks
    // for synchronous commit: the server default is off).
    let writer = std::thread::spawn(move || {
        pg.psql(
            &db,
            "SET synchronous_commit = on; UPDATE book SET title = 'Anna Karenina' WHERE id = 1;",
        )
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'";
    let blocked = poll(CHANGE_TIMEOUT, || Ok(s.sql(waiting) == "1")).unwrap();
    assert!(blocked, "the update never waited for the standby");
    let flushed = s.sql("SELECT pg_current_wal_flush_lsn()");
    // The daemon has the change: it says it waits for it, or (the bug) it read the old row and
    // acknowledged the change's position.
    let passed = format!(
        "SELECT bool_and(confirmed_flush_lsn >= '{flushed}') FROM pg_replication_slots \
         WHERE database = current_database()"
    );
    let seen = poll(CHANGE_TIMEOUT, || {
        s.daemon().check_alive()?;
        Ok(s.daemon()
            .log()
            .contains("waiting for committed transactions to become visible")
            || s.sql(&passed) == "t")
    })
    .unwrap();
    assert!(
        seen,
        "the daemon never received the change\n{}",
        s.daemon().log_tail()
    );
    s.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
    writer.join().expect("the update's session");
    assert_eq!(
        s.sql("SELECT title FROM book WHERE id = 1"),
        "Anna Karenina"
    );
    s.expect(&book_1_titled_anna_karenina(), "the change once visible");
}

// ---------------------------------------------------------------------------
// Coalescing under backpressure.

/// The search server is stopped (SIGSTOP) while one document is updated 300 times, each in its
/// own transaction, spread over many coalescing windows. Once it runs again the document must
/// show the last title, and the number of times it was written (its `_seq_no`: `_version` is the
/// external version, a WAL position, since writes are versioned) must stay near
/// the depth of the queues between the stages, far below 300: changes that arrive while the
/// pipeline is blocked merge before any document is built. (Windows already past the coalescer
/// when the engine stopped are each written once: one queued and one in progress per stage —
/// query builder, fetcher, writer — plus the writer's requests in flight, so at most ~14.)
fn changes_merge_behind_a_stalled_engine() {
    let mut s = Stream::started("st_stall", Mode::Wal);
    let version = |os: &Osmem| -> u64 {
        let (status, v) = os.request("GET", "/book/_doc/1", None).expect("GET book 1");
        assert_eq!(status, 200, "GET /book/_doc/1: {v}");
        v["_seq_no"].as_u64().expect("_seq_no")
    };
    let before = version(&s.os);

    common::daemon::signal(s.os.pid(), "STOP");
    let mut sql = String::new();
    for i in 0..300 {
        // Spread over ~1.5 s, so the changes fall into many coalescing windows.
        sql.push_str(&format!(
            "UPDATE book SET title = 'Stalled {i}' WHERE id = 1; SELECT pg_sleep(0.005);\n"
        ));
    }
    s.sql(&sql);
    // Every change has reached the daemon before the engine runs again. (The position is taken
    // once: other tests keep writing WAL on the shared server.)
    let end = s.sql("SELECT pg_current_wal_lsn()");
    let received = poll(CHANGE_TIMEOUT, || {
        Ok(s.sql(&format!(
            "SELECT bool_and(sent_lsn >= '{end}') FROM pg_stat_replication \
             WHERE application_name LIKE 'pgsync%'"
        )) == "t")
    });
    common::daemon::signal(s.os.pid(), "CONT");
    assert_eq!(received, Ok(true), "the daemon did not receive the changes");

    let mut want = expected_documents();
    set(&mut want, "book", "1", "/book_title", json!("Stalled 299"));
    set(
        &mut want,
        "book",
        "1",
        "/summary",
        json!("Stalled 299 / 9780140447934 / published / True / library"),
    );
    for edition in ["1|1", "1|2"] {
        set(
            &mut want,
            "edition",
            edition,
            "/book/title",
            json!("Stalled 299"),
        );
    }
    s.expect(&want, "the last of 300 updates");
    let writes = version(&s.os) - before;
    eprintln!("300 updates written as {writes} writes");
    assert!(
        (1..=14).contains(&writes),
        "300 updates behind a stalled engine were written {writes} times; changes queued \
         behind the stall should merge into a handful of writes"
    );
}
