//! The build plan: what [`lower`](crate::lower) makes of a Dockerfile, its options and the
//! base images it names, before anything runs. A [`Plan`] is a graph of fully expanded
//! operations ([`Op`]) with their inputs, where they come from in the Dockerfile and their
//! definition keys, and one [`ImagePlan`] per target platform: the op whose filesystem is the
//! image, and the image config, which is known entirely from the Dockerfile and the base
//! images except for the history times and which steps added a layer.
//!
//! Ops are stored in the order they were made, which is a dependency order: an op's inputs
//! come before it. Equal definitions are one op, so platforms share equal work.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_dockerfile::Mount;
use kiln_oci::{ImageConfig, Platform};
use kiln_sandbox::{Network, StepOptions};
use serde::Serialize;

use crate::base::ResolvedImage;
use crate::key::CacheKey;

/// An op's place in [`Plan::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub usize);

pub struct Plan {
    pub ops: Vec<Op>,
    /// One per target platform, in the order asked.
    pub images: Vec<ImagePlan>,
    /// Things the user should hear about (build args no ARG declares).
    pub warnings: Vec<String>,
}

pub struct Op {
    pub kind: OpKind,
    /// What the op reads: for exec, copy and mkdir, the filesystem it works on first, then
    /// the stages and images it copies or mounts from.
    pub inputs: Vec<OpId>,
    /// The op as expanded and the definition keys of its inputs: equal keys, equal work.
    pub key: CacheKey,
    /// The op as expanded, without its inputs (what the solver's cache key starts from).
    pub own: CacheKey,
    pub origin: Origin,
    /// Instructions that only change the image config and follow this op in their stage:
    /// shown when the op is done.
    pub then: Vec<ConfigStep>,
}

/// Where an op comes from, for progress lines, errors and `--no-cache-filter`.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The Dockerfile's stage (index among its stages).
    pub stage: usize,
    /// The Dockerfile line the op is reported at (a FROM for its ONBUILD triggers).
    pub line: usize,
    /// The progress label: `stage-0 2/3`, with the platform in front when there are several.
    pub label: String,
    /// The instruction as written.
    pub text: String,
    /// How the step is shown: `None` for an image read only by `--from` (no step of its own).
    pub shown: Option<String>,
    pub platform: Platform,
}

/// A config-only instruction (ENV, LABEL, ...), for the progress lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigStep {
    pub label: String,
    pub text: String,
}

pub enum OpKind {
    Source(Source),
    Exec(Exec),
    Copy(Copy),
    Mkdir(Mkdir),
}

/// The filesystem a stage starts from.
pub enum Source {
    Scratch,
    Image(Arc<ResolvedImage>),
    /// A directory that `--build-context NAME=...` names (a remote one fetched into it): its
    /// files, through its own `.dockerignore`, as one layer made when the build runs.
    Local {
        name: String,
        dir: PathBuf,
    },
}

/// A RUN step.
#[derive(Serialize)]
pub struct Exec {
    pub argv: Vec<String>,
    /// `KEY=value`: the config's ENV, then the stage's ARGs that ENV does not set.
    pub env: Vec<String>,
    /// The proxy build args (`HTTP_PROXY`, ...): given to the command but, as in BuildKit,
    /// not part of its key.
    #[serde(skip)]
    pub proxy_env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub network: Network,
    /// Left out of the key when default, so that keys made before these options existed
    /// still match.
    #[serde(skip_serializing_if = "StepOptions::is_default")]
    pub options: StepOptions,
    pub mounts: Vec<ExecMount>,
    /// Layers are written with mtimes clamped to this (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// Whether the command compiles (for the hint to cross-compile instead of emulating).
    #[serde(skip)]
    pub compiles: bool,
}

/// One `RUN --mount`, expanded, its target absolute.
#[derive(Serialize)]
pub struct ExecMount {
    pub mount: Mount,
    /// With `from=`: the index in the op's inputs of the stage or image it reads.
    pub from: Option<usize>,
}

/// A COPY or ADD step.
#[derive(Serialize)]
pub struct Copy {
    pub add: bool,
    pub sources: Vec<CopySource>,
    /// With `--from`: the index in the op's inputs of the stage or image, and its name.
    pub from: Option<(usize, String)>,
    /// The destination as expanded (`rules::names_a_directory` says when it is a directory).
    pub dest: String,
    /// The destination made absolute against the working dir.
    pub dest_path: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub unpack: Option<bool>,
    pub excludes: Vec<String>,
    pub checksum: Option<String>,
    pub source_date_epoch: Option<i64>,
}

/// A COPY/ADD source, expanded.
#[derive(Serialize, Clone, Debug)]
pub enum CopySource {
    /// A heredoc: a file named after its delimiter.
    Inline { name: String, content: String },
    /// An http(s) URL (ADD only).
    Url(String),
    /// A path or pattern in the context, or in the `--from` stage or image.
    Path(String),
}

/// WORKDIR: the directory is made, owned by the USER, unless the image has it.
#[derive(Serialize)]
pub struct Mkdir {
    pub path: String,
    pub user: String,
    pub source_date_epoch: Option<i64>,
}

/// The image built for one target platform.
pub struct ImagePlan {
    pub platform: Platform,
    /// The op whose filesystem is the image's.
    pub result: OpId,
    /// The image config. Its history entries from this build's instructions have placeholder
    /// times, filled in from [`ImagePlan::history`] once the ops are done; `rootfs` too.
    pub config: ImageConfig,
    /// Beside each entry of `config.history`, where it comes from.
    pub history: Vec<HistoryStep>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryStep {
    /// From the base image, kept as it is.
    Base,
    /// An instruction that only changes the config.
    Config,
    /// An instruction that ran this op: its time is the op's, and it has a layer when the
    /// op added one.
    Op(OpId),
}

impl Plan {
    /// The ops the image of `platform_index` needs, in dependency order.
    pub fn ops_for(&self, image: &ImagePlan) -> Vec<OpId> {
        let mut needed = vec![false; self.ops.len()];
        let mut pending = vec![image.result];
        while let Some(id) = pending.pop() {
            if !needed[id.0] {
                needed[id.0] = true;
                pending.extend(self.ops[id.0].inputs.iter().copied());
            }
        }
        (0..self.ops.len())
            .filter(|&i| needed[i])
            .map(OpId)
            .collect()
    }

    pub fn op(&self, id: OpId) -> &Op {
        &self.ops[id.0]
    }

    /// The ops whose layers the built images hold: from each image's result down its
    /// parent filesystems (an op's first input), not into the stages it copies from.
    pub fn image_chains(&self) -> std::collections::HashSet<OpId> {
        let mut chains = std::collections::HashSet::new();
        for image in &self.images {
            chains.extend(self.image_chain(image));
        }
        chains
    }

    /// The ops whose layers `image` holds (see [`Plan::image_chains`]).
    pub fn image_chain(&self, image: &ImagePlan) -> std::collections::HashSet<OpId> {
        let mut chain = std::collections::HashSet::new();
        let mut next = Some(image.result);
        while let Some(id) = next.filter(|id| chain.insert(*id)) {
            next = self.ops[id.0].inputs.first().copied();
        }
        chain
    }
}
