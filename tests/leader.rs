//! Redis/Valkey checkpoints and the per-index leader lock, against real Redis, PostgreSQL and
//! osmem-server:
//!
//! - the lock itself through the library's public API (acquire, refusal, renewal,
//!   compare-and-delete, expiry handing the lock to a standby, loss on another token or on a
//!   long outage, a short outage survived) and checkpoint saves waiting out a Redis outage;
//! - two `pgsync run` daemons on one index: one streams, the other is a standby; SIGKILL of the
//!   leader while changes flow hands the index to the standby, which ends equal to a fresh build;
//! - Redis restarted under a running daemon while changes flow: it keeps going;
//! - a daemon whose lock is taken by someone else stops with an error.
//!
//! Every wait polls for the awaited state with a deadline.

mod common;
mod harness;

use common::daemon::Daemon;
use common::daemon::LIBRARY_INDICES as INDICES;
use common::{assert_documents, json_eq, LibraryBed, Workdir};
use harness::{Osmem, Postgres, Redis, Resp};
use pgsync_rs::checkpoint::{
    lock_key, redis_client, redis_key, CheckpointRecord, LeaderLock, Renewal, Store,
};
use pgsync_rs::config::{CheckpointConfig, CheckpointStore, Secret};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The lock and the store, through the library.

async fn lock_client(redis: &Redis) -> fred::clients::Client {
    redis_client(&Secret::new(redis.url()), Duration::from_millis(500))
        .await
        .expect("connect to redis")
}

fn get(redis: &Redis, key: &str) -> Option<String> {
    match redis.cmd(&["GET", key]) {
        Resp::Bulk(v) => v,
        other => panic!("GET {key}: {other:?}"),
    }
}

fn pttl(redis: &Redis, key: &str) -> i64 {
    match redis.cmd(&["PTTL", key]) {
        Resp::Int(n) => n,
        other => panic!("PTTL {key}: {other:?}"),
    }
}

/// Polls `f` every 20 ms until it is true; panics naming `what` after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_acquire_refuse_renew_and_compare_and_delete() {
    let redis = Redis::start();
    let client = lock_client(&redis).await;
    let key = "pgsync:leader:unit";
    let ttl = Duration::from_secs(2);
    let a = LeaderLock::new(client.clone(), key, "A", ttl).unwrap();
    let b = LeaderLock::new(client.clone(), key, "B", ttl).unwrap();

    assert!(a.try_acquire().await.unwrap(), "a free lock is acquired");
    assert!(!b.try_acquire().await.unwrap(), "a held lock is refused");
    assert!(
        !a.try_acquire().await.unwrap(),
        "SET NX: not even the holder sets it twice"
    );
    assert_eq!(get(&redis, key).as_deref(), Some("A"));
    assert_eq!(b.holder().await.unwrap().as_deref(), Some("A"));
    let t = pttl(&redis, key);
    assert!(t > 0 && t <= 2000, "PX ttl set: {t}");

    // Renewal extends only our own key.
    redis.cmd(&["PEXPIRE", key, "300"]);
    assert_eq!(a.renew().await.unwrap(), Renewal::Extended);
    let t = pttl(&redis, key);
    assert!(t > 1000, "renewal restarted the ttl: {t}");
    assert_eq!(b.renew().await.unwrap(), Renewal::Taken("A".into()));
    assert_eq!(
        get(&redis, key).as_deref(),
        Some("A"),
        "b's renewal left a's key"
    );

    // Compare-and-delete never frees someone else's lock.
    assert!(!b.release().await.unwrap());
    assert_eq!(get(&redis, key).as_deref(), Some("A"));
    assert!(a.release().await.unwrap());
    assert_eq!(get(&redis, key), None);
    assert!(!a.release().await.unwrap(), "releasing twice is a no-op");

    // A key that vanished while we held it (Redis restarted empty) is taken again by a renewal.
    assert!(a.try_acquire().await.unwrap());
    redis.cmd(&["DEL", key]);
    assert_eq!(a.renew().await.unwrap(), Renewal::Reacquired);
    assert_eq!(get(&redis, key).as_deref(), Some("A"));
    assert!(pttl(&redis, key) > 0, "re-acquired with an expiry");

    // Too short a ttl is a configuration error.
    let e = LeaderLock::new(client, key, "C", Duration::from_millis(10))
        .err()
        .expect("10 ms ttl refused");
    assert!(e.to_string().contains("lock_ttl_ms"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lock_is_renewed_and_a_standby_takes_over_after_expiry() {
    let redis = Redis::start();
    let client = lock_client(&redis).await;
    let key = "pgsync:leader:failover";
    let ttl = Duration::from_millis(900);
    let a = LeaderLock::new(client.clone(), key, "A", ttl).unwrap();
    let b = LeaderLock::new(client.clone(), key, "B", ttl).unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);

    let held_a = a.acquire(stop.clone()).await.unwrap().expect("a leads");
    let standby = tokio::spawn({
        let stop = stop.clone();
        async move { b.acquire(stop).await }
    });
    // An absence can only be observed over a window: three lifetimes, during which the key must
    // stay a's (renewed) and the standby must keep waiting.
    let window = Instant::now() + ttl * 3;
    while Instant::now() < window {
        assert_eq!(
            get(&redis, key).as_deref(),
            Some("A"),
            "renewal keeps a's key"
        );
        assert!(!standby.is_finished(), "the standby waits while a renews");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a dies without releasing (its renewer stops): the key expires and b takes over.
    let died = Instant::now();
    drop(held_a);
    eventually(
        Duration::from_secs(5),
        "the standby acquires the lock",
        || standby.is_finished(),
    )
    .await;
    let took = died.elapsed();
    let held_b = standby.await.unwrap().unwrap().expect("b leads");
    assert_eq!(get(&redis, key).as_deref(), Some("B"));
    assert!(
        took < ttl + ttl / 3 + Duration::from_millis(1500),
        "takeover took {took:?} with a ttl of {ttl:?}"
    );

    held_b.release().await;
    assert_eq!(get(&redis, key), None, "a clean release deletes the key");

    // A standby asked to stop gives up with None.
    let c = LeaderLock::new(client, key, "C", ttl).unwrap();
    assert!(c.try_acquire().await.unwrap());
    let d = LeaderLock::new(lock_client(&redis).await, key, "D", ttl).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let waiting = tokio::spawn(async move { d.acquire(stop).await });
    stop_tx.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a stopped standby returns")
        .unwrap()
        .unwrap();
    assert!(r.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_lost_to_another_token_and_to_a_long_outage_but_not_a_short_one() {
    let redis = Redis::start();
    let key = "pgsync:leader:loss";
    let ttl = Duration::from_millis(1500);
    let a = LeaderLock::new(lock_client(&redis).await, key, "A", ttl).unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);

    // Another process overwrote the key: the next renewal reports the loss.
    let mut held = a.acquire(stop.clone()).await.unwrap().unwrap();
    redis.cmd(&["SET", key, "intruder"]);
    let e = tokio::time::timeout(ttl * 2, held.lost())
        .await
        .expect("the loss is reported within the ttl");
    assert!(e.to_string().contains("another daemon (intruder)"), "{e}");
    held.release().await;
    assert_eq!(
        get(&redis, key).as_deref(),
        Some("intruder"),
        "release spared the intruder"
    );
    redis.cmd(&["DEL", key]);

    // A short outage, well inside the ttl: the lock survives (re-taken after the empty restart).
    let mut held = a.acquire(stop.clone()).await.unwrap().unwrap();
    redis.stop();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.start_again();
    let outage = down.elapsed();
    if outage < ttl / 2 {
        eventually(Duration::from_secs(5), "the lock is back in Redis", || {
            get(&redis, key).as_deref() == Some("A")
        })
        .await;
        let quiet = tokio::time::timeout(ttl * 2, held.lost()).await;
        assert!(
            quiet.is_err(),
            "lock lost after a {outage:?} outage: {:?}",
            quiet.err()
        );
    } else {
        eprintln!("restarting redis took {outage:?}: skipping the short-outage check");
    }

    // An outage longer than the ttl: the holder is told before the key could expire.
    redis.stop();
    let down = Instant::now();
    let e = tokio::time::timeout(ttl * 3, held.lost())
        .await
        .expect("the loss is reported");
    assert!(down.elapsed() < ttl, "reported after {:?}", down.elapsed());
    assert!(e.to_string().contains("could not renew"), "{e}");
    redis.start_again();
    held.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_saves_wait_for_redis_to_come_back() {
    let redis = Redis::start();
    let cfg = CheckpointConfig {
        store: CheckpointStore::Redis,
        redis_url: Some(Secret::new(redis.url())),
        ..CheckpointConfig::default()
    };
    let store = Store::open(&cfg).await.unwrap();
    store.save("idx", &CheckpointRecord::at(10)).await.unwrap();
    assert_eq!(
        store.load("idx").await.unwrap(),
        Some(CheckpointRecord::at(10))
    );

    redis.stop();
    let saving = tokio::spawn({
        let store = store.clone();
        async move { store.save("idx", &CheckpointRecord::at(20)).await }
    });
    // The save must neither fail nor claim success while Redis is down.
    let window = Instant::now() + Duration::from_millis(800);
    while Instant::now() < window {
        assert!(!saving.is_finished(), "save ended while Redis was down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.start_again();
    tokio::time::timeout(Duration::from_secs(20), saving)
        .await
        .expect("the save completes once Redis is back")
        .unwrap()
        .unwrap();
    assert_eq!(
        get(&redis, &redis_key("idx")).map(|s| s.contains("20")),
        Some(true)
    );
    assert_eq!(
        store.load("idx").await.unwrap(),
        Some(CheckpointRecord::at(20))
    );

    // An unreachable Redis at start-up is reported at once, without the URL's password.
    let dead = CheckpointConfig {
        redis_url: Some(Secret::new(format!(
            "redis://:hunter2@127.0.0.1:{}",
            harness::free_port()
        ))),
        ..cfg
    };
    let e = Store::open(&dead).await.err().expect("no redis there");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(e.to_string().contains("REDIS_URL"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Daemons.

/// Polls `f` every 50 ms; panics with `what` and `context()` after `timeout`.
fn poll(timeout: Duration, what: &str, context: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stream of committed transactions in a background thread.
struct Changes {
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Changes {
    fn count(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `more` transactions beyond the current count are committed.
    fn wait_for(&self, more: usize, what: &str) {
        let target = self.count() + more;
        poll(Duration::from_secs(60), what, String::new, || {
            assert!(!self.thread.is_finished(), "the change writer died");
            self.count() >= target
        });
    }

    /// Stops after the transaction in progress; returns how many were committed.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let n = self.count();
        self.thread.join().expect("change writer");
        n.max(self.done.load(Ordering::SeqCst))
    }
}

/// A library database, a search server and a work dir whose daemon keeps checkpoints and
/// leader locks in `redis`.
struct Setup {
    pg: &'static Postgres,
    db: String,
    os: Osmem,
    work: Workdir,
    notify: bool,
}

impl Setup {
    /// Starts a daemon and waits until it holds the lock and streams every index.
    fn start_leader(&self, redis: &Redis, name: &str) -> Daemon {
        self.start_leader_with_env(redis, name, &[])
    }

    /// Like [`Setup::start_leader`], with extra environment variables (e.g. `FAILPOINTS`).
    fn start_leader_with_env(&self, redis: &Redis, name: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::start_with_env(&self.work, name, env);
        poll(
            Duration::from_secs(60),
            &format!("daemon {name} leads and streams"),
            d.logger(),
            || {
                d.assert_alive("starting");
                self.leads(redis, d.pid()) && self.captures_all(&d.log())
            },
        );
        d
    }

    fn new(prefix: &str, redis: &Redis, lock_ttl_ms: u64) -> Setup {
        Self::with_mode(prefix, redis, lock_ttl_ms, false)
    }

    /// Like [`Setup::new`], with `[capture] mode = "notify"` when `notify`.
    fn with_mode(prefix: &str, redis: &Redis, lock_ttl_ms: u64, notify: bool) -> Setup {
        let LibraryBed { pg, db, os, work } = LibraryBed::new(prefix);
        let toml = std::fs::read_to_string(&work.config).unwrap();
        let toml = toml.replacen(
            "[checkpoint]\n",
            &format!(
                "[checkpoint]\nstore = \"redis\"\nredis_url = \"{}\"\nlock_ttl_ms = {lock_ttl_ms}\n",
                redis.url()
            ),
            1,
        );
        assert!(toml.contains("store = \"redis\""), "{toml}");
        let capture = if notify { "notify" } else { "wal" };
        let toml = format!("{toml}\n[capture]\nmode = \"{capture}\"\n");
        std::fs::write(&work.config, toml).unwrap();
        Setup {
            pg,
            db,
            os,
            work,
            notify,
        }
    }

    /// Whether `log` shows change capture running for every index.
    fn captures_all(&self, log: &str) -> bool {
        let marker = if self.notify {
            "listening for changes"
        } else {
            "streaming changes from the WAL"
        };
        log.matches(marker).count() >= INDICES.len()
    }

    fn slot(&self, index: &str) -> String {
        pgsync_rs::source::slot::slot_name("pgsync", &self.db, index)
    }

    fn lock_holder(&self, redis: &Redis, index: &str) -> Option<String> {
        get(redis, &lock_key(&self.slot(index)))
    }

    /// Whether the daemon with `pid` holds the lock of every index.
    fn leads(&self, redis: &Redis, pid: u32) -> bool {
        let tag = format!(":{pid}:");
        INDICES
            .iter()
            .all(|i| self.lock_holder(redis, i).is_some_and(|t| t.contains(&tag)))
    }

    fn active_slots(&self) -> Vec<String> {
        let out = self.pg.psql(
            "postgres",
            &format!(
                "SELECT slot_name || ':' || active_pid FROM pg_replication_slots \
                 WHERE database = '{}' AND active ORDER BY 1",
                self.db
            ),
        );
        out.lines().map(str::to_owned).collect()
    }

    /// Transactions touching both indices, run in a thread until [`Changes::finish`].
    fn changes(&self) -> Changes {
        let (pg, db) = (self.pg, self.db.clone());
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, st) = (done.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for i in 1usize.. {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let book = i % 3 + 1;
                let sql = format!(
                    "BEGIN;
                     UPDATE book SET price = {i}.25, title = 'Title {i}' WHERE id = {book};
                     INSERT INTO review (id, book_id, rating, body) VALUES ({r}, {book}, {rating}, 'review {i}');
                     DELETE FROM review WHERE id = {old};
                     UPDATE author SET name = 'Author {i}' WHERE id = {author};
                     UPDATE edition_printing SET copies = {i} WHERE id = 1;
                     COMMIT;",
                    r = 1000 + i,
                    rating = i % 5 + 1,
                    old = 1000 + i.saturating_sub(3),
                    author = i % 6 + 1,
                );
                pg.psql(&db, &sql);
                d.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Changes { done, stop, thread }
    }

    /// Waits until every index equals a fresh `pgsync run --once` of the current rows.
    fn assert_equals_fresh_build(&self, context: impl Fn() -> String) {
        let fresh = common::daemon::fresh_library_build(self.pg, &self.db);
        let expected: Vec<_> = INDICES.iter().map(|i| fresh[*i].clone()).collect();
        let same = || {
            INDICES.iter().zip(&expected).all(|(i, want)| {
                self.os.try_all_docs(i).is_some_and(|got| {
                    json_eq(
                        &Value::Object(got.into_iter().collect()),
                        &Value::Object(want.clone().into_iter().collect()),
                    )
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !same() {
            if Instant::now() > deadline {
                eprintln!("{}", context());
                for (i, want) in INDICES.iter().zip(&expected) {
                    assert_documents(i, &self.os.all_docs(i), want);
                }
                panic!("documents differ only in number formatting?");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Drops the database and its slots (their daemons are gone), so none pile up in the
    /// shared server.
    fn drop_database(&self) {
        let db = &self.db;
        poll(
            Duration::from_secs(30),
            "the slots of the test database are dropped",
            String::new,
            || {
                let left = self.pg.psql(
                    "postgres",
                    &format!(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE database = '{db}' AND active_pid IS NOT NULL;
                         SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                         WHERE database = '{db}' AND NOT active;
                         SELECT count(*) FROM pg_replication_slots WHERE database = '{db}'"
                    ),
                );
                left.lines().last() == Some("0")
            },
        );
        self.pg.drop_database(db);
    }
}

#[test]
fn standby_takes_over_when_the_leader_is_killed_mid_stream() {
    failover(false)
}

#[test]
fn standby_takes_over_when_the_leader_is_killed_mid_stream_in_notify_mode() {
    failover(true)
}

fn failover(notify: bool) {
    let redis = Redis::start();
    let s = Setup::with_mode("leader_failover", &redis, 1500, notify);

    let mut a = s.start_leader(&redis, "a");
    let mut b = Daemon::start(&s.work, "b");
    poll(
        Duration::from_secs(30),
        "daemon b waits as a standby for both indices",
        b.logger(),
        || {
            b.assert_alive("b starting");
            b.log().matches("standby").count() >= 2
        },
    );
    assert!(!b.log().contains("streaming changes"), "{}", b.log());

    // A standby asked to stop exits cleanly at once, leaving the leader alone.
    let mut c = Daemon::start(&s.work, "c");
    poll(
        Duration::from_secs(30),
        "daemon c waits as a standby",
        c.logger(),
        || c.log().matches("standby").count() >= 2,
    );
    let status = c.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", c.log());
    assert!(s.leads(&redis, a.pid()), "a still leads");
    let active = s.active_slots();
    let streams = if notify { 0 } else { INDICES.len() };
    assert_eq!(
        active.len(),
        streams,
        "one WAL stream per index: {active:?}"
    );
    assert!(
        active
            .iter()
            .all(|l| !l.ends_with(&format!(":{}", b.pid()))),
        "{active:?}"
    );

    // Changes flow; the leader dies in the middle of them.
    let changes = s.changes();
    changes.wait_for(15, "changes flow to the leader");
    a.kill();
    let killed = Instant::now();
    poll(
        Duration::from_secs(20),
        "b takes over both indices",
        b.logger(),
        || {
            b.assert_alive("b taking over");
            s.leads(&redis, b.pid())
        },
    );
    let takeover = killed.elapsed();
    eprintln!("takeover after {takeover:?}");
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    changes.wait_for(15, "changes flow to the new leader");
    let n = changes.finish();
    eprintln!("{n} transactions committed");

    s.assert_equals_fresh_build(|| b.log());
    b.assert_alive("b after catching up");
    assert!(b.log().contains("took over as leader"), "{}", b.log());

    assert!(
        b.terminate(Duration::from_secs(30)).success(),
        "{}",
        b.log()
    );
    for i in INDICES {
        assert_eq!(s.lock_holder(&redis, i), None, "b released the lock of {i}");
        assert!(
            get(&redis, &redis_key(&s.slot(i))).is_some(),
            "checkpoint of {i} in Redis"
        );
    }
    s.drop_database();
}

#[test]
fn daemon_survives_a_redis_restart_while_changes_flow() {
    let redis = Redis::start();
    // A long lock lifetime: the outage below lasts until a checkpoint write has failed once.
    let s = Setup::new("leader_redis_restart", &redis, 15_000);
    let mut d = s.start_leader(&redis, "d");
    let changes = s.changes();
    changes.wait_for(15, "changes flow");
    // A restart (stop, then start again empty on the same port) with the server down long
    // enough for a checkpoint write to fail and be retried.
    redis.stop();
    let down = Instant::now();
    poll(
        Duration::from_secs(10),
        "a checkpoint write fails while Redis is down",
        d.logger(),
        || {
            d.assert_alive("while Redis is down");
            d.log().contains("in Redis (store): outage started")
        },
    );
    redis.start_again();
    eprintln!("Redis was down for {:?}", down.elapsed());
    d.assert_alive("right after the Redis restart");
    changes.wait_for(15, "changes flow after the restart");
    changes.finish();
    d.assert_alive("after the changes");

    s.assert_equals_fresh_build(|| d.log());
    poll(
        Duration::from_secs(20),
        "the checkpoints and the lock are back in Redis",
        d.logger(),
        || {
            INDICES
                .iter()
                .all(|i| get(&redis, &redis_key(&s.slot(i))).is_some())
                && s.leads(&redis, d.pid())
        },
    );
    d.assert_alive("at the end");
    let log = d.log();
    assert!(
        log.contains("took it again"),
        "the lock was re-taken after the restart:\n{log}"
    );
    assert!(
        d.terminate(Duration::from_secs(30)).success(),
        "{}",
        d.log()
    );
    s.drop_database();
}

#[test]
fn leader_stops_with_an_error_when_its_lock_is_taken() {
    let redis = Redis::start();
    let s = Setup::new("leader_lock_taken", &redis, 1500);
    let mut d = s.start_leader(&redis, "d");
    redis.cmd(&["SET", &lock_key(&s.slot("book")), "intruder-host:1:0"]);
    let status = d.wait_exit(Duration::from_secs(10));
    let log = d.log();
    assert!(!status.success(), "{status}\n{log}");
    assert!(log.contains("lost the leader lock"), "{log}");
    assert!(log.contains("intruder-host:1:0"), "{log}");
    assert!(log.contains("hint:"), "{log}");
    s.drop_database();
}

/// A leader frozen (SIGSTOP) past its lock's lifetime with a document already built, then
/// resumed, cannot overwrite what the new leader wrote meanwhile: its write carries the older
/// version (the WAL position of its snapshot) and the engine keeps the newer one. The old leader
/// holds its built document in a 3 s pause before the bulk request (fault point `stream-write`),
/// during which it is frozen.
#[test]
fn a_leader_frozen_past_its_lock_ttl_cannot_overwrite_what_the_new_leader_wrote() {
    let redis = Redis::start();
    let s = Setup::new("leader_frozen", &redis, 1000);
    let mut a = s.start_leader_with_env(
        &redis,
        "a",
        &[("FAILPOINTS", "stream-write=1*return(3000)")],
    );
    let mut b = Daemon::start(&s.work, "b");
    poll(
        Duration::from_secs(30),
        "b is a standby",
        b.logger(),
        || {
            b.assert_alive("b starting");
            b.log().matches("standby").count() >= 2
        },
    );
    s.pg.psql(&s.db, "UPDATE book SET title = 'Old' WHERE id = 1");
    poll(
        Duration::from_secs(30),
        "a built the old document",
        a.logger(),
        || a.log().contains("fault point: pausing"),
    );
    common::daemon::signal(a.pid(), "STOP");
    poll(Duration::from_secs(30), "b takes over", b.logger(), || {
        b.assert_alive("b taking over");
        s.leads(&redis, b.pid()) && s.captures_all(&b.log())
    });
    s.pg.psql(&s.db, "UPDATE book SET title = 'New' WHERE id = 1");
    let title = |os: &Osmem| os.doc("book", "1").map(|d| d["book_title"].clone());
    poll(
        Duration::from_secs(30),
        "b indexes the new title",
        b.logger(),
        || title(&s.os) == Some(Value::from("New")),
    );
    common::daemon::signal(a.pid(), "CONT");
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(
        !status.success(),
        "a lost its lock: it must exit non-zero\n{}",
        a.log()
    );
    let refused = a.log().contains("already held newer versions");
    eprintln!(
        "the old leader {} its stale document before it stopped",
        if refused {
            "sent (and the engine refused)"
        } else {
            "never sent"
        }
    );
    s.os.refresh("book");
    assert_eq!(
        title(&s.os),
        Some(Value::from("New")),
        "the stale write won\n{}",
        a.log()
    );
    b.assert_alive("after the old leader resumed");
}
