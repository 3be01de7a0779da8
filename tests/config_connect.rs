//! `config::connect` against a real throwaway PostgreSQL: TCP, Unix socket directory, URL, and
//! the failure message.

mod harness;

use pgsync_rs::config::{connect, load_with};
use pgsync_rs::ErrorKind;

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tcp_socket_dir_and_url() {
    let pg = harness::shared_postgres();
    let port = pg.port().to_string();

    // TCP, with a digits-only password (trust auth ignores it, but it must load as text).
    let cfg = load_with(
        None,
        vars(&[
            ("PG_HOST", "127.0.0.1".into()),
            ("PG_PORT", port.clone()),
            ("PG_USER", "postgres".into()),
            ("PG_PASSWORD", "007".into()),
        ]),
    )
    .unwrap()
    .config;
    let client = connect(&cfg, "postgres").await.unwrap();
    let row = client
        .query_one(
            "select current_database(), current_user, current_setting('application_name'), inet_server_addr() is not null",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, String>(1), "postgres");
    assert_eq!(row.get::<_, String>(2), "pgsync-rs");
    assert!(row.get::<_, bool>(3), "expected a TCP connection");

    // A Unix socket directory as host.
    let socket_dir = pg.data_dir().parent().unwrap().display().to_string();
    let cfg = load_with(
        None,
        vars(&[("PG_HOST", socket_dir), ("PG_PORT", port.clone())]),
    )
    .unwrap()
    .config;
    let client = connect(&cfg, "postgres").await.unwrap();
    let row = client
        .query_one("select inet_server_addr() is null", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "expected a Unix-socket connection");

    // The URL wins over the fields; its database is replaced by the one asked for.
    let cfg = load_with(
        None,
        vars(&[
            ("PG_URL", pg.url("ignored_db")),
            ("PG_HOST", "203.0.113.1".into()),
        ]),
    )
    .unwrap()
    .config;
    let client = connect(&cfg, "template1").await.unwrap();
    let row = client
        .query_one("select current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "template1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_a_permanent_error_naming_the_target_not_the_password() {
    let pg = harness::shared_postgres();
    let cfg = load_with(
        None,
        vars(&[
            ("PG_HOST", "127.0.0.1".into()),
            ("PG_PORT", pg.port().to_string()),
            ("PG_PASSWORD", "hunter2".into()),
        ]),
    )
    .unwrap()
    .config;
    let e = connect(&cfg, "no_such_db").await.unwrap_err();
    // A database that does not exist needs an operator: permanent, never retried.
    assert_eq!(e.kind, ErrorKind::Schema);
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{} as postgres (database no_such_db): FATAL: database \"no_such_db\" does not exist",
            pg.port()
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}
