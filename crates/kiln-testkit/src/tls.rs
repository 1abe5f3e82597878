//! A throwaway certificate authority for tests: a CA certificate and leaf certificates it
//! signs, written as PEM files in a temporary directory; and self-signed certificates made
//! with the `openssl` CLI as users make them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A CA made for one test. Files live until it is dropped.
pub struct TestCa {
    dir: tempfile::TempDir,
    cert: Certificate,
    key: KeyPair,
}

/// A certificate the test CA signed, its key, and where both were written.
pub struct IssuedCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER of the (ECDSA P-256) private key.
    pub key_pkcs8: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-ca-")
            .tempdir()
            .expect("creating the test CA's temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "kiln test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generating the CA key");
        let cert = params.self_signed(&key).expect("self-signing the CA");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("writing ca.pem");
        TestCa { dir, cert, key }
    }

    /// The CA certificate (PEM), what a client must trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), written as
    /// `<file_stem>.pem` and `<file_stem>.key`.
    pub fn issue(&self, file_stem: &str, names: &[&str]) -> IssuedCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf parameters");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or(file_stem),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("a valid DNS name")),
            })
            .collect();
        let key = KeyPair::generate().expect("generating a leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing a leaf certificate");
        let cert_path = self.dir.path().join(format!("{file_stem}.pem"));
        let key_path = self.dir.path().join(format!("{file_stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("writing a leaf certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing a leaf key");
        IssuedCert {
            cert_path,
            key_path,
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        }
    }

    /// A certificate for a server on 127.0.0.1 (and `localhost`).
    pub fn issue_loopback_server(&self) -> IssuedCert {
        let ip = Ipv4Addr::LOCALHOST.to_string();
        self.issue("server", &[&ip, "localhost"])
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A self-signed certificate and its key made by the `openssl` CLI the way Docker's "deploy a
/// registry" guide makes one (`openssl req -x509 ... -addext subjectAltName=...`), which marks
/// it CA:TRUE. Files live until it is dropped.
pub struct SelfSigned {
    _dir: tempfile::TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl SelfSigned {
    /// Valid from now for 30 days, for `san` (an openssl subjectAltName value such as
    /// `IP:127.0.0.1` or `DNS:registry.example`).
    pub fn new(san: &str) -> SelfSigned {
        let (dir, cert_path, key_path) = self_signed_paths();
        openssl(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                ])
                .args(["-subj", "/CN=kiln-test", "-addext"])
                .arg(format!("subjectAltName={san}"))
                .arg("-keyout")
                .arg(&key_path)
                .arg("-out")
                .arg(&cert_path),
        );
        SelfSigned {
            _dir: dir,
            cert_path,
            key_path,
        }
    }

    /// Like [`SelfSigned::new`] but valid only from `start` to `end` (openssl's
    /// `YYYYMMDDHHMMSSZ`), e.g. long expired. OpenSSL 3.0's `req` has no option for the dates,
    /// so the request is self-signed with `openssl ca -selfsign`, keeping CA:TRUE.
    pub fn valid_between(san: &str, start: &str, end: &str) -> SelfSigned {
        let (dir, cert_path, key_path) = self_signed_paths();
        let d = dir.path();
        std::fs::write(d.join("index.txt"), "").expect("writing the openssl ca database");
        std::fs::write(d.join("serial"), "01\n").expect("writing the openssl ca serial");
        let config = format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\n\
             serial = {0}/serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n\
             x509_extensions = ext\n[p]\ncommonName = supplied\n\
             [ext]\nbasicConstraints = critical,CA:TRUE\n",
            d.display()
        );
        std::fs::write(d.join("ca.cnf"), config).expect("writing the openssl ca config");
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
                .args(["-subj", "/CN=kiln-test", "-addext"])
                .arg(format!("subjectAltName={san}"))
                .arg("-keyout")
                .arg(&key_path)
                .arg("-out")
                .arg(d.join("req.csr")),
        );
        openssl(
            Command::new("openssl")
                .args(["ca", "-batch", "-selfsign", "-notext", "-config"])
                .arg(d.join("ca.cnf"))
                .arg("-keyfile")
                .arg(&key_path)
                .arg("-in")
                .arg(d.join("req.csr"))
                .arg("-out")
                .arg(&cert_path)
                .args(["-startdate", start, "-enddate", end]),
        );
        SelfSigned {
            _dir: dir,
            cert_path,
            key_path,
        }
    }
}

fn self_signed_paths() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("kiln-test-self-signed-")
        .tempdir()
        .expect("creating a temp dir for a self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    (dir, cert, key)
}

fn openssl(command: &mut Command) {
    let out = command.output().expect("running openssl");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
