//! A random workload on the library fixture: threads applying random transactions across every
//! table, as many as a test grants, so a test decides what happens between which changes
//! whatever the speed of the machine. Used by the streaming and fault-injection suites.

use super::daemon::sql_literal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

/// Foreign keys that cascade, so random deletes and key changes of parents succeed and ripple
/// through child tables (more changes per transaction, and cascaded ones).
pub const CASCADING_FOREIGN_KEYS: &str = r#"
ALTER TABLE author
    DROP CONSTRAINT author_country_code_fkey,
    ADD CONSTRAINT author_country_code_fkey FOREIGN KEY (country_code)
        REFERENCES country (code) ON UPDATE CASCADE ON DELETE SET NULL,
    DROP CONSTRAINT author_mentor_id_fkey,
    ADD CONSTRAINT author_mentor_id_fkey FOREIGN KEY (mentor_id)
        REFERENCES author (id) ON UPDATE CASCADE ON DELETE SET NULL;
ALTER TABLE book
    DROP CONSTRAINT book_publisher_id_fkey,
    ADD CONSTRAINT book_publisher_id_fkey FOREIGN KEY (publisher_id)
        REFERENCES press."Publisher" (id) ON UPDATE CASCADE ON DELETE SET NULL,
    DROP CONSTRAINT book_translator_id_fkey,
    ADD CONSTRAINT book_translator_id_fkey FOREIGN KEY (translator_id)
        REFERENCES author (id) ON UPDATE CASCADE ON DELETE SET NULL;
ALTER TABLE book_author
    DROP CONSTRAINT book_author_book_id_fkey,
    ADD CONSTRAINT book_author_book_id_fkey FOREIGN KEY (book_id)
        REFERENCES book (id) ON UPDATE CASCADE ON DELETE CASCADE,
    DROP CONSTRAINT book_author_author_id_fkey,
    ADD CONSTRAINT book_author_author_id_fkey FOREIGN KEY (author_id)
        REFERENCES author (id) ON UPDATE CASCADE ON DELETE CASCADE;
ALTER TABLE chapter
    DROP CONSTRAINT chapter_book_id_fkey,
    ADD CONSTRAINT chapter_book_id_fkey FOREIGN KEY (book_id)
        REFERENCES book (id) ON UPDATE CASCADE ON DELETE CASCADE;
ALTER TABLE review
    DROP CONSTRAINT review_book_id_fkey,
    ADD CONSTRAINT review_book_id_fkey FOREIGN KEY (book_id)
        REFERENCES book (id) ON UPDATE CASCADE ON DELETE CASCADE;
ALTER TABLE edition
    DROP CONSTRAINT edition_book_id_fkey,
    ADD CONSTRAINT edition_book_id_fkey FOREIGN KEY (book_id)
        REFERENCES book (id) ON UPDATE CASCADE ON DELETE CASCADE;
ALTER TABLE edition_printing
    DROP CONSTRAINT edition_printing_book_id_edition_number_fkey,
    ADD CONSTRAINT edition_printing_book_id_edition_number_fkey FOREIGN KEY (book_id, edition_number)
        REFERENCES edition (book_id, number) ON UPDATE CASCADE ON DELETE CASCADE;
"#;

/// SplitMix64: a small seeded generator, enough to pick random statements reproducibly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True `percent` % of the time.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// `PGSYNC_TEST_SEED`, else one from the clock; printed so a failure can be replayed.
pub fn seed(what: &str) -> u64 {
    let seed = std::env::var("PGSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        });
    eprintln!("{what}: seed {seed} (replay with PGSYNC_TEST_SEED={seed})");
    seed
}

pub const COUNTRIES: &[&str] = &["CO", "FR", "JP", "RU", "US", "DE", "IT", "BR"];
pub const WORDS: &[&str] = &[
    "Night",
    "Café",
    "O'Neil",
    "森",
    "Ставка",
    "river",
    "Zoë",
    "and",
    "the",
    "🙂",
    "a, b",
];
pub const STATUSES: &[&str] = &["NULL", "'draft'", "'published'", "'out_of_print'"];
pub const BOOLS: &[&str] = &["NULL", "true", "false"];

/// A text value: a few words, or now and then ~6 kB that TOAST stores out of line, so that an
/// update of another column of the row decodes it as "unchanged".
pub fn words(rng: &mut Rng) -> String {
    if rng.chance(2) {
        return "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200))".into();
    }
    let n = 1 + rng.below(3);
    let w: Vec<&str> = (0..n).map(|_| *rng.pick(WORDS)).collect();
    sql_literal(&w.join(" "))
}

/// NULL one time in five, else `value(rng)`.
pub fn maybe(rng: &mut Rng, value: impl FnOnce(&mut Rng) -> String) -> String {
    if rng.chance(20) {
        "NULL".into()
    } else {
        value(rng)
    }
}

pub fn date(rng: &mut Rng) -> String {
    format!(
        "'{}-{:02}-{:02}'",
        rng.int(1800, 2024),
        rng.int(1, 12),
        rng.int(1, 28)
    )
}

/// One random statement on one table of the fixture. Inserts and moves only reference rows that
/// exist (through `SELECT ... WHERE`), so most statements succeed; the rest fail on races with
/// other threads (unique, foreign key, deadlock), and their transaction is rolled back.
pub fn random_statement(rng: &mut Rng) -> String {
    if rng.below(300) == 0 {
        let t = rng.pick(&["chapter", "review", "book_author", "edition_printing"]);
        return format!("TRUNCATE {t}");
    }
    // 0..45 insert, 45..80 update, 80..90 delete, 90..100 key change (or move).
    let op = rng.below(100);
    let kind = if op < 45 {
        0
    } else if op < 80 {
        1
    } else if op < 90 {
        2
    } else {
        3
    };
    let (b, b2) = (rng.int(1, 30), rng.int(1, 30));
    let (a, a2) = (rng.int(1, 16), rng.int(1, 16));
    let (p, p2) = (rng.int(1, 6), rng.int(1, 6));
    let (c, c2) = (*rng.pick(COUNTRIES), *rng.pick(COUNTRIES));
    let (n, n2) = (rng.int(1, 3), rng.int(1, 3));
    let (id, id2) = (rng.int(1, 60), rng.int(1, 60));
    let publisher_of = |p: i64| format!(r#"(SELECT id FROM press."Publisher" WHERE id = {p})"#);
    let author_of = |a: i64| format!("(SELECT id FROM author WHERE id = {a})");
    let country_of = |c: &str| format!("(SELECT code FROM country WHERE code = '{c}')");
    match rng.below(18) {
        // press."Publisher"
        0 => match kind {
            0 => format!(
                r#"INSERT INTO press."Publisher" (id, "Name", "HQ city") VALUES ({p}, {}, {}) ON CONFLICT (id) DO NOTHING"#,
                words(rng),
                maybe(rng, words)
            ),
            1 if rng.chance(50) => format!(
                r#"UPDATE press."Publisher" SET "Name" = {} WHERE id = {p}"#,
                words(rng)
            ),
            1 => format!(
                r#"UPDATE press."Publisher" SET "HQ city" = {} WHERE id = {p}"#,
                maybe(rng, words)
            ),
            2 => format!(r#"DELETE FROM press."Publisher" WHERE id = {p}"#),
            _ => format!(
                r#"UPDATE press."Publisher" SET id = {p2} WHERE id = {p} AND NOT EXISTS (SELECT 1 FROM press."Publisher" WHERE id = {p2})"#
            ),
        },
        // country
        1 => match kind {
            0 => format!(
                "INSERT INTO country (code, name) VALUES ('{c}', {}) ON CONFLICT (code) DO NOTHING",
                words(rng)
            ),
            1 => format!(
                "UPDATE country SET name = {} WHERE code = '{c}'",
                words(rng)
            ),
            2 => format!("DELETE FROM country WHERE code = '{c}'"),
            _ => format!(
                "UPDATE country SET code = '{c2}' WHERE code = '{c}' AND NOT EXISTS (SELECT 1 FROM country WHERE code = '{c2}')"
            ),
        },
        // author
        2 | 3 => match kind {
            0 => format!(
                "INSERT INTO author (id, name, country_code, mentor_id, born) VALUES ({a}, {}, {}, {}, {}) ON CONFLICT (id) DO NOTHING",
                words(rng),
                country_of(c),
                author_of(a2),
                maybe(rng, date)
            ),
            1 => match rng.below(4) {
                0 => format!("UPDATE author SET name = {} WHERE id = {a}", words(rng)),
                1 => format!(
                    "UPDATE author SET country_code = {} WHERE id = {a}",
                    country_of(c)
                ),
                2 => format!(
                    "UPDATE author SET mentor_id = {} WHERE id = {a}",
                    author_of(a2)
                ),
                _ => format!(
                    "UPDATE author SET born = {} WHERE id = {a}",
                    maybe(rng, date)
                ),
            },
            2 => format!("DELETE FROM author WHERE id = {a}"),
            _ => format!(
                "UPDATE author SET id = {a2} WHERE id = {a} AND NOT EXISTS (SELECT 1 FROM author WHERE id = {a2})"
            ),
        },
        // book
        4..=6 => match kind {
            0 => format!(
                "INSERT INTO book (id, isbn, title, publisher_id, translator_id, price, published_at, \
                 updated_at, release, uid, tags, doc, status, in_print) VALUES ({b}, '978-{}', {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) \
                 ON CONFLICT (id) DO NOTHING",
                rng.int(0, 99_999),
                words(rng),
                publisher_of(p),
                author_of(a),
                maybe(rng, |r| format!("{}.{:02}", r.int(0, 99), r.int(0, 99))),
                maybe(rng, |r| format!("'2001-02-03 04:05:{:02}.5'", r.int(0, 59))),
                maybe(rng, |r| format!("'2020-01-02 03:04:05+0{}'", r.int(0, 9))),
                maybe(rng, date),
                maybe(rng, |_| "gen_random_uuid()".into()),
                maybe(rng, |r| format!("ARRAY[{}, {}]", words(r), words(r))),
                maybe(rng, |r| format!(
                    r#"'{{"name": "n{}", "meta": {{"pages": {}}}, "a": {{"b": {{"c": [1, 2, 3, 4, {}], "label": "l"}}}}}}'"#,
                    r.int(0, 9),
                    r.int(1, 999),
                    r.int(0, 99)
                )),
                rng.pick(STATUSES),
                rng.pick(BOOLS)
            ),
            1 => {
                let set = match rng.below(8) {
                    0 => format!("title = {}", words(rng)),
                    1 => format!("isbn = '{}-{}'", rng.int(0, 999), rng.int(0, 999)),
                    2 => format!(
                        "price = {}",
                        maybe(rng, |r| format!("{}.{:02}", r.int(0, 99), r.int(0, 99)))
                    ),
                    3 => format!(
                        "status = {}, in_print = {}",
                        rng.pick(STATUSES),
                        rng.pick(BOOLS)
                    ),
                    4 => format!("publisher_id = {}", publisher_of(p)),
                    5 => format!("translator_id = {}", author_of(a)),
                    6 => format!(
                        "tags = {}",
                        maybe(rng, |r| format!("ARRAY[{}]", words(r)))
                    ),
                    _ => format!(
                        "doc = {}",
                        maybe(rng, |r| format!(r#"'{{"name": "m{}"}}'"#, r.int(0, 9)))
                    ),
                };
                format!("UPDATE book SET {set} WHERE id = {b}")
            }
            2 => format!("DELETE FROM book WHERE id = {b}"),
            _ => format!(
                "UPDATE book SET id = {b2} WHERE id = {b} AND NOT EXISTS (SELECT 1 FROM book WHERE id = {b2})"
            ),
        },
        // book_author (through table)
        7 | 8 => match kind {
            0 => format!(
                "INSERT INTO book_author (book_id, author_id, role) SELECT b.id, a.id, {} FROM book b, author a \
                 WHERE b.id = {b} AND a.id = {a} ON CONFLICT DO NOTHING",
                words(rng)
            ),
            1 => format!(
                "UPDATE book_author SET role = {} WHERE book_id = {b} AND author_id = {a}",
                words(rng)
            ),
            2 if rng.chance(20) => format!("DELETE FROM book_author WHERE book_id = {b}"),
            2 => format!("DELETE FROM book_author WHERE book_id = {b} AND author_id = {a}"),
            _ if rng.chance(50) => format!(
                "UPDATE book_author SET book_id = {b2} WHERE book_id = {b} AND author_id = {a} \
                 AND EXISTS (SELECT 1 FROM book WHERE id = {b2}) \
                 AND NOT EXISTS (SELECT 1 FROM book_author WHERE book_id = {b2} AND author_id = {a})"
            ),
            _ => format!(
                "UPDATE book_author SET author_id = {a2} WHERE book_id = {b} AND author_id = {a} \
                 AND EXISTS (SELECT 1 FROM author WHERE id = {a2}) \
                 AND NOT EXISTS (SELECT 1 FROM book_author WHERE book_id = {b} AND author_id = {a2})"
            ),
        },
        // chapter
        9 | 10 => match kind {
            0 => format!(
                "INSERT INTO chapter (id, book_id, title) SELECT {id}, id, {} FROM book WHERE id = {b} ON CONFLICT (id) DO NOTHING",
                maybe(rng, words)
            ),
            1 if rng.chance(50) => format!(
                "UPDATE chapter SET title = {} WHERE id = {id}",
                maybe(rng, words)
            ),
            1 => format!(
                "UPDATE chapter SET book_id = {b} WHERE id = {id} AND EXISTS (SELECT 1 FROM book WHERE id = {b})"
            ),
            2 => format!("DELETE FROM chapter WHERE id = {id}"),
            _ => format!(
                "UPDATE chapter SET id = {id2} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM chapter WHERE id = {id2})"
            ),
        },
        // review (also the base table of the book_rating view)
        11 => match kind {
            0 => format!(
                "INSERT INTO review (id, book_id, rating, body) SELECT {id}, id, {}, {} FROM book WHERE id = {b} ON CONFLICT (id) DO NOTHING",
                rng.int(1, 5),
                maybe(rng, words)
            ),
            1 if rng.chance(50) => format!(
                "UPDATE review SET rating = {}, body = {} WHERE id = {id}",
                rng.int(1, 5),
                maybe(rng, words)
            ),
            1 => format!(
                "UPDATE review SET book_id = {b} WHERE id = {id} AND EXISTS (SELECT 1 FROM book WHERE id = {b})"
            ),
            2 => format!("DELETE FROM review WHERE id = {id}"),
            _ => format!(
                "UPDATE review SET id = {id2} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM review WHERE id = {id2})"
            ),
        },
        // edition (root of the second index)
        12..=14 => match kind {
            0 => format!(
                "INSERT INTO edition (book_id, number, format) SELECT id, {n}, {} FROM book WHERE id = {b} ON CONFLICT DO NOTHING",
                words(rng)
            ),
            1 => format!(
                "UPDATE edition SET format = {} WHERE book_id = {b} AND number = {n}",
                words(rng)
            ),
            2 => format!("DELETE FROM edition WHERE book_id = {b} AND number = {n}"),
            _ if rng.chance(50) => format!(
                "UPDATE edition SET number = {n2} WHERE book_id = {b} AND number = {n} \
                 AND NOT EXISTS (SELECT 1 FROM edition WHERE book_id = {b} AND number = {n2})"
            ),
            _ => format!(
                "UPDATE edition SET book_id = {b2} WHERE book_id = {b} AND number = {n} \
                 AND EXISTS (SELECT 1 FROM book WHERE id = {b2}) \
                 AND NOT EXISTS (SELECT 1 FROM edition WHERE book_id = {b2} AND number = {n})"
            ),
        },
        // edition_printing (composite foreign key)
        _ => match kind {
            0 => format!(
                "INSERT INTO edition_printing (id, book_id, edition_number, printed_on, copies) \
                 SELECT {id}, book_id, number, {}, {} FROM edition WHERE book_id = {b} AND number = {n} \
                 ON CONFLICT (id) DO NOTHING",
                date(rng),
                maybe(rng, |r| r.int(1, 100_000).to_string())
            ),
            1 if rng.chance(50) => format!(
                "UPDATE edition_printing SET copies = {}, printed_on = {} WHERE id = {id}",
                maybe(rng, |r| r.int(1, 100_000).to_string()),
                date(rng)
            ),
            1 => format!(
                "UPDATE edition_printing SET book_id = {b}, edition_number = {n} WHERE id = {id} \
                 AND EXISTS (SELECT 1 FROM edition WHERE book_id = {b} AND number = {n})"
            ),
            2 => format!("DELETE FROM edition_printing WHERE id = {id}"),
            _ => format!(
                "UPDATE edition_printing SET id = {id2} WHERE id = {id} \
                 AND NOT EXISTS (SELECT 1 FROM edition_printing WHERE id = {id2})"
            ),
        },
    }
}

/// What a random workload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadStats {
    pub committed: usize,
    pub rolled_back: usize,
    pub statements: usize,
    /// Statements of committed transactions that changed at least one row.
    pub effective: usize,
}

/// Errors a random transaction may hit because of other threads; anything else is a bug of
/// the generator (and would silently weaken the test), so it fails the test.
pub const EXPECTED_SQLSTATES: &[&str] = &["23505", "23503", "40P01", "40001", "55P03"];

/// Threads applying random transactions of 1 to 4 statements concurrently, each on its own
/// connection. They run only as many transactions as [`Workload::grant`] allowed, so a test
/// decides what happens between which changes whatever the speed of the machine.
pub struct Workload {
    budget: Arc<AtomicUsize>,
    pub finished: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<WorkloadStats>>,
    granted: usize,
    started: Instant,
}

/// Where and how a workload's threads connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// PostgreSQL port on 127.0.0.1.
    pub port: u16,
    /// Database.
    pub db: String,
    /// Reconnect (and count the transaction as interrupted) when the server goes away, for
    /// tests that restart PostgreSQL under the workload.
    pub survive_restarts: bool,
}

impl Workload {
    /// `threads` threads on `db` at `port`, statements drawn from `seed`.
    pub fn start(port: u16, db: &str, seed: u64, threads: usize) -> Workload {
        let target = Target {
            port,
            db: db.to_owned(),
            survive_restarts: false,
        };
        Workload::start_on(target, seed, threads)
    }

    /// Like [`Workload::start`], with every connection setting explicit.
    pub fn start_on(target: Target, seed: u64, threads: usize) -> Workload {
        let budget = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                let target = target.clone();
                let (budget, finished, stop) = (budget.clone(), finished.clone(), stop.clone());
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(worker(target, &mut rng, budget, finished, stop))
                })
            })
            .collect();
        Workload {
            budget,
            finished,
            stop,
            threads: handles,
            granted: 0,
            started: Instant::now(),
        }
    }

    /// Lets the threads run `n` more transactions.
    pub fn grant(&mut self, n: usize) {
        self.granted += n;
        self.budget.fetch_add(n, Ordering::SeqCst);
    }

    /// Waits until `n` transactions have ended (committed or rolled back). Polls every
    /// millisecond, so the caller acts while the rest of a grant is still running.
    pub fn wait_finished(&self, n: usize) {
        assert!(n <= self.granted, "waiting for more than was granted");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.finished.load(Ordering::SeqCst) < n {
            assert!(
                !self.threads.iter().any(|t| t.is_finished()),
                "a workload thread ended early (see its panic above)"
            );
            assert!(
                Instant::now() < deadline,
                "the workload did not get through {n} transactions within 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for every granted transaction, stops the threads, and checks most committed (a
    /// generator whose statements all fail tests nothing).
    pub fn finish(self) -> WorkloadStats {
        self.wait_finished(self.granted);
        self.stop.store(true, Ordering::SeqCst);
        let mut total = WorkloadStats::default();
        for h in self.threads {
            let s = h.join().expect("a workload thread panicked");
            total.committed += s.committed;
            total.rolled_back += s.rolled_back;
            total.statements += s.statements;
            total.effective += s.effective;
        }
        eprintln!(
            "workload: {} statements ({} changed rows) in {} committed and {} rolled-back transactions, {:?}",
            total.statements,
            total.effective,
            total.committed,
            total.rolled_back,
            self.started.elapsed()
        );
        assert!(
            total.committed >= (total.committed + total.rolled_back) * 3 / 4
                && total.effective >= total.statements / 5,
            "too few random statements changed anything: {total:?}"
        );
        total
    }
}

/// A connection for the workload, retried for a minute when the server is restarting.
async fn connect(target: &Target) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let conn = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={}",
                target.port, target.db
            ),
            tokio_postgres::NoTls,
        )
        .await;
        match conn {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
                    .batch_execute("SET deadlock_timeout = '20ms'; SET lock_timeout = '10s'")
                    .await
                    .expect("session settings");
                return client;
            }
            Err(e) if target.survive_restarts && Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("workload connection: {e}"),
        }
    }
}

/// Whether an error means the server went away (restart, terminated backend).
fn is_disconnect(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("08") || c.starts_with("57P")
        })
        || e.as_db_error().is_none()
}

/// One workload thread: runs granted transactions until told to stop.
pub async fn worker(
    target: Target,
    rng: &mut Rng,
    budget: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> WorkloadStats {
    let mut client = connect(&target).await;
    let mut stats = WorkloadStats::default();
    loop {
        let took = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok();
        if !took {
            if stop.load(Ordering::SeqCst) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let n = 1 + rng.below(4);
        let mut sql = String::from("BEGIN;\n");
        for _ in 0..n {
            sql.push_str(&random_statement(rng));
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT;");
        stats.statements += n as usize;
        match client.simple_query(&sql).await {
            Ok(messages) => {
                stats.committed += 1;
                // BEGIN and COMMIT report 0 rows; TRUNCATE too, so it does not count.
                stats.effective += messages
                    .iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(n) if *n > 0))
                    .count();
            }
            Err(e) if target.survive_restarts && is_disconnect(&e) => {
                // Committed or not, the rows say which: the tests compare with a fresh build.
                stats.rolled_back += 1;
                client = connect(&target).await;
            }
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string());
                assert!(
                    code.as_deref()
                        .is_some_and(|c| EXPECTED_SQLSTATES.contains(&c)),
                    "random transaction failed unexpectedly ({code:?}): {e}\n{sql}"
                );
                client.batch_execute("ROLLBACK").await.expect("rollback");
                stats.rolled_back += 1;
            }
        }
        finished.fetch_add(1, Ordering::SeqCst);
    }
}
