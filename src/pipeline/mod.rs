//! The staged actor pipeline. Each stage is an actix actor whose input is a bounded tokio channel
//! attached as a stream and processed one message at a time (`ctx.wait`), so a slow stage stops
//! pulling and every stage before it blocks on `send().await`: memory stays bounded (actix
//! mailboxes alone do not bound it). Stages are spawned back to front so each is handed the
//! senders of its downstream stage.

pub mod bootstrap;
pub mod coalescer;
pub mod completion;
pub mod daemon;
pub mod destination;
pub mod fetcher;
pub mod in_place;
pub mod initial;
pub mod lanes;
pub mod messages;
pub mod meta;
pub mod migration;
pub mod monitor;
pub mod planner;
pub mod plugin_step;
pub mod progress;
pub mod prune;
pub mod query_builder;
pub mod replica;
pub mod stage;
pub mod streaming;
pub mod supervisor;
pub mod verify;
pub mod views;
pub mod writer;
