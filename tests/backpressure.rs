//! Backpressure is real: with a search engine much slower than PostgreSQL, `pgsync run --once`
//! must not buffer the table in memory. A throttling TCP proxy sits between pgsync and
//! osmem-server; the data set is several times larger than the memory the process may use; the
//! process's resident memory is sampled from /proc while it runs.

mod common;
mod harness;

use common::{PgsyncConfig, Workdir};
use harness::{shared_postgres, unique_db_name, Osmem};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Forwards `127.0.0.1:<port>` to `upstream`, letting requests through at most `rate` bytes per
/// second per connection (responses are not slowed). Counts the request bytes it forwarded.
struct SlowProxy {
    port: u16,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    fn start(upstream: u16, rate: u64) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (fw, st) = (forwarded.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let fw = fw.clone();
                std::thread::spawn(move || pipe(client, server, Some((rate, fw))));
                std::thread::spawn(move || pipe(s2, c2, None));
            }
        });
        SlowProxy {
            port,
            forwarded,
            stop,
        }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, throttle: Option<(u64, Arc<AtomicU64>)>) {
    let mut buf = vec![0u8; 16 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((rate, counter)) = &throttle {
            sent += n as u64;
            counter.fetch_add(n as u64, Ordering::SeqCst);
            let due = Duration::from_secs_f64(sent as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Resident set size of `pid` in bytes, `None` once it is gone.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `body` is stored, not indexed: osmem-server tokenizes every text field it indexes at about
/// 1 MB/s, which would make it, not the proxy, the slow engine and the test take minutes.
const SCHEMA: &str = r#"[{
    "database": "DB",
    "index": "item",
    "mappings": {"dynamic": false, "properties": {"id": {"type": "integer"}}},
    "nodes": {"table": "item", "columns": ["id", "body"]}
}]"#;

#[test]
fn a_slow_search_engine_keeps_memory_bounded_during_initial_sync() {
    const ROWS: u64 = 60_000;
    const BODY: u64 = 1024;
    let pg = shared_postgres();
    let db = unique_db_name("backpressure");
    pg.create_database(&db);
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE item (id integer PRIMARY KEY, body text NOT NULL);
             INSERT INTO item SELECT g, repeat(md5(g::text), {}) FROM generate_series(1, {ROWS}) g;
             ANALYZE item;",
            BODY / 32
        ),
    );
    let os = Osmem::start();
    // 4 connections at most (2 writers x 2 requests in flight) at 2 MB/s each: the engine takes
    // the ~65 MB of documents at no more than ~8 MB/s, PostgreSQL produces them far faster.
    let proxy = SlowProxy::start(os.port(), 2 * 1024 * 1024);
    let work = Workdir::new(
        &PgsyncConfig::new(pg.port(), &format!("http://127.0.0.1:{}", proxy.port)),
        &SCHEMA.replace("DB", &db),
    );
    // Smaller chunks and requests than the defaults, so the bound is far below the data set.
    let mut toml = std::fs::read_to_string(&work.config).unwrap();
    toml.push_str(&format!(
        "\n[pipeline]\nfetch_chunk = 200\nbatch_docs = 500\nbatch_bytes = 1048576\nchannel_capacity = {}\n",
        std::env::var("BACKPRESSURE_TEST_CAPACITY").unwrap_or_else(|_| "8".into())
    ));
    std::fs::write(&work.config, toml).unwrap();

    let mut child = Command::new(common::pgsync_bin())
        .args(["run", "--once", "--config"])
        .arg(&work.config)
        .current_dir(work.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgsync");
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut peak = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(r) = rss(pid) {
            peak = peak.max(r);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap();
            let tail: Vec<&str> = err.lines().rev().take(40).collect();
            panic!(
                "pgsync run --once did not finish within 180 s ({:.1} MB went through the slow proxy); its last log lines:\n{}",
                proxy.forwarded.load(Ordering::SeqCst) as f64 / 1048576.0,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    assert!(
        status.success(),
        "pgsync failed: {status}\n{stdout}\n{stderr}"
    );

    let sent = proxy.forwarded.load(Ordering::SeqCst);
    assert_eq!(os.count("item"), ROWS, "{stdout}\n{stderr}");
    // The bound: what the bounded channels and in-flight requests can hold (8 chunks per lane x
    // 2 lanes of ~200 KB, 4 requests of up to 1 MB, a chunk per fetcher), plus the process
    // itself (~30 MB for a debug build since it links the AWS, NATS and metrics crates: 45.6 MB
    // peak measured). Without backpressure the fetchers would hold most of the 65 MB data set.
    // (BACKPRESSURE_TEST_CAPACITY=100000 shows this test failing.)
    let limit = 55 * 1024 * 1024;
    eprintln!(
        "peak RSS {:.1} MB while {:.1} MB of bulk requests went through the slow proxy",
        peak as f64 / 1048576.0,
        sent as f64 / 1048576.0
    );
    assert!(
        sent > 60 * 1024 * 1024,
        "the data set must dwarf the memory bound (sent {sent} bytes)"
    );
    assert!(
        peak < limit,
        "peak RSS {peak} bytes exceeds {limit}: the pipeline buffered documents instead of waiting\n{stdout}"
    );
    assert!(
        stdout.contains("blocked on backpressure"),
        "summary line missing:\n{stdout}"
    );
}
