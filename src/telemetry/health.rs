//! What `/readyz` answers: each index's phase (set by the daemon and its supervisor), whether the
//! search engine answered the monitor's last probe, and the lag the monitor measured. Ready means
//! every index is streaming (lagging no more than `[metrics] ready_max_lag_secs`), syncing or a
//! standby, and its engine answers.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where an index is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase", content = "reason")]
pub enum Phase {
    /// Waiting for services, bootstrapping.
    Starting,
    /// Another process holds the leader lock; this one takes over when it dies.
    Standby,
    /// Building the index from the current rows.
    Syncing,
    /// Streaming changes.
    Streaming,
    /// The pipeline failed and is being restarted (the reason), or stopped for good.
    Failing(String),
}

/// One index's health.
#[derive(Debug, Clone, Serialize)]
pub struct IndexHealth {
    /// Its phase.
    #[serde(flatten)]
    pub phase: Phase,
    /// Why the engine did not answer the last probe, if it did not.
    pub engine_error: Option<String>,
    /// Lag in seconds, when measured.
    pub lag_secs: Option<f64>,
}

static STATE: Mutex<BTreeMap<String, IndexHealth>> = Mutex::new(BTreeMap::new());

fn with_index(index: &str, f: impl FnOnce(&mut IndexHealth)) {
    let mut s = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let h = s.entry(index.to_owned()).or_insert(IndexHealth {
        phase: Phase::Starting,
        engine_error: None,
        lag_secs: None,
    });
    f(h);
}

/// Records the phase of `index`.
pub fn set_phase(index: &str, phase: Phase) {
    let leader = match phase {
        Phase::Standby => Some(0.0),
        Phase::Syncing | Phase::Streaming => Some(1.0),
        _ => None,
    };
    if let Some(v) = leader {
        metrics::gauge!(super::names::LEADER, "index" => index.to_owned()).set(v);
    }
    with_index(index, |h| h.phase = phase);
}

/// Records the outcome of the monitor's probe of the engine for `index`.
pub fn set_engine(index: &str, error: Option<String>) {
    with_index(index, |h| h.engine_error = error);
}

/// Records the lag of `index`.
pub fn set_lag(index: &str, secs: Option<f64>) {
    with_index(index, |h| h.lag_secs = secs);
}

/// Whether every index is ready, with a JSON body saying why (or why not) per index.
pub fn readiness(max_lag_secs: u64) -> (bool, serde_json::Value) {
    let s = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let mut reasons = vec![];
    for (index, h) in s.iter() {
        if let Some(why) = not_ready(h, max_lag_secs) {
            reasons.push(format!("index {index}: {why}"));
        }
    }
    if s.is_empty() {
        reasons.push("starting: no index is running yet".to_owned());
    }
    let ready = reasons.is_empty();
    metrics::gauge!(super::names::READY).set(if ready { 1.0 } else { 0.0 });
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "reason": (!ready).then(|| reasons.join("; ")),
        "indices": &*s,
    });
    (ready, body)
}

fn not_ready(h: &IndexHealth, max_lag_secs: u64) -> Option<String> {
    match &h.phase {
        Phase::Starting => return Some("starting".into()),
        Phase::Failing(why) => return Some(format!("failing: {why}")),
        Phase::Standby => return None,
        Phase::Syncing | Phase::Streaming => {}
    }
    if let Some(e) = &h.engine_error {
        return Some(format!("the search engine does not answer: {e}"));
    }
    // An initial sync lags by design (the slot waits until it is done): it is ready while it
    // makes progress.
    if h.phase == Phase::Syncing {
        return None;
    }
    match h.lag_secs {
        Some(l) if l > max_lag_secs as f64 => Some(format!(
            "lags {l:.0}s behind PostgreSQL (metrics.ready_max_lag_secs = {max_lag_secs})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(phase: Phase, engine_error: Option<&str>, lag: Option<f64>) -> IndexHealth {
        IndexHealth {
            phase,
            engine_error: engine_error.map(str::to_owned),
            lag_secs: lag,
        }
    }

    #[test]
    fn ready_means_streaming_within_the_lag_syncing_or_standby_with_the_engine_answering() {
        assert_eq!(
            not_ready(&health(Phase::Streaming, None, Some(1.0)), 60),
            None
        );
        assert_eq!(
            not_ready(&health(Phase::Standby, Some("down"), None), 60),
            None
        );
        assert_eq!(
            not_ready(&health(Phase::Syncing, None, Some(600.0)), 60),
            None
        );
        let lagging = not_ready(&health(Phase::Streaming, None, Some(61.0)), 60).unwrap();
        assert!(lagging.contains("ready_max_lag_secs = 60"), "{lagging}");
        let frozen = not_ready(&health(Phase::Syncing, Some("no answer"), None), 60).unwrap();
        assert!(frozen.contains("search engine"), "{frozen}");
        let failing = not_ready(&health(Phase::Failing("boom".into()), None, None), 60).unwrap();
        assert!(failing.contains("boom"), "{failing}");
        assert!(not_ready(&health(Phase::Starting, None, None), 60).is_some());
    }
}
