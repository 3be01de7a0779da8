//! Parses `schema.json` into [`SchemaFile`], reporting every problem with its JSON path.
