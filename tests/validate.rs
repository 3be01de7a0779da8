//! `pgsync validate`: every kind of schema problem is reported with its JSON path, what was found
//! and what is allowed (`<schema path>: <json path>: found ...; expected ...`), all of them at
//! once, with exit code 2; the valid `library` fixture passes with exit code 0.

mod common;
mod harness;

use common::{library_schema, load_library, Outcome, PgsyncConfig, Workdir};
use harness::shared_postgres;
use std::sync::OnceLock;

/// One database with the library fixture plus a table without a primary key, shared by every
/// test here (validate only reads the catalog).
fn database() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let pg = shared_postgres();
        let db = load_library(pg, "validate");
        pg.psql(
            &db,
            "CREATE TABLE loose_note (book_id integer REFERENCES book (id), body text);",
        );
        db
    })
}

/// Tables of schema public in that database, as the "unknown table" problem lists them.
const PUBLIC_TABLES: &str = "author, book, book_author, book_rating, chapter, country, edition, \
                             edition_printing, loose_note, review";

/// Columns of public.book in order.
const BOOK_COLUMNS: &str = "id, isbn, title, publisher_id, translator_id, price, published_at, \
                            updated_at, release, uid, tags, doc, extra, cover, status, in_print";

/// `schema_json` with `DB` replaced by the test database.
fn schema(schema_json: &str) -> String {
    schema_json.replace("\"DB\"", &format!("\"{}\"", database()))
}

/// Runs `pgsync validate` on `schema_text`; the search URL is never contacted by validate.
fn validate(schema_text: &str) -> (Workdir, Outcome) {
    let cfg = PgsyncConfig::new(shared_postgres().port(), "http://127.0.0.1:9");
    let work = Workdir::new(&cfg, schema_text);
    let out = work.pgsync(&["validate"]);
    (work, out)
}

/// The problems reported on stderr: every line naming the schema file, reduced to
/// `<json path>: found ...; expected ...`.
fn problems(work: &Workdir, out: &Outcome) -> Vec<String> {
    let prefix = format!("{}: ", work.schema_display());
    out.stderr
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("error: ").unwrap_or(l);
            l.strip_prefix(&prefix).map(str::to_owned)
        })
        .filter(|l| l.starts_with('['))
        .collect()
}

/// Validates `schema_json`, asserting exit code 2 and exactly `expected` problems (in order).
fn assert_problems(schema_json: &str, expected: &[&str]) {
    let (work, out) = validate(&schema(schema_json));
    out.assert_code(2, "pgsync validate of an invalid schema");
    assert_eq!(
        problems(&work, &out),
        expected,
        "problems reported\n{}",
        out.output()
    );
    assert!(!out.stdout.contains("ok: index"), "{}", out.output());
}

/// A one-index schema whose root is public.book with `root` extra keys and `children`.
fn book_with(root: &str, children: &str) -> String {
    let sep = if root.is_empty() { "" } else { ", " };
    format!(
        r#"[{{"database": "DB", "index": "x", "nodes": {{"table": "book"{sep}{root}, "children": [{children}]}}}}]"#
    )
}

#[test]
fn the_library_fixture_validates_with_exit_code_zero() {
    let db = database();
    let (_work, out) = validate(&library_schema(db));
    out.assert_code(0, "pgsync validate of the library fixture");
    let ok: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("ok: "))
        .collect();
    assert_eq!(
        ok,
        [
            format!(
                "ok: index book (database {db}): 11 nodes, tables press.Publisher, public.author, \
                 public.book, public.book_author, public.book_rating, public.chapter, \
                 public.country, public.review"
            ),
            format!(
                "ok: index edition (database {db}): 3 nodes, tables public.book, public.edition, \
                 public.edition_printing"
            ),
        ],
        "{}",
        out.output()
    );
}

#[test]
fn an_unknown_table_is_reported_with_the_tables_that_exist() {
    assert_problems(
        r#"[{"database": "DB", "index": "a", "nodes": {"table": "bok"}},
            {"database": "DB", "index": "b", "nodes": {"table": "book", "children": [
                {"table": "publisher", "schema": "press",
                 "relationship": {"variant": "object", "type": "one_to_one"}}]}}]"#,
        &[
            &format!(
                r#"[0].nodes.table: found "bok" (no such table or view in schema "public"); expected one of: {PUBLIC_TABLES}"#
            ),
            r#"[1].nodes.children[0].table: found "publisher" (no such table or view in schema "press"); expected one of: Publisher"#,
        ],
    );
}

#[test]
fn an_unknown_column_is_reported_with_the_columns_of_its_table() {
    assert_problems(
        &book_with(
            r#""columns": ["id", "titel"]"#,
            r#"{"table": "Publisher", "schema": "press", "columns": ["name"],
                "relationship": {"variant": "object", "type": "one_to_one"}}"#,
        ),
        &[
            &format!(
                r#"[0].nodes.columns[1]: found "titel" (no such column in public.book); expected one of: {BOOK_COLUMNS}"#
            ),
            r#"[0].nodes.children[0].columns[0]: found "name" (no such column in press.Publisher); expected one of: id, Name, HQ city"#,
        ],
    );
}

#[test]
fn a_table_without_a_primary_key_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "loose_note", "relationship": {"variant": "object", "type": "one_to_many"}}"#,
        ),
        &[
            r#"[0].nodes.children[0].table: found public.loose_note has no primary key; expected a table with a primary key, or "primary_key": [columns] on the node (required for views)"#,
        ],
    );
}

#[test]
fn a_view_without_primary_key_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "book_rating", "columns": ["n"], "relationship": {"variant": "object",
                "type": "one_to_one", "foreign_key": {"child": ["book_id"], "parent": ["id"]}}}"#,
        ),
        &[
            r#"[0].nodes.children[0].table: found public.book_rating has no primary key; expected a table with a primary key, or "primary_key": [columns] on the node (required for views)"#,
        ],
    );
}

#[test]
fn a_child_without_a_foreign_key_to_its_parent_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "country", "columns": ["name"],
                "relationship": {"variant": "scalar", "type": "one_to_one"}}"#,
        ),
        &[
            r#"[0].nodes.children[0].relationship: found no foreign key between public.country and its parent public.book; expected a foreign key constraint in either direction, "foreign_key": {"child": [...], "parent": [...]}, or "through_tables""#,
        ],
    );
}

#[test]
fn an_explicit_foreign_key_naming_missing_columns_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "author", "label": "translator", "columns": ["name"],
                "relationship": {"variant": "object", "type": "one_to_one",
                "foreign_key": {"child": ["ident"], "parent": ["translator"]}}}"#,
        ),
        &[
            r#"[0].nodes.children[0].relationship.foreign_key.child[0]: found "ident" (no such column in public.author); expected a column of public.author"#,
            r#"[0].nodes.children[0].relationship.foreign_key.parent[0]: found "translator" (no such column in public.book); expected a column of public.book"#,
        ],
    );
}

#[test]
fn a_through_table_that_does_not_join_both_tables_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "author", "label": "writers", "columns": ["name"],
                "relationship": {"variant": "object", "type": "one_to_many",
                                 "through_tables": ["chapter"]}},
               {"table": "author", "label": "authors", "columns": ["name"],
                "relationship": {"variant": "object", "type": "one_to_many",
                                 "through_tables": ["book_authors"]}}"#,
        ),
        &[
            r#"[0].nodes.children[0].relationship.through_tables[0]: found no foreign key between public.chapter and public.author; expected a table linked by foreign keys (in either direction) to both public.book and public.author"#,
            &format!(
                r#"[0].nodes.children[1].relationship.through_tables[0]: found "book_authors" (no such table in schema "public"); expected one of: {PUBLIC_TABLES}"#
            ),
        ],
    );
}

#[test]
fn a_json_operator_on_a_column_that_is_not_json_is_reported() {
    assert_problems(
        &book_with(
            r#""columns": ["id", "title->>x", "tags->0", "doc->>name"]"#,
            "",
        ),
        &[
            r#"[0].nodes.columns[1]: found "title->>x": JSON operator on column "title" of type text; expected JSON operators only on json or jsonb columns"#,
            r#"[0].nodes.columns[2]: found "tags->0": JSON operator on column "tags" of type text[]; expected JSON operators only on json or jsonb columns"#,
        ],
    );
}

#[test]
fn an_unknown_relationship_variant_or_type_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "chapter", "columns": ["title"],
                "relationship": {"variant": "objekt", "type": "many_to_many"}}"#,
        ),
        &[
            r#"[0].nodes.children[0].relationship.variant: found "objekt"; expected one of "object", "scalar""#,
            r#"[0].nodes.children[0].relationship.type: found "many_to_many"; expected one of "one_to_one", "one_to_many""#,
        ],
    );
}

#[test]
fn an_unknown_schema_is_reported() {
    assert_problems(
        r#"[{"database": "DB", "index": "x", "nodes": {"table": "Publisher", "schema": "pres"}}]"#,
        &[
            r#"[0].nodes.schema: found "pres" (no such schema in the database); expected an existing PostgreSQL schema"#,
        ],
    );
}

#[test]
fn an_unknown_node_key_is_reported_with_the_keys_allowed_there() {
    // PGSync refuses unknown node (and relationship) keys too.
    assert_problems(
        r#"[{"database": "DB", "index": "x", "nodes": {"table": "book", "colums": ["id"]}}]"#,
        &[
            r#"[0].nodes.colums: found unknown key "colums"; expected one of "table", "schema", "columns", "label", "primary_key", "relationship", "children", "transform", "base_tables""#,
        ],
    );
}

#[test]
fn what_pgsync_ignores_is_a_warning_and_an_error_only_with_strict() {
    let text = schema(
        r#"[{"database": "DB", "index": "x", "colour": "red",
             "nodes": {"table": "book", "columns": ["id"], "transform": {"renam": {"id": "x"}},
                       "children": [{"table": "chapter", "label": null, "columns": ["title"],
                                     "relationship": {"variant": "object", "type": "one_to_many"}}]}}]"#,
    );
    let expected = [
        r#"[0].colour: found unknown key "colour" (ignored, as PGSync does); expected one of "database", "index", "nodes", "setting", "mapping", "mappings", "routing", "pipeline", "plugins""#,
        r#"[0].nodes.transform.renam: found unknown key "renam" (ignored, as PGSync does); expected one of "rename", "replace", "concat", "mapping", "move""#,
        r#"[0].nodes.children[0].label: found null (read as no label, as PGSync does); expected a non-empty string"#,
    ];
    let (work, out) = validate(&text);
    out.assert_code(0, "pgsync validate of a schema with what PGSync ignores");
    for w in expected {
        assert!(
            out.stderr.contains(w),
            "warning {w} missing\n{}",
            out.output()
        );
    }
    assert!(out.stdout.contains("ok: index x"), "{}", out.output());
    let strict = work.pgsync(&["validate", "--strict"]);
    strict.assert_code(2, "pgsync validate --strict of the same schema");
    assert_eq!(problems(&work, &strict), expected, "{}", strict.output());
}

#[test]
fn a_scalar_child_with_two_columns_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "chapter", "columns": ["id", "title"],
                "relationship": {"variant": "scalar", "type": "one_to_many"}}"#,
        ),
        &[
            r#"[0].nodes.children[0].columns: found 2 columns; expected exactly one column for a scalar relationship"#,
        ],
    );
}

#[test]
fn a_scalar_child_without_columns_has_all_three_columns_and_is_reported() {
    assert_problems(
        &book_with(
            "",
            r#"{"table": "chapter", "relationship": {"variant": "scalar", "type": "one_to_many"}}"#,
        ),
        &[
            r#"[0].nodes.children[0].columns: found 3 columns; expected exactly one column for a scalar relationship"#,
        ],
    );
}

#[test]
fn a_routing_field_that_is_not_in_the_root_document_is_reported() {
    assert_problems(
        r#"[{"database": "DB", "index": "x", "routing": "publisher_id",
             "nodes": {"table": "book", "columns": ["id", "title"]}}]"#,
        &[r#"[0].routing: found "publisher_id"; expected a field of the root document: id, title"#],
    );
}

#[test]
fn several_database_problems_are_all_reported_at_once_with_exit_code_two() {
    let text = schema(
        r#"[{"database": "DB", "index": "a", "routing": "nope",
             "nodes": {"table": "book", "columns": ["id", "titel", "isbn->x"], "children": [
                {"table": "country", "columns": ["name"],
                 "relationship": {"variant": "scalar", "type": "one_to_one"}},
                {"table": "bok", "relationship": {"variant": "object", "type": "one_to_many"}}]}},
            {"database": "DB", "index": "b", "nodes": {"table": "Publisher", "schema": "pres"}}]"#,
    );
    let (work, out) = validate(&text);
    out.assert_code(2, "pgsync validate with six problems");
    let mut found = problems(&work, &out);
    found.sort();
    let mut expected = vec![
        format!(
            r#"[0].nodes.columns[1]: found "titel" (no such column in public.book); expected one of: {BOOK_COLUMNS}"#
        ),
        r#"[0].nodes.columns[2]: found "isbn->x": JSON operator on column "isbn" of type text; expected JSON operators only on json or jsonb columns"#.to_owned(),
        r#"[0].nodes.children[0].relationship: found no foreign key between public.country and its parent public.book; expected a foreign key constraint in either direction, "foreign_key": {"child": [...], "parent": [...]}, or "through_tables""#.to_owned(),
        format!(
            r#"[0].nodes.children[1].table: found "bok" (no such table or view in schema "public"); expected one of: {PUBLIC_TABLES}"#
        ),
        r#"[0].routing: found "nope"; expected a field of the root document: id"#.to_owned(),
        r#"[1].nodes.schema: found "pres" (no such schema in the database); expected an existing PostgreSQL schema"#.to_owned(),
    ];
    expected.sort();
    assert_eq!(found, expected, "{}", out.output());
}

#[test]
fn several_file_problems_are_all_reported_at_once_with_exit_code_two() {
    let text = schema(
        r#"[{"database": "DB", "index": "a", "colour": "red", "nodes": {"table": "book",
             "children": [
                {"table": "chapter", "columns": ["id", "title"],
                 "relationship": {"variant": "scalar", "type": "one_to_many"}},
                {"table": "review", "relationship": {"variant": "object", "type": "one_to_few"}}]}}]"#,
    );
    let (work, out) = validate(&text);
    // "colour" is only a warning (PGSync ignores unknown document keys).
    out.assert_code(2, "pgsync validate with two problems");
    let mut found = problems(&work, &out);
    found.sort();
    let mut expected = vec![
        r#"[0].nodes.children[0].columns: found 2 columns; expected exactly one column for a scalar relationship"#,
        r#"[0].nodes.children[1].relationship.type: found "one_to_few"; expected one of "one_to_one", "one_to_many""#,
    ];
    expected.sort();
    assert_eq!(found, expected, "{}", out.output());
}
