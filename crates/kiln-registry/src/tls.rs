//! The TLS settings of one registry: the CAs kiln trusts (the public web roots plus those the
//! user passed), the client certificate it presents, and how the server's certificate is
//! checked.
//!
//! Checking is WebPKI's, with one addition: a server certificate that the user trusted
//! byte for byte is accepted although it is a CA certificate. `openssl req -x509` (the way
//! Docker's "deploy a registry" guide makes a self-signed certificate) marks it CA:TRUE, and
//! WebPKI refuses a CA as the end of a chain (`CaUsedAsEndEntity`); Docker, skopeo and kaniko
//! accept it when it is the very certificate they were told to trust. Its name and validity
//! period are still checked, and the handshake signatures are verified as for any server.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use x509_cert::der::Decode;

/// A client certificate chain and its private key.
pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Every certificate in the PEM `bundle`; a bundle without one is an error, since a file
/// passed as a CA that holds none is a mistake the user should hear about.
pub(crate) fn pem_certificates(bundle: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bundle)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("it holds no PEM certificate".into());
    }
    Ok(certs)
}

/// A client certificate chain from the PEM `cert` file and its key from the PEM `key` file.
pub(crate) fn identity(cert: &[u8], key: &[u8]) -> Result<Identity, String> {
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the key: {e}"))?;
    Ok((pem_certificates(cert)?, key))
}

/// The rustls configuration for one registry. `trusted` are the certificates the user gave
/// for it; `skip_verify` accepts any server certificate (`--skip-tls-verify`).
pub(crate) fn client_config(
    trusted: Vec<CertificateDer<'static>>,
    identity: Option<Identity>,
    skip_verify: bool,
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in &trusted {
        roots.add(cert.clone())?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = RegistryVerifier {
        webpki,
        trusted,
        provider: provider.clone(),
        skip_verify,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    // kiln's HTTP client speaks HTTP/1.1 only; say so, as reqwest's own configuration does.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct RegistryVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The certificates the user trusted for this registry, exactly as given.
    trusted: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    skip_verify: bool,
}

impl ServerCertVerifier for RegistryVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skip_verify {
            return Ok(ServerCertVerified::assertion());
        }
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verdict {
            Err(e) if is_ca_used_as_end_entity(&e) && self.trusted.contains(end_entity) => {
                check_name_and_validity(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether WebPKI refused the server's certificate only for being a CA certificate.
fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// The checks WebPKI makes of an end entity that do not involve its issuer: that it names
/// `server_name` and that `now` lies within its validity period.
fn check_name_and_validity(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    rustls::client::verify_server_name(&ParsedCertificate::try_from(cert)?, server_name)?;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| CertificateError::BadEncoding)?;
    let validity = parsed.tbs_certificate().validity();
    let since_epoch = |d: Duration| UnixTime::since_unix_epoch(d);
    let not_before = validity.not_before.to_unix_duration();
    let not_after = validity.not_after.to_unix_duration();
    let time = Duration::from_secs(now.as_secs());
    if time < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: since_epoch(not_before),
        }
        .into());
    }
    if time > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: since_epoch(not_after),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WebPKI checks the validity period before it finds a CA certificate at the end of the
    /// chain, so a registry test cannot reach these checks with an expired certificate; they
    /// are asked directly at other times.
    #[test]
    fn a_trusted_certificate_is_checked_for_its_name_and_period() {
        let made = kiln_testkit::SelfSigned::new("IP:127.0.0.1");
        let cert = pem_certificates(&std::fs::read(&made.cert_path).unwrap())
            .unwrap()
            .remove(0);
        let ip = |s: &str| ServerName::try_from(s.to_string()).unwrap();
        let now = Duration::from_secs(UnixTime::now().as_secs());
        let at = |t: Duration| UnixTime::since_unix_epoch(t);
        let day = Duration::from_secs(24 * 3600);

        check_name_and_validity(&cert, &ip("127.0.0.1"), at(now)).unwrap();
        let refusal =
            |name: &str, t: Duration| match check_name_and_validity(&cert, &ip(name), at(t)) {
                Err(rustls::Error::InvalidCertificate(e)) => e,
                other => panic!("{other:?}"),
            };
        assert!(matches!(
            refusal("127.0.0.2", now),
            CertificateError::NotValidForNameContext { .. }
        ));
        assert!(matches!(
            refusal("127.0.0.1", now + 31 * day),
            CertificateError::ExpiredContext { .. }
        ));
        assert!(matches!(
            refusal("127.0.0.1", now - day),
            CertificateError::NotValidYetContext { .. }
        ));
    }
}
