//! Turns a parsed Dockerfile into images, in two steps: [`lower`] makes a [`Plan`] of fully
//! expanded operations with their cache keys (nothing runs), and [`solve`] does each op once,
//! reusing what the cache recorded and running the rest (RUN through a [`Worker`], COPY and
//! WORKDIR through kiln-snapshot), writing layers and configs into a content [`Store`].
//! [`deliver`] copies the images from there to each output (registry push, OCI layouts)
//! through `kiln_transport`, with the store as the source.

mod annotations;
mod attest;
mod base;
mod cache;
mod context;
mod context_hash;
mod context_record;
mod encode;
mod error;
mod export;
mod fileops;
mod isolation;
mod key;
mod lower;
mod metadata;
mod mounts;
mod output;
mod plan;
mod platform_args;
mod progress;
mod registry_cache;
mod remote_context;
mod rootfs;
mod rules;
mod sbom;
mod secrets;
mod solve;
mod store;
use kiln_oci::timefmt;
mod units;
mod usage;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_dockerfile::Dockerfile;
use kiln_oci::{Digest, Platform};
use kiln_registry::RegistryClient;
use kiln_sandbox::{Network, StepOptions};
use kiln_snapshot::LayerEncoding;
use kiln_transport::BaseImageCache;

pub use annotations::{Annotation, AnnotationError, AnnotationTarget, Annotations};
pub use attest::{
    AttestSpecError, Attestations, PREDICATE_TYPE_ANNOTATION, ProvenanceMode,
    REFERENCE_DIGEST_ANNOTATION, SLSA_PROVENANCE, SPDX_DOCUMENT,
};
pub use base::{BaseRef, ImageResolver, RegistryResolver, ResolvedImage};
pub use cache::{CacheBackend, KeyLock, LocalCache, Lookup, Record, RecordLayer};
pub use context::{BuildContext, ContextSource, try_unpack_context, unpack_context};
pub use context_hash::{ContextDigest, HashStats};
pub use error::BuildError;
pub use export::{OriginClients, StoreSource, deliver};
pub use isolation::{InPlaceOptions, InPlaceWorker, Isolation, in_container};
pub use key::CacheKey;
pub use kiln_oci::timefmt::now_secs;
pub use lower::{lower, stages_named};
pub use metadata::{BuildMetadata, MetadataError, pushed_image};
pub use output::{ImageFormat, Output, OutputFlags, OutputSpecError};
pub use plan::{
    ConfigStep, Copy, CopySource, Exec, ExecMount, HistoryStep, ImagePlan, Mkdir, Op, OpId, OpKind,
    Origin, Plan, Source,
};
pub use progress::{LogStyle, Progress, ProgressMode};
pub use registry_cache::{
    CACHE_CONFIG_TYPE, CacheLocation, CacheMode, CacheSpec, CacheSpecError, ChainedCache,
    ExportStats, RemoteCache, export_cache, export_caches, registry_refs,
};
pub use remote_context::redacted as redacted_url;
pub use remote_context::{
    FetchedContext, GitContext, MAX_CONTEXT_DOWNLOAD_BYTES, NamedContext, RemoteContext,
};
pub use secrets::{Redactor, SecretSource, Secrets};
pub use solve::{
    BuildResult, BuiltImage, CacheEntry, CachePolicy, Solver, StepKind, StepRecord, solve,
};
pub use store::{Hold, Store};
pub use units::{UnitError, human_size, parse_duration, parse_size};
pub use usage::{
    Entry, EntryKind, FilterError, Filters, PruneOptions, Pruned, Summary, Usage, prune,
    render_table, render_total, render_verbose,
};
pub use worker::{ExecJob, ExecOutcome, NamespaceWorker, Worker};

use secrets::MIN_REDACTED_CHARS;

/// What to build and how.
pub struct BuildOptions {
    /// The Dockerfile's path as the user named it (used in messages).
    pub dockerfile_path: String,
    pub context_dir: PathBuf,
    /// The `.dockerignore` to apply (`<Dockerfile>.dockerignore` beside the Dockerfile wins
    /// over the context's, as BuildKit does); resolved by the caller.
    pub ignore_file: Option<PathBuf>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// The platforms to build the target stage for; one image each.
    pub platforms: Vec<Platform>,
    /// How many platforms build at once.
    pub jobs: usize,
    /// Where `qemu-<arch>-static` lives, if not on PATH or in /usr/bin.
    pub qemu_dir: Option<PathBuf>,
    /// The executable that acts as the sandbox helper (kiln itself).
    pub sandbox_helper: PathBuf,
    /// Clamp for timestamps (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// Secrets for `RUN --mount=type=secret` (`kiln build --secret`); their values are
    /// redacted from everything the build prints and from its errors.
    pub secrets: Secrets,
    /// SSH agent sockets for `RUN --mount=type=ssh`, by id (`kiln build --ssh`).
    pub ssh: BTreeMap<String, PathBuf>,
    /// An OCI layout (directory or archive) whose images FROM uses before any registry,
    /// matched by their `org.opencontainers.image.ref.name` (`kiln build --base-dir`).
    pub base_dir: Option<PathBuf>,
    /// kaniko's `--cache-dir`: base images found there (by their manifest's digest) are
    /// read from it instead of their registry.
    pub base_cache: Option<BaseImageCache>,
    /// `--no-cache`: run every step, looking nothing up (what runs is still recorded).
    pub no_cache: bool,
    /// `--no-cache-filter`: the stages whose steps are run without looking them up.
    pub no_cache_filter: Vec<String>,
    /// Labels set on the image after the Dockerfile's own (kaniko's `--label`).
    pub labels: BTreeMap<String, String>,
    /// `--annotation`s, for the manifests, the index and their descriptors.
    pub annotations: Annotations,
    /// How RUN steps are isolated (`--isolation`).
    pub isolation: Isolation,
    /// What in-place isolation leaves alone.
    pub in_place: InPlaceOptions,
    /// The network of RUN steps without `RUN --network` or with `--network=default`
    /// (buildx's `--network`).
    pub network: Network,
    /// `--add-host`, `--ulimit` and `--shm-size`, for every RUN step.
    pub step_options: StepOptions,
    /// `--cache-from`: registry caches whose records the build may use, in order.
    pub cache_from: Vec<CacheSpec>,
    /// `--cache-to`: where the build's records go once its images are delivered
    /// ([`export_caches`]).
    pub cache_to: Vec<CacheSpec>,
    /// How the build's new layers are compressed ([`Output::layer_encoding`]); an output
    /// that asks for another compression re-encodes them.
    pub layer_encoding: LayerEncoding,
    /// `--provenance`, `--sbom`, `--attest`: the attestation manifests [`deliver`] lists
    /// beside the images.
    pub attestations: Attestations,
    /// `--build-context NAME=...`: what `FROM NAME`, `COPY --from=NAME` and `RUN --mount
    /// from=NAME` read instead of the image or stage of that name.
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// Builds the target stage of `df` for every platform in `opts.platforms` and stores the
/// images: lowers it to a plan (resolving base images through `client`), then solves the
/// plan with the sandbox as worker and the local cache in `store`'s root, behind the
/// `--cache-from` caches (read through `cache_client`). Platforms build concurrently (up to
/// `opts.jobs`); equal steps run once. If one platform fails, the others stop at their next
/// step.
pub fn build(
    df: &Dockerfile,
    opts: &BuildOptions,
    store: &Store,
    client: &RegistryClient,
    cache_client: &RegistryClient,
    progress: &Progress,
) -> Result<BuildResult, BuildError> {
    let progress = &progress.redacting(opts.secrets.redactor().clone());
    let started = now_secs();
    // Read before any step runs: an in-place build's steps could change it.
    let dockerfile_digest = match opts.attestations.provenance {
        Some(_) => Some(Digest::of(
            &std::fs::read(&opts.dockerfile_path)
                .map_err(BuildError::io(format!("reading {}", opts.dockerfile_path)))?,
        )),
        None => None,
    };
    for id in opts.secrets.unredactable() {
        progress.warning(&format!(
            "secret `{id}` is shorter than {MIN_REDACTED_CHARS} characters, so kiln does not \
             redact it from the build's output"
        ));
    }
    let no_cache_stages = stages_named(df, &opts.no_cache_filter, "--no-cache-filter")?;
    let cache_refs = registry_refs(&opts.cache_from);
    let mut resolver = RegistryResolver::new(client, store, progress);
    resolver.base_dir = opts.base_dir.as_deref();
    resolver.caches = Some((cache_client, cache_refs.clone()));
    resolver.base_cache = opts.base_cache.as_ref();
    let plan = lower(df, opts, &resolver)?;
    // Every platform a RUN step runs on must be runnable before any step runs.
    let worker = isolation::choose_worker(opts, store, progress)?;
    for platform in run_platforms(&plan) {
        worker.check(platform)?;
    }
    for warning in &plan.warnings {
        progress.info(warning);
    }
    // For `kiln du` and `kiln prune`; a record that cannot be written only costs its use.
    if let Err(e) = usage::note_base_images(store, &plan) {
        progress.warning(&e.to_string());
    }
    // A record per context of what its files hashed to, so a rebuild reads only changes.
    let context = BuildContext::open(&opts.context_dir, opts.ignore_file.as_deref())?
        .with_records_in(&store.root().join("cache/context"));
    let local = LocalCache::open(store)?;
    let remote = match opts.no_cache {
        true => RemoteCache::default(),
        false => RemoteCache::import(cache_client, store, &opts.cache_from, progress),
    };
    let cache = ChainedCache {
        local: &local,
        remote: &remote,
    };
    let solver = Solver {
        opts,
        store,
        worker: worker.as_ref(),
        cache: &cache,
        resolver: &resolver,
        context: &context,
        progress,
        policy: CachePolicy {
            disabled: opts.no_cache,
            stages: no_cache_stages,
        },
    };
    let built = solve(&plan, &solver);
    let finished = worker.finish();
    let mut built = built?;
    finished?;
    if opts.attestations.any() {
        let inputs = attest::Inputs {
            plan: &plan,
            opts,
            store,
            context: &context,
            dockerfile: dockerfile_digest,
            started,
            clients: OriginClients {
                pull: client,
                cache: cache_client,
                caches: &cache_refs,
            },
            progress,
        };
        attest::attach(&inputs, &mut built.images)?;
    }
    Ok(built)
}

/// The platforms `plan`'s RUN steps run on, each once, in plan order.
fn run_platforms(plan: &Plan) -> Vec<&Platform> {
    let mut platforms: Vec<&Platform> = Vec::new();
    for op in &plan.ops {
        if matches!(op.kind, OpKind::Exec(_)) && !platforms.contains(&&op.origin.platform) {
            platforms.push(&op.origin.platform);
        }
    }
    platforms
}
