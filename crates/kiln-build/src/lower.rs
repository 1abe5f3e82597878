//! From a Dockerfile to a [`Plan`]: every ARG, ENV and platform ARG expanded, the stages the
//! target needs chosen and ordered, ONBUILD triggers applied, each stage's image config and
//! history worked out, and every step that touches a filesystem made an [`Op`] with its
//! definition key. Nothing runs here and nothing is read from the filesystem: base images come
//! through the [`ImageResolver`], whose answers (manifest digest and config) are all the plan
//! knows of them.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use kiln_dockerfile::{
    Command, Dockerfile, ExpandError, FlagValue, Instruction, ShellOrExec, Stage,
};
use kiln_oci::{HistoryEntry, ImageConfig, Platform, to_json_bytes};
use kiln_registry::MAX_CONFIG_BYTES;
use kiln_sandbox::Network;
use kiln_snapshot::Chmod;

use crate::base::{BaseRef, ImageResolver, ResolvedImage};
use crate::key::CacheKey;
use crate::plan::{
    ConfigStep, Copy, CopySource, Exec, ExecMount, HistoryStep, ImagePlan, Mkdir, Op, OpId, OpKind,
    Origin, Plan, Source,
};
use crate::platform_args::platform_args;
use crate::rules::{
    compiles, expand_heredoc, exposed_ports, healthcheck_config, heredoc_named, heredoc_script,
    history_text, is_valid_stop_signal, join_image_path, names_a_directory, onbuild_triggers,
    proxy_env, set_default_path, shell_argv, unconsumed_build_args,
};
use crate::{BuildError, BuildOptions, NamedContext};

/// How many stages may wait for another lowered on demand: a stage whose name a `--from`
/// gives only after expansion (or an ONBUILD trigger) is not in the stage graph, so it is
/// lowered from inside the step that needs it, on the same call stack. 8 levels stay far
/// below a thread's stack in unoptimised builds.
const MAX_STAGES_BUILT_ON_DEMAND: usize = 8;

/// A cycle's path is named in errors up to this many stages.
const CYCLE_STAGES_SHOWN: usize = 8;

/// The time in history entries until the solver knows the real one: as long as a real one,
/// so that the size of a config is known while it grows.
const PLACEHOLDER_TIME: &str = "1970-01-01T00:00:00Z";

/// What each layer adds to a config (`"sha256:<64 hex>",` in `rootfs.diff_ids`), for the size
/// check before the layers exist.
const DIFF_ID_JSON_BYTES: usize = 74;

/// Lowers `df` for every platform in `opts.platforms`, resolving base images with `resolver`.
pub fn lower(
    df: &Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<Plan, BuildError> {
    let stages = df.stages();
    if stages.is_empty() {
        return Err(BuildError::Dockerfile {
            path: opts.dockerfile_path.clone(),
            line: 1,
            column: None,
            message: "the Dockerfile has no FROM instruction".into(),
        });
    }
    for (i, stage) in stages.iter().enumerate() {
        let Some(name) = &stage.name else { continue };
        if let Some(first) = stages[..i].iter().find(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        }) {
            return Err(BuildError::Dockerfile {
                path: opts.dockerfile_path.clone(),
                line: stage.from.span.start_line,
                column: None,
                message: format!(
                    "stage name `{name}` is already used by the stage at line {}",
                    first.from.span.start_line
                ),
            });
        }
    }
    let target = match &opts.target {
        None => stages.len() - 1,
        Some(name) => {
            named_stage(&stages, name).ok_or_else(|| BuildError::UnknownTarget(name.clone()))?
        }
    };
    let warnings = unconsumed_build_args(df, &opts.build_args)
        .into_iter()
        .map(|name| format!("[warning] build arg {name} was not consumed by any ARG"))
        .collect();
    let mut ops = Ops {
        ops: Vec::new(),
        by_key: HashMap::new(),
        images: HashMap::new(),
        resolver,
    };
    let mut images = Vec::new();
    for platform in &opts.platforms {
        let mut lowerer = Lowerer::new(df, &stages, opts, &mut ops, platform.clone())?;
        let state = lowerer.stage(target)?;
        images.push(lowerer.image(&state));
    }
    Ok(Plan {
        ops: ops.ops,
        images,
        warnings,
    })
}

/// The stages `names` name (case-insensitively), for `--no-cache-filter`; an unknown name is
/// an error that lists the stages there are.
pub fn stages_named(
    df: &Dockerfile,
    names: &[String],
    flag: &str,
) -> Result<Vec<usize>, BuildError> {
    let stages = df.stages();
    names
        .iter()
        .map(|name| {
            named_stage(&stages, name).ok_or_else(|| {
                let named: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
                BuildError::NoSuchStage {
                    flag: flag.to_string(),
                    name: name.clone(),
                    stages: match named.is_empty() {
                        true => "the Dockerfile names none of its stages".into(),
                        false => format!("its stages are {}", named.join(", ")),
                    },
                }
            })
        })
        .collect()
}

fn named_stage(stages: &[Stage], name: &str) -> Option<usize> {
    stages.iter().position(|s| {
        s.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

/// The ops of the plan being made, shared by every platform: an op with a definition key
/// seen before is that op.
struct Ops<'r> {
    ops: Vec<Op>,
    by_key: HashMap<CacheKey, OpId>,
    /// Images resolved so far, by reference and platform.
    images: HashMap<(String, Platform), Arc<ResolvedImage>>,
    resolver: &'r dyn ImageResolver,
}

impl Ops<'_> {
    fn add(&mut self, kind: OpKind, inputs: Vec<OpId>, own: CacheKey, origin: Origin) -> OpId {
        let input_keys: Vec<&CacheKey> = inputs.iter().map(|i| &self.ops[i.0].key).collect();
        let key = CacheKey::of("op", &(&own, &input_keys));
        if let Some(&id) = self.by_key.get(&key) {
            return id;
        }
        let id = OpId(self.ops.len());
        self.by_key.insert(key.clone(), id);
        self.ops.push(Op {
            kind,
            inputs,
            key,
            own,
            origin,
            then: Vec::new(),
        });
        id
    }

    /// Shows `step` after `op`, once.
    fn then(&mut self, op: OpId, step: ConfigStep) {
        let then = &mut self.ops[op.0].then;
        if !then.contains(&step) {
            then.push(step);
        }
    }

    fn resolve(
        &mut self,
        reference: &BaseRef,
        platform: &Platform,
    ) -> Result<Arc<ResolvedImage>, BuildError> {
        let memo = (reference.to_string(), platform.clone());
        if let Some(image) = self.images.get(&memo) {
            return Ok(image.clone());
        }
        let image = Arc::new(self.resolver.resolve(reference, platform)?);
        self.images.insert(memo, image.clone());
        Ok(image)
    }
}

/// A stage as its instructions are lowered.
#[derive(Clone)]
struct StageState {
    platform: Platform,
    /// The op whose filesystem the stage has now.
    top: OpId,
    config: ImageConfig,
    /// Beside each entry of `config.history`.
    history: Vec<HistoryStep>,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, String>,
    /// Whether CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    /// Ops since the base image that may add a layer, for the size check.
    new_layers: usize,
}

/// A stage another one reads, and where the Dockerfile says so.
struct StageRead<'a> {
    stage: usize,
    ins: &'a Instruction,
    /// The (line, column) of the name, when it can be found as written.
    at: Option<(usize, usize)>,
}

/// The lowering for one target platform.
struct Lowerer<'l, 'a, 'r> {
    df: &'a Dockerfile,
    stages: &'a [Stage<'a>],
    opts: &'a BuildOptions,
    ops: &'l mut Ops<'r>,
    target: Platform,
    multi: bool,
    global_args: BTreeMap<String, Option<String>>,
    /// Stages being lowered now, innermost last: a stage that needs one of them depends on
    /// itself.
    lowering: Vec<usize>,
    /// Per stage, once read: the stages it reads as written.
    reads: Vec<Option<Rc<Vec<StageRead<'a>>>>>,
    /// Per stage, once lowered.
    lowered: Vec<Option<Rc<StageState>>>,
}

impl<'l, 'a, 'r> Lowerer<'l, 'a, 'r> {
    fn new(
        df: &'a Dockerfile,
        stages: &'a [Stage<'a>],
        opts: &'a BuildOptions,
        ops: &'l mut Ops<'r>,
        target: Platform,
    ) -> Result<Self, BuildError> {
        let mut lowerer = Lowerer {
            df,
            stages,
            opts,
            ops,
            multi: opts.platforms.len() > 1,
            global_args: BTreeMap::new(),
            lowering: Vec::new(),
            reads: (0..stages.len()).map(|_| None).collect(),
            lowered: vec![None; stages.len()],
            target,
        };
        // The automatic platform ARGs are defined in global scope.
        for (k, v) in platform_args(&lowerer.target, &Platform::host()) {
            lowerer.global_args.insert(k, Some(v));
        }
        lowerer.declare_global_args()?;
        Ok(lowerer)
    }

    fn err(&self, ins: &Instruction, message: impl Into<String>) -> BuildError {
        self.err_at(ins, None, message)
    }

    /// An error at `at` (line, column) in the Dockerfile when known, else at `ins`'s line.
    fn err_at(
        &self,
        ins: &Instruction,
        at: Option<(usize, usize)>,
        message: impl Into<String>,
    ) -> BuildError {
        BuildError::Dockerfile {
            path: self.opts.dockerfile_path.clone(),
            line: at.map_or(ins.span.start_line, |(line, _)| line),
            column: at.map(|(_, column)| column),
            message: message.into(),
        }
    }

    /// An expansion error in `word` of `ins`: at the `$` at fault (or the word) when the
    /// word can be found in the instruction as written.
    fn expand_err(&self, ins: &Instruction, word: &str, e: ExpandError) -> BuildError {
        self.err_at(
            ins,
            ins.word_position(word, e.offset.unwrap_or(0)),
            e.message,
        )
    }

    fn expand(
        &self,
        ins: &Instruction,
        word: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, BuildError> {
        kiln_dockerfile::expand(word, lookup, self.df.directives.escape)
            .map_err(|e| self.expand_err(ins, word, e))
    }

    /// A flag's value, expanded with the stage's ARGs and ENV; an error points at the flag.
    fn flag_value(
        &self,
        state: &StageState,
        ins: &Instruction,
        name: &str,
        flag: &FlagValue,
    ) -> Result<String, BuildError> {
        kiln_dockerfile::expand(&flag.value, &lookup_fn(state), self.df.directives.escape).map_err(
            |e| {
                self.err_at(
                    ins,
                    ins.position(flag.offset),
                    format!("--{name}: {}", e.message),
                )
            },
        )
    }

    fn declare_global_args(&mut self) -> Result<(), BuildError> {
        for ins in self.df.global_args() {
            if let Command::Arg(decls) = &ins.command {
                for (name, default) in decls {
                    let value = match self.opts.build_args.get(name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => {
                                let known = self.global_values();
                                Some(self.expand(ins, d, &|n| known.get(n).cloned())?)
                            }
                            None => self.global_args.get(name).cloned().flatten(),
                        },
                    };
                    self.global_args.insert(name.clone(), value);
                }
            }
        }
        Ok(())
    }

    fn global_values(&self) -> BTreeMap<String, String> {
        self.global_args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }

    fn stage_index(&self, name: &str) -> Option<usize> {
        // A `--build-context` of a stage's name replaces that stage, as in BuildKit.
        if self.opts.named_contexts.contains_key(name) {
            return None;
        }
        named_stage(self.stages, name).or_else(|| {
            name.parse::<usize>()
                .ok()
                .filter(|i| *i < self.stages.len())
        })
    }

    /// The platform a stage builds for: `FROM --platform=...` (expanded with the global ARGs),
    /// else the target.
    fn stage_platform(&self, idx: usize) -> Result<Platform, BuildError> {
        let from = self.stages[idx].from;
        match from.from_flags().and_then(|f| f.platform.as_ref()) {
            None => Ok(self.target.clone()),
            Some(flag) => {
                let globals = self.global_values();
                let value = self.expand(from, &flag.value, &|n| globals.get(n).cloned())?;
                value
                    .parse::<Platform>()
                    .map_err(|e| self.err(from, format!("FROM --platform={}: {e}", flag.value)))
            }
        }
    }

    /// The stage `FROM <image>` of stage `idx` starts from: an earlier stage with that name.
    fn parent_stage(&self, idx: usize, image: &str) -> Option<usize> {
        self.stage_index(image)
            .filter(|i| *i < idx && self.stages[*i].name.is_some())
    }

    /// The stages stage `idx` reads (read once), in the order the Dockerfile names them: its
    /// FROM stage, then those of COPY/ADD --from and RUN --mount from=. A `--from` whose
    /// value needs expansion is not seen here; it is lowered on demand.
    fn stage_reads(&mut self, idx: usize) -> Result<Rc<Vec<StageRead<'a>>>, BuildError> {
        if let Some(reads) = &self.reads[idx] {
            return Ok(reads.clone());
        }
        let stage = &self.stages[idx];
        let mut reads = Vec::new();
        let globals = self.global_values();
        if let Command::From { image: written, .. } = &stage.from.command {
            let image = self.expand(stage.from, written, &|n| globals.get(n).cloned())?;
            if let Some(parent) = self.parent_stage(idx, &image) {
                reads.push(StageRead {
                    stage: parent,
                    ins: stage.from,
                    at: stage.from.word_position(written, 0),
                });
            }
        }
        for &ins in &stage.instructions {
            let copy_source = ins
                .copy_flags()
                .and_then(|f| f.from.as_ref())
                .map(|from| (from.value.as_str(), from.offset));
            let mount_sources = ins.run_flags().into_iter().flat_map(|f| {
                f.mounts
                    .iter()
                    .filter_map(|m| m.spec.from.as_deref().map(|from| (from, m.written.offset)))
            });
            for (from, offset) in copy_source.into_iter().chain(mount_sources) {
                if let Some(stage) = self.stage_index(from) {
                    reads.push(StageRead {
                        stage,
                        ins,
                        at: ins.position(offset),
                    });
                }
            }
        }
        let reads = Rc::new(reads);
        self.reads[idx] = Some(reads.clone());
        Ok(reads)
    }

    /// The stages stage `idx` needs that are not lowered yet, each after the stages it
    /// reads. The graph is walked with an explicit stack, so a long chain of stages costs no
    /// call stack; a cycle is an error naming its path.
    fn lowering_order(&mut self, idx: usize) -> Result<Vec<usize>, BuildError> {
        let mut order = Vec::new();
        if self.lowered[idx].is_some() {
            return Ok(order);
        }
        let mut on_path = vec![false; self.stages.len()];
        let mut done = vec![false; self.stages.len()];
        // The stages being visited, each with the index of the next stage it reads.
        let mut path = vec![(idx, 0)];
        on_path[idx] = true;
        while let Some(&(stage, next)) = path.last() {
            let reads = self.stage_reads(stage)?;
            let Some(read) = reads.get(next) else {
                path.pop();
                on_path[stage] = false;
                done[stage] = true;
                if stage != idx {
                    order.push(stage);
                }
                continue;
            };
            path.last_mut().expect("not empty").1 += 1;
            if on_path[read.stage] {
                return Err(self.cycle_error(&path, read));
            }
            if !done[read.stage] && self.lowered[read.stage].is_none() {
                on_path[read.stage] = true;
                path.push((read.stage, 0));
            }
        }
        Ok(order)
    }

    /// The error for a stage that reads itself: `path` holds the stages being visited and
    /// `closing` is the read that leads back into it.
    fn cycle_error(&self, path: &[(usize, usize)], closing: &StageRead) -> BuildError {
        let start = path
            .iter()
            .position(|(stage, _)| *stage == closing.stage)
            .unwrap_or(0);
        let stage_name = |idx: usize| {
            let stage = &self.stages[idx];
            stage.name.clone().unwrap_or_else(|| idx.to_string())
        };
        // Each step of the cycle: which stage reads which, and on what line.
        let mut steps = Vec::new();
        for &(stage, next) in &path[start..] {
            let reads = self.reads[stage].clone();
            // `next` is one past the read that led on from this stage.
            let read = next.checked_sub(1).and_then(|n| reads.as_ref()?.get(n));
            if let Some(read) = read {
                let line = read.at.map_or(read.ins.span.start_line, |(line, _)| line);
                steps.push(format!(
                    "{} reads {} (line {line})",
                    stage_name(stage),
                    stage_name(read.stage)
                ));
            }
        }
        let shown = steps.len().min(CYCLE_STAGES_SHOWN);
        let mut cycle = steps[..shown].join(", ");
        if steps.len() > shown {
            cycle.push_str(&format!(", ... ({} more)", steps.len() - shown));
        }
        let from = self.stages[closing.stage].from;
        self.err_at(
            from,
            from.position(0),
            format!(
                "stage `{}` depends on itself: {cycle}",
                stage_name(closing.stage)
            ),
        )
    }

    fn label(&self, platform: &Platform, stage: &str, n: usize, total: usize) -> String {
        if self.multi {
            format!("{platform} {stage} {n}/{total}")
        } else {
            format!("{stage} {n}/{total}")
        }
    }

    /// Stage `idx`, lowered once: first the stages it reads (in dependency order, so that
    /// lowering a stage finds what it reads lowered already), then itself.
    fn stage(&mut self, idx: usize) -> Result<Rc<StageState>, BuildError> {
        for stage in self.lowering_order(idx)? {
            self.lower_once(stage)?;
        }
        self.lower_once(idx)
    }

    fn lower_once(&mut self, idx: usize) -> Result<Rc<StageState>, BuildError> {
        if let Some(state) = &self.lowered[idx] {
            return Ok(state.clone());
        }
        let from = self.stages[idx].from;
        if self.lowering.contains(&idx) {
            let name = self.stages[idx].name.clone();
            return Err(self.err_at(
                from,
                from.position(0),
                format!(
                    "stage `{}` depends on itself (a --from names the stage it is in, directly \
                     or through others)",
                    name.unwrap_or_else(|| idx.to_string())
                ),
            ));
        }
        if self.lowering.len() > MAX_STAGES_BUILT_ON_DEMAND {
            return Err(self.err_at(
                from,
                from.position(0),
                format!(
                    "more than {MAX_STAGES_BUILT_ON_DEMAND} stages wait for this one: a stage \
                     that a --from names only after variable expansion (or that an ONBUILD \
                     trigger names) is built while the step waits, at most \
                     {MAX_STAGES_BUILT_ON_DEMAND} deep; name the stage as written"
                ),
            ));
        }
        self.lowering.push(idx);
        let result = self.lower_stage(idx);
        self.lowering.pop();
        let state = Rc::new(result?);
        self.lowered[idx] = Some(state.clone());
        Ok(state)
    }

    fn lower_stage(&mut self, idx: usize) -> Result<StageState, BuildError> {
        let stage = &self.stages[idx];
        let name = stage.name.clone().unwrap_or_else(|| format!("stage-{idx}"));
        let total = stage.instructions.len() + 1;
        let from = stage.from;
        let Command::From { image, .. } = &from.command else {
            unreachable!("a stage starts with FROM")
        };
        let platform = self.stage_platform(idx)?;
        let globals = self.global_values();
        let image = self.expand(from, image, &|n| globals.get(n).cloned())?;
        let from_label = self.label(&platform, &name, 1, total);
        let from_text = format!("FROM {image}");
        let mut state = match self.parent_stage(idx, &image) {
            Some(parent) => {
                let mut s = (*self.stage(parent)?).clone();
                s.args.clear();
                s.cmd_set = false;
                self.ops.then(
                    s.top,
                    ConfigStep {
                        label: from_label.clone(),
                        text: from_text,
                    },
                );
                s
            }
            None => {
                let origin = Origin {
                    stage: idx,
                    line: from.span.start_line,
                    label: from_label.clone(),
                    text: from.text.clone(),
                    shown: Some(from_text),
                    platform: platform.clone(),
                };
                self.image_state(&image, from, origin)?
            }
        };
        set_default_path(&mut state.config);
        // A stage based on an earlier stage runs that stage's ONBUILD instructions too, as
        // BuildKit does: they are what its config's OnBuild holds.
        self.run_onbuild_triggers(&mut state, idx, from, &from_label)?;

        for (n, ins) in stage.instructions.iter().enumerate() {
            let label = self.label(&platform, &name, n + 2, total);
            self.step(&mut state, idx, ins, &label, false)?;
            self.check_config_size(&state, ins)?;
        }
        Ok(state)
    }

    /// Refuses an image config that has grown past what registry clients (kiln among them)
    /// pull: each word's expansion is bounded, but many instructions add up.
    fn check_config_size(&self, state: &StageState, ins: &Instruction) -> Result<(), BuildError> {
        let size =
            (to_json_bytes(&state.config).len() + state.new_layers * DIFF_ID_JSON_BYTES) as u64;
        if size <= MAX_CONFIG_BYTES {
            return Ok(());
        }
        Err(self.err(
            ins,
            format!(
                "the image config grows to {size} bytes here, over the {} MiB an image config \
                 may have (kiln and other registry clients refuse to pull a larger one)",
                MAX_CONFIG_BYTES >> 20
            ),
        ))
    }

    /// Applies the ONBUILD triggers of a base image or stage right after its FROM, as Docker
    /// does; the new image does not inherit them. Errors point at the FROM line.
    fn run_onbuild_triggers(
        &mut self,
        state: &mut StageState,
        stage: usize,
        from: &Instruction,
        label: &str,
    ) -> Result<(), BuildError> {
        let triggers = onbuild_triggers(&state.config);
        state.config.config.extra.remove("OnBuild");
        for text in triggers {
            let parsed = kiln_dockerfile::parse(
                &self.opts.dockerfile_path,
                &format!("FROM scratch\n{text}\n"),
            )
            .map_err(|e| {
                self.err(
                    from,
                    format!("ONBUILD trigger `{text}` of the base image: {}", e.message),
                )
            })?;
            for mut trigger in parsed.instructions.into_iter().skip(1) {
                trigger.span = from.span;
                self.step(state, stage, &trigger, label, true)?;
            }
        }
        Ok(())
    }

    /// The source op of `image` for `platform`: scratch, or a resolved image.
    fn source_op(
        &mut self,
        image: &str,
        ins: &Instruction,
        origin: Origin,
    ) -> Result<(OpId, Option<Arc<ResolvedImage>>), BuildError> {
        let platform = origin.platform.clone();
        let image = match self.opts.named_contexts.get(image) {
            Some(NamedContext::Image(reference)) => reference.as_str(),
            Some(NamedContext::Dir(dir)) => {
                let local = Source::Local {
                    name: image.to_string(),
                    dir: dir.clone(),
                };
                let own = CacheKey::of("local", &(image, dir, &platform));
                let op = self.ops.add(OpKind::Source(local), Vec::new(), own, origin);
                return Ok((op, None));
            }
            None => image,
        };
        if image == "scratch" {
            let own = CacheKey::of("scratch", &platform);
            let op = self
                .ops
                .add(OpKind::Source(Source::Scratch), Vec::new(), own, origin);
            return Ok((op, None));
        }
        let reference = BaseRef::parse(image).map_err(|e| self.err(ins, e))?;
        let resolved = self.ops.resolve(&reference, &platform)?;
        let own = CacheKey::of("image", &(&resolved.manifest, &platform));
        let op = self.ops.add(
            OpKind::Source(Source::Image(resolved.clone())),
            Vec::new(),
            own,
            origin,
        );
        Ok((op, Some(resolved)))
    }

    /// The starting state for `FROM image`: scratch, or a resolved image.
    fn image_state(
        &mut self,
        image: &str,
        from: &Instruction,
        origin: Origin,
    ) -> Result<StageState, BuildError> {
        let platform = origin.platform.clone();
        let (top, resolved) = self.source_op(image, from, origin)?;
        let config = match resolved {
            Some(resolved) => resolved.config.clone(),
            None => {
                let mut config = ImageConfig::for_platform(&platform);
                // BuildKit's empty image: working dir `/` (and the default PATH, as any stage).
                config.config.working_dir = "/".into();
                config
            }
        };
        Ok(StageState {
            history: vec![HistoryStep::Base; config.history.len()],
            platform,
            top,
            config,
            args: BTreeMap::new(),
            cmd_set: false,
            new_layers: 0,
        })
    }

    /// The op for a `--from` source: a stage's filesystem, or an image's.
    fn read_op(
        &mut self,
        name: &str,
        ins: &Instruction,
        state: &StageState,
        stage: usize,
        copy: bool,
    ) -> Result<OpId, BuildError> {
        if let Some(i) = self.stage_index(name) {
            return Ok(self.stage(i)?.top);
        }
        let unknown = || BuildError::UnknownStage {
            path: self.opts.dockerfile_path.clone(),
            line: ins.span.start_line,
            name: name.to_string(),
        };
        // A named context is what the user asked for: its own errors say more.
        let named = self.opts.named_contexts.contains_key(name);
        if copy && !named && BaseRef::parse(name).is_err() {
            return Err(unknown());
        }
        let origin = Origin {
            stage,
            line: ins.span.start_line,
            label: String::new(),
            text: ins.text.clone(),
            shown: None,
            platform: state.platform.clone(),
        };
        match self.source_op(name, ins, origin) {
            Ok((op, _)) => Ok(op),
            Err(BuildError::BaseImage { .. }) if copy && !named => Err(unknown()),
            Err(e) => Err(e),
        }
    }

    fn history(state: &mut StageState, ins: &Instruction, op: Option<OpId>) {
        state.config.history.push(HistoryEntry {
            created: Some(PLACEHOLDER_TIME.to_string()),
            created_by: Some(history_text(ins)),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: op.is_none(),
        });
        state
            .history
            .push(op.map_or(HistoryStep::Config, HistoryStep::Op));
    }

    /// Lowers one instruction of stage `stage`.
    fn step(
        &mut self,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
        label: &str,
        onbuild: bool,
    ) -> Result<(), BuildError> {
        let escape = self.df.directives.escape;
        let shown = match onbuild {
            true => format!("ONBUILD {}", ins.text),
            false => ins.text.clone(),
        };
        let origin = Origin {
            stage,
            line: ins.span.start_line,
            label: label.to_string(),
            text: ins.text.clone(),
            shown: Some(shown.clone()),
            platform: state.platform.clone(),
        };
        let expand = |this: &Self, word: &str, state: &StageState| -> Result<String, BuildError> {
            kiln_dockerfile::expand(word, &lookup_fn(state), escape)
                .map_err(|e| this.expand_err(ins, word, e))
        };
        let mut op = None;
        match &ins.command {
            Command::From { .. } => unreachable!("stages split at FROM"),
            Command::Unknown { .. } => unreachable!("a full parse refuses unknown keywords"),
            Command::Run(cmd) => {
                let argv = match cmd {
                    ShellOrExec::Shell(command) if !ins.heredocs.is_empty() => {
                        let script = heredoc_script(command, &ins.heredocs);
                        shell_argv(&state.config, &ShellOrExec::Shell(script))
                    }
                    _ => shell_argv(&state.config, cmd),
                };
                op = Some(self.exec(state, stage, ins, argv, origin)?);
            }
            Command::Copy { sources, dest } | Command::Add { sources, dest } => {
                op = Some(self.copy(state, stage, ins, sources, dest, origin)?);
            }
            Command::Env(pairs) => {
                let mut values = Vec::new();
                for (k, v) in pairs {
                    values.push((k.clone(), expand(self, v, state)?));
                }
                for (k, v) in values {
                    state.config.config.set_env_var(&k, &v);
                }
            }
            Command::Arg(decls) => {
                for (name, default) in decls {
                    let value = match self.opts.build_args.get(name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(expand(self, d, state)?),
                            None => self.global_args.get(name).cloned().flatten(),
                        },
                    };
                    if let Some(v) = value {
                        state.args.insert(name.clone(), v);
                    }
                }
            }
            Command::Label(pairs) => {
                for (k, v) in pairs {
                    let (k, v) = (expand(self, k, state)?, expand(self, v, state)?);
                    state.config.config.labels.insert(k, v);
                }
            }
            Command::Expose(ports) => {
                let mut words = Vec::new();
                for p in ports {
                    words.extend(
                        kiln_dockerfile::expand_words(p, &lookup_fn(state), escape)
                            .map_err(|e| self.expand_err(ins, p, e))?,
                    );
                }
                for word in words {
                    for port in exposed_ports(&word).map_err(|message| self.err(ins, message))? {
                        state
                            .config
                            .config
                            .exposed_ports
                            .insert(port, serde_json::json!({}));
                    }
                }
            }
            Command::Workdir(dir) => {
                let dir = expand(self, dir, state)?;
                let base = if state.config.config.working_dir.is_empty() {
                    "/"
                } else {
                    &state.config.config.working_dir
                };
                let dir = join_image_path(base, &dir);
                state.config.config.working_dir = dir.clone();
                if dir != "/" {
                    let mkdir = Mkdir {
                        path: dir,
                        user: state.config.config.user.clone(),
                        source_date_epoch: self.opts.source_date_epoch,
                    };
                    let own = CacheKey::of("mkdir", &(&mkdir, &state.platform));
                    op = Some(
                        self.ops
                            .add(OpKind::Mkdir(mkdir), vec![state.top], own, origin),
                    );
                }
            }
            Command::User(user) => state.config.config.user = expand(self, user, state)?,
            Command::Cmd(cmd) => {
                state.config.config.cmd = Some(shell_argv(&state.config, cmd));
                state.cmd_set = true;
            }
            Command::Entrypoint(cmd) => {
                state.config.config.entrypoint = Some(shell_argv(&state.config, cmd));
                if !state.cmd_set {
                    state.config.config.cmd = None;
                }
            }
            Command::Volume(vols) => {
                for v in vols {
                    let v = expand(self, v, state)?;
                    state.config.config.volumes.insert(v, serde_json::json!({}));
                }
            }
            Command::StopSignal(sig) => {
                let sig = expand(self, sig, state)?;
                if !is_valid_stop_signal(&sig) {
                    return Err(self.err(
                        ins,
                        format!(
                            "invalid signal: {sig} (expected a signal name such as SIGTERM or \
                             TERM, or a number)"
                        ),
                    ));
                }
                state.config.config.stop_signal = sig;
            }
            Command::Maintainer(who) => state.config.author = Some(who.clone()),
            Command::Shell(argv) => {
                state
                    .config
                    .config
                    .extra
                    .insert("Shell".into(), serde_json::json!(argv));
            }
            Command::Healthcheck(check) => {
                let value =
                    healthcheck_config(check.as_ref(), &ins.flags).map_err(|m| self.err(ins, m))?;
                state
                    .config
                    .config
                    .extra
                    .insert("Healthcheck".into(), value);
            }
            Command::Onbuild(trigger) => {
                let mut triggers = onbuild_triggers(&state.config);
                triggers.push(trigger.text.clone());
                state
                    .config
                    .config
                    .extra
                    .insert("OnBuild".into(), serde_json::json!(triggers));
            }
        }
        match op {
            Some(op) => {
                state.top = op;
                state.new_layers += 1;
            }
            None => self.ops.then(
                state.top,
                ConfigStep {
                    label: label.to_string(),
                    text: shown,
                },
            ),
        }
        Self::history(state, ins, op);
        Ok(())
    }

    /// `RUN --network` (and `--security`, which only allows the default sandbox); the build's
    /// `--network` when the step names none or `default`.
    fn run_network(&self, state: &StageState, ins: &Instruction) -> Result<Network, BuildError> {
        let Some(flags) = ins.run_flags() else {
            return Ok(self.opts.network);
        };
        if let Some(security) = &flags.security {
            match self.flag_value(state, ins, "security", security)?.as_str() {
                "sandbox" => {}
                "insecure" => {
                    return Err(self.err(
                        ins,
                        "RUN --security=insecure is not supported: kiln runs every step \
                         unprivileged, in a user namespace",
                    ));
                }
                other => {
                    return Err(self.err(
                        ins,
                        format!("--security={other}: expected sandbox or insecure"),
                    ));
                }
            }
        }
        let Some(network) = &flags.network else {
            return Ok(self.opts.network);
        };
        match self.flag_value(state, ins, "network", network)?.as_str() {
            "default" => Ok(self.opts.network),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(self.err(
                ins,
                format!("--network={other}: expected default, none or host"),
            )),
        }
    }

    fn exec(
        &mut self,
        state: &StageState,
        stage: usize,
        ins: &Instruction,
        argv: Vec<String>,
        origin: Origin,
    ) -> Result<OpId, BuildError> {
        let cwd = if state.config.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.config.config.working_dir.clone()
        };
        let network = self.run_network(state, ins)?;
        let mut inputs = vec![state.top];
        let mut mounts = Vec::new();
        for flag in ins.run_flags().map_or(&[][..], |f| &f.mounts) {
            let expanded = flag
                .spec
                .expand(|word| {
                    kiln_dockerfile::expand(word, &lookup_fn(state), self.df.directives.escape)
                })
                .map_err(|e| {
                    self.err_at(
                        ins,
                        ins.position(flag.written.offset),
                        format!("--mount: {}", e.message),
                    )
                })?;
            let mut mount = expanded
                .resolve()
                .map_err(|m| self.err(ins, format!("--mount={}: {m}", flag.written.value)))?;
            mount.target = mount.target.map(|t| join_image_path(&cwd, &t));
            let from = match &mount.from {
                None => None,
                Some(name) => {
                    let op = self.read_op(name, ins, state, stage, false)?;
                    inputs.push(op);
                    Some(inputs.len() - 1)
                }
            };
            mounts.push(ExecMount { mount, from });
        }
        let mut run_env = state.config.config.clone();
        for (k, v) in &state.args {
            if state.config.config.env_var(k).is_none() {
                run_env.set_env_var(k, v);
            }
        }
        let exec = Exec {
            argv,
            env: run_env.env,
            proxy_env: proxy_env(&self.opts.build_args)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            cwd,
            user: state.config.config.user.clone(),
            hostname: "kiln".into(),
            network,
            options: self.opts.step_options.clone(),
            mounts,
            source_date_epoch: self.opts.source_date_epoch,
            compiles: compiles(&ins.text),
        };
        let own = CacheKey::of("exec", &(&exec, &state.platform));
        Ok(self.ops.add(OpKind::Exec(exec), inputs, own, origin))
    }

    fn copy(
        &mut self,
        state: &StageState,
        stage: usize,
        ins: &Instruction,
        sources: &[String],
        dest: &str,
        origin: Origin,
    ) -> Result<OpId, BuildError> {
        let add = matches!(ins.command, Command::Add { .. });
        let escape = self.df.directives.escape;
        let lookup = lookup_fn(state);
        let ex = |w: &str| {
            kiln_dockerfile::expand(w, &lookup, escape).map_err(|e| self.expand_err(ins, w, e))
        };
        let flags = ins.copy_flags().cloned().unwrap_or_default();
        let flag = |name: &str, value: &Option<FlagValue>| {
            value
                .as_ref()
                .map(|v| self.flag_value(state, ins, name, v))
                .transpose()
        };
        let dest_raw = ex(dest)?;
        let mut srcs = Vec::new();
        for raw in sources {
            srcs.push(match heredoc_named(raw, &ins.heredocs) {
                Some(doc) => CopySource::Inline {
                    name: doc.name.clone(),
                    content: if doc.expand {
                        expand_heredoc(&doc.content, &lookup, escape)
                            .map_err(|e| self.err(ins, e.message))?
                    } else {
                        doc.content.clone()
                    },
                },
                None => {
                    let src = ex(raw)?;
                    if src.starts_with("http://") || src.starts_with("https://") {
                        if !add {
                            return Err(self.err(
                                ins,
                                format!("COPY cannot download {src}: use ADD for URLs"),
                            ));
                        }
                        CopySource::Url(src)
                    } else {
                        CopySource::Path(src)
                    }
                }
            });
        }
        let from = flag("from", &flags.from)?;
        let chown = flag("chown", &flags.chown)?;
        let chmod = flag("chmod", &flags.chmod)?;
        if let Some(mode) = &chmod {
            Chmod::parse(mode).map_err(|e| self.err(ins, format!("--chmod: {e}")))?;
        }
        let checksum = match flag("checksum", &flags.checksum)? {
            None => None,
            Some(c) => match c.split_once(':') {
                Some(("sha256", hex))
                    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    Some(c.to_ascii_lowercase())
                }
                _ => {
                    return Err(self.err(
                        ins,
                        format!("--checksum={c}: expected sha256:<64 hex digits>"),
                    ));
                }
            },
        };
        let mut excludes = Vec::new();
        for f in &flags.exclude {
            excludes.push(self.flag_value(state, ins, "exclude", f)?);
        }
        drop(lookup);
        if checksum.is_some() && !matches!(srcs.as_slice(), [CopySource::Url(_)]) {
            return Err(self.err(ins, "--checksum needs exactly one source, a URL"));
        }
        if !excludes.is_empty() {
            kiln_dockerfile::IgnoreMatcher::parse(&excludes.join("\n"))
                .map_err(|e| self.err(ins, format!("--exclude: {e}")))?;
        }
        if srcs.len() > 1 && !names_a_directory(&dest_raw) && !flags.parents {
            return Err(self.err(
                ins,
                format!(
                    "with more than one source, the destination must be a directory ending in \
                     /: write `{dest_raw}/`"
                ),
            ));
        }
        let workdir = if state.config.config.working_dir.is_empty() {
            "/"
        } else {
            &state.config.config.working_dir
        };
        let mut inputs = vec![state.top];
        let from = match from {
            None => None,
            Some(name) => {
                inputs.push(self.read_op(&name, ins, state, stage, true)?);
                Some((1, name))
            }
        };
        let copy = Copy {
            add,
            sources: srcs,
            from,
            dest_path: join_image_path(workdir, &dest_raw),
            dest: dest_raw,
            chown,
            chmod,
            link: flags.link,
            parents: flags.parents,
            unpack: flags.unpack,
            excludes,
            checksum,
            source_date_epoch: self.opts.source_date_epoch,
        };
        let own = CacheKey::of("copy", &(&copy, &state.platform));
        Ok(self.ops.add(OpKind::Copy(copy), inputs, own, origin))
    }

    /// The plan of the image of the target stage.
    fn image(&self, state: &StageState) -> ImagePlan {
        let mut config = state.config.clone();
        config.config.labels.extend(self.opts.labels.clone());
        let p = &state.platform;
        config.architecture = p.architecture.clone();
        config.os = p.os.clone();
        config.variant = p.variant.clone();
        ImagePlan {
            platform: p.clone(),
            result: state.top,
            config,
            history: state.history.clone(),
        }
    }
}

fn lookup_fn(state: &StageState) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        state
            .config
            .config
            .env_var(name)
            .map(str::to_string)
            .or_else(|| state.args.get(name).cloned())
    }
}
