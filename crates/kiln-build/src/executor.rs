use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_dockerfile::{Command, Dockerfile, ExpandError, Instruction, ShellOrExec, Stage};
use kiln_oci::{
    Descriptor, HistoryEntry, ImageConfig, ImageManifest, Platform, media, to_json_bytes,
};
use kiln_registry::{MAX_CONFIG_BYTES, RegistryClient};
use kiln_sandbox::{EmulationMode, Network, RunSpec, Sandbox};
use kiln_snapshot::{Chmod, CopyOptions, LayerOptions, LayerStack};
use sha2::{Digest as _, Sha256};

use crate::base::{self, LayerRef};
use crate::context::BuildContext;
use crate::mounts::{self, MountInputs, PreparedMounts};
use crate::platform_args::platform_args;
use crate::progress::Progress;
use crate::secrets::{MIN_REDACTED_CHARS, SecretFiles, Secrets};
use crate::{BuildError, Store, timefmt};

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
}

/// An image built and stored: its manifest and everything the manifest points to.
pub struct BuiltImage {
    pub platform: Platform,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// One executed step, for the build summary.
#[derive(Clone, Debug)]
pub struct StepRecord {
    pub platform: Platform,
    pub label: String,
    pub instruction: String,
    pub emulated: bool,
    pub elapsed: Duration,
}

/// What a build produced: one image per requested platform (in the order asked), and every
/// step that ran.
pub struct BuildResult {
    pub images: Vec<BuiltImage>,
    pub steps: Vec<StepRecord>,
}

/// The state of a stage as its instructions run.
#[derive(Clone)]
struct StageState {
    platform: Platform,
    layers: Vec<LayerRef>,
    config: ImageConfig,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, String>,
    /// Whether CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

/// A stage built (`Some`) or failed (`None`) once, shared by every platform whose key for it
/// is the same.
type Memo = Arc<OnceLock<Option<StageState>>>;

/// What every platform of one build shares.
struct Shared<'a> {
    df: &'a Dockerfile,
    stages: Vec<Stage<'a>>,
    opts: &'a BuildOptions,
    store: &'a Store,
    client: &'a RegistryClient,
    progress: &'a Progress,
    context: BuildContext,
    sandbox: Sandbox,
    secret_files: SecretFiles<'a>,
    created: String,
    build_platform: Platform,
    multi: bool,
    /// Stages by key: equal keys are the same work.
    stages_done: Mutex<HashMap<String, Memo>>,
    /// Base images by `reference platform`.
    images: Mutex<HashMap<String, Memo>>,
    emulation: Mutex<HashMap<String, EmulationMode>>,
    steps: Mutex<Vec<StepRecord>>,
    cancelled: AtomicBool,
}

/// The build of one target platform.
struct Executor<'s, 'a> {
    shared: &'s Shared<'a>,
    target: Platform,
    global_args: BTreeMap<String, Option<String>>,
    /// Stages this platform is building right now, innermost last: a stage that needs one
    /// of them depends on itself.
    building: RefCell<Vec<usize>>,
    /// Per stage, once read: what its result depends on.
    inputs: RefCell<Vec<Option<Rc<StageInputs<'a>>>>>,
    /// Per stage, once its inputs are keyed: its key in `Shared::stages_done`.
    keys: RefCell<Vec<Option<String>>>,
}

/// What a stage's result depends on.
struct StageInputs<'a> {
    /// The stages it reads, in the order the Dockerfile names them: its FROM stage, then
    /// those of COPY/ADD --from and RUN --mount from=.
    reads: Vec<StageRead<'a>>,
    /// The rest of its key: its platform, the image it starts from unless that is a stage,
    /// the values of its ARGs and the images it copies or mounts from.
    own_key: String,
}

/// A stage another one reads, and where the Dockerfile says so.
struct StageRead<'a> {
    stage: usize,
    ins: &'a Instruction,
    /// The (line, column) of the name, when it can be found as written.
    at: Option<(usize, usize)>,
}

/// How many stages may wait for another built on demand: a stage whose name a `--from`
/// gives only after expansion (or an ONBUILD trigger) is not in the stage graph, so it is
/// built from inside the step that needs it, on the same call stack. Each such level costs
/// tens of KiB of stack in unoptimised builds; 8 stays far below a build thread's 2 MiB.
const MAX_STAGES_BUILT_ON_DEMAND: usize = 8;

/// A cycle's path is named in errors up to this many stages.
const CYCLE_STAGES_SHOWN: usize = 8;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the target stage of `df` for every platform in `opts.platforms` and stores the
/// images. Platforms build concurrently (up to `opts.jobs`); a stage whose inputs are the same
/// for several platforms runs once. If one platform fails, the others stop at their next step.
pub fn build(
    df: &Dockerfile,
    opts: &BuildOptions,
    store: &Store,
    client: &RegistryClient,
    progress: &Progress,
) -> Result<BuildResult, BuildError> {
    let progress = &progress.redacting(opts.secrets.redactor().clone());
    for id in opts.secrets.unredactable() {
        progress.warning(&format!(
            "secret `{id}` is shorter than {MIN_REDACTED_CHARS} characters, so kiln does not \
             redact it from the build's output"
        ));
    }
    let stages = df.stages();
    if stages.is_empty() {
        return Err(BuildError::Dockerfile {
            path: opts.dockerfile_path.clone(),
            line: 1,
            column: None,
            message: "the Dockerfile has no FROM instruction".into(),
        });
    }
    warn_unconsumed_build_args(df, &opts.build_args, progress);
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
        Some(name) => stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| BuildError::UnknownTarget(name.clone()))?,
    };
    let shared = Shared {
        df,
        stages,
        opts,
        store,
        client,
        progress,
        context: BuildContext::open(&opts.context_dir, opts.ignore_file.as_deref())?,
        sandbox: Sandbox::new(opts.sandbox_helper.clone()),
        secret_files: SecretFiles::new(store),
        created: timefmt::rfc3339(opts.source_date_epoch.unwrap_or_else(timefmt::now_secs)),
        build_platform: Platform::host(),
        multi: opts.platforms.len() > 1,
        stages_done: Mutex::new(HashMap::new()),
        images: Mutex::new(HashMap::new()),
        emulation: Mutex::new(HashMap::new()),
        steps: Mutex::new(Vec::new()),
        cancelled: AtomicBool::new(false),
    };
    // Every target platform must be runnable before the first step starts.
    for p in &opts.platforms {
        shared.emulation_for(p)?;
    }

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<BuiltImage, BuildError>)>> = Mutex::new(Vec::new());
    let workers = opts.jobs.clamp(1, opts.platforms.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(platform) = opts.platforms.get(i) else {
                        break;
                    };
                    let result = Executor::new(&shared, platform.clone())
                        .and_then(|ex| ex.build_target(target));
                    if result.is_err() {
                        shared.cancelled.store(true, Ordering::SeqCst);
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
    Ok(BuildResult {
        images,
        steps: shared.steps.into_inner().unwrap(),
    })
}

/// The proxy build args: BuildKit accepts them, in any case, without an ARG and gives them to
/// every RUN, but never writes them to the image config or history.
const PROXY_ARGS: [&str; 5] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// The environment a RUN gets from the proxy build args: each one set, under both its upper
/// and lower case name, as BuildKit's exec op does. When several spellings of one are given,
/// the last in sorted order wins, as in BuildKit.
fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for name in PROXY_ARGS {
        let value = build_args
            .iter()
            .filter(|(arg, _)| arg.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .next_back();
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            env.push((name.to_string(), value.clone()));
            env.push((name.to_ascii_lowercase(), value.clone()));
        }
    }
    env
}

/// Warns about `--build-arg`s that no ARG of the Dockerfile declares: usually a typo.
fn warn_unconsumed_build_args(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    progress: &Progress,
) {
    let declared: Vec<&str> = df
        .instructions
        .iter()
        .filter_map(|ins| match &ins.command {
            Command::Arg(decls) => Some(decls.iter().map(|(name, _)| name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    for name in build_args.keys() {
        let predefined =
            name == "SOURCE_DATE_EPOCH" || PROXY_ARGS.iter().any(|p| name.eq_ignore_ascii_case(p));
        if !predefined && !name.starts_with("BUILDKIT_") && !declared.contains(&name.as_str()) {
            progress.info(&format!(
                "[warning] build arg {name} was not consumed by any ARG"
            ));
        }
    }
}

fn shell_argv(config: &ImageConfig, cmd: &ShellOrExec) -> Vec<String> {
    match cmd {
        ShellOrExec::Exec(v) => v.clone(),
        ShellOrExec::Shell(s) => {
            let mut argv: Vec<String> = config
                .config
                .extra
                .get("Shell")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            argv.push(s.clone());
            argv
        }
    }
}

/// The shell script for a RUN with heredocs, as BuildKit makes it. A RUN that is just
/// `<<EOF` runs the body: with the interpreter its `#!` line names, else with the shell. Any
/// other command line gets the bodies appended, each closed by its delimiter, for the shell
/// to read as ordinary here-documents (a quoted delimiter keeps its body unexpanded there).
fn heredoc_script(command: &str, heredocs: &[kiln_dockerfile::Heredoc]) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    if let ([word], [doc]) = (words.as_slice(), heredocs)
        && word.starts_with("<<")
    {
        return match doc.content.strip_prefix("#!") {
            // The body reaches its interpreter as a file: /dev/stdin, fed by a quoted
            // here-document so the shell leaves it alone.
            Some(rest) => {
                let interpreter = rest.lines().next().unwrap_or("").trim();
                format!(
                    "{interpreter} /dev/stdin <<'{name}'\n{body}{name}",
                    name = doc.name,
                    body = doc.content
                )
            }
            None => doc.content.clone(),
        };
    }
    let mut script = command.to_string();
    for doc in heredocs {
        script.push('\n');
        script.push_str(&doc.content);
        script.push_str(&doc.name);
    }
    script
}

/// The `Healthcheck` of an image config, as Docker writes it: durations in nanoseconds,
/// zero values left out, the test as `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
fn healthcheck_config(
    check: Option<&ShellOrExec>,
    flags: &[kiln_dockerfile::Flag],
) -> Result<serde_json::Value, String> {
    let mut value = serde_json::Map::new();
    let test = match check {
        None => vec!["NONE".to_string()],
        Some(ShellOrExec::Shell(command)) => vec!["CMD-SHELL".to_string(), command.clone()],
        Some(ShellOrExec::Exec(argv)) => std::iter::once("CMD".to_string())
            .chain(argv.iter().cloned())
            .collect(),
    };
    value.insert("Test".into(), serde_json::json!(test));
    // Docker ignores the options of HEALTHCHECK NONE.
    for flag in flags.iter().filter(|_| check.is_some()) {
        let raw = flag.value.as_deref().unwrap_or("");
        let (key, number) = match flag.name.as_str() {
            "retries" => match raw.parse::<i64>() {
                Ok(n) if n >= 0 => ("Retries", n),
                _ => return Err(format!("--retries={raw}: expected a number, 0 or more")),
            },
            name => {
                let key = match name {
                    "interval" => "Interval",
                    "timeout" => "Timeout",
                    "start-period" => "StartPeriod",
                    _ => "StartInterval",
                };
                let nanos = parse_duration(raw).map_err(|m| format!("--{name}={raw}: {m}"))?;
                if nanos != 0 && nanos < 1_000_000 {
                    return Err(format!("--{name}={raw}: cannot be less than 1ms"));
                }
                (key, nanos)
            }
        };
        if number != 0 {
            value.insert(key.into(), serde_json::json!(number));
        }
    }
    Ok(serde_json::Value::Object(value))
}

/// A Go duration (`30s`, `1m30s`, `1.5h`, `500ms`, `0`) in nanoseconds.
fn parse_duration(text: &str) -> Result<i64, String> {
    const UNITS: &[(&str, f64)] = &[
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
        ("m", 60e9),
        ("h", 3600e9),
    ];
    if text == "0" {
        return Ok(0);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err("expected a duration like 30s, 1m30s or 500ms".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| "expected a duration like 30s, 1m30s or 500ms".to_string())?;
        rest = &rest[digits..];
        // Longest unit first, so `ms` is not read as `m` then `s`.
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(|| "a duration needs a unit: ns, us, ms, s, m or h".to_string())?;
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    Ok(total.round() as i64)
}

/// Gives a config without PATH the default one, as BuildKit does for every stage (the saved
/// config and the RUN environment alike), except on Windows.
fn set_default_path(config: &mut ImageConfig) {
    if config.os != "windows" && config.config.env_var("PATH").is_none() {
        config.config.set_env_var("PATH", DEFAULT_PATH);
    }
}

/// Linux signal names, without `SIG`, that BuildKit's STOPSIGNAL accepts (moby/sys/signal).
const SIGNAL_NAMES: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
];

/// Whether BuildKit accepts a STOPSIGNAL value: a non-zero integer, or a signal name in any
/// case with or without `SIG` (`RTMIN+1`..`RTMIN+15` and `RTMAX-14`..`RTMAX-1` included).
fn is_valid_stop_signal(value: &str) -> bool {
    if let Ok(number) = value.parse::<i64>() {
        return number != 0;
    }
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNAL_NAMES.contains(&name)
        || (1..=15).any(|n| name == format!("RTMIN+{n}"))
        || (1..=14).any(|n| name == format!("RTMAX-{n}"))
}

/// The ONBUILD triggers an image config carries.
fn onbuild_triggers(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .extra
        .get("OnBuild")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Words in a RUN command that mean it compiles: worth moving to a build-platform stage
/// when it runs under emulation.
const COMPILER_WORDS: &[&str] = &[
    "go build",
    "go install",
    "cargo build",
    "cargo install",
    "rustc",
    "gcc",
    "g++",
    "cc ",
    "clang",
    "make",
    "cmake",
    "npm install",
    "npm ci",
    "yarn",
    "pip install",
    "pip3 install",
];

fn compiles(command: &str) -> bool {
    COMPILER_WORDS.iter().any(|w| command.contains(w))
}

impl Shared<'_> {
    /// How RUN steps for `platform` run; probed once per architecture.
    fn emulation_for(&self, platform: &Platform) -> Result<EmulationMode, BuildError> {
        let arch = platform.normalized().architecture;
        if let Some(m) = self.emulation.lock().unwrap().get(&arch) {
            return Ok(m.clone());
        }
        let mode = self
            .sandbox
            .emulation_for(&arch, self.opts.qemu_dir.as_deref())
            .map_err(|e| BuildError::Emulation {
                platform: platform.to_string(),
                message: e.to_string(),
            })?;
        self.emulation.lock().unwrap().insert(arch, mode.clone());
        Ok(mode)
    }

    fn memo(map: &Mutex<HashMap<String, Memo>>, key: &str) -> Memo {
        map.lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}

/// Runs `work` once per memo cell; a caller that lost the race waits for the winner. The
/// winner gets its own error; the others see the platform as cancelled.
fn once(
    cell: &Memo,
    platform: &Platform,
    work: impl FnOnce() -> Result<StageState, BuildError>,
) -> Result<StageState, BuildError> {
    let mut error = None;
    let value = cell.get_or_init(|| match work() {
        Ok(s) => Some(s),
        Err(e) => {
            error = Some(e);
            None
        }
    });
    match (value, error) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(e)) => Err(e),
        (None, None) => Err(BuildError::Cancelled {
            platform: platform.to_string(),
        }),
    }
}

impl<'s, 'a> Executor<'s, 'a> {
    fn new(shared: &'s Shared<'a>, target: Platform) -> Result<Self, BuildError> {
        let mut ex = Executor {
            shared,
            target,
            global_args: BTreeMap::new(),
            building: RefCell::new(Vec::new()),
            inputs: RefCell::new(vec![None; shared.stages.len()]),
            keys: RefCell::new(vec![None; shared.stages.len()]),
        };
        // The automatic platform ARGs are defined in global scope.
        for (k, v) in platform_args(&ex.target, &shared.build_platform) {
            ex.global_args.insert(k, Some(v));
        }
        ex.declare_global_args()?;
        Ok(ex)
    }

    fn build_target(&self, target: usize) -> Result<BuiltImage, BuildError> {
        let state = self.stage(target)?;
        self.finish(state)
    }

    fn opts(&self) -> &'a BuildOptions {
        self.shared.opts
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
            path: self.opts().dockerfile_path.clone(),
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
        kiln_dockerfile::expand(word, lookup, self.shared.df.directives.escape)
            .map_err(|e| self.expand_err(ins, word, e))
    }

    fn declare_global_args(&mut self) -> Result<(), BuildError> {
        for ins in self.shared.df.global_args() {
            if let Command::Arg(decls) = &ins.command {
                for (name, default) in decls {
                    let value = match self.opts().build_args.get(name) {
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
        let stages = &self.shared.stages;
        stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < stages.len()))
    }

    /// The platform a stage builds for: `FROM --platform=...` (expanded with the global ARGs),
    /// else the target.
    fn stage_platform(&self, idx: usize) -> Result<Platform, BuildError> {
        let from = self.shared.stages[idx].from;
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
            .filter(|i| *i < idx && self.shared.stages[*i].name.is_some())
    }

    /// What stage `idx`'s result depends on (read once): the stages it reads, by name as
    /// written (a `--from` whose value needs expansion is not seen here), and the rest.
    fn stage_inputs(&self, idx: usize) -> Result<Rc<StageInputs<'a>>, BuildError> {
        if let Some(inputs) = &self.inputs.borrow()[idx] {
            return Ok(inputs.clone());
        }
        let stage = &self.shared.stages[idx];
        let mut own_key = format!("stage {idx}\nplatform {}\n", self.stage_platform(idx)?);
        let mut reads = Vec::new();
        let globals = self.global_values();
        if let Command::From { image: written, .. } = &stage.from.command {
            let image = self.expand(stage.from, written, &|n| globals.get(n).cloned())?;
            match self.parent_stage(idx, &image) {
                Some(parent) => reads.push(StageRead {
                    stage: parent,
                    ins: stage.from,
                    at: stage.from.word_position(written, 0),
                }),
                None => own_key.push_str(&format!("from image {image}\n")),
            }
        }
        for &ins in &stage.instructions {
            if let Command::Arg(decls) = &ins.command {
                for (name, default) in decls {
                    let value = self
                        .opts()
                        .build_args
                        .get(name)
                        .cloned()
                        .or_else(|| default.clone())
                        .or_else(|| globals.get(name).cloned());
                    own_key.push_str(&format!("arg {name}={value:?}\n"));
                }
            }
            // Stages read by COPY --from or RUN --mount=from=... are inputs too.
            let mount_sources = ins.run_flags().into_iter().flat_map(|f| {
                f.mounts
                    .iter()
                    .filter_map(|m| m.spec.from.as_deref().map(|from| (from, m.written.offset)))
            });
            let copy_source = ins
                .copy_flags()
                .and_then(|f| f.from.as_ref())
                .map(|from| (from.value.as_str(), from.offset));
            for (from, offset) in copy_source.into_iter().chain(mount_sources) {
                match self.stage_index(from) {
                    Some(stage) => reads.push(StageRead {
                        stage,
                        ins,
                        at: ins.position(offset),
                    }),
                    None => own_key.push_str(&format!("reads image {from}\n")),
                }
            }
        }
        let inputs = Rc::new(StageInputs { reads, own_key });
        self.inputs.borrow_mut()[idx] = Some(inputs.clone());
        Ok(inputs)
    }

    /// Keys stage `idx` and returns the stages it needs that have no key yet, each after
    /// the stages it reads. The graph is walked with an explicit stack, so a long chain of
    /// stages costs no call stack; a cycle is an error naming its path.
    fn build_order(&self, idx: usize) -> Result<Vec<usize>, BuildError> {
        let keyed = |stage: usize| self.keys.borrow()[stage].is_some();
        let mut order = Vec::new();
        if keyed(idx) {
            return Ok(order);
        }
        let mut on_path = vec![false; self.shared.stages.len()];
        let mut done = vec![false; self.shared.stages.len()];
        // The stages being visited, each with the index of the next stage it reads.
        let mut path = vec![(idx, 0)];
        on_path[idx] = true;
        while let Some(&mut (stage, ref mut next)) = path.last_mut() {
            let inputs = self.stage_inputs(stage)?;
            let Some(read) = inputs.reads.get(*next) else {
                path.pop();
                on_path[stage] = false;
                done[stage] = true;
                self.key_stage(stage, &inputs);
                if stage != idx {
                    order.push(stage);
                }
                continue;
            };
            *next += 1;
            if on_path[read.stage] {
                return Err(self.cycle_error(&path, read));
            }
            if !done[read.stage] && !keyed(read.stage) {
                on_path[read.stage] = true;
                path.push((read.stage, 0));
            }
        }
        Ok(order)
    }

    /// Computes stage `idx`'s key from its inputs and the keys of the stages it reads (which
    /// [`Executor::build_order`] computed first).
    fn key_stage(&self, idx: usize, inputs: &StageInputs) {
        let mut keys = self.keys.borrow_mut();
        let mut key = inputs.own_key.clone();
        for read in &inputs.reads {
            let read_key = keys[read.stage]
                .as_deref()
                .expect("the stages a stage reads are keyed before it");
            key.push_str(&format!("reads {read_key}\n"));
        }
        keys[idx] = Some(hex::encode(Sha256::digest(key.as_bytes())));
    }

    /// The error for a stage that reads itself: `path` holds the stages being visited and
    /// `closing` is the read that leads back into it.
    fn cycle_error(&self, path: &[(usize, usize)], closing: &StageRead) -> BuildError {
        let start = path
            .iter()
            .position(|(stage, _)| *stage == closing.stage)
            .unwrap_or(0);
        let stage_name = |idx: usize| {
            let stage = &self.shared.stages[idx];
            stage.name.clone().unwrap_or_else(|| idx.to_string())
        };
        // Each step of the cycle: which stage reads which, and on what line.
        let mut steps = Vec::new();
        for &(stage, next) in &path[start..] {
            let inputs = self.inputs.borrow()[stage].clone();
            // `next` is one past the read that led on from this stage.
            let read = next
                .checked_sub(1)
                .and_then(|n| inputs.as_ref()?.reads.get(n));
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
        let from = self.shared.stages[closing.stage].from;
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
        if self.shared.multi {
            format!("{platform} {stage} {n}/{total}")
        } else {
            format!("{stage} {n}/{total}")
        }
    }

    fn check_cancelled(&self) -> Result<(), BuildError> {
        if self.shared.cancelled.load(Ordering::SeqCst) {
            return Err(BuildError::Cancelled {
                platform: self.target.to_string(),
            });
        }
        Ok(())
    }

    /// Stage `idx`, built once per distinct key: first the stages it reads (in dependency
    /// order, so building a stage finds what it reads built already), then itself.
    fn stage(&self, idx: usize) -> Result<StageState, BuildError> {
        for stage in self.build_order(idx)? {
            self.build_once(stage)?;
        }
        self.build_once(idx)
    }

    /// Builds a keyed stage, or waits for (or reuses) the build of an equal key.
    fn build_once(&self, idx: usize) -> Result<StageState, BuildError> {
        let from = self.shared.stages[idx].from;
        if self.building.borrow().contains(&idx) {
            let name = self.shared.stages[idx].name.clone();
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
        if self.building.borrow().len() > MAX_STAGES_BUILT_ON_DEMAND {
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
        let key = self.keys.borrow()[idx]
            .clone()
            .expect("a stage is keyed before it is built");
        let cell = Shared::memo(&self.shared.stages_done, &key);
        self.building.borrow_mut().push(idx);
        let result = once(&cell, &self.target, || self.build_stage(idx));
        self.building.borrow_mut().pop();
        result
    }

    fn build_stage(&self, idx: usize) -> Result<StageState, BuildError> {
        let stage = &self.shared.stages[idx];
        let name = stage.name.clone().unwrap_or_else(|| format!("stage-{idx}"));
        let total = stage.instructions.len() + 1;
        let from = stage.from;
        let Command::From { image, .. } = &from.command else {
            unreachable!("a stage starts with FROM")
        };
        let platform = self.stage_platform(idx)?;
        let globals = self.global_values();
        let image = self.expand(from, image, &|n| globals.get(n).cloned())?;
        let progress = self.shared.progress;
        let step_label = self.label(&platform, &name, 1, total);
        self.check_cancelled()?;
        progress.step_start(&format!("[{step_label}]"), &format!("FROM {image}"));
        let started = Instant::now();
        let mut state = match self.parent_stage(idx, &image) {
            Some(parent) => {
                let mut s = self.stage(parent)?;
                s.args.clear();
                s.cmd_set = false;
                s
            }
            None => self.image_state(&image, from, &platform)?,
        };
        set_default_path(&mut state.config);
        // A stage based on an earlier stage runs that stage's ONBUILD instructions too, as
        // BuildKit does: they are what its config's OnBuild holds.
        self.run_onbuild_triggers(&mut state, from, &step_label)?;
        progress.step_done(&format!("[{step_label}]"), started.elapsed(), "");

        for (n, ins) in stage.instructions.iter().enumerate() {
            let step_label = self.label(&platform, &name, n + 2, total);
            self.check_cancelled()?;
            progress.step_start(&format!("[{step_label}]"), &ins.text);
            let started = Instant::now();
            let (note, emulated) = self.step(&mut state, ins, &step_label)?;
            self.check_config_size(&state, ins)?;
            let elapsed = started.elapsed();
            progress.step_done(&format!("[{step_label}]"), elapsed, &note);
            self.shared.steps.lock().unwrap().push(StepRecord {
                platform: platform.clone(),
                label: step_label,
                instruction: ins.text.clone(),
                emulated,
                elapsed,
            });
        }
        Ok(state)
    }

    /// Refuses an image config that has grown past what registry clients (kiln among them)
    /// pull: each word's expansion is bounded, but many instructions add up.
    fn check_config_size(&self, state: &StageState, ins: &Instruction) -> Result<(), BuildError> {
        let size = to_json_bytes(&state.config).len() as u64;
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

    /// Runs the ONBUILD triggers of a base image or stage right after its FROM, as Docker
    /// does; the new image does not inherit them. Errors point at the FROM line.
    fn run_onbuild_triggers(
        &self,
        state: &mut StageState,
        from: &Instruction,
        step_label: &str,
    ) -> Result<(), BuildError> {
        let triggers = onbuild_triggers(&state.config);
        state.config.config.extra.remove("OnBuild");
        for text in triggers {
            let parsed = kiln_dockerfile::parse(
                &self.opts().dockerfile_path,
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
                self.shared.progress.step_start(
                    &format!("[{step_label}]"),
                    &format!("ONBUILD {}", trigger.text),
                );
                self.step(state, &trigger, step_label)?;
            }
        }
        Ok(())
    }

    /// The starting state for `FROM image`: scratch, or a pulled image.
    fn image_state(
        &self,
        image: &str,
        from: &Instruction,
        platform: &Platform,
    ) -> Result<StageState, BuildError> {
        if image == "scratch" {
            let mut config = ImageConfig::for_platform(platform);
            // BuildKit's empty image: working dir `/` (and the default PATH, as any stage).
            config.config.working_dir = "/".into();
            return Ok(StageState {
                platform: platform.clone(),
                layers: vec![],
                config,
                args: BTreeMap::new(),
                cmd_set: false,
            });
        }
        let reference = base::BaseRef::parse(image).map_err(|e| self.err(from, e))?;
        let cell = Shared::memo(&self.shared.images, &format!("{reference} {platform}"));
        once(&cell, &self.target, || {
            self.shared
                .progress
                .detail(&format!("resolving {reference} for {platform}"));
            let pulled = base::pull(
                self.shared.client,
                self.shared.store,
                &reference,
                self.opts().base_dir.as_deref(),
                platform,
                self.shared.progress,
            )?;
            Ok(StageState {
                platform: platform.clone(),
                layers: pulled.layers,
                config: pulled.config,
                args: BTreeMap::new(),
                cmd_set: false,
            })
        })
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

    fn history(state: &mut StageState, created: &str, text: String, empty: bool) {
        state.config.history.push(HistoryEntry {
            created: Some(created.to_string()),
            created_by: Some(text),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: empty,
        });
    }

    /// Runs one instruction. Returns a note for the progress line and whether it ran
    /// emulated.
    fn step(
        &self,
        state: &mut StageState,
        ins: &Instruction,
        step: &str,
    ) -> Result<(String, bool), BuildError> {
        let created = self.shared.created.clone();
        let escape = self.shared.df.directives.escape;
        let expand = |word: &str, state: &StageState| -> Result<String, BuildError> {
            kiln_dockerfile::expand(word, &Self::lookup_fn(state), escape)
                .map_err(|e| self.expand_err(ins, word, e))
        };
        let mut note = String::new();
        let mut layer_added = false;
        let mut emulated = false;
        match &ins.command {
            Command::From { .. } => unreachable!("stages split at FROM"),
            Command::Run(cmd) => {
                (layer_added, emulated) = match cmd {
                    ShellOrExec::Shell(command) if !ins.heredocs.is_empty() => {
                        let script = heredoc_script(command, &ins.heredocs);
                        let argv = shell_argv(&state.config, &ShellOrExec::Shell(script));
                        self.run(state, ins, argv, step)?
                    }
                    _ => self.run(state, ins, shell_argv(&state.config, cmd), step)?,
                };
                note = match (layer_added, emulated) {
                    (false, false) => "no changes".into(),
                    (false, true) => "emulated, no changes".into(),
                    (true, true) => "emulated".into(),
                    (true, false) => String::new(),
                };
            }
            Command::Copy { sources, dest } | Command::Add { sources, dest } => {
                let files = self.copy(state, ins, sources, dest)?;
                note = format!("{files} entries");
                layer_added = true;
            }
            Command::Env(pairs) => {
                let mut values = Vec::new();
                for (k, v) in pairs {
                    values.push((k.clone(), expand(v, state)?));
                }
                for (k, v) in values {
                    state.config.config.set_env_var(&k, &v);
                }
            }
            Command::Arg(decls) => {
                for (name, default) in decls {
                    let value = match self.opts().build_args.get(name) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(expand(d, state)?),
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
                    let (k, v) = (expand(k, state)?, expand(v, state)?);
                    state.config.config.labels.insert(k, v);
                }
            }
            Command::Expose(ports) => {
                let mut words = Vec::new();
                for p in ports {
                    words.extend(
                        kiln_dockerfile::expand_words(p, &Self::lookup_fn(state), escape)
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
                let dir = expand(dir, state)?;
                let base = if state.config.config.working_dir.is_empty() {
                    "/"
                } else {
                    &state.config.config.working_dir
                };
                let dir = join_image_path(base, &dir);
                state.config.config.working_dir = dir.clone();
                layer_added = self.make_workdir(state, ins, &dir)?;
            }
            Command::User(user) => state.config.config.user = expand(user, state)?,
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
                    let v = expand(v, state)?;
                    state.config.config.volumes.insert(v, serde_json::json!({}));
                }
            }
            Command::StopSignal(sig) => {
                let sig = expand(sig, state)?;
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
        Self::history(state, &created, history_text(ins), !layer_added);
        Ok((note, emulated))
    }

    /// WORKDIR creates its directory, as BuildKit does: in a layer of its own, owned by the
    /// current USER, when the image does not have it yet. Returns whether it added a layer.
    fn make_workdir(
        &self,
        state: &mut StageState,
        ins: &Instruction,
        dir: &str,
    ) -> Result<bool, BuildError> {
        let below = Self::stack(state);
        if dir == "/"
            || below
                .lookup(Path::new(dir), true)
                .is_some_and(|p| p.is_dir())
        {
            return Ok(false);
        }
        let user = &state.config.config.user;
        let owner = if user.is_empty() {
            (0, 0)
        } else {
            resolve_owner(user, &below).map_err(|m| {
                self.err(ins, format!("creating WORKDIR {dir} for USER {user}: {m}"))
            })?
        };
        let scratch = self.shared.store.temp_dir("workdir-")?;
        kiln_snapshot::mkdir_in_layer(scratch.path(), Path::new(dir), &below, owner)
            .map_err(|e| self.err(ins, e.to_string()))?;
        self.add_layer(state, scratch.path())?;
        Ok(true)
    }

    fn stack(state: &StageState) -> LayerStack {
        LayerStack::new(state.layers.iter().map(|l| l.dir.clone()).collect())
    }

    /// Stores the layer dir `dir` as a new top layer of `state`.
    fn add_layer(&self, state: &mut StageState, dir: &Path) -> Result<(), BuildError> {
        let blob = self.shared.store.put_layer(
            dir,
            &LayerOptions {
                source_date_epoch: self.opts().source_date_epoch,
                ..Default::default()
            },
        )?;
        let layer_dir = self.shared.store.commit_layer_dir(dir, &blob.diff_id)?;
        state.config.rootfs.diff_ids.push(blob.diff_id.clone());
        state.layers.push(LayerRef {
            dir: layer_dir,
            blob: Descriptor::new(media::OCI_LAYER_GZIP, blob.digest, blob.size),
        });
        Ok(())
    }

    /// Runs a RUN step in the sandbox; returns whether it changed anything and whether it ran
    /// under emulation.
    fn run(
        &self,
        state: &mut StageState,
        ins: &Instruction,
        argv: Vec<String>,
        step: &str,
    ) -> Result<(bool, bool), BuildError> {
        let emulation = self.shared.emulation_for(&state.platform)?;
        let (emulator, emulated) = match emulation {
            EmulationMode::Native => (None, false),
            EmulationMode::PrivateBinfmt(e) => (Some(e), true),
            EmulationMode::HostBinfmt => (None, true),
        };
        let progress = self.shared.progress;
        if emulated && compiles(&ins.text) {
            progress.info(&format!(
                "hint: [{step}] compiles under {} emulation, which is typically several times slower than native. \
                 Move it to a stage that runs on the build platform and cross-compiles:\n  \
                 FROM --platform=$BUILDPLATFORM <image> AS build\n  ARG TARGETOS TARGETARCH\n  \
                 RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build ...   (or your toolchain's --target)\n  \
                 then COPY --from=build the result into the {} stage.",
                state.platform, state.platform
            ));
        }
        let scratch = self.shared.store.temp_dir("run-")?;
        let upper = scratch.path().join("upper");
        let work = scratch.path().join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d).map_err(BuildError::io("creating a RUN scratch dir"))?;
        }
        let cwd = if state.config.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.config.config.working_dir.clone()
        };
        let network = self.run_network(state, ins)?;
        // Holds cache locks until the step is done.
        let prepared = self.run_mounts(state, ins, &cwd, scratch.path())?;
        let mut run_env = state.config.config.clone();
        for (k, v) in &state.args {
            if state.config.config.env_var(k).is_none() {
                run_env.set_env_var(k, v);
            }
        }
        for (k, v) in proxy_env(&self.opts().build_args) {
            run_env.set_env_var(&k, &v);
        }
        let mut env = run_env.env;
        env.extend(prepared.env.iter().cloned());
        let spec = RunSpec {
            lowers: state.layers.iter().map(|l| l.dir.clone()).collect(),
            upper: upper.clone(),
            work,
            argv,
            env,
            cwd,
            user: state.config.config.user.clone(),
            hostname: "kiln".into(),
            emulator,
            mounts: prepared.mounts.clone(),
            network,
        };
        let label = format!("[{step}]");
        // The output is printed through `progress`, which redacts secrets; what the errors
        // below quote of it is redacted here.
        let redactor = self.opts().secrets.redactor();
        let mut step_log = progress.step_log(&label);
        let output = self
            .shared
            .sandbox
            .run(&spec, &mut |line| step_log.line(line))
            .map_err(|e| BuildError::Step {
                path: self.opts().dockerfile_path.clone(),
                line: ins.span.start_line,
                step: step.to_string(),
                instruction: ins.text.clone(),
                message: redactor.redact(&e.to_string()).into_owned(),
            })?;
        if !output.status.success() {
            let code = match output.status {
                kiln_sandbox::ExitStatus::Code(c) => c,
                kiln_sandbox::ExitStatus::Signal(s) => 128 + s,
            };
            return Err(BuildError::RunFailed {
                path: self.opts().dockerfile_path.clone(),
                line: ins.span.start_line,
                step: step.to_string(),
                instruction: ins.text.clone(),
                code,
                tail: shown_tail(&redactor.redact(&output.tail.join("\n"))),
            });
        }
        let changed = std::fs::read_dir(&upper)
            .map_err(BuildError::io("reading a RUN's changes"))?
            .next()
            .is_some();
        drop(prepared);
        if changed {
            self.add_layer(state, &upper)?;
        }
        Ok((changed, emulated))
    }

    /// A flag's value, expanded with the stage's ARGs and ENV; an error points at the flag.
    fn flag_value(
        &self,
        state: &StageState,
        ins: &Instruction,
        name: &str,
        flag: &kiln_dockerfile::FlagValue,
    ) -> Result<String, BuildError> {
        let escape = self.shared.df.directives.escape;
        kiln_dockerfile::expand(&flag.value, &Self::lookup_fn(state), escape).map_err(|e| {
            self.err_at(
                ins,
                ins.position(flag.offset),
                format!("--{name}: {}", e.message),
            )
        })
    }

    /// `RUN --network` (and `--security`, which only allows the default sandbox).
    fn run_network(&self, state: &StageState, ins: &Instruction) -> Result<Network, BuildError> {
        let Some(flags) = ins.run_flags() else {
            return Ok(Network::Default);
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
            return Ok(Network::Default);
        };
        match self.flag_value(state, ins, "network", network)?.as_str() {
            "default" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(self.err(
                ins,
                format!("--network={other}: expected default, none or host"),
            )),
        }
    }

    /// Parses the step's `--mount` flags and prepares what they mount.
    fn run_mounts(
        &self,
        state: &StageState,
        ins: &Instruction,
        cwd: &str,
        scratch: &Path,
    ) -> Result<PreparedMounts, BuildError> {
        let mut requests = Vec::new();
        let escape = self.shared.df.directives.escape;
        for flag in ins.run_flags().map_or(&[][..], |f| &f.mounts) {
            let expanded = flag
                .spec
                .expand(|word| kiln_dockerfile::expand(word, &Self::lookup_fn(state), escape))
                .map_err(|e| {
                    self.err_at(
                        ins,
                        ins.position(flag.written.offset),
                        format!("--mount: {}", e.message),
                    )
                })?;
            let mut request = expanded
                .resolve()
                .map_err(|m| self.err(ins, format!("--mount={}: {m}", flag.written.value)))?;
            request.target = request.target.map(|t| join_image_path(cwd, &t));
            let from = match &request.from {
                None => None,
                Some(name) => {
                    let source = match self.stage_index(name) {
                        Some(i) => self.stage(i)?,
                        None => self.image_state(name, ins, &state.platform)?,
                    };
                    Some(Self::stack(&source))
                }
            };
            requests.push((request, from));
        }
        let inputs = MountInputs {
            store: self.shared.store,
            context: &self.shared.context,
            secrets: &self.opts().secrets,
            secret_files: &self.shared.secret_files,
            ssh: &self.opts().ssh,
            scratch,
        };
        mounts::prepare(&requests, &inputs).map_err(|m| self.err(ins, m))
    }

    fn copy(
        &self,
        state: &mut StageState,
        ins: &Instruction,
        sources: &[String],
        dest: &str,
    ) -> Result<u64, BuildError> {
        let is_add = matches!(ins.command, Command::Add { .. });
        let escape = self.shared.df.directives.escape;
        let lookup = Self::lookup_fn(state);
        let ex = |w: &str| {
            kiln_dockerfile::expand(w, &lookup, escape).map_err(|e| self.expand_err(ins, w, e))
        };
        let flags = ins.copy_flags().cloned().unwrap_or_default();
        let flag = |name: &str, value: &Option<kiln_dockerfile::FlagValue>| {
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
                        if !is_add {
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
        let chmod = flag("chmod", &flags.chmod)?
            .map(|v| Chmod::parse(&v).map_err(|e| self.err(ins, format!("--chmod: {e}"))))
            .transpose()?;
        let checksum = flag("checksum", &flags.checksum)?;
        let mut excludes = Vec::new();
        for f in &flags.exclude {
            excludes.push(self.flag_value(state, ins, "exclude", f)?);
        }
        let link = flags.link;
        let parents = flags.parents;
        let unpack = flags.unpack;
        drop(lookup);
        if checksum.is_some() && !matches!(srcs.as_slice(), [CopySource::Url(_)]) {
            return Err(self.err(ins, "--checksum needs exactly one source, a URL"));
        }
        let exclude = match excludes.is_empty() {
            true => None,
            false => Some(
                kiln_dockerfile::IgnoreMatcher::parse(&excludes.join("\n"))
                    .map_err(|e| self.err(ins, format!("--exclude: {e}")))?,
            ),
        };

        let workdir = if state.config.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.config.config.working_dir.clone()
        };
        let dest_path = join_image_path(&workdir, &dest_raw);
        let below = Self::stack(state);
        let owner = match &chown {
            Some(spec) => Some(
                resolve_owner(spec, &below)
                    .map_err(|m| self.err(ins, format!("--chown={spec}: {m}")))?,
            ),
            None => None,
        };
        // A --link layer does not depend on what is below: parents get fixed metadata and
        // the destination is not looked up in the base.
        let copy_below = if link {
            LayerStack::new(Vec::new())
        } else {
            below
        };

        // Where path sources come from: the context, or another stage's / image's filesystem.
        let source_stage = match &from {
            Some(name) => Some(match self.stage_index(name) {
                Some(i) => self.stage(i)?,
                None => {
                    if base::BaseRef::parse(name).is_err() {
                        return Err(BuildError::UnknownStage {
                            path: self.opts().dockerfile_path.clone(),
                            line: ins.span.start_line,
                            name: name.clone(),
                        });
                    }
                    self.image_state(name, ins, &state.platform)
                        .map_err(|e| match e {
                            BuildError::BaseImage { .. } => BuildError::UnknownStage {
                                path: self.opts().dockerfile_path.clone(),
                                line: ins.span.start_line,
                                name: name.clone(),
                            },
                            other => other,
                        })?
                }
            }),
            None => None,
        };

        let scratch = self.shared.store.temp_dir("copy-")?;
        let layer = scratch.path().join("layer");
        std::fs::create_dir(&layer).map_err(BuildError::io("creating a COPY layer dir"))?;

        let mut resolved: Vec<Resolved> = Vec::new();
        for (i, src) in srcs.iter().enumerate() {
            let own_dir = scratch.path().join(format!("src-{i}"));
            std::fs::create_dir(&own_dir).map_err(BuildError::io("creating a COPY scratch dir"))?;
            match src {
                CopySource::Inline { name, content } => {
                    let host = own_dir.join(name);
                    std::fs::write(&host, content)
                        .and_then(|()| {
                            std::fs::set_permissions(
                                &host,
                                std::os::unix::fs::PermissionsExt::from_mode(0o644),
                            )
                        })
                        .map_err(BuildError::io("writing a heredoc for COPY"))?;
                    resolved.push(Resolved::new(host, name.clone(), false));
                }
                CopySource::Url(url) => {
                    self.shared.progress.detail(&format!("downloading {url}"));
                    let host = download(url, checksum.as_deref(), &own_dir)
                        .map_err(|m| self.err(ins, m))?;
                    let name = host.file_name().unwrap().to_string_lossy().into_owned();
                    // Remote archives stay packed unless --unpack=true says otherwise.
                    resolved.push(Resolved::new(host, name, unpack == Some(true)));
                }
                CopySource::Path(src) => match &source_stage {
                    None => {
                        let found = self.shared.context.sources(src);
                        if found.is_empty() {
                            return Err(BuildError::MissingSource {
                                path: self.opts().dockerfile_path.clone(),
                                line: ins.span.start_line,
                                source_path: src.clone(),
                                context: self.shared.context.root().to_path_buf(),
                            });
                        }
                        for f in found {
                            let name = f.rel.rsplit('/').next().unwrap_or("").to_string();
                            let mut r =
                                Resolved::new(f.host_path, name, is_add && unpack != Some(false));
                            r.kept_path = kept_by_parents(src, &f.rel);
                            r.context_rel = Some(f.rel);
                            resolved.push(r);
                        }
                    }
                    Some(st) => {
                        let stack = Self::stack(st);
                        let image_path = join_image_path("/", src);
                        if stack.lookup(Path::new(&image_path), true).is_none() {
                            return Err(self.err(
                                ins,
                                format!(
                                    "{src}: not found in stage or image `{}`",
                                    from.clone().unwrap_or_default()
                                ),
                            ));
                        }
                        let host = own_dir.join("export");
                        stack
                            .export(Path::new(&image_path), &host)
                            .map_err(|e| self.err(ins, format!("{src}: {e}")))?;
                        let name = image_path.rsplit('/').next().unwrap_or("").to_string();
                        let mut r = Resolved::new(host, name, is_add && unpack != Some(false));
                        r.kept_path = kept_by_parents(src, image_path.trim_start_matches('/'));
                        resolved.push(r);
                    }
                },
            }
        }

        if srcs.len() > 1 && !dest_raw.ends_with('/') && !parents {
            return Err(self.err(
                ins,
                format!("with more than one source, the destination must be a directory ending in /: write `{dest_raw}/`"),
            ));
        }
        let dest_is_dir = parents
            || dest_raw.ends_with('/')
            || resolved.len() > 1
            || srcs
                .iter()
                .any(|s| matches!(s, CopySource::Path(p) if p.contains(['*', '?', '['])))
            || copy_below
                .lookup(Path::new(&dest_path), true)
                .is_some_and(|p| p.is_dir());
        let mut entries = 0;
        for (i, r) in resolved.iter().enumerate() {
            let is_dir = std::fs::metadata(&r.host)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            let (target, dir_target) = if parents {
                let kept = join_image_path(&dest_path, &r.kept_path);
                let parent = kept.rsplit_once('/').map_or("/", |(p, _)| p).to_string();
                (
                    kept,
                    if parent.is_empty() {
                        "/".into()
                    } else {
                        parent
                    },
                )
            } else if is_dir || !dest_is_dir {
                (dest_path.clone(), dest_path.clone())
            } else {
                (join_image_path(&dest_path, &r.name), dest_path.clone())
            };
            if r.unpack && !is_dir {
                let unpacked = scratch.path().join(format!("unpacked-{i}"));
                std::fs::create_dir(&unpacked)
                    .map_err(BuildError::io("creating an ADD scratch dir"))?;
                let extracted = kiln_snapshot::extract_archive(&r.host, &unpacked)
                    .map_err(|e| self.err(ins, format!("extracting {}: {e}", r.name)))?;
                if extracted.is_some() {
                    // An archive's entries keep their owners and modes, unless --chown.
                    let opts = CopyOptions {
                        chown: owner,
                        keep_owner: true,
                        ..Default::default()
                    };
                    entries += kiln_snapshot::copy_into_layer(
                        &unpacked,
                        &layer,
                        Path::new(&dir_target),
                        &copy_below,
                        &opts,
                    )
                    .map_err(|e| self.err(ins, e.to_string()))?;
                    continue;
                }
            }
            if !is_dir && exclude.as_ref().is_some_and(|m| m.is_excluded(&r.name)) {
                continue;
            }
            let filter_fn = |p: &Path| -> bool {
                let inner = p.to_string_lossy();
                if exclude.as_ref().is_some_and(|m| m.is_excluded(&inner)) {
                    return false;
                }
                match &r.context_rel {
                    Some(rel) => self.shared.context.shows_inside(rel, &r.host, p),
                    None => true,
                }
            };
            let opts = CopyOptions {
                chown: owner,
                // Files from a stage or an image keep their owners; the context's are root's.
                keep_owner: source_stage.is_some(),
                chmod: chmod.clone(),
                filter: Some(&filter_fn),
            };
            entries += kiln_snapshot::copy_into_layer(
                &r.host,
                &layer,
                Path::new(&target),
                &copy_below,
                &opts,
            )
            .map_err(|e| self.err(ins, e.to_string()))?;
        }
        self.add_layer(state, &layer)?;
        Ok(entries)
    }

    /// Assembles and stores the manifest of the final stage.
    fn finish(&self, mut state: StageState) -> Result<BuiltImage, BuildError> {
        state.config.created = Some(self.shared.created.clone());
        let p = &state.platform;
        state.config.architecture = p.architecture.clone();
        state.config.os = p.os.clone();
        state.config.variant = p.variant.clone();
        let config = self
            .shared
            .store
            .put_json(media::OCI_CONFIG, &to_json_bytes(&state.config))?;
        let layers: Vec<Descriptor> = state
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
            config: config.clone(),
            layers: layers.clone(),
            annotations: BTreeMap::new(),
        };
        let mut manifest_desc = self
            .shared
            .store
            .put_json(media::OCI_MANIFEST, &to_json_bytes(&manifest))?;
        manifest_desc.platform = Some(p.clone());
        Ok(BuiltImage {
            platform: p.clone(),
            manifest: manifest_desc,
            config,
            layers,
        })
    }
}

/// The history line for an instruction, in the form BuildKit writes.
fn history_text(ins: &Instruction) -> String {
    match &ins.command {
        Command::Run(ShellOrExec::Shell(s)) => format!("RUN /bin/sh -c {s} # buildkit"),
        Command::Run(ShellOrExec::Exec(v)) => format!("RUN {} # buildkit", v.join(" ")),
        Command::Copy { .. } | Command::Add { .. } => format!("{} # buildkit", ins.text),
        _ => ins.text.clone(),
    }
}

/// Joins an image path onto a base dir and normalises it (`..` stops at `/`).
fn join_image_path(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut out: Vec<&str> = Vec::new();
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

/// A COPY/ADD source as written.
enum CopySource {
    /// A heredoc: a file named after its delimiter.
    Inline { name: String, content: String },
    /// An http(s) URL (ADD only).
    Url(String),
    /// A path or pattern in the context, or in the `--from` stage or image.
    Path(String),
}

/// A COPY/ADD source ready on the host.
struct Resolved {
    host: PathBuf,
    /// Its name in a destination directory.
    name: String,
    /// Its context-relative path, for `.dockerignore` (context sources only).
    context_rel: Option<String>,
    /// What `--parents` keeps of its path under the destination.
    kept_path: String,
    /// Whether ADD extracts it, if it turns out to be an archive.
    unpack: bool,
}

impl Resolved {
    fn new(host: PathBuf, name: String, unpack: bool) -> Resolved {
        Resolved {
            host,
            kept_path: name.clone(),
            name,
            context_rel: None,
            unpack,
        }
    }
}

/// The heredoc a COPY/ADD source word (`<<EOF`, `<<-"EOF"`) stands for, if it is one.
fn heredoc_named<'h>(
    word: &str,
    heredocs: &'h [kiln_dockerfile::Heredoc],
) -> Option<&'h kiln_dockerfile::Heredoc> {
    let marker = word.strip_prefix("<<")?;
    let marker = marker.strip_prefix('-').unwrap_or(marker);
    let name = marker.trim_matches(['"', '\'']);
    heredocs.iter().find(|doc| doc.name == name)
}

/// Expands the variables in a heredoc body for COPY, leaving its quotes and escapes as
/// written (BuildKit expands heredoc files with raw quotes and escapes): each is escaped
/// before the word expansion undoes that.
fn expand_heredoc(
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, kiln_dockerfile::ExpandError> {
    let mut protected = String::with_capacity(content.len());
    let mut chars = content.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && chars.peek() == Some(&'$') {
            // `\$` stays as written and does not expand.
            chars.next();
            for literal in [escape, '$'] {
                protected.push(escape);
                protected.push(literal);
            }
            continue;
        }
        if c == '"' || c == '\'' || c == escape {
            protected.push(escape);
        }
        protected.push(c);
    }
    kiln_dockerfile::expand(&protected, lookup, escape)
}

/// The part of a source's path that `--parents` keeps: all of it, or what follows a `/./`
/// in the source as written (BuildKit's pivot).
fn kept_by_parents(written: &str, path: &str) -> String {
    let Some((pivot, _)) = written.split_once("/./") else {
        return path.to_string();
    };
    let skip = pivot
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .count();
    path.split('/').skip(skip).collect::<Vec<_>>().join("/")
}

/// Downloads `url` into the empty dir `dir` as Docker's ADD does: named after the last
/// component of the URL path, mode 0600, mtime from `Last-Modified`. With `checksum`
/// (`sha256:<hex>`), a body with another digest is an error and nothing is kept.
fn download(url: &str, checksum: Option<&str>, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let expected = match checksum {
        None => None,
        Some(c) => match c.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(c.to_ascii_lowercase())
            }
            _ => return Err(format!("--checksum={c}: expected sha256:<64 hex digits>")),
        },
    };
    let fail = |m: String| format!("ADD {url}: {m}");
    // A server that stalls is given up on as a registry is: the blocking client applies its
    // timeout to the answer's head and to each read of the body, not to the whole download.
    let timeouts = kiln_registry::Timeouts::default();
    let response = reqwest::blocking::Client::builder()
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.read)
        .build()
        .and_then(|client| client.get(url).send())
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("the server answered {status}")));
    }
    let modified = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.split_once("://"))
        .and_then(|(_, rest)| rest.split_once('/'))
        .and_then(|(_, path)| path.rsplit('/').find(|c| !c.is_empty()))
        .unwrap_or("__unnamed__")
        .to_string();
    let path = dir.join(&name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| fail(e.to_string()))?;
    let mut hashing = HashingWriter {
        inner: &mut file,
        hasher: Sha256::new(),
    };
    let mut response = response;
    std::io::copy(&mut response, &mut hashing).map_err(|e| fail(e.to_string()))?;
    let digest = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if let Some(expected) = expected
        && expected != digest
    {
        let _ = std::fs::remove_file(&path);
        return Err(fail(format!(
            "checksum mismatch: expected {expected}, got {digest}"
        )));
    }
    if let Some(time) = modified {
        file.set_modified(time).map_err(|e| fail(e.to_string()))?;
    }
    Ok(path)
}

/// A writer that hashes what passes through it.
struct HashingWriter<'w> {
    inner: &'w mut std::fs::File,
    hasher: Sha256,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Resolves `user[:group]` (names or numbers) through the image's /etc/passwd and /etc/group,
/// read and parsed as the sandbox reads them for RUN (regular files of bounded size only). A
/// numeric uid that passwd does not list gets its own number as gid.
fn resolve_owner(spec: &str, stack: &LayerStack) -> Result<(u32, u32), String> {
    let read = |file: &str| -> Result<String, String> {
        match stack.lookup(Path::new(file), true) {
            Some(host) => kiln_sandbox::read_account_file(&host)
                .map(Option::unwrap_or_default)
                .map_err(|err| format!("the image's {file} {err}")),
            None => Ok(String::new()),
        }
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read("/etc/passwd")?;
    let mut entries = kiln_sandbox::passwd_entries(&passwd);
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, entries.find(|e| e.uid == uid).map(|e| e.gid)),
        Err(_) => {
            let entry = entries
                .find(|e| e.name == user)
                .ok_or_else(|| format!("no user `{user}` in the image's /etc/passwd"))?;
            (entry.uid, Some(entry.gid))
        }
    };
    let gid = match group {
        None => primary_gid.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => kiln_sandbox::group_entries(&read("/etc/group")?)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("no group `{g}` in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The `port/proto` keys of one EXPOSE word (`80`, `53/udp`, `7000-7002/tcp`): the protocol
/// defaults to tcp and a range stands for each of its ports, as Docker's port parser does.
fn exposed_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, protocol) = word.split_once('/').unwrap_or((word, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    let invalid = || format!("invalid port in EXPOSE: {word:?}");
    let number = |text: &str| text.parse::<u16>().map_err(|_| invalid());
    let (first, last) = match ports.split_once('-') {
        Some((first, last)) => (number(first)?, number(last)?),
        None => (number(ports)?, number(ports)?),
    };
    if last < first || !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
        return Err(invalid());
    }
    Ok((first..=last)
        .map(|port| format!("{port}/{protocol}"))
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_are_joined_and_cleaned() {
        assert_eq!(join_image_path("/app", "src"), "/app/src");
        assert_eq!(join_image_path("/app", "/etc/x"), "/etc/x");
        assert_eq!(join_image_path("/", "../../x/./y/"), "/x/y");
    }

    fn doc(name: &str, content: &str) -> kiln_dockerfile::Heredoc {
        kiln_dockerfile::Heredoc {
            name: name.into(),
            content: content.into(),
            expand: true,
            strip_tabs: false,
        }
    }

    #[test]
    fn run_heredocs_become_shell_scripts() {
        assert_eq!(
            heredoc_script("<<EOF", &[doc("EOF", "echo hi\n")]),
            "echo hi\n"
        );
        assert_eq!(
            heredoc_script("<<EOF", &[doc("EOF", "#!/usr/bin/env python3\nprint(1)\n")]),
            "/usr/bin/env python3 /dev/stdin <<'EOF'\n#!/usr/bin/env python3\nprint(1)\nEOF"
        );
        assert_eq!(
            heredoc_script(
                "cat <<A > /a && cat <<'B' > /b",
                &[doc("A", "a\n"), doc("B", "$b\n")]
            ),
            "cat <<A > /a && cat <<'B' > /b\na\nA\n$b\nB"
        );
    }

    #[test]
    fn healthchecks_are_stored_as_docker_does() {
        let flag = |name: &str, value: &str| kiln_dockerfile::Flag {
            name: name.into(),
            value: Some(value.into()),
            column: 1,
        };
        let check = ShellOrExec::Shell("curl -f x || exit 1".into());
        let value = healthcheck_config(
            Some(&check),
            &[
                flag("interval", "1m30s"),
                flag("timeout", "0s"),
                flag("retries", "0"),
            ],
        )
        .unwrap();
        assert_eq!(
            value,
            serde_json::json!({"Test": ["CMD-SHELL", "curl -f x || exit 1"], "Interval": 90_000_000_000u64})
        );
        assert!(healthcheck_config(Some(&check), &[flag("interval", "10us")]).is_err());
        assert!(healthcheck_config(Some(&check), &[flag("retries", "-1")]).is_err());
        assert_eq!(parse_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration("250ms").unwrap(), 250_000_000);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn parents_keep_the_path_after_a_pivot() {
        assert_eq!(kept_by_parents("a/b/*.txt", "a/b/c.txt"), "a/b/c.txt");
        assert_eq!(kept_by_parents("./a/./b/c", "a/b/c"), "b/c");
        assert_eq!(kept_by_parents("/x/y/./z", "x/y/z"), "z");
    }

    #[test]
    fn heredoc_files_expand_variables_but_keep_quotes_and_escapes() {
        let lookup = |n: &str| (n == "V").then(|| "value".to_string());
        assert_eq!(
            expand_heredoc("a \"$V\" '${V}' \\$V \\n\n", &lookup, '\\').unwrap(),
            "a \"value\" 'value' \\$V \\n\n"
        );
    }

    #[test]
    fn stop_signals_are_checked_as_buildkit_does() {
        for ok in [
            "SIGTERM",
            "term",
            "SigKill",
            "9",
            "+15",
            "-1",
            "64",
            "RTMIN",
            "sigrtmin+15",
            "RTMAX-14",
            "SIGRTMAX",
        ] {
            assert!(is_valid_stop_signal(ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "0",
            "-0",
            "SIGFOO",
            "SIGSIGTERM",
            "RTMIN+16",
            "RTMIN+0",
            "RTMAX-15",
            "RTMIN+01",
            "TERM ",
            "99999999999999999999",
        ] {
            assert!(!is_valid_stop_signal(bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn proxy_args_become_both_spellings_of_the_variable() {
        let args: BTreeMap<String, String> = [
            ("http_proxy", "http://lower"),
            ("HTTP_PROXY", "http://upper"),
            ("No_Proxy", "localhost"),
            ("HTTPS_PROXY", ""),
            ("OTHER", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            proxy_env(&args),
            vec![
                pair("HTTP_PROXY", "http://lower"),
                pair("http_proxy", "http://lower"),
                pair("NO_PROXY", "localhost"),
                pair("no_proxy", "localhost"),
            ],
            "the last spelling in sorted order wins; empty values set nothing"
        );
    }

    #[test]
    fn configs_without_path_get_the_default_one() {
        let mut config = ImageConfig::for_platform(&"linux/amd64".parse().unwrap());
        config.config.env = vec!["A=1".into()];
        set_default_path(&mut config);
        assert_eq!(
            config.config.env,
            vec!["A=1".to_string(), format!("PATH={DEFAULT_PATH}")]
        );
        config.config.env = vec!["PATH=/opt/bin".into()];
        set_default_path(&mut config);
        assert_eq!(config.config.env, vec!["PATH=/opt/bin".to_string()]);
        let mut windows = ImageConfig::for_platform(&"windows/amd64".parse().unwrap());
        set_default_path(&mut windows);
        assert!(windows.config.env.is_empty());
    }

    #[test]
    fn owners_resolve_through_the_image() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbuilder:x:1000:1001::/home/b:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(t.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let stack = LayerStack::new(vec![t.path().to_path_buf()]);
        assert_eq!(resolve_owner("builder", &stack).unwrap(), (1000, 1001));
        assert_eq!(resolve_owner("builder:staff", &stack).unwrap(), (1000, 50));
        assert_eq!(resolve_owner("42:43", &stack).unwrap(), (42, 43));
        assert!(
            resolve_owner("ghost", &stack)
                .unwrap_err()
                .contains("ghost")
        );
    }

    /// A FIFO at /etc/passwd used to hang `COPY --chown` (and WORKDIR under USER) on the open.
    #[test]
    fn owner_files_that_are_not_regular_are_refused() {
        let fifo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fifo.path().join("etc")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(fifo.path().join("etc/passwd"))
            .status()
            .unwrap();
        assert!(made.success());
        let stack = LayerStack::new(vec![fifo.path().to_path_buf()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(resolve_owner("builder", &stack));
        });
        let outcome = receiver.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(
            outcome.expect("resolving the owner still hangs on the FIFO"),
            Err("the image's /etc/passwd is a FIFO, not a regular file".to_string())
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/group")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let stack = LayerStack::new(vec![dir.path().to_path_buf()]);
        assert_eq!(resolve_owner("root:0", &stack), Ok((0, 0)));
        assert_eq!(
            resolve_owner("root:staff", &stack),
            Err("the image's /etc/group is a directory, not a regular file".to_string())
        );
    }
}
