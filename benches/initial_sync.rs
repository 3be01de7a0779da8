//! Initial-sync benchmark on a generated book-like data set (books with a publisher, 1–3 authors
//! through a join table, subjects through a join table, ratings). Prints, for N roots:
//!
//! - PostgreSQL alone: the generated document statement over the same ctid ranges and with the
//!   same parallelism as the fetchers, results read and discarded;
//! - the search server alone: the same documents as prebuilt bulk bodies, posted with the
//!   writers' concurrency;
//! - `pgsync run --once` with the discarding sink, with the NDJSON file sink, and end to end;
//! - peak RSS of each pgsync run.
//!
//! Run: `cargo bench --bench initial_sync -- 1000000` (default 100000 roots); add `--no-search`
//! to skip the two measures bound by the search server (osmem cannot hold a million documents),
//! and `--plugins` to also run the discarding sync with a one-line PGSync plugin and print the
//! plugin's cost per document.

mod common;
#[path = "../tests/harness/mod.rs"]
mod harness;

use pgsync_rs::schema::{mapping::index_body, parse, resolve};
use std::io::BufRead;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{pg_alone, run_pgsync};

fn search_alone(
    osmem: &harness::Osmem,
    ndjson: &Path,
    body: &serde_json::Value,
    batch_docs: usize,
    concurrency: usize,
) -> (u64, f64) {
    let (s, _) = osmem.delete("/book");
    let _ = s;
    osmem.put_json("/book", body);
    let reader = Mutex::new(std::io::BufReader::new(std::fs::File::open(ndjson).unwrap()).lines());
    let reader = Arc::new(reader);
    let port = osmem.port();
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let reader = reader.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    let mut body = String::new();
                    let mut docs = 0;
                    {
                        let mut r = reader.lock().unwrap();
                        while docs < batch_docs {
                            let (Some(Ok(a)), Some(Ok(d))) = (r.next(), r.next()) else {
                                break;
                            };
                            body.push_str(&a);
                            body.push('\n');
                            body.push_str(&d);
                            body.push('\n');
                            docs += 1;
                        }
                    }
                    if docs == 0 {
                        break;
                    }
                    let (status, _) = harness::http_request(
                        port,
                        "POST",
                        "/_bulk",
                        "application/x-ndjson",
                        body.as_bytes(),
                    )
                    .expect("bulk");
                    assert_eq!(status, 200);
                    n += docs as u64;
                }
                n
            })
        })
        .collect();
    let total = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (total, start.elapsed().as_secs_f64())
}

/// The discarding sync again, with the same schema plus a one-line plugin: the difference is what
/// running plugins costs per document (JSON into Python and back, one call per document).
fn with_plugin(dir: &Path, config: &Path) -> common::Run {
    let package = dir.join("plugins");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(
        package.join("touch.py"),
        "from pgsync import plugin\n\n\nclass Touch(plugin.Plugin):\n    name = \"Touch\"\n\n    \
         def transform(self, doc, **kwargs):\n        doc[\"touched\"] = True\n        return doc\n",
    )
    .unwrap();
    let mut schema: serde_json::Value = serde_json::from_str(common::SCHEMA).unwrap();
    schema[0]["plugins"] = serde_json::json!(["Touch"]);
    let schema_path = dir.join("schema-plugins.json");
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    let (schema_s, package_s) = (
        schema_path.display().to_string(),
        package.display().to_string(),
    );
    run_pgsync(
        config,
        &[
            ("PGSYNC_OUTPUT__KIND", "discard"),
            ("PGSYNC_SCHEMA__PATH", &schema_s),
            ("PGSYNC_PLUGINS__PATH", &package_s),
        ],
    )
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| a.parse::<u64>().is_ok())
        .or_else(|| std::env::var("BENCH_ROOTS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let env = common::setup(n, "");
    let (pg, osmem, schema, config, dir) = (
        &env.pg,
        &env.osmem,
        env.schema.clone(),
        env.config.clone(),
        env.dir.path(),
    );
    let _ = pg;
    let cfg = pgsync_rs::config::load(Some(&config)).unwrap();

    let (pg_docs, pg_secs) = pg_alone(&cfg, &schema, cfg.pipeline.fetchers);
    let ndjson = dir.join("out.ndjson");
    let ndjson_s = ndjson.display().to_string();
    let discard = run_pgsync(&config, &[("PGSYNC_OUTPUT__KIND", "discard")]);
    let plugged = std::env::args()
        .any(|a| a == "--plugins")
        .then(|| with_plugin(dir, &config));
    let file = run_pgsync(
        &config,
        &[
            ("PGSYNC_OUTPUT__KIND", "ndjson"),
            ("PGSYNC_OUTPUT__PATH", &ndjson_s),
        ],
    );
    let plan_body = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let file = parse::parse_file(&schema).unwrap();
            let client = pgsync_rs::config::connect(&cfg, "bench").await.unwrap();
            let catalog = resolve::Catalog::load(&client, &resolve::schemas_of(&file))
                .await
                .unwrap();
            index_body(&resolve::resolve(&file, &catalog).unwrap()[0])
        })
    };
    let conc = cfg.pipeline.writers * cfg.pipeline.requests_in_flight;
    // osmem-server keeps every document in memory (~60 KB of RSS per book document measured
    // here), so at large N the two search-bound measures cannot run on this machine:
    // `--no-search` skips them.
    let with_search = !std::env::args().any(|a| a == "--no-search");
    let (se_docs, se_secs, e2e) = if with_search {
        let (d, s) = search_alone(osmem, &ndjson, &plan_body, cfg.pipeline.batch_docs, conc);
        (d, s, Some(run_pgsync(&config, &[])))
    } else {
        (0, 0.0, None)
    };

    let rate = |d: u64, s: f64| d as f64 / s.max(1e-9);
    let pg_rate = rate(pg_docs, pg_secs);
    let se_rate = rate(se_docs, se_secs);
    println!(
        "initial sync benchmark, {n} roots, fetchers={} writers={} in_flight={}",
        cfg.pipeline.fetchers, cfg.pipeline.writers, cfg.pipeline.requests_in_flight
    );
    println!(
        "{:<34} {:>10} {:>9} {:>12} {:>10}",
        "measure", "docs", "secs", "docs/s", "peak MB"
    );
    println!(
        "{:<34} {:>10} {:>9.2} {:>12.0} {:>10}",
        "postgres alone (statement)", pg_docs, pg_secs, pg_rate, "-"
    );
    if with_search {
        println!(
            "{:<34} {:>10} {:>9.2} {:>12.0} {:>10}",
            "search server alone (bulk bodies)", se_docs, se_secs, se_rate, "-"
        );
    }
    let mut runs = vec![("pgsync, discarding sink", &discard)];
    if let Some(p) = &plugged {
        runs.push(("pgsync, discarding, 1 plugin", p));
    }
    runs.push(("pgsync, NDJSON file sink", &file));
    if let Some(e2e) = &e2e {
        runs.push(("pgsync, end to end", e2e));
    }
    for (name, r) in runs {
        println!(
            "{:<34} {:>10} {:>9.2} {:>12.0} {:>10.1}",
            name,
            r.docs,
            r.secs,
            rate(r.docs, r.secs),
            r.peak_rss_mb
        );
    }
    if let Some(e2e) = &e2e {
        println!(
            "end to end / slower limit: {:.0}%",
            100.0 * rate(e2e.docs, e2e.secs) / pg_rate.min(se_rate)
        );
    }
    println!(
        "discarding / postgres alone: {:.0}%",
        100.0 * rate(discard.docs, discard.secs) / pg_rate
    );
    if let Some(p) = &plugged {
        let per_doc = |r: &common::Run| 1e6 * r.secs / r.docs.max(1) as f64;
        println!(
            "one plugin: {:.1} µs/doc against {:.1} µs/doc without: {:.1} µs/doc for the plugin",
            per_doc(p),
            per_doc(&discard),
            per_doc(p) - per_doc(&discard)
        );
    }
}
