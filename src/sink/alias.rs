//! Aliases: the index users search is an alias over a physical index (`<index>-<n>`), so a
//! rebuild can go into a new physical index and replace the live one in one atomic `_aliases`
//! request. Also the in-place changes (an added mapping field, a dynamic setting).

use super::search::{index_path, SearchSink};
use super::{Method, Sink};
use crate::{Error, ErrorKind, Result};
use serde_json::{json, Value};

/// What a name is in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasState {
    /// Nothing by that name.
    Missing,
    /// A concrete index of that name (from PGSync, or an earlier version of this project).
    Concrete,
    /// An alias over these physical indexes.
    Alias(Vec<String>),
}

impl SearchSink {
    /// What `name` is: an alias (over which indexes), a concrete index, or nothing.
    pub async fn alias_state(&self, name: &str) -> Result<AliasState> {
        let (status, v) = self
            .json(Method::Get, &format!("/_alias/{}", name_path(name)?), None)
            .await?;
        if (200..300).contains(&status) {
            let mut over: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect();
            over.sort();
            if !over.is_empty() && !over.iter().any(|i| i == name) {
                return Ok(AliasState::Alias(over));
            }
        }
        Ok(if self.index_uuid(name).await?.is_some() {
            AliasState::Concrete
        } else {
            AliasState::Missing
        })
    }

    /// Points `alias` at `to` in one atomic request, taking it off `from` (an alias's physical
    /// indexes, or the concrete index of the alias's name, which the engine deletes).
    pub async fn swap_alias(&self, alias: &str, from: &AliasState, to: &str) -> Result<()> {
        let mut actions = vec![];
        match from {
            AliasState::Missing => {}
            AliasState::Concrete => actions.push(json!({"remove_index": {"index": alias}})),
            AliasState::Alias(over) => {
                for i in over.iter().filter(|i| *i != to) {
                    actions.push(json!({"remove": {"index": i, "alias": alias}}));
                }
            }
        }
        actions.push(json!({"add": {"index": to, "alias": alias}}));
        let body = json!({ "actions": actions });
        let (status, v) = self.json(Method::Post, "/_aliases", Some(&body)).await?;
        if (200..300).contains(&status) && v["acknowledged"] != false {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::SinkTransient,
            format!(
                "search engine at {} refused to point alias {alias} at {to}: {status} {v}",
                self.url()
            ),
        ))
    }

    /// `PUT /{index}/_mapping` with `mappings` (fields added to an index in place).
    pub async fn put_mapping(&self, index: &str, mappings: &Value) -> Result<()> {
        self.json_ok(
            Method::Put,
            &index_path(index, "/_mapping")?,
            Some(mappings),
        )
        .await
        .map(|_| ())
    }

    /// `PUT /{index}/_settings` with dynamic `settings`.
    pub async fn put_settings(&self, index: &str, settings: &Value) -> Result<()> {
        self.json_ok(
            Method::Put,
            &index_path(index, "/_settings")?,
            Some(settings),
        )
        .await
        .map(|_| ())
    }
}

/// An alias name in a path (checked like an index name).
fn name_path(name: &str) -> Result<&str> {
    index_path(name, "").map(|_| name)
}

impl Sink {
    /// What `name` is in the engine; files and discard have no aliases (always `Missing`).
    pub async fn alias_state(&self, name: &str) -> Result<AliasState> {
        match self {
            Sink::Search(s) => s.alias_state(name).await,
            _ => Ok(AliasState::Missing),
        }
    }

    /// The physical index behind `alias` (its only one), or the name itself.
    pub async fn physical_of(&self, alias: &str) -> Result<String> {
        Ok(match self.alias_state(alias).await? {
            AliasState::Alias(over) if over.len() == 1 => over[0].clone(),
            _ => alias.to_owned(),
        })
    }

    /// See [`SearchSink::swap_alias`]; nothing for files and discard.
    pub async fn swap_alias(&self, alias: &str, from: &AliasState, to: &str) -> Result<()> {
        match self {
            Sink::Search(s) => s.swap_alias(alias, from, to).await,
            _ => Ok(()),
        }
    }
}
