//! `schema.json`: parsing, validation against the database, and the resolved node tree that the
//! query builder and change capture share.

pub mod fingerprint;
pub mod mapping;
pub mod model;
pub mod parse;
pub mod resolve;
mod table;
pub mod view;

pub use model::*;
pub use table::TableId;

use crate::config::{self, Config};
use crate::{Error, Result};

/// Reads schema.json named by the configuration; what PGSync would ignore is logged as a
/// warning (see [`SchemaFile::warnings`]).
pub fn load(cfg: &Config) -> Result<SchemaFile> {
    let file = parse::parse_file(&cfg.schema.path).map_err(Error::from)?;
    for w in &file.warnings {
        tracing::warn!("{}: {w}", file.path.display());
    }
    Ok(file)
}

/// `validate --strict`: what PGSync ignores is an error too.
pub fn strict(file: &SchemaFile) -> Result<()> {
    if file.warnings.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "{} problem(s) in {} (--strict: PGSync would ignore them; remove or fix them):",
        file.warnings.len(),
        file.path.display()
    );
    for w in &file.warnings {
        msg.push_str(&format!("\n  {}: {w}", file.path.display()));
    }
    Err(Error::schema(msg))
}

/// Resolves every index of the schema against its database, reporting every problem at once.
pub async fn resolve_all(cfg: &Config, file: &SchemaFile) -> Result<Vec<resolve::IndexPlan>> {
    let mut by_db: Vec<(String, Vec<usize>)> = vec![];
    for (i, spec) in file.indices.iter().enumerate() {
        match by_db.iter_mut().find(|(d, _)| *d == spec.database) {
            Some((_, v)) => v.push(i),
            None => by_db.push((spec.database.clone(), vec![i])),
        }
    }
    let mut plans = vec![];
    let mut problems = vec![];
    for (db, idxs) in by_db {
        let client = config::connect(cfg, &db).await?;
        let sub = SchemaFile {
            path: file.path.clone(),
            indices: idxs.iter().map(|&i| file.indices[i].clone()).collect(),
            warnings: vec![],
        };
        let catalog = resolve::Catalog::load(&client, &resolve::schemas_of(&sub)).await?;
        match resolve::resolve(&sub, &catalog) {
            Ok(mut p) => {
                problems.extend(view::load(&client, &mut p).await?);
                plans.extend(p);
            }
            Err(p) => problems.extend(p),
        }
    }
    if !problems.is_empty() {
        let mut msg = format!("{} problem(s) in {}:", problems.len(), file.path.display());
        for p in &problems {
            msg.push_str(&format!("\n  {}: {p}", file.path.display()));
        }
        return Err(Error::schema(msg));
    }
    Ok(plans)
}
