//! Query building: one statement per index that builds whole documents inside PostgreSQL, and the
//! statements that find which root documents a changed row belongs to.

pub mod document;
pub mod roots;
pub mod visibility;

/// Quotes an identifier for PostgreSQL (always quoted, so mixed case and keywords survive).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A table's schema-qualified, quoted name.
pub fn quote_table(t: &crate::schema::TableId) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

/// Quotes a string literal (standard_conforming_strings = on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_with_embedded_quotes_doubled() {
        assert_eq!(quote_ident("User\"s"), "\"User\"\"s\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
