//! Splits a SQL script into the transactions psql would run in autocommit
//! mode: each statement alone, except that `BEGIN` (or `START
//! TRANSACTION`) through `COMMIT`/`END`/`ROLLBACK`/`ABORT` stays together.
//! `;` inside quotes, quoted identifiers, dollar quotes and comments does
//! not end a statement. Comments are dropped.

/// Statements in file order, each without its `;` and without comments.
pub fn statements(sql: &str) -> Vec<String> {
    let c: Vec<char> = sql.chars().collect();
    let mut out = vec![];
    let mut cur = String::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '-' && next == Some('-') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            cur.push(' ');
            continue;
        }
        if ch == '/' && next == Some('*') {
            // Block comments nest in PostgreSQL.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            cur.push(' ');
            continue;
        }
        if ch == '\'' {
            // E'...' strings take backslash escapes; '' is a quote everywhere.
            let escapes = {
                let before: String = cur.chars().rev().take(2).collect();
                let mut b = before.chars();
                matches!(b.next(), Some('E' | 'e'))
                    && !b.next().is_some_and(|p| p.is_alphanumeric() || p == '_')
            };
            cur.push(ch);
            i += 1;
            while i < c.len() {
                let d = c[i];
                cur.push(d);
                i += 1;
                if escapes && d == '\\' && i < c.len() {
                    cur.push(c[i]);
                    i += 1;
                } else if d == '\'' {
                    if c.get(i) == Some(&'\'') {
                        cur.push('\'');
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            continue;
        }
        if ch == '"' {
            cur.push(ch);
            i += 1;
            while i < c.len() {
                let d = c[i];
                cur.push(d);
                i += 1;
                if d == '"' {
                    if c.get(i) == Some(&'"') {
                        cur.push('"');
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            continue;
        }
        if ch == '$'
            && !cur
                .chars()
                .last()
                .is_some_and(|p| p.is_alphanumeric() || p == '_')
        {
            // $tag$ ... $tag$ (tag empty or an identifier without `$`).
            let mut j = i + 1;
            while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
                j += 1;
            }
            if j < c.len() && c[j] == '$' && !c.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                let tag: String = c[i..=j].iter().collect();
                let tag_chars: Vec<char> = tag.chars().collect();
                cur.push_str(&tag);
                i = j + 1;
                while i < c.len() {
                    if c[i..].starts_with(&tag_chars) {
                        cur.push_str(&tag);
                        i += tag_chars.len();
                        break;
                    }
                    cur.push(c[i]);
                    i += 1;
                }
                continue;
            }
        }
        if ch == ';' {
            let s = cur.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
            i += 1;
            continue;
        }
        cur.push(ch);
        i += 1;
    }
    let s = cur.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

fn words(stmt: &str) -> Vec<String> {
    stmt.split_whitespace()
        .take(2)
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

fn opens_transaction(stmt: &str) -> bool {
    let w = words(stmt);
    matches!(w.first().map(String::as_str), Some("BEGIN"))
        || (w.first().map(String::as_str) == Some("START")
            && w.get(1).map(String::as_str) == Some("TRANSACTION"))
}

fn closes_transaction(stmt: &str) -> bool {
    let w = words(stmt);
    matches!(
        w.first().map(String::as_str),
        Some("COMMIT" | "END" | "ROLLBACK" | "ABORT")
    ) && w.get(1).map(String::as_str) != Some("PREPARED")
}

/// The script as transactions: each a list of statements.
pub fn transactions(sql: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut block: Option<Vec<String>> = None;
    for stmt in statements(sql) {
        match block.as_mut() {
            Some(b) => {
                let done = closes_transaction(&stmt);
                b.push(stmt);
                if done {
                    out.push(block.take().unwrap());
                }
            }
            None if opens_transaction(&stmt) => block = Some(vec![stmt]),
            None => out.push(vec![stmt]),
        }
    }
    if let Some(b) = block {
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "-- a; comment\nUPDATE t SET a = 'x;y''z;' WHERE \"we;ird\" = 1;\n\
                   /* block; /* nested; */ still; */ SELECT $$a;b$$, $f$c;$$d$f$;\n\
                   SELECT E'it\\'s;', 2 -- trailing;\n;SELECT 3";
        assert_eq!(
            statements(sql),
            vec![
                "UPDATE t SET a = 'x;y''z;' WHERE \"we;ird\" = 1",
                "SELECT $$a;b$$, $f$c;$$d$f$",
                "SELECT E'it\\'s;', 2",
                "SELECT 3",
            ]
        );
    }

    #[test]
    fn begin_commit_blocks_stay_together() {
        let sql = "UPDATE a SET x = 1;\nBEGIN;\nINSERT INTO b VALUES (1);\n-- c\nINSERT INTO c VALUES (';');\nCOMMIT;\nDELETE FROM a;\nstart transaction; select 1; end;";
        assert_eq!(
            transactions(sql),
            vec![
                vec!["UPDATE a SET x = 1".to_string()],
                vec![
                    "BEGIN".into(),
                    "INSERT INTO b VALUES (1)".into(),
                    "INSERT INTO c VALUES (';')".into(),
                    "COMMIT".into()
                ],
                vec!["DELETE FROM a".into()],
                vec!["start transaction".into(), "select 1".into(), "end".into()],
            ]
        );
    }
}
