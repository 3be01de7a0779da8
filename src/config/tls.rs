//! TLS to PostgreSQL with libpq's `sslmode` meanings, on rustls.
//!
//! | sslmode | tries | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | plain | – |
//! | `allow` | plain, then TLS if the server refused the plain connection | only with a root certificate |
//! | `prefer` (libpq's default) | TLS, then plain if TLS failed or was refused | only with a root certificate |
//! | `require` | TLS | only with a root certificate (then as `verify-ca`) |
//! | `verify-ca` | TLS | chain against the root certificate |
//! | `verify-full` | TLS | chain, and the host name against the certificate |
//!
//! As in libpq, the root certificate is `sslrootcert`, else `~/.postgresql/root.crt` when it
//! exists; `sslrootcert=system` trusts the system's CA bundle and makes `verify-full` the default
//! (weaker modes are then refused, as libpq 16 does). A client certificate is `sslcert`/`sslkey`,
//! else `~/.postgresql/postgresql.crt`/`.key` when they exist. Unix-socket connections never use
//! TLS (libpq ignores sslmode there).

use crate::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain only.
    Disable,
    /// Plain first, TLS if the server refuses it.
    Allow,
    /// TLS first, plain if that fails.
    Prefer,
    /// TLS only.
    Require,
    /// TLS, certificate chain checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// The six names libpq accepts (case-insensitive here, as PGSync's command line is).
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The accepted values, for error messages.
pub const SSLMODES: &str = "disable, allow, prefer, require, verify-ca or verify-full";

/// One connection attempt, in libpq's order for the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Without TLS.
    Plain,
    /// With TLS.
    Tls,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (the connection is encrypted, not authenticated).
    Nothing,
    /// The chain up to a trusted root, not the name.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file (`sslrootcert`, or `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The system's CA bundle (`sslrootcert=system`), found at this path.
    System(PathBuf),
}

impl Roots {
    /// The PEM file holding the roots.
    pub fn path(&self) -> &Path {
        match self {
            Roots::File(p) | Roots::System(p) => p,
        }
    }
}

/// The TLS settings of connections to one server, resolved as libpq resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// The effective mode.
    pub mode: SslMode,
    /// Trusted roots, if any.
    pub roots: Option<Roots>,
    /// Client certificate chain and key (PEM), if any.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// What the configuration says, before resolution: each value already picked from the URL, the
/// configuration keys or the environment, in that order.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// `sslmode`, unset meaning libpq's default.
    pub sslmode: Option<String>,
    /// `sslrootcert`: a path or `system`.
    pub sslrootcert: Option<PathBuf>,
    /// `sslcert`.
    pub sslcert: Option<PathBuf>,
    /// `sslkey`.
    pub sslkey: Option<PathBuf>,
}

impl PgTls {
    /// No TLS at all.
    pub fn disabled() -> PgTls {
        PgTls {
            mode: SslMode::Disable,
            roots: None,
            client: None,
        }
    }

    /// Resolves `s` as libpq does; `home` is where `.postgresql/` is looked for. Errors say which
    /// setting to change. An explicitly named file that does not exist is an error (libpq would
    /// quietly skip verification for `require`; PGSync itself refuses a missing PG_SSLROOTCERT).
    pub fn resolve(s: &TlsSettings, home: Option<&Path>) -> Result<PgTls> {
        let system = s.sslrootcert.as_deref() == Some(Path::new("system"));
        let mode = match &s.sslmode {
            Some(m) => SslMode::parse(m)
                .ok_or_else(|| Error::config(format!("sslmode {m:?} is not one of {SSLMODES}")))?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(Error::config(format!(
                "sslmode {:?} may not be used with sslrootcert=system (use \"verify-full\")",
                mode.as_str()
            )));
        }
        let dot = home.map(|h| h.join(".postgresql"));
        let roots = match &s.sslrootcert {
            _ if system => Some(Roots::System(system_bundle()?)),
            Some(p) => Some(Roots::File(existing("sslrootcert", p)?)),
            None => dot
                .as_ref()
                .map(|d| d.join("root.crt"))
                .filter(|p| p.is_file())
                .map(Roots::File),
        };
        if roots.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(Error::config(format!(
                "sslmode {} needs a root certificate: set sslrootcert (PG_SSLROOTCERT) to the CA's PEM file, or to \"system\" for the system's CAs",
                mode.as_str()
            )));
        }
        let client = client_pair(s, dot.as_deref())?;
        Ok(PgTls {
            mode,
            roots,
            client,
        })
    }

    /// The attempts libpq makes, in order.
    pub fn attempts(&self) -> &'static [Attempt] {
        match self.mode {
            SslMode::Disable => &[Attempt::Plain],
            SslMode::Allow => &[Attempt::Plain, Attempt::Tls],
            SslMode::Prefer => &[Attempt::Tls, Attempt::Plain],
            _ => &[Attempt::Tls],
        }
    }

    /// What a TLS attempt checks: libpq verifies the chain whenever it has a root certificate.
    pub fn verify(&self) -> Verify {
        match self.mode {
            SslMode::VerifyFull => Verify::ChainAndName,
            SslMode::VerifyCa => Verify::Chain,
            _ if self.roots.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// A rustls client configuration for TLS attempts.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let provider = crypto_provider();
        let verifier = self.verifier(&provider)?;
        self.build(provider, verifier)
    }

    /// Like [`PgTls::client_config`], also keeping the server's certificate (DER) in `seen` once
    /// the handshake checked it: the replication connection learns from it which name to send.
    pub fn recording_client_config(
        &self,
        seen: Arc<Mutex<Option<Vec<u8>>>>,
    ) -> Result<rustls::ClientConfig> {
        let provider = crypto_provider();
        let inner = self.verifier(&provider)?;
        self.build(provider, Arc::new(Recording { inner, seen }))
    }

    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ServerCertVerifier>> {
        Ok(match self.verify() {
            Verify::Nothing => Arc::new(AcceptAnyCertificate(provider.clone())),
            Verify::Chain => Arc::new(ChainOnly(self.webpki_verifier(provider)?)),
            Verify::ChainAndName => self.webpki_verifier(provider)?,
        })
    }

    fn build(
        &self,
        provider: Arc<CryptoProvider>,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS set-up: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs("sslcert", cert)?, read_key(key)?)
                .map_err(|e| {
                    Error::config(format!(
                        "sslcert {} / sslkey {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                }),
        }
    }

    fn webpki_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
        let roots = self
            .roots
            .as_ref()
            .ok_or_else(|| Error::internal("certificate verification without roots"))?;
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(read_certs("sslrootcert", roots.path())?);
        if added == 0 {
            return Err(Error::config(format!(
                "sslrootcert {} holds no usable CA certificate",
                roots.path().display()
            )));
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            provider.clone(),
        )
        .build()
        .map_err(|e| Error::config(format!("sslrootcert {}: {e}", roots.path().display())))
    }
}

/// One reason, or each attempt's when they differ.
pub fn describe_failures(failures: &[(Attempt, String)]) -> String {
    let first = failures
        .first()
        .map(|(_, r)| r.as_str())
        .unwrap_or("no attempt made");
    if failures.iter().all(|(_, r)| r == first) {
        return first.to_owned();
    }
    failures
        .iter()
        .map(|(a, r)| match a {
            Attempt::Tls => format!("{r} (over TLS)"),
            Attempt::Plain => format!("{r} (without TLS)"),
        })
        .collect::<Vec<_>>()
        .join("; then ")
}

/// The crypto provider every TLS connection here uses (ring). Also installed as the process
/// default, which libraries that build their own rustls configuration (the Redis client) need,
/// since more than one provider is compiled in.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let _ = CryptoProvider::install_default((*provider).clone());
    provider
}

fn existing(key: &str, p: &Path) -> Result<PathBuf> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(Error::config(format!(
            "{key} {} does not exist or is not a file",
            p.display()
        )))
    }
}

/// `sslcert`/`sslkey`, or libpq's defaults under `~/.postgresql` when the certificate exists.
fn client_pair(s: &TlsSettings, dot: Option<&Path>) -> Result<Option<(PathBuf, PathBuf)>> {
    let cert = match &s.sslcert {
        Some(p) => Some(existing("sslcert", p)?),
        None => dot
            .map(|d| d.join("postgresql.crt"))
            .filter(|p| p.is_file()),
    };
    let Some(cert) = cert else {
        if let Some(k) = &s.sslkey {
            return Err(Error::config(format!(
                "sslkey {} is set without sslcert (the client certificate it belongs to)",
                k.display()
            )));
        }
        return Ok(None);
    };
    let key = match &s.sslkey {
        Some(p) => existing("sslkey", p)?,
        None => match dot
            .map(|d| d.join("postgresql.key"))
            .filter(|p| p.is_file())
        {
            Some(k) => k,
            None => {
                return Err(Error::config(format!(
                    "certificate {} present, but no private key: set sslkey (PGSSLKEY)",
                    cert.display()
                )))
            }
        },
    };
    Ok(Some((cert, key)))
}

/// The system CA bundle: `SSL_CERT_FILE`, else the first of the usual locations (Debian/Ubuntu,
/// RHEL, SUSE, Alpine), as OpenSSL (and so libpq) finds it.
fn system_bundle() -> Result<PathBuf> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from) {
        return existing("SSL_CERT_FILE", &f);
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or_else(|| {
        Error::config(
            "sslrootcert=system: no system CA bundle found (install ca-certificates or set SSL_CERT_FILE)",
        )
    })
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::config(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{key} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        Error::config(format!(
            "sslkey {}: {e} (an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key is needed)",
            path.display()
        ))
    })
}

/// libpq's `require` (and `prefer`/`allow`) without a root certificate: encrypted, and the
/// handshake's signatures checked, but any certificate accepted.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Delegates to `inner` and keeps the end-entity certificate it accepted.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Option<&str>, root: Option<&Path>) -> TlsSettings {
        TlsSettings {
            sslmode: mode.map(str::to_owned),
            sslrootcert: root.map(Path::to_path_buf),
            ..Default::default()
        }
    }

    #[test]
    fn modes_try_in_libpq_order_and_verify_as_libpq_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.pem");
        std::fs::write(&root, "x").unwrap();
        let cases = [
            ("disable", None, &[Attempt::Plain][..], Verify::Nothing),
            (
                "allow",
                None,
                &[Attempt::Plain, Attempt::Tls][..],
                Verify::Nothing,
            ),
            (
                "prefer",
                None,
                &[Attempt::Tls, Attempt::Plain][..],
                Verify::Nothing,
            ),
            ("require", None, &[Attempt::Tls][..], Verify::Nothing),
            // libpq: require with a root certificate behaves as verify-ca.
            (
                "require",
                Some(root.as_path()),
                &[Attempt::Tls][..],
                Verify::Chain,
            ),
            (
                "prefer",
                Some(root.as_path()),
                &[Attempt::Tls, Attempt::Plain][..],
                Verify::Chain,
            ),
            (
                "verify-ca",
                Some(root.as_path()),
                &[Attempt::Tls][..],
                Verify::Chain,
            ),
            (
                "VERIFY-FULL",
                Some(root.as_path()),
                &[Attempt::Tls][..],
                Verify::ChainAndName,
            ),
        ];
        for (mode, r, attempts, verify) in cases {
            let t = PgTls::resolve(&settings(Some(mode), r), None).unwrap();
            assert_eq!(t.attempts(), attempts, "{mode}");
            assert_eq!(t.verify(), verify, "{mode} root={r:?}");
        }
        // libpq's default is prefer.
        let t = PgTls::resolve(&settings(None, None), None).unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
    }

    #[test]
    fn failures_are_reported_once_when_alike_and_per_attempt_otherwise() {
        let same = [
            (Attempt::Tls, "x".to_owned()),
            (Attempt::Plain, "x".to_owned()),
        ];
        assert_eq!(describe_failures(&same), "x");
        let differ = [
            (Attempt::Tls, "a".to_owned()),
            (Attempt::Plain, "b".to_owned()),
        ];
        assert_eq!(
            describe_failures(&differ),
            "a (over TLS); then b (without TLS)"
        );
    }

    #[test]
    fn verifying_modes_need_a_root_and_named_files_must_exist() {
        let e = PgTls::resolve(&settings(Some("verify-ca"), None), None).unwrap_err();
        assert!(e.message.contains("sslrootcert"), "{e}");
        let e = PgTls::resolve(
            &settings(Some("require"), Some(Path::new("/nonexistent/ca.pem"))),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        let e = PgTls::resolve(&settings(Some("fancy"), None), None).unwrap_err();
        assert!(e.message.contains("verify-full"), "{e}");
    }

    #[test]
    fn home_dot_postgresql_files_are_used_when_present() {
        let home = tempfile::tempdir().unwrap();
        let dot = home.path().join(".postgresql");
        std::fs::create_dir(&dot).unwrap();
        std::fs::write(dot.join("root.crt"), "x").unwrap();
        let t = PgTls::resolve(&settings(Some("require"), None), Some(home.path())).unwrap();
        assert_eq!(t.roots, Some(Roots::File(dot.join("root.crt"))));
        assert_eq!(t.verify(), Verify::Chain);
        assert_eq!(t.client, None);
        std::fs::write(dot.join("postgresql.crt"), "x").unwrap();
        let e = PgTls::resolve(&settings(None, None), Some(home.path())).unwrap_err();
        assert!(e.message.contains("private key"), "{e}");
        std::fs::write(dot.join("postgresql.key"), "x").unwrap();
        let t = PgTls::resolve(&settings(None, None), Some(home.path())).unwrap();
        assert_eq!(
            t.client,
            Some((dot.join("postgresql.crt"), dot.join("postgresql.key")))
        );
    }

    #[test]
    fn system_roots_default_to_verify_full_and_refuse_weaker_modes() {
        if system_bundle().is_err() {
            eprintln!("skipped: no system CA bundle on this machine");
            return;
        }
        let system = Path::new("system");
        let t = PgTls::resolve(&settings(None, Some(system)), None).unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert!(matches!(t.roots, Some(Roots::System(_))));
        let e = PgTls::resolve(&settings(Some("require"), Some(system)), None).unwrap_err();
        assert!(e.message.contains("verify-full"), "{e}");
    }
}
