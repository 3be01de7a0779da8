//! Test harness: real throwaway PostgreSQL, Redis, osmem-server
//! (in-memory OpenSearch), Typesense and NATS (JetStream) processes on free loopback ports, so integration
//! tests need nothing beyond `scripts/install-deps.sh`.
//!
//! Use from an integration test with `mod harness;`. Every service is
//! watched so that it dies with the test binary, even when a test panics,
//! the binary is killed, or the service sits in a `static` that is never
//! dropped; temp dirs are removed the same way.
//!
//! Starting, stopping and querying services blocks the calling thread
//! (they run child processes); inside `#[tokio::test]` prefer
//! `flavor = "multi_thread"` when code under test runs on the same runtime.
#![allow(dead_code, unused_imports)]

mod nats;
mod osmem;
mod postgres;
mod process;
mod redis;
mod tls;
mod typesense;

pub use nats::Nats;
pub use osmem::{http_request, osmem_bin, Osmem};
pub use postgres::{
    pg_bin_dir, quote_ident, shared_postgres, unique_db_name, Postgres, PostgresOptions, ServerSsl,
};
pub use process::{free_port, Watchdog};
pub use redis::{redis_cmd, redis_cmd_as, Redis, Resp};
pub use tls::{CertFiles, TestCa};
pub use typesense::{Typesense, TYPESENSE_API_KEY};

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the `wait_until` helpers poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it yields `true`; panics naming `what` after
/// `timeout`. Sync is asynchronous, so tests assert on eventual state
/// instead of sleeping. A single slow poll is cut off at the deadline too.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let poll = tokio::time::timeout(left.max(POLL_INTERVAL), f()).await;
        if poll == Ok(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Blocking twin of [`wait_until`] for tests without a runtime.
pub fn wait_until_blocking(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The `pgsync` binary Cargo built for this test run.
pub fn pgsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgsync"))
}
