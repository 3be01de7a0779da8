//! The Elasticsearch/OpenSearch sink. Requests go through the `elasticsearch` crate's transport
//! with plain paths (`/_bulk`, `/{index}`, `/{index}/_refresh`) that mean the same thing on
//! Elasticsearch 7–9 and OpenSearch 1–3, and with `application/json` / `application/x-ndjson`
//! content types (OpenSearch rejects Elasticsearch's `compatible-with` media types).

use super::actions::split_actions;
use super::response::{error_body_text, parse_bulk_response};
use super::transport::{node_urls, Auth, Node, Nodes};
use super::{BulkBatch, BulkOutcome};
use crate::config::{Engine, PipelineConfig, SearchConfig};
use crate::{Error, ErrorKind, Result};
use bytes::Bytes;
use elasticsearch::http::headers::{
    HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use elasticsearch::http::{Method, Url};
use std::sync::Arc;
use std::time::Duration;

/// `_bulk` asks only for what is read back: the flag, and per item its status and error.
const BULK_PATH: &str = "/_bulk?filter_path=errors,items.*.status,items.*.error";

/// A search-engine sink. Cheap to clone: clones share the HTTP connection pool.
#[derive(Clone)]
pub struct SearchSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SearchSink({})", self.url())
    }
}

struct Inner {
    /// The cluster's nodes, each with its HTTP client.
    nodes: Nodes,
    /// What authenticates each request.
    auth: Auth,
    /// Gzip request bodies (before signing: a SigV4 signature covers the bytes sent).
    gzip: bool,
    /// The base URL without credentials, for messages.
    url: String,
    engine: Engine,
    max_retries: u32,
    backoff: Duration,
    /// The engine's outages, logged once each (shared by every clone and request).
    outage: std::sync::Mutex<crate::outage::Outage>,
    max_backoff: Duration,
}

/// What `GET /` says about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Elasticsearch or OpenSearch (from `version.distribution`).
    pub engine: Engine,
    /// `version.number`, e.g. `8.15.0` or `2.17.1`.
    pub version: String,
}

/// A status and body that came back from the engine.
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A transient failure of one attempt: a connection error or a 429/5xx answer.
enum Attempt {
    Done(Answer),
    Transient {
        reason: String,
        answer: Option<Answer>,
        retry_after: Option<Duration>,
    },
    /// A failure no retry can fix (no AWS credentials configured).
    Failed(Error),
}

impl SearchSink {
    /// Builds the client from `[search]` (node URLs or Elastic Cloud id, basic auth, API key,
    /// bearer token or AWS SigV4, CA certificate or no verification, client certificate,
    /// timeout) and the retry policy from `[pipeline]`. No network I/O.
    pub fn new(search: &SearchConfig, pipeline: &PipelineConfig) -> Result<SearchSink> {
        let found = node_urls(search)?;
        let url_creds = found.iter().find_map(|(_, c)| c.clone());
        let urls: Vec<Url> = found.into_iter().map(|(u, _)| u).collect();
        let shown = urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = super::transport::nodes(search, urls)?;
        let auth = super::transport::auth(search, url_creds)?;
        Ok(SearchSink {
            inner: Arc::new(Inner {
                nodes,
                auth,
                gzip: search.http_compress,
                url: shown.clone(),
                engine: search.engine,
                max_retries: pipeline.max_retries,
                backoff: Duration::from_millis(pipeline.retry_backoff_ms),
                outage: std::sync::Mutex::new(crate::outage::Outage::new(format!(
                    "search engine at {shown}"
                ))),
                max_backoff: Duration::from_millis(pipeline.retry_max_backoff_ms),
            }),
        })
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, crate::outage::Outage> {
        self.inner.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The base URL, without credentials: safe to print.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// `GET /`: which engine and version answers. Not retried: it is the reachability probe.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let mut retries = 0;
        let a = self
            .request(Method::Get, "/", None, None, &mut retries, 0)
            .await?;
        // OpenSearch Serverless has no `GET /`: its collections are OpenSearch without a version.
        if a.status == 404 && matches!(&self.inner.auth, Auth::Aws(s) if s.service() == "aoss") {
            return Ok(ServerInfo {
                engine: Engine::Opensearch,
                version: "serverless".into(),
            });
        }
        if !a.ok() {
            return Err(self.status_error("GET", "/", &a));
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).map_err(|e| {
            Error::new(
                ErrorKind::SinkRejected,
                format!(
                    "{} does not look like Elasticsearch or OpenSearch (GET / is not JSON: {e})",
                    self.url()
                ),
            )
        })?;
        let engine = match v["version"]["distribution"].as_str() {
            Some("opensearch") => Engine::Opensearch,
            _ => Engine::Elasticsearch,
        };
        Ok(ServerInfo {
            engine,
            version: v["version"]["number"].as_str().unwrap_or("?").to_owned(),
        })
    }

    /// Checks the engine answers `GET /` (and that credentials are accepted); warns when it is
    /// not the configured engine family.
    pub async fn check(&self) -> Result<()> {
        let info = self.server_info().await?;
        let name = |e: Engine| match e {
            Engine::Elasticsearch => "Elasticsearch",
            Engine::Opensearch => "OpenSearch",
        };
        tracing::info!(
            "search engine at {} is {} {}",
            self.url(),
            name(info.engine),
            info.version
        );
        if info.engine != self.inner.engine {
            tracing::warn!(
                "search.engine is {} but {} is {} {}; set search.engine (or OPENSEARCH) to match",
                name(self.inner.engine),
                self.url(),
                name(info.engine),
                info.version
            );
        }
        Ok(())
    }

    /// Whether `index` (or an alias of that name) exists.
    pub async fn index_exists(&self, index: &str) -> Result<bool> {
        let path = index_path(index, "")?;
        let mut retries = 0;
        let a = self
            .request(
                Method::Head,
                &path,
                None,
                None,
                &mut retries,
                self.inner.max_retries,
            )
            .await?;
        match a.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error("HEAD", &path, &a)),
        }
    }

    /// The engine's `uuid` of `index` (of the index an alias points to), `None` when it does not
    /// exist: tells a re-created index from the one the documents were written to.
    pub async fn index_uuid(&self, index: &str) -> Result<Option<String>> {
        let path = index_path(index, "/_settings")?;
        let (status, v) = self.json(Method::Get, &path, None).await?;
        match status {
            404 => Ok(None),
            200..=299 => Ok(v
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|i| i["settings"]["index"]["uuid"].as_str())
                .map(str::to_owned)),
            _ => Err(Error::new(
                ErrorKind::SinkTransient,
                format!(
                    "search engine at {} answered {status} to GET {path}",
                    self.url()
                ),
            )),
        }
    }

    /// See [`super::Sink::ensure_index`].
    pub async fn ensure_index(
        &self,
        index: &str,
        body: &serde_json::Value,
        recreate: bool,
    ) -> Result<bool> {
        let path = index_path(index, "")?;
        if self.index_exists(index).await? {
            if !recreate {
                return Ok(false);
            }
            self.delete_index(index).await?;
        }
        let body = if body.is_null() {
            Bytes::from_static(b"{}")
        } else {
            Bytes::from(serde_json::to_vec(body).expect("JSON value serializes"))
        };
        let mut retries = 0;
        let a = self
            .request(
                Method::Put,
                &path,
                Some("application/json"),
                Some(body),
                &mut retries,
                self.inner.max_retries,
            )
            .await?;
        if a.ok() {
            tracing::info!("created index {index} on {}", self.url());
            return Ok(true);
        }
        // Someone else created it between the check and the create.
        if !recreate
            && a.status == 400
            && error_body_text(&a.body).starts_with("resource_already_exists_exception")
        {
            return Ok(false);
        }
        Err(self
            .status_error("PUT", &path, &a)
            .context(format!("creating index {index}")))
    }

    /// Sends a bulk request. Whole-request failures (connection errors, 429, 5xx) are retried
    /// with exponential backoff; after a 2xx, items rejected with 429/5xx are re-sent alone
    /// (same backoff, same `pipeline.max_retries` budget for the whole call). Other item
    /// rejections come back as [`super::ItemFailure`]s; a delete of a missing document counts as
    /// success. When the budget runs out the call fails with a transient error and the caller
    /// may re-send the whole batch (index and delete actions are idempotent).
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        let mut out = BulkOutcome::default();
        if batch.is_empty() {
            return Ok(out);
        }
        let max = self.inner.max_retries;
        let (mut body, mut ids) = (batch.body, batch.ids);
        // Position in the batch of each action of the body being sent (re-sends are subsets).
        let mut orig: Vec<usize> = (0..ids.len()).collect();
        loop {
            let started = std::time::Instant::now();
            let a = self
                .request(
                    Method::Post,
                    BULK_PATH,
                    Some("application/x-ndjson"),
                    Some(body.clone()),
                    &mut out.retries,
                    max,
                )
                .await?;
            tracing::debug!(
                actions = ids.len(),
                bytes = body.len(),
                status = a.status,
                ms = started.elapsed().as_millis() as u64,
                "bulk request answered"
            );
            if !a.ok() {
                let mut e = self.status_error("POST", "/_bulk", &a);
                if a.status == 413 {
                    e = e.with_hint("lower pipeline.batch_bytes or pipeline.batch_docs, or raise http.max_content_length on the engine");
                }
                return Err(e.context(format!("bulk of {} actions", ids.len())));
            }
            let parsed = parse_bulk_response(&a.body, &ids)
                .map_err(|e| e.context(format!("bulk to {}", self.url())))?;
            out.succeeded += parsed.succeeded;
            out.stale += parsed.stale;
            let mut failures = parsed.failures;
            attach_documents(&body, &mut failures)?;
            for f in &mut failures {
                f.position = orig[f.position];
            }
            out.failures.extend(failures);
            if parsed.retry.is_empty() {
                return Ok(out);
            }
            if out.retries >= max {
                return Err(Error::new(
                    ErrorKind::SinkTransient,
                    format!(
                        "bulk to {}: {} of {} actions still rejected after {} retries (first: {})",
                        self.url(),
                        parsed.retry.len(),
                        ids.len(),
                        out.retries,
                        parsed.retry_reason.unwrap_or_default()
                    ),
                )
                .with_hint("the engine is overloaded: lower pipeline.writers or pipeline.batch_docs, or raise pipeline.max_retries"));
            }
            let delay = backoff(self.inner.backoff, out.retries, self.inner.max_backoff);
            tracing::warn!(
                "bulk to {}: {} of {} actions rejected ({}); re-sending them in {:?}",
                self.url(),
                parsed.retry.len(),
                ids.len(),
                parsed.retry_reason.as_deref().unwrap_or(""),
                delay
            );
            metrics::counter!(crate::telemetry::names::ENGINE_RETRIES, "cause" => "items")
                .increment(1);
            tokio::time::sleep(delay).await;
            out.retries += 1;
            (body, ids) = subset(&body, &ids, &parsed.retry)?;
            orig = parsed.retry.iter().map(|&p| orig[p]).collect();
        }
    }

    /// `POST /{index}/_refresh`.
    pub async fn refresh(&self, index: &str) -> Result<()> {
        let path = index_path(index, "/_refresh")?;
        let mut retries = 0;
        let a = self
            .request(
                Method::Post,
                &path,
                None,
                None,
                &mut retries,
                self.inner.max_retries,
            )
            .await?;
        if a.ok() {
            Ok(())
        } else {
            Err(self.status_error("POST", &path, &a))
        }
    }

    /// Sends a JSON request (retrying connection errors, 429 and 5xx like every request) and
    /// returns the status with the parsed body (`null` when empty or not JSON), for the small
    /// administrative requests: searches, counts, aliases, tasks.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        self.json_retrying(method, path, body, self.inner.max_retries)
            .await
    }

    /// [`SearchSink::json`] with its own retry budget (0: one attempt, for requests that must
    /// not run twice).
    pub(super) async fn json_retrying(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        max_retries: u32,
    ) -> Result<(u16, serde_json::Value)> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON serializes")));
        let ct = body.as_ref().map(|_| "application/json");
        let mut retries = 0;
        let a = self
            .request(method, path, ct, body, &mut retries, max_retries)
            .await?;
        let v = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
        Ok((a.status, v))
    }

    /// Like [`SearchSink::json`], but a non-2xx answer is an error naming the request.
    pub async fn json_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (status, v) = self.json(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let a = Answer {
            status,
            body: Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
        };
        Err(self.status_error(method_name(method), path, &a))
    }

    /// `DELETE /{index}`; a missing index is fine.
    pub async fn delete_index(&self, index: &str) -> Result<()> {
        let path = index_path(index, "")?;
        let mut retries = 0;
        let a = self
            .request(
                Method::Delete,
                &path,
                None,
                None,
                &mut retries,
                self.inner.max_retries,
            )
            .await?;
        if a.ok() || a.status == 404 {
            Ok(())
        } else {
            Err(self.status_error("DELETE", &path, &a))
        }
    }

    /// Sends one request, retrying connection errors, 429 and 5xx up to `max_retries` in total
    /// (counted in `retries`, shared across a bulk call). Other statuses are returned as is.
    async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Option<Bytes>,
        retries: &mut u32,
        max_retries: u32,
    ) -> Result<Answer> {
        let body = match body {
            Some(b) if self.inner.gzip => Some(gzip(&b)?),
            other => other,
        };
        loop {
            match self.attempt(method, path, content_type, body.clone()).await {
                Attempt::Done(a) => {
                    self.outage().recovered();
                    return Ok(a);
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::Transient {
                    reason,
                    answer,
                    retry_after,
                } => {
                    let what = format!("{} {}", method_name(method), strip_query(path));
                    if *retries >= max_retries {
                        let after = if *retries > 0 {
                            format!(" after {} retries", *retries)
                        } else {
                            String::new()
                        };
                        return Err(match answer {
                            Some(a) => self
                                .status_error(method_name(method), path, &a)
                                .context(format!("gave up{after}")),
                            None => Error::new(
                                ErrorKind::SinkTransient,
                                format!(
                                    "cannot reach search engine at {} ({what}){after}: {reason}",
                                    self.url()
                                ),
                            ),
                        });
                    }
                    let mut delay = backoff(self.inner.backoff, *retries, self.inner.max_backoff);
                    if let Some(ra) = retry_after {
                        delay = delay.max(ra.min(Duration::from_secs(60)));
                    }
                    let e = Error::new(
                        ErrorKind::SinkTransient,
                        format!("{what} failed ({reason})"),
                    );
                    self.outage().failed(&e, delay);
                    let cause = match &answer {
                        Some(a) if a.status == 429 => "status_429",
                        Some(_) => "status_5xx",
                        None => "connection",
                    };
                    metrics::counter!(crate::telemetry::names::ENGINE_RETRIES, "cause" => cause)
                        .increment(1);
                    tokio::time::sleep(delay).await;
                    *retries += 1;
                }
            }
        }
    }

    /// One attempt: the nodes in turn until one answers (a node that cannot be reached is
    /// rested and the next one tried at once).
    async fn attempt(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Option<Bytes>,
    ) -> Attempt {
        let nodes = self.inner.nodes.order();
        let mut reason = String::new();
        for (i, node) in nodes.iter().enumerate() {
            match self
                .send_to(node, method, path, content_type, body.clone())
                .await
            {
                Ok(resp) => {
                    node.answered();
                    return self.answer(resp).await;
                }
                Err(SendError::Auth(e)) if e.kind == ErrorKind::SinkTransient => {
                    return Attempt::Transient {
                        reason: e.to_string(),
                        answer: None,
                        retry_after: None,
                    }
                }
                Err(SendError::Auth(e)) => return Attempt::Failed(e),
                Err(SendError::Connection(e)) => {
                    node.failed();
                    reason = if nodes.len() > 1 {
                        format!("{}: {e}", node.shown)
                    } else {
                        e
                    };
                    if i + 1 < nodes.len() {
                        tracing::warn!("search node {reason}; trying the next node");
                    }
                }
            }
        }
        Attempt::Transient {
            reason,
            answer: None,
            retry_after: None,
        }
    }

    /// Sends one request to `node`, authenticated (signed over the exact URL and body sent).
    async fn send_to(
        &self,
        node: &Node,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Option<Bytes>,
    ) -> std::result::Result<elasticsearch::http::response::Response, SendError> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if body.is_some() && self.inner.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        // The transport joins the path to the node URL the same way.
        let url = node
            .url
            .join(path.trim_start_matches('/'))
            .map_err(|e| SendError::Connection(format!("bad request path {path}: {e}")))?;
        let bytes = body.as_deref().unwrap_or_default();
        self.inner
            .auth
            .apply(&mut headers, method_name(method), url.as_str(), bytes)
            .await
            .map_err(SendError::Auth)?;
        node.transport
            .send(method, path, headers, None::<&()>, body, None)
            .await
            .map_err(|e| SendError::Connection(error_chain(&e)))
    }

    /// Reads an answer; 429 and 5xx are transient.
    async fn answer(&self, resp: elasticsearch::http::response::Response) -> Attempt {
        let status = resp.status_code().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Transient {
                    reason: format!("reading the answer failed: {}", error_chain(&e)),
                    answer: None,
                    retry_after: None,
                }
            }
        };
        let a = Answer { status, body };
        if status == 429 || status >= 500 {
            Attempt::Transient {
                reason: format!("{status} {}", error_body_text(&a.body)),
                answer: Some(a),
                retry_after,
            }
        } else {
            Attempt::Done(a)
        }
    }

    /// An error for a non-2xx answer: transient for 429/5xx, rejected otherwise, naming URL,
    /// request and the engine's reason.
    fn status_error(&self, method: &str, path: &str, a: &Answer) -> Error {
        let kind = if a.status == 429 || a.status >= 500 {
            ErrorKind::SinkTransient
        } else {
            ErrorKind::SinkRejected
        };
        let e = Error::new(
            kind,
            format!(
                "search engine at {} answered {} to {method} {}: {}",
                self.url(),
                a.status,
                strip_query(path),
                error_body_text(&a.body)
            ),
        );
        match a.status {
            401 | 403 if matches!(self.inner.auth, Auth::Aws(_)) => e.with_hint(
                "requests are signed with AWS SigV4: check the AWS credentials the process gets, search.aws_region (ELASTICSEARCH_AWS_REGION), search.aws_service (es or aoss) and the domain's access policy",
            ),
            401 | 403 => e.with_hint(
                "check search.username/search.password, search.api_key or search.bearer_token (ELASTICSEARCH_USER, ELASTICSEARCH_PASSWORD, ELASTICSEARCH_API_KEY, ELASTICSEARCH_BEARER_AUTH)",
            ),
            _ => e,
        }
    }
}

/// Why a request did not get an answer.
enum SendError {
    /// The node could not be reached (or the connection broke): another node may answer.
    Connection(String),
    /// The request could not be authenticated (no AWS credentials): no node would take it.
    Auth(Error),
}

/// Gzips a request body (PGSync's ELASTICSEARCH_HTTP_COMPRESS).
fn gzip(body: &[u8]) -> Result<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body)
        .and_then(|_| enc.finish())
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("gzip of a request body: {e}")))
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        Method::Head => "HEAD",
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// `base * 2^n`, capped at `max` (`pipeline.retry_max_backoff_ms`).
fn backoff(base: Duration, n: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.min(16)).min(max)
}

/// `/{index}{suffix}` after checking the name cannot address anything else: no wildcards, commas
/// or path characters (a `*` would make `delete_index` delete every index).
pub(super) fn index_path(index: &str, suffix: &str) -> Result<String> {
    const FORBIDDEN: &[char] = &[
        '*', '?', ',', '/', '\\', '"', '<', '>', '|', ' ', '#', ':', '%',
    ];
    let bad = index.is_empty()
        || index == "."
        || index == ".."
        || index.starts_with(['-', '_', '+'])
        || index.contains(FORBIDDEN)
        || index.chars().any(|c| c.is_control() || c.is_uppercase())
        || index.len() > 255;
    if bad {
        return Err(Error::new(
            ErrorKind::SinkRejected,
            format!("invalid index name {index:?}: index names are lowercase, at most 255 bytes, and have no wildcards, commas, spaces or path characters"),
        ));
    }
    Ok(format!("/{index}{suffix}"))
}

/// Fills each failure's `document` with the `_source` line of its action in `body`, so a
/// rejected document can be recorded as it was sent.
fn attach_documents(body: &Bytes, failures: &mut [super::ItemFailure]) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let ranges = split_actions(body)?;
    for f in failures {
        let Some(r) = ranges.get(f.position) else {
            continue;
        };
        let action = &body[r.clone()];
        let mut lines = action.splitn(2, |&b| b == b'\n');
        let _meta = lines.next();
        f.document = lines
            .next()
            .map(|d| String::from_utf8_lossy(d.trim_ascii()).into_owned())
            .filter(|d| !d.is_empty());
    }
    Ok(())
}

/// A new body holding only the actions at `positions`, with their ids.
fn subset(body: &Bytes, ids: &[String], positions: &[usize]) -> Result<(Bytes, Vec<String>)> {
    let ranges = split_actions(body)?;
    if ranges.len() != ids.len() {
        return Err(Error::internal(format!(
            "bulk batch has {} actions but {} ids",
            ranges.len(),
            ids.len()
        )));
    }
    let mut out = Vec::new();
    let mut new_ids = Vec::with_capacity(positions.len());
    for &p in positions {
        let action = &body[ranges[p].clone()];
        out.extend_from_slice(action);
        if !action.ends_with(b"\n") {
            out.push(b'\n');
        }
        new_ids.push(ids[p].clone());
    }
    Ok((Bytes::from(out), new_ids))
}

/// An error and its sources, `a: b: c`, without repeats (reqwest's top-level message alone says
/// little: "error sending request").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    crate::config::mask_url(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn sink(url: &str) -> SearchSink {
        let search = SearchConfig {
            url: url.into(),
            ..SearchConfig::default()
        };
        SearchSink::new(&search, &PipelineConfig::default()).unwrap()
    }

    #[test]
    fn url_credentials_never_shown() {
        let s = sink("http://elastic:s3cret@localhost:9200");
        assert_eq!(s.url(), "http://localhost:9200");
        let s = sink("https://es.example/prefix");
        assert_eq!(s.url(), "https://es.example/prefix");
        let search = SearchConfig {
            url: "ftp://u:s3cret@x".into(),
            ..SearchConfig::default()
        };
        let e = SearchSink::new(&search, &PipelineConfig::default())
            .err()
            .unwrap();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn api_key_and_ca_cert_errors() {
        let search = SearchConfig {
            api_key: Some(Secret::new("id:key")),
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..SearchConfig::default()
        };
        let e = SearchSink::new(&search, &PipelineConfig::default())
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn index_names_are_checked() {
        assert_eq!(index_path("books", "/_refresh").unwrap(), "/books/_refresh");
        assert_eq!(index_path("bücher-2024.v1", "").unwrap(), "/bücher-2024.v1");
        for bad in [
            "", "*", "a,b", "a/b", "Books", "_x", "-x", "a b", "..", "a?",
        ] {
            assert!(index_path(bad, "").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(200);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(b, 0, max), Duration::from_millis(200));
        assert_eq!(backoff(b, 3, max), Duration::from_millis(1600));
        assert_eq!(backoff(b, 40, max), max);
    }

    #[test]
    fn subset_keeps_addressed_actions() {
        let mut buf = Vec::new();
        use super::super::{push_delete_action, push_index_action, Target};
        push_index_action(&mut buf, Target::new("i", "a"), None, b"{}");
        push_delete_action(&mut buf, Target::new("i", "b"));
        push_index_action(
            &mut buf,
            Target::new("i", "c").routing(Some("r")),
            None,
            b"{\"x\":1}",
        );
        let ids = vec!["a".to_string(), "b".into(), "c".into()];
        let (body, new_ids) = subset(&Bytes::from(buf), &ids, &[1, 2]).unwrap();
        assert_eq!(new_ids, vec!["b", "c"]);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\"delete\":{\"_index\":\"i\",\"_id\":\"b\"}}\n\
             {\"index\":{\"_index\":\"i\",\"_id\":\"c\",\"routing\":\"r\"}}\n{\"x\":1}\n"
        );
        assert!(subset(&body, &ids, &[0]).is_err());
    }

    #[tokio::test]
    async fn unreachable_engine_names_masked_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = sink(&format!("http://elastic:s3cret@127.0.0.1:{port}"));
        let e = s.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::SinkTransient);
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "cannot reach search engine at http://127.0.0.1:{port}"
            )),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}
