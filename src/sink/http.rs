//! The HTTP client the Typesense and webhook targets share: one connection pool per target,
//! a time limit per request, and retries of what passes by itself (429, 5xx, connection errors
//! and timeouts) with capped exponential backoff. Anything else is answered to the caller, who
//! knows whether a 4xx rejects a document or the whole configuration.

use crate::config::{mask_url, OutputConfig};
use crate::{Error, ErrorKind, Result};
use std::time::Duration;

/// An HTTP endpoint with its client.
#[derive(Clone)]
pub struct HttpTarget {
    client: reqwest::Client,
    /// The base URL, credentials included.
    base: String,
    /// The same, fit for logs.
    shown: String,
    /// Which target, for messages (`typesense`, `webhook`).
    what: &'static str,
    retries: u32,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.what, self.shown)
    }
}

/// What a server answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: bytes::Bytes,
    /// Requests re-sent before this answer.
    pub retries: u32,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, cut to a readable length.
    pub fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        t.chars().take(500).collect()
    }
}

impl HttpTarget {
    /// The client for `output.url`.
    pub fn new(cfg: &OutputConfig, what: &'static str) -> Result<HttpTarget> {
        let base = cfg.url.as_ref().map(|u| u.expose()).unwrap_or_default();
        let shown = mask_url(base);
        url::Url::parse(base)
            .map_err(|e| Error::config(format!("output.url {shown} is not a URL: {e}")))?;
        crate::config::tls::crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::config(format!("{what} client for {shown}: {e}")))?;
        Ok(HttpTarget {
            client,
            base: base.trim_end_matches('/').to_owned(),
            shown,
            what,
            retries: cfg.retries,
        })
    }

    /// The base URL with credentials masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the request `build` makes (again for each retry); answers the first response that
    /// is not transient, or fails `SinkTransient` once the retries are spent.
    pub async fn send<F>(&self, what: &str, build: F) -> Result<Answer>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let failure = match build(&self.client).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    match r.bytes().await {
                        Ok(body) if status != 429 && status < 500 => {
                            return Ok(Answer {
                                status,
                                body,
                                retries: attempt,
                            })
                        }
                        Ok(body) => format!("{status} {}", String::from_utf8_lossy(&body)),
                        Err(e) => describe(&e),
                    }
                }
                Err(e) => describe(&e),
            };
            self.retry_or_fail(what, &mut attempt, &mut delay, failure)
                .await?;
        }
    }

    /// Waits before the next attempt, or fails once the retries are spent.
    async fn retry_or_fail(
        &self,
        what: &str,
        attempt: &mut u32,
        delay: &mut Duration,
        failure: String,
    ) -> Result<()> {
        if *attempt >= self.retries {
            return Err(Error::new(
                ErrorKind::SinkTransient,
                format!(
                    "{} at {}: {what} failed after {} attempt(s): {failure}",
                    self.what,
                    self.shown,
                    *attempt + 1
                ),
            )
            .with_hint("check output.url and that the target is up; the pipeline restarts from its checkpoint"));
        }
        tracing::debug!(
            target_kind = self.what,
            what,
            attempt = *attempt,
            "retrying: {failure}"
        );
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(Duration::from_secs(5));
        *attempt += 1;
        Ok(())
    }
}

/// A transport error with its cause (reqwest's own message hides it).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
