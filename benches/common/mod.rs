//! Shared by the benchmarks: the generated book-like data set and a timed `pgsync` run.
#![allow(dead_code)]

use super::harness;
use pgsync_rs::config::Config;
use pgsync_rs::schema::{parse, resolve};
use pgsync_rs::sql::document::{document_query, RootFilter};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The benchmark's schema.json.
pub const SCHEMA: &str = r#"[{
  "database": "bench",
  "index": "book",
  "nodes": {
    "table": "book",
    "columns": ["id", "isbn", "title", "description", "price", "published_at", "tags"],
    "children": [
      {"table": "publisher", "columns": ["id", "name", "country"], "label": "publisher",
       "relationship": {"variant": "object", "type": "one_to_one"}},
      {"table": "author", "columns": ["id", "name", "born"], "label": "authors",
       "relationship": {"variant": "object", "type": "one_to_many", "through_tables": ["book_author"]}},
      {"table": "subject", "columns": ["name"], "label": "subjects",
       "relationship": {"variant": "scalar", "type": "one_to_many", "through_tables": ["book_subject"]}},
      {"table": "rating", "columns": ["stars", "comment"], "label": "ratings",
       "relationship": {"variant": "object", "type": "one_to_many"}}
    ]
  }
}]"#;

pub fn setup_sql(n: u64) -> String {
    format!(
        r#"
CREATE TABLE publisher (id int PRIMARY KEY, name text NOT NULL, country text);
CREATE TABLE author (id int PRIMARY KEY, name text NOT NULL, born date);
CREATE TABLE subject (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE book (id int PRIMARY KEY, isbn text UNIQUE NOT NULL, title text NOT NULL, description text,
  price numeric(10,2), published_at timestamp, tags text[], publisher_id int NOT NULL REFERENCES publisher(id));
CREATE TABLE book_author (book_id int REFERENCES book(id), author_id int REFERENCES author(id), PRIMARY KEY (book_id, author_id));
CREATE TABLE book_subject (id serial PRIMARY KEY, book_id int REFERENCES book(id), subject_id int REFERENCES subject(id));
CREATE TABLE rating (id serial PRIMARY KEY, book_id int NOT NULL REFERENCES book(id), stars int, comment text);
INSERT INTO publisher SELECT g, 'Publisher ' || g, (ARRAY['UK','US','FR','DE'])[1 + g % 4] FROM generate_series(1, greatest({n} / 100, 1)) g;
INSERT INTO author SELECT g, 'Author ' || g, date '1950-01-01' + (g % 15000) FROM generate_series(1, greatest({n} / 10, 1)) g;
INSERT INTO subject SELECT g, 'Subject ' || g FROM generate_series(1, 50) g;
INSERT INTO book SELECT g, 'isbn-' || g, 'Title of book ' || g, 'A description of book number ' || g || ' with some words in it',
  (g % 5000) / 100.0, timestamp '2000-01-01' + (g % 8000) * interval '1 day', ARRAY['tag' || (g % 7), 'tag' || (g % 11)],
  1 + g % greatest({n} / 100, 1) FROM generate_series(1, {n}) g;
INSERT INTO book_author SELECT b, 1 + (b * 7 + k * 13) % greatest({n} / 10, 1) FROM generate_series(1, {n}) b,
  LATERAL generate_series(1, 1 + b % 3) k ON CONFLICT DO NOTHING;
INSERT INTO book_subject (book_id, subject_id) SELECT b, 1 + (b + k * 17) % 50 FROM generate_series(1, {n}) b, LATERAL generate_series(1, 1 + b % 2) k;
INSERT INTO rating (book_id, stars, comment) SELECT b, 1 + (b + k) % 5, 'rating ' || k FROM generate_series(1, {n}) b, LATERAL generate_series(1, 1 + b % 2) k;
CREATE INDEX ON book_subject (book_id); CREATE INDEX ON rating (book_id); CREATE INDEX ON book_author (author_id);
VACUUM ANALYZE;
"#
    )
}

pub struct Run {
    pub docs: u64,
    pub secs: f64,
    pub peak_rss_mb: f64,
}

pub fn run_pgsync(config: &Path, env: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(harness::pgsync_bin())
        .args(["run", "--once", "--full", "--recreate", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start pgsync");
    let pid = child.id();
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in s.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
            }
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("pgsync output");
    assert!(out.status.success(), "pgsync run failed: {:?}", out.status);
    let secs = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    // "index book: N documents in ..."
    let docs = text
        .split_whitespace()
        .skip_while(|w| *w != "book:")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    Run {
        docs,
        secs,
        peak_rss_mb: peak_kb as f64 / 1024.0,
    }
}

/// Throwaway services with the generated data set loaded and a config pointing at them.
pub struct BenchEnv {
    /// Temp dir holding schema, config, state.
    pub dir: tempfile::TempDir,
    /// PostgreSQL with database `bench`.
    pub pg: harness::Postgres,
    /// The search server.
    pub osmem: harness::Osmem,
    /// schema.json path.
    pub schema: std::path::PathBuf,
    /// pgsync.toml path.
    pub config: std::path::PathBuf,
}

/// Starts PostgreSQL and osmem, generates `n` books, writes schema and config.
pub fn setup(n: u64, extra_config: &str) -> BenchEnv {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pg = harness::Postgres::start();
    pg.create_database("bench");
    let t = Instant::now();
    pg.psql("bench", &setup_sql(n));
    eprintln!("generated {n} books in {:.1}s", t.elapsed().as_secs_f64());
    let osmem = harness::Osmem::start();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let config = dir.path().join("pgsync.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n[search]\nurl = \"{}\"\nengine = \"opensearch\"\n[schema]\npath = \"{}\"\n[checkpoint]\ndir = \"{}\"\n{extra_config}",
        pg.port(),
        osmem.url(),
        schema.display(),
        dir.path().join("state").display()
    )
    .unwrap();
    BenchEnv {
        dir,
        pg,
        osmem,
        schema,
        config,
    }
}

/// p-th percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// PostgreSQL alone building the documents: the generated document statement over the same
/// ctid ranges and with the same parallelism as the fetchers, rows read and discarded. The
/// limit every pgsync rate is printed beside.
pub fn pg_alone(cfg: &Config, schema: &Path, parallel: usize) -> (u64, f64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let file = parse::parse_file(schema).expect("schema");
        let client = pgsync_rs::config::connect(cfg, "bench")
            .await
            .expect("connect");
        let catalog = resolve::Catalog::load(&client, &resolve::schemas_of(&file))
            .await
            .unwrap();
        let plan = Arc::new(resolve::resolve(&file, &catalog).unwrap().remove(0));
        let row = client
            .query_one(
                "SELECT (pg_relation_size('book') / current_setting('block_size')::bigint)::bigint",
                &[],
            )
            .await
            .unwrap();
        let pages: i64 = row.get(0);
        let ranges = pgsync_rs::pipeline::planner::split(
            'r',
            pages as u64,
            parallel * cfg.pipeline.ranges_per_fetcher,
        );
        let queue = Arc::new(Mutex::new(ranges));
        let start = Instant::now();
        let mut tasks = vec![];
        for _ in 0..parallel {
            let (cfg, plan, queue) = (cfg.clone(), plan.clone(), queue.clone());
            tasks.push(tokio::spawn(async move {
                let client = pgsync_rs::config::connect(&cfg, "bench").await.unwrap();
                let mut n = 0u64;
                loop {
                    let Some(r): Option<RootFilter> = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let sql = document_query(&plan, &r, false);
                    let stream = client
                        .query_raw(sql.as_str(), Vec::<String>::new())
                        .await
                        .unwrap();
                    futures::pin_mut!(stream);
                    use futures::StreamExt;
                    while let Some(row) = stream.next().await {
                        let row = row.unwrap();
                        let doc: &str = row.get(1);
                        std::hint::black_box(doc);
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        (total, start.elapsed().as_secs_f64())
    })
}
