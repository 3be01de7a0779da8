//! Deleting every document of an index (its root table was truncated) with `_delete_by_query`,
//! done so it cannot miss or double: delete-by-query only sees refreshed documents, so the index
//! is refreshed first (Elasticsearch fixed the same bug in its own code); the query runs as a
//! task (`wait_for_completion=false`) that is awaited by polling `_tasks`, so a long deletion
//! never hits a client timeout; and a request that fails in flight is never simply re-sent — a
//! task already running on the index is awaited instead of starting a second one.

use super::search::{index_path, SearchSink};
use super::Method;
use crate::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// How often a delete-by-query task is polled.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait for one deletion.
const PATIENCE: Duration = Duration::from_secs(600);

impl SearchSink {
    /// Deletes every document of `index`; a missing index is fine.
    pub async fn delete_all_documents(&self, index: &str) -> Result<()> {
        let (status, _) = self
            .json(Method::Post, &index_path(index, "/_refresh")?, None)
            .await?;
        if status == 404 {
            return Ok(());
        }
        let path = index_path(
            index,
            "/_delete_by_query?conflicts=proceed&refresh=true&wait_for_completion=false",
        )?;
        let query = json!({"query": {"match_all": {}}});
        for attempt in 0..3u32 {
            match self
                .json_retrying(Method::Post, &path, Some(&query), 0)
                .await
            {
                Ok((s, v)) if (200..300).contains(&s) => {
                    return self.await_deletion(index, &v).await
                }
                Ok((404, _)) => return Ok(()),
                Ok((s, v)) => {
                    return Err(Error::new(
                        ErrorKind::SinkRejected,
                        format!(
                            "search engine at {} answered {s} to POST {path}: {v}",
                            self.url()
                        ),
                    ))
                }
                Err(e) if e.is_transient() => {
                    // It may have started: never run a second one next to it.
                    if let Some(task) = self.running_deletion(index).await {
                        return self.await_task(index, &task).await;
                    }
                    tracing::debug!(
                        index,
                        attempt,
                        "delete-by-query not started ({}); sending it again",
                        e.message
                    );
                    tokio::time::sleep(POLL * (attempt + 1)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::SinkTransient,
            format!(
                "could not start deleting the documents of index {index} on {}",
                self.url()
            ),
        ))
    }

    /// Waits for what a `_delete_by_query` answer started: its task, or nothing when the engine
    /// ran it at once.
    async fn await_deletion(&self, index: &str, answer: &Value) -> Result<()> {
        match answer["task"].as_str() {
            Some(task) => self.await_task(index, task).await,
            None => check_failures(index, answer),
        }
    }

    /// Polls `GET /_tasks/{task}` until it completed; an engine without the tasks API is
    /// followed by counting until the index is empty.
    async fn await_task(&self, index: &str, task: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            let (status, v) = self
                .json(Method::Get, &format!("/_tasks/{task}"), None)
                .await?;
            if !(200..300).contains(&status) || v.get("completed").is_none() {
                return self.await_empty(index, deadline).await;
            }
            if v["completed"] == true {
                return check_failures(index, &v["response"]);
            }
            tokio::time::sleep(POLL).await;
        }
        Err(self.too_long(index))
    }

    /// Refreshes and counts until `index` holds nothing.
    async fn await_empty(&self, index: &str, deadline: tokio::time::Instant) -> Result<()> {
        while tokio::time::Instant::now() < deadline {
            self.json(Method::Post, &index_path(index, "/_refresh")?, None)
                .await?;
            let v = self
                .json_ok(Method::Get, &index_path(index, "/_count")?, None)
                .await?;
            if v["count"].as_u64() == Some(0) {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Err(self.too_long(index))
    }

    /// A delete-by-query task running on `index`, if the engine lists one.
    async fn running_deletion(&self, index: &str) -> Option<String> {
        let (status, v) = self
            .json(Method::Get, "/_tasks?actions=*byquery&detailed=true", None)
            .await
            .ok()?;
        if !(200..300).contains(&status) {
            return None;
        }
        let nodes = v["nodes"].as_object()?;
        nodes.values().find_map(|n| {
            n["tasks"].as_object()?.iter().find_map(|(id, t)| {
                let about = t["description"].as_str().unwrap_or_default();
                about.contains(&format!("[{index}]")).then(|| id.clone())
            })
        })
    }

    fn too_long(&self, index: &str) -> Error {
        Error::new(
            ErrorKind::SinkTransient,
            format!(
                "deleting the documents of index {index} on {} took longer than {PATIENCE:?}",
                self.url()
            ),
        )
    }
}

/// A finished delete-by-query that reports failures did not delete everything.
fn check_failures(index: &str, response: &Value) -> Result<()> {
    match response["failures"].as_array().filter(|f| !f.is_empty()) {
        None => Ok(()),
        Some(f) => Err(Error::new(
            ErrorKind::SinkTransient,
            format!(
                "deleting the documents of index {index}: {} failure(s), first: {}",
                f.len(),
                f[0]
            ),
        )),
    }
}
