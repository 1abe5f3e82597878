//! The seam where an exec op (a RUN step) runs: a [`Worker`] runs one command over a stack
//! of layer dirs and leaves what it changed in an upper dir, in overlay format.
//! [`NamespaceWorker`] is kiln-sandbox's user namespaces and overlayfs; the choice of how a
//! foreign architecture runs (natively, a private binfmt_misc with QEMU, the host's) is made
//! behind it, once per architecture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use kiln_oci::Platform;
use kiln_sandbox::{EmulationMode, ExitStatus, RunSpec, Sandbox};

use crate::BuildError;

/// One command to run: the sandbox's spec (layer dirs bottom first, each at most once; an
/// empty upper and work dir; the command, its environment, user, cwd, network and mounts),
/// whose `emulator` the worker fills in for the platform.
pub struct ExecJob<'a> {
    pub platform: &'a Platform,
    pub spec: RunSpec,
}

/// How a command ended.
pub struct ExecOutcome {
    pub status: ExitStatus,
    /// Its last output lines.
    pub tail: Vec<String>,
}

/// Runs exec ops.
pub trait Worker: Sync {
    /// Checks, before the build starts, that commands for `platform` can run; says whether
    /// they run emulated.
    fn check(&self, platform: &Platform) -> Result<bool, BuildError>;

    /// Checks that a command can run here at all; called before each RUN that runs (not for
    /// cache hits, which need nothing to run). The first call runs a trial step in a new dir
    /// under `scratch` (the step's scratch dir), later calls give its outcome.
    fn trial(&self, scratch: &Path) -> Result<(), BuildError>;

    /// Runs `job`, passing each output line to `output`. An error means the command could
    /// not be run at all; a command that ran and failed is an outcome.
    fn run(&self, job: ExecJob, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, String>;

    /// Called once the build is done with the worker, whether it succeeded or not.
    fn finish(&self) -> Result<(), BuildError> {
        Ok(())
    }
}

/// Runs commands with kiln-sandbox: user namespaces and overlayfs, on this machine.
pub struct NamespaceWorker {
    sandbox: Sandbox,
    qemu_dir: Option<PathBuf>,
    /// How each architecture runs, probed once.
    emulation: Mutex<HashMap<String, EmulationMode>>,
    /// The trial step's outcome, once it ran (see [`Worker::trial`]).
    trial: OnceLock<Result<(), String>>,
}

impl NamespaceWorker {
    /// `helper` is the executable that acts as the sandbox helper (kiln itself); `qemu_dir`
    /// where `qemu-<arch>-static` lives, if not on PATH or in /usr/bin.
    pub fn new(helper: PathBuf, qemu_dir: Option<PathBuf>) -> NamespaceWorker {
        NamespaceWorker {
            sandbox: Sandbox::new(helper),
            qemu_dir,
            emulation: Mutex::new(HashMap::new()),
            trial: OnceLock::new(),
        }
    }

    fn emulation_for(&self, platform: &Platform) -> Result<EmulationMode, BuildError> {
        let arch = platform.normalized().architecture;
        if let Some(mode) = self.emulation.lock().unwrap().get(&arch) {
            return Ok(mode.clone());
        }
        let mode = self
            .sandbox
            .emulation_for(&arch, self.qemu_dir.as_deref())
            .map_err(|e| BuildError::Emulation {
                platform: platform.to_string(),
                message: e.to_string(),
            })?;
        self.emulation.lock().unwrap().insert(arch, mode.clone());
        Ok(mode)
    }
}

impl Worker for NamespaceWorker {
    fn check(&self, platform: &Platform) -> Result<bool, BuildError> {
        Ok(!matches!(
            self.emulation_for(platform)?,
            EmulationMode::Native
        ))
    }

    fn trial(&self, scratch: &Path) -> Result<(), BuildError> {
        let outcome = self.trial.get_or_init(|| {
            let dir = scratch.join("trial");
            std::fs::create_dir(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))
                .and_then(|()| self.sandbox.trial(&dir).map_err(|e| e.to_string()))
        });
        let uid = nix::unistd::geteuid();
        outcome.clone().map_err(|message| match uid.is_root() {
            true => BuildError::Namespaces { message },
            false => BuildError::NoUserNamespace {
                uid: uid.as_raw(),
                message,
            },
        })
    }

    fn run(&self, job: ExecJob, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, String> {
        let emulator = match self
            .emulation_for(job.platform)
            .map_err(|e| e.to_string())?
        {
            EmulationMode::PrivateBinfmt(emulator) => Some(emulator),
            EmulationMode::Native | EmulationMode::HostBinfmt => None,
        };
        let spec = RunSpec {
            emulator,
            ..job.spec
        };
        let ran = self.sandbox.run(&spec, output).map_err(|e| e.to_string())?;
        Ok(ExecOutcome {
            status: ran.status,
            tail: ran.tail,
        })
    }
}
