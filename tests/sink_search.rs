//! The search sink against a real osmem-server (in-memory OpenSearch), and its retry paths
//! against a scripted local HTTP server (fault injection).

mod harness;

use harness::Osmem;
use pgsync_rs::config::{Config, Engine};
use pgsync_rs::sink::{push_delete_action, push_index_action, BulkBatch, Sink, Target};
use pgsync_rs::ErrorKind;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.search.url = url.to_owned();
    cfg.search.engine = Engine::Opensearch;
    cfg.search.timeout_secs = 10;
    cfg.pipeline.max_retries = 3;
    cfg.pipeline.retry_backoff_ms = 10;
    cfg
}

fn books_body() -> serde_json::Value {
    json!({
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"n": {"type": "long"}, "title": {"type": "keyword"}}}
    })
}

/// Builds a batch of index actions (`Some(source)`) and deletes (`None`).
fn batch(index: &str, actions: &[(&str, Option<serde_json::Value>)]) -> BulkBatch {
    let mut buf = Vec::new();
    let mut ids = Vec::new();
    for (id, src) in actions {
        match src {
            Some(doc) => push_index_action(
                &mut buf,
                Target::new(index, id),
                None,
                doc.to_string().as_bytes(),
            ),
            None => push_delete_action(&mut buf, Target::new(index, id)),
        }
        ids.push(id.to_string());
    }
    BulkBatch::new(buf, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osmem_create_bulk_reject_delete_recreate() {
    let os = Osmem::start();
    let sink = Sink::from_config(&config(os.url())).unwrap();
    sink.check().await.unwrap();

    // Created once with its settings and mappings, then left alone.
    assert!(sink
        .ensure_index("books", &books_body(), false)
        .await
        .unwrap());
    assert!(!sink
        .ensure_index("books", &books_body(), false)
        .await
        .unwrap());
    let mapping = os.get_json("/books/_mapping");
    assert_eq!(
        mapping["books"]["mappings"]["properties"]["n"]["type"], "long",
        "{mapping}"
    );

    // Index, a mapping conflict, a delete of a missing document, an id that needs escaping.
    let odd_id = "a\"b\\c é";
    let out = sink
        .bulk(batch(
            "books",
            &[
                ("1", Some(json!({"n": 1, "title": "one"}))),
                ("2", Some(json!({"n": 2, "title": "two"}))),
                ("bad", Some(json!({"n": "not a number"}))),
                ("nope", None),
                (odd_id, Some(json!({"n": 3}))),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(out.succeeded, 4, "{out:?}");
    assert_eq!(out.retries, 0);
    assert_eq!(out.failures.len(), 1, "{out:?}");
    let f = &out.failures[0];
    assert_eq!((f.id.as_str(), f.status), ("bad", 400));
    assert!(
        f.reason.starts_with("mapper_parsing_exception: "),
        "{}",
        f.reason
    );

    sink.refresh("books").await.unwrap();
    let docs = os.all_docs("books");
    assert_eq!(
        docs.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["1", "2", odd_id]
    );
    assert_eq!(docs["1"], json!({"n": 1, "title": "one"}));

    // Routing and deletes.
    let mut buf = Vec::new();
    push_index_action(
        &mut buf,
        Target::new("books", "r1").routing(Some("shard-key")),
        None,
        br#"{"n":9}"#,
    );
    push_delete_action(&mut buf, Target::new("books", "1"));
    push_delete_action(&mut buf, Target::new("books", "1")); // second delete: 404, still fine
    let out = sink
        .bulk(BulkBatch::new(
            buf,
            vec!["r1".into(), "1".into(), "1".into()],
        ))
        .await
        .unwrap();
    assert_eq!((out.succeeded, out.failures.len()), (3, 0), "{out:?}");
    let routed = os.get_json("/books/_doc/r1?routing=shard-key");
    assert_eq!(routed["_routing"], "shard-key", "{routed}");
    assert!(os.doc("books", "1").is_none());

    // A missing ingest pipeline is an item failure naming the document.
    let mut buf = Vec::new();
    push_index_action(
        &mut buf,
        Target::new("books", "p1"),
        Some("no-such-pipeline"),
        br#"{"n":1}"#,
    );
    let out = sink
        .bulk(BulkBatch::new(buf, vec!["p1".into()]))
        .await
        .unwrap();
    assert_eq!(out.failures.len(), 1, "{out:?}");
    assert_eq!(out.failures[0].id, "p1");
    assert!(
        out.failures[0].reason.contains("no-such-pipeline"),
        "{out:?}"
    );

    // An empty batch is not sent (an empty _bulk is a 400).
    let out = sink.bulk(BulkBatch::default()).await.unwrap();
    assert_eq!(out.succeeded, 0);

    // Recreate drops the documents and applies the new body.
    let mut body = books_body();
    body["mappings"]["properties"]["extra"] = json!({"type": "text"});
    assert!(sink.ensure_index("books", &body, true).await.unwrap());
    assert_eq!(os.count("books"), 0);
    let mapping = os.get_json("/books/_mapping");
    assert_eq!(
        mapping["books"]["mappings"]["properties"]["extra"]["type"],
        "text"
    );

    // Delete is idempotent; refreshing a missing index is a rejection naming it.
    sink.delete_index("books").await.unwrap();
    sink.delete_index("books").await.unwrap();
    assert!(!os.index_exists("books"));
    let e = sink.refresh("books").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SinkRejected);
    assert!(e.message.contains("/books/_refresh"), "{e}");
    assert!(e.message.contains("index_not_found_exception"), "{e}");

    // Index names that could address other indexes are refused before any request.
    assert!(sink.delete_index("*").await.is_err());
}

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: String,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 server answering each request with the next scripted `(status, body)`
/// (the last one repeats), recording what it received.
struct Scripted {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    async fn start(answers: Vec<(u16, &str)>) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answers: Arc<Mutex<VecDeque<(u16, String)>>> = Arc::new(Mutex::new(
            answers
                .into_iter()
                .map(|(s, b)| (s, b.to_owned()))
                .collect(),
        ));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let answers = answers.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read one request: headers, then Content-Length bytes.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[head_end..head_end + len].to_vec();
                        buf.drain(..head_end + len);
                        let (request_line, headers) = head.split_once("\r\n").unwrap();
                        seen.lock().unwrap().push(Seen {
                            request_line: request_line.to_owned(),
                            headers: headers.to_ascii_lowercase(),
                            body,
                        });
                        let (status, text) = {
                            let mut a = answers.lock().unwrap();
                            if a.len() > 1 {
                                a.pop_front().unwrap()
                            } else {
                                a.front().cloned().unwrap()
                            }
                        };
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

const ALL_OK_2: &str =
    r#"{"errors":false,"items":[{"index":{"status":201}},{"delete":{"status":200}}]}"#;

#[tokio::test]
async fn whole_request_429_is_retried() {
    let srv = Scripted::start(vec![
        (
            429,
            r#"{"error":{"type":"es_rejected_execution_exception","reason":"busy"},"status":429}"#,
        ),
        (200, ALL_OK_2),
    ])
    .await;
    let url = srv.url.replace("http://", "http://elastic:s3cret@");
    let sink = Sink::from_config(&config(&url)).unwrap();
    let b = batch("i", &[("a", Some(json!({"x": 1}))), ("b", None)]);
    let body = b.body.clone();
    let out = sink.bulk(b).await.unwrap();
    assert_eq!((out.succeeded, out.retries), (2, 1), "{out:?}");

    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(
            s.request_line.starts_with("POST /_bulk?"),
            "{}",
            s.request_line
        );
        assert!(
            s.headers.contains("content-type: application/x-ndjson"),
            "{}",
            s.headers
        );
        // elastic:s3cret, as basic auth; never in the URL.
        assert!(
            s.headers
                .contains("authorization: basic zwxhc3rpyzpzm2nyzxq="),
            "{}",
            s.headers
        );
        assert_eq!(s.body, body, "the body is sent unchanged");
    }
}

#[tokio::test]
async fn item_429_resends_only_those_actions() {
    let first = r#"{"errors":true,"items":[
        {"index":{"status":201}},
        {"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
        {"delete":{"status":404}},
        {"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}},
        {"delete":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"later"}}}
    ]}"#;
    let second = r#"{"errors":false,"items":[{"index":{"status":201}},{"delete":{"status":200}}]}"#;
    let srv = Scripted::start(vec![(200, first), (200, second)]).await;
    let sink = Sink::from_config(&config(&srv.url)).unwrap();
    let out = sink
        .bulk(batch(
            "i",
            &[
                ("ok", Some(json!({"x": 1}))),
                ("busy", Some(json!({"x": 2}))),
                ("gone", None),
                ("bad", Some(json!({"x": "y"}))),
                ("later", None),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(out.succeeded, 4, "{out:?}");
    assert_eq!(out.retries, 1);
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].id, "bad");
    assert_eq!(out.failures[0].reason, "mapper_parsing_exception: bad");

    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        String::from_utf8(seen[1].body.clone()).unwrap(),
        "{\"index\":{\"_index\":\"i\",\"_id\":\"busy\"}}\n{\"x\":2}\n\
         {\"delete\":{\"_index\":\"i\",\"_id\":\"later\"}}\n"
    );
}

#[tokio::test]
async fn retries_run_out_with_a_transient_error() {
    let srv = Scripted::start(vec![(503, r#"{"error":"down","status":503}"#)]).await;
    let sink = Sink::from_config(&config(&srv.url)).unwrap();
    let e = sink
        .bulk(batch("i", &[("a", Some(json!({})))]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SinkTransient);
    assert!(e.message.contains(&srv.url), "{e}");
    assert!(e.message.contains("503"), "{e}");
    assert!(e.message.contains("after 3 retries"), "{e}");
    assert_eq!(srv.seen().len(), 4);

    // Items that stay 429 also end in a transient error rather than a silent drop.
    let busy = r#"{"errors":true,"items":[{"index":{"status":429,"error":{"type":"x","reason":"busy"}}}]}"#;
    let srv = Scripted::start(vec![(200, busy)]).await;
    let sink = Sink::from_config(&config(&srv.url)).unwrap();
    let e = sink
        .bulk(batch("i", &[("a", Some(json!({})))]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SinkTransient);
    assert!(e.message.contains("still rejected after 3 retries"), "{e}");
}

#[tokio::test]
async fn other_statuses_are_rejections() {
    let srv = Scripted::start(vec![(
        401,
        r#"{"error":{"type":"security_exception","reason":"missing authentication credentials"},"status":401}"#,
    )])
    .await;
    let sink = Sink::from_config(&config(&srv.url)).unwrap();
    let e = sink.check().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SinkRejected);
    assert!(e.message.contains("security_exception"), "{e}");
    assert!(e.hint.as_deref().unwrap_or("").contains("api_key"), "{e}");
    let e = sink
        .bulk(batch("i", &[("a", Some(json!({})))]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SinkRejected);
    assert_eq!(srv.seen().len(), 2, "4xx is not retried");
}

/// What a root TRUNCATE sends, against Elasticsearch's documented task API (osmem runs
/// delete-by-query at once, sees unrefreshed documents and has no `GET /_tasks/{id}`, so the
/// order that matters on a real engine is checked here on the wire): a refresh first, since
/// delete-by-query only sees refreshed documents; the query as a task; the task polled until it
/// completed; nothing sent twice.
#[tokio::test]
async fn a_truncate_refreshes_first_then_deletes_by_query_as_a_task_and_waits_for_it() {
    let srv = Scripted::start(vec![
        (200, r#"{"_shards":{"total":1,"successful":1,"failed":0}}"#),
        (200, r#"{"task":"node1:42"}"#),
        (200, r#"{"completed":false,"task":{}}"#),
        (
            200,
            r#"{"completed":true,"task":{},"response":{"deleted":3,"failures":[]}}"#,
        ),
    ])
    .await;
    let sink = Sink::from_config(&config(&srv.url)).unwrap();
    sink.delete_all_documents("books").await.unwrap();
    let lines: Vec<String> = srv.seen().into_iter().map(|s| s.request_line).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("POST /books/_refresh "), "{lines:?}");
    assert!(
        lines[1].starts_with("POST /books/_delete_by_query?")
            && lines[1].contains("wait_for_completion=false")
            && lines[1].contains("conflicts=proceed"),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("GET /_tasks/node1:42 "), "{lines:?}");
    assert!(lines[3].starts_with("GET /_tasks/node1:42 "), "{lines:?}");
}

/// A delete-by-query task that finished with failures did not delete everything: an error,
/// never a silent success.
#[tokio::test]
async fn a_truncate_whose_task_reports_failures_is_an_error() {
    let srv = Scripted::start(vec![
        (200, r#"{}"#),
        (200, r#"{"task":"node1:7"}"#),
        (
            200,
            r#"{"completed":true,"response":{"deleted":1,"failures":[{"cause":{"type":"x","reason":"shard down"}}]}}"#,
        ),
    ])
    .await;
    let sink = Sink::from_config(&config(&srv.url)).unwrap();
    let e = sink.delete_all_documents("books").await.unwrap_err();
    assert!(e.message.contains("1 failure(s)"), "{e}");
    assert!(e.is_transient());
}

/// Versioned writes on a real engine: an index or delete carrying an older version than the
/// document's is refused (409, counted as stale, never a failure), an equal one is applied
/// (a replay writes the same rows again), and a delete leaves a tombstone that refuses an older
/// index for as long as the engine keeps it (`index.gc_deletes`, 60 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_never_overwrites_a_newer_document_or_delete() {
    let os = Osmem::start();
    let sink = Sink::from_config(&config(os.url())).unwrap();
    sink.ensure_index("books", &books_body(), false)
        .await
        .unwrap();
    let write = |actions: Vec<(&'static str, Option<serde_json::Value>, u64)>| {
        let mut buf = Vec::new();
        let mut ids = Vec::new();
        for (id, doc, v) in actions {
            let t = Target::new("books", id).version(Some(v));
            match doc {
                Some(d) => push_index_action(&mut buf, t, None, d.to_string().as_bytes()),
                None => push_delete_action(&mut buf, t),
            }
            ids.push(id.to_string());
        }
        let sink = sink.clone();
        async move { sink.bulk(BulkBatch::new(buf, ids)).await.unwrap() }
    };
    let out = write(vec![("1", Some(json!({"n": 2, "title": "newer"})), 200)]).await;
    assert_eq!((out.succeeded, out.stale), (1, 0), "{out:?}");
    let out = write(vec![
        ("1", Some(json!({"n": 1, "title": "older"})), 100),
        ("1", None, 150),
    ])
    .await;
    assert_eq!(
        (out.succeeded, out.stale, out.failures.len()),
        (0, 2, 0),
        "{out:?}"
    );
    assert_eq!(os.doc("books", "1").unwrap()["title"], "newer");
    let out = write(vec![("1", Some(json!({"n": 2, "title": "newer"})), 200)]).await;
    assert_eq!(
        (out.succeeded, out.stale),
        (1, 0),
        "an equal version is a replay: applied"
    );
    let out = write(vec![
        ("1", None, 300),
        ("1", Some(json!({"n": 0, "title": "stale"})), 250),
    ])
    .await;
    assert_eq!((out.succeeded, out.stale), (1, 1), "{out:?}");
    assert!(os.doc("books", "1").is_none(), "the versioned delete stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_compress_gzips_request_bodies_and_osmem_takes_them() {
    // PGSync's ELASTICSEARCH_HTTP_COMPRESS: bodies go gzipped with Content-Encoding: gzip.
    let server = Scripted::start(vec![(
        200,
        r#"{"errors":false,"items":[{"index":{"status":201}}]}"#,
    )])
    .await;
    let mut cfg = config(&server.url);
    cfg.search.http_compress = true;
    let sink = Sink::from_config(&cfg).unwrap();
    let out = sink
        .bulk(batch("books", &[("1", Some(json!({"n": 1})))]))
        .await
        .unwrap();
    assert_eq!(out.failures.len(), 0);
    let seen = server.seen();
    let bulk = seen
        .iter()
        .find(|s| s.request_line.contains("_bulk"))
        .expect("a bulk request");
    assert!(
        bulk.headers.contains("content-encoding: gzip"),
        "{}",
        bulk.headers
    );
    assert_eq!(&bulk.body[..2], &[0x1f, 0x8b], "not a gzip body");

    let os = Osmem::start();
    let mut cfg = config(os.url());
    cfg.search.http_compress = true;
    let sink = Sink::from_config(&cfg).unwrap();
    sink.ensure_index("books", &books_body(), false)
        .await
        .unwrap();
    sink.bulk(batch(
        "books",
        &[("7", Some(json!({"n": 7, "title": "gz"})))],
    ))
    .await
    .unwrap();
    os.refresh("books");
    assert_eq!(os.doc("books", "7").unwrap()["title"], "gz");
}
