//! TLS to PostgreSQL as libpq does it, against real servers started with `ssl=on` and
//! certificates made here with rcgen: every sslmode connects or refuses exactly as `psql` (which
//! is libpq) does, on a server that accepts only TLS, one that accepts only plain connections
//! while offering TLS, and one without TLS; verify-full against the wrong host name names it; a
//! client certificate logs in with `cert` authentication; the replication connection follows the
//! same modes; and the daemon streams a change over TLS in both capture modes.

mod common;
mod harness;

use common::daemon::{set_capture_mode, Daemon, Mode};
use common::{library_schema, load_library, PgsyncConfig, Workdir};
use harness::{pg_bin_dir, shared_postgres, Osmem, Postgres, PostgresOptions, ServerSsl, TestCa};
use pgsync_rs::config::{connect, load_with};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The CA the servers' certificates come from, a client certificate for role `certuser`, and a
/// CA nobody uses (to be distrusted).
struct Pki {
    ca: TestCa,
    other: TestCa,
    client: harness::CertFiles,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::new("pgsync-test-ca");
        let client = ca.client("certuser", "certuser");
        Pki {
            ca,
            other: TestCa::new("other-ca"),
            client,
        }
    })
}

fn server_ssl() -> ServerSsl {
    // The name is localhost only: connecting to 127.0.0.1 is a different name for verify-full.
    let cert = pki().ca.server("server", &["localhost"]);
    ServerSsl {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        client_ca_pem: Some(pki().ca.ca_pem.clone()),
    }
}

/// TLS on; pg_hba.conf accepts TCP connections over TLS only (and `certuser` by certificate).
fn tls_only() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = Postgres::start_with(PostgresOptions {
            ssl: Some(server_ssl()),
            hba: Some(
                "local all all trust\n\
                 hostssl all certuser 127.0.0.1/32 cert\n\
                 hostssl all certuser ::1/128 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl all all ::1/128 trust\n"
                    .into(),
            ),
            ..Default::default()
        });
        pg.psql("postgres", "CREATE ROLE certuser LOGIN");
        pg
    })
}

/// TLS on, but pg_hba.conf accepts plain TCP connections only: libpq's prefer must fall back.
fn plain_only() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        Postgres::start_with(PostgresOptions {
            ssl: Some(server_ssl()),
            hba: Some(
                "local all all trust\n\
                 hostnossl all all 127.0.0.1/32 trust\n\
                 hostnossl all all ::1/128 trust\n"
                    .into(),
            ),
            ..Default::default()
        })
    })
}

const MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Whether a connection was made, and whether over TLS; the message when refused.
type Outcome = Result<bool, String>;

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// libpq's verdict, through psql; HOME is empty so no ~/.postgresql file takes part.
fn psql_outcome(port: u16, host: &str, user: &str, params: &[(&str, String)]) -> Outcome {
    let home = tempfile::tempdir().unwrap();
    let mut conninfo =
        format!("host={host} port={port} user={user} dbname=postgres connect_timeout=10");
    for (k, v) in params {
        conninfo.push_str(&format!(" {k}={v}"));
    }
    let out = Command::new(pg_bin_dir().join("psql"))
        .args(["-X", "-At", "-c", SSL_IN_USE, &conninfo])
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "t")
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Our verdict: the configuration loaded from PGSync's variables, then `config::connect`.
async fn our_outcome(port: u16, host: &str, user: &str, vars: &[(&str, String)]) -> Outcome {
    let mut env: Vec<(String, String)> = vec![
        ("PG_HOST".into(), host.into()),
        ("PG_PORT".into(), port.to_string()),
        ("PG_USER".into(), user.into()),
    ];
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let cfg = load_with(None, env).map_err(|e| e.to_string())?.config;
    let client = connect(&cfg, "postgres").await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(SSL_IN_USE, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_connects_or_refuses_as_psql_does() {
    let servers: [(&str, &Postgres); 3] = [
        ("TLS-only server", tls_only()),
        ("plain-only server offering TLS", plain_only()),
        ("server without TLS", shared_postgres()),
    ];
    let roots = [
        ("no root certificate", None),
        ("the server's CA", Some(pki().ca.ca_file.clone())),
        ("another CA", Some(pki().other.ca_file.clone())),
    ];
    let mut checked = 0;
    let mut mismatches = vec![];
    for (server, pg) in servers {
        for host in ["localhost", "127.0.0.1"] {
            for mode in MODES {
                for (root_name, root) in &roots {
                    let mut psql = vec![("sslmode", mode.to_string())];
                    let mut ours = vec![("PG_SSLMODE", mode.to_string())];
                    if let Some(r) = root {
                        psql.push(("sslrootcert", r.display().to_string()));
                        ours.push(("PG_SSLROOTCERT", r.display().to_string()));
                    }
                    let libpq = psql_outcome(pg.port(), host, "postgres", &psql);
                    let us = our_outcome(pg.port(), host, "postgres", &ours).await;
                    checked += 1;
                    if libpq.as_ref().ok() != us.as_ref().ok() {
                        mismatches.push(format!(
                            "{server}, host {host}, sslmode={mode}, {root_name}: psql {libpq:?}, pgsync {us:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} cases differ from libpq:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_against_a_wrong_host_name_fails_naming_the_host() {
    let pg = tls_only();
    let root = pki().ca.ca_file.display().to_string();
    let vars = [
        ("PG_SSLMODE", "verify-full".to_string()),
        ("PG_SSLROOTCERT", root.clone()),
    ];
    // The certificate is for localhost: by that name it verifies, by its address it does not.
    assert_eq!(
        our_outcome(pg.port(), "localhost", "postgres", &vars).await,
        Ok(true)
    );
    let e = our_outcome(pg.port(), "127.0.0.1", "postgres", &vars)
        .await
        .unwrap_err();
    assert!(e.contains("127.0.0.1"), "{e}");
    assert!(e.contains("not valid for name"), "{e}");
    let libpq = psql_outcome(
        pg.port(),
        "127.0.0.1",
        "postgres",
        &[("sslmode", "verify-full".into()), ("sslrootcert", root)],
    )
    .unwrap_err();
    assert!(libpq.contains("does not match host name"), "{libpq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostssl_only_server_refuses_plain_connections() {
    let pg = tls_only();
    let e = our_outcome(
        pg.port(),
        "127.0.0.1",
        "postgres",
        &[("PG_SSLMODE", "disable".into())],
    )
    .await
    .unwrap_err();
    assert!(e.contains("no pg_hba.conf entry"), "{e}");
    assert!(e.contains("no encryption"), "{e}");
    // libpq's own variable, below the configuration, is read too.
    let e = our_outcome(
        pg.port(),
        "127.0.0.1",
        "postgres",
        &[("PGSSLMODE", "disable".into())],
    )
    .await
    .unwrap_err();
    assert!(e.contains("no encryption"), "{e}");
    // allow tries plain first, then TLS after the refusal.
    assert_eq!(
        our_outcome(
            pg.port(),
            "127.0.0.1",
            "postgres",
            &[("PG_SSLMODE", "allow".into())]
        )
        .await,
        Ok(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_with_cert_authentication() {
    let pg = tls_only();
    let p = pki();
    let with_cert = [
        ("PG_SSLMODE", "verify-full".to_string()),
        ("PG_SSLROOTCERT", p.ca.ca_file.display().to_string()),
        ("PGSSLCERT", p.client.cert.display().to_string()),
        ("PGSSLKEY", p.client.key.display().to_string()),
    ];
    assert_eq!(
        our_outcome(pg.port(), "localhost", "certuser", &with_cert).await,
        Ok(true)
    );
    let e = our_outcome(pg.port(), "localhost", "certuser", &with_cert[..2])
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    // The same through the URL's own parameters.
    let url = format!(
        "postgres://certuser@localhost:{}/x?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pg.port(),
        p.ca.ca_file.display(),
        p.client.cert.display(),
        p.client.key.display()
    );
    let cfg = load_with(None, vec![("PG_URL".into(), url)])
        .unwrap()
        .config;
    let client = connect(&cfg, "postgres").await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "certuser");
    assert!(row.get::<_, bool>(1));
}

/// Streams from a fresh slot with `vars` until pg_stat_replication shows the session, and
/// returns whether it uses TLS; the error message when it cannot start.
async fn replication_outcome(pg: &Postgres, host: &str, vars: &[(&str, String)]) -> Outcome {
    use pgsync_rs::source::wal::{run, WalReaderConfig};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (slot, app) = (format!("tls_probe_{n}"), format!("tls-probe-{n}"));
    pg.psql(
        "postgres",
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
    );
    let mut env: Vec<(String, String)> = vec![
        ("PG_HOST".into(), host.into()),
        ("PG_PORT".into(), pg.port().to_string()),
    ];
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let outcome = async {
        let cfg = load_with(None, env).map_err(|e| e.to_string())?.config;
        let mut rc = WalReaderConfig::from_postgres_config(&cfg.postgres_for("postgres"), &slot, "tls_probe")
            .map_err(|e| e.to_string())?;
        rc.tls = cfg.postgres_tls().map_err(|e| e.to_string())?;
        rc.application_name = app.clone();
        rc.connect_timeout = Duration::from_secs(10);
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let (_ack_tx, acks) = tokio::sync::watch::channel(0u64);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(rc, tx, acks, stop));
        let query = format!(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = '{app}'"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let found = loop {
            let out = pg.psql("postgres", &query);
            if !out.is_empty() {
                break Ok(out == "t");
            }
            if task.is_finished() || tokio::time::Instant::now() > deadline {
                break Err(String::new());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop_tx.send(true);
        let ended = task.await.expect("reader task");
        match (found, ended) {
            (Ok(tls), _) => Ok(tls),
            (Err(_), Err(e)) => Err(e.to_string()),
            (Err(_), Ok(())) => Err("the stream never showed in pg_stat_replication".into()),
        }
    }
    .await;
    pg.psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_connection_follows_the_sslmode() {
    let pg = tls_only();
    pg.psql(
        "postgres",
        "DROP PUBLICATION IF EXISTS tls_probe; CREATE PUBLICATION tls_probe",
    );
    let root = pki().ca.ca_file.display().to_string();
    let with_root = |mode: &str| {
        vec![
            ("PG_SSLMODE", mode.to_string()),
            ("PG_SSLROOTCERT", root.clone()),
        ]
    };
    let mode = |m: &str| vec![("PG_SSLMODE", m.to_string())];
    for (host, vars) in [
        ("127.0.0.1", mode("require")),
        ("127.0.0.1", mode("prefer")),
        ("127.0.0.1", mode("allow")),
        ("127.0.0.1", with_root("require")),
        // verify-ca ignores the name: 127.0.0.1 is not in the certificate.
        ("127.0.0.1", with_root("verify-ca")),
        ("localhost", with_root("verify-full")),
    ] {
        assert_eq!(
            replication_outcome(pg, host, &vars).await,
            Ok(true),
            "replication to {host} with {vars:?}"
        );
    }
    let e = replication_outcome(pg, "127.0.0.1", &with_root("verify-full"))
        .await
        .unwrap_err();
    assert!(
        e.contains("127.0.0.1") && e.contains("not valid for name"),
        "{e}"
    );
    let e = replication_outcome(pg, "127.0.0.1", &mode("disable"))
        .await
        .unwrap_err();
    assert!(e.contains("no pg_hba.conf entry"), "{e}");
    let e = replication_outcome(
        pg,
        "127.0.0.1",
        &[
            ("PG_SSLMODE", "verify-ca".into()),
            ("PG_SSLROOTCERT", pki().other.ca_file.display().to_string()),
        ],
    )
    .await
    .unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A server taking plain connections only: prefer falls back, as libpq does.
    let plain = plain_only();
    plain.psql(
        "postgres",
        "DROP PUBLICATION IF EXISTS tls_probe; CREATE PUBLICATION tls_probe",
    );
    assert_eq!(
        replication_outcome(plain, "127.0.0.1", &mode("prefer")).await,
        Ok(false)
    );
    assert_eq!(
        replication_outcome(plain, "127.0.0.1", &mode("allow")).await,
        Ok(false)
    );
    assert!(replication_outcome(plain, "127.0.0.1", &mode("require"))
        .await
        .is_err());
}

/// The library fixture on the TLS-only server, a daemon with verify-full to `localhost`, and a
/// title change that must reach the search server.
fn daemon_streams_over_tls(mode: Mode) {
    let pg = tls_only();
    let db = load_library(pg, &format!("tls_{}", mode.name()));
    let os = Osmem::start();
    let mut cfg = PgsyncConfig::new(pg.port(), os.url());
    cfg.pg_host = "localhost".into();
    let work = Workdir::new(&cfg, &library_schema(&db));
    let toml = std::fs::read_to_string(&work.config).unwrap().replacen(
        "[postgres]\n",
        &format!(
            "[postgres]\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
            pki().ca.ca_file.display()
        ),
        1,
    );
    std::fs::write(&work.config, toml).unwrap();
    set_capture_mode(&work, mode);
    let mut d = Daemon::start(&work, "daemon.log");
    harness::wait_until_blocking(Duration::from_secs(60), "the daemon streams", || {
        d.assert_alive("daemon over TLS");
        d.streams("book") && d.streams("edition")
    });
    // Every session of the daemon (queries, and the replication stream or the listener) uses TLS.
    let sessions = pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'pgsync-rs' AND (a.datname = '{db}' OR a.backend_type = 'walsender')"
        ),
    );
    let (plain, total) = sessions.split_once('|').unwrap();
    assert_eq!(plain, "0", "sessions without TLS ({sessions})");
    assert!(total.parse::<u32>().unwrap() >= 1, "{sessions}");
    pg.psql(
        &db,
        "UPDATE book SET title = 'Streamed over TLS' WHERE id = 1",
    );
    harness::wait_until_blocking(
        Duration::from_secs(60),
        "the change reaches the index",
        || {
            d.assert_alive("daemon over TLS");
            os.doc("book", "1")
                .is_some_and(|doc| doc["book_title"] == "Streamed over TLS")
        },
    );
    d.terminate(Duration::from_secs(30));
    common::daemon::drop_database_and_slots(pg, &db);
}

#[test]
fn the_daemon_streams_a_change_over_tls_in_wal_mode() {
    daemon_streams_over_tls(Mode::Wal);
}

#[test]
fn the_daemon_streams_a_change_over_tls_in_notify_mode() {
    daemon_streams_over_tls(Mode::Notify);
}
