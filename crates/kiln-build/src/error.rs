use std::path::PathBuf;
use std::time::Duration;

use kiln_registry::RegistryError;

/// Why a build failed. Each variant names what the user has to look at.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] kiln_dockerfile::ParseError),
    /// A mistake at `line` (and `column`, when known) of the Dockerfile.
    #[error("{path}:{line}{}: {message}", column.map(|c| format!(":{c}")).unwrap_or_default())]
    Dockerfile {
        path: String,
        line: usize,
        column: Option<usize>,
        message: String,
    },
    #[error("target stage `{0}` is not defined in the Dockerfile")]
    UnknownTarget(String),
    /// A flag names a stage the Dockerfile does not have.
    #[error("{flag} {name}: the Dockerfile has no stage named `{name}` ({stages})")]
    NoSuchStage {
        flag: String,
        name: String,
        stages: String,
    },
    #[error("{path}:{line}: COPY --from={name}: no stage or image named `{name}`")]
    UnknownStage {
        path: String,
        line: usize,
        name: String,
    },
    #[error("{path}:{line}: {source_path}: not found in the build context {context}")]
    MissingSource {
        path: String,
        line: usize,
        source_path: String,
        context: PathBuf,
    },
    #[error("base image {reference}: {source}")]
    BaseImage {
        reference: String,
        #[source]
        source: Box<kiln_transport::TransportError>,
    },
    #[error("base image {reference} has no image for {wanted} (it has: {available})")]
    PlatformMissing {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{reference}: {message}")]
    BadImage { reference: String, message: String },
    /// A RUN's command exited non-zero; `path:line` is the RUN (or the FROM whose ONBUILD
    /// trigger it was).
    #[error(
        "{path}:{line}: step [{step}] {instruction} failed with exit code {code}\n--- last lines of its output ---\n{tail}"
    )]
    RunFailed {
        path: String,
        line: usize,
        step: String,
        instruction: String,
        code: i32,
        tail: String,
    },
    /// A RUN's command could not be run at all.
    #[error("{path}:{line}: step [{step}] {instruction}: {message}")]
    Step {
        path: String,
        line: usize,
        step: String,
        instruction: String,
        message: String,
    },
    /// The trial step before the first RUN that runs failed: no RUN step can run here.
    #[error(
        "RUN steps cannot run here: kiln runs each one in new user and mount namespaces, and a \
         trial step failed ({message}). In a container, this usually means that its seccomp \
         profile refuses them: Docker's default and Kubernetes' RuntimeDefault refuse unshare \
         and mount to a container without CAP_SYS_ADMIN, and pivot_root even with it. Ways \
         out: run the container with podman's default seccomp profile or an unconfined one \
         (`--security-opt seccomp=unconfined`; in Kubernetes, \
         `securityContext.seccompProfile.type: Unconfined`); let kiln run the steps in the \
         container's own / as kaniko does (`--isolation in-place`, which deletes everything \
         else in the container, and which `--isolation auto` picks by itself only in kiln's \
         own image, where kiln runs from /kiln); or build a Dockerfile without RUN \
         steps. No image was written or pushed"
    )]
    Namespaces { message: String },
    /// As [`BuildError::Namespaces`], for a kiln that is not root: in place is no way out.
    #[error(
        "RUN steps cannot run here: kiln runs as uid {uid}, not as root, so it runs them in a \
         user namespace of its own, and this system refuses to make one ({message}). In a \
         container, its seccomp profile does: Docker's default and Kubernetes' RuntimeDefault \
         refuse new namespaces to a container without CAP_SYS_ADMIN. Ways out: run the \
         container as root (`runAsUser: 0`), where kiln's own image runs RUN steps in the \
         container's own / as kaniko does; or with a seccomp profile that allows namespaces \
         (podman's default, or `seccompProfile.type: Unconfined`); on a host, allow \
         unprivileged user namespaces (`user.max_user_namespaces`, Debian's \
         `kernel.unprivileged_userns_clone`, Ubuntu's \
         `kernel.apparmor_restrict_unprivileged_userns`). Dockerfiles without RUN steps build \
         as any user. No image was written or pushed"
    )]
    NoUserNamespace { uid: u32, message: String },
    #[error(
        "--isolation in-place runs RUN steps in the / kiln runs in, deleting everything there \
         but kiln's own directory and mount points, and kiln finds no sign that it runs in a \
         container (/.dockerenv, /run/.containerenv, KUBERNETES_SERVICE_HOST, a container \
         runtime in /proc/1/cgroup). On a host that would wipe the host. If this is a \
         throwaway container or machine, pass --force"
    )]
    InPlaceOutsideContainer,
    #[error(
        "in-place isolation needs kiln to run as root, since it lays out / for each RUN step; \
         kiln runs as another user and cannot make namespaces here either. Run the container \
         as root (`runAsUser: 0`), or with a seccomp profile that allows namespaces \
         (podman's default, or `seccompProfile.type: Unconfined`). Dockerfiles without RUN \
         steps build either way"
    )]
    InPlaceNotRoot,
    #[error(
        "cannot run RUN steps for {platform} here: building in place (no namespaces), kiln can \
         only run what this node's kernel runs, natively or through a binfmt_misc handler the \
         node already has. Build each platform on a runner of its own architecture and \
         stitch the images into one index (`kiln build --platform ... -o \
         type=image,push-by-digest=true` per runner, then `kiln manifest create \
         --from-metadata`), or cross-compile in a `FROM --platform=$BUILDPLATFORM` stage so \
         that the {platform} stages have no RUN steps"
    )]
    InPlaceForeign { platform: String },
    #[error("cannot run RUN steps for {platform}: {message}")]
    Emulation { platform: String, message: String },
    #[error("the build for {platform} was cancelled because another platform failed")]
    Cancelled { platform: String },
    #[error(transparent)]
    Registry(Box<RegistryError>),
    /// `--cache-to ...,ignore-error=false` and the export failed (the images were delivered).
    #[error("exporting the build cache to {reference}: {message}")]
    CacheExport { reference: String, message: String },
    /// An output could not be written; `action` says which (`writing the OCI layout x`).
    #[error("{action}: {source}")]
    Export {
        action: String,
        #[source]
        source: Box<kiln_transport::TransportError>,
    },
    /// `kiln prune --timeout`: builds still held the root when the time was up.
    #[error(
        "builds are still using the kiln root {} after {}s; nothing was removed",
        root.display(),
        waited.as_secs_f64()
    )]
    RootBusy { root: PathBuf, waited: Duration },
    /// A context that is not a local directory could not be fetched; `context` names its
    /// kind and URL (`the git context https://...`).
    #[error("cannot fetch {context}: {message}")]
    RemoteContext { context: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<RegistryError> for BuildError {
    fn from(e: RegistryError) -> Self {
        BuildError::Registry(Box::new(e))
    }
}

impl BuildError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
        let context = context.into();
        move |source| BuildError::Io { context, source }
    }
}
