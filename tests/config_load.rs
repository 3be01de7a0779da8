//! The configuration loader through the public API, as the CLI uses it: every error names the
//! file or variable and the key, and never echoes a password.

use pgsync_rs::config::load_with;
use pgsync_rs::ErrorKind;
use std::path::Path;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn file_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A syntax error on a password line: the line itself must not be echoed.
        ("syntax.toml", "[postgres]\npassword = \"abc123\n", "line 2"),
        (
            "type.toml",
            "[pipeline]\nfetchers = \"x\"\n",
            "pipeline.fetchers",
        ),
        ("unknown.toml", "[postgres]\nportt = 1\n", "portt"),
        ("section.toml", "[elastic]\nurl = \"x\"\n", "elastic"),
        (
            "value.toml",
            "[postgres]\nsslmode = \"verify-full\"\n",
            "postgres.sslmode",
        ),
        (
            "ndjson.toml",
            "[output]\nkind = \"ndjson\"\n",
            "output.path",
        ),
    ];
    for (name, text, expect) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = load_with(Some(&p), vars(&[])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{name}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(name), "{name}: {msg}");
        assert!(msg.contains(expect), "{name}: {msg}");
        assert!(!msg.contains("abc123"), "{name}: {msg}");
    }
}

#[test]
fn env_errors_name_the_variable() {
    let e = load_with(None, vars(&[("PGSYNC_PIPELINE__WRITERS", "-1")])).unwrap_err();
    assert!(e.message.contains("PGSYNC_PIPELINE__WRITERS"), "{e}");
    let e = load_with(None, vars(&[("PG_URL", "postgres://u:pw123@h:bad/x")])).unwrap_err();
    assert!(e.message.contains("PG_URL"), "{e}");
    assert!(!e.to_string().contains("pw123"), "{e}");
    let e = load_with(Some(Path::new("missing.toml")), vars(&[])).unwrap_err();
    assert!(e.message.contains("missing.toml"), "{e}");
}

#[test]
fn redacted_toml_masks_and_warnings_are_returned() {
    let l = load_with(
        None,
        vars(&[
            ("PGSYNC_NOPE__X", "1"),
            ("PG_PASSWORD", "0"),
            ("ELASTICSEARCH_URL", "http://u:espw1@es:9200"),
        ]),
    )
    .unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("PGSYNC_NOPE__X"));
    let toml = l.config.redacted_toml();
    assert!(toml.contains("password = \"********\""), "{toml}");
    assert!(toml.contains("url = \"http://es:9200/\""), "{toml}");
    assert!(!toml.contains("espw1"), "{toml}");
    assert_eq!(l.config.postgres.password.as_ref().unwrap().expose(), "0");
}

#[test]
fn the_binary_prints_config_warnings_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, "not json").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsync"))
        .args(["validate", "--schema"])
        .arg(&schema)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .env("PGSYNC_PIPELINE__FETCHRES", "4")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PGSYNC_PIPELINE__FETCHRES") && stderr.contains("pipeline.fetchres"),
        "the ignored variable is not reported:\n{stderr}"
    );
}
