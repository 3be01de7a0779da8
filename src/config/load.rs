//! Loading from defaults, file and environment.
//!
//! Layers, lowest first: [`Config::default`], libpq's TLS variables (`PGSSLMODE`, ..., defaults
//! under any explicit setting, as in libpq), the TOML file, PGSync's own environment variables
//! (`PG_HOST`, `ELASTICSEARCH_URL`, …, so an existing PGSync deployment works unchanged; see
//! `pgsync_env`), then `PGSYNC_SECTION__KEY` variables. Environment values are never type-guessed
//! for text fields: `PG_PASSWORD=007` stays the string `007`.

use super::pgsync_env::{libpq_layer, pgsync_layer};
use super::tls::{SslMode, SSLMODES};
use super::{CheckpointStore, Config, Secret};
use crate::{Error, Result};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Name of the metadata of the PGSync-variable layer; errors print the variable's own name.
pub(super) const PGSYNC_VARS: &str = "PGSync environment variable";
/// Name of the metadata of the libpq-variable layer.
pub(super) const LIBPQ_VARS: &str = "libpq environment variable";
/// Name of the metadata of the `PGSYNC_SECTION__KEY` layer.
const SECTION_VARS: &str = "environment variable";
/// Prefix of the section-override variables.
const PREFIX: &str = "PGSYNC_";

/// A loaded configuration plus warnings (ignored variables and the like) that the caller prints
/// once logging is set up — loading happens before the log level is known.
#[derive(Debug)]
pub struct Loaded {
    /// The merged, validated configuration.
    pub config: Config,
    /// Human-readable warnings, e.g. an unknown `PGSYNC_FOO__BAR` variable that was ignored.
    pub warnings: Vec<String>,
}

/// Loads the configuration: defaults, then `path` if given, then the process environment.
/// Warnings are emitted through `tracing`; use [`load_with`] to get them back instead.
pub fn load(path: Option<&Path>) -> Result<Config> {
    let loaded = load_with(path, process_env())?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.config)
}

/// Loads the configuration with an explicit environment (name, value pairs), so callers and tests
/// do not have to mutate the process environment. Empty values count as unset.
pub fn load_with<I>(path: Option<&Path>, env: I) -> Result<Loaded>
where
    I: IntoIterator<Item = (String, String)>,
{
    let env: BTreeMap<String, String> = env.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let mut warnings = Vec::new();

    let mut fig = Figment::from(Serialized::defaults(Config::default())).merge(libpq_layer(&env));
    if let Some(p) = path {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(Error::config(format!(
                    "configuration file {} is not a regular file",
                    p.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::config(format!(
                    "configuration file {} not found",
                    p.display()
                ))
                .with_hint(
                    "pass an existing file (see config/pgsync.example.toml), or none to use defaults and environment variables",
                ))
            }
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read configuration file {}: {e}",
                    p.display()
                )))
            }
        }
        fig = fig.merge(Toml::file_exact(p));
    }
    let (pgsync, unused) = pgsync_layer(&env)?;
    fig = fig.merge(pgsync);
    fig = fig.merge(section_layer(&env, &mut warnings));
    warnings.extend(unused.warning());

    let mut config: Config = fig.extract().map_err(figment_error)?;
    validate(&mut config, &fig, &mut warnings)?;
    Ok(Loaded { config, warnings })
}

/// The process environment as UTF-8 pairs for [`load_with`]; a non-UTF-8 variable cannot be one
/// of ours.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// One environment layer: values keyed by `(section, key)`, each remembering the variable that
/// set it so errors can name the variable rather than a dotted path.
pub(super) struct EnvLayer {
    name: &'static str,
    values: BTreeMap<(String, String), (Value, String)>,
}

impl EnvLayer {
    pub(super) fn new(name: &'static str) -> Self {
        EnvLayer {
            name,
            values: BTreeMap::new(),
        }
    }

    pub(super) fn set(&mut self, section: &str, key: &str, value: impl Into<Value>, var: &str) {
        self.values.insert(
            (section.to_owned(), key.to_owned()),
            (value.into(), var.to_owned()),
        );
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let names: Arc<BTreeMap<String, String>> = Arc::new(
            self.values
                .iter()
                .map(|((s, k), (_, var))| (format!("{s}.{k}"), var.clone()))
                .collect(),
        );
        Metadata::named(self.name).interpolater(move |_: &Profile, keys: &[&str]| {
            let k = keys.join(".");
            names.get(&k).cloned().unwrap_or(k)
        })
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut sections: BTreeMap<String, Dict> = BTreeMap::new();
        for ((s, k), (v, _)) in &self.values {
            sections
                .entry(s.clone())
                .or_default()
                .insert(k.clone(), v.clone());
        }
        let dict: Dict = sections
            .into_iter()
            .map(|(s, d)| (s, Value::from(d)))
            .collect();
        let mut map = Map::new();
        map.insert(Profile::Default, dict);
        Ok(map)
    }
}

pub(super) fn parse_port(var: &str, v: &str) -> Result<u16> {
    v.trim().parse::<u16>().map_err(|_| {
        Error::config(format!(
            "environment variable {var} = {v:?} is not a port number (1-65535)"
        ))
    })
}

pub(super) fn parse_bool(var: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "0" | "no" | "n" | "off" => Ok(false),
        _ => Err(Error::config(format!(
            "environment variable {var} = {v:?} is not a boolean (true/false)"
        ))),
    }
}

/// How a known key's environment value is read.
#[derive(Clone, Copy)]
enum KeyKind {
    /// Strings, enums, paths, secrets and optional ones (all optional keys are text): raw.
    Text,
    /// Numbers and booleans: type-parsed by figment.
    Typed,
}

/// Every `section.key` the configuration knows, from the defaults, so the list cannot drift.
fn known_keys() -> BTreeMap<(String, String), KeyKind> {
    let mut out = BTreeMap::new();
    let v = serde_json::to_value(Config::default()).expect("defaults serialize");
    for (section, keys) in v.as_object().into_iter().flatten() {
        for (key, value) in keys.as_object().into_iter().flatten() {
            let kind = match value {
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => KeyKind::Typed,
                _ => KeyKind::Text,
            };
            out.insert((section.clone(), key.clone()), kind);
        }
    }
    out
}

/// `PGSYNC_SECTION__KEY` overrides. Only known keys are taken; an unknown `PGSYNC_A__B` is
/// ignored with a warning (a stray variable must not stop the service), and a `PGSYNC_X`
/// without `__` is left alone entirely (it may be a CLI flag's variable such as `PGSYNC_CONFIG`).
fn section_layer(env: &BTreeMap<String, String>, warnings: &mut Vec<String>) -> EnvLayer {
    let known = known_keys();
    let mut l = EnvLayer::new(SECTION_VARS);
    for (name, raw) in env {
        if name.len() < PREFIX.len() || !name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            continue;
        }
        let rest = &name[PREFIX.len()..];
        if !rest.contains("__") {
            continue;
        }
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let kind = match parts.as_slice() {
            [s, k] => known.get(&(s.clone(), k.clone())).copied(),
            _ => None,
        };
        let Some(kind) = kind else {
            warnings.push(format!(
                "ignoring environment variable {name}: no such configuration key `{}` (see config/pgsync.example.toml)",
                parts.join(".")
            ));
            continue;
        };
        let value = match kind {
            KeyKind::Text => Value::from(raw.clone()),
            KeyKind::Typed => raw.parse::<Value>().unwrap_or_else(|e| match e {}),
        };
        l.set(&parts[0], &parts[1], value, name);
    }
    l
}

/// Turns figment's errors into one config error naming the file or variable and the key. Source
/// snippets of TOML syntax errors are dropped: the offending line may hold a password.
fn figment_error(e: figment::Error) -> Error {
    let mut lines = Vec::new();
    for e in e {
        let key = e.path.join(".");
        let kind = e
            .kind
            .to_string()
            .lines()
            .filter(|l| !l.trim_start().starts_with('|') && !l.contains(" | "))
            .collect::<Vec<_>>()
            .join(" ");
        let line = match &e.metadata {
            Some(md) if is_env_layer(md) => {
                let profile = e.profile.clone().unwrap_or_default();
                let var = md.interpolate(&profile, &e.path);
                format!("environment variable {var} (key `{key}`): {kind}")
            }
            Some(Metadata {
                source: Some(figment::Source::File(p)),
                ..
            }) if key.is_empty() => format!("configuration file {}: {kind}", p.display()),
            Some(Metadata {
                source: Some(figment::Source::File(p)),
                ..
            }) => format!("configuration file {}: key `{key}`: {kind}", p.display()),
            _ if key.is_empty() => format!("configuration: {kind}"),
            _ => format!("configuration key `{key}`: {kind}"),
        };
        lines.push(line);
    }
    Error::config(lines.join("\n"))
}

fn is_env_layer(md: &Metadata) -> bool {
    [PGSYNC_VARS, SECTION_VARS, LIBPQ_VARS].contains(&md.name.as_ref())
}

/// Where a key's value came from, for validation messages: `` `postgres.sslmode` (from PG_SSLMODE) ``.
fn origin(fig: &Figment, key: &str) -> String {
    let Some(md) = fig.find_metadata(key) else {
        return format!("`{key}`");
    };
    let path: Vec<&str> = key.split('.').collect();
    if is_env_layer(md) {
        format!(
            "`{key}` (from environment variable {})",
            md.interpolate(&Profile::Default, &path)
        )
    } else if let Some(figment::Source::File(p)) = &md.source {
        format!("`{key}` (in {})", p.display())
    } else {
        format!("`{key}` (default)")
    }
}

/// Checks and normalizes what serde cannot: allowed values, required companions, credentials
/// moved out of `search.url` so that no plain-text field ever carries a password.
fn validate(cfg: &mut Config, fig: &Figment, warnings: &mut Vec<String>) -> Result<()> {
    let bad = |key: &str, what: String| Error::config(format!("{} {what}", origin(fig, key)));

    validate_postgres(cfg, fig)?;

    validate_search(cfg, fig, warnings)?;
    if cfg.search.password.as_ref().is_some_and(Secret::is_empty) {
        cfg.search.password = None;
    }
    if cfg.search.api_key.as_ref().is_some_and(Secret::is_empty) {
        cfg.search.api_key = None;
    }
    if cfg.search.api_key.is_some() && cfg.search.username.is_some() {
        warnings.push(
            "both search.api_key and search.username are set; the API key is used".to_owned(),
        );
    }
    if cfg.search.insecure_skip_verify && cfg.search.ca_cert.is_some() {
        warnings.push(
            "search.insecure_skip_verify is set: search.ca_cert is ignored and certificates are not checked"
                .to_owned(),
        );
    }

    // Output and checkpoints.
    if let Some((key, problem)) = cfg.output.problem() {
        return Err(bad(key, problem));
    }
    if cfg.checkpoint.store == CheckpointStore::Redis && cfg.checkpoint.redis_url.is_none() {
        return Err(bad(
            "checkpoint.store",
            "= \"redis\" needs checkpoint.redis_url (or REDIS_URL)".to_owned(),
        ));
    }

    // Sizes that must be positive, or the pipeline would stall.
    let p = &cfg.pipeline;
    for (key, v) in [
        ("pipeline.fetchers", p.fetchers),
        ("pipeline.writers", p.writers),
        ("pipeline.requests_in_flight", p.requests_in_flight),
        ("pipeline.channel_capacity", p.channel_capacity),
        ("pipeline.fetch_chunk", p.fetch_chunk),
        ("pipeline.batch_docs", p.batch_docs),
        ("pipeline.batch_bytes", p.batch_bytes),
        ("pipeline.ranges_per_fetcher", p.ranges_per_fetcher),
        (
            "capture.coalesce_max_changes",
            cfg.capture.coalesce_max_changes,
        ),
        ("capture.queue_depth", cfg.capture.queue_depth),
    ] {
        if v == 0 {
            return Err(bad(key, "must be at least 1".to_owned()));
        }
    }
    let prefix = &cfg.capture.slot_prefix;
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad(
            "capture.slot_prefix",
            format!(
                "= {prefix:?} must be non-empty lowercase letters, digits and underscores (it names replication slots)"
            ),
        ));
    }

    // Logging.
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        return Err(bad(
            "log.level",
            format!("= {:?} is not a valid log filter: {e}", cfg.log.level),
        ));
    }
    Ok(())
}

/// The search URL (each node of a comma-separated list): http(s), credentials moved out.
fn validate_search(cfg: &mut Config, fig: &Figment, warnings: &mut Vec<String>) -> Result<()> {
    let bad = |key: &str, what: String| Error::config(format!("{} {what}", origin(fig, key)));
    let mut nodes = vec![];
    for part in cfg.search.url.split(',').map(str::trim) {
        if part.is_empty() && cfg.search.url.contains(',') {
            continue;
        }
        let mut url = url::Url::parse(part).map_err(|e| {
            bad(
                "search.url",
                format!(
                    "= {:?} is not a valid URL: {e}",
                    super::secret::mask_url(&cfg.search.url)
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "search.url",
                format!(
                    "= {:?} must start with http:// or https://",
                    super::secret::mask_url(&cfg.search.url)
                ),
            ));
        }
        let had_credentials = !url.username().is_empty() || url.password().is_some();
        if had_credentials {
            if cfg.search.username.is_none() && cfg.search.password.is_none() {
                cfg.search.username = Some(percent_decode(url.username()));
                cfg.search.password = url.password().map(|p| Secret::new(percent_decode(p)));
            } else {
                warnings.push(format!(
                    "{} contains credentials; they are ignored because search.username/search.password are set",
                    origin(fig, "search.url")
                ));
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        nodes.push(if had_credentials {
            url.to_string()
        } else {
            part.to_owned()
        });
    }
    cfg.search.url = nodes.join(",");
    super::search_auth::validate(&mut cfg.search, warnings)
}

/// PostgreSQL: the URL parses, sslmode is one of libpq's, named TLS files exist (errors name
/// the key and where it was set), and the whole resolves as libpq would resolve it.
fn validate_postgres(cfg: &mut Config, fig: &Figment) -> Result<()> {
    let bad = |key: &str, what: String| Error::config(format!("{} {what}", origin(fig, key)));
    let p = &mut cfg.postgres;
    if let Some(m) = &mut p.sslmode {
        *m = m.trim().to_ascii_lowercase();
        if SslMode::parse(m).is_none() {
            return Err(bad(
                "postgres.sslmode",
                format!("is {m:?}; expected {SSLMODES}"),
            ));
        }
    }
    if let Some(url) = &p.url {
        let split = super::postgres::split_conn_string(url.expose())
            .map_err(|e| bad("postgres.url", e.message))?;
        if let Err(e) = split.rest.parse::<tokio_postgres::Config>() {
            return Err(bad(
                "postgres.url",
                format!("is not a valid PostgreSQL connection string: {e}"),
            ));
        }
    }
    for key in ["sslrootcert", "sslcert", "sslkey"] {
        let value = match key {
            "sslrootcert" => &p.sslrootcert,
            "sslcert" => &p.sslcert,
            _ => &p.sslkey,
        };
        if let Some(f) = value {
            let system = key == "sslrootcert" && f.as_os_str() == "system";
            if !system && !f.is_file() {
                return Err(bad(
                    &format!("postgres.{key}"),
                    format!("= {} does not exist or is not a file", f.display()),
                ));
            }
        }
    }
    if let Some(mem) = &p.work_mem {
        if mem.is_empty() || !mem.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(
                "postgres.work_mem",
                format!("= {mem:?} is not a memory size such as 16MB"),
            ));
        }
    }
    if p.password.as_ref().is_some_and(Secret::is_empty) {
        p.password = None;
    }
    cfg.postgres_tls().map_err(|e| {
        bad(
            "postgres.sslmode",
            format!("(with the TLS settings): {}", e.message),
        )
    })?;
    Ok(())
}

/// Decodes `%XX` escapes of URL user-info (a password with `@` is written `%40`).
pub(super) fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Config {
    /// The configuration as TOML with every secret masked (URL secrets keep their host and user),
    /// for `--print-config` and support requests.
    pub fn redacted_toml(&self) -> String {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let masked = [
            ("postgres", "url", self.postgres.url.as_ref()),
            (
                "checkpoint",
                "redis_url",
                self.checkpoint.redis_url.as_ref(),
            ),
        ];
        for (section, key, secret) in masked {
            if let Some(s) = secret {
                v[section][key] = serde_json::Value::String(s.masked_url());
            }
        }
        let mut out = String::new();
        for (section, keys) in v.as_object().into_iter().flatten() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{section}]\n"));
            for (key, value) in keys.as_object().into_iter().flatten() {
                match toml_scalar(value) {
                    Some(s) => out.push_str(&format!("{key} = {s}\n")),
                    None => out.push_str(&format!("# {key} is not set\n")),
                }
            }
        }
        out
    }
}

/// A JSON scalar as a TOML value; `None` for null (TOML has no null).
fn toml_scalar(v: &serde_json::Value) -> Option<String> {
    Some(match v {
        serde_json::Value::Null => return None,
        // JSON string escapes are valid TOML basic-string escapes, except that TOML also wants
        // DEL escaped.
        serde_json::Value::String(s) => serde_json::to_string(s)
            .expect("string serializes")
            .replace('\u{7f}', "\\u007F"),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::postgres::{connect, describe_target};
    use super::super::{CaptureMode, Engine};
    use super::*;
    use crate::ErrorKind;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// Serializes the tests that touch the process environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Loaded> {
        load_with(None, env(pairs))
    }

    fn write_toml(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("pgsync.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn json(c: &Config) -> serde_json::Value {
        serde_json::to_value(c).unwrap()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let l = load_env(&[]).unwrap();
        assert_eq!(json(&l.config), json(&Config::default()));
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn example_file_equals_defaults_and_documents_every_key() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgsync.example.toml");
        let l = load_with(Some(&example), env(&[])).unwrap();
        assert_eq!(json(&l.config), json(&Config::default()));

        // Every key appears under its section, commented out only when it has no default.
        let text = std::fs::read_to_string(&example).unwrap();
        let mut section = String::new();
        let mut documented = std::collections::BTreeSet::new();
        for line in text.lines() {
            let t = line.trim();
            if let Some(s) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                section = s.to_owned();
            } else if let Some((k, _)) = t.trim_start_matches("# ").split_once(" = ") {
                documented.insert((section.clone(), k.to_owned(), t.starts_with('#')));
            }
        }
        let defaults = json(&Config::default());
        for ((s, k), _) in known_keys() {
            let commented = defaults[&s][&k].is_null();
            assert!(
                documented.contains(&(s.clone(), k.clone(), commented)),
                "config/pgsync.example.toml does not document {s}.{k} (commented: {commented})"
            );
        }
    }

    #[test]
    fn missing_file_is_named() {
        let e = load_with(Some(Path::new("/nonexistent/pgsync.toml")), env(&[])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("/nonexistent/pgsync.toml"), "{e}");
        assert!(e.message.contains("not found"), "{e}");
    }

    #[test]
    fn file_errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_toml(&dir, "[pipeline]\nfetchers = \"many\"\n");
        let e = load_with(Some(&p), env(&[])).unwrap_err();
        assert!(e.message.contains(&p.display().to_string()), "{e}");
        assert!(e.message.contains("pipeline.fetchers"), "{e}");

        let p = write_toml(&dir, "[postgres]\npasswd = \"x\"\n");
        let e = load_with(Some(&p), env(&[])).unwrap_err();
        assert!(e.message.contains("passwd"), "{e}");

        // A syntax error on a password line must not echo the line.
        let p = write_toml(&dir, "[postgres]\npassword = \"hunter2\n");
        let e = load_with(Some(&p), env(&[])).unwrap_err();
        assert!(e.message.contains(&p.display().to_string()), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn precedence_defaults_file_pgsync_vars_section_vars() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_toml(
            &dir,
            "[postgres]\nhost = \"file-host\"\nport = 1111\nuser = \"file-user\"\n\
             [pipeline]\nfetchers = 3\nwriters = 5\n[capture]\nmode = \"wal\"\n",
        );
        let c = load_with(Some(&p), env(&[])).unwrap().config;
        assert_eq!(
            (c.postgres.host.as_str(), c.postgres.port),
            ("file-host", 1111)
        );
        assert_eq!((c.pipeline.fetchers, c.pipeline.writers), (3, 5));

        let c = load_with(
            Some(&p),
            env(&[
                ("PG_HOST", "pg-host"),
                ("PG_PORT", "2222"),
                ("PGSYNC_POSTGRES__PORT", "3333"),
                ("PGSYNC_PIPELINE__FETCHERS", "4"),
                ("PGSYNC_CAPTURE__MODE", "notify"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!(c.postgres.host, "pg-host"); // PGSync var over file
        assert_eq!(c.postgres.port, 3333); // PGSYNC_ over PGSync var
        assert_eq!(c.postgres.user, "file-user"); // file over default
        assert_eq!(c.pipeline.fetchers, 4);
        assert_eq!(c.pipeline.writers, 5);
        assert_eq!(c.capture.mode, CaptureMode::Notify);
    }

    #[test]
    fn pgsync_variables() {
        let c = load_env(&[
            ("PG_URL", "postgres://u:pw@db:6543/ignored"),
            ("PG_USER", "pguser"),
            ("PG_SSLMODE", "Prefer"),
            ("ELASTICSEARCH_SCHEME", "https"),
            ("ELASTICSEARCH_HOST", "es.local"),
            ("ELASTICSEARCH_PORT", "9243"),
            ("ELASTICSEARCH_USER", "elastic"),
            ("ELASTICSEARCH_PASSWORD", "espw"),
            ("ELASTICSEARCH_API_KEY_ID", "kid"),
            ("ELASTICSEARCH_API_KEY", "ksecret"),
            ("ELASTICSEARCH_VERIFY_CERTS", "false"),
            ("ELASTICSEARCH_TIMEOUT", "2.5"),
            ("OPENSEARCH", "true"),
            ("REDIS_URL", "redis://:rpw@redis:6379/0"),
            ("SCHEMA", "/etc/pgsync/schema.json"),
            ("LOG_LEVEL", "WARNING"),
        ])
        .unwrap()
        .config;
        assert_eq!(
            c.postgres.url.as_ref().unwrap().expose(),
            "postgres://u:pw@db:6543/ignored"
        );
        assert_eq!(c.postgres.user, "pguser");
        // As in PGSync, PG_URL makes PG_SSLMODE (and PG_HOST, ...) ignored, with a warning.
        assert_eq!(c.postgres.sslmode, None);
        assert_eq!(c.search.url, "https://es.local:9243");
        assert_eq!(c.search.username.as_deref(), Some("elastic"));
        assert_eq!(c.search.password.as_ref().unwrap().expose(), "espw");
        assert_eq!(c.search.api_key.as_ref().unwrap().expose(), "kid:ksecret");
        assert!(c.search.insecure_skip_verify);
        assert_eq!(c.search.timeout_secs, 3);
        assert_eq!(c.search.engine, Engine::Opensearch);
        assert_eq!(
            c.checkpoint.redis_url.as_ref().unwrap().expose(),
            "redis://:rpw@redis:6379/0"
        );
        assert_eq!(c.schema.path, PathBuf::from("/etc/pgsync/schema.json"));
        assert_eq!(c.log.level, "warn");

        // ELASTICSEARCH_URL wins over the parts.
        let c = load_env(&[
            ("ELASTICSEARCH_URL", "http://one:9200"),
            ("ELASTICSEARCH_HOST", "two"),
        ])
        .unwrap()
        .config;
        assert_eq!(c.search.url, "http://one:9200");
        // A host alone gets PGSync's default scheme and port.
        let c = load_env(&[("ELASTICSEARCH_HOST", "two")]).unwrap().config;
        assert_eq!(c.search.url, "http://two:9200");
        let c = load_env(&[("OPENSEARCH", "False")]).unwrap().config;
        assert_eq!(c.search.engine, Engine::Elasticsearch);
    }

    #[test]
    fn bad_pgsync_values_name_the_variable() {
        let e = load_env(&[("PG_PORT", "fivefour")]).unwrap_err();
        assert!(e.message.contains("PG_PORT"), "{e}");
        let e = load_env(&[("OPENSEARCH", "maybe")]).unwrap_err();
        assert!(e.message.contains("OPENSEARCH"), "{e}");
        let e = load_env(&[("PGSYNC_PIPELINE__FETCHERS", "lots")]).unwrap_err();
        assert!(e.message.contains("PGSYNC_PIPELINE__FETCHERS"), "{e}");
        assert!(e.message.contains("pipeline.fetchers"), "{e}");
        let e = load_env(&[("PG_SSLMODE", "verify-everything")]).unwrap_err();
        assert!(e.message.contains("PG_SSLMODE"), "{e}");
        // Valid, but verify-full needs a root certificate: the error names the variable too.
        let e = load_env(&[("PG_SSLMODE", "verify-full")]).unwrap_err();
        assert!(e.message.contains("PG_SSLMODE"), "{e}");
        assert!(e.message.contains("sslrootcert"), "{e}");
        let e = load_env(&[("PGSYNC_CAPTURE__MODE", "poll")]).unwrap_err();
        assert!(e.message.contains("PGSYNC_CAPTURE__MODE"), "{e}");
    }

    #[test]
    fn numeric_and_boolean_looking_secrets_stay_strings() {
        for pw in ["12345", "007", "true", "1.50", "[1]", "{a}", "null"] {
            let l = load_env(&[
                ("PG_PASSWORD", pw),
                ("ELASTICSEARCH_PASSWORD", pw),
                ("ELASTICSEARCH_API_KEY", pw),
                ("PG_USER", pw),
            ])
            .unwrap();
            let c = l.config;
            assert_eq!(c.postgres.password.as_ref().unwrap().expose(), pw);
            assert_eq!(c.search.password.as_ref().unwrap().expose(), pw);
            assert_eq!(c.search.api_key.as_ref().unwrap().expose(), pw);
            assert_eq!(c.postgres.user, pw);

            let c = load_env(&[
                ("PGSYNC_POSTGRES__PASSWORD", pw),
                ("PGSYNC_SEARCH__USERNAME", pw),
                ("PGSYNC_POSTGRES__HOST", pw),
            ])
            .unwrap()
            .config;
            assert_eq!(c.postgres.password.as_ref().unwrap().expose(), pw);
            assert_eq!(c.search.username.as_deref(), Some(pw));
            assert_eq!(c.postgres.host, pw);
        }
        // The typed keys still parse: 007 is 7 workers.
        let c = load_env(&[("PGSYNC_PIPELINE__WRITERS", "007")])
            .unwrap()
            .config;
        assert_eq!(c.pipeline.writers, 7);
    }

    #[test]
    fn every_optional_key_accepts_text() {
        // Keys defaulting to null are read raw from the environment; that is only right while they
        // are all text-like. This fails if someone adds e.g. an Option<u64> key.
        let defaults = json(&Config::default());
        for ((s, k), _) in known_keys() {
            if defaults[&s][&k].is_null() {
                let var = format!("PGSYNC_{}__{}", s.to_uppercase(), k.to_uppercase());
                let mut warnings = Vec::new();
                let layer = section_layer(
                    &env(&[(var.as_str(), "x")]).into_iter().collect(),
                    &mut warnings,
                );
                let r = Figment::from(Serialized::defaults(Config::default()))
                    .merge(layer)
                    .extract::<Config>();
                assert!(r.is_ok(), "{s}.{k} does not accept text: {:?}", r.err());
                assert!(warnings.is_empty());
            }
        }
    }

    #[test]
    fn stray_pgsync_variables_are_ignored_with_a_warning() {
        let l = load_env(&[
            ("PGSYNC_FOO", "1"),
            ("PGSYNC_CONFIG", "/etc/pgsync.toml"),
            ("PGSYNC_FOO__BAR", "1"),
            ("PGSYNC_PIPELINE__NOPE", "1"),
            ("PGSYNC_A__B__C", "1"),
            ("PGSYNC_PIPELINE__FETCHERS", "6"),
        ])
        .unwrap();
        assert_eq!(l.config.pipeline.fetchers, 6);
        assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
        assert!(l.warnings.iter().any(|w| w.contains("PGSYNC_FOO__BAR")));
        assert!(l.warnings.iter().any(|w| w.contains("pipeline.nope")));
    }

    #[test]
    fn search_url_credentials_move_to_secret_fields() {
        let l = load_env(&[("ELASTICSEARCH_URL", "https://elastic:p%40ss@es:9200/")]).unwrap();
        let c = l.config;
        assert_eq!(c.search.url, "https://es:9200/");
        assert_eq!(c.search.username.as_deref(), Some("elastic"));
        assert_eq!(c.search.password.as_ref().unwrap().expose(), "p@ss");
        assert!(!format!("{c:?}").contains("p%40ss"));
    }

    #[test]
    fn debug_errors_and_toml_never_show_passwords() {
        let c = load_env(&[
            ("PG_PASSWORD", "pg-secret-1"),
            ("PG_URL", "postgres://u:url-secret-2@db/x"),
            ("ELASTICSEARCH_URL", "http://e:es-secret-3@es:9200"),
            ("ELASTICSEARCH_API_KEY", "key-secret-4"),
            ("REDIS_URL", "redis://:redis-secret-5@r:6379"),
        ])
        .unwrap()
        .config;
        let secrets = [
            "pg-secret-1",
            "url-secret-2",
            "es-secret-3",
            "key-secret-4",
            "redis-secret-5",
        ];
        let debug = format!("{c:?}");
        let toml = c.redacted_toml();
        let pg_debug = format!("{:?}", c.postgres_for("db"));
        for s in secrets {
            assert!(!debug.contains(s), "Debug shows {s}: {debug}");
            assert!(!toml.contains(s), "TOML shows {s}: {toml}");
            assert!(!pg_debug.contains(s), "tokio_postgres Debug shows {s}");
        }
        assert!(toml.contains("postgres://u:****@db/x"), "{toml}");

        // Errors from invalid values next to secrets do not echo them.
        let e = load_env(&[
            ("PG_URL", "postgres://u:url-secret-2@db:notaport/x"),
            ("PG_PASSWORD", "pg-secret-1"),
        ])
        .unwrap_err();
        for s in secrets {
            assert!(!e.to_string().contains(s), "{e}");
        }
        let e = load_env(&[("ELASTICSEARCH_URL", "ftp://e:es-secret-3@es")]).unwrap_err();
        assert!(!e.to_string().contains("es-secret-3"), "{e}");
        assert!(e.message.contains("ELASTICSEARCH_URL"), "{e}");
    }

    #[test]
    fn redacted_toml_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.pipeline.fetchers = 9;
        c.postgres.host = "h\"q\\".into();
        let p = write_toml(&dir, &c.redacted_toml());
        let back = load_with(Some(&p), env(&[])).unwrap().config;
        assert_eq!(json(&back), json(&c));
    }

    #[test]
    fn postgres_for_fields_url_and_socket() {
        let mut c = Config::default();
        c.postgres.host = "pghost".into();
        c.postgres.port = 5433;
        c.postgres.user = "me".into();
        c.postgres.password = Some(Secret::new("pw"));
        let pg = c.postgres_for("books");
        assert_eq!(pg.get_dbname(), Some("books"));
        assert_eq!(pg.get_user(), Some("me"));
        assert_eq!(pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(pg.get_ports(), &[5433]);
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert_eq!(
            describe_target(&pg, "books"),
            "pghost:5433 as me (database books)"
        );

        // The URL wins; its database is replaced; missing parts come from the fields.
        c.postgres.url = Some(Secret::new(
            "postgres://urluser@urlhost/other?sslmode=prefer",
        ));
        let pg = c.postgres_for("books");
        assert_eq!(pg.get_user(), Some("urluser"));
        assert_eq!(pg.get_dbname(), Some("books"));
        assert_eq!(pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(pg.get_ports(), &[5432]);
        // TLS is decided per attempt by connect(): the URL's sslmode is read from the URL.
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert_eq!(
            c.postgres_tls().unwrap().mode,
            crate::config::tls::SslMode::Prefer
        );
        assert!(
            matches!(&pg.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "urlhost")
        );

        c.postgres.url = None;
        c.postgres.host = "/var/run/postgresql".into();
        let pg = c.postgres_for("books");
        assert!(matches!(
            &pg.get_hosts()[0],
            tokio_postgres::config::Host::Unix(_)
        ));
        assert_eq!(
            describe_target(&pg, "books"),
            "/var/run/postgresql/.s.PGSQL.5433 as me (database books)"
        );
    }

    #[tokio::test]
    async fn connect_failure_names_target_not_password() {
        let mut c = Config::default();
        c.postgres.host = "127.0.0.1".into();
        c.postgres.port = free_port();
        c.postgres.user = "alice".into();
        c.postgres.password = Some(Secret::new("topsecret"));
        c.postgres.connect_timeout_secs = 2;
        let e = connect(&c, "books").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::SourceUnreachable);
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "cannot connect to PostgreSQL at 127.0.0.1:{} as alice (database books)",
                c.postgres.port
            )),
            "{text}"
        );
        assert!(!text.contains("topsecret"), "{text}");
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn load_reads_the_process_environment() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let vars = [
            ("PG_PASSWORD", "007"),
            ("PGSYNC_PIPELINE__FETCHERS", "4"),
            ("PGSYNC_STRAY__KEY", "x"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let r = load(None);
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let c = r.unwrap();
        assert_eq!(c.postgres.password.as_ref().unwrap().expose(), "007");
        assert_eq!(c.pipeline.fetchers, 4);
    }

    #[test]
    fn load_with_file_and_process_environment() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let p = write_toml(&dir, "[search]\nurl = \"http://file:9200\"\n");
        let vars = [
            ("ELASTICSEARCH_URL", "http://env:9200"),
            ("ELASTICSEARCH_PASSWORD", "true"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let r = load(Some(&p));
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let c = r.unwrap();
        assert_eq!(c.search.url, "http://env:9200");
        assert_eq!(c.search.password.as_ref().unwrap().expose(), "true");
    }
}
