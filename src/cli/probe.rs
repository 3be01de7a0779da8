//! `pgsync health`: asks a running daemon's listener whether it is ready (`/readyz`) or alive
//! (`/healthz`) with one plain HTTP/1.0 request, so the container image needs no curl.

use crate::config::Config;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long the probe waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Probes the daemon; prints its answer and returns the exit code (0 when it says yes).
pub fn health(cfg: &Config, url: Option<&str>, live: bool) -> i32 {
    let Some(target) = url
        .map(str::to_owned)
        .or_else(|| cfg.metrics.listen.clone())
    else {
        eprintln!("error: metrics.listen is not set, so the daemon serves no /readyz: set it (PGSYNC_METRICS__LISTEN=0.0.0.0:9187) or pass --url host:port");
        return 2;
    };
    let path = if live { "/healthz" } else { "/readyz" };
    match get(&target, path) {
        Ok((200, body)) => {
            println!("{}", body.trim_end());
            0
        }
        Ok((status, body)) => {
            println!("{status}: {}", body.trim_end());
            1
        }
        Err(e) => {
            eprintln!("error: {path} at {target}: {e}");
            1
        }
    }
}

/// `host:port` of a listen address or URL; a wildcard address is probed on loopback.
pub fn probe_address(target: &str) -> String {
    let hostport = target
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(target);
    match hostport.rsplit_once(':') {
        Some(("0.0.0.0" | "" | "[::]", port)) => format!("127.0.0.1:{port}"),
        _ => hostport.to_owned(),
    }
}

/// One GET; returns the status and the body.
pub fn get(target: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr = probe_address(target);
    let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no address for {addr}"),
        )
    })?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
        })?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(probe_address("0.0.0.0:9187"), "127.0.0.1:9187");
        assert_eq!(probe_address("http://db:9187/readyz"), "db:9187");
        assert_eq!(probe_address("127.0.0.1:1"), "127.0.0.1:1");
    }
}
