//! What each subcommand does.

use super::Action;
use crate::config::Config;
use crate::pipeline::initial::initial_sync;
use crate::schema::mapping::index_body;
use crate::schema::{load as load_schema, resolve_all};
use crate::sink::Sink;
use crate::{Error, Result};
use std::sync::Arc;

/// Does what was asked; returns the exit code.
pub async fn dispatch(action: Action, cfg: Config) -> Result<i32> {
    match action {
        Action::Validate => validate(&cfg).await,
        Action::CatchUp { recreate } => super::catch_up::catch_up(&cfg, recreate).await,
        Action::FullSync { recreate } => run_once(&cfg, recreate).await,
        Action::Daemon { recreate } => crate::pipeline::daemon::run(&cfg, recreate).await,
        Action::Bootstrap => super::admin::bootstrap(&cfg).await.map(|_| 0),
        Action::Teardown => super::admin::teardown(&cfg).await.map(|_| 0),
        Action::Status => super::admin::status(&cfg).await.map(|_| 0),
    }
}

async fn validate(cfg: &Config) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    for p in &plans {
        for plugin in &p.spec.plugins {
            println!(
                "warning: {}: {}.plugins: plugin {plugin:?} is PGSync Python code and is not run",
                file.path.display(),
                p.spec.path
            );
        }
        println!(
            "ok: index {} (database {}): {} nodes, tables {}",
            p.spec.index,
            p.spec.database,
            p.nodes().len(),
            p.relations()
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(0)
}

/// `run --once --full`: creates the index if needed and rebuilds every document of every index
/// from the current rows, leaving capture and checkpoints alone.
pub async fn run_once(cfg: &Config, recreate: bool) -> Result<i32> {
    let file = load_schema(cfg)?;
    let plans = resolve_all(cfg, &file).await?;
    let sink = Sink::from_config(cfg)?;
    sink.check().await?;
    let mut failed = 0;
    for plan in plans {
        let plan = Arc::new(plan);
        plan.warn_plugins();
        sink.ensure_index(&plan.spec.index, &index_body(&plan), recreate)
            .await?;
        let summary = initial_sync(cfg, plan.clone(), sink.clone(), None).await?;
        sink.refresh(&plan.spec.index).await?;
        println!("{summary}");
        failed += summary.failed;
    }
    if failed > 0 {
        return Err(Error::new(
            crate::ErrorKind::SinkRejected,
            format!("{failed} document(s) were rejected by the search engine; each is logged above with its _id and reason"),
        ));
    }
    Ok(0)
}
