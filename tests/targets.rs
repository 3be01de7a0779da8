//! What each document target guarantees beyond holding the right documents (the change cases of
//! tests/streaming.rs run per target): the message format, Redis `MAXLEN ~` trimming, webhook
//! signatures and retries, JetStream deduplication, and rejections going to the dead-letter
//! store. The real `pgsync run` daemon against the `library` fixture and each real server.

mod common;
mod harness;

use common::daemon::Mode;
use common::expected_documents;
use common::stream::Stream;
use common::targets::{
    NatsReader, Reader, RedisReader, TypesenseReader, WebhookReceiver, WEBHOOK_SECRET,
};
use harness::{redis_cmd, shared_postgres, Redis, Resp, Typesense};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A streaming bed (wal capture) writing to `reader`'s server.
fn bed(prefix: &str, reader: Box<dyn Reader>) -> Stream {
    Stream::on_target(shared_postgres(), prefix, Mode::Wal, "", Some(reader))
}

/// The reader's `[output]` section with `keys` added.
struct With<R>(R, &'static str);

impl<R: Reader> Reader for With<R> {
    fn toml(&self) -> String {
        format!("{}{}\n", self.0.toml(), self.1)
    }
    fn documents(&self, index: &str) -> Option<common::targets::Docs> {
        self.0.documents(index)
    }
    fn normalize(&self, doc: &Value) -> Value {
        self.0.normalize(doc)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self.0.as_any()
    }
}

fn output_with<R: Reader + 'static>(reader: R, keys: &'static str) -> Box<dyn Reader> {
    Box::new(With(reader, keys))
}

/// Waits until `f` holds, for at most 30 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The dead-letter entries of `index` now (the file store's add and remove lines, folded).
fn dead_letters(s: &Stream, index: &str) -> Vec<Value> {
    let path = s
        .work
        .dir
        .path()
        .join(format!("dead-letters/{index}.dead-letter.ndjson"));
    let mut entries = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: Value = serde_json::from_str(line).expect("a dead-letter line is JSON");
        match v["op"].as_str() {
            Some("add") => {
                entries.insert(v["entry"]["doc_id"].to_string(), v["entry"].clone());
            }
            Some("remove") => {
                entries.remove(&v["doc_id"].to_string());
            }
            _ => panic!("unknown dead-letter line {v}"),
        }
    }
    entries.into_values().collect()
}

#[test]
fn redis_stream_entries_carry_id_op_doc_position_and_version_and_are_trimmed_to_about_maxlen() {
    // Small stream nodes, so `MAXLEN ~` can trim close to the cap.
    let redis = Redis::start_with(vec!["--stream-node-max-entries".into(), "4".into()]);
    let port = redis.port();
    let mut s = bed("tg_redis", output_with(RedisReader(redis), "maxlen = 10"));
    s.start_daemon();
    s.expect(&expected_documents(), "initial sync");

    for n in 0..60 {
        s.sql(&format!("UPDATE book SET title = 'draft {n}' WHERE id = 1"));
    }
    s.sql("DELETE FROM book WHERE id = 4");
    let last_title = |entries: &[(String, std::collections::BTreeMap<String, String>)]| {
        entries
            .iter()
            .rev()
            .find(|(_, f)| f["_id"] == "1")
            .map(|(_, f)| {
                let doc: Value = serde_json::from_str(&f["doc"]).unwrap();
                doc["book_title"].clone()
            })
    };
    let reader = s
        .reader
        .as_ref()
        .unwrap()
        .as_any()
        .downcast_ref::<RedisReader>()
        .unwrap();
    eventually("the last title and the delete are in the stream", || {
        let e = reader.entries("pgsync:book");
        last_title(&e) == Some(json!("draft 59")) && e.iter().any(|(_, f)| f["op"] == "delete")
    });
    let entries = reader.entries("pgsync:book");
    let delete = &entries.iter().find(|(_, f)| f["op"] == "delete").unwrap().1;
    assert_eq!(delete["_id"], "4");
    assert_eq!(delete["doc"], "null");
    assert!(delete["position"].parse::<u64>().unwrap() > 0, "{delete:?}");
    assert!(delete["version"].parse::<u64>().unwrap() > 0, "{delete:?}");
    let Resp::Int(len) = redis_cmd(port, &["XLEN", "pgsync:book"]).unwrap() else {
        panic!("XLEN")
    };
    let Resp::Array(Some(info)) = redis_cmd(port, &["XINFO", "STREAM", "pgsync:book"]).unwrap()
    else {
        panic!("XINFO")
    };
    let added = info
        .chunks(2)
        .find(|kv| kv[0] == Resp::Bulk(Some("entries-added".into())))
        .map(|kv| match kv[1] {
            Resp::Int(n) => n,
            _ => panic!("entries-added"),
        })
        .unwrap();
    eprintln!("XLEN {len}, entries added {added}");
    assert!(
        len <= 10 + 4,
        "the stream holds {len} entries, more than about MAXLEN 10"
    );
    assert!(
        added > len,
        "nothing was trimmed ({added} added, {len} left)"
    );
}

#[test]
fn webhook_posts_are_signed_retried_through_errors_and_refusals_are_dead_lettered() {
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET);
    let seen = receiver.seen.clone();
    seen.lock().unwrap().fail_next = 3;
    let mut s = bed("tg_webhook", Box::new(receiver));
    s.start_daemon();
    // Three 503s first: the batch is re-sent until the receiver takes it.
    s.expect(
        &expected_documents(),
        "initial sync through three 503 answers",
    );
    {
        let got = seen.lock().unwrap();
        assert_eq!(
            got.bad_signatures, 0,
            "every request carried the right signature"
        );
        assert_eq!(got.fail_next, 0);
        let e = &got.events[0];
        for key in ["_index", "_id", "op", "doc", "position", "version"] {
            assert!(e.get(key).is_some(), "event without {key}: {e}");
        }
    }

    // A receiver that refuses for good (here: a wrong secret makes it answer 401): the documents
    // go to the dead-letter store and the daemon goes on.
    s.daemon().kill();
    s.daemon = None;
    let toml = std::fs::read_to_string(&s.work.config).unwrap();
    std::fs::write(
        &s.work.config,
        toml.replace(WEBHOOK_SECRET, "a-wrong-secret"),
    )
    .unwrap();
    s.start_daemon();
    s.sql("UPDATE book SET title = 'Refused' WHERE id = 2");
    eventually("the refused document is dead-lettered", || {
        dead_letters(&s, "book").iter().any(|e| e["doc_id"] == "2")
    });
    let entry = dead_letters(&s, "book")
        .into_iter()
        .find(|e| e["doc_id"] == "2")
        .unwrap();
    assert_eq!(entry["status"], 401, "{entry}");
    assert!(seen.lock().unwrap().bad_signatures > 0);
    s.daemon().assert_alive("after a refused batch");
}

#[test]
fn nats_messages_have_subjects_per_index_and_op_and_msg_ids_that_jetstream_deduplicates() {
    let reader = NatsReader::start();
    let url = reader.server.url();
    let mut s = bed("tg_nats", Box::new(reader));
    s.start_daemon();
    s.expect(&expected_documents(), "initial sync");
    s.sql("DELETE FROM book WHERE id = 4");
    let reader = s
        .reader
        .as_ref()
        .unwrap()
        .as_any()
        .downcast_ref::<NatsReader>()
        .unwrap();
    eventually("the delete is published", || {
        reader
            .messages("PGSYNC")
            .iter()
            .any(|(subject, _, _)| subject == "pgsync.book.delete")
    });
    let messages = reader.messages("PGSYNC");
    for (subject, id, payload) in &messages {
        let want = format!(
            "pgsync.{}.{}",
            payload["_index"].as_str().unwrap(),
            payload["op"].as_str().unwrap()
        );
        assert_eq!(subject, &want);
        if payload["op"] == "truncate" {
            // The build starts with one; it has no version to deduplicate by.
            assert_eq!(id, &None, "{payload}");
            continue;
        }
        let want_id = format!(
            "{}:{}:{}",
            payload["_index"].as_str().unwrap(),
            payload["_id"].as_str().unwrap(),
            payload["version"]
        );
        assert_eq!(id.as_deref(), Some(want_id.as_str()), "{payload}");
    }

    // A message re-sent with the same Nats-Msg-Id (as after a restart) is not stored twice.
    let (subject, id, payload) = messages.last().unwrap().clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let duplicate = runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.to_string().into())
            .message_id(id.unwrap());
        js.send_publish(subject, msg)
            .await
            .unwrap()
            .await
            .unwrap()
            .duplicate
    });
    assert!(duplicate, "JetStream did not recognise the re-sent message");
    assert_eq!(reader.messages("PGSYNC").len(), messages.len());
}

#[test]
fn typesense_documents_it_cannot_type_are_dead_lettered_and_the_rest_indexed() {
    // Auto-detected types: Typesense refuses arrays holding null in indexed fields, which
    // books 2 and 3 and edition 3|2 of the fixture have.
    let ts = Typesense::start();
    let mut s = bed(
        "tg_typesense",
        output_with(TypesenseReader(ts), "collection_schema = \"auto\""),
    );
    s.start_daemon();
    let mut want = expected_documents();
    for (index, id) in [("book", "2"), ("book", "3"), ("edition", "3|2")] {
        want.get_mut(index).unwrap().remove(id);
    }
    s.expect(
        &want,
        "initial sync without the documents Typesense refuses",
    );
    let mut refused: Vec<String> = dead_letters(&s, "book")
        .iter()
        .map(|e| e["doc_id"].as_str().unwrap().to_owned())
        .collect();
    refused.sort();
    assert_eq!(refused, ["2", "3"]);
    assert_eq!(dead_letters(&s, "edition")[0]["status"], 400);
    let reader = s
        .reader
        .as_ref()
        .unwrap()
        .as_any()
        .downcast_ref::<TypesenseReader>()
        .unwrap();
    let (status, body) = reader.0.request(
        "GET",
        "/collections/book/documents/search?q=Tolstoy&query_by=authors.name",
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let hits: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(hits["found"], 1, "a nested field is searchable: {hits}");
}
