//! TLS of the replication connection: libpq's modes mapped onto pgwire-replication's
//! `TlsConfig`, attempt by attempt (see [`crate::config::tls`]).
//!
//! pgwire-replication 0.5 has `disable`, `prefer`, `require`, `verify-ca` and `verify-full` but
//! no `allow`, and its `prefer` falls back to plain only when the server answers "no TLS"; both
//! are done here as libpq does them, by trying again with the next attempt. Three more gaps are
//! bridged: its `prefer`/`require` never check the chain, while libpq does whenever it has a root
//! certificate (so those attempts use its `verify-ca`); its `verify-full` refuses an IP address
//! as host, which libpq checks against the certificate's IP entries (the address is passed as the
//! TLS server name, which rustls then checks); and its `verify-ca` rejects a certificate whose
//! name differs from the host under rustls ≥ 0.23.26 (it catches only the older form of the
//! name-mismatch error), so for `verify-ca` the server's certificate is first checked here, chain
//! only, and the name it holds is passed as the server name.

use crate::config::tls::{Attempt, PgTls, Verify};
use crate::{Error, ErrorKind, Result};
use pgwire_replication::{PgWireError, TlsConfig};
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// pgwire-replication's settings for one attempt to `host:port`.
pub async fn tls_config(tls: &PgTls, attempt: Attempt, host: &str, port: u16) -> Result<TlsConfig> {
    if attempt == Attempt::Plain || host.starts_with('/') {
        return Ok(TlsConfig::disabled());
    }
    let roots = tls.roots.as_ref().map(|r| r.path().to_path_buf());
    let mut config = match tls.verify() {
        Verify::Nothing => TlsConfig::require(),
        Verify::Chain => {
            let name = certificate_name(tls, host, port).await?;
            TlsConfig::verify_ca(roots).with_sni_hostname(name)
        }
        Verify::ChainAndName => {
            let c = TlsConfig::verify_full(roots);
            if host.parse::<std::net::IpAddr>().is_ok() {
                c.with_sni_hostname(host)
            } else {
                c
            }
        }
    };
    if let Some((cert, key)) = &tls.client {
        config = config.with_client_cert(cert, key);
    }
    Ok(config)
}

/// As in libpq: after a failed attempt the next one is tried when the server answered (a TLS
/// refusal or handshake failure, or an authentication/pg_hba.conf error: SQLSTATE class 28), not
/// when it could not be reached or refused the replication itself.
pub fn worth_next_attempt(e: &PgWireError) -> bool {
    match e {
        PgWireError::Tls(_) | PgWireError::Auth(_) => true,
        PgWireError::Server(msg) => msg.contains("SQLSTATE 28"),
        _ => false,
    }
}

/// Whether the server refuses TLS outright (answers "N" to an SSLRequest). Asked before a TLS
/// attempt that has a plain fallback (`prefer`), so the fallback needs no failed attempt, which
/// pgwire-replication would log at ERROR on every start against a server without TLS.
pub async fn server_refuses_tls(host: &str, port: u16) -> bool {
    matches!(ssl_request(host, port).await, Ok(None))
}

/// Sends PostgreSQL's SSLRequest (length 8, code 80877103): the connection, ready for the TLS
/// handshake, when the server answers "S"; `None` when it answers anything else.
async fn ssl_request(host: &str, port: u16) -> std::io::Result<Option<tokio::net::TcpStream>> {
    let mut tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    Ok((answer[0] == b'S').then_some(tcp))
}

/// A name the server's certificate is valid for, learnt by a TLS handshake whose verifier checks
/// the chain only (libpq's verify-ca) and records the certificate it accepted.
async fn certificate_name(tls: &PgTls, host: &str, port: u16) -> Result<String> {
    let seen: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let config = tls.recording_client_config(seen.clone())?;
    let unreachable = |what: String| {
        Error::new(
            ErrorKind::SourceUnreachable,
            format!("replication connection to {host}:{port}: {what}"),
        )
    };
    let Some(tcp) = ssl_request(host, port)
        .await
        .map_err(|e| unreachable(e.to_string()))?
    else {
        return Err(unreachable("server does not support TLS".into()));
    };
    // Any syntactically valid name will do: the chain-only verifier ignores it.
    let name = ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid name"));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    if let Err(e) = connector.connect(name, tcp).await {
        return Err(unreachable(format!("TLS handshake failed: {e}")));
    }
    let der = seen.lock().unwrap_or_else(|e| e.into_inner()).take();
    der.and_then(|d| certificate_dns_name(&d))
        .or_else(|| host.parse::<std::net::IpAddr>().is_ok().then(|| host.to_owned()))
        .ok_or_else(|| {
            Error::config(format!(
                "the certificate of {host}:{port} holds no DNS name (subjectAltName), which verify-ca on the replication connection needs"
            ))
        })
}

fn certificate_dns_name(der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(der.to_vec());
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    let name = cert.valid_dns_names().next().map(str::to_owned);
    name
}
