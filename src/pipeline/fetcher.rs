//! Document fetcher stage: runs the document query for a slice of roots (a page range in the
//! initial sync, a key set for a change) and turns each chunk of rows into NDJSON bulk actions
//! for the writers. The document is built by PostgreSQL; here it is only framed (and `_meta`
//! folded in when asked), so this stage costs little CPU.
//!
//! Each request reads in one REPEATABLE READ transaction whose first statement takes the
//! server's WAL insert position: every transaction the snapshot sees committed below it, so it
//! is the external version of every action the request produces (see the README's "Failure
//! handling"). A request settles its completion only once every chunk is handed on; a failed or
//! panicking request leaves it unsettled, so its work is never checkpointed.

use super::lanes::{Lanes, ReceiverStream};
use super::messages::{Completion, DocChunk, FetchRequest, RootKey};
use super::meta;
use super::plugin_step::{self, HeldDocs};
use super::progress::Stats;
use super::replica::ReplicaGate;
use super::stage::{Connector, Errors, StageGuard};
use crate::schema::resolve::IndexPlan;
use crate::sink::{push_delete_action, push_index_action, DocRef, Target};
use crate::sql::document::{
    cols, document_query, existing_ids_query, key_values_of_id, RootFilter,
};
use crate::{Error, Result};
use actix::prelude::*;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// The first statement of every fetch: the WAL insert position, read after the snapshot is
/// taken, as a decimal number; on a read replica, the position it has replayed (what its
/// snapshot sees, on the same scale).
const VERSION_SQL: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
     ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn)::text";

/// Settings a fetcher needs, shared by all fetchers of an index.
pub struct FetchSettings {
    /// The resolved index.
    pub plan: Arc<IndexPlan>,
    /// Add `_meta`.
    pub with_meta: bool,
    /// Rows per chunk.
    pub chunk_docs: usize,
    /// Bytes after which a chunk is cut early.
    pub chunk_bytes: usize,
    /// Lane this fetcher writes to for key requests (change capture), so one `_id` stays on
    /// one writer; range requests go round-robin.
    pub lane: usize,
    /// The index's plugins, when its schema entry lists some.
    pub plugins: Option<Arc<crate::plugin::PluginChain>>,
    /// The physical index the actions address.
    pub physical: Arc<str>,
    /// When documents are read on a read replica: the primary's connector, and whether request
    /// positions are commit LSNs (wal mode). Each fetch waits for the replica first.
    pub replica_of: Option<(Connector, bool)>,
}

/// The fetcher actor. Its input is a bounded channel attached as a stream.
pub struct Fetcher {
    settings: Arc<FetchSettings>,
    conn: Option<Conn>,
    out: Lanes<DocChunk>,
    stats: Arc<Stats>,
    errors: Errors,
    input: Option<tokio::sync::mpsc::Receiver<FetchRequest>>,
    connect: Connector,
    guard: StageGuard,
}

/// A fetcher's connection and the document statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Waits for the read replica `client` is connected to.
    gate: Option<ReplicaGate>,
}

impl Fetcher {
    /// A fetcher reading `input`, writing to `out`, reporting failures on `errors`. `connect`
    /// opens its PostgreSQL connection on the actor's own thread.
    pub fn new(
        settings: Arc<FetchSettings>,
        input: tokio::sync::mpsc::Receiver<FetchRequest>,
        out: Lanes<DocChunk>,
        stats: Arc<Stats>,
        errors: Errors,
        connect: Connector,
    ) -> Self {
        let guard = StageGuard::new(
            format!(
                "fetcher {} of index {}",
                settings.lane + 1,
                settings.plan.spec.index
            ),
            errors.clone(),
        );
        Fetcher {
            settings,
            conn: None,
            out,
            stats,
            errors,
            input: Some(input),
            connect,
            guard,
        }
    }

    fn fail(&mut self, e: Error, ctx: &mut Context<Self>) {
        let _ = self.errors.send(e.context(self.guard.name().to_owned()));
        self.guard.finish();
        ctx.stop();
    }
}

impl Actor for Fetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let connect = self.connect.clone();
        ctx.wait(
            async move { connect().await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(client) => {
                        let gate = act
                            .settings
                            .replica_of
                            .clone()
                            .map(|(primary, lsns)| ReplicaGate::new(primary, lsns));
                        act.conn = Some(Conn {
                            client,
                            statements: HashMap::new(),
                            gate,
                        });
                        if let Some(rx) = act.input.take() {
                            ctx.add_stream(ReceiverStream(rx));
                        }
                    }
                    Err(e) => act.fail(e, ctx),
                }),
        );
    }
}

impl StreamHandler<FetchRequest> for Fetcher {
    fn handle(&mut self, req: FetchRequest, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let run = Request {
            s: self.settings.clone(),
            out: self.out.clone(),
            stats: self.stats.clone(),
        };
        let index = &self.settings.plan.spec.index;
        let span = super::stage::stage_span("fetcher", index);
        let busy = metrics::histogram!(crate::telemetry::names::BUSY,
            "index" => index.clone(), "stage" => "fetcher");
        let fut = async move {
            let started = std::time::Instant::now();
            let r = run.run(&mut conn, req).await;
            busy.record(started.elapsed().as_secs_f64());
            (conn, r)
        };
        let fut = tracing::Instrument::instrument(fut, span);
        ctx.wait(fut.into_actor(self).map(|(conn, r), act, ctx| {
            act.conn = Some(conn);
            if let Err(e) = r {
                act.fail(e, ctx);
            }
        }));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.guard.finish();
        ctx.stop();
    }
}

/// One request's view of the stage.
struct Request {
    s: Arc<FetchSettings>,
    out: Lanes<DocChunk>,
    stats: Arc<Stats>,
}

/// The chunk being filled, and what each of its documents answers to.
struct ChunkBuilder<'a> {
    chunk: DocChunk,
    index: &'a str,
    version: u64,
    position: Option<u64>,
    completion: Option<Completion>,
}

impl ChunkBuilder<'_> {
    /// The chunk filled so far, ready to send with its own part of the completion; an empty
    /// chunk is never sent, so it takes no part.
    fn take(&mut self) -> DocChunk {
        let mut c = std::mem::take(&mut self.chunk);
        c.position = self.position;
        c.completion = self.completion.clone();
        c
    }

    /// Appends an index action for a document, versioned like everything in this snapshot.
    fn index(&mut self, id: &str, routing: Option<&str>, pipeline: Option<&str>, src: &[u8]) {
        let t = Target::new(self.index, id)
            .routing(routing)
            .version(Some(self.version));
        push_index_action(&mut self.chunk.body, t, pipeline, src);
        self.chunk.ids.push(id.to_owned());
    }

    /// Appends a versioned delete action.
    fn delete(&mut self, id: &str, routing: Option<&str>) {
        let t = Target::new(self.index, id)
            .routing(routing)
            .version(Some(self.version));
        push_delete_action(&mut self.chunk.body, t);
        self.chunk.ids.push(id.to_owned());
    }
}

impl Request {
    async fn run(&self, conn: &mut Conn, req: FetchRequest) -> Result<()> {
        crate::fault::check(match &req {
            FetchRequest::Keys { .. } => "fetch-keys",
            _ => "fetch-range",
        })?;
        plugin_step::check_loaded(&self.s.plan, self.s.plugins.as_deref())?;
        if let Some(gate) = conn.gate.as_mut() {
            match &req {
                FetchRequest::DeleteAll { .. } => {}
                FetchRequest::Keys { position, .. } => {
                    gate.wait(&conn.client, Some(*position)).await?
                }
                _ => gate.wait(&conn.client, None).await?,
            }
        }
        match req {
            FetchRequest::DeleteAll { completion } => {
                let chunk = DocChunk {
                    completion,
                    barrier: true,
                    delete_all: true,
                    ..Default::default()
                };
                self.send(chunk, true).await
            }
            FetchRequest::Range { filter, completion } => {
                let sql = document_query(&self.s.plan, &filter, self.s.with_meta);
                self.read(conn, &sql, &[], None, None, completion).await
            }
            FetchRequest::Keys {
                keys,
                position,
                completion,
            } => self.rebuild(conn, keys, position, completion).await,
            FetchRequest::Prune { docs, completion } => {
                begin_snapshot(conn).await?;
                let r = self.prune(conn, docs, completion).await;
                end_snapshot(conn, r).await
            }
        }
    }

    /// Deletes the documents among `docs` whose root row does not exist in this snapshot,
    /// versioned like everything read in it (a document rebuilt from a later snapshot wins).
    async fn prune(
        &self,
        conn: &mut Conn,
        docs: Vec<DocRef>,
        completion: Option<Completion>,
    ) -> Result<()> {
        let index = self.s.plan.spec.index.as_str();
        let version = snapshot_version(&conn.client).await?;
        let present = existing_ids(conn, &self.s.plan, &docs).await?;
        let mut b = ChunkBuilder {
            chunk: DocChunk::default(),
            index,
            version,
            position: None,
            completion,
        };
        for d in docs.iter().filter(|d| !present.contains(&d.id)) {
            b.delete(&d.id, d.routing.as_deref());
            self.stats.add_deleted(1);
        }
        if !b.chunk.ids.is_empty() {
            let chunk = b.take();
            self.send(chunk, true).await?;
        }
        if let Some(c) = b.completion.take() {
            c.done();
        }
        Ok(())
    }

    /// Rebuilds `keys`; a root that no longer exists is deleted (with every routing it may have
    /// been indexed with).
    async fn rebuild(
        &self,
        conn: &mut Conn,
        keys: Vec<RootKey>,
        position: u64,
        completion: Option<Completion>,
    ) -> Result<()> {
        let nkeys = self.s.plan.root.key.len();
        let mut params: Vec<Vec<&str>> = vec![Vec::with_capacity(keys.len()); nkeys];
        for k in &keys {
            for (i, v) in k.values.iter().enumerate().take(nkeys) {
                params[i].push(v.as_str());
            }
        }
        let sql = document_query(&self.s.plan, &RootFilter::Keys, self.s.with_meta);
        let mut wanted: HashMap<&str, &RootKey> = keys.iter().map(|k| (k.id.as_str(), k)).collect();
        self.read(
            conn,
            &sql,
            &params,
            Some(&mut wanted),
            Some(position),
            completion,
        )
        .await
    }

    /// Streams the documents of `sql` into chunks, in one snapshot with one version.
    async fn read(
        &self,
        conn: &mut Conn,
        sql: &str,
        params: &[Vec<&str>],
        wanted: Option<&mut HashMap<&str, &RootKey>>,
        position: Option<u64>,
        completion: Option<Completion>,
    ) -> Result<()> {
        begin_snapshot(conn).await?;
        let result = self
            .read_in_snapshot(conn, sql, params, wanted, position, completion)
            .await;
        end_snapshot(conn, result).await
    }

    async fn read_in_snapshot(
        &self,
        conn: &mut Conn,
        sql: &str,
        params: &[Vec<&str>],
        mut wanted: Option<&mut HashMap<&str, &RootKey>>,
        position: Option<u64>,
        completion: Option<Completion>,
    ) -> Result<()> {
        let index = &*self.s.physical;
        let version = snapshot_version(&conn.client).await?;
        let stmt = prepared(conn, sql, index).await?;
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        // Rows stream from the statement's portal as they are produced; TCP flow control
        // stops PostgreSQL when we stop reading, so client memory stays at one chunk.
        let rows = conn.client.query_raw(&stmt, p.iter().copied()).await?;
        futures::pin_mut!(rows);
        let keyed = wanted.is_some();
        let mut b = ChunkBuilder {
            chunk: DocChunk::default(),
            index,
            version,
            position,
            completion,
        };
        let mut held = HeldDocs::default();
        while let Some(row) = rows.next().await {
            let row = row?;
            let id: &str = row.get(cols::ID);
            let routing: Option<&str> = row.get(cols::ROUTING);
            if let Some(k) = wanted.as_deref_mut().and_then(|w| w.remove(id)) {
                self.delete_moved(&mut b, k, routing);
            }
            self.push_document(&mut b, &mut held, &row, id, routing)?;
            if b.chunk.ids.len() + held.len() >= self.s.chunk_docs
                || b.chunk.body.len() + held.bytes() >= self.s.chunk_bytes
            {
                self.flush_chunk(&mut b, &mut held, keyed).await?;
            }
        }
        if let Some(w) = wanted {
            self.delete_missing(&mut b, w);
        }
        self.flush_chunk(&mut b, &mut held, keyed).await?;
        if let Some(c) = b.completion.take() {
            c.done();
        }
        Ok(())
    }

    /// Frames one document row as an index action, or holds it for the plugins.
    fn push_document(
        &self,
        b: &mut ChunkBuilder<'_>,
        held: &mut HeldDocs,
        row: &tokio_postgres::Row,
        id: &str,
        routing: Option<&str>,
    ) -> Result<()> {
        let doc: &str = row.get(cols::DOC);
        let pipeline = self.s.plan.spec.pipeline.as_deref();
        let folded;
        let source = if self.s.with_meta {
            folded = with_meta(doc, row.get(cols::META), id, b.index)?;
            folded.as_slice()
        } else {
            doc.as_bytes()
        };
        if self.s.plugins.is_some() {
            held.push(id, routing, source);
        } else {
            b.index(id, routing, pipeline, source);
        }
        Ok(())
    }

    /// Runs the plugins over the held documents (if the index has plugins), frames what they
    /// keep, and sends the chunk unless nothing is in it.
    async fn flush_chunk(
        &self,
        b: &mut ChunkBuilder<'_>,
        held: &mut HeldDocs,
        keyed: bool,
    ) -> Result<()> {
        self.stats
            .add_fetched((b.chunk.ids.len() + held.len()) as u64);
        if let (Some(chain), false) = (&self.s.plugins, held.is_empty()) {
            let alias = self.s.plan.spec.index.as_str();
            let (kept, refused) = plugin_step::apply_plugins(chain, alias, held, &self.stats).await;
            let pipeline = self.s.plan.spec.pipeline.as_deref();
            for k in kept {
                b.index(&k.id, k.routing.as_deref(), pipeline, &k.source);
            }
            b.chunk.refused.extend(refused);
        }
        if b.chunk.ids.is_empty() && b.chunk.refused.is_empty() {
            return Ok(());
        }
        let chunk = b.take();
        self.send(chunk, keyed).await
    }

    /// A document whose routing changed is deleted where it was indexed before.
    fn delete_moved(&self, b: &mut ChunkBuilder<'_>, k: &RootKey, now: Option<&str>) {
        for old in k.routings.iter().filter(|r| Some(r.as_str()) != now) {
            b.delete(&k.id, Some(old));
        }
    }

    /// Requested roots that no longer exist: delete their documents.
    fn delete_missing(&self, b: &mut ChunkBuilder<'_>, wanted: &HashMap<&str, &RootKey>) {
        for k in wanted.values() {
            if k.routings.is_empty() {
                b.delete(&k.id, None);
            }
            for r in &k.routings {
                b.delete(&k.id, Some(r));
            }
            self.stats.add_deleted(1);
        }
    }

    async fn send(&self, chunk: DocChunk, keyed: bool) -> Result<()> {
        let r = if keyed {
            self.out.send_to(self.s.lane % self.out.len(), chunk).await
        } else {
            self.out.send_any(chunk).await
        };
        r.map_err(|_| Error::stage("the writer stage stopped"))
    }
}

/// Starts the read-only snapshot a request reads in.
async fn begin_snapshot(conn: &mut Conn) -> Result<()> {
    conn.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    Ok(())
}

/// Ends the snapshot: commits after `result` succeeded, rolls back otherwise.
async fn end_snapshot(conn: &mut Conn, result: Result<()>) -> Result<()> {
    let end = conn
        .client
        .batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    result?;
    end?;
    Ok(())
}

/// The `_id`s among `docs` whose root row exists: looked up by key values, or by `_id` text for
/// ids that do not split into key values or whose values the key's type refuses (a document the
/// index holds that this index never made).
async fn existing_ids(
    conn: &mut Conn,
    plan: &IndexPlan,
    docs: &[DocRef],
) -> Result<HashSet<String>> {
    let index = plan.spec.index.as_str();
    let nkeys = plan.root.key.len();
    let mut params: Vec<Vec<String>> = vec![vec![]; nkeys];
    let mut odd: Vec<String> = vec![];
    for d in docs {
        match key_values_of_id(&plan.root, &d.id) {
            Some(vals) => vals
                .into_iter()
                .zip(params.iter_mut())
                .for_each(|(v, p)| p.push(v)),
            None => odd.push(d.id.clone()),
        }
    }
    let mut found = HashSet::new();
    if !params[0].is_empty() {
        let stmt = prepared(conn, &existing_ids_query(plan, false), index).await?;
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        conn.client.batch_execute("SAVEPOINT prune").await?;
        match conn.client.query(&stmt, &p).await {
            Ok(rows) => found.extend(rows.iter().map(|r| r.get::<_, String>(0))),
            Err(e) if e.code() == Some(&SqlState::INVALID_TEXT_REPRESENTATION) => {
                conn.client
                    .batch_execute("ROLLBACK TO SAVEPOINT prune")
                    .await?;
                odd.extend(docs.iter().map(|d| d.id.clone()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !odd.is_empty() {
        let stmt = prepared(conn, &existing_ids_query(plan, true), index).await?;
        let rows = conn.client.query(&stmt, &[&odd]).await?;
        found.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(found)
}

/// The version of everything read in the current snapshot (see the module docs).
async fn snapshot_version(client: &Client) -> Result<u64> {
    let text: String = client.query_one(VERSION_SQL, &[]).await?.get(0);
    text.parse()
        .map_err(|_| Error::internal(format!("unexpected WAL position {text:?}")))
}

/// The statement for `sql`, prepared once per connection.
async fn prepared(conn: &mut Conn, sql: &str, index: &str) -> Result<Statement> {
    if let Some(s) = conn.statements.get(sql) {
        return Ok(s.clone());
    }
    let s = conn
        .client
        .prepare(sql)
        .await
        .map_err(|e| Error::from(e).context(format!("document query for index {index}")))?;
    conn.statements.insert(sql.to_owned(), s.clone());
    Ok(s)
}

/// The document with PGSync's `_meta` folded in from the query's triples.
fn with_meta(doc: &str, triples: Option<&str>, id: &str, index: &str) -> Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_str(doc)
        .map_err(|e| Error::internal(format!("document {id} of index {index}: {e}")))?;
    if let (Some(obj), Some(m)) = (v.as_object_mut(), triples) {
        let triples: serde_json::Value =
            serde_json::from_str(m).map_err(|e| Error::internal(format!("_meta of {id}: {e}")))?;
        obj.insert("_meta".into(), meta::fold(&triples));
    }
    serde_json::to_vec(&v).map_err(|e| Error::internal(e.to_string()))
}
