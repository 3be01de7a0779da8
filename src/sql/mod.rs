//! Query building: one statement per index that builds whole documents inside PostgreSQL.
