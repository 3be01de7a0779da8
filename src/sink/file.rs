//! The NDJSON file sink: bulk bodies appended to one file, replayable with
//! `curl -H 'content-type: application/x-ndjson' --data-binary @file …/_bulk`.

use super::{BulkBatch, BulkOutcome};
use crate::{Error, ErrorKind, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Appends bulk bodies to a file. Each body is written whole under a lock on a blocking thread,
/// so concurrent writers never interleave lines and the async runtime never blocks on disk.
#[derive(Clone)]
pub struct FileSink {
    path: Arc<PathBuf>,
    file: Arc<Mutex<std::fs::File>>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSink({})", self.path.display())
    }
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> Result<FileSink> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "cannot open output.path {} for appending: {e}",
                        path.display()
                    ),
                )
            })?;
        Ok(FileSink {
            path: Arc::new(path.to_owned()),
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the body; every action counts as succeeded.
    pub async fn bulk(&self, batch: BulkBatch) -> Result<BulkOutcome> {
        let n = batch.len();
        if batch.body.is_empty() {
            return Ok(BulkOutcome {
                succeeded: n,
                ..BulkOutcome::default()
            });
        }
        let file = self.file.clone();
        let body = batch.body;
        self.blocking(move || {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            f.write_all(&body)?;
            if !body.ends_with(b"\n") {
                f.write_all(b"\n")?;
            }
            Ok(())
        })
        .await?;
        Ok(BulkOutcome {
            succeeded: n,
            ..BulkOutcome::default()
        })
    }

    /// Flushes to disk (`fsync`), so a reader sees complete bodies.
    pub async fn flush(&self) -> Result<()> {
        let file = self.file.clone();
        self.blocking(move || file.lock().unwrap_or_else(|e| e.into_inner()).sync_data())
            .await
    }

    async fn blocking<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        let path = self.path.clone();
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("cannot write output.path {}: {e}", path.display()),
            )
        };
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r.map_err(io),
            Err(e) => Err(Error::internal(format!("file writer task failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{push_delete_action, push_index_action, Sink, Target};
    use super::*;

    #[tokio::test]
    async fn appends_bodies_and_counts_items() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let sink = Sink::Ndjson(FileSink::open(&path).unwrap());
        for i in 0..3 {
            let mut buf = Vec::new();
            push_index_action(
                &mut buf,
                Target::new("i", &i.to_string()),
                None,
                b"{\"a\":1}",
            );
            push_delete_action(&mut buf, Target::new("i", "x"));
            let out = sink
                .bulk(BulkBatch::new(buf, vec![i.to_string(), "x".into()]))
                .await
                .unwrap();
            assert_eq!(out.succeeded, 2);
        }
        sink.refresh("i").await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 9);
        assert!(text.ends_with('\n'));
        // Reopening appends rather than truncating.
        let again = FileSink::open(&path).unwrap();
        again
            .bulk(BulkBatch::new(
                &b"{\"delete\":{\"_index\":\"i\",\"_id\":\"y\"}}"[..],
                vec!["y".into()],
            ))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 10);
    }

    #[test]
    fn open_failure_names_the_path() {
        let e = FileSink::open(Path::new("/nonexistent-dir/x.ndjson"))
            .err()
            .unwrap();
        assert!(e.message.contains("/nonexistent-dir/x.ndjson"), "{e}");
    }
}
