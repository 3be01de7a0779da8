//! Where documents go: the search engine through the `elasticsearch` crate (right for
//! Elasticsearch 7–9 and OpenSearch 1–3), an NDJSON file, or nowhere.
