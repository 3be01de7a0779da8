//! Checks of the search engine's authentication settings (`[search]`: basic auth, API key,
//! bearer token, client certificate, AWS SigV4, Elastic Cloud id), done at load so that a
//! mistake is reported with its key before anything connects.

use super::{cloud_id, SearchConfig, Secret};
use crate::{Error, Result};

/// The AWS services a search domain is signed for.
pub const AWS_SERVICES: [&str; 2] = ["es", "aoss"];

/// Normalizes empty values away and refuses combinations that cannot work; `warnings` gets
/// settings that are ignored.
pub(super) fn validate(s: &mut SearchConfig, warnings: &mut Vec<String>) -> Result<()> {
    drop_empty(s);
    if let Some(svc) = &mut s.aws_service {
        *svc = svc.trim().to_ascii_lowercase();
        if !AWS_SERVICES.contains(&svc.as_str()) {
            return Err(Error::config(format!(
                "search.aws_service = {svc:?} must be \"es\" (Amazon OpenSearch Service / Elasticsearch domains) or \"aoss\" (OpenSearch Serverless)"
            )));
        }
        let others: Vec<&str> = [
            (
                "search.username/search.password",
                s.username.is_some() || s.password.is_some(),
            ),
            ("search.api_key", s.api_key.is_some()),
            ("search.bearer_token", s.bearer_token.is_some()),
        ]
        .iter()
        .filter_map(|(k, set)| set.then_some(*k))
        .collect();
        if !others.is_empty() {
            warnings.push(format!(
                "search.aws_service is set: requests are signed with AWS SigV4 and {} ignored (as in PGSync)",
                others.join(", ")
            ));
        }
    } else if s.bearer_token.is_some() && (s.api_key.is_some() || s.username.is_some()) {
        return Err(Error::config(
            "search.bearer_token (ELASTICSEARCH_BEARER_AUTH) and search.api_key or search.username are both set; an engine takes one Authorization header: keep one",
        ));
    }
    if let Some(id) = &s.cloud_id {
        cloud_id::endpoint(id)?;
    }
    match (&s.client_cert, &s.client_key) {
        (None, Some(_)) => warnings.push(
            "search.client_key (ELASTICSEARCH_CLIENT_KEY) is ignored: it needs search.client_cert (ELASTICSEARCH_CLIENT_CERT)"
                .to_owned(),
        ),
        (Some(c), k) => {
            for (key, path) in [("search.client_cert", Some(c)), ("search.client_key", k.as_ref())] {
                if let Some(p) = path.filter(|p| !p.is_file()) {
                    return Err(Error::config(format!(
                        "{key} = {} is not a readable file",
                        p.display()
                    )));
                }
            }
        }
        (None, None) => {}
    }
    Ok(())
}

fn drop_empty(s: &mut SearchConfig) {
    if s.bearer_token.as_ref().is_some_and(Secret::is_empty) {
        s.bearer_token = None;
    }
    for v in [&mut s.cloud_id, &mut s.aws_service, &mut s.aws_region] {
        if v.as_deref().is_some_and(|t| t.trim().is_empty()) {
            *v = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_aws_service_and_two_authorization_headers_are_refused() {
        let mut s = SearchConfig {
            aws_service: Some("opensearch".into()),
            ..SearchConfig::default()
        };
        let e = validate(&mut s, &mut vec![]).unwrap_err();
        assert!(
            e.message.contains("\"es\"") && e.message.contains("\"aoss\""),
            "{e}"
        );
        let mut s = SearchConfig {
            bearer_token: Some(Secret::new("t")),
            api_key: Some(Secret::new("k")),
            ..SearchConfig::default()
        };
        assert!(validate(&mut s, &mut vec![]).is_err());
    }

    #[test]
    fn sigv4_ignores_other_credentials_with_a_warning() {
        let mut s = SearchConfig {
            aws_service: Some(" AOSS ".into()),
            username: Some("elastic".into()),
            ..SearchConfig::default()
        };
        let mut w = vec![];
        validate(&mut s, &mut w).unwrap();
        assert_eq!(s.aws_service.as_deref(), Some("aoss"));
        assert!(w[0].contains("search.username"), "{w:?}");
    }

    #[test]
    fn a_missing_client_certificate_file_is_named() {
        let mut s = SearchConfig {
            client_cert: Some("/nonexistent/client.pem".into()),
            ..SearchConfig::default()
        };
        let e = validate(&mut s, &mut vec![]).unwrap_err();
        assert!(e.message.contains("search.client_cert"), "{e}");
    }
}
