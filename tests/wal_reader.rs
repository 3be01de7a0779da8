//! The WAL reader and slot bootstrap against a real PostgreSQL 15: exact transactions and changes
//! from a replication slot, acknowledgements moving `confirmed_flush_lsn`, idempotent bootstrap
//! and teardown, and the actix actor wrapper.

mod harness;

use harness::{quote_ident, shared_postgres, unique_db_name, wait_until, Postgres};
use pgsync_rs::config::{Config, Secret};
use pgsync_rs::schema::TableId;
use pgsync_rs::source::change::{Change, ChangeOp, Row, Transaction};
use pgsync_rs::source::slot::{
    advance_slot, bootstrap, check_replication_ready, parse_lsn, publication_name, slot_name,
    slot_status, teardown, SlotStatus, TeardownOutcome,
};
use pgsync_rs::source::wal::{self, spawn_reader, StopWalReader, WalReader, WalReaderConfig};
use pgsync_rs::ErrorKind;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{Client, NoTls};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

fn reader_config(pg: &Postgres, db: &str, slot: &str, publication: &str) -> WalReaderConfig {
    let mut cfg = WalReaderConfig::new(
        "127.0.0.1",
        pg.port(),
        "postgres",
        Secret::new(""),
        db,
        slot,
        publication,
    );
    cfg.status_interval = Duration::from_millis(200);
    cfg
}

/// The current WAL insert position.
async fn wal_lsn(client: &Client) -> u64 {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap();
    parse_lsn(row.get(0)).unwrap()
}

/// Runs `sql` and returns the WAL positions before and after it.
async fn txn(client: &Client, sql: &str) -> (u64, u64) {
    let before = wal_lsn(client).await;
    client.batch_execute(sql).await.unwrap();
    (before, wal_lsn(client).await)
}

async fn recv(rx: &mut mpsc::Receiver<Transaction>) -> Transaction {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("timed out waiting for a transaction")
        .expect("WAL reader closed its channel")
}

async fn status(client: &Client, slot: &str) -> SlotStatus {
    slot_status(client, slot)
        .await
        .unwrap()
        .expect("slot exists")
}

fn row(pairs: &[(&str, Option<&str>)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
        .collect()
}

/// A change as (table name, op, old, new), for exact comparisons.
type Summary = (String, ChangeOp, Option<Row>, Option<Row>);

fn summary(changes: &[Change]) -> Vec<Summary> {
    changes
        .iter()
        .map(|c| (c.table.name.clone(), c.op, c.old.clone(), c.new.clone()))
        .collect()
}

fn change(table: &str, op: ChangeOp, old: Option<Row>, new: Option<Row>) -> Summary {
    (table.to_owned(), op, old, new)
}

fn book(title: &str, body: &str) -> Row {
    row(&[
        ("id", Some("10")),
        ("Title", Some(title)),
        ("author_id", Some("1")),
        // Inserted as 03:04:05+02 while the database's TimeZone is New York and its DateStyle
        // SQL, DMY: the reader's session options pin ISO and UTC.
        ("updated_at", Some("2024-01-02 01:04:05+00")),
        ("body", Some(body)),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_transactions_and_acknowledges_them() {
    let pg = shared_postgres();
    let db = unique_db_name("wal_reader");
    pg.create_database(&db);
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE author (id int PRIMARY KEY, name text);
             CREATE TABLE \"Book\" (id int PRIMARY KEY, \"Title\" text, author_id int,
                                    updated_at timestamptz, body text);
             ALTER TABLE \"Book\" ALTER COLUMN body SET STORAGE EXTERNAL;
             CREATE TABLE unpublished (id int PRIMARY KEY);
             CREATE TABLE nokey (v text);
             ALTER DATABASE {q} SET timezone = 'America/New_York';
             ALTER DATABASE {q} SET datestyle = 'SQL, DMY';",
            q = quote_ident(&db)
        ),
    );
    let client = connect(&pg.url(&db)).await;
    let slot = slot_name("pgsync", &db, "books");
    let publication = publication_name("pgsync", &db, "books");
    let author = TableId::new("public", "author");
    let book_t = TableId::new("public", "Book");
    let tables = [author.clone(), book_t.clone()];
    let full = [book_t.clone()];

    // Readiness: fine for the superuser, refused for a plain role.
    check_replication_ready(&client, &slot).await.unwrap();
    let role = format!("plain_{db}");
    client
        .batch_execute(&format!("CREATE ROLE {} LOGIN", quote_ident(&role)))
        .await
        .unwrap();
    let plain = connect(&format!("postgres://{role}@127.0.0.1:{}/{db}", pg.port())).await;
    let err = check_replication_ready(&plain, &slot).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Replication);
    assert!(err.message.contains("neither REPLICATION"), "{err}");
    drop(plain);

    // A table without a replica identity is refused before anything is created or altered (the
    // first real bootstrap below still reports "Book" as switched to FULL).
    let err = bootstrap(
        &client,
        &slot,
        &publication,
        &[author.clone(), TableId::new("public", "nokey")],
        &full,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Replication);
    assert!(err.message.contains("public.nokey"), "{err}");
    assert!(slot_status(&client, &slot).await.unwrap().is_none());

    // Bootstrap, then again: the second run changes nothing.
    let first = bootstrap(&client, &slot, &publication, &tables, &full)
        .await
        .unwrap();
    assert!(first.slot_created);
    assert!(first.publication_changed);
    assert_eq!(first.identity_changed, vec![book_t.clone()]);
    assert!(first.consistent_lsn > 0);
    let again = bootstrap(&client, &slot, &publication, &tables, &full)
        .await
        .unwrap();
    assert!(!again.slot_created);
    assert!(!again.publication_changed);
    assert!(again.identity_changed.is_empty());
    assert_eq!(again.consistent_lsn, first.consistent_lsn);
    let ident: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = '\"Book\"'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ident, "f");
    let via_root: bool = client
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .unwrap()
        .get(0);
    assert!(via_root);
    // A different table set alters the publication; going back does too; then it is stable.
    let wider = [
        author.clone(),
        book_t.clone(),
        TableId::new("public", "unpublished"),
    ];
    let published = || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert!(
        bootstrap(&client, &slot, &publication, &wider, &[])
            .await
            .unwrap()
            .publication_changed
    );
    assert_eq!(published().await, 3);
    assert!(
        bootstrap(&client, &slot, &publication, &tables, &[])
            .await
            .unwrap()
            .publication_changed
    );
    assert_eq!(published().await, 2);
    assert!(
        !bootstrap(&client, &slot, &publication, &tables, &full)
            .await
            .unwrap()
            .publication_changed
    );

    // Stream through a channel of capacity 1, so the reader waits on the consumer.
    let (tx, mut rx) = mpsc::channel(1);
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(wal::run(
        reader_config(pg, &db, &slot, &publication),
        tx,
        ack_rx,
        stop_rx,
    ));
    wait_until(TIMEOUT, "the reader holds the slot", || async {
        status(&client, &slot).await.active
    })
    .await;

    // Teardown refuses an active slot and names the PID holding it.
    let pid = status(&client, &slot).await.active_pid.unwrap();
    let err = teardown(&client, &slot, &publication).await.unwrap_err();
    assert!(err.message.contains(&format!("PID {pid}")), "{err}");

    let body = "ab".repeat(1500);
    let t1 = txn(
        &client,
        &format!(
            "BEGIN;
             INSERT INTO author VALUES (1, 'Ann');
             INSERT INTO \"Book\" VALUES (10, 'Dune', 1, '2024-01-02 03:04:05+02', '{body}');
             COMMIT;"
        ),
    )
    .await;
    let t2 = txn(
        &client,
        "BEGIN;
         UPDATE author SET name = 'Anna' WHERE id = 1;
         UPDATE \"Book\" SET \"Title\" = 'Dune Messiah' WHERE id = 10;
         COMMIT;",
    )
    .await;
    txn(&client, "INSERT INTO unpublished VALUES (1)").await;
    let t4 = txn(
        &client,
        "BEGIN;
         UPDATE author SET id = 2 WHERE id = 1;
         DELETE FROM \"Book\" WHERE id = 10;
         COMMIT;",
    )
    .await;
    let t5 = txn(&client, "TRUNCATE author, \"Book\"").await;

    let r1 = recv(&mut rx).await;
    assert_eq!(
        summary(&r1.changes),
        vec![
            change(
                "author",
                ChangeOp::Insert,
                None,
                Some(row(&[("id", Some("1")), ("name", Some("Ann"))]))
            ),
            change("Book", ChangeOp::Insert, None, Some(book("Dune", &body))),
        ]
    );
    assert_eq!(*r1.changes[1].table, book_t);
    let r2 = recv(&mut rx).await;
    assert_eq!(
        summary(&r2.changes),
        vec![
            // Default identity, key unchanged: no old row.
            change(
                "author",
                ChangeOp::Update,
                None,
                Some(row(&[("id", Some("1")), ("name", Some("Anna"))]))
            ),
            // FULL identity: the whole old row; the unchanged TOASTed body is taken from it.
            change(
                "Book",
                ChangeOp::Update,
                Some(book("Dune", &body)),
                Some(book("Dune Messiah", &body))
            ),
        ]
    );
    // The unpublished insert is not forwarded: the next transaction is t4.
    let r4 = recv(&mut rx).await;
    assert_eq!(
        summary(&r4.changes),
        vec![
            change(
                "author",
                ChangeOp::Update,
                Some(row(&[("id", Some("1"))])),
                Some(row(&[("id", Some("2")), ("name", Some("Anna"))]))
            ),
            change(
                "Book",
                ChangeOp::Delete,
                Some(book("Dune Messiah", &body)),
                None
            ),
        ]
    );
    let r5 = recv(&mut rx).await;
    assert_eq!(
        summary(&r5.changes),
        vec![
            change("author", ChangeOp::Truncate, None, None),
            change("Book", ChangeOp::Truncate, None, None),
        ]
    );
    // Positions are the commits' end LSNs: inside each transaction's WAL range, increasing.
    for (got, (before, after)) in [(&r1, t1), (&r2, t2), (&r4, t4), (&r5, t5)] {
        assert!(
            before < got.position && got.position <= after,
            "{:X} not in ({before:X}, {after:X}]",
            got.position
        );
    }

    // Nothing acknowledged yet: the slot has not confirmed the first transaction.
    assert!(status(&client, &slot).await.confirmed_flush_lsn < r1.position);

    // Acknowledge t2 only: the slot confirms exactly t2, not the later forwarded ones.
    ack_tx.send_replace(r2.position);
    wait_until(TIMEOUT, "confirmed_flush_lsn reaches t2", || async {
        status(&client, &slot).await.confirmed_flush_lsn >= r2.position
    })
    .await;
    assert_eq!(
        status(&client, &slot).await.confirmed_flush_lsn,
        r2.position
    );

    ack_tx.send_replace(r5.position);
    wait_until(TIMEOUT, "confirmed_flush_lsn reaches t5", || async {
        status(&client, &slot).await.confirmed_flush_lsn >= r5.position
    })
    .await;

    // Transactions with nothing for us (an unpublished table, a logical message) are not
    // forwarded, yet the slot moves past them once everything forwarded is acknowledged.
    let (_, idle_end) = txn(
        &client,
        "INSERT INTO unpublished VALUES (2);
         SELECT pg_logical_emit_message(true, 'test', 'payload');",
    )
    .await;
    wait_until(TIMEOUT, "confirmed_flush_lsn passes idle WAL", || async {
        status(&client, &slot).await.confirmed_flush_lsn >= idle_end
    })
    .await;
    let t7 = txn(&client, "INSERT INTO author VALUES (7, 'Gus')").await;
    let r7 = recv(&mut rx).await;
    assert!(t7.0 < r7.position && r7.position <= t7.1);
    assert_eq!(
        summary(&r7.changes),
        vec![change(
            "author",
            ChangeOp::Insert,
            None,
            Some(row(&[("id", Some("7")), ("name", Some("Gus"))]))
        )]
    );
    ack_tx.send_replace(r7.position);

    // Shutdown: the reader returns Ok, reports its last acknowledgement and releases the slot.
    stop_tx.send_replace(true);
    tokio::time::timeout(TIMEOUT, reader)
        .await
        .expect("reader stops")
        .unwrap()
        .unwrap();
    wait_until(TIMEOUT, "the slot is released", || async {
        !status(&client, &slot).await.active
    })
    .await;
    let last = status(&client, &slot).await;
    // At least t7 (more once a keepalive carried later WAL of other databases of this server).
    assert!(last.confirmed_flush_lsn >= r7.position);
    assert!(last.restart_lsn > 0 && last.restart_lsn <= last.confirmed_flush_lsn);
    assert_eq!(last.plugin.as_deref(), Some("pgoutput"));

    // With no reader, advance_slot releases WAL up to a given position (a lower one is a no-op).
    let (_, after8) = txn(&client, "INSERT INTO author VALUES (8, 'Hal')").await;
    wait_until(TIMEOUT, "the insert is flushed", || async {
        let row = client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .unwrap();
        parse_lsn(row.get(0)).unwrap() >= after8
    })
    .await;
    assert_eq!(
        advance_slot(&client, &slot, r7.position).await.unwrap(),
        last.confirmed_flush_lsn
    );
    let moved = advance_slot(&client, &slot, after8).await.unwrap();
    assert!(
        last.confirmed_flush_lsn < moved && moved <= after8,
        "{moved:X}"
    );
    assert_eq!(status(&client, &slot).await.confirmed_flush_lsn, moved);

    // A new session (the daemon's spawn_reader, on its own arbiter) resumes from the slot: the
    // skipped insert of 8 is not sent again, the insert of 9 is.
    let mut config = Config::default();
    config.postgres.url = Some(Secret::new(pg.url("postgres")));
    let (tx, mut rx) = mpsc::channel(1);
    let (_ack_tx, ack_rx) = watch::channel(moved);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (err_tx, mut err_rx) = mpsc::unbounded_channel();
    let reader = spawn_reader(
        &config,
        &db,
        &slot,
        &publication,
        Default::default(),
        tx,
        ack_rx,
        stop_rx,
        err_tx,
        watch::channel(false).0,
    );
    let t9 = txn(&client, "INSERT INTO author VALUES (9, 'Ida')").await;
    let r9 = recv(&mut rx).await;
    assert!(t9.0 < r9.position && r9.position <= t9.1);
    assert_eq!(
        summary(&r9.changes),
        vec![change(
            "author",
            ChangeOp::Insert,
            None,
            Some(row(&[("id", Some("9")), ("name", Some("Ida"))]))
        )]
    );
    stop_tx.send_replace(true);
    tokio::time::timeout(TIMEOUT, reader)
        .await
        .expect("reader stops")
        .unwrap();
    assert!(err_rx.try_recv().is_err(), "a clean stop reports no error");
    wait_until(TIMEOUT, "the slot is released", || async {
        !status(&client, &slot).await.active
    })
    .await;

    // Teardown, twice.
    assert_eq!(
        teardown(&client, &slot, &publication).await.unwrap(),
        TeardownOutcome {
            slot_dropped: true,
            publication_dropped: true
        }
    );
    assert_eq!(
        teardown(&client, &slot, &publication).await.unwrap(),
        TeardownOutcome {
            slot_dropped: false,
            publication_dropped: false
        }
    );
    assert!(slot_status(&client, &slot).await.unwrap().is_none());
    client
        .batch_execute(&format!("DROP ROLE {}", quote_ident(&role)))
        .await
        .unwrap();
    drop(client);
    pg.drop_database(&db);
}

#[test]
fn actor_streams_large_transactions_in_pieces_and_stops() {
    let pg = shared_postgres();
    let db = unique_db_name("wal_actor");
    pg.create_database(&db);
    pg.psql(
        &db,
        "CREATE TABLE item (id int PRIMARY KEY, v text);
         CREATE TABLE event (id int, kind int, PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
         CREATE TABLE event_1 PARTITION OF event FOR VALUES IN (1);",
    );
    let slot = slot_name("pgsync", &db, "items");
    let publication = publication_name("pgsync", &db, "items");

    let system = actix::System::new();
    system.block_on(async {
        let client = connect(&pg.url(&db)).await;
        let tables = [
            TableId::new("public", "item"),
            TableId::new("public", "event"),
        ];
        let outcome = bootstrap(&client, &slot, &publication, &tables, &[])
            .await
            .unwrap();
        assert!(outcome.slot_created);
        // The partitioned table is one publication entry: a second run changes nothing.
        let again = bootstrap(&client, &slot, &publication, &tables, &[])
            .await
            .unwrap();
        assert!(!again.slot_created && !again.publication_changed);

        let mut cfg = reader_config(pg, &db, &slot, &publication);
        cfg.max_batch_changes = 3;
        let (tx, mut rx) = mpsc::channel(4);
        let (ack_tx, ack_rx) = watch::channel(0u64);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let (exit_tx, exit_rx) = oneshot::channel();
        let arbiter = actix::Arbiter::new();
        let addr = WalReader::new(cfg, tx, ack_rx, stop_rx)
            .on_exit(exit_tx)
            .start_on(&arbiter.handle());

        let ids = |r: &Transaction| -> Vec<String> {
            r.changes
                .iter()
                .map(|c| c.new.as_ref().unwrap()["id"].clone().unwrap())
                .collect()
        };
        txn(&client, "INSERT INTO item VALUES (0, 'a')").await;
        let a = recv(&mut rx).await;
        assert_eq!(ids(&a), ["0"]);

        // 7 changes: two pieces of 3 at the commit's start LSN, the rest at the commit's end.
        let big = txn(
            &client,
            "INSERT INTO item SELECT g, 'x' FROM generate_series(1, 7) g",
        )
        .await;
        let pieces = [
            recv(&mut rx).await,
            recv(&mut rx).await,
            recv(&mut rx).await,
        ];
        assert_eq!(ids(&pieces[0]), ["1", "2", "3"]);
        assert_eq!(ids(&pieces[1]), ["4", "5", "6"]);
        assert_eq!(ids(&pieces[2]), ["7"]);
        assert_eq!(pieces[0].position, pieces[1].position);
        assert!(a.position < pieces[0].position && pieces[0].position < pieces[2].position);
        assert!(big.0 < pieces[2].position && pieces[2].position <= big.1);

        // Exactly 6: the last piece carries no changes, only the commit position.
        let six = txn(&client, "UPDATE item SET v = 'y' WHERE id BETWEEN 1 AND 6").await;
        let p1 = recv(&mut rx).await;
        let p2 = recv(&mut rx).await;
        let end = recv(&mut rx).await;
        assert_eq!((p1.changes.len(), p2.changes.len()), (3, 3));
        assert_eq!(p1.position, p2.position);
        assert!(pieces[2].position < p1.position && p1.position < end.position);
        assert!(end.changes.is_empty());
        assert!(six.0 < end.position && end.position <= six.1);

        // A partition's rows are published as the partitioned table the schema names.
        txn(&client, "INSERT INTO event VALUES (5, 1)").await;
        let ev = recv(&mut rx).await;
        assert_eq!(
            summary(&ev.changes),
            vec![change(
                "event",
                ChangeOp::Insert,
                None,
                Some(row(&[("id", Some("5")), ("kind", Some("1"))]))
            )]
        );

        // Interleaved transactions: B starts first, A commits, B commits right after, so B's
        // commit record usually starts exactly where A's ends. B's pieces (at B's commit LSN)
        // would then share A's position: the reader holds them until A is acknowledged.
        let other = connect(&pg.url(&db)).await;
        other
            .batch_execute("BEGIN; INSERT INTO item SELECT g, 'b' FROM generate_series(100, 106) g")
            .await
            .unwrap();
        txn(&client, "INSERT INTO item VALUES (50, 'a')").await;
        other.batch_execute("COMMIT").await.unwrap();
        let ra = recv(&mut rx).await;
        assert_eq!(ids(&ra), ["50"]);
        let first = match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(piece) => {
                // Not adjacent: the piece's position is above A's, nothing to wait for.
                eprintln!("interleaved commits were not adjacent");
                let piece = piece.unwrap();
                assert!(piece.position > ra.position);
                piece
            }
            Err(_) => {
                eprintln!("adjacent commits: B's pieces waited for A's acknowledgement");
                ack_tx.send_replace(ra.position);
                let piece = recv(&mut rx).await;
                assert_eq!(piece.position, ra.position);
                piece
            }
        };
        let second = recv(&mut rx).await;
        let last = recv(&mut rx).await;
        assert_eq!(ids(&first), ["100", "101", "102"]);
        assert_eq!(ids(&second), ["103", "104", "105"]);
        assert_eq!(ids(&last), ["106"]);
        assert_eq!(second.position, first.position);
        assert!(last.position > first.position);

        ack_tx.send_replace(last.position);
        wait_until(
            TIMEOUT,
            "confirmed_flush_lsn reaches the last commit",
            || async { status(&client, &slot).await.confirmed_flush_lsn >= last.position },
        )
        .await;

        // Stopping the actor ends the stream cleanly and releases the slot.
        addr.send(StopWalReader).await.unwrap();
        let outcome = tokio::time::timeout(TIMEOUT, exit_rx)
            .await
            .expect("actor reports its exit")
            .expect("exit sender kept");
        outcome.unwrap();
        wait_until(TIMEOUT, "the slot is released", || async {
            !status(&client, &slot).await.active
        })
        .await;
        arbiter.stop();

        // The daemon's entry point, inside a System: the reader runs on its own arbiter.
        let mut config = Config::default();
        config.postgres.url = Some(Secret::new(pg.url("postgres")));
        let (tx, mut rx) = mpsc::channel(1);
        let (_ack_tx, ack_rx) = watch::channel(last.position);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (err_tx, mut err_rx) = mpsc::unbounded_channel();
        let reader = spawn_reader(
            &config,
            &db,
            &slot,
            &publication,
            Default::default(),
            tx,
            ack_rx,
            stop_rx,
            err_tx,
            watch::channel(false).0,
        );
        txn(&client, "DELETE FROM item WHERE id = 0").await;
        let del = recv(&mut rx).await;
        assert_eq!(
            summary(&del.changes),
            vec![change(
                "item",
                ChangeOp::Delete,
                Some(row(&[("id", Some("0"))])),
                None
            )]
        );
        stop_tx.send_replace(true);
        tokio::time::timeout(TIMEOUT, reader)
            .await
            .expect("reader stops")
            .unwrap();
        assert!(err_rx.try_recv().is_err(), "a clean stop reports no error");
        wait_until(TIMEOUT, "the slot is released", || async {
            !status(&client, &slot).await.active
        })
        .await;
        assert_eq!(
            teardown(&client, &slot, &publication).await.unwrap(),
            TeardownOutcome {
                slot_dropped: true,
                publication_dropped: true
            }
        );
    });
    pg.drop_database(&db);
}
