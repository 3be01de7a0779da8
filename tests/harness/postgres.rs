//! A throwaway PostgreSQL cluster per test (or one per test binary).

use super::process::{effective_uid, free_port, lookup_user, run_with_input, Supervised};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// A private PostgreSQL server on 127.0.0.1 with logical decoding enabled,
/// trust auth for superuser `postgres`, and durability switched off for
/// speed. Dropping it stops the server (immediate mode) and deletes its
/// files; if the test process dies first, a watchdog does the same.
pub struct Postgres {
    port: AtomicU16,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    /// `-c` settings beyond the defaults, from [`PostgresOptions`].
    settings: Vec<String>,
    running: Mutex<Option<Supervised>>,
    // Declared last so the server is stopped before its files go.
    dir: tempfile::TempDir,
}

/// What a server started with [`Postgres::start_with`] has beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// TLS: `ssl = on` with this certificate.
    pub ssl: Option<ServerSsl>,
    /// The whole pg_hba.conf (the default trusts everything).
    pub hba: Option<String>,
    /// More `name=value` settings, passed as `-c`.
    pub settings: Vec<String>,
}

/// The server side of TLS.
#[derive(Debug, Clone)]
pub struct ServerSsl {
    /// Server certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// CA certificates client certificates are checked against (`ssl_ca_file`), if any.
    pub client_ca_pem: Option<String>,
}

impl Postgres {
    /// initdb + start; panics with the server log if either fails.
    pub fn start() -> Postgres {
        Postgres::start_with(PostgresOptions::default())
    }

    /// Like [`Postgres::start`] with TLS, a pg_hba.conf or more settings.
    pub fn start_with(opts: PostgresOptions) -> Postgres {
        let bin_dir = pg_bin_dir();
        let run_as = run_as_user();
        // A user we switch to must be able to reach the directory, and
        // TMPDIR may sit under root's 0700 home, so use /tmp then.
        let base = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("pgsync-test-pg-")
            .tempdir_in(base)
            .expect("create postgres temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown postgres temp dir");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(dir.path())
            .env("LC_ALL", "C")
            .env("TZ", "UTC");
        as_user(&mut initdb, run_as);
        // Supervised, so the dir goes even if we die during initdb.
        let (status, log) = Supervised::spawn(initdb, "KILL", Some(dir.path()), None)
            .expect("spawn initdb")
            .wait();
        assert!(status.success(), "initdb failed ({status}):\n{log}");

        let mut settings = opts.settings.clone();
        if let Some(ssl) = &opts.ssl {
            write_private(&data.join("server.crt"), &ssl.cert_pem, run_as);
            write_private(&data.join("server.key"), &ssl.key_pem, run_as);
            settings.extend([
                "ssl=on".into(),
                "ssl_cert_file=server.crt".into(),
                "ssl_key_file=server.key".into(),
            ]);
            if let Some(ca) = &ssl.client_ca_pem {
                write_private(&data.join("client_ca.crt"), ca, run_as);
                settings.push("ssl_ca_file=client_ca.crt".into());
            }
        }
        if let Some(hba) = &opts.hba {
            write_private(&data.join("pg_hba.conf"), hba, run_as);
        }
        let pg = Postgres {
            port: AtomicU16::new(free_port()),
            bin_dir,
            run_as,
            settings,
            running: Mutex::new(None),
            dir,
        };
        pg.launch(true);
        pg
    }

    /// A hot-standby streaming replica of `primary` (`pg_basebackup -R`), on its own port: for
    /// reading documents from a replica.
    pub fn start_replica_of(primary: &Postgres) -> Postgres {
        let run_as = primary.run_as;
        let base = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("pgsync-test-pg-replica-")
            .tempdir_in(base)
            .expect("create replica temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown replica dir");
        }
        let mut backup = Command::new(primary.bin_dir.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &primary.port().to_string()])
            .current_dir(dir.path());
        as_user(&mut backup, run_as);
        let (status, log) = Supervised::spawn(backup, "KILL", Some(dir.path()), None)
            .expect("spawn pg_basebackup")
            .wait();
        assert!(status.success(), "pg_basebackup failed ({status}):\n{log}");
        let pg = Postgres {
            port: AtomicU16::new(free_port()),
            bin_dir: primary.bin_dir.clone(),
            run_as,
            settings: primary.settings.clone(),
            running: Mutex::new(None),
            dir,
        };
        pg.launch(true);
        pg
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port())
    }

    /// The data directory (owned by the server's user when run as root).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// PID of the postmaster, e.g. for tests that SIGKILL it.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(|s| s.pid())
    }

    /// What the server wrote to stderr recently (for failure messages).
    pub fn log(&self) -> String {
        self.lock()
            .as_ref()
            .map(|s| s.log.text())
            .unwrap_or_default()
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// `DROP DATABASE IF EXISTS "name" WITH (FORCE)`; replication slots
    /// using it must be dropped first.
    pub fn drop_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
        );
    }

    /// Runs `sql` (any number of statements) through
    /// `psql -X -q -v ON_ERROR_STOP=1 -At` and returns the unaligned,
    /// tuples-only output without the final newline. Panics with psql's
    /// stderr if any statement fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.psql_command(db);
        cmd.args(["-f", "-"]);
        let (ok, out, err) = run_with_input(cmd, sql.as_bytes());
        assert!(ok, "psql on {db} failed: {err}\nSQL:\n{sql}");
        out.trim_end_matches('\n').to_string()
    }

    /// Like [`Postgres::psql`] for a file of SQL.
    pub fn psql_file(&self, db: &str, path: impl AsRef<Path>) -> String {
        let path = path.as_ref();
        let mut cmd = self.psql_command(db);
        cmd.arg("-f").arg(path);
        let (ok, out, err) = run_with_input(cmd, b"");
        assert!(ok, "psql -f {} on {db} failed: {err}", path.display());
        out.trim_end_matches('\n').to_string()
    }

    /// Fast shutdown, then start again on the same port and data dir;
    /// returns once connections are accepted.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Fast shutdown (SIGINT), leaving the data dir for
    /// [`Postgres::start_again`]; for tests of outages.
    pub fn stop(&self) {
        if let Some(s) = self.lock().take() {
            s.stop("INT", Duration::from_secs(30));
        }
    }

    /// Starts a stopped server on its old port.
    pub fn start_again(&self) {
        self.launch(false);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Supervised>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d"])
            .arg(self.url(db))
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGTZ", "UTC");
        cmd
    }

    /// Starts the postmaster and waits for readiness. If another process
    /// took the port, a fresh server (`may_move`) picks a new one, since
    /// nobody has seen it yet; a restarted one keeps retrying its own.
    fn launch(&self, may_move: bool) {
        let mut guard = self.lock();
        assert!(guard.is_none(), "postgres is already running");
        for attempt in 0.. {
            let port = self.port();
            let mut cmd = Command::new(self.bin_dir.join("postgres"));
            cmd.arg("-D")
                .arg(self.data_dir())
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(self.dir.path())
                .current_dir(self.dir.path())
                .env("LC_ALL", "C");
            for setting in [
                "listen_addresses=127.0.0.1",
                "wal_level=logical",
                "max_replication_slots=64",
                "max_wal_senders=20",
                "max_connections=200",
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                // Logical decoding only sees flushed WAL; with async commit
                // the WAL writer's default 200 ms delay would add that much
                // latency to every replicated change.
                "wal_writer_delay=10ms",
                "TimeZone=UTC",
                "log_timezone=UTC",
            ] {
                cmd.arg("-c").arg(setting);
            }
            for setting in &self.settings {
                cmd.arg("-c").arg(setting);
            }
            as_user(&mut cmd, self.run_as);
            let mut sup = Supervised::spawn(cmd, "QUIT", Some(self.dir.path()), None)
                .expect("spawn postgres");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if self.is_ready(port) {
                    *guard = Some(sup);
                    return;
                }
                if sup.exited().is_some() || Instant::now() > deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    let log = sup.log.text();
                    drop(sup);
                    let in_use = log.contains("could not bind")
                        || log.contains("Address already in use")
                        || log.contains("could not create any TCP/IP sockets");
                    if !in_use || attempt >= 50 {
                        panic!("postgres did not start on port {port}:\n{log}");
                    }
                    if may_move {
                        self.port.store(free_port(), Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The Unix socket directory (`host` for local connections, which pg_hba.conf's `local`
    /// lines match).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn is_ready(&self, port: u16) -> bool {
        Command::new(self.bin_dir.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &port.to_string(), "-t", "1"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(s) = self.lock().take() {
            s.stop("QUIT", Duration::from_secs(10));
        }
    }
}

/// One server per test binary, started on first use, for tests that each
/// create their own database (see [`unique_db_name`]). Never dropped: the
/// watchdog stops it and deletes its files when the test binary exits.
pub fn shared_postgres() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}

/// A database name no other test in this binary gets: the prefix
/// (lowercased, non-alphanumerics turned into `_`) plus a counter and pid,
/// kept under PostgreSQL's 63-byte limit.
pub fn unique_db_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert(0, 'd');
    }
    let suffix = format!("_{n}_{}", std::process::id());
    clean.truncate(63 - suffix.len());
    clean + &suffix
}

/// `"ident"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// PostgreSQL 15's binaries: `PGSYNC_TEST_PG_BINDIR`, else Debian's
/// `/usr/lib/postgresql/15/bin`, else the newest `/usr/lib/postgresql/*`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGSYNC_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("postgres").exists() {
        return debian;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/15/bin; \
             run scripts/install-deps.sh or set PGSYNC_TEST_PG_BINDIR"
        )
    })
}

/// initdb and postgres refuse to run as root, so as root switch to
/// `PGSYNC_TEST_PG_USER`, else `postgres` (Debian's package creates it),
/// else `nobody`.
fn run_as_user() -> Option<(u32, u32)> {
    if effective_uid() != 0 {
        return None;
    }
    let env = std::env::var("PGSYNC_TEST_PG_USER").ok();
    let names = env.iter().map(String::as_str).chain(["postgres", "nobody"]);
    for name in names {
        if let Some(ids) = lookup_user(name).filter(|(uid, _)| *uid != 0) {
            return Some(ids);
        }
    }
    panic!("running as root and no non-root user for postgres; run scripts/install-deps.sh")
}

/// Writes a file only its owner may read, owned by the server's user (PostgreSQL refuses a key
/// others can read).
fn write_private(path: &Path, text: &str, run_as: Option<(u32, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = run_as {
        // std drops supplementary groups too when switching from root.
        cmd.uid(uid).gid(gid);
    }
}
