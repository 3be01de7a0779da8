//! Search-engine authentication and transport: AWS SigV4 against AWS's published test vectors
//! and end to end through a verifying proxy (built here on aws-sigv4, the crate AWS itself
//! publishes: it recomputes each signature from the request it received and refuses mismatches
//! with 403, as Amazon OpenSearch Service does), credentials that expire within seconds, a bearer
//! token with a client certificate over TLS, and fail-over between two nodes.
//!
//! osmem-server stands in for the engine behind the proxy; the proxy is the AWS (or TLS) front
//! the real services put before the engine.

mod common;
mod harness;

use aws_credential_types::Credentials;
use bytes::Bytes;
use common::daemon::Daemon;
use common::{LibraryBed, Workdir};
use harness::{Osmem, TestCa};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pgsync_rs::config::{PipelineConfig, SearchConfig, Secret};
use pgsync_rs::sink::aws::{sign_request, SigningKey};
use pgsync_rs::sink::SearchSink;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// AWS's signing test vectors.

/// One vector: a request and what signing it must give.
struct Vector {
    name: String,
    context: Value,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    expected_authorization: String,
}

fn vector(dir: &Path) -> Vector {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let context: Value = serde_json::from_str(&read("context.json")).unwrap();
    let request = read("request.txt");
    let (head, body) = request.split_once("\n\n").unwrap_or((&request, ""));
    let mut lines = head.lines();
    let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let signed = read("header-signed-request.txt");
    let expected_authorization = signed
        .lines()
        .find_map(|l| l.strip_prefix("Authorization:"))
        .unwrap()
        .to_owned();
    Vector {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        context,
        method: first[0].to_owned(),
        path: first[1..first.len() - 1].join(" "),
        headers,
        body: body.as_bytes().to_vec(),
        expected_authorization,
    }
}

#[test]
fn the_signer_reproduces_aws_published_sigv4_test_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigv4");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "vectors missing under {}", root.display());
    for dir in dirs {
        let v = vector(&dir);
        let c = &v.context;
        let creds = Credentials::new(
            c["credentials"]["access_key_id"].as_str().unwrap(),
            c["credentials"]["secret_access_key"].as_str().unwrap(),
            c["credentials"]["token"].as_str().map(str::to_owned),
            None,
            "vector",
        );
        let time = chrono::DateTime::parse_from_rfc3339(c["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let time = UNIX_EPOCH + Duration::from_secs(time as u64);
        let host = v
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .unwrap()
            .1
            .clone();
        let headers: Vec<(&str, &str)> = v
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = sign_request(
            &SigningKey {
                credentials: &creds,
                region: c["region"].as_str().unwrap(),
                service: c["service"].as_str().unwrap(),
            },
            &v.method,
            &format!("https://{host}{}", v.path),
            &headers,
            &v.body,
            time,
            c["sign_body"].as_bool().unwrap_or(false),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let auth = out
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            auth,
            Some(v.expected_authorization.as_str()),
            "vector {}",
            v.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The verifying proxy.

/// What the proxy demands of each request.
enum Check {
    /// A SigV4 signature by a key it issued and that has not expired.
    SigV4 { service: &'static str },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

/// Keys the proxy accepts: access key id -> (secret, session token, expiry).
type Keys = Arc<Mutex<HashMap<String, (String, Option<String>, SystemTime)>>>;

struct ProxyState {
    upstream: String,
    check: Check,
    keys: Keys,
    accepted: AtomicUsize,
    refused: Mutex<Vec<String>>,
    client: reqwest::Client,
}

/// A proxy before one osmem (its own runtime on a background thread).
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
}

/// Serves connections on a new port with `conn`, on a thread of its own (its own runtime, so
/// that sync and async tests can use it); returns the port.
fn serve<F, Fut>(conn: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(conn(stream));
                }
            }
        });
    });
    port
}

impl Proxy {
    fn start(
        upstream: &str,
        check: Check,
        keys: Keys,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            check,
            keys,
            accepted: AtomicUsize::new(0),
            refused: Mutex::new(vec![]),
            client: reqwest::Client::new(),
        });
        let st = state.clone();
        let port = serve(move |stream| {
            let st = st.clone();
            let tls = tls.clone();
            async move {
                let svc = service_fn(move |req| handle(st.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acc) => {
                        if let Ok(s) = acc.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            }
        });
        Proxy { port, state }
    }

    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    fn refused(&self) -> Vec<String> {
        self.state.refused.lock().unwrap().clone()
    }
}

async fn handle(
    st: Arc<ProxyState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let verdict = match &st.check {
        Check::SigV4 { service } => verify_sigv4(&st.keys, service, &parts, &body),
        Check::Bearer(token) => {
            let want = format!("Bearer {token}");
            match parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
            {
                Some(v) if v == want => Ok(()),
                other => Err(format!("bad bearer token {other:?}")),
            }
        }
    };
    if let Err(why) = verdict {
        st.refused.lock().unwrap().push(why.clone());
        let status = if matches!(st.check, Check::Bearer(_)) {
            401
        } else {
            403
        };
        let msg = json!({"error": {"type": "security_exception", "reason": why}, "status": status});
        return Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(msg.to_string())))
            .unwrap());
    }
    st.accepted.fetch_add(1, Ordering::SeqCst);
    Ok(forward(&st, parts, body).await)
}

/// Forwards to osmem (the body as received: gzip and all).
async fn forward(
    st: &ProxyState,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> hyper::Response<Full<Bytes>> {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut r = st.client.request(method, format!("{}{pq}", st.upstream));
    for h in ["content-type", "content-encoding", "accept"] {
        if let Some(v) = parts.headers.get(h).and_then(|v| v.to_str().ok()) {
            r = r.header(h, v);
        }
    }
    match r.body(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let b = resp.bytes().await.unwrap_or_default();
            hyper::Response::builder()
                .status(status)
                .header("content-type", ct)
                .body(Full::new(b))
                .unwrap()
        }
        Err(e) => hyper::Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(e.to_string())))
            .unwrap(),
    }
}

/// Recomputes the request's signature with aws-sigv4 from what was received (method, host, path
/// and query, the signed headers, the body) and the secret of the key it names.
fn verify_sigv4(
    keys: &Keys,
    service: &str,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<(), String> {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {n} header"))
    };
    let auth = header("authorization")?;
    let field = |name: &str| {
        auth.split([' ', ','])
            .find_map(|p| p.strip_prefix(name))
            .map(str::to_owned)
            .ok_or_else(|| format!("authorization has no {name}"))
    };
    let credential = field("Credential=")?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[3] != service {
        return Err(format!(
            "credential scope {credential} is not for {service}"
        ));
    }
    let (secret, token, expiry) = keys
        .lock()
        .unwrap()
        .get(scope[0])
        .cloned()
        .ok_or_else(|| format!("unknown access key {}", scope[0]))?;
    if SystemTime::now() >= expiry {
        return Err(format!("access key {} has expired", scope[0]));
    }
    if token.is_some() && header("x-amz-security-token").ok() != token {
        return Err("wrong or missing x-amz-security-token".into());
    }
    let signed = field("SignedHeaders=")?;
    let amz_date = header("x-amz-date")?;
    let t = chrono::NaiveDateTime::parse_from_str(&amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|e| format!("x-amz-date {amz_date}: {e}"))?
        .and_utc()
        .timestamp();
    let mut values = vec![];
    for h in signed.split(';') {
        if !matches!(
            h,
            "x-amz-date" | "x-amz-content-sha256" | "x-amz-security-token"
        ) {
            values.push((h.to_owned(), header(h)?));
        }
    }
    let url = format!(
        "http://{}{}",
        header("host")?,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let creds = Credentials::new(scope[0], secret, token, None, "proxy");
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    if signed.split(';').any(|h| h == "x-amz-content-sha256") {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(scope[2])
        .name(service)
        .time(UNIX_EPOCH + Duration::from_secs(t as u64))
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let request = SignableRequest::new(
        parts.method.as_str(),
        url,
        values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let want = instructions
        .headers()
        .find(|(k, _)| *k == "authorization")
        .map(|(_, v)| v.to_owned());
    if want.as_deref() != Some(auth.as_str()) {
        return Err(format!("signature mismatch: got {auth}, expected {want:?}"));
    }
    Ok(())
}

fn static_keys(id: &str, secret: &str, token: Option<&str>) -> Keys {
    let mut m = HashMap::new();
    m.insert(
        id.to_owned(),
        (
            secret.to_owned(),
            token.map(str::to_owned),
            SystemTime::now() + Duration::from_secs(3600),
        ),
    );
    Arc::new(Mutex::new(m))
}

fn work_for(bed: &LibraryBed, search_url: &str) -> Workdir {
    let cfg = common::PgsyncConfig::new(bed.pg.port(), search_url);
    Workdir::new(&cfg, &common::library_schema(&bed.db))
}

/// Initial sync, then one streamed change, through the proxy.
fn sync_and_stream(bed: &LibraryBed, os: &Osmem, daemon: &mut Daemon, title: &str) {
    harness::wait_until_blocking(Duration::from_secs(90), "the daemon streams book", || {
        daemon.assert_alive("initial sync through the proxy");
        daemon.streams("book")
    });
    common::assert_documents(
        "book",
        &os.all_docs("book"),
        &common::expected_documents()["book"],
    );
    bed.pg.psql(
        &bed.db,
        // A synchronous commit: the harness's asynchronous commits may sit in the WAL
        // buffers, unsent, for as long as the WAL writer sleeps.
        &format!("SET synchronous_commit = on; UPDATE book SET title = '{title}' WHERE id = 4"),
    );
    harness::wait_until_blocking(
        Duration::from_secs(60),
        "the change reaches the index",
        || {
            daemon.assert_alive("streaming through the proxy");
            os.refresh("book");
            os.doc("book", "4")
                .is_some_and(|d| d["book_title"] == title)
        },
    );
}

const AKID: &str = "AKIDPGSYNCTEST";
const SECRET: &str = "pgsync/test/secret/key/EXAMPLE";

#[test]
fn a_sigv4_signed_daemon_syncs_and_streams_through_a_verifying_proxy() {
    signed_daemon_syncs_and_streams(
        "sigv4",
        &[
            ("AWS_ACCESS_KEY_ID", AKID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
            ("AWS_SESSION_TOKEN", "session-token-1".to_owned()),
        ],
    );
}

/// The shared credentials file and a named profile (what `aws configure --profile` writes), and
/// no key in the environment: found by the same standard chain.
#[test]
fn a_daemon_signs_with_a_named_profile_of_the_shared_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!("[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n\n[pgsync]\naws_access_key_id = {AKID}\naws_secret_access_key = {SECRET}\naws_session_token = session-token-1\n"),
    )
    .unwrap();
    signed_daemon_syncs_and_streams(
        "sigv4_profile",
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", file.display().to_string()),
            (
                "AWS_CONFIG_FILE",
                dir.path().join("config").display().to_string(),
            ),
            ("AWS_PROFILE", "pgsync".to_owned()),
        ],
    );
}

/// A daemon signing for `es` with the credentials `env` leads the standard chain to syncs and
/// streams through the verifying proxy, which refuses nothing.
fn signed_daemon_syncs_and_streams(name: &str, env: &[(&str, String)]) {
    let bed = LibraryBed::new(name);
    let os = &bed.os;
    let keys = static_keys(AKID, SECRET, Some("session-token-1"));
    let proxy = Proxy::start(os.url(), Check::SigV4 { service: "es" }, keys, None);
    let work = work_for(&bed, &proxy.url("http", "127.0.0.1"));
    let mut vars: Vec<(&str, &str)> = vec![
        ("ELASTICSEARCH_AWS_HOSTED", "true"),
        ("ELASTICSEARCH_AWS_REGION", "eu-west-1"),
        ("ELASTICSEARCH_HTTP_COMPRESS", "true"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut daemon = Daemon::start_with_env(&work, &format!("{name}.log"), &vars);
    sync_and_stream(&bed, os, &mut daemon, "Signed and streamed");
    assert!(proxy.accepted() > 3, "the proxy saw the daemon's requests");
    assert_eq!(proxy.refused(), Vec::<String>::new(), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifying_proxy_refuses_a_wrong_secret_or_service() {
    let os = Osmem::start();
    let keys = static_keys(AKID, SECRET, None);
    let proxy = Proxy::start(os.url(), Check::SigV4 { service: "aoss" }, keys, None);
    let url = format!("{}/", proxy.url("http", "127.0.0.1"));
    let sign = |secret: &str, service: &str| {
        let creds = Credentials::new(AKID, secret, None, None, "t");
        let key = SigningKey {
            credentials: &creds,
            region: "us-east-1",
            service,
        };
        sign_request(&key, "GET", &url, &[], b"", SystemTime::now(), true).unwrap()
    };
    let client = reqwest::Client::new();
    let send = |headers: Vec<(String, String)>| {
        let mut r = client.get(&url);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    assert_eq!(send(sign(SECRET, "aoss")).await.unwrap().status(), 200);
    assert_eq!(
        send(sign("wrong-secret", "aoss")).await.unwrap().status(),
        403
    );
    assert_eq!(send(sign(SECRET, "es")).await.unwrap().status(), 403);
    assert!(
        proxy.refused()[0].contains("signature mismatch"),
        "{:?}",
        proxy.refused()
    );
}

// ---------------------------------------------------------------------------------------------
// Credentials that expire within seconds.

/// A container-credentials endpoint (what ECS and EKS Pod Identity serve, reached through
/// AWS_CONTAINER_CREDENTIALS_FULL_URI): each call hands out a new key valid `ttl`, and the proxy
/// accepts each key until it expires.
struct CredentialEndpoint {
    port: u16,
    issued: Arc<AtomicUsize>,
}

impl CredentialEndpoint {
    fn start(keys: Keys, ttl: Duration) -> CredentialEndpoint {
        let issued = Arc::new(AtomicUsize::new(0));
        let n = issued.clone();
        let port = serve(move |stream| {
            let (keys, n) = (keys.clone(), n.clone());
            async move {
                let svc = service_fn(move |_req| {
                    let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                    let id = format!("ASIAROTATING{i:04}");
                    let secret = format!("rotating-secret-{i}");
                    let token = format!("rotating-token-{i}");
                    let expiry = SystemTime::now() + ttl;
                    keys.lock()
                        .unwrap()
                        .insert(id.clone(), (secret.clone(), Some(token.clone()), expiry));
                    let exp = chrono::DateTime::<chrono::Utc>::from(expiry)
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string();
                    let body = json!({
                        "AccessKeyId": id, "SecretAccessKey": secret,
                        "Token": token, "Expiration": exp,
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body.to_string()),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        CredentialEndpoint { port, issued }
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_expiring_within_seconds_are_refreshed_before_they_expire() {
    let os = Osmem::start();
    os.put_json("/books", &json!({}));
    let keys: Keys = Arc::new(Mutex::new(HashMap::new()));
    // Valid 4 s: the expiry format has whole seconds, so a key lives 3-4 s.
    let creds = CredentialEndpoint::start(keys.clone(), Duration::from_secs(4));
    let proxy = Proxy::start(os.url(), Check::SigV4 { service: "aoss" }, keys, None);
    // The default chain finds the container endpoint (ECS, EKS Pod Identity). Only this test
    // of the binary signs in-process; the daemons of the others get their own environment.
    std::env::set_var(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{}/v2/credentials", creds.port),
    );
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let s = sink(SearchConfig {
        url: proxy.url("http", "127.0.0.1"),
        aws_service: Some("aoss".into()),
        aws_region: Some("us-east-1".into()),
        ..SearchConfig::default()
    });
    // Paced writes until the sink went through several keys: one that kept its first key
    // would be refused (403) once it expired.
    let started = std::time::Instant::now();
    let mut written = 0;
    while creds.issued() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new credentials fetched"
        );
        written += 1;
        s.bulk(one_doc(&format!("doc-{written}")))
            .await
            .unwrap_or_else(|e| panic!("write {written}: {e}; refused: {:?}", proxy.refused()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(proxy.refused(), Vec::<String>::new());
    os.refresh("books");
    assert_eq!(os.count("books"), written);
    // Refreshed before expiry, not per request: far fewer fetches than requests.
    assert!(
        creds.issued() * 3 < written as usize,
        "{} fetches for {written} writes",
        creds.issued()
    );
}

/// The same through a daemon: initial sync and streamed changes with keys valid 4 s.
#[test]
fn a_daemon_streams_with_credentials_expiring_within_seconds() {
    let bed = LibraryBed::new("sigv4_refresh");
    let os = &bed.os;
    let keys: Keys = Arc::new(Mutex::new(HashMap::new()));
    // Valid 4 s: the expiry format has whole seconds, so a key lives 3-4 s.
    let creds = CredentialEndpoint::start(keys.clone(), Duration::from_secs(4));
    let proxy = Proxy::start(os.url(), Check::SigV4 { service: "aoss" }, keys, None);
    let work = work_for(&bed, &proxy.url("http", "127.0.0.1"));
    let uri = format!("http://127.0.0.1:{}/v2/credentials", creds.port);
    let mut daemon = Daemon::start_with_env(
        &work,
        "refresh.log",
        &[
            ("OPENSEARCH_AWS_SERVERLESS", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            (
                "PGSYNC_LOG__LEVEL",
                "info,pgsync_rs=debug,reqwest=debug,hyper_util=debug",
            ),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    sync_and_stream(&bed, os, &mut daemon, "First key");
    // Keep changing until the daemon has gone through several keys: a client that kept its
    // first key would be refused once it expired, and the change would never arrive.
    let first = creds.issued();
    let mut round = 0;
    while creds.issued() < first + 2 {
        round += 1;
        assert!(round < 40, "no new credentials fetched:\n{}", daemon.log());
        let title = format!("Round {round}");
        bed.pg.psql(
            &bed.db,
            // A synchronous commit: the harness's asynchronous commits may sit in the WAL
            // buffers, unsent, for as long as the WAL writer sleeps.
            &format!("SET synchronous_commit = on; UPDATE book SET title = '{title}' WHERE id = 4"),
        );
        let arrived = common::daemon::poll(Duration::from_secs(30), || {
            daemon.check_alive()?;
            let refused = proxy.refused();
            if !refused.is_empty() {
                return Err(format!("refused: {refused:?}"));
            }
            os.refresh("book");
            Ok(os
                .doc("book", "4")
                .is_some_and(|d| d["book_title"] == title))
        });
        assert_eq!(
            arrived,
            Ok(true),
            "change {round} (proxy accepted {}; row {:?}; wal {:?}):\n{}",
            proxy.accepted(),
            bed.pg.psql(&bed.db, "SELECT title FROM book WHERE id = 4"),
            bed.pg.psql(&bed.db, "SELECT pg_current_wal_lsn()::text || ' ' || string_agg(slot_name || '=' || confirmed_flush_lsn::text, ',') FROM pg_replication_slots"),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(proxy.refused(), Vec::<String>::new(), "{}", daemon.log());
}

// ---------------------------------------------------------------------------------------------
// Bearer token and client certificate over TLS.

fn tls_acceptor(ca: &TestCa) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let server = ca.server("search", &["localhost"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca.ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(&server.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&server.key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn sink(search: SearchConfig) -> SearchSink {
    let pipeline = PipelineConfig {
        max_retries: 0,
        ..PipelineConfig::default()
    };
    SearchSink::new(&search, &pipeline).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_and_a_client_certificate_reach_a_tls_engine() {
    let os = Osmem::start();
    let ca = TestCa::new("search-ca");
    let client = ca.client("client", "pgsync");
    let proxy = Proxy::start(
        os.url(),
        Check::Bearer("t0k3n".into()),
        Arc::new(Mutex::new(HashMap::new())),
        Some(tls_acceptor(&ca)),
    );
    let base = SearchConfig {
        url: proxy.url("https", "localhost"),
        ca_cert: Some(ca.ca_file.clone()),
        client_cert: Some(client.cert.clone()),
        client_key: Some(client.key.clone()),
        bearer_token: Some(Secret::new("t0k3n")),
        ..SearchConfig::default()
    };
    let s = sink(base.clone());
    s.check().await.unwrap();
    s.ensure_index("tls", &json!({}), false).await.unwrap();
    assert!(os.index_exists("tls"));

    // A wrong token is refused with the engine's 401 and a hint naming the settings.
    let e = sink(SearchConfig {
        bearer_token: Some(Secret::new("wrong")),
        ..base.clone()
    })
    .check()
    .await
    .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    // Without the client certificate the TLS handshake fails.
    let e = sink(SearchConfig {
        client_cert: None,
        client_key: None,
        ..base.clone()
    })
    .check()
    .await
    .unwrap_err();
    assert!(e.to_string().contains("cannot reach search engine"), "{e}");
    assert_eq!(proxy.refused().len(), 1, "{:?}", proxy.refused());
}

// ---------------------------------------------------------------------------------------------
// Fail-over.

fn one_doc(id: &str) -> pgsync_rs::sink::BulkBatch {
    let mut body = vec![];
    pgsync_rs::sink::push_index_action(
        &mut body,
        pgsync_rs::sink::Target::new("books", id),
        None,
        format!("{{\"n\":\"{id}\"}}").as_bytes(),
    );
    pgsync_rs::sink::BulkBatch::new(body, vec![id.to_owned()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_to_the_other_node_when_one_is_killed() {
    let mut a = Osmem::start();
    let b = Osmem::start();
    for os in [&a, &b] {
        os.put_json("/books", &json!({}));
    }
    let s = sink(SearchConfig {
        url: format!("{},{}", a.url(), b.url()),
        ..SearchConfig::default()
    });
    // Round-robin: both nodes take writes.
    for i in 0..4 {
        let out = s.bulk(one_doc(&format!("before-{i}"))).await.unwrap();
        assert_eq!(out.failures.len(), 0);
    }
    a.refresh("books");
    b.refresh("books");
    assert_eq!((a.count("books"), b.count("books")), (2, 2));

    a.kill();
    // No retry budget (max_retries = 0): each write succeeds within its one attempt by
    // trying the other node.
    for i in 0..6 {
        s.bulk(one_doc(&format!("after-{i}")))
            .await
            .unwrap_or_else(|e| panic!("write {i} after the kill: {e}"));
    }
    b.refresh("books");
    assert_eq!(b.count("books"), 2 + 6);
}

/// Not about authentication: what made the daemon test above flaky on a loaded machine, with no
/// proxy and no signing. A change decoded before its committing session had made it visible was
/// read without it (the document kept the previous title while the slot moved past it); the
/// daemon now waits until a window's transactions are visible (see `sql::visibility`, and the
/// deterministic `streaming` test that holds a commit on a synchronous standby).
#[test]
fn repeated_changes_a_second_apart_all_reach_the_index() {
    let bed = LibraryBed::new("plain_rounds");
    let os = &bed.os;
    let work = work_for(&bed, os.url());
    let mut daemon = Daemon::start_with_env(
        &work,
        "plain.log",
        &[("PGSYNC_LOG__LEVEL", "info,pgsync_rs=debug")],
    );
    sync_and_stream(&bed, os, &mut daemon, "First");
    for round in 1..15 {
        let title = format!("Round {round}");
        bed.pg.psql(
            &bed.db,
            &format!("UPDATE book SET title = '{title}' WHERE id = 4"),
        );
        let arrived = common::daemon::poll(Duration::from_secs(20), || {
            daemon.check_alive()?;
            os.refresh("book");
            Ok(os
                .doc("book", "4")
                .is_some_and(|d| d["book_title"] == title))
        });
        assert_eq!(arrived, Ok(true), "round {round}: {:?} wal {}\n{}", os.doc("book", "4").map(|d| d["book_title"].clone()),
            bed.pg.psql(&bed.db, "SELECT pg_current_wal_lsn()::text || ' insert ' || pg_current_wal_insert_lsn()::text || ' flush ' || pg_current_wal_flush_lsn()::text || ' ' || string_agg(slot_name || '=' || confirmed_flush_lsn::text, ',') FROM pg_replication_slots"), daemon.log());
        std::thread::sleep(Duration::from_millis(700));
    }
}
