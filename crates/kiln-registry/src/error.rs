use kiln_oci::Digest;

/// What went wrong talking to a registry. Every variant names the registry (credential
/// errors name the file or helper instead).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry} (for {repository}): {detail}")]
    Unreachable {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("{what} not found in {registry}/{repository}")]
    NotFound {
        registry: String,
        repository: String,
        what: String,
    },
    #[error("registry {registry} denied access to {repository} (HTTP {status}): {message}")]
    Denied {
        registry: String,
        repository: String,
        status: u16,
        message: String,
    },
    #[error("registry {registry} answered HTTP {status} for {repository} ({action}): {message}")]
    Http {
        registry: String,
        repository: String,
        action: String,
        status: u16,
        message: String,
    },
    #[error(
        "content from {registry}/{repository} does not match its digest: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        registry: String,
        repository: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "registry {registry} sent a manifest for {repository} with unsupported media type `{media_type}`"
    )]
    UnsupportedMediaType {
        registry: String,
        repository: String,
        media_type: String,
    },
    #[error(
        "registry {registry} refused the credentials for {repository} from {from}: check them, or run `kiln login {registry}`"
    )]
    BadCredentials {
        registry: String,
        repository: String,
        /// Where the credentials came from, e.g. `file /root/.docker/config.json`.
        from: String,
    },
    #[error(
        "registry {registry} requires credentials for {repository} and none were found (looked in {searched}): run `kiln login {registry}`"
    )]
    NoCredentials {
        registry: String,
        repository: String,
        searched: String,
    },
    #[error(
        "the TLS certificate of registry {registry} is not trusted (for {repository}): {detail}; pass its CA with `--registry-certificate {registry}=ca.pem`, or `ca = [\"ca.pem\"]` under [registry.\"{registry}\"] in the registry config"
    )]
    UntrustedCertificate {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error(
        "registry {registry} did not accept kiln's client certificate (for {repository}): {detail}; pass one with `--registry-client-cert {registry}=cert.pem,key.pem`, or a [[registry.\"{registry}\".keypair]] in the registry config"
    )]
    ClientCertificateRejected {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("cannot set up TLS for registry {registry}: {what}: {detail}")]
    TlsSetup {
        registry: String,
        what: String,
        detail: String,
    },
    #[error(
        "every mirror of {registry} failed for {repository} and fallback to {registry} is off: {failures}"
    )]
    MirrorsFailed {
        registry: String,
        repository: String,
        failures: String,
    },
    #[error(
        "gave up on registry {registry} (for {repository}) after {attempts} attempts; the last one failed: {last}"
    )]
    RetriesExhausted {
        registry: String,
        repository: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "registry {registry} sent more than {} for {what} of {repository}; kiln reads no more than that",
        crate::limits::size_text(*.limit)
    )]
    TooLarge {
        registry: String,
        repository: String,
        /// What was too large, e.g. `the manifest `latest``.
        what: String,
        limit: u64,
    },
    #[error(
        "registry {registry} sent nothing for {seconds} s while kiln was waiting for {what} (for {repository})"
    )]
    Stalled {
        registry: String,
        repository: String,
        what: String,
        seconds: u64,
    },
    #[error(
        "registry {registry} sent kiln to {url} (for {repository}), over plain HTTP: kiln speaks plain HTTP only to loopback and to registries marked insecure (--insecure-registry, or http = true in the registry config)"
    )]
    PlainHttpRefused {
        registry: String,
        repository: String,
        url: String,
    },
    #[error(
        "{host} asked for credentials (for {registry}/{repository}); kiln sends the credentials of {registry} only to {registry} itself and to its token service"
    )]
    CredentialsWithheld {
        registry: String,
        repository: String,
        host: String,
    },
    #[error("login to {registry} failed: {detail}")]
    LoginFailed { registry: String, detail: String },
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
