//! Child-process plumbing shared by the service wrappers: log capture,
//! signals without `libc`, free ports, and a watchdog that kills a service
//! when the test process dies without running destructors.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Keeps the last lines a child wrote, so a failed start can show why
/// without leaving log files behind.
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    const MAX_LINES: usize = 200;

    /// Drains `stream` on a background thread (a child blocks once a pipe
    /// fills up, so the pipe must always be read). Each line is also sent
    /// to `lines` while its receiver lives.
    pub fn capture<R: Read + Send + 'static>(&self, stream: R, lines: Option<Sender<String>>) {
        let tail = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if let Some(tx) = &lines {
                    let _ = tx.send(line.clone());
                }
                let mut q = tail.0.lock().unwrap_or_else(|e| e.into_inner());
                if q.len() == Self::MAX_LINES {
                    q.pop_front();
                }
                q.push_back(line);
            }
        });
    }

    /// Everything still kept, one line each.
    pub fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A running service plus the watchdog that outlives the test process by
/// just long enough to stop it.
///
/// The watchdog is `sh` blocked in `read` on a pipe whose only write end
/// lives in this process. When the test binary exits for any reason (normal
/// exit with statics never dropped, panic=abort, SIGKILL from a timeout),
/// the kernel closes that end, `read` returns, and the watchdog sends
/// `signal` to the service, escalates to SIGKILL after 10 s, and removes
/// `cleanup` (the service's temp dir). No polling, no PID-reuse races while
/// we are alive, and it works across the uid switch for PostgreSQL because
/// the watchdog itself stays root.
pub struct Supervised {
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    /// Lines the service wrote to stdout and stderr.
    pub log: LogTail,
}

impl Supervised {
    /// Spawns `cmd` in its own process group (so a terminal Ctrl-C reaches
    /// only the test binary, whose death the watchdog then handles) with
    /// stdout/stderr captured into `log`.
    pub fn spawn(
        mut cmd: Command,
        signal: &str,
        cleanup: Option<&Path>,
        lines: Option<Sender<String>>,
    ) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let log = LogTail::default();
        log.capture(child.stdout.take().unwrap(), lines.clone());
        log.capture(child.stderr.take().unwrap(), lines);
        let watchdog = match spawn_watchdog(child.id(), signal, cleanup) {
            Ok(w) => w,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Supervised {
            child,
            watchdog: Some(watchdog),
            log,
        })
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the service has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for a command that ends by itself (initdb) and returns its
    /// status and output.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("wait for child");
        // Give the drain threads a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(20));
        (status, self.log.text())
    }

    /// Sends `signal` (a name such as `TERM`) and waits up to `grace` for
    /// the exit, then SIGKILLs. Returns once the process is reaped.
    pub fn stop(mut self, signal: &str, grace: Duration) {
        self.stop_in_place(signal, grace);
    }

    fn stop_in_place(&mut self, signal: &str, grace: Duration) {
        if self.exited().is_none() {
            send_signal(self.child.id(), signal);
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        // The service is gone, so the watchdog must not act on a PID that
        // could be reused: kill it instead of closing its pipe.
        if let Some((mut w, stdin)) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop_in_place("KILL", Duration::ZERO);
    }
}

fn spawn_watchdog(
    pid: u32,
    signal: &str,
    cleanup: Option<&Path>,
) -> std::io::Result<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
        while read -r _line; do :; done
        kill -s "$1" "$2" 2>/dev/null
        i=0
        while [ "$i" -lt 100 ] && [ -d "/proc/$2" ] &&
              ! grep -q '^State:[[:space:]]*Z' "/proc/$2/status" 2>/dev/null; do
            sleep 0.1; i=$((i + 1))
        done
        kill -s KILL "$2" 2>/dev/null
        if [ -n "$3" ]; then rm -rf -- "$3"; fi
    "#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("pgsync-test-watchdog")
        .arg(signal)
        .arg(pid.to_string())
        .arg(cleanup.map(|p| p.as_os_str()).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child.stdin.take().unwrap();
    Ok((child, stdin))
}

/// Kills a process (SIGKILL) when the test process dies without unwinding; disarmed, without
/// touching the process, when dropped. For children the test stops by itself, such as daemons.
pub struct Watchdog(Option<(Child, ChildStdin)>);

impl Watchdog {
    /// Watches `pid`; without `sh`, watches nothing (the test's own cleanup still runs).
    pub fn kill_on_exit(pid: u32) -> Watchdog {
        Watchdog(spawn_watchdog(pid, "KILL", None).ok())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Killed rather than released: the watched process may be gone and its PID reused.
        if let Some((mut w, stdin)) = self.0.take() {
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
        }
    }
}

/// Sends a named signal through `kill(1)`; `std` only offers SIGKILL and
/// `libc` is not a dependency of the tests.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A port that was free a moment ago and that this process has not handed
/// out before (the set stops two concurrent starts from racing each other;
/// other processes can still race, which callers cover by retrying).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let set = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if set.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The effective uid of this process, read from `/proc/self` (no `libc`).
pub fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// `(uid, gid)` of a local user from `/etc/passwd`.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// The first executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `cmd` with `input` on stdin and returns (success, stdout, stderr).
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for child");
    let _ = writer.join();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
