//! The identity of a table, shared by the schema, the query builder and change capture.

/// A table as PostgreSQL names it (schema and relation name, case preserved).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// Namespace, e.g. `public`.
    pub schema: String,
    /// Relation name.
    pub name: String,
}

impl TableId {
    /// Builds a table id.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}
