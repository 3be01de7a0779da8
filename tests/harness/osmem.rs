//! osmem-server: an in-memory OpenSearch-compatible server (PyPI package
//! `osmem-server`, a static Go binary shipped in the wheel's
//! `osmem_server/bin/`), so tests exercise real HTTP without a JVM.
//!
//! Its CLI (0.1.6): `-addr host:port` (default `127.0.0.1:0`, port 0 picks
//! a free one), `-parent-pid N` (exit when N disappears), `-no-stdin-watch`
//! (by default it exits when stdin closes), `-seed DIR|FILE.ndjson`,
//! `-freeze`, `-no-ja`, `-version`. On start it prints one JSON line to
//! stdout: `{"url":"http://127.0.0.1:PORT","pid":..,"version":"3.8.0",..}`.
//!
//! Differences from real Elasticsearch/OpenSearch seen so far:
//! - Writes are searchable at once; `_refresh` is accepted but changes
//!   nothing, so a test cannot catch a missing refresh.
//! - `GET /` says distribution `opensearch` 3.8.0, yet every response
//!   carries `X-Elastic-Product: Elasticsearch` so Elastic clients accept it.
//! - Elasticsearch's versioned media type
//!   (`application/vnd.elasticsearch+json; compatible-with=9`) is refused
//!   with 406, as OpenSearch does; the `elasticsearch` crate sends plain
//!   `application/json` by default, which works.
//! - Index writes report `_shards.total: 2` and cluster health is yellow
//!   (one unassigned replica), like a single-node cluster.

use super::process::{find_on_path, is_executable, LogTail};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A private osmem-server. It exits by itself when this process dies: we
/// hold its stdin pipe (it quits on EOF) and pass `-parent-pid`, so no
/// extra watchdog is needed. Drop kills it; its data lives only in memory.
pub struct Osmem {
    url: String,
    port: u16,
    child: Child,
    _stdin: ChildStdin,
    log: LogTail,
}

impl Osmem {
    /// Starts a server on a kernel-chosen free port and waits until
    /// `GET /` answers; panics with its output if it does not.
    pub fn start() -> Osmem {
        Osmem::start_at("127.0.0.1:0")
    }

    /// Starts an empty server on `port` (where a killed one listened: an
    /// engine that lost its data and came back).
    pub fn start_on(port: u16) -> Osmem {
        Osmem::start_at(&format!("127.0.0.1:{port}"))
    }

    /// SIGKILL: the server and everything it held are gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn start_at(addr: &str) -> Osmem {
        use std::os::unix::process::CommandExt;
        let bin = osmem_bin();
        let mut child = Command::new(&bin)
            .args(["-addr", addr, "-parent-pid"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stdin = child.stdin.take().unwrap();
        let log = LogTail::default();
        let (tx, rx) = std::sync::mpsc::channel();
        log.capture(child.stdout.take().unwrap(), Some(tx));
        log.capture(child.stderr.take().unwrap(), None);
        let mut os = Osmem {
            url: String::new(),
            port: 0,
            child,
            _stdin: stdin,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while os.url.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(url) = serde_json::from_str::<Value>(&line)
                        .ok()
                        .and_then(|v| v.get("url")?.as_str().map(String::from))
                    {
                        os.port = url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap();
                        os.url = url;
                    }
                }
                Err(_) if left.is_zero() || os.child.try_wait().ok().flatten().is_some() => {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("osmem-server did not start:\n{}", os.log.text());
                }
                Err(_) => {}
            }
        }
        while !matches!(os.request("GET", "/", None), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "osmem-server at {} never answered GET /:\n{}",
                os.url,
                os.log.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        os
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server printed recently.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// One HTTP/1.1 request with a JSON body; returns status and parsed
    /// body (`Null` when empty, a string when not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, bytes) = http_request(self.port, method, path, "application/json", &body)?;
        Ok((status, parse_body(&bytes)))
    }

    /// Like [`Osmem::request`] for any body, e.g. NDJSON to `_bulk` with
    /// content type `application/x-ndjson`.
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Value)> {
        let (status, bytes) = http_request(self.port, method, path, content_type, body)?;
        Ok((status, parse_body(&bytes)))
    }

    /// `GET path`; panics unless the status is 2xx.
    pub fn get_json(&self, path: &str) -> Value {
        self.expect_ok("GET", path, None)
    }

    /// `PUT path` with a JSON body; panics unless 2xx.
    pub fn put_json(&self, path: &str, body: &Value) -> Value {
        self.expect_ok("PUT", path, Some(body))
    }

    /// `POST path` with a JSON body; panics unless 2xx.
    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        self.expect_ok("POST", path, Some(body))
    }

    /// `DELETE path`; returns the status so tests can accept 404.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path, None)
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
    }

    /// The mappings of `index` (an alias: of the one index behind it).
    pub fn mappings(&self, index: &str) -> Value {
        let v = self.get_json(&format!("/{index}/_mapping"));
        v.as_object()
            .and_then(|o| o.values().next())
            .map(|i| i["mappings"].clone())
            .unwrap_or(Value::Null)
    }

    /// Whether `index` (or an alias of that name) exists.
    pub fn index_exists(&self, index: &str) -> bool {
        match self.request("GET", &format!("/{index}"), None) {
            Ok((200, _)) => true,
            Ok((404, _)) => false,
            other => panic!("GET /{index}: {other:?}"),
        }
    }

    /// `POST /index/_refresh` (a no-op on osmem, needed on real servers).
    pub fn refresh(&self, index: &str) {
        self.expect_ok("POST", &format!("/{index}/_refresh"), None);
    }

    /// `_source` of one document, `None` if it (or the index) is missing.
    pub fn doc(&self, index: &str, id: &str) -> Option<Value> {
        match self.request("GET", &format!("/{index}/_doc/{id}"), None) {
            Ok((200, v)) => v.get("_source").cloned(),
            Ok((404, _)) => None,
            other => panic!("GET /{index}/_doc/{id}: {other:?}"),
        }
    }

    /// Number of documents in `index` after a refresh; panics if missing.
    pub fn count(&self, index: &str) -> u64 {
        self.refresh(index);
        self.get_json(&format!("/{index}/_count"))["count"]
            .as_u64()
            .expect("count")
    }

    /// Every document of `index` as `_id -> _source`, after a refresh;
    /// panics if the index does not exist.
    pub fn all_docs(&self, index: &str) -> BTreeMap<String, Value> {
        self.try_all_docs(index)
            .unwrap_or_else(|| panic!("index {index} does not exist"))
    }

    /// [`Osmem::all_docs`], but `None` while the index does not exist (for
    /// polling with `wait_until`). Uses scroll, so it is not capped by
    /// `index.max_result_window` (10000).
    pub fn try_all_docs(&self, index: &str) -> Option<BTreeMap<String, Value>> {
        match self.request("POST", &format!("/{index}/_refresh"), None) {
            Ok((404, _)) => return None,
            Ok((s, _)) if (200..300).contains(&s) => {}
            other => panic!("refresh {index}: {other:?}"),
        }
        let query = json!({"size": 1000, "sort": ["_doc"], "query": {"match_all": {}}});
        let mut page =
            match self.request("POST", &format!("/{index}/_search?scroll=1m"), Some(&query)) {
                Ok((404, _)) => return None,
                Ok((200, v)) => v,
                other => panic!("search {index}: {other:?}"),
            };
        let mut docs = BTreeMap::new();
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for hit in hits {
                let id = hit["_id"].as_str().expect("_id").to_string();
                docs.insert(id, hit["_source"].clone());
            }
            let scroll_id = page["_scroll_id"].clone();
            page = self.post_json(
                "/_search/scroll",
                &json!({"scroll": "1m", "scroll_id": scroll_id}),
            );
        }
        if let Some(id) = page.get("_scroll_id") {
            let _ = self.request("DELETE", "/_search/scroll", Some(&json!({"scroll_id": id})));
        }
        Some(docs)
    }

    fn expect_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        match self.request(method, path, body) {
            Ok((s, v)) if (200..300).contains(&s) => v,
            Ok((s, v)) => panic!("{method} {path} answered {s}: {v}"),
            Err(e) => panic!("{method} {path} failed: {e}\n{}", self.log.text()),
        }
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `osmem-server` is: `OSMEM_BIN`, then the package's own
/// `OSMEM_SERVER_BIN`, then `PATH`, then the `bin/` inside the installed
/// `osmem_server` Python package (where pip puts it; it is not a console
/// script, so it is usually not on `PATH`).
pub fn osmem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        for var in ["OSMEM_BIN", "OSMEM_SERVER_BIN"] {
            if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
                return PathBuf::from(p);
            }
        }
        if let Some(p) = find_on_path("osmem-server") {
            return p;
        }
        const ASK: &str = "import os, osmem_server; \
            print(os.path.join(os.path.dirname(osmem_server.__file__), 'bin', 'osmem-server'))";
        for python in ["python3", "python"] {
            let out = Command::new(python)
                .args(["-c", ASK])
                .stderr(Stdio::null())
                .output();
            if let Some(out) = out.ok().filter(|o| o.status.success()) {
                let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if is_executable(&p) {
                    return p;
                }
            }
        }
        panic!(
            "osmem-server not found (OSMEM_BIN, PATH, python3's osmem_server package); \
             run scripts/install-deps.sh (pip install osmem-server)"
        )
    })
    .clone()
}

/// Minimal HTTP/1.1 client: one request per connection, `Connection:
/// close`, reads to EOF; understands `Content-Length` and chunked bodies.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if method == "HEAD" {
        rest.clear();
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        rest = dechunk(&rest).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.truncate(len);
    }
    Ok((status, rest))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
