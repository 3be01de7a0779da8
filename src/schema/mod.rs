//! `schema.json`: parsing, validation against the database, and the resolved node tree that the
//! query builder and change capture share.

pub mod mapping;
pub mod model;
pub mod parse;
pub mod resolve;

pub use model::*;
