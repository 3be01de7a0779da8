//! The initial sync of one index: planner → fetchers → writers, spawned back to front, each stage
//! on its own arbiter thread and fed by bounded channels.

use super::fetcher::{FetchSettings, Fetcher};
use super::lanes::Lanes;
use super::messages::{DocChunk, FetchRequest};
use super::planner;
use super::progress::{Progress, Stats, Summary};
use super::writer::{Writer, WriterSettings};
use crate::config::Config;
use crate::schema::resolve::IndexPlan;
use crate::sink::Sink;
use crate::{Error, Result};
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Opens a PostgreSQL connection for a stage, on the stage's own thread.
pub type Connector = Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, Result<tokio_postgres::Client>> + Send + Sync,
>;

/// A connector for `database` from the configuration.
pub fn connector(cfg: &Config, database: &str) -> Connector {
    let cfg = Arc::new(cfg.clone());
    let db = database.to_owned();
    Arc::new(move || {
        let cfg = cfg.clone();
        let db = db.clone();
        Box::pin(async move { crate::config::connect(&cfg, &db).await })
    })
}

/// The writer stage: `n` writers with inputs of `capacity` messages. Returns their lanes and
/// done signals.
pub fn spawn_writers(
    cfg: &Config,
    sink: &Sink,
    index: &str,
    stats: &Arc<Stats>,
    errors: &mpsc::UnboundedSender<Error>,
    linger: Duration,
    capacity: usize,
) -> (Lanes<DocChunk>, Vec<tokio::sync::oneshot::Receiver<()>>) {
    let p = &cfg.pipeline;
    let mut senders = vec![];
    let mut dones = vec![];
    for _ in 0..p.writers.max(1) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (dtx, drx) = tokio::sync::oneshot::channel();
        let settings = WriterSettings {
            batch_docs: p.batch_docs.max(1),
            batch_bytes: p.batch_bytes.max(1024),
            in_flight: p.requests_in_flight.max(1),
            linger,
        };
        let (sink, index, stats, errors) = (
            sink.clone(),
            index.to_owned(),
            stats.clone(),
            errors.clone(),
        );
        let arb = Arbiter::new();
        Writer::start_in_arbiter(&arb.handle(), move |_| {
            Writer::new(sink, index, settings, rx, stats, errors, dtx)
        });
        senders.push(tx);
        dones.push(drx);
    }
    (Lanes::new(senders), dones)
}

/// The fetcher stage: `n` fetchers with inputs of `capacity` messages, each writing to `out`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_fetchers(
    cfg: &Config,
    plan: &Arc<IndexPlan>,
    snapshot: Option<String>,
    out: &Lanes<DocChunk>,
    stats: &Arc<Stats>,
    errors: &mpsc::UnboundedSender<Error>,
    n: usize,
    capacity: usize,
) -> Lanes<FetchRequest> {
    let p = &cfg.pipeline;
    let connect = connector(cfg, &plan.spec.database);
    let mut senders = vec![];
    for lane in 0..n.max(1) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let settings = Arc::new(FetchSettings {
            plan: plan.clone(),
            with_meta: cfg.documents.meta,
            chunk_docs: p.fetch_chunk.max(1).min(p.batch_docs.max(1)),
            chunk_bytes: p.batch_bytes.max(1024),
            snapshot: snapshot.clone(),
            lane,
            plugins: crate::plugin::chain_for(&plan.spec.index),
        });
        let (out, stats, errors, connect) =
            (out.clone(), stats.clone(), errors.clone(), connect.clone());
        let arb = Arbiter::new();
        Fetcher::start_in_arbiter(&arb.handle(), move |_| {
            Fetcher::new(settings, rx, out, stats, errors, connect)
        });
        senders.push(tx);
    }
    Lanes::new(senders)
}

/// Builds every document of `plan` and writes it to `sink`. Must run inside an actix System.
pub async fn initial_sync(
    cfg: &Config,
    plan: Arc<IndexPlan>,
    sink: Sink,
    snapshot: Option<String>,
) -> Result<Summary> {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let (err_tx, mut err_rx) = mpsc::unbounded_channel();
    let index = plan.spec.index.clone();

    // Back to front: writers, then fetchers given the writers' lanes, then the planner.
    let (write_lanes, dones) = spawn_writers(
        cfg,
        &sink,
        &index,
        &stats,
        &err_tx,
        Duration::from_millis(200),
        cfg.pipeline.channel_capacity,
    );
    let fetch_lanes = spawn_fetchers(
        cfg,
        &plan,
        snapshot,
        &write_lanes,
        &stats,
        &err_tx,
        cfg.pipeline.fetchers,
        cfg.pipeline.channel_capacity,
    );
    let blocked = write_lanes.blocked_counter();
    drop(write_lanes);

    let client = crate::config::connect(cfg, &plan.spec.database).await?;
    let (kind, pages, rows) = planner::root_size(&client, &plan).await?;
    drop(client);
    let ranges = planner::split(
        kind,
        pages,
        cfg.pipeline.fetchers.max(1) * cfg.pipeline.ranges_per_fetcher.max(1),
    );
    tracing::info!(index = %index, ranges = ranges.len(), pages, estimated_rows = rows.unwrap_or(0), "initial sync started");
    let progress = Progress::start(
        &index,
        stats.clone(),
        rows,
        Duration::from_secs(cfg.log.progress_interval_secs.max(1)),
    );

    let feed = async {
        for r in ranges {
            if fetch_lanes
                .send_any(FetchRequest::Range {
                    filter: r,
                    completion: None,
                })
                .await
                .is_err()
            {
                break;
            }
        }
        drop(fetch_lanes);
        for d in dones {
            let _ = d.await;
        }
    };
    tokio::pin!(feed);
    let result = tokio::select! {
        _ = &mut feed => Ok(()),
        Some(e) = err_rx.recv() => Err(e),
    };
    drop(progress);
    result?;
    // An error reported by the last request of a writer arrives just before its done signal.
    if let Ok(e) = err_rx.try_recv() {
        return Err(e);
    }
    Ok(Summary {
        index,
        written: stats.written(),
        failed: stats.failed(),
        retries: stats.retries(),
        elapsed: started.elapsed(),
        blocked: blocked.get(),
    })
}
