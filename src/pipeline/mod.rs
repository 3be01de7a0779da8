//! The staged actor pipeline. Stages are spawned back to front so each is handed the bounded
//! sender of its downstream stage.

pub mod messages;
