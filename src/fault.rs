//! Fault points for the fault-injection suite (`tests/faults.rs`), on the `fail` crate: a test
//! starts the daemon with e.g. `FAILPOINTS="fetch-keys=1*return(boom)"` (an injected error in a
//! change's fetch), `fetch-keys=1*panic(boom)` (an injected panic), or `write=return(300)` (a
//! pause of 300 ms before every bulk request), and checks that nothing is lost. The points:
//! `fetch-keys` and `fetch-range` (start of a fetch of documents by key / by range), `write`
//! (before every bulk request), `stream-write` (before a bulk request of change capture) and
//! `after-swap` (between a migration's alias swap and its record).
//! Without the `fault-injection` feature, or without FAILPOINTS, every point is inert.

use crate::Result;

/// Reads FAILPOINTS once at start-up; the returned scenario must live as long as the process.
pub fn setup() -> Option<fail::FailScenario<'static>> {
    #[cfg(feature = "fault-injection")]
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set: fault injection is active (a test setting)");
        return Some(fail::FailScenario::setup());
    }
    None
}

/// Fails with an injected transient error when the point `name` is set to `return(reason)`;
/// panics when it is set to `panic(msg)`.
pub fn check(name: &str) -> Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(arg) = fail::eval(name, |arg| arg) {
        tracing::warn!(point = name, "fault point: injected error");
        return Err(crate::Error::stage(format!(
            "injected fault at {name}: {}",
            arg.unwrap_or_default()
        )));
    }
    let _ = name;
    Ok(())
}

/// Pauses for the milliseconds the point `name` returns (`return(3000)`), without blocking the
/// thread's other tasks.
pub async fn pause(name: &str) {
    #[cfg(feature = "fault-injection")]
    if let Some(arg) = fail::eval(name, |arg| arg) {
        let ms = arg.and_then(|a| a.trim().parse().ok()).unwrap_or(1000);
        tracing::warn!(point = name, ms, "fault point: pausing");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let _ = name;
}
