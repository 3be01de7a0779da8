//! How requests reach the search engine: one HTTP transport per node URL (several nodes of one
//! cluster fail over to each other), the TLS identity (client certificate), and the
//! authentication put on each request (basic, API key, bearer token, or an AWS SigV4 signature
//! over the exact URL and body sent).

use super::aws::AwsSigner;
use crate::config::SearchConfig;
use crate::{Error, Result};
use elasticsearch::auth::{ClientCertificate, Credentials};
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::Url;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a node that could not be reached is passed over.
const MAX_DEAD: Duration = Duration::from_secs(30);

/// One node: its base URL (ending in `/`, no credentials) and its transport.
pub(super) struct Node {
    /// Base URL requests are joined to.
    pub url: Url,
    /// The URL for messages.
    pub shown: String,
    /// The HTTP client bound to this node.
    pub transport: Transport,
    dead_until: Mutex<Option<Instant>>,
    failures: AtomicU32,
}

/// The nodes of one cluster, tried round-robin; a node that could not be reached is passed over
/// for a while (1 s, doubling per failure up to 30 s) while others answer.
pub(super) struct Nodes {
    nodes: Vec<Node>,
    next: AtomicUsize,
}

impl Nodes {
    /// The nodes to try for one request, in order: the live ones round-robin, then the ones
    /// resting (soonest back first), so that a request still goes out when every node failed.
    pub fn order(&self) -> Vec<&Node> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let n = self.nodes.len();
        let mut live = vec![];
        let mut resting = vec![];
        for i in 0..n {
            let node = &self.nodes[(start + i) % n];
            match node.resting_until(now) {
                Some(t) => resting.push((t, node)),
                None => live.push(node),
            }
        }
        resting.sort_by_key(|(t, _)| *t);
        live.extend(resting.into_iter().map(|(_, n)| n));
        live
    }
}

impl Node {
    fn resting_until(&self, now: Instant) -> Option<Instant> {
        let d = self.dead_until.lock().unwrap_or_else(|e| e.into_inner());
        d.filter(|t| *t > now)
    }

    /// The node could not be reached: rest it.
    pub fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(5);
        let rest = Duration::from_secs(1 << n).min(MAX_DEAD);
        *self.dead_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + rest);
    }

    /// The node answered.
    pub fn answered(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.dead_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// What authenticates each request.
pub(super) enum Auth {
    /// Nothing (or only the client certificate, which is in the TLS layer).
    None,
    /// A fixed `Authorization` value: basic, API key or bearer token.
    Header(HeaderValue),
    /// An AWS SigV4 signature per request.
    Aws(AwsSigner),
}

impl Auth {
    /// Adds the authentication of a request to `method url` with `body` (as sent) to `headers`.
    pub async fn apply(
        &self,
        headers: &mut HeaderMap,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> Result<()> {
        match self {
            Auth::None => {}
            Auth::Header(v) => {
                headers.insert(AUTHORIZATION, v.clone());
            }
            Auth::Aws(signer) => {
                for (k, v) in signer.headers(method, url, body).await? {
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| Error::internal(format!("SigV4 header {k}: {e}")))?;
                    let mut value = HeaderValue::from_str(&v)
                        .map_err(|e| Error::internal(format!("SigV4 header {k}: {e}")))?;
                    value.set_sensitive(k == "authorization" || k == "x-amz-security-token");
                    headers.insert(name, value);
                }
            }
        }
        Ok(())
    }
}

/// A user name and password found in a URL.
pub(super) type UserPassword = (String, String);

/// The node URLs of `[search]`: the Elastic Cloud id's endpoint when `cloud_id` is set, else
/// each comma-separated `url`, credentials removed (they are moved to basic auth at load).
pub(super) fn node_urls(search: &SearchConfig) -> Result<Vec<(Url, Option<UserPassword>)>> {
    let text = match &search.cloud_id {
        Some(id) => crate::config::cloud_id::endpoint(id)?,
        None => search.url.clone(),
    };
    let mut out = vec![];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let shown = crate::config::mask_url(part);
        let mut url = Url::parse(part).map_err(|e| {
            Error::config(format!("search.url = {shown:?} is not a valid URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::config(format!(
                "search.url = {shown:?} must start with http:// or https://"
            )));
        }
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let creds = match (user, url.password().map(decode)) {
            (None, None) => None,
            (u, p) => Some((u.unwrap_or_default(), p.unwrap_or_default())),
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        out.push((url, creds));
    }
    if out.is_empty() {
        return Err(Error::config("search.url is empty: name the engine's URL"));
    }
    Ok(out)
}

/// The nodes of `[search]`, each with the TLS settings (CA, verification, client certificate),
/// timeout and no compression (bodies are gzipped before signing, see the sink).
pub(super) fn nodes(search: &SearchConfig, urls: Vec<Url>) -> Result<Nodes> {
    let identity = client_identity(search)?;
    let mut nodes = vec![];
    for url in urls {
        let shown = url.as_str().trim_end_matches('/').to_owned();
        let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone()))
            .enable_meta_header(false);
        if search.timeout_secs > 0 {
            b = b.timeout(Duration::from_secs(search.timeout_secs));
        }
        // Not `Clone`: read per node.
        if let Some(v) = cert_validation(search)? {
            b = b.cert_validation(v);
        }
        if let Some(pem) = &identity {
            b = b.auth(Credentials::Certificate(ClientCertificate::Pem(
                pem.clone(),
            )));
        }
        let transport = b.build().map_err(|e| {
            Error::config(format!("cannot set up the search client for {shown}: {e}"))
        })?;
        nodes.push(Node {
            url,
            shown,
            transport,
            dead_until: Mutex::new(None),
            failures: AtomicU32::new(0),
        });
    }
    Ok(Nodes {
        nodes,
        next: AtomicUsize::new(0),
    })
}

fn cert_validation(search: &SearchConfig) -> Result<Option<CertificateValidation>> {
    if search.insecure_skip_verify {
        return Ok(Some(CertificateValidation::None));
    }
    let Some(ca) = &search.ca_cert else {
        return Ok(None);
    };
    let pem = std::fs::read(ca)
        .map_err(|e| Error::config(format!("cannot read search.ca_cert {}: {e}", ca.display())))?;
    let cert = Certificate::from_pem(&pem).map_err(|e| {
        Error::config(format!(
            "search.ca_cert {} is not a PEM certificate: {e}",
            ca.display()
        ))
    })?;
    Ok(Some(CertificateValidation::Full(cert)))
}

/// The client certificate and key as one PEM (what the HTTP client takes): `client_cert` alone
/// may already hold both.
fn client_identity(search: &SearchConfig) -> Result<Option<Vec<u8>>> {
    let Some(cert) = &search.client_cert else {
        return Ok(None);
    };
    let read = |key: &str, p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| Error::config(format!("cannot read {key} {}: {e}", p.display())))
    };
    let mut pem = read("search.client_cert", cert)?;
    if let Some(k) = &search.client_key {
        pem.push(b'\n');
        pem.extend(read("search.client_key", k)?);
    }
    // Checked here so that a wrong file is named, not reported as a client build error.
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("CERTIFICATE-----") || !text.contains("PRIVATE KEY-----") {
        return Err(Error::config(format!(
            "search.client_cert {} (with search.client_key) must be PEM holding a certificate and its private key",
            cert.display()
        )));
    }
    Ok(Some(pem))
}

/// The authentication of `[search]`; `url_creds` are credentials found in the URL (a hand-built
/// configuration; the loader moves them to username/password).
pub(super) fn auth(search: &SearchConfig, url_creds: Option<UserPassword>) -> Result<Auth> {
    if let Some(service) = &search.aws_service {
        return Ok(Auth::Aws(AwsSigner::new(
            service,
            search.aws_region.as_deref(),
        )?));
    }
    let value = if let Some(token) = &search.bearer_token {
        format!("Bearer {}", token.expose())
    } else if let Some(key) = &search.api_key {
        match key.expose().split_once(':') {
            Some((id, k)) => format!("ApiKey {}", base64(&format!("{id}:{k}"))),
            None => format!("ApiKey {}", key.expose()),
        }
    } else {
        let (url_user, url_pass) = url_creds.unzip();
        let user = search.username.clone().or(url_user);
        let pass = search
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .or(url_pass);
        if user.is_none() && pass.is_none() {
            return Ok(Auth::None);
        }
        format!(
            "Basic {}",
            base64(&format!(
                "{}:{}",
                user.unwrap_or_default(),
                pass.unwrap_or_default()
            ))
        )
    };
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        Error::config("search credentials hold characters an HTTP header cannot carry")
    })?;
    v.set_sensitive(true);
    Ok(Auth::Header(v))
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Decodes `%XX` escapes of URL user-info.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = |x: u8| (x as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
