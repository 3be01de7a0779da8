//! Documents built on a read replica (PGSync's PG_URL_RO): a real hot-standby streaming replica
//! of the harness primary (pg_basebackup -R). The initial sync and every change's document are
//! read there, and a fetch waits until the replica has replayed the change it serves.

mod common;
mod harness;

use common::daemon::Daemon;
use common::{load_library, PgsyncConfig, Workdir};
use harness::{Osmem, Postgres};
use std::time::Duration;

#[test]
fn documents_are_built_on_the_replica_and_never_older_than_their_change() {
    let primary = Postgres::start();
    let db = load_library(&primary, "replica");
    let replica = Postgres::start_replica_of(&primary);
    assert_eq!(replica.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    let os = Osmem::start();
    let work = Workdir::new(
        &PgsyncConfig::new(primary.port(), os.url()),
        &common::library_schema(&db),
    );
    let ro = format!("postgres://postgres@127.0.0.1:{}/", replica.port());
    let mut daemon = Daemon::start_with_env(&work, "replica.log", &[("PG_URL_RO", &ro)]);
    harness::wait_until_blocking(Duration::from_secs(90), "the daemon streams book", || {
        daemon.assert_alive("initial sync from the replica");
        daemon.streams("book")
    });
    common::assert_documents(
        "book",
        &os.all_docs("book"),
        &common::expected_documents()["book"],
    );

    // A change committed on the primary is in its document at once.
    primary.psql(
        &db,
        "UPDATE book SET title = 'Seen on the replica' WHERE id = 4",
    );
    let title_is = |t: &str| {
        os.refresh("book");
        os.doc("book", "4").is_some_and(|d| d["book_title"] == t)
    };
    harness::wait_until_blocking(
        Duration::from_secs(30),
        "the change reaches the index",
        || {
            daemon.assert_alive("streaming");
            title_is("Seen on the replica")
        },
    );

    // With replay paused the replica lags: the fetch waits for it instead of building the
    // document from the older row (a fetch on the primary would not wait; one on the replica
    // that did not wait would index the old title and never correct it).
    replica.psql("postgres", "SELECT pg_wal_replay_pause()");
    primary.psql(
        &db,
        "UPDATE book SET title = 'Committed while the replica lagged' WHERE id = 4",
    );
    std::thread::sleep(Duration::from_millis(1500));
    daemon.assert_alive("waiting for the replica");
    assert!(
        title_is("Seen on the replica"),
        "the document changed while the replica had not replayed the change: {:?}",
        os.doc("book", "4")
    );
    replica.psql("postgres", "SELECT pg_wal_replay_resume()");
    harness::wait_until_blocking(
        Duration::from_secs(30),
        "the document follows once the replica replayed the change",
        || {
            daemon.assert_alive("streaming after the replica caught up");
            title_is("Committed while the replica lagged")
        },
    );
}
