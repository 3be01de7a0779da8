//! AWS SigV4 request signing for Amazon OpenSearch Service / Elasticsearch domains (`es`) and
//! OpenSearch Serverless (`aoss`). Signatures are computed by AWS's own `aws-sigv4`; credentials
//! come from aws-config's default chain (environment, shared profile, web identity / IRSA, ECS
//! container credentials, EC2 instance metadata) and are fetched again before they expire, so a
//! long-running daemon keeps working across rotations (PGSync's #604).

use crate::{Error, ErrorKind, Result};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use std::time::{Duration, SystemTime};

/// Credentials are fetched again when they expire within this margin (the SDK's own clients
/// refresh in the last minutes too), or within the last quarter of a shorter lifetime.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The longest a credential fetch (instance metadata, STS, a container endpoint) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime the credential chain runs on. Its HTTP client keeps pooled connections whose
/// tasks live on the runtime that opened them, and the pipeline's stages run on runtimes that
/// end with each pipeline run: the chain gets a runtime of its own that lives as long as the
/// process.
fn aws_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("aws-credentials")
            .enable_all()
            .build()
            .expect("start the AWS credentials runtime")
    })
}

/// Signs search requests for one AWS service and region. Shared by every clone of the sink.
pub struct AwsSigner {
    service: String,
    region: String,
    provider: tokio::sync::OnceCell<SharedCredentialsProvider>,
    /// The credentials in use and when they were fetched.
    cached: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl std::fmt::Debug for AwsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AwsSigner({} in {})", self.service, self.region)
    }
}

impl AwsSigner {
    /// A signer for `service` (`es` or `aoss`) in `region`, else the region of AWS_REGION /
    /// AWS_DEFAULT_REGION. No I/O: the credential chain is set up at the first request.
    pub fn new(service: &str, region: Option<&str>) -> Result<AwsSigner> {
        let region = region
            .map(str::to_owned)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::config(format!(
                    "search.aws_service = {service:?} needs the domain's region: set search.aws_region (ELASTICSEARCH_AWS_REGION) or AWS_REGION"
                ))
            })?;
        Ok(AwsSigner {
            service: service.to_owned(),
            region,
            provider: tokio::sync::OnceCell::new(),
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The AWS service requests are signed for (`es` or `aoss`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The headers that sign this request (`authorization`, `x-amz-date`,
    /// `x-amz-content-sha256`, `x-amz-security-token`). `url` is the full URL as sent.
    pub async fn headers(
        &self,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> Result<Vec<(String, String)>> {
        let creds = self.credentials().await?;
        sign_request(
            &SigningKey {
                credentials: &creds,
                region: &self.region,
                service: &self.service,
            },
            method,
            url,
            &[],
            body,
            SystemTime::now(),
            true,
        )
    }

    /// Current credentials: the cached ones while they are not about to expire, else fresh ones
    /// from the chain (one fetch at a time).
    async fn credentials(&self) -> Result<Credentials> {
        let mut cached = self.cached.lock().await;
        if let Some((c, _)) = cached
            .as_ref()
            .filter(|(c, at)| fresh(c, *at, SystemTime::now()))
        {
            return Ok(c.clone());
        }
        let fetched_at = SystemTime::now();
        let region = self.region.clone();
        let provider = self
            .provider
            .get_or_init(|| async move {
                aws_runtime()
                    .spawn(chain(region))
                    .await
                    .expect("setting up the AWS credential chain does not panic")
            })
            .await
            .clone();
        let fetch = aws_runtime().spawn(async move { provider.provide_credentials().await });
        let c = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::SinkTransient,
                    format!("the AWS credential source did not answer within {FETCH_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| Error::internal(format!("AWS credential fetch: {e}")))?
            .map_err(credentials_error)?;
        if let Some(exp) = c.expiry() {
            let left = exp
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tracing::debug!("AWS credentials fetched, valid for {left:?}");
        }
        *cached = Some((c.clone(), fetched_at));
        Ok(c)
    }
}

/// Whether `c`, fetched at `fetched_at`, is still good at `now` for more than the refresh margin:
/// [`REFRESH_MARGIN`], or a quarter of its lifetime when that is shorter.
fn fresh(c: &Credentials, fetched_at: SystemTime, now: SystemTime) -> bool {
    let Some(exp) = c.expiry() else {
        return true;
    };
    let lifetime = exp.duration_since(fetched_at).unwrap_or(Duration::ZERO);
    let margin = REFRESH_MARGIN.min(lifetime / 4);
    exp.duration_since(now).is_ok_and(|left| left > margin)
}

/// aws-config's default credential chain, its HTTP client on rustls with ring (the crypto the
/// rest of the program uses).
async fn chain(region: String) -> SharedCredentialsProvider {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new(region))
        .load()
        .await;
    conf.credentials_provider()
        .unwrap_or_else(|| SharedCredentialsProvider::new(NoCredentials))
}

/// Stands in when the chain could not be built at all.
#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            CredentialsError::not_loaded("the AWS credential chain could not be set up"),
        ))
    }
}

/// No credentials anywhere is a configuration problem; a provider failing or timing out (the
/// instance metadata service, STS) is retried like any outage.
fn credentials_error(e: CredentialsError) -> Error {
    let text = super::search::error_chain(&e);
    let (kind, hint) = match e {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => (
            ErrorKind::Config,
            "give the process AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity (IRSA), ECS task role or EC2 instance profile",
        ),
        _ => (
            ErrorKind::SinkTransient,
            "the AWS credential source did not answer; it is asked again",
        ),
    };
    Error::new(
        kind,
        format!("cannot get AWS credentials for SigV4: {text}"),
    )
    .with_hint(hint)
}

/// Who signs: credentials, region and service name.
pub struct SigningKey<'a> {
    /// Access key, secret and optional session token.
    pub credentials: &'a Credentials,
    /// E.g. `eu-west-1`.
    pub region: &'a str,
    /// `es`, `aoss` (or `service` in AWS's test suite).
    pub service: &'a str,
}

/// Signs one request with SigV4 in headers and returns the headers to add. `headers` are the
/// request's own headers to include in the signature (the search client signs only `host`, which
/// comes from `url`, and the `x-amz-*` headers); `content_sha256` adds `x-amz-content-sha256`,
/// which OpenSearch Serverless requires. Public so AWS's signing test vectors run against it.
pub fn sign_request(
    key: &SigningKey<'_>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
    content_sha256: bool,
) -> Result<Vec<(String, String)>> {
    let mut settings = SigningSettings::default();
    if content_sha256 {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let identity = key.credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(key.region)
        .name(key.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::internal(format!("SigV4 signing parameters: {e}")))?
        .into();
    let bad = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::SinkRejected,
            format!("cannot sign {method} {url} with SigV4: {e}"),
        )
    };
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| bad(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| bad(&e))?.into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_close_to_expiry_are_not_fresh() {
        let now = SystemTime::now();
        let c = |secs: u64| {
            Credentials::new("a", "s", None, Some(now + Duration::from_secs(secs)), "t")
        };
        let later = |secs: u64| now + Duration::from_secs(secs);
        // Hours-long credentials: refreshed in their last 5 minutes.
        assert!(fresh(&c(3600), now, later(3000)));
        assert!(!fresh(&c(3600), now, later(3400)));
        // Short-lived ones: in the last quarter of their lifetime.
        assert!(fresh(&c(8), now, later(5)));
        assert!(!fresh(&c(8), now, later(7)));
        assert!(!fresh(&c(8), now, later(9)));
        assert!(fresh(
            &Credentials::new("a", "s", None, None, "t"),
            now,
            now
        ));
    }

    #[test]
    fn a_signer_needs_a_region() {
        if std::env::var_os("AWS_REGION").is_some()
            || std::env::var_os("AWS_DEFAULT_REGION").is_some()
        {
            return;
        }
        let e = AwsSigner::new("es", None).unwrap_err();
        assert!(e.message.contains("ELASTICSEARCH_AWS_REGION"), "{e}");
        assert!(AwsSigner::new("aoss", Some("eu-west-1")).is_ok());
    }
}
