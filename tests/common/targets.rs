//! The targets a streaming test can run against, each on its real server: the search engine
//! (osmem), Typesense, a Redis stream, NATS JetStream and a webhook receiver (a small HTTP
//! server in the test that checks the signature). [`Reader`] reads back the documents a target
//! holds now: Typesense by exporting the collection; the event targets by folding their events
//! in order by `_id` (last wins, a delete removes, a truncate empties the index).

use super::daemon::Mode;
use crate::harness::{redis_cmd, Nats, Redis, Resp, Typesense, TYPESENSE_API_KEY};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Where the daemon writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// osmem, the `[search]` engine.
    Search,
    /// Typesense.
    Typesense,
    /// Redis streams.
    RedisStream,
    /// NATS JetStream.
    Nats,
    /// The webhook receiver.
    Webhook,
}

/// A capture mode and a target: what a streaming case runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bed {
    /// `[capture] mode`.
    pub mode: Mode,
    /// `[output] kind`.
    pub target: Target,
}

impl Bed {
    /// `mode` into `target`.
    pub const fn new(mode: Mode, target: Target) -> Bed {
        Bed { mode, target }
    }
}

impl From<Mode> for Bed {
    fn from(mode: Mode) -> Bed {
        Bed::new(mode, Target::Search)
    }
}

/// Documents by index, then `_id`.
pub type Docs = BTreeMap<String, Value>;

/// A running target server and how to read it back.
pub trait Reader: Send {
    /// The `[output]` section (and any other) pointing the daemon at it.
    fn toml(&self) -> String;
    /// The documents of `index` now; `None` when the target has nothing for it yet.
    fn documents(&self, index: &str) -> Option<Docs>;
    /// An expected document as this target stores it.
    fn normalize(&self, doc: &Value) -> Value {
        doc.clone()
    }
    /// For tests that look into one kind of target.
    fn as_any(&self) -> &dyn std::any::Any;
    /// What the target holds, raw, for a failing test's message.
    fn dump(&self) -> String {
        String::new()
    }
}

/// Starts the server of `target`; `None` for the search engine (the bed's osmem).
pub fn start(target: Target) -> Option<Box<dyn Reader>> {
    match target {
        Target::Search => None,
        Target::Typesense => Some(Box::new(TypesenseReader(Typesense::start()))),
        Target::RedisStream => Some(Box::new(RedisReader(Redis::start()))),
        Target::Nats => Some(Box::new(NatsReader::start())),
        Target::Webhook => Some(Box::new(WebhookReceiver::start(WEBHOOK_SECRET))),
    }
}

/// Typesense: the exported collection, without the `id` Typesense adds, the flattened
/// `a.b` copies of nested fields it exports, and `null`s, which it does not store.
pub struct TypesenseReader(pub Typesense);

impl Reader for TypesenseReader {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn toml(&self) -> String {
        format!(
            "[output]\nkind = \"typesense\"\nurl = \"{}\"\napi_key = \"{TYPESENSE_API_KEY}\"\n",
            self.0.url()
        )
    }

    fn documents(&self, index: &str) -> Option<Docs> {
        let docs = self.0.export(index)?;
        Some(
            docs.into_iter()
                .map(|mut d| {
                    let id = d["id"].as_str().expect("a string id").to_owned();
                    let obj = d.as_object_mut().expect("an object");
                    obj.remove("id");
                    obj.retain(|k, _| !k.contains('.'));
                    (id, strip_nulls(&d))
                })
                .collect(),
        )
    }

    fn normalize(&self, doc: &Value) -> Value {
        strip_nulls(doc)
    }
}

/// `doc` without object fields whose value is `null`, at every depth.
pub fn strip_nulls(doc: &Value) -> Value {
    match doc {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        v => v.clone(),
    }
}

/// Applies events (envelopes) of `index` in order: the documents they leave.
pub fn fold<'a>(index: &str, events: impl IntoIterator<Item = &'a Value>) -> Docs {
    let mut docs = Docs::new();
    for e in events.into_iter().filter(|e| e["_index"] == index) {
        let id = e["_id"].as_str().unwrap_or_default().to_owned();
        match e["op"].as_str() {
            Some("index") => {
                docs.insert(id, e["doc"].clone());
            }
            Some("delete") => {
                docs.remove(&id);
            }
            Some("truncate") => docs.clear(),
            other => panic!("unknown op {other:?} in event {e}"),
        }
    }
    docs
}

/// Redis: the entries of `pgsync:<index>` (XRANGE), folded.
pub struct RedisReader(pub Redis);

impl RedisReader {
    /// Every entry of `stream` as `(entry id, field → value)`.
    pub fn entries(&self, stream: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let Resp::Array(Some(items)) =
            redis_cmd(self.0.port(), &["XRANGE", stream, "-", "+"]).expect("XRANGE")
        else {
            panic!("XRANGE {stream} did not answer an array");
        };
        items.into_iter().map(entry).collect()
    }
}

fn entry(item: Resp) -> (String, BTreeMap<String, String>) {
    let text = |r: &Resp| match r {
        Resp::Bulk(Some(s)) => s.clone(),
        other => panic!("not a bulk string: {other:?}"),
    };
    let Resp::Array(Some(parts)) = item else {
        panic!("a stream entry is [id, fields]")
    };
    let Resp::Array(Some(fields)) = &parts[1] else {
        panic!("a stream entry has fields")
    };
    let map = fields
        .chunks(2)
        .map(|kv| (text(&kv[0]), text(&kv[1])))
        .collect();
    (text(&parts[0]), map)
}

impl Reader for RedisReader {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn toml(&self) -> String {
        format!(
            "[output]\nkind = \"redis_stream\"\nurl = \"{}\"\n",
            self.0.url()
        )
    }

    fn documents(&self, index: &str) -> Option<Docs> {
        let events: Vec<Value> = self
            .entries(&format!("pgsync:{index}"))
            .into_iter()
            .map(|(_, f)| {
                serde_json::json!({
                    "_index": index,
                    "_id": f["_id"],
                    "op": f["op"],
                    "doc": serde_json::from_str::<Value>(&f["doc"]).expect("doc is JSON"),
                })
            })
            .collect();
        (!events.is_empty()).then(|| fold(index, &events))
    }
}

/// NATS: every message of the `PGSYNC` stream, in order, folded.
pub struct NatsReader {
    /// The server.
    pub server: Nats,
    runtime: tokio::runtime::Runtime,
}

impl NatsReader {
    /// A server and a runtime to read it with.
    pub fn start() -> NatsReader {
        NatsReader {
            server: Nats::start(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
        }
    }

    /// Every message of JetStream stream `stream`: `(subject, Nats-Msg-Id, payload)`.
    pub fn messages(&self, stream: &str) -> Vec<(String, Option<String>, Value)> {
        let url = self.server.url();
        self.runtime.block_on(async {
            let client = async_nats::connect(url).await.expect("connect to nats");
            let js = async_nats::jetstream::new(client);
            let Ok(mut s) = js.get_stream(stream).await else {
                return vec![];
            };
            let state = s.info().await.expect("stream info").state.clone();
            let mut out = vec![];
            for seq in state.first_sequence..=state.last_sequence.max(1) {
                if state.messages == 0 {
                    break;
                }
                let mut tries = 0;
                let m = loop {
                    match s.get_raw_message(seq).await {
                        Ok(m) => break m,
                        Err(e) if tries < 3 => {
                            tries += 1;
                            eprintln!("reading message {seq} of {stream}: {e}; again");
                        }
                        Err(e) => panic!("cannot read message {seq} of {stream}: {e}"),
                    }
                };
                let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
                let payload: Value = serde_json::from_slice(&m.payload).expect("payload is JSON");
                out.push((m.subject.to_string(), id, payload));
            }
            out
        })
    }
}

impl Reader for NatsReader {
    fn dump(&self) -> String {
        self.messages("PGSYNC")
            .iter()
            .map(|(subject, id, p)| {
                format!(
                    "{subject} {id:?} position={} _id={}\n",
                    p["position"], p["_id"]
                )
            })
            .collect()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn toml(&self) -> String {
        format!(
            "[output]\nkind = \"nats\"\nurl = \"{}\"\n",
            self.server.url()
        )
    }

    fn documents(&self, index: &str) -> Option<Docs> {
        let events: Vec<Value> = self
            .messages("PGSYNC")
            .into_iter()
            .map(|(_, _, p)| p)
            .collect();
        events
            .iter()
            .any(|e| e["_index"] == index)
            .then(|| fold(index, &events))
    }
}

/// The secret the receiver checks signatures with.
pub const WEBHOOK_SECRET: &str = "webhook-test-secret";

/// What the webhook receiver saw.
#[derive(Default)]
pub struct Received {
    /// Every event of every accepted request, in order.
    pub events: Vec<Value>,
    /// Requests accepted.
    pub requests: usize,
    /// Requests refused for a missing or wrong signature.
    pub bad_signatures: usize,
    /// Requests still to answer with 503 (fault injection).
    pub fail_next: usize,
}

/// A small HTTP server taking the daemon's POSTs: checks `X-Pgsync-Signature` against
/// [`WEBHOOK_SECRET`] (401 when wrong), answers 503 to the next `fail_next` requests, else
/// keeps the events and answers 200.
pub struct WebhookReceiver {
    port: u16,
    secret: String,
    /// What it received.
    pub seen: Arc<Mutex<Received>>,
}

impl WebhookReceiver {
    /// Listens on a free port (a thread per connection).
    pub fn start(secret: &str) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Received>> = Default::default();
        let (s, key) = (seen.clone(), secret.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, key) = (s.clone(), key.clone());
                std::thread::spawn(move || serve(conn, &s, &key));
            }
        });
        WebhookReceiver {
            port,
            secret: secret.to_owned(),
            seen,
        }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The received state.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Received> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reader for WebhookReceiver {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn toml(&self) -> String {
        format!(
            "[output]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{}\"\n",
            self.url(),
            self.secret
        )
    }

    fn documents(&self, index: &str) -> Option<Docs> {
        let seen = self.seen();
        seen.events
            .iter()
            .any(|e| e["_index"] == index)
            .then(|| fold(index, &seen.events))
    }
}

/// `sha256=<hex HMAC-SHA256>`, computed here independently of the daemon's code.
fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Answers the requests of one keep-alive connection.
fn serve(conn: std::net::TcpStream, seen: &Mutex<Received>, secret: &str) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut out = conn;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line),
            }
        }
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            let expected = signature(secret, &body);
            if header("x-pgsync-signature").as_deref() != Some(expected.as_str()) {
                s.bad_signatures += 1;
                "401 Unauthorized"
            } else if s.fail_next > 0 {
                s.fail_next -= 1;
                "503 Service Unavailable"
            } else {
                let v: Value = serde_json::from_slice(&body).expect("a JSON body");
                s.events
                    .extend(v["events"].as_array().expect("events").iter().cloned());
                s.requests += 1;
                "200 OK"
            }
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{{}}"
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
