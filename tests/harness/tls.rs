//! Certificates made in the test with rcgen: a CA, and server and client certificates it signs,
//! written as PEM files (keys 0600, as libpq and PostgreSQL insist) into a temp dir.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A certificate and its key, as text and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// Where `cert_pem` is written.
    pub cert: PathBuf,
    /// Where `key_pem` is written (mode 0600).
    pub key: PathBuf,
}

/// A throwaway certificate authority.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// Where `ca_pem` is written.
    pub ca_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its files go to a new temp dir).
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("pgsync-test-pki-")
            .tempdir()
            .expect("create pki dir");
        // Readable by a server that runs as another user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = issuer.pem();
        let ca_file = dir.path().join(format!("{name}.crt"));
        std::fs::write(&ca_file, &ca_pem).unwrap();
        std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        TestCa {
            dir,
            issuer,
            ca_pem,
            ca_file,
        }
    }

    /// The temp dir holding every file of this CA.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate valid for `names` (DNS names or IP addresses).
    pub fn server(&self, file: &str, names: &[&str]) -> CertFiles {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        self.issue(file, params)
    }

    /// A client certificate whose common name is `user` (PostgreSQL's `cert` authentication maps
    /// it to the role of that name).
    pub fn client(&self, file: &str, user: &str) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, user);
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = CertFiles {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, &files.cert_pem).unwrap();
        std::fs::set_permissions(&files.cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&files.key, &files.key_pem).unwrap();
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        files
    }
}
