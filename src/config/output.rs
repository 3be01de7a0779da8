//! `[output]`: where documents go — the search engine, a file, nowhere, or one of the document
//! targets (Typesense, a Redis stream, NATS JetStream, a webhook) with their own keys.

use super::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where documents go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The search engine in `[search]` (Elasticsearch or OpenSearch).
    #[default]
    #[serde(alias = "elasticsearch", alias = "opensearch")]
    Search,
    /// NDJSON bulk bodies appended to `output.path`.
    Ndjson,
    /// Dropped after being built: measures the pipeline's own ceiling.
    Discard,
    /// Typesense collections (the import API) at `output.url`.
    Typesense,
    /// One Redis stream entry per document change at `output.url`.
    RedisStream,
    /// NATS JetStream messages per document change at `output.url`.
    Nats,
    /// Batched JSON POSTs of document changes to `output.url`.
    Webhook,
}

impl OutputKind {
    /// The name used in the configuration, for messages.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Search => "search",
            OutputKind::Ndjson => "ndjson",
            OutputKind::Discard => "discard",
            OutputKind::Typesense => "typesense",
            OutputKind::RedisStream => "redis_stream",
            OutputKind::Nats => "nats",
            OutputKind::Webhook => "webhook",
        }
    }

    /// Whether the target needs `output.url`.
    pub fn needs_url(self) -> bool {
        matches!(
            self,
            OutputKind::Typesense
                | OutputKind::RedisStream
                | OutputKind::Nats
                | OutputKind::Webhook
        )
    }
}

/// How a Typesense collection's schema is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypesenseSchema {
    /// Fields the index's mapping types are indexed with the matching Typesense type; every
    /// other field is stored whole, not indexed.
    #[default]
    Mapping,
    /// Every field indexed, its type auto-detected from the first document holding it (the
    /// mapping is ignored); documents Typesense cannot type are dead-lettered.
    Auto,
}

/// Output selection and the document targets' keys (each key applies to the kinds named).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// `search` (alias `elasticsearch`, `opensearch`), `ndjson`, `discard`, `typesense`,
    /// `redis_stream`, `nats` or `webhook`.
    pub kind: OutputKind,
    /// File for `ndjson`.
    pub path: Option<PathBuf>,
    /// The target's address: `http://host:8108` (typesense), `redis://host:6379` (redis_stream),
    /// `nats://host:4222` (nats), the endpoint POSTed to (webhook). May hold credentials.
    pub url: Option<Secret>,
    /// typesense: the `X-TYPESENSE-API-KEY`.
    pub api_key: Option<Secret>,
    /// typesense: collection schema from the mapping or auto-detected.
    pub collection_schema: TypesenseSchema,
    /// redis_stream: the stream key; `{index}` is replaced by the index name.
    pub stream: String,
    /// redis_stream: approximate `MAXLEN ~` cap of each stream; 0 keeps every entry.
    pub maxlen: u64,
    /// nats: subjects are `<subject_prefix>.<index>.<op>`.
    pub subject_prefix: String,
    /// nats: the JetStream stream capturing `<subject_prefix>.>`, created when missing.
    pub jetstream: String,
    /// webhook: HMAC-SHA256 key of the `X-Pgsync-Signature` header; unsigned when unset.
    pub secret: Option<Secret>,
    /// typesense, webhook, nats: seconds one request (or publish acknowledgement) may take.
    pub timeout_secs: u64,
    /// typesense, webhook, nats: attempts of a request (a publish) that fails transiently
    /// (429, 5xx, connection) before the pipeline restarts from its checkpoint.
    pub retries: u32,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            kind: OutputKind::Search,
            path: None,
            url: None,
            api_key: None,
            collection_schema: TypesenseSchema::Mapping,
            stream: "pgsync:{index}".into(),
            maxlen: 0,
            subject_prefix: "pgsync".into(),
            jetstream: "PGSYNC".into(),
            secret: None,
            timeout_secs: 30,
            retries: 5,
        }
    }
}

impl OutputConfig {
    /// What is wrong with the selected kind's keys, as `(key, problem)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let kind = self.kind.name();
        if self.kind == OutputKind::Ndjson && self.path.is_none() {
            return Some((
                "output.kind",
                "= \"ndjson\" needs output.path (the file bulk bodies are appended to)".into(),
            ));
        }
        if self.kind.needs_url() && self.url.as_ref().is_none_or(|u| u.is_empty()) {
            return Some((
                "output.url",
                format!("output.kind = \"{kind}\" needs output.url (the {kind} server's address)"),
            ));
        }
        if self.kind == OutputKind::Typesense && self.api_key.is_none() {
            return Some((
                "output.api_key",
                "output.kind = \"typesense\" needs output.api_key (Typesense's X-TYPESENSE-API-KEY)"
                    .into(),
            ));
        }
        if self.kind == OutputKind::Nats
            && (self.subject_prefix.is_empty() || self.subject_prefix.contains([' ', '*', '>']))
        {
            return Some((
                "output.subject_prefix",
                format!(
                    "{:?} is not a NATS subject prefix (non-empty, no spaces, * or >)",
                    self.subject_prefix
                ),
            ));
        }
        None
    }

    /// The stream key of `index` (redis_stream).
    pub fn stream_of(&self, index: &str) -> String {
        self.stream.replace("{index}", index)
    }

    /// One request's time limit.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_by_their_config_names() {
        #[derive(Deserialize)]
        struct K {
            kind: OutputKind,
        }
        for (text, kind) in [
            ("elasticsearch", OutputKind::Search),
            ("opensearch", OutputKind::Search),
            ("redis_stream", OutputKind::RedisStream),
            ("nats", OutputKind::Nats),
            ("webhook", OutputKind::Webhook),
            ("typesense", OutputKind::Typesense),
        ] {
            let k: K = serde_json::from_str(&format!("{{\"kind\":\"{text}\"}}")).unwrap();
            assert_eq!(k.kind, kind);
        }
    }

    #[test]
    fn a_target_without_its_url_or_key_is_named() {
        let mut o = OutputConfig {
            kind: OutputKind::Typesense,
            ..Default::default()
        };
        assert_eq!(o.problem().unwrap().0, "output.url");
        o.url = Some(Secret::new("http://localhost:8108"));
        assert_eq!(o.problem().unwrap().0, "output.api_key");
        o.api_key = Some(Secret::new("k"));
        assert!(o.problem().is_none());
        o.kind = OutputKind::Nats;
        o.subject_prefix = "a.>".into();
        assert_eq!(o.problem().unwrap().0, "output.subject_prefix");
        assert_eq!(o.stream_of("book"), "pgsync:book");
    }
}
