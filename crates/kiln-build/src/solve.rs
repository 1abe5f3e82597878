//! Solving a plan: each op is done once per build (one memo per op, shared by every
//! platform), in dependency order. Before an op does any work, its cache key is looked up in
//! the [`CacheBackend`]: a hit runs nothing and reuses the recorded layer. A miss runs the
//! op (an exec through the [`Worker`], a copy or mkdir through kiln-snapshot), stores its
//! layer and records it. Layers are fetched and extracted only when a miss must run on top
//! of them, and blobs only when an image needs them.
//!
//! Platforms are solved on up to `--jobs` threads; when one fails, the others stop before
//! their next op, and the failure that caused it is reported rather than the cancellations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_oci::{Descriptor, Digest, ImageManifest, Platform, media, to_json_bytes};
use kiln_registry::Reference;
use kiln_sandbox::RunSpec;
use kiln_snapshot::{LayerOptions, LayerStack};
use serde::Serialize;

use crate::base::{self, BaseRef, ImageResolver};
use crate::cache::{CacheBackend, Lookup, Record, RecordLayer};
use crate::context::{BuildContext, ContextSource};
use crate::context_hash::{ContextDigest, HashStats};
use crate::fileops::{self, CopyInputs, OpErrors};
use crate::key::CacheKey;
use crate::mounts::{self, MountInputs};
use crate::plan::{Copy, CopySource, Exec, HistoryStep, ImagePlan, Op, OpId, OpKind, Plan, Source};
use crate::progress::Progress;
use crate::secrets::SecretFiles;
use crate::worker::{ExecJob, Worker};
use crate::{AnnotationTarget, BuildError, BuildOptions, Store, encode, registry_cache, timefmt};

/// An image built and stored: its manifest and everything the manifest points to.
pub struct BuiltImage {
    pub platform: Platform,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The layer blobs the store does not hold (nothing needed them locally), each with the
    /// registry repository it is in.
    pub origins: BTreeMap<Digest, Reference>,
    /// How many of the layers, from the bottom, are the base image's.
    pub base_layers: usize,
    /// The time the files of the build's own layers were clamped to (SOURCE_DATE_EPOCH), so
    /// that a layer written again from its dir comes out the same.
    pub source_date_epoch: Option<i64>,
    /// Its attestation manifest's index entry, when attestations were asked for.
    pub attestation: Option<Descriptor>,
}

/// How a step of the build summary went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// It ran.
    Ran,
    /// Its result came from the cache.
    Cached,
    /// It only changes the image config.
    Config,
}

/// One step, for the build summary.
#[derive(Clone, Debug)]
pub struct StepRecord {
    pub platform: Platform,
    pub label: String,
    pub instruction: String,
    pub emulated: bool,
    pub elapsed: Duration,
    pub kind: StepKind,
}

/// What a build produced: one image per requested platform (in the order asked), and every
/// step.
pub struct BuildResult {
    pub images: Vec<BuiltImage>,
    pub steps: Vec<StepRecord>,
    /// The cache record of every op the build ran or found in the cache, in plan order.
    pub records: Vec<CacheEntry>,
}

/// An op's cache record, as `--cache-to` exports it.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    pub key: CacheKey,
    pub record: Record,
    /// Whether the op made a layer of a built image (`mode=min` exports only these), rather
    /// than of another stage.
    pub in_image: bool,
    /// Whether the op is a RUN step (kaniko caches RUN and COPY layers apart).
    pub is_run: bool,
    /// The registry cache the record came from, if it did (its blob may be only there).
    pub from: Option<Arc<BaseRef>>,
}

/// When the cache is not consulted.
#[derive(Clone, Debug, Default)]
pub struct CachePolicy {
    /// `--no-cache`: no op is looked up.
    pub disabled: bool,
    /// `--no-cache-filter`: the ops of these stages (indices among the Dockerfile's stages)
    /// are not looked up.
    pub stages: Vec<usize>,
}

/// What solving draws on.
pub struct Solver<'a> {
    pub opts: &'a BuildOptions,
    pub store: &'a Store,
    pub worker: &'a dyn Worker,
    pub cache: &'a dyn CacheBackend,
    pub resolver: &'a dyn ImageResolver,
    pub context: &'a BuildContext,
    pub progress: &'a Progress,
    pub policy: CachePolicy,
}

/// One layer of a filesystem: its blob, its diff_id, and the image (or cache) it can be
/// fetched from when it is not in the store yet.
#[derive(Clone)]
struct LayerRef {
    blob: Descriptor,
    diff_id: Digest,
    from: Option<Arc<BaseRef>>,
}

/// A done op.
struct Done {
    /// The filesystem it leaves, bottom layer first.
    layers: Vec<LayerRef>,
    /// Whether it added a layer.
    added: bool,
    /// When it ran (RFC 3339): in this build, or in the build whose record it reused.
    created: String,
    /// What the keys of the ops reading it are made of: its cache key and its layer.
    output: CacheKey,
}

/// What an op reads from outside the plan, found before its cache lookup.
#[derive(Default)]
struct Reads {
    /// Content digests, in a fixed order: they are part of the cache key.
    digests: Vec<String>,
    /// What the op's context paths found in the context, in order: what the digest covered,
    /// and what the copy takes.
    context_sources: Vec<ContextSource>,
    /// Per COPY source, its part of `context_sources` (empty for other sources).
    found: Vec<Range<usize>>,
    /// What hashing the context took, shown with the step.
    hashed: Option<HashStats>,
    /// ADD URLs fetched to learn their digest, for the op to use if it runs.
    downloaded: Vec<(String, PathBuf)>,
    scratch: Option<tempfile::TempDir>,
}

impl Reads {
    fn add_context(&mut self, hashed: ContextDigest) {
        self.digests.push(hashed.digest.to_string());
        let total = self.hashed.get_or_insert_default();
        total.entries += hashed.stats.entries;
        total.files_read += hashed.stats.files_read;
        total.bytes_read += hashed.stats.bytes_read;
    }
}

/// The key of what `Exec`, `Copy` or `Mkdir` reads and is, for the cache.
#[derive(Serialize)]
struct CacheKeyParts<'a> {
    own: &'a CacheKey,
    inputs: Vec<&'a CacheKey>,
    reads: &'a [String],
}

/// Solves `plan` and stores one image per platform.
pub fn solve(plan: &Plan, solver: &Solver) -> Result<BuildResult, BuildError> {
    let solving = Solving {
        plan,
        s: solver,
        done: (0..plan.ops.len()).map(|_| OnceLock::new()).collect(),
        secret_files: SecretFiles::new(solver.store),
        now: timefmt::rfc3339(timefmt::now_secs()),
        steps: Mutex::new(Vec::new()),
        records: Mutex::new(Vec::new()),
        cancelled: AtomicBool::new(false),
        layer_locks: Mutex::new(HashMap::new()),
        extracted: Mutex::new(HashSet::new()),
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<BuiltImage, BuildError>)>> = Mutex::new(Vec::new());
    let workers = solver.opts.jobs.clamp(1, plan.images.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(image) = plan.images.get(i) else {
                        break;
                    };
                    let result = solving.image(image);
                    if result.is_err() {
                        solving.cancelled.store(true, Ordering::SeqCst);
                    }
                    results.lock().unwrap().push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    // Report the failure that caused the others to stop, not a cancellation.
    let mut images = Vec::new();
    let mut first_cancel = None;
    for (_, r) in results {
        match r {
            Ok(img) => images.push(img),
            Err(BuildError::Cancelled { platform }) => {
                first_cancel.get_or_insert(BuildError::Cancelled { platform });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = first_cancel {
        return Err(e);
    }
    let in_images = plan.image_chains();
    let mut records = solving.records.into_inner().unwrap();
    records.sort_by_key(|(id, _)| *id);
    // A cache export takes a blob the store lacks from the registry its record came from;
    // one from a layout is copied into the store now (`type=inline` exports no blob). A
    // blob the cache lost leaves its record out of the export, not the build failed: the
    // images are built, and a cache fault is a miss or a warning.
    let exports_blobs = solver
        .opts
        .cache_to
        .iter()
        .any(|spec| spec.location != registry_cache::CacheLocation::Inline);
    if exports_blobs {
        records.retain(|(_, entry)| {
            let (Some(layer), Some(from)) = (&entry.record.layer, entry.from.as_deref()) else {
                return true;
            };
            if solver.store.has_blob(&layer.digest)
                || solver.resolver.registry_origin(from).is_some()
            {
                return true;
            }
            match solver
                .resolver
                .fetch_blob(from, &layer.descriptor(), solver.store)
            {
                Ok(()) => true,
                Err(e) => {
                    solver.progress.warning(&format!(
                        "the exported cache leaves out a record of {from}: {e}"
                    ));
                    false
                }
            }
        });
    }
    Ok(BuildResult {
        images,
        steps: solving.steps.into_inner().unwrap(),
        records: records
            .into_iter()
            .map(|(id, entry)| CacheEntry {
                in_image: in_images.contains(&id),
                ..entry
            })
            .collect(),
    })
}

struct Solving<'p, 's> {
    plan: &'p Plan,
    s: &'s Solver<'s>,
    /// Per op: done (`Some`) or failed (`None`), once.
    done: Vec<OnceLock<Option<Arc<Done>>>>,
    secret_files: SecretFiles<'s>,
    /// The time of the ops that run in this build.
    now: String,
    steps: Mutex<Vec<StepRecord>>,
    /// The cache record of each op that ran or was found in the cache.
    records: Mutex<Vec<(OpId, CacheEntry)>>,
    cancelled: AtomicBool,
    /// One lock per layer being extracted, so two threads never do it twice.
    layer_locks: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Blob and diff_id pairs whose layer dir [`Solving::extracted`] found.
    extracted: Mutex<HashSet<(Digest, Digest)>>,
}

/// Errors of one op, at its Dockerfile line.
struct At<'a> {
    path: &'a str,
    op: &'a Op,
}

impl OpErrors for At<'_> {
    fn err(&self, message: String) -> BuildError {
        BuildError::Dockerfile {
            path: self.path.to_string(),
            line: self.op.origin.line,
            column: None,
            message,
        }
    }

    fn missing(&self, source: &str, context: &Path) -> BuildError {
        BuildError::MissingSource {
            path: self.path.to_string(),
            line: self.op.origin.line,
            source_path: source.to_string(),
            context: context.to_path_buf(),
        }
    }
}

impl Solving<'_, '_> {
    fn progress(&self) -> &Progress {
        self.s.progress
    }

    fn at<'a>(&'a self, op: &'a Op) -> At<'a> {
        At {
            path: &self.s.opts.dockerfile_path,
            op,
        }
    }

    /// Builds the image of one platform: every op it needs, then its config and manifest.
    fn image(&self, image: &ImagePlan) -> Result<BuiltImage, BuildError> {
        for id in self.plan.ops_for(image) {
            self.op(id, &image.platform)?;
        }
        let result = self.op(image.result, &image.platform)?;
        self.finish(image, &result)
    }

    /// Op `id`, done once whichever platform asks first; the others wait for it. The one
    /// that did it gets its error; the others see their platform as cancelled.
    fn op(&self, id: OpId, platform: &Platform) -> Result<Arc<Done>, BuildError> {
        let mut error = None;
        let done = self.done[id.0].get_or_init(|| {
            let result = match self.cancelled.load(Ordering::SeqCst) {
                true => Err(BuildError::Cancelled {
                    platform: platform.to_string(),
                }),
                false => self.compute(id, platform),
            };
            match result {
                Ok(done) => Some(Arc::new(done)),
                Err(e) => {
                    error = Some(e);
                    None
                }
            }
        });
        match (done, error) {
            (Some(done), _) => Ok(done.clone()),
            (None, Some(e)) => Err(e),
            (None, None) => Err(BuildError::Cancelled {
                platform: platform.to_string(),
            }),
        }
    }

    fn compute(&self, id: OpId, platform: &Platform) -> Result<Done, BuildError> {
        let op = self.plan.op(id);
        let inputs = op
            .inputs
            .iter()
            .map(|&input| self.op(input, platform))
            .collect::<Result<Vec<_>, _>>()?;
        let done = match &op.kind {
            OpKind::Source(source) => self.source(op, source)?,
            _ => self.cached_or_run(id, op, &inputs)?,
        };
        self.config_steps(op);
        Ok(done)
    }

    fn label(op: &Op) -> String {
        format!("[{}]", op.origin.label)
    }

    /// The config-only steps after `op`, shown and recorded.
    fn config_steps(&self, op: &Op) {
        for step in &op.then {
            let label = format!("[{}]", step.label);
            self.progress().step_start(&label, &step.text);
            self.progress().step_done(&label, Duration::ZERO, "");
            self.record(
                op,
                &step.label,
                &step.text,
                false,
                Duration::ZERO,
                StepKind::Config,
            );
        }
    }

    fn record(
        &self,
        op: &Op,
        label: &str,
        instruction: &str,
        emulated: bool,
        elapsed: Duration,
        kind: StepKind,
    ) {
        self.steps.lock().unwrap().push(StepRecord {
            platform: op.origin.platform.clone(),
            label: label.to_string(),
            instruction: instruction.to_string(),
            emulated,
            elapsed,
            kind,
        });
    }

    fn source(&self, op: &Op, source: &Source) -> Result<Done, BuildError> {
        if let Some(shown) = &op.origin.shown {
            let label = Self::label(op);
            self.progress().step_start(&label, shown);
            self.progress().step_done(&label, Duration::ZERO, "");
        }
        let layers = match source {
            Source::Scratch => Vec::new(),
            Source::Local { name, dir } => {
                let layer = self.local_layer(op, name, dir)?;
                // What reads it is keyed by its content, not by its path.
                let output = CacheKey::of("output", &(&op.own, &layer.diff_id.to_string()));
                return Ok(Done {
                    layers: vec![layer],
                    added: false,
                    created: self.now.clone(),
                    output,
                });
            }
            Source::Image(image) => image
                .layers
                .iter()
                .map(|(blob, diff_id)| LayerRef {
                    blob: blob.clone(),
                    diff_id: diff_id.clone(),
                    from: Some(Arc::new(image.source.clone())),
                })
                .collect(),
        };
        Ok(Done {
            layers,
            added: false,
            created: self.now.clone(),
            output: op.own.clone(),
        })
    }

    /// The files of the named context `dir` as a layer: what `COPY . /` would take of it
    /// as a build context, through its own `.dockerignore` (as buildx reads a named
    /// context's).
    fn local_layer(&self, op: &Op, name: &str, dir: &Path) -> Result<LayerRef, BuildError> {
        self.progress().detail(&format!(
            "reading the build context {name} ({})",
            dir.display()
        ));
        let ignore = dir.join(".dockerignore");
        // The context (a fetched one above all) is untrusted: a `.dockerignore` linking to a
        // host file would show that file's lines in its parse error, as the main context's
        // may not either.
        if let Ok(real) = ignore.canonicalize()
            && !dir.canonicalize().is_ok_and(|dir| real.starts_with(dir))
        {
            return Err(BuildError::Io {
                context: format!("reading the build context {name}"),
                source: std::io::Error::other("its .dockerignore leads out of it"),
            });
        }
        let context = BuildContext::open(dir, Some(&ignore))?;
        let found = context.sources(".");
        let copy = Copy {
            add: false,
            sources: vec![CopySource::Path(".".into())],
            from: None,
            dest: "/".into(),
            dest_path: "/".into(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            unpack: None,
            excludes: Vec::new(),
            checksum: None,
            source_date_epoch: self.s.opts.source_date_epoch,
        };
        let scratch = self.s.store.temp_dir("local-")?;
        let layer = scratch.path().join("layer");
        std::fs::create_dir(&layer).map_err(BuildError::io("creating a context layer dir"))?;
        let inputs = CopyInputs {
            context: &context,
            found: &[&found],
            below: &LayerStack::new(Vec::new()),
            from: None,
            downloaded: &[],
            scratch: scratch.path(),
        };
        fileops::copy(&copy, &inputs, &layer, &self.at(op))?;
        self.store_layer(&layer, copy.source_date_epoch)
    }

    fn looks_up(&self, op: &Op) -> bool {
        let policy = &self.s.policy;
        !policy.disabled && !policy.stages.contains(&op.origin.stage)
    }

    fn cached_or_run(&self, id: OpId, op: &Op, inputs: &[Arc<Done>]) -> Result<Done, BuildError> {
        let started = Instant::now();
        let reads = self.reads(op)?;
        let key = CacheKey::of(
            "cache",
            &CacheKeyParts {
                own: &op.own,
                inputs: inputs.iter().map(|done| &done.output).collect(),
                reads: &reads.digests,
            },
        );
        let mut _lock = None;
        if self.looks_up(op) {
            let mut warned = false;
            if let Some(done) = self.hit(id, op, &key, inputs, started, &mut warned) {
                self.show_hashed(&reads);
                return Ok(done);
            }
            // Another build may be running this op: wait for it, then look again.
            _lock = Some(self.s.cache.lock(&key, &|| {
                self.progress().detail(&format!(
                    "[{}] waiting for another build running this step",
                    op.origin.label
                ))
            })?);
            if let Some(done) = self.hit(id, op, &key, inputs, started, &mut warned) {
                self.show_hashed(&reads);
                return Ok(done);
            }
        }
        let label = Self::label(op);
        let shown = op.origin.shown.as_deref().unwrap_or(&op.origin.text);
        self.progress().step_start(&label, shown);
        self.show_hashed(&reads);
        let parent = &inputs[0];
        let ran = || -> Result<(Option<LayerRef>, String, bool), BuildError> {
            Ok(match &op.kind {
                OpKind::Exec(exec) => self.exec(op, exec, inputs, &label)?,
                OpKind::Copy(copy) => self.copy(op, copy, inputs, &reads)?,
                OpKind::Mkdir(mkdir) => {
                    self.materialize(&parent.layers)?;
                    let below = self.stack(&parent.layers);
                    let scratch = self.s.store.temp_dir("workdir-")?;
                    let made = fileops::mkdir(
                        &mkdir.path,
                        &mkdir.user,
                        &below,
                        scratch.path(),
                        &self.at(op),
                    )?;
                    let layer = match made {
                        true => Some(self.store_layer(scratch.path(), mkdir.source_date_epoch)?),
                        false => None,
                    };
                    (layer, String::new(), false)
                }
                OpKind::Source(_) => unreachable!("sources are not run"),
            })
        };
        let (layer, note, emulated) = ran().inspect_err(|e| {
            self.progress()
                .step_failed(&label, started.elapsed(), &e.to_string())
        })?;
        let record = Record {
            layer: layer.as_ref().map(|l| RecordLayer {
                media_type: l.blob.media_type.clone(),
                digest: l.blob.digest.clone(),
                size: l.blob.size,
                diff_id: l.diff_id.clone(),
            }),
            description: Some(shown.to_string()),
            created: self.now.clone(),
            last_used: self.now.clone(),
        };
        self.keep_record(id, &key, &record, None);
        // The layer is stored; a record that cannot be written only costs the next build.
        if let Err(e) = self.s.cache.save(&key, &record) {
            self.progress().warning(&e.to_string());
        }
        let elapsed = started.elapsed();
        self.progress().step_done(&label, elapsed, &note);
        self.record(
            op,
            &op.origin.label,
            shown,
            emulated,
            elapsed,
            StepKind::Ran,
        );
        Ok(self.done_with(parent, layer, record.created, &key))
    }

    /// Under the step's line: how much of the build context its key took reading (a rebuild
    /// reads only the files whose stat changed).
    fn show_hashed(&self, reads: &Reads) {
        if let Some(stats) = reads.hashed {
            let files = match stats.files_read {
                1 => "1 file".to_string(),
                n => format!("{n} files"),
            };
            let bytes = match stats.bytes_read {
                0 => String::new(),
                n => format!(" ({})", human_bytes(n)),
            };
            self.progress().detail(&format!(
                "build context: {} entries checked, {files} read{bytes}",
                stats.entries
            ));
        }
    }

    /// The op's result from the cache, if its record is usable (and shown as CACHED). An
    /// unusable record is warned about once per op (`warned`).
    fn hit(
        &self,
        id: OpId,
        op: &Op,
        key: &CacheKey,
        inputs: &[Arc<Done>],
        started: Instant,
        warned: &mut bool,
    ) -> Option<Done> {
        let (mut record, from) = match self.s.cache.load(key) {
            Lookup::Hit(record) => (record, None),
            Lookup::Remote(record, source) if self.takes_from_caches(op) => (record, Some(source)),
            Lookup::Remote(..) => return None,
            Lookup::Miss => return None,
            Lookup::Unusable(_) if *warned => return None,
            Lookup::Unusable(why) => {
                *warned = true;
                self.progress().warning(&format!(
                    "[{}] {why}; running the step again",
                    op.origin.label
                ));
                return None;
            }
        };
        let shown = op.origin.shown.as_deref().unwrap_or(&op.origin.text);
        // The step as this build shows it, as when it runs: a registry cache's text is
        // whatever its writer chose, and an export (inline: the image's config) repeats it.
        record.description = Some(shown.to_string());
        self.progress().step_cached(&Self::label(op), shown);
        self.record(
            op,
            &op.origin.label,
            shown,
            false,
            started.elapsed(),
            StepKind::Cached,
        );
        let created = record.created.clone();
        let layer = record.layer.as_ref().map(|l| LayerRef {
            blob: l.descriptor(),
            diff_id: l.diff_id.clone(),
            from: from.clone(),
        });
        self.keep_record(id, key, &record, from.clone());
        // A record from a registry cache stays there: a local one would point at a blob
        // this store may never get.
        if from.is_none() {
            record.last_used = self.now.clone();
            if let Err(e) = self.s.cache.save(key, &record) {
                self.progress().warning(&e.to_string());
            }
        }
        Some(self.done_with(&inputs[0], layer, created, key))
    }

    /// Whether a `--cache-from` cache may stand in for `op`: kaniko's
    /// `--cache-run-layers=false` (`--cache-copy-layers=false`) runs every RUN (COPY) step.
    fn takes_from_caches(&self, op: &Op) -> bool {
        let run = is_run(op);
        self.s
            .opts
            .cache_from
            .iter()
            .any(|spec| if run { spec.run_steps } else { spec.copy_steps })
    }

    /// Notes what `op` used or made under `key`, for `--cache-to`.
    fn keep_record(&self, id: OpId, key: &CacheKey, record: &Record, from: Option<Arc<BaseRef>>) {
        let entry = CacheEntry {
            key: key.clone(),
            record: record.clone(),
            in_image: false,
            is_run: is_run(self.plan.op(id)),
            from,
        };
        self.records.lock().unwrap().push((id, entry));
    }

    fn done_with(
        &self,
        parent: &Done,
        layer: Option<LayerRef>,
        created: String,
        key: &CacheKey,
    ) -> Done {
        let diff_id = layer.as_ref().map(|l| l.diff_id.to_string());
        let mut layers = parent.layers.clone();
        layers.extend(layer.clone());
        Done {
            layers,
            added: layer.is_some(),
            created,
            output: CacheKey::of("output", &(key, diff_id)),
        }
    }

    /// What `op` reads from outside the plan: the content of the context files it copies or
    /// mounts, and the body of an ADD URL without a checksum (downloaded now).
    fn reads(&self, op: &Op) -> Result<Reads, BuildError> {
        let mut reads = Reads::default();
        match &op.kind {
            OpKind::Copy(copy) => {
                for source in &copy.sources {
                    let start = reads.context_sources.len();
                    if let CopySource::Path(pattern) = source
                        && copy.from.is_none()
                    {
                        let found = self.s.context.sources(pattern);
                        if found.is_empty() {
                            return Err(self.at(op).missing(pattern, self.s.context.root()));
                        }
                        reads.context_sources.extend(found);
                    }
                    reads.found.push(start..reads.context_sources.len());
                }
                if !reads.context_sources.is_empty() {
                    let exclude = fileops::excludes(copy, &self.at(op))?;
                    let hashed = self
                        .s
                        .context
                        .digest(&reads.context_sources, exclude.as_ref())?;
                    reads.add_context(hashed);
                }
                for source in &copy.sources {
                    if let CopySource::Url(url) = source
                        && copy.checksum.is_none()
                    {
                        let scratch = match &reads.scratch {
                            Some(dir) => dir.path().to_path_buf(),
                            None => {
                                let dir = self.s.store.temp_dir("download-")?;
                                let path = dir.path().to_path_buf();
                                reads.scratch = Some(dir);
                                path
                            }
                        };
                        let own = scratch.join(reads.downloaded.len().to_string());
                        std::fs::create_dir(&own)
                            .map_err(BuildError::io("creating a download dir"))?;
                        self.progress().detail(&format!("downloading {url}"));
                        let (host, digest) =
                            fileops::download(url, None, &own).map_err(|m| self.at(op).err(m))?;
                        reads.digests.push(digest);
                        reads.downloaded.push((url.clone(), host));
                    }
                }
            }
            OpKind::Exec(exec) => {
                for mount in &exec.mounts {
                    if mount.mount.kind == kiln_dockerfile::MountType::Bind && mount.from.is_none()
                    {
                        // The mount copies what COPY would take of its source (see mounts.rs).
                        let source = mount.mount.source.as_deref().unwrap_or(".");
                        let found = self.s.context.sources(source);
                        if found.is_empty() {
                            return Err(self.at(op).missing(source, self.s.context.root()));
                        }
                        let hashed = self.s.context.digest(&found, None)?;
                        reads.add_context(hashed);
                    }
                }
            }
            OpKind::Mkdir(_) | OpKind::Source(_) => {}
        }
        Ok(reads)
    }

    /// The merged view of `layers`, extracted.
    fn stack(&self, layers: &[LayerRef]) -> LayerStack {
        LayerStack::new(
            layers
                .iter()
                .map(|l| self.s.store.layer_dir(&l.diff_id))
                .collect(),
        )
    }

    /// The layer dirs of `layers` for overlayfs, bottom first: a dir stacked twice (the same
    /// layer twice in one image) makes overlayfs fail with ELOOP, so each is kept once, at its
    /// topmost place (what is below a repeat is covered by the repeat anyway).
    fn lowers(&self, layers: &[LayerRef]) -> Vec<PathBuf> {
        let mut seen = std::collections::HashSet::new();
        let mut dirs: Vec<PathBuf> = layers
            .iter()
            .rev()
            .filter(|l| seen.insert(l.diff_id.clone()))
            .map(|l| self.s.store.layer_dir(&l.diff_id))
            .collect();
        dirs.reverse();
        dirs
    }

    fn layer_lock(&self, diff_id: &Digest) -> Arc<Mutex<()>> {
        self.layer_locks
            .lock()
            .unwrap()
            .entry(diff_id.clone())
            .or_default()
            .clone()
    }

    /// Stores the blob of `layer` unless the store has it.
    fn fetch(&self, layer: &LayerRef) -> Result<(), BuildError> {
        if self.s.store.has_blob(&layer.blob.digest) {
            return Ok(());
        }
        match &layer.from {
            Some(source) => self
                .s
                .resolver
                .fetch_blob(source, &layer.blob, self.s.store),
            None => Err(BuildError::Io {
                context: format!("layer {}", layer.blob.digest),
                source: std::io::Error::other(format!(
                    "its blob is gone from {}",
                    self.s.store.blob_path(&layer.blob.digest).display()
                )),
            }),
        }
    }

    /// Makes sure every layer of `layers` is extracted. The blobs missing from the store are
    /// fetched on a second thread, in layer order, ahead of extraction on this one: a layer
    /// downloads while the one below it is being extracted.
    fn materialize(&self, layers: &[LayerRef]) -> Result<(), BuildError> {
        let missing: Vec<&LayerRef> = layers.iter().filter(|l| !self.extracted(l)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let stop = AtomicBool::new(false);
        let (fetched, fetched_rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let (missing, stop) = (&missing, &stop);
            scope.spawn(move || {
                for layer in missing {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let result = self.fetch(layer);
                    let failed = result.is_err();
                    if fetched.send(result).is_err() || failed {
                        break;
                    }
                }
            });
            let extracted = missing.iter().try_for_each(|layer| {
                fetched_rx
                    .recv()
                    .expect("the fetching thread sends a result per layer until one fails")?;
                self.extract_once(layer)
            });
            // An extraction failed: the fetching thread stops after the blob it is on.
            stop.store(true, Ordering::SeqCst);
            extracted
        })
    }

    /// Whether the layer dir of `layer` is there, made from its blob: a dir of that diff_id
    /// counts only once kiln has seen this blob decompress to it.
    fn extracted(&self, layer: &LayerRef) -> bool {
        // Every step looks its layers up again: what one found stays true for the build.
        let pair = (layer.blob.digest.clone(), layer.diff_id.clone());
        if self.extracted.lock().unwrap().contains(&pair) {
            return true;
        }
        let found = self.s.store.layer_dir(&layer.diff_id).is_dir()
            && self.s.store.checked_diff_id(&layer.blob.digest).as_ref() == Some(&layer.diff_id);
        if found {
            self.extracted.lock().unwrap().insert(pair);
        }
        found
    }

    /// Extracts the stored blob of `layer` into its layer dir, unless it is there already
    /// (another platform's thread may have just made it); a dir another blob made is used
    /// only once this blob is checked to decompress to the same diff_id.
    fn extract_once(&self, layer: &LayerRef) -> Result<(), BuildError> {
        let lock = self.layer_lock(&layer.diff_id);
        let _held = lock.lock().unwrap();
        if self.extracted(layer) {
            return Ok(());
        }
        let from = match &layer.from {
            Some(source) => source.to_string(),
            None => format!("layer {}", layer.blob.digest),
        };
        base::ensure_extracted(self.s.store, &layer.blob, &layer.diff_id, &from, || {
            self.progress()
                .detail(&format!("extracting {}", layer.blob.digest))
        })
    }

    /// Stores the layer dir `dir` (blob and dir) and describes it.
    fn store_layer(
        &self,
        dir: &Path,
        source_date_epoch: Option<i64>,
    ) -> Result<LayerRef, BuildError> {
        let blob = self.s.store.put_layer(
            dir,
            &LayerOptions {
                source_date_epoch,
                encoding: self.s.opts.layer_encoding,
            },
        )?;
        self.s.store.commit_layer_dir(dir, &blob.diff_id)?;
        Ok(LayerRef {
            blob: encode::descriptor(&blob),
            diff_id: blob.diff_id,
            from: None,
        })
    }

    /// Runs a RUN step; returns its layer (if it changed anything), the note for its
    /// progress line, and whether it ran emulated.
    fn exec(
        &self,
        op: &Op,
        exec: &Exec,
        inputs: &[Arc<Done>],
        label: &str,
    ) -> Result<(Option<LayerRef>, String, bool), BuildError> {
        let platform = &op.origin.platform;
        let parent = &inputs[0];
        let emulated = self.s.worker.check(platform)?;
        let progress = self.progress();
        if emulated && exec.compiles {
            progress.info(&format!(
                "hint: {label} compiles under {platform} emulation, which is typically several times slower than native. \
                 Move it to a stage that runs on the build platform and cross-compiles:\n  \
                 FROM --platform=$BUILDPLATFORM <image> AS build\n  ARG TARGETOS TARGETARCH\n  \
                 RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build ...   (or your toolchain's --target)\n  \
                 then COPY --from=build the result into the {platform} stage.",
            ));
        }
        let scratch = self.s.store.temp_dir("run-")?;
        // Before anything is extracted for it: a runtime that refuses namespaces gives one
        // error that says so, not a failed step.
        self.s.worker.trial(scratch.path())?;
        self.materialize(&parent.layers)?;
        let mut requests = Vec::new();
        for mount in &exec.mounts {
            let from = match mount.from {
                Some(index) => {
                    let layers = &inputs[index].layers;
                    self.materialize(layers)?;
                    Some(self.stack(layers))
                }
                None => None,
            };
            requests.push((mount.mount.clone(), from));
        }
        let upper = scratch.path().join("upper");
        let work = scratch.path().join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d).map_err(BuildError::io("creating a RUN scratch dir"))?;
        }
        let mount_inputs = MountInputs {
            store: self.s.store,
            context: self.s.context,
            secrets: &self.s.opts.secrets,
            secret_files: &self.secret_files,
            ssh: &self.s.opts.ssh,
            scratch: scratch.path(),
        };
        // Holds cache locks until the step is done.
        let prepared = mounts::prepare(&requests, &mount_inputs).map_err(|m| self.at(op).err(m))?;
        let mut env = exec.env.clone();
        for pair in &exec.proxy_env {
            set_env(&mut env, pair);
        }
        env.extend(prepared.env.iter().cloned());
        let job = ExecJob {
            platform,
            spec: RunSpec {
                lowers: self.lowers(&parent.layers),
                upper: upper.clone(),
                work,
                argv: exec.argv.clone(),
                env,
                cwd: exec.cwd.clone(),
                user: exec.user.clone(),
                hostname: exec.hostname.clone(),
                emulator: None,
                mounts: prepared.mounts.clone(),
                network: exec.network,
                options: exec.options.clone(),
            },
        };
        // The output is printed through `progress`, which redacts secrets; what the errors
        // below quote of it is redacted here.
        let redactor = self.s.opts.secrets.redactor();
        let mut step_log = progress.step_log(label);
        let path = &self.s.opts.dockerfile_path;
        let outcome = self
            .s
            .worker
            .run(job, &mut |line| step_log.line(line))
            .map_err(|message| BuildError::Step {
                path: path.clone(),
                line: op.origin.line,
                step: op.origin.label.clone(),
                instruction: op.origin.text.clone(),
                message: redactor.redact(&message).into_owned(),
            })?;
        if !outcome.status.success() {
            let code = match outcome.status {
                kiln_sandbox::ExitStatus::Code(c) => c,
                kiln_sandbox::ExitStatus::Signal(s) => 128 + s,
            };
            return Err(BuildError::RunFailed {
                path: path.clone(),
                line: op.origin.line,
                step: op.origin.label.clone(),
                instruction: op.origin.text.clone(),
                code,
                tail: shown_tail(&redactor.redact(&outcome.tail.join("\n"))),
            });
        }
        let changed = std::fs::read_dir(&upper)
            .map_err(BuildError::io("reading a RUN's changes"))?
            .next()
            .is_some();
        drop(prepared);
        let layer = match changed {
            true => Some(self.store_layer(&upper, exec.source_date_epoch)?),
            false => None,
        };
        let note = match (layer.is_some(), emulated) {
            (false, false) => "no changes",
            (false, true) => "emulated, no changes",
            (true, true) => "emulated",
            (true, false) => "",
        };
        Ok((layer, note.to_string(), emulated))
    }

    fn copy(
        &self,
        op: &Op,
        copy: &Copy,
        inputs: &[Arc<Done>],
        reads: &Reads,
    ) -> Result<(Option<LayerRef>, String, bool), BuildError> {
        let parent = &inputs[0];
        self.materialize(&parent.layers)?;
        let below = self.stack(&parent.layers);
        let from = match &copy.from {
            Some((index, _)) => {
                let layers = &inputs[*index].layers;
                self.materialize(layers)?;
                Some(self.stack(layers))
            }
            None => None,
        };
        let scratch = self.s.store.temp_dir("copy-")?;
        let layer = scratch.path().join("layer");
        std::fs::create_dir(&layer).map_err(BuildError::io("creating a COPY layer dir"))?;
        let found: Vec<&[ContextSource]> = reads
            .found
            .iter()
            .map(|range| &reads.context_sources[range.clone()])
            .collect();
        let copy_inputs = CopyInputs {
            context: self.s.context,
            found: &found,
            below: &below,
            from: from.as_ref(),
            downloaded: &reads.downloaded,
            scratch: scratch.path(),
        };
        let entries = fileops::copy(copy, &copy_inputs, &layer, &self.at(op))?;
        let stored = self.store_layer(&layer, copy.source_date_epoch)?;
        Ok((Some(stored), format!("{entries} entries"), false))
    }

    /// Assembles and stores the config and manifest of one platform's image.
    fn finish(&self, image: &ImagePlan, done: &Done) -> Result<BuiltImage, BuildError> {
        // Every blob the manifest names must be in the store, or in the registry repository
        // it comes from: a push to that registry mounts it, other outputs fetch it then.
        let mut origins = BTreeMap::new();
        for layer in &done.layers {
            let origin = match self.s.store.has_blob(&layer.blob.digest) {
                true => None,
                false => layer
                    .from
                    .as_deref()
                    .and_then(|from| self.s.resolver.registry_origin(from)),
            };
            match origin {
                Some(origin) => {
                    origins.insert(layer.blob.digest.clone(), origin);
                }
                None => self.fetch(layer)?,
            }
        }
        let sde = self.s.opts.source_date_epoch.map(timefmt::rfc3339);
        let mut config = image.config.clone();
        // `--cache-to type=inline`: this image's own steps' records travel in its config.
        let chain = self.plan.image_chain(image);
        let own: Vec<CacheEntry> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| chain.contains(id))
            .map(|(_, entry)| CacheEntry {
                in_image: true,
                ..entry.clone()
            })
            .collect();
        let own: Vec<&CacheEntry> = own.iter().collect();
        // A base image's records describe its build, not this one (BuildKit drops them too).
        config.extra.remove(registry_cache::INLINE_CACHE_KEY);
        if let Some(records) = registry_cache::inline_records(&self.s.opts.cache_to, &own) {
            config
                .extra
                .insert(registry_cache::INLINE_CACHE_KEY.to_string(), records);
        }
        let mut newest: Option<String> = None;
        for (entry, step) in config.history.iter_mut().zip(&image.history) {
            if let HistoryStep::Op(id) = step {
                let op = self.done[id.0]
                    .get()
                    .and_then(Option::as_ref)
                    .expect("every op of the image is done");
                entry.empty_layer = !op.added;
                entry.created = Some(sde.clone().unwrap_or_else(|| op.created.clone()));
                if newest.as_ref().is_none_or(|n| *n < op.created) {
                    newest = Some(op.created.clone());
                }
            }
        }
        // An image is as old as its newest step: a rebuild from the cache is the same image.
        let created = sde
            .or(newest)
            .or_else(|| config.created.clone())
            .unwrap_or_else(|| timefmt::rfc3339(0));
        for (entry, step) in config.history.iter_mut().zip(&image.history) {
            if *step == HistoryStep::Config {
                entry.created = Some(created.clone());
            }
        }
        config.created = Some(created);
        config.rootfs.diff_ids = done.layers.iter().map(|l| l.diff_id.clone()).collect();
        let config_desc = self
            .s
            .store
            .put_json(media::OCI_CONFIG, &to_json_bytes(&config))?;
        let layers: Vec<Descriptor> = done
            .layers
            .iter()
            .map(|l| {
                let mut d = l.blob.clone();
                d.media_type = match media::layer_compression(&d.media_type) {
                    Some(media::LayerCompression::Gzip) => media::OCI_LAYER_GZIP.into(),
                    Some(media::LayerCompression::Zstd) => media::OCI_LAYER_ZSTD.into(),
                    _ => media::OCI_LAYER_TAR.into(),
                };
                d.platform = None;
                d
            })
            .collect();
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: config_desc.clone(),
            layers: layers.clone(),
            annotations: self
                .s
                .opts
                .annotations
                .get(AnnotationTarget::Manifest, Some(&image.platform)),
        };
        let mut manifest_desc = self
            .s
            .store
            .put_json(media::OCI_MANIFEST, &to_json_bytes(&manifest))?;
        manifest_desc.platform = Some(image.platform.clone());
        Ok(BuiltImage {
            platform: image.platform.clone(),
            manifest: manifest_desc,
            config: config_desc,
            layers,
            origins,
            base_layers: done.layers.iter().take_while(|l| l.from.is_some()).count(),
            source_date_epoch: self.s.opts.source_date_epoch,
            attestation: None,
        })
    }
}

/// Whether `op` is a RUN step (kaniko caches RUN and COPY layers apart).
fn is_run(op: &Op) -> bool {
    matches!(op.kind, OpKind::Exec(_))
}

/// `n` bytes in binary units, for people.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Sets `KEY=value` in `env`: in place of an earlier `KEY=`, else at the end.
fn set_env(env: &mut Vec<String>, pair: &str) {
    let name = pair.split('=').next().unwrap_or_default();
    match env.iter_mut().find(|e| e.split('=').next() == Some(name)) {
        Some(existing) => *existing = pair.to_string(),
        None => env.push(pair.to_string()),
    }
}

/// Characters of each output line that a failed RUN's error shows: a step's line may be
/// hundreds of KiB. Cut after redaction, so that a cut cannot split a secret.
const SHOWN_TAIL_LINE_CHARS: usize = 1000;

/// The failed RUN's last output lines for its error, each cut to [`SHOWN_TAIL_LINE_CHARS`].
fn shown_tail(tail: &str) -> String {
    let shown: Vec<String> = tail
        .split('\n')
        .map(
            |line| match line.char_indices().nth(SHOWN_TAIL_LINE_CHARS) {
                Some((cut, _)) => format!("{}… ({} bytes)", &line[..cut], line.len()),
                None => line.to_string(),
            },
        )
        .collect();
    shown.join("\n")
}
