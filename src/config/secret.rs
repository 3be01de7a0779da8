//! A string that is never printed: passwords, API keys and URLs that embed them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What every secret prints as.
const MASK: &str = "********";

/// A secret value. `Debug`, `Display` and `Serialize` print `********`, so a secret cannot leak
/// through logs, error messages or `--print-config` by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The real value, for handing to a client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether the value is empty (an empty password counts as no password).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// For secrets that are URLs (`postgres.url`, `checkpoint.redis_url`): the URL with only its
    /// password masked, so an operator can still see which host and user are configured.
    pub fn masked_url(&self) -> String {
        mask_url(&self.0)
    }
}

/// Masks the password of a URL (`scheme://user:pass@host` → `scheme://user:****@host`), for
/// messages that must say which URL failed without showing credentials. Text that does not look
/// like a URL with credentials comes back unchanged; a `user:pass@` part is masked even when the
/// rest of the string does not parse.
pub fn mask_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() && u.set_password(Some("****")).is_ok() {
            return u.to_string();
        }
        if u.password().is_none() {
            return url.to_owned();
        }
    }
    // Unparseable: mask everything between "://" and the last '@' of the authority.
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:****{}", &url[..start], user, &rest[at..])
        }
        None => url.to_owned(),
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A TOML `password = 12345` arrives as a number: accept numbers and booleans as text.
        // (Environment values never get here type-parsed: the loader reads them raw.)
        let v = serde_json::Value::deserialize(d)?;
        Ok(Secret(match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "******** ********");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"********\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask_url("http://elastic:s3cret@es:9200/"),
            "http://elastic:****@es:9200/"
        );
        assert_eq!(mask_url("http://es:9200"), "http://es:9200");
        assert_eq!(
            Secret::new("postgres://u:p%40ss@db:5432/x").masked_url(),
            "postgres://u:****@db:5432/x"
        );
        // Not parseable as a URL (bad port) but still carries credentials.
        let m = mask_url("redis://:pw@host:notaport/0");
        assert!(!m.contains("pw"), "{m}");
        assert_eq!(mask_url("not a url"), "not a url");
    }
}
