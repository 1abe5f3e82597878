//! Runs one command (a Dockerfile `RUN` step) in a rootfs made of overlayfs over a stack of
//! layer dirs, inside new user, mount, pid and UTS namespaces, without privileges on the host.
//!
//! The caller (kiln) is multi-threaded, and `unshare(CLONE_NEWUSER)` is refused to
//! multi-threaded processes, so the namespaces are entered by a re-exec'd helper: the same
//! executable started with [`HELPER_ARG`] as its first argument. The caller writes the helper's
//! id maps, then sends it the [`RunSpec`]; the helper mounts the rootfs and forks the command
//! as PID 1 of the new pid namespace.
//!
//! The command gets what a default Docker container gets and no more: Docker's default
//! capabilities and seccomp profile, runc's read-only and masked /proc paths, stdin, stdout
//! and stderr as its only descriptors, and no controlling terminal (see `init::confine`).
//!
//! [`Sandbox::trial`] runs the whole setup once with a program that only exits 0, so that a
//! build can tell a runtime that refuses the namespaces, or pieces of the setup, from a step
//! that failed.
//!
//! Steps of a foreign architecture run under QEMU user-mode emulation, registered in a
//! binfmt_misc instance private to the helper's user namespace (Linux 6.7+), so the host's
//! binfmt_misc stays untouched: see [`Sandbox::emulation_for`] and [`RunSpec::emulator`].

mod arch;
mod caps;
mod emulation;
mod helper;
mod in_place;
mod init;
mod mounts;
mod network;
mod protocol;
mod rootless;
mod run;
mod seccomp;
mod step_options;
mod users;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use emulation::{EmulationMode, find_emulator, runs_natively};
pub use in_place::{run_in_place, runs_in_place};
pub use rootless::enter_rootless_if_needed;
pub use step_options::{DEFAULT_SHM_SIZE, ExtraHost, StepOptionError, StepOptions, Ulimit};
pub use users::{
    ACCOUNT_FILE_LIMIT, AccountFileError, GroupEntry, PasswdEntry, group_entries, passwd_entries,
    read_account_file,
};

/// First argument that makes the executable act as the sandbox helper.
pub const HELPER_ARG: &str = "__kiln-sandbox-init";

/// Call first thing in `main()`: if `argv[1] == HELPER_ARG`, act as the helper and never return.
pub fn helper_main_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new(HELPER_ARG)) {
        std::process::exit(helper::main(args.collect()));
    }
}

/// What to run and on which layers. Serialized as JSON to the helper; new fields must get a
/// `#[serde(default)]` so that the format stays extensible.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Layer dirs in overlayfs format, bottom first; may be empty.
    pub lowers: Vec<PathBuf>,
    /// Empty dir; receives the changes (the step's diff).
    pub upper: PathBuf,
    /// Empty scratch dir on the same filesystem as `upper`.
    pub work: PathBuf,
    pub argv: Vec<String>,
    /// The environment of the command, as `KEY=value`. Without a non-empty `HOME`, the
    /// command gets the user's home from the rootfs's /etc/passwd (`/` if it has none), as
    /// runc gives it.
    pub env: Vec<String>,
    /// Absolute path in the rootfs; created if missing.
    pub cwd: String,
    /// `name`, `uid`, `name:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Empty means `localhost`.
    pub hostname: String,
    /// Set when the command's binaries are of a foreign architecture: the sandbox registers
    /// the emulator in a binfmt_misc instance private to its user namespace. `None` runs
    /// binaries natively (or through a host registration).
    #[serde(default)]
    pub emulator: Option<Emulator>,
    /// Mounted over the rootfs in this order (a target inside an earlier mount's target goes
    /// into that mount). Nothing written to them reaches `upper`, and mount points the
    /// sandbox had to create are removed from `upper` afterwards.
    #[serde(default)]
    pub mounts: Vec<RunMount>,
    #[serde(default)]
    pub network: Network,
    /// `--add-host`, `--ulimit` and `--shm-size`.
    #[serde(default)]
    pub options: StepOptions,
}

/// Something mounted into the rootfs for one command (`RUN --mount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMount {
    /// Absolute path in the rootfs; missing parents are created. Symlinks on the way are
    /// resolved inside the rootfs.
    pub target: String,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host dir, file or socket; the mount point is a dir for a dir source, else a file.
    Bind { source: PathBuf, readonly: bool },
    /// An empty tmpfs; `size` in bytes, `None` for the kernel's default (half the RAM).
    Tmpfs { size: Option<u64> },
}

/// The network the command sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network: kiln has no network stack of its own to give the sandbox, so
    /// the default, like `Host`, shares the host's (BuildKit's default is a private network
    /// with outbound connectivity; the command's view of the network is what differs).
    #[default]
    Default,
    /// A network namespace of its own with only a loopback interface, which is up.
    None,
    /// The network namespace kiln runs in, as `Default` (`--network=host`).
    Host,
}

/// How to run binaries of a foreign architecture: a QEMU user-mode emulator and the ELF
/// header pattern it handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulator {
    /// OCI architecture, e.g. `arm64`.
    pub arch: String,
    /// The emulator executable on the host; it need not exist in the rootfs.
    pub interpreter: PathBuf,
    /// binfmt_misc matches a file when its first bytes, ANDed with `mask`, equal `magic`.
    pub magic: Vec<u8>,
    pub mask: Vec<u8>,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// Result of a command that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub status: ExitStatus,
    /// The last [`TAIL_LINES`] lines of combined stdout and stderr.
    pub tail: Vec<String>,
}

/// How many output lines [`RunOutput::tail`] keeps.
pub const TAIL_LINES: usize = 20;

/// Longer output lines are cut here (the line says how many bytes were dropped), so that
/// kiln's memory stays bounded whatever a step prints. Above kiln-build's 500 KiB limit for
/// a secret, so that a secret printed within the first 512 KiB of a line reaches the
/// redactor whole.
pub const MAX_LINE_BYTES: usize = 512 << 10;

/// Runs commands through a helper executable (kiln passes `std::env::current_exe()`).
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: PathBuf,
}

impl Sandbox {
    pub fn new(helper: PathBuf) -> Sandbox {
        Sandbox { helper }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox could not be set up, or the command could not be started.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error("cannot start the sandbox helper {}: {source}", path.display())]
    SpawnHelper {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the id maps of the sandbox's user namespace: {0}")]
    IdMap(String),
    #[error("sandbox helper ended without a report ({0})")]
    HelperDied(String),
    #[error("cannot enter a rootless user namespace: {0}")]
    Rootless(String),
    #[error(
        "no QEMU emulator for architecture {arch}: searched {}",
        searched.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoEmulator {
        arch: String,
        searched: Vec<PathBuf>,
    },
    #[error("kiln knows no emulator for architecture {arch:?}")]
    UnknownArch { arch: String },
    #[error(
        "cannot run {arch} binaries on this machine ({why}). Either install qemu-user-static \
         (or point --qemu-dir / KILN_QEMU_DIR at a directory with the qemu-*-static emulators), \
         register binfmt_misc handlers for {arch} on the host, or cross-compile in a \
         `FROM --platform=$BUILDPLATFORM` stage"
    )]
    CannotEmulate { arch: String, why: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
