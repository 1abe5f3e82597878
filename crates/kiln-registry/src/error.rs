use kiln_oci::Digest;

/// What went wrong talking to a registry. Every variant names the registry and repository.
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
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
