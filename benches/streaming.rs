//! Change-capture benchmark on the generated book data set (default 100,000 roots):
//!
//! - throughput: a burst of mixed changes (title updates, rating inserts and deletes, subject
//!   moves, new books, and author renames that fan out to many books) applied as fast as
//!   PostgreSQL takes them; time from the first commit until the index reflects the last change,
//!   and the number of distinct documents the burst touches, beside the search server's own
//!   rate for overwriting existing documents of the index (what the burst asks of it);
//! - latency: single-row changes 200 ms apart, commit to visible in the index: p50, p95, max.
//!
//! Run: `cargo bench --bench streaming -- 100000 50000` (roots, burst changes). With `--ndjson`
//! the daemon writes bulk bodies to a file instead of the search server, and "visible" means
//! "appended to that file": the pipeline's own figures, at sizes osmem cannot hold.

mod common;
#[path = "../tests/harness/mod.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(100_000);
    let burst = args.get(1).copied().unwrap_or(50_000);
    let ndjson = std::env::args().any(|a| a == "--ndjson");
    let out_file = std::env::temp_dir().join(format!("pgsync-bench-{}.ndjson", std::process::id()));
    let _ = std::fs::remove_file(&out_file);
    let extra = if ndjson {
        format!(
            "[output]\nkind = \"ndjson\"\npath = \"{}\"\n",
            out_file.display()
        )
    } else {
        String::new()
    };
    let env = common::setup(n, &extra);
    let pg = &env.pg;
    let osmem = &env.osmem;
    let mut seen = if ndjson {
        Seen::File {
            path: out_file.clone(),
            offset: 0,
            carry: Vec::new(),
        }
    } else {
        Seen::Search(osmem)
    };

    // The daemon: bootstrap, initial sync, then streaming.
    let daemon = Command::new(harness::pgsync_bin())
        .args(["run", "--config"])
        .arg(&env.config)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start pgsync");
    let t = Instant::now();
    harness::wait_until_blocking(
        Duration::from_secs(1800),
        "the daemon streams from its slot",
        || {
            pg.psql(
                "bench",
                "SELECT count(*) FROM pg_replication_slots WHERE active",
            ) == "1"
        },
    );
    eprintln!("initial sync + start: {:.1}s", t.elapsed().as_secs_f64());
    // Let the search server finish what the initial sync gave it before measuring latency.
    let t = Instant::now();
    if !ndjson {
        osmem.refresh("book");
    }
    eprintln!(
        "refresh after the initial sync: {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Latency: single-row changes 200 ms apart.
    let mut lat = vec![];
    let client_port = pg.port();
    for i in 0..50 {
        let id = 1 + (i * 7919) % n;
        let marker = format!("lat-{i}-{}", Instant::now().elapsed().as_nanos());
        let t0 = Instant::now();
        psql_fast(
            client_port,
            &format!("UPDATE book SET title = '{marker}' WHERE id = {id}"),
        );
        let committed = Instant::now();
        loop {
            if seen.has(&id.to_string(), &marker) {
                break;
            }
            if committed.elapsed() > Duration::from_secs(30) {
                panic!("change {i} not visible after 30s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = t0;
        lat.push(committed.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Throughput: a burst of mixed changes in one psql session, one transaction per statement.
    let authors = (n / 10).max(1);
    let mut sql = String::new();
    for i in 0..burst {
        let b = 1 + (i * 104_729) % n;
        match i % 10 {
            0..=3 => sql.push_str(&format!("UPDATE book SET title = 'burst {i}' WHERE id = {b};\n")),
            4 | 5 => sql.push_str(&format!("INSERT INTO rating (book_id, stars, comment) VALUES ({b}, {}, 'burst');\n", 1 + i % 5)),
            6 => sql.push_str(&format!("DELETE FROM rating WHERE id = (SELECT min(id) FROM rating WHERE book_id = {b});\n")),
            7 => sql.push_str(&format!("UPDATE book_subject SET subject_id = {} WHERE book_id = {b};\n", 1 + i % 50)),
            8 => sql.push_str(&format!("UPDATE author SET name = 'Author {i} renamed' WHERE id = {};\n", 1 + (i * 31) % authors)),
            _ => sql.push_str(&format!(
                "INSERT INTO book (id, isbn, title, publisher_id) VALUES ({}, 'burst-{i}', 'new {i}', 1);\n",
                n + 1 + i
            )),
        }
    }
    let last_marker = format!("burst-end-{burst}");
    sql.push_str(&format!(
        "UPDATE book SET title = '{last_marker}' WHERE id = 1;\n"
    ));
    // Documents the burst implies: roots touched per change (an author rename touches every book
    // of that author).
    let implied: u64 = pg
        .psql(
            "bench",
            &format!(
                "SELECT ({burst} / 10 * 8) + (SELECT count(*) FROM book_author WHERE author_id IN \
                 (SELECT 1 + (i * 31) % {authors} FROM generate_series(0, {burst} - 1) i WHERE i % 10 = 8))"
            ),
        )
        .trim()
        .parse()
        .unwrap_or(0);
    let file = env.dir.path().join("burst.sql");
    std::fs::write(&file, sql).unwrap();
    let start = Instant::now();
    let out = Command::new(harness::pg_bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "bench",
            "-p",
        ])
        .arg(pg.port().to_string())
        .arg("-f")
        .arg(&file)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = start.elapsed().as_secs_f64();
    harness::wait_until_blocking(Duration::from_secs(1800), "the burst is reflected", || {
        seen.has("1", &last_marker)
    });
    let drained = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&out_file);
    if ndjson {
        stop(daemon);
        println!(
            "streaming benchmark, {n} roots, NDJSON file sink (visible = appended to the file)"
        );
        print_figures(&lat, burst, applied, drained, implied);
        println!("search server alone: not measured with --ndjson");
        return;
    }

    // The search server's own rate for what the burst asks of it: overwriting existing documents
    // of this index with their current sources, one client, 1,000 per bulk request. (osmem's cost
    // of an overwrite grows with the index, ~20 ms at 20,000 book documents against ~1 ms for a
    // new document, so probing with fresh documents would overstate its rate many times.)
    let probe_docs = implied.clamp(1_000, 3_000);
    let mut sent = 0u64;
    let mut busy = Duration::ZERO;
    while sent < probe_docs {
        let ids: Vec<String> = (0..1000u64)
            .map(|j| (1 + ((sent + j) * 7919) % n).to_string())
            .collect();
        let (_, got) = osmem
            .request(
                "POST",
                "/book/_mget",
                Some(&serde_json::json!({ "ids": ids })),
            )
            .expect("_mget");
        let mut body = String::new();
        for d in got["docs"].as_array().expect("docs") {
            if let (Some(id), Some(src)) = (d["_id"].as_str(), d.get("_source")) {
                body.push_str(&format!(
                    "{{\"index\":{{\"_index\":\"book\",\"_id\":\"{id}\"}}}}\n{src}\n"
                ));
            }
        }
        let t = Instant::now();
        let (status, _) = harness::http_request(
            osmem.port(),
            "POST",
            "/_bulk",
            "application/x-ndjson",
            body.as_bytes(),
        )
        .unwrap();
        busy += t.elapsed();
        assert_eq!(status, 200);
        sent += 1000;
    }
    let se_rate = sent as f64 / busy.as_secs_f64();

    stop(daemon);
    println!("streaming benchmark, {n} roots, search server");
    print_figures(&lat, burst, applied, drained, implied);
    println!(
        "search server alone, overwriting existing documents (one client): {se_rate:.0} docs/s"
    );
}

/// SIGTERM, then the exit status (a graceful stop exits 0).
fn stop(mut daemon: std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let status = daemon.wait().unwrap();
    println!("daemon exit after SIGTERM: {status}");
}

fn print_figures(lat: &[f64], burst: u64, applied: f64, drained: f64, implied: u64) {
    println!(
        "latency over {} single-row changes 200 ms apart: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        lat.len(),
        common::percentile(lat, 50.0),
        common::percentile(lat, 95.0),
        lat.last().copied().unwrap_or(0.0)
    );
    println!(
        "burst of {burst} changes: applied by psql in {applied:.2}s, reflected after {drained:.2}s; \
         {implied} distinct documents touched -> {:.0} docs/s",
        implied as f64 / drained
    );
}

/// Where the bench looks for a change: the search server's document, or the NDJSON output.
enum Seen<'a> {
    Search(&'a harness::Osmem),
    File {
        path: std::path::PathBuf,
        offset: u64,
        /// The last bytes already read, so a marker split across two reads is still found.
        carry: Vec<u8>,
    },
}

impl Seen<'_> {
    /// Whether document `id` now shows `marker`. For the file, every call consumes what was
    /// appended since the last call.
    fn has(&mut self, id: &str, marker: &str) -> bool {
        match self {
            Seen::Search(osmem) => try_doc(osmem, id)
                .map(|d| d.to_string().contains(marker))
                .unwrap_or(false),
            Seen::File {
                path,
                offset,
                carry,
            } => {
                use std::io::{Read, Seek, SeekFrom};
                let Ok(mut f) = std::fs::File::open(&*path) else {
                    return false;
                };
                let mut new = Vec::new();
                f.seek(SeekFrom::Start(*offset)).unwrap();
                f.read_to_end(&mut new).unwrap();
                *offset += new.len() as u64;
                carry.extend_from_slice(&new);
                let found = carry.windows(marker.len()).any(|w| w == marker.as_bytes());
                let keep = carry.len().saturating_sub(marker.len());
                carry.drain(..keep);
                found
            }
        }
    }
}

fn psql_fast(port: u16, sql: &str) {
    let out = Command::new(harness::pg_bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "bench",
            "-p",
        ])
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The document's source, or `None` when it is missing or the server did not answer in time
/// (osmem can stall for seconds under a bulk backlog; polling goes on).
fn try_doc(osmem: &harness::Osmem, id: &str) -> Option<serde_json::Value> {
    match osmem.request("GET", &format!("/book/_doc/{id}"), None) {
        Ok((200, v)) => v.get("_source").cloned(),
        _ => None,
    }
}
