//! Checkpoints in Redis over TLS (`rediss://`) as an ACL user: redis-server with `--tls-port`
//! and certificates made here with rcgen. The plain port stays open for the harness, which reads
//! back what went through the TLS one.

mod common;
mod harness;

use common::LibraryBed;
use harness::{free_port, Redis, Resp, TestCa};
use pgsync_rs::checkpoint::{redis_key, CheckpointRecord, Store};
use pgsync_rs::config::{load_with, CheckpointConfig, CheckpointStore, Secret};
use std::process::{Command, Stdio};

/// A Redis whose TLS port serves a certificate for localhost from `ca`, with ACL user `pgsync`
/// (password `s3cret@pass`).
fn tls_redis(ca: &TestCa) -> (Redis, u16) {
    let cert = ca.server("redis", &["localhost", "127.0.0.1"]);
    let tls_port = free_port();
    let redis = Redis::start_with(
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert.cert.display().to_string(),
            "--tls-key-file",
            &cert.key.display().to_string(),
            "--tls-ca-cert-file",
            &ca.ca_file.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--user",
            "pgsync",
            "on",
            ">s3cret@pass",
            "~*",
            "&*",
            "+@all",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    (redis, tls_port)
}

fn checkpoint_cfg(url: String, ca: Option<&TestCa>) -> CheckpointConfig {
    CheckpointConfig {
        store: CheckpointStore::Redis,
        redis_url: Some(Secret::new(url)),
        redis_ca_cert: ca.map(|c| c.ca_file.clone()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_go_to_redis_over_tls_as_an_acl_user() {
    let ca = TestCa::new("redis-ca");
    let (redis, tls_port) = tls_redis(&ca);
    let url = format!("rediss://pgsync:s3cret%40pass@localhost:{tls_port}/0");
    let store = Store::open(&checkpoint_cfg(url.clone(), Some(&ca)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", redis.log()));
    store
        .save("tls_slot", &CheckpointRecord::at(42))
        .await
        .unwrap();
    assert_eq!(
        store.load("tls_slot").await.unwrap(),
        Some(CheckpointRecord::at(42))
    );
    // The same server, read through the plain port.
    match redis.cmd(&["GET", &redis_key("tls_slot")]) {
        Resp::Bulk(Some(v)) => assert!(v.contains("42"), "{v}"),
        other => panic!("checkpoint not in Redis: {other:?}"),
    }
    // The client was that ACL user: it shows in CLIENT LIST while connected.
    match redis.cmd(&["CLIENT", "LIST"]) {
        Resp::Bulk(Some(list)) => assert!(list.contains("user=pgsync"), "{list}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_a_wrong_password_and_plain_redis_to_the_tls_port_fail_clearly() {
    let ca = TestCa::new("redis-ca");
    let (redis, tls_port) = tls_redis(&ca);
    let other = TestCa::new("not-redis-ca");
    let url = |pw: &str| format!("rediss://pgsync:{pw}@localhost:{tls_port}/0");
    let e = Store::open(&checkpoint_cfg(url("s3cret%40pass"), Some(&other)))
        .await
        .err()
        .expect("an untrusted certificate must fail");
    assert!(e.to_string().contains("Redis"), "{e}");
    let e = Store::open(&checkpoint_cfg(url("wrong"), Some(&ca)))
        .await
        .err()
        .expect("a wrong password must fail");
    let text = e.to_string();
    assert!(!text.contains("wrong@"), "the password is shown: {text}");
    // A CA file with a plain URL is a configuration mistake, named as such.
    let e = Store::open(&checkpoint_cfg(
        format!("redis://127.0.0.1:{}/0", redis.port()),
        Some(&ca),
    ))
    .await
    .err()
    .expect("redis_ca_cert without rediss:// must fail");
    assert!(e.to_string().contains("redis_ca_cert"), "{e}");
}

#[test]
fn pgsyncs_redis_variables_build_a_rediss_url_with_user_and_password() {
    let cfg = load_with(
        None,
        [
            ("REDIS_CHECKPOINT", "true"),
            ("REDIS_SCHEME", "rediss"),
            ("REDIS_HOST", "cache.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_USER", "pgsync"),
            ("REDIS_AUTH", "p@ss word"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
    .config;
    assert_eq!(cfg.checkpoint.store, CheckpointStore::Redis);
    assert_eq!(
        cfg.checkpoint.redis_url.unwrap().expose(),
        "rediss://pgsync:p%40ss%20word@cache.internal:6380/2"
    );
}

/// The whole path through the binary: PGSync's REDIS_* variables (TLS) plus the CA key, one
/// catch-up pass of the library fixture, and its checkpoints land in Redis over TLS.
#[test]
fn a_pass_stores_its_checkpoints_in_redis_over_tls_from_pgsyncs_variables() {
    let ca = TestCa::new("redis-ca");
    let (redis, tls_port) = tls_redis(&ca);
    let bed = LibraryBed::new("redis_tls");
    let out = Command::new(common::pgsync_bin())
        .args(["run", "--once", "--config"])
        .arg(&bed.work.config)
        .current_dir(bed.work.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs([
            ("REDIS_CHECKPOINT", "true"),
            ("REDIS_SCHEME", "rediss"),
            ("REDIS_HOST", "localhost"),
            ("REDIS_PORT", &tls_port.to_string()),
            ("REDIS_USER", "pgsync"),
            ("REDIS_AUTH", "s3cret@pass"),
            (
                "PGSYNC_CHECKPOINT__REDIS_CA_CERT",
                &ca.ca_file.display().to_string(),
            ),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run pgsync");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgsync run --once failed:\n{log}");
    assert!(!log.contains("s3cret"), "the password is logged:\n{log}");
    match redis.cmd(&["KEYS", "pgsync:checkpoint:*"]) {
        Resp::Array(Some(keys)) => assert_eq!(keys.len(), 2, "{keys:?}\n{log}"),
        other => panic!("{other:?}"),
    }
    common::daemon::drop_database_and_slots(bed.pg, &bed.db);
}
