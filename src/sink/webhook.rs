//! Webhooks as a target: each batch of document changes is one `POST output.url` with the JSON
//! body `{"events":[<envelope>, …]}` (see [`super::events`]), in the order of the changes.
//! With `output.secret` set, `X-Pgsync-Signature: sha256=<hex HMAC-SHA256 of the body>` lets
//! the receiver check the sender. A 2xx acknowledges the batch; 429, 5xx and connection errors
//! are retried; any other answer rejects the batch's documents, which go to the dead-letter
//! store like documents a search engine refused.

use super::events::{decode, DocEvent};
use super::http::HttpTarget;
use super::{BulkBatch, BulkOutcome, ItemFailure};
use crate::config::OutputConfig;
use crate::Result;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Pgsync-Signature";

/// An HTTP endpoint receiving document changes.
#[derive(Clone, Debug)]
pub struct WebhookSink {
    http: HttpTarget,
    secret: Option<String>,
}

impl WebhookSink {
    /// The endpoint `output.url`, signed with `output.secret`. No network I/O.
    pub fn new(cfg: &OutputConfig) -> Result<WebhookSink> {
        Ok(WebhookSink {
            http: HttpTarget::new(cfg, "webhook")?,
            secret: cfg.secret.as_ref().map(|s| s.expose().to_owned()),
        })
    }

    /// POSTs the batch's events and settles them by the answer.
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        let events = decode(&batch)?;
        self.deliver(&events).await
    }

    /// POSTs `events` as one request.
    pub async fn deliver(&self, events: &[DocEvent]) -> Result<BulkOutcome> {
        if events.is_empty() {
            return Ok(BulkOutcome::default());
        }
        let body = bytes::Bytes::from(envelope(events));
        let signature = self.secret.as_deref().map(|k| sign(k, &body));
        let url = self.http.url("");
        let answer = self
            .http
            .send("POST", |c| {
                let r = c
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                match &signature {
                    Some(s) => r.header(SIGNATURE_HEADER, s),
                    None => r,
                }
            })
            .await?;
        let mut out = BulkOutcome {
            retries: answer.retries,
            ..BulkOutcome::default()
        };
        if answer.ok() {
            out.succeeded = events.len();
            return Ok(out);
        }
        let reason = format!(
            "the webhook at {} answered {}: {}",
            self.http.shown(),
            answer.status,
            answer.text()
        );
        out.failures = events
            .iter()
            .map(|e| ItemFailure {
                id: e.id.clone(),
                position: e.action,
                status: answer.status,
                reason: reason.clone(),
                document: Some(e.doc_json().to_owned()),
            })
            .collect();
        Ok(out)
    }

    /// POSTs a `truncate` event: every document of `index` is gone.
    pub async fn delete_all_documents(&self, index: &str) -> Result<()> {
        let out = self.deliver(&[DocEvent::truncate(index)]).await?;
        match out.failures.first() {
            None => Ok(()),
            Some(f) => Err(crate::Error::new(
                crate::ErrorKind::SinkRejected,
                f.reason.clone(),
            )),
        }
    }
}

/// `{"events":[…]}`.
fn envelope(events: &[DocEvent]) -> Vec<u8> {
    let mut body = b"{\"events\":[".to_vec();
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.to_json());
    }
    body.extend_from_slice(b"]}");
    body
}

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_lists_the_events_in_order() {
        let body = envelope(&[DocEvent::truncate("a"), DocEvent::truncate("b")]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["events"][1]["_index"], "b");
        assert_eq!(v["events"][0]["op"], "truncate");
    }
}
