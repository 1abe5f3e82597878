//! A throwaway certificate authority for tests: a CA certificate and leaf certificates it
//! signs, written as PEM files in a temporary directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

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
