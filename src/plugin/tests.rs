//! Loading and ordering semantics, on real plugin packages written to temp dirs and run by the
//! embedded interpreter.

use super::PluginChain;
#[cfg(feature = "plugins")]
use super::PluginOutcome;
use crate::config::PluginsConfig;

/// A plugin package: `(relative path, source)` files under a new temp dir.
fn package(files: &[(&str, &str)]) -> (tempfile::TempDir, PluginsConfig) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, source) in files {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, source).unwrap();
    }
    let cfg = PluginsConfig {
        path: dir.path().to_path_buf(),
        threads: 2,
    };
    (dir, cfg)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A plugin class `name` appending its name to the document's `trail`.
fn trail_plugin(name: &str) -> String {
    format!(
        "from pgsync import plugin\n\nclass {name}(plugin.Plugin):\n    name = {name:?}\n\n    \
         def transform(self, doc, **kwargs):\n        doc['trail'] = doc.get('trail', '') + {name:?}\n        return doc\n"
    )
}

#[cfg(feature = "plugins")]
async fn run(chain: &PluginChain, docs: &[(&str, &str)]) -> Vec<PluginOutcome> {
    let docs = docs
        .iter()
        .map(|(id, json)| (id.to_string(), json.as_bytes().to_vec()))
        .collect();
    chain.apply("things", docs).await
}

#[cfg(feature = "plugins")]
fn kept(outcome: &PluginOutcome) -> serde_json::Value {
    match outcome {
        PluginOutcome::Keep(json) => serde_json::from_slice(json).expect("plugins return JSON"),
        other => panic!("expected a kept document, got {other:?}"),
    }
}

#[cfg(feature = "plugins")]
fn load_error(cfg: &PluginsConfig, list: &[&str]) -> String {
    match PluginChain::load(cfg, &names(list)) {
        Ok(chain) => panic!("loading {list:?} succeeded: {chain:?}"),
        Err(e) => e.to_string(),
    }
}

#[cfg(feature = "plugins")]
#[tokio::test]
async fn plugins_apply_in_the_schema_order_whatever_the_discovery_order() {
    let (_dir, cfg) = package(&[
        ("__init__.py", ""),
        ("a.py", &trail_plugin("Alpha")),
        ("m.py", &trail_plugin("Mid")),
        ("z.py", &trail_plugin("Zeta")),
    ]);
    let chain = PluginChain::load(&cfg, &names(&["Zeta", "Alpha"])).unwrap();
    assert_eq!(chain.names(), ["Zeta", "Alpha"]);
    let out = run(&chain, &[("1", r#"{"x": 1}"#)]).await;
    assert_eq!(
        kept(&out[0]),
        serde_json::json!({"x": 1, "trail": "ZetaAlpha"})
    );
}

#[cfg(feature = "plugins")]
#[tokio::test]
async fn plugins_in_sub_packages_are_found_and_an_imported_class_runs_once() {
    let (_dir, cfg) = package(&[
        ("__init__.py", ""),
        ("text/__init__.py", ""),
        ("text/deep/shout.py", &trail_plugin("Shout")),
        // Imports Shout: PGSync would find the class twice; it still runs once.
        ("reexport.py", "from plugins.text.deep.shout import Shout\n"),
    ]);
    let chain = PluginChain::load(&cfg, &names(&["Shout"])).unwrap();
    let out = run(&chain, &[("1", "{}")]).await;
    assert_eq!(kept(&out[0]), serde_json::json!({"trail": "Shout"}));
}

#[cfg(feature = "plugins")]
#[tokio::test]
async fn keyword_arguments_carry_the_id_and_the_index() {
    let (_dir, cfg) = package(&[(
        "ref.py",
        "from pgsync.plugin import Plugin\n\nclass Ref(Plugin):\n    name = 'Ref'\n\n    \
         def transform(self, doc, **kwargs):\n        doc['ref'] = kwargs['_index'] + '/' + kwargs['_id']\n        return doc\n",
    )]);
    let chain = PluginChain::load(&cfg, &names(&["Ref"])).unwrap();
    let out = run(&chain, &[("7", r#"{"title": "Ça va"}"#), ("8", "{}")]).await;
    assert_eq!(
        kept(&out[0]),
        serde_json::json!({"title": "Ça va", "ref": "things/7"})
    );
    assert_eq!(kept(&out[1]), serde_json::json!({"ref": "things/8"}));
}

#[cfg(feature = "plugins")]
#[tokio::test]
async fn a_falsy_return_drops_the_document_and_ends_its_chain() {
    let (_dir, cfg) = package(&[(
        "p.py",
        "from pgsync import plugin\n\n\
         class Gate(plugin.Plugin):\n    name = 'Gate'\n\n    def transform(self, doc, **kwargs):\n        return None if doc.get('hide') else doc\n\n\
         class Empty(plugin.Plugin):\n    name = 'Empty'\n\n    def transform(self, doc, **kwargs):\n        return {} if doc.get('empty') else doc\n\n\
         class Strict(plugin.Plugin):\n    name = 'Strict'\n\n    def transform(self, doc, **kwargs):\n        assert not doc.get('hide') and not doc.get('empty')\n        return doc\n",
    )]);
    let chain = PluginChain::load(&cfg, &names(&["Gate", "Empty", "Strict"])).unwrap();
    let out = run(
        &chain,
        &[
            ("1", r#"{"hide": true}"#),
            ("2", r#"{"empty": 1}"#),
            ("3", r#"{"a": 1}"#),
        ],
    )
    .await;
    assert_eq!(out[0], PluginOutcome::Drop);
    assert_eq!(out[1], PluginOutcome::Drop);
    assert_eq!(kept(&out[2]), serde_json::json!({"a": 1}));
}

#[cfg(feature = "plugins")]
#[tokio::test]
async fn an_exception_fails_only_its_document_with_the_plugin_and_the_traceback() {
    let (_dir, cfg) = package(&[(
        "boom.py",
        "from pgsync import plugin\n\nclass Boom(plugin.Plugin):\n    name = 'Boom'\n\n    \
         def transform(self, doc, **kwargs):\n        if doc['n'] == 2:\n            raise ValueError('no two')\n        return doc\n",
    )]);
    let chain = PluginChain::load(&cfg, &names(&["Boom"])).unwrap();
    let out = run(
        &chain,
        &[
            ("1", r#"{"n": 1}"#),
            ("2", r#"{"n": 2}"#),
            ("3", r#"{"n": 3}"#),
        ],
    )
    .await;
    assert_eq!(kept(&out[0]), serde_json::json!({"n": 1}));
    assert_eq!(kept(&out[2]), serde_json::json!({"n": 3}));
    let PluginOutcome::Failed { traceback } = &out[1] else {
        panic!("document 2 must fail: {:?}", out[1]);
    };
    for part in [
        "plugin Boom",
        "Traceback",
        "boom.py\", line 8",
        "ValueError: no two",
    ] {
        assert!(traceback.contains(part), "{part:?} not in:\n{traceback}");
    }
}

#[cfg(feature = "plugins")]
#[tokio::test]
async fn a_result_that_is_not_a_document_fails_and_dates_encode_as_iso_text() {
    let (_dir, cfg) = package(&[(
        "odd.py",
        "import datetime\nfrom pgsync import plugin\n\nclass Odd(plugin.Plugin):\n    name = 'Odd'\n\n    \
         def transform(self, doc, **kwargs):\n        if doc['n'] == 1:\n            return [doc]\n        \
         if doc['n'] == 2:\n            doc['when'] = datetime.date(2024, 2, 29)\n        \
         if doc['n'] == 3:\n            doc['bad'] = float('nan')\n        return doc\n",
    )]);
    let chain = PluginChain::load(&cfg, &names(&["Odd"])).unwrap();
    let out = run(
        &chain,
        &[
            ("1", r#"{"n": 1}"#),
            ("2", r#"{"n": 2}"#),
            ("3", r#"{"n": 3}"#),
        ],
    )
    .await;
    assert!(
        matches!(&out[0], PluginOutcome::Failed { traceback } if traceback.contains("returned list, expected a dict")),
        "{:?}",
        out[0]
    );
    assert_eq!(
        kept(&out[1]),
        serde_json::json!({"n": 2, "when": "2024-02-29"})
    );
    assert!(
        matches!(&out[2], PluginOutcome::Failed { traceback } if traceback.contains("Out of range float values are not JSON compliant")),
        "NaN is not JSON, the engine would reject it: {:?}",
        out[2]
    );
}

#[cfg(feature = "plugins")]
#[test]
fn a_missing_plugin_name_fails_loading_naming_it_and_the_names_found() {
    let (dir, cfg) = package(&[("a.py", &trail_plugin("Alpha"))]);
    let e = load_error(&cfg, &["Alpha", "Nope"]);
    for part in [
        r#"plugins ["Alpha", "Nope"]"#,
        "no plugin class named 'Nope'",
        "plugin names found: Alpha",
        &dir.path().display().to_string(),
    ] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }
}

#[cfg(feature = "plugins")]
#[test]
fn a_syntax_error_fails_loading_with_the_file_and_the_traceback() {
    let (_dir, cfg) = package(&[
        ("a.py", &trail_plugin("Alpha")),
        (
            "broken.py",
            "from pgsync import plugin\n\ndef oops(:\n    pass\n",
        ),
    ]);
    let e = load_error(&cfg, &["Alpha"]);
    for part in [
        "cannot import module plugins.broken",
        "broken.py",
        "line 3",
        "SyntaxError",
        r#"plugins ["Alpha"]"#,
    ] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }
}

#[cfg(feature = "plugins")]
#[test]
fn an_import_error_in_a_plugin_module_fails_loading_with_its_traceback() {
    let (_dir, cfg) = package(&[(
        "needs.py",
        "import not_installed_anywhere\nfrom pgsync import plugin\n",
    )]);
    let e = load_error(&cfg, &["Needs"]);
    for part in ["needs.py", "ModuleNotFoundError", "not_installed_anywhere"] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }
}

#[cfg(feature = "plugins")]
#[test]
fn a_plugin_without_transform_fails_loading_naming_the_class() {
    let (_dir, cfg) = package(&[(
        "lazy.py",
        "from pgsync import plugin\n\nclass Lazy(plugin.Plugin):\n    name = 'Lazy'\n",
    )]);
    let e = load_error(&cfg, &["Lazy"]);
    for part in [
        "plugin Lazy",
        "lazy.py",
        "cannot create it",
        "TypeError",
        "abstract",
    ] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }
}

#[cfg(feature = "plugins")]
#[test]
fn without_a_directory_the_package_must_be_importable() {
    let cfg = PluginsConfig {
        path: std::path::PathBuf::from("/nonexistent/pgsync-test-plugins"),
        threads: 1,
    };
    let e = load_error(&cfg, &["Alpha"]);
    for part in [
        "No module named 'plugins'",
        "/nonexistent/pgsync-test-plugins",
        "PYTHONPATH",
    ] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }
}

#[cfg(not(feature = "plugins"))]
#[test]
fn without_the_feature_loading_fails_naming_the_plugins_and_the_feature() {
    let (_dir, cfg) = package(&[("a.py", &trail_plugin("Alpha"))]);
    let e = PluginChain::load(&cfg, &names(&["Alpha"]))
        .unwrap_err()
        .to_string();
    for part in [r#"plugins ["Alpha"]"#, "cargo feature `plugins`"] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }
}

#[cfg(feature = "plugins")]
#[test]
fn an_auth_plugin_supplies_the_passwords_pgsync_asks_it_for() {
    use crate::config::{Config, Secret};
    let (_dir, plugins) = package(&[(
        "auth.py",
        "from pgsync import plugin\n\nclass Auth(plugin.Plugin):\n    name = 'Auth'\n\n    \
         def transform(self, doc, **kwargs):\n        return doc\n\n    \
         def auth(self, key):\n        if key == 'ELASTICSEARCH_PASSWORD':\n            raise KeyError(key)\n        \
         return 'from-plugin-' + key\n",
    )]);
    let mut cfg = Config {
        plugins,
        ..Default::default()
    };
    cfg.search.password = Some(Secret::new("configured"));
    cfg.checkpoint.redis_url = Some(Secret::new("redis://cache:6379/0"));
    super::apply_auth(&mut cfg).unwrap();
    let expose = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_owned());
    assert_eq!(
        expose(&cfg.postgres.password).as_deref(),
        Some("from-plugin-PG_PASSWORD")
    );
    // The plugin raised for this key: the configured value stays.
    assert_eq!(expose(&cfg.search.password).as_deref(), Some("configured"));
    assert_eq!(
        expose(&cfg.checkpoint.redis_url).as_deref(),
        Some("redis://:from-plugin-REDIS_AUTH@cache:6379/0")
    );
}

#[test]
fn a_redis_url_with_a_password_keeps_it_over_the_auth_plugin() {
    use crate::config::{Config, Secret};
    let mut cfg = Config::default();
    cfg.checkpoint.redis_url = Some(Secret::new("redis://:url-pw@cache:6379/0"));
    assert!(!super::fill_redis_password(&mut cfg, "plugin-pw"));
    assert_eq!(
        cfg.checkpoint.redis_url.unwrap().expose(),
        "redis://:url-pw@cache:6379/0"
    );
}
