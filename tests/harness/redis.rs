//! A throwaway Redis server, restartable on its port for reconnect tests.

use super::process::{find_on_path, free_port, Supervised};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `redis-server` on 127.0.0.1 with persistence off; its working dir is a
/// temp dir so a stray `SAVE` cannot litter the checkout. Drop kills it;
/// a watchdog does so if the test process dies first.
pub struct Redis {
    port: AtomicU16,
    /// More `redis-server` arguments, from [`Redis::start_with`].
    args: Vec<String>,
    running: Mutex<Option<Supervised>>,
    dir: tempfile::TempDir,
}

/// A RESP reply, as far as tests need to look into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bulk string; `None` for the null bulk string.
    Bulk(Option<String>),
    /// `*n`; `None` for the null array.
    Array(Option<Vec<Resp>>),
}

impl Redis {
    /// Starts on a free port and waits until PING answers.
    pub fn start() -> Redis {
        Redis::start_with(Vec::new())
    }

    /// Like [`Redis::start`] with more `redis-server` arguments (e.g. `--tls-port`, `--user`);
    /// the plain port stays open for the harness's own commands.
    pub fn start_with(args: Vec<String>) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("pgsync-test-redis-")
            .tempdir()
            .expect("create redis temp dir");
        let redis = Redis {
            port: AtomicU16::new(free_port()),
            args,
            running: Mutex::new(None),
            dir,
        };
        redis.launch(true);
        redis
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// The temp dir the server runs in (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(|s| s.pid())
    }

    /// What the server printed recently.
    pub fn log(&self) -> String {
        self.lock()
            .as_ref()
            .map(|s| s.log.text())
            .unwrap_or_default()
    }

    /// Stops (SIGTERM) and starts again on the same port, empty.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// SIGTERM and wait; for tests of outages.
    pub fn stop(&self) {
        if let Some(s) = self.lock().take() {
            s.stop("TERM", Duration::from_secs(10));
        }
    }

    /// Starts a stopped server on its old port.
    pub fn start_again(&self) {
        self.launch(false);
    }

    /// Sends one command on a fresh connection and returns the reply.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        redis_cmd(self.port(), args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Like [`Redis::cmd`] after `AUTH` with `auth` (`[password]` or `[user, password]`).
    pub fn cmd_as(&self, auth: &[&str], args: &[&str]) -> Resp {
        redis_cmd_as(self.port(), auth, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Supervised>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn launch(&self, may_move: bool) {
        let bin = find_on_path("redis-server")
            .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.exists()))
            .expect("redis-server not found; run scripts/install-deps.sh");
        let mut guard = self.lock();
        assert!(guard.is_none(), "redis is already running");
        for attempt in 0.. {
            let port = self.port();
            let mut cmd = Command::new(&bin);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--logfile", ""])
                .args(&self.args)
                .arg("--dir")
                .arg(self.dir.path())
                .current_dir(self.dir.path());
            let mut sup = Supervised::spawn(cmd, "KILL", Some(self.dir.path()), None)
                .expect("spawn redis-server");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                // A server with a password (`--requirepass`) answers NOAUTH: it is up too.
                if redis_cmd(port, &["PING"]).is_ok_and(|r| match r {
                    Resp::Simple(s) => s == "PONG",
                    Resp::Error(e) => e.starts_with("NOAUTH"),
                    _ => false,
                }) {
                    *guard = Some(sup);
                    return;
                }
                if sup.exited().is_some() || Instant::now() > deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    let log = sup.log.text();
                    drop(sup);
                    if !log.contains("Address already in use") || attempt >= 50 {
                        panic!("redis-server did not start on port {port}:\n{log}");
                    }
                    if may_move {
                        self.port.store(free_port(), Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(s) = self.lock().take() {
            s.stop("KILL", Duration::ZERO);
        }
    }
}

/// One RESP command over a new TCP connection (no client crate needed).
pub fn redis_cmd(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    redis_cmd_as(port, &[], args)
}

/// One RESP command over a new TCP connection, after `AUTH auth...` when `auth` is not empty.
pub fn redis_cmd_as(port: u16, auth: &[&str], args: &[&str]) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let encode = |args: &[&str]| {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req
    };
    let mut reader = BufReader::new(stream.try_clone()?);
    if !auth.is_empty() {
        let cmd: Vec<&str> = std::iter::once("AUTH")
            .chain(auth.iter().copied())
            .collect();
        stream.write_all(&encode(&cmd))?;
        if let Resp::Error(e) = read_resp(&mut reader)? {
            return Ok(Resp::Error(e));
        }
    }
    stream.write_all(&encode(args))?;
    read_resp(&mut reader)
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed".into()));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1.min(line.len()));
    let num = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad reply {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()?),
        "$" => {
            let n = num()?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n = num()?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let items = (0..n).map(|_| read_resp(r)).collect::<Result<_, _>>()?;
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad(format!("bad reply {line:?}"))),
    })
}
