use kiln_oci::Digest;
use kiln_registry::RegistryError;

/// What went wrong reading or writing an image. Every variant names the location.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid image location `{given}`: {reason}")]
    Location { given: String, reason: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "{what} {expected} in {location} does not match its digest: the content hashes to {actual} ({size} bytes)"
    )]
    DigestMismatch {
        location: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
    #[error("{location} has no image for {wanted} (it has: {available})")]
    PlatformMissing {
        location: String,
        wanted: String,
        available: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
        let context = context.into();
        move |source| TransportError::Io { context, source }
    }

    pub(crate) fn invalid(
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> TransportError {
        TransportError::Invalid {
            location: location.into(),
            message: message.into(),
        }
    }
}
