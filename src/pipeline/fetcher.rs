//! Document fetcher stage: runs the document query for a slice of roots (a page range in the
//! initial sync, a key set for a change) through a server-side cursor, and turns each chunk of
//! rows into NDJSON bulk actions for the writers. The document is built by PostgreSQL; here it is
//! only framed (and `_meta` folded in when asked), so this stage costs little CPU.

use super::lanes::Lanes;
use super::messages::{Completion, DocChunk, FetchRequest, RootKey};
use super::meta;
use super::plugin_step::{self, HeldDocs};
use super::progress::Stats;
use crate::schema::resolve::IndexPlan;
use crate::sink::{push_delete_action, push_index_action};
use crate::sql::document::{cols, document_query, RootFilter};
use crate::{Error, Result};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Settings a fetcher needs, shared by all fetchers of an index.
pub struct FetchSettings {
    /// The resolved index.
    pub plan: Arc<IndexPlan>,
    /// Add `_meta`.
    pub with_meta: bool,
    /// Rows per cursor round trip and per chunk.
    pub chunk_docs: usize,
    /// Bytes after which a chunk is cut early.
    pub chunk_bytes: usize,
    /// Snapshot to read the initial sync under (exported by the slot), if any.
    pub snapshot: Option<String>,
    /// Lane this fetcher writes to for key requests (change capture), so one `_id` stays on
    /// one writer; range requests go round-robin.
    pub lane: usize,
    /// The index's plugins, when its schema entry lists some.
    pub plugins: Option<Arc<crate::plugin::PluginChain>>,
}

/// The fetcher actor. Its input is a bounded channel attached as a stream.
pub struct Fetcher {
    settings: Arc<FetchSettings>,
    client: Option<Client>,
    out: Lanes<DocChunk>,
    stats: Arc<Stats>,
    errors: tokio::sync::mpsc::UnboundedSender<Error>,
    input: Option<tokio::sync::mpsc::Receiver<FetchRequest>>,
    connect: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<Client>> + Send + Sync>,
}

impl Fetcher {
    /// A fetcher reading `input`, writing to `out`, reporting fatal errors on `errors`.
    /// `connect` opens its PostgreSQL connection on the actor's own thread.
    pub fn new(
        settings: Arc<FetchSettings>,
        input: tokio::sync::mpsc::Receiver<FetchRequest>,
        out: Lanes<DocChunk>,
        stats: Arc<Stats>,
        errors: tokio::sync::mpsc::UnboundedSender<Error>,
        connect: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<Client>> + Send + Sync>,
    ) -> Self {
        Fetcher {
            settings,
            client: None,
            out,
            stats,
            errors,
            input: Some(input),
            connect,
        }
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let connect = self.connect.clone();
        let fut = async move { connect().await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(c) => {
                act.client = Some(c);
                if let Some(rx) = act.input.take() {
                    ctx.add_stream(super::lanes::ReceiverStream(rx));
                }
            }
            Err(e) => {
                let _ = act.errors.send(e);
                ctx.stop();
            }
        }));
    }
}

use futures::StreamExt;

impl StreamHandler<FetchRequest> for Fetcher {
    fn handle(&mut self, req: FetchRequest, ctx: &mut Context<Self>) {
        let Some(client) = self.client.take() else {
            return;
        };
        let settings = self.settings.clone();
        let out = self.out.clone();
        let stats = self.stats.clone();
        let fut = async move {
            let r = run_request(&client, &settings, req, &out, &stats).await;
            (client, r)
        };
        ctx.wait(fut.into_actor(self).map(|(client, r), act, ctx| {
            act.client = Some(client);
            if let Err(e) = r {
                let _ = act.errors.send(e);
                ctx.stop();
            }
        }));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

async fn run_request(
    client: &Client,
    s: &FetchSettings,
    req: FetchRequest,
    out: &Lanes<DocChunk>,
    stats: &Stats,
) -> Result<()> {
    let plan = &s.plan;
    let index = plan.spec.index.as_str();
    let pipeline = plan.spec.pipeline.as_deref();
    plugin_step::check_loaded(plan, s.plugins.as_deref())?;
    match req {
        FetchRequest::DeleteAll { completion } => {
            let chunk = DocChunk {
                completion,
                barrier: true,
                delete_all: true,
                ..Default::default()
            };
            out.send_to(s.lane % out.len(), chunk)
                .await
                .map_err(|_| Error::internal("writer stage stopped"))?;
            Ok(())
        }
        FetchRequest::Range { filter, completion } => {
            let sql = document_query(plan, &filter, s.with_meta);
            stream_documents(
                client,
                s,
                &sql,
                &[],
                None,
                out,
                stats,
                index,
                pipeline,
                completion,
            )
            .await?;
            Ok(())
        }
        FetchRequest::Keys { keys, completion } => {
            if keys.is_empty() {
                return Ok(());
            }
            let nkeys = plan.root.key.len();
            let mut params: Vec<Vec<&str>> = vec![Vec::with_capacity(keys.len()); nkeys];
            for k in &keys {
                for (i, v) in k.values.iter().enumerate().take(nkeys) {
                    params[i].push(v.as_str());
                }
            }
            let sql = document_query(plan, &RootFilter::Keys, s.with_meta);
            let mut wanted: HashMap<&str, &RootKey> =
                keys.iter().map(|k| (k.id.as_str(), k)).collect();
            stream_documents(
                client,
                s,
                &sql,
                &params,
                Some(&mut wanted),
                out,
                stats,
                index,
                pipeline,
                completion.clone(),
            )
            .await?;
            // Requested roots that no longer exist: delete their documents.
            if !wanted.is_empty() {
                let mut chunk = DocChunk {
                    completion,
                    ..Default::default()
                };
                for k in wanted.values() {
                    push_delete_action(&mut chunk.body, index, &k.id, k.routing.as_deref());
                    chunk.ids.push(k.id.clone());
                }
                stats.add_deleted(chunk.ids.len() as u64);
                out.send_to(s.lane % out.len(), chunk)
                    .await
                    .map_err(|_| Error::internal("writer stage stopped"))?;
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_documents(
    client: &Client,
    s: &FetchSettings,
    sql: &str,
    params: &[Vec<&str>],
    mut wanted: Option<&mut HashMap<&str, &RootKey>>,
    out: &Lanes<DocChunk>,
    stats: &Stats,
    index: &str,
    pipeline: Option<&str>,
    completion: Option<Completion>,
) -> Result<()> {
    let keyed = wanted.is_some();
    let begin = if s.snapshot.is_some() {
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".to_owned()
    } else {
        "BEGIN READ ONLY".to_owned()
    };
    client.batch_execute(&begin).await?;
    let result = async {
        if let Some(snap) = &s.snapshot {
            client
                .batch_execute(&format!(
                    "SET TRANSACTION SNAPSHOT {}",
                    crate::sql::quote_literal(snap)
                ))
                .await?;
        }
        let stmt = client
            .prepare(sql)
            .await
            .map_err(|e| Error::from(e).context(format!("document query for index {index}")))?;
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        // Rows stream from the statement's portal as they are produced; TCP flow control
        // stops PostgreSQL when we stop reading, so client memory stays at one chunk.
        let rows_stream = client.query_raw(&stmt, p.iter().copied()).await?;
        futures::pin_mut!(rows_stream);
        let mut chunk = DocChunk {
            completion: completion.clone(),
            ..Default::default()
        };
        let mut held = HeldDocs::default();
        while let Some(row) = rows_stream.next().await {
            let row = row?;
            let id: &str = row.get(cols::ID);
            let doc: &str = row.get(cols::DOC);
            let routing: Option<&str> = row.get(cols::ROUTING);
            if let Some(w) = wanted.as_deref_mut() {
                w.remove(id);
            }
            let with_meta;
            let source = if s.with_meta {
                let m: Option<&str> = row.get(cols::META);
                with_meta = fold_meta(doc, m, id, index)?;
                with_meta.as_slice()
            } else {
                doc.as_bytes()
            };
            if s.plugins.is_some() {
                held.push(id, routing, source);
            } else {
                push_index_action(&mut chunk.body, index, id, routing, pipeline, source);
                chunk.ids.push(id.to_owned());
            }
            if chunk.ids.len() + held.len() >= s.chunk_docs
                || chunk.body.len() + held.bytes() >= s.chunk_bytes
            {
                let full = std::mem::replace(
                    &mut chunk,
                    DocChunk {
                        completion: completion.clone(),
                        ..Default::default()
                    },
                );
                finish_chunk(out, s, keyed, full, &mut held, stats).await?;
            }
        }
        finish_chunk(out, s, keyed, chunk, &mut held, stats).await?;
        Ok::<(), Error>(())
    }
    .await;
    let end = client
        .batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    result?;
    end?;
    Ok(())
}

/// `_source` with PGSync's `_meta` folded in from the row's key triples.
fn fold_meta(doc: &str, m: Option<&str>, id: &str, index: &str) -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_str(doc)
        .map_err(|e| Error::internal(format!("document {id} of index {index}: {e}")))?;
    if let (Some(obj), Some(m)) = (v.as_object_mut(), m) {
        let triples: serde_json::Value =
            serde_json::from_str(m).map_err(|e| Error::internal(format!("_meta of {id}: {e}")))?;
        obj.insert("_meta".into(), meta::fold(&triples));
    }
    serde_json::to_vec(&v).map_err(|e| Error::internal(e.to_string()))
}

/// Runs the plugins over the documents held for `chunk` (if the index has plugins), then sends
/// it unless nothing is left in it.
async fn finish_chunk(
    out: &Lanes<DocChunk>,
    s: &FetchSettings,
    keyed: bool,
    mut chunk: DocChunk,
    held: &mut HeldDocs,
    stats: &Stats,
) -> Result<()> {
    stats.add_fetched((chunk.ids.len() + held.len()) as u64);
    if let (Some(chain), false) = (&s.plugins, held.is_empty()) {
        let spec = &s.plan.spec;
        let pipeline = spec.pipeline.as_deref();
        plugin_step::apply_plugins(chain, &spec.index, pipeline, held, &mut chunk, stats).await;
    }
    if chunk.ids.is_empty() && chunk.rejected.is_empty() {
        return Ok(());
    }
    send(out, s, keyed, chunk).await
}

async fn send(
    out: &Lanes<DocChunk>,
    s: &FetchSettings,
    keyed: bool,
    chunk: DocChunk,
) -> Result<()> {
    let r = if keyed {
        out.send_to(s.lane % out.len(), chunk).await
    } else {
        out.send_any(chunk).await
    };
    r.map_err(|_| Error::internal("writer stage stopped"))
}
