//! The `.env` file of the working directory, read as PGSync reads it (python-dotenv through
//! environs, `override=False`): a variable already in the environment keeps its value, a name
//! declared twice in the file takes its last value, `export NAME=...`, quotes, `#` comments and
//! `${NAME}` references work.

use crate::{Error, Result};
use std::path::Path;

/// The pairs of the `.env` file in `dir`, in file order with later declarations winning; none
/// when there is no such file. A line that does not parse is an error naming the file and line.
pub fn read_dotenv(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join(".env");
    let iter = match dotenvy::from_path_iter(&path) {
        Ok(it) => it,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![])
        }
        Err(e) => return Err(Error::config(format!("{}: {e}", path.display()))),
    };
    let mut out: Vec<(String, String)> = vec![];
    for item in iter {
        match item {
            Ok((k, v)) => {
                out.retain(|(name, _)| *name != k);
                out.push((k, v));
            }
            Err(dotenvy::Error::LineParse(line, at)) => {
                // The line may hold a password: name its start only.
                let shown: String = line.chars().take(at.min(20)).collect();
                return Err(Error::config(format!(
                    "{}: cannot parse the line starting {shown:?} (at character {at})",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::config(format!("{}: {e}", path.display()))),
        }
    }
    Ok(out)
}

/// Loads the working directory's `.env` into the process environment, as python-dotenv does for
/// PGSync (so the schema's `${VAR}` substitution sees its variables too), without overriding a
/// variable already set; returns the environment then, and a warning when the file cannot be
/// read. Call it first thing in `main`, before any thread starts: it sets variables.
pub fn environment() -> (Vec<(String, String)>, Vec<String>) {
    let mut warnings = vec![];
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    match read_dotenv(&cwd) {
        Ok(pairs) => {
            for (k, v) in pairs {
                if std::env::var_os(&k).is_none() {
                    std::env::set_var(k, v);
                }
            }
        }
        Err(e) => warnings.push(format!("{e}; the file is ignored")),
    }
    (super::process_env(), warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn dotenv_reads_quotes_exports_comments_and_last_declarations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "# PGSync settings\nPG_HOST=db\nexport PG_USER='app user'\nPG_PASSWORD=\"p#w\" # comment\n\
             REDIS_HOST=first\nREDIS_HOST=second\nPG_URL=postgres://${PG_HOST}/x\n",
        )
        .unwrap();
        let pairs: BTreeMap<_, _> = read_dotenv(dir.path()).unwrap().into_iter().collect();
        assert_eq!(pairs["PG_HOST"], "db");
        assert_eq!(pairs["PG_USER"], "app user");
        assert_eq!(pairs["PG_PASSWORD"], "p#w");
        assert_eq!(pairs["REDIS_HOST"], "second");
        assert_eq!(pairs["PG_URL"], "postgres://db/x");
    }

    #[test]
    fn missing_dotenv_is_empty_and_a_bad_line_is_named_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_dotenv(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join(".env"),
            "GOOD=1\nPG_PASSWORD secret-value\n",
        )
        .unwrap();
        let e = read_dotenv(dir.path()).unwrap_err();
        assert!(e.message.contains(".env"), "{e}");
        assert!(!e.message.contains("secret-value"), "{e}");
    }
}
