//! How RUN steps are isolated, chosen once per build: kiln's own namespaces
//! ([`NamespaceWorker`]), or in place ([`InPlaceWorker`]), kaniko's way, where the runtime
//! kiln runs in refuses namespaces: the container's `/` is the rootfs of each RUN step, laid
//! out from the step's layers, and the step's layer is what a walk finds changed after it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use kiln_oci::Platform;
use kiln_snapshot::{Inventory, LiveRoot};

use crate::worker::{ExecJob, ExecOutcome, NamespaceWorker, Worker};
use crate::{BuildError, BuildOptions, Progress, Store};

/// `--isolation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Namespaces where they work; in a container that refuses them, in place.
    #[default]
    Auto,
    Namespaces,
    /// In place: RUN steps change the `/` kiln runs in.
    InPlace,
}

/// What in-place isolation leaves alone, and whether it may run outside a container.
#[derive(Debug, Clone)]
pub struct InPlaceOptions {
    /// kiln's own directory (`/kiln`, kaniko's `/kaniko`): its binary, store, credentials.
    pub kiln_dir: PathBuf,
    /// More paths to leave alone: `--ignore-path`, and what the build reads or writes
    /// outside kiln's store (the Dockerfile, outputs, sockets, credentials); relative paths
    /// are taken from the current directory.
    pub keep: Vec<PathBuf>,
    /// `--force`: build in place even where kiln finds no sign of a container.
    pub force: bool,
    /// `--cleanup`: empty `/` (but what is kept) when the build is done.
    pub cleanup: bool,
}

impl Default for InPlaceOptions {
    fn default() -> InPlaceOptions {
        InPlaceOptions {
            kiln_dir: PathBuf::from("/kiln"),
            keep: Vec::new(),
            force: false,
            cleanup: false,
        }
    }
}

/// The files Docker and podman leave in a container's `/`. In-place builds keep them, so that
/// the next kiln in the same container still finds them.
const CONTAINER_FILES: [&str; 2] = ["/.dockerenv", "/run/.containerenv"];

/// Whether kiln runs in a container: the files Docker and podman leave, a Kubernetes
/// service variable, or a container runtime's name in the cgroup of PID 1.
pub fn in_container() -> bool {
    CONTAINER_FILES.iter().any(|file| Path::new(file).exists())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::fs::read_to_string("/proc/1/cgroup").is_ok_and(|cgroup| {
            ["docker", "kubepods", "containerd", "libpod", "crio"]
                .iter()
                .any(|name| cgroup.contains(name))
        })
}

/// The worker `opts.isolation` asks for (see [`AutoWorker`] for `auto`).
pub(crate) fn choose_worker<'a>(
    opts: &'a BuildOptions,
    store: &'a Store,
    progress: &'a Progress,
) -> Result<Box<dyn Worker + 'a>, BuildError> {
    let namespaces = NamespaceWorker::new(opts.sandbox_helper.clone(), opts.qemu_dir.clone());
    match opts.isolation {
        Isolation::Namespaces => Ok(Box::new(namespaces)),
        Isolation::InPlace => {
            allow_in_place(in_container(), opts.in_place.force)?;
            Ok(Box::new(InPlaceWorker::new(opts, store)?))
        }
        // In place deletes what a container holds: by itself only in kiln's own image (kiln
        // runs from its directory, as kaniko runs from /kaniko), never in a dev container
        // kiln was installed in. And only as root, since it lays out `/`.
        Isolation::Auto
            if !in_container()
                || !runs_from(&opts.in_place.kiln_dir)
                || !nix::unistd::geteuid().is_root() =>
        {
            Ok(Box::new(namespaces))
        }
        Isolation::Auto => Ok(Box::new(AutoWorker {
            namespaces,
            in_place: OnceLock::new(),
            opts,
            store,
            progress,
        })),
    }
}

/// Whether the running kiln lies in `dir`.
fn runs_from(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::env::current_exe().is_ok_and(|exe| exe.starts_with(dir))
}

/// In place rewrites `/`: only in a container, unless forced.
fn allow_in_place(in_container: bool, force: bool) -> Result<(), BuildError> {
    match in_container || force {
        true => Ok(()),
        false => Err(BuildError::InPlaceOutsideContainer),
    }
}

/// `auto` in a container, run from kiln's directory, as root: the namespace trial runs when
/// a step first needs it (a fully cached build pays nothing); if the container refuses
/// namespaces, the build goes on in place, and says so in one line.
struct AutoWorker<'a> {
    namespaces: NamespaceWorker,
    /// Decided at the first trial: `None` for namespaces; the error is the trial's.
    in_place: OnceLock<Result<Option<InPlaceWorker>, String>>,
    opts: &'a BuildOptions,
    store: &'a Store,
    progress: &'a Progress,
}

impl AutoWorker<'_> {
    fn decide(&self) -> Result<Option<&InPlaceWorker>, BuildError> {
        let decided = self.in_place.get_or_init(|| {
            let scratch = self.store.temp_dir("trial-").map_err(|e| e.to_string())?;
            match self.namespaces.trial(scratch.path()) {
                Ok(()) => Ok(None),
                Err(BuildError::Namespaces { message }) => {
                    self.progress.info(&format!(
                        "this container refuses namespaces ({message}): RUN steps run in \
                         place, in the container's own / (kaniko's way; --isolation)"
                    ));
                    InPlaceWorker::new(self.opts, self.store)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
                Err(other) => Err(other.to_string()),
            }
        });
        match decided {
            Ok(worker) => Ok(worker.as_ref()),
            Err(message) => Err(BuildError::Namespaces {
                message: message.clone(),
            }),
        }
    }
}

impl Worker for AutoWorker<'_> {
    fn check(&self, platform: &Platform) -> Result<bool, BuildError> {
        // The machine's own architecture runs either way; only a foreign one needs the
        // decision now.
        if kiln_sandbox::runs_natively(&platform.normalized().architecture) {
            return Ok(false);
        }
        match self.decide()? {
            Some(in_place) => in_place.check(platform),
            None => self.namespaces.check(platform),
        }
    }

    fn trial(&self, scratch: &Path) -> Result<(), BuildError> {
        match self.decide()? {
            Some(_) => Ok(()),
            None => self.namespaces.trial(scratch),
        }
    }

    fn run(&self, job: ExecJob, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, String> {
        match self.decide().map_err(|e| e.to_string())? {
            Some(in_place) => in_place.run(job, output),
            None => self.namespaces.run(job, output),
        }
    }

    fn finish(&self) -> Result<(), BuildError> {
        match self.in_place.get() {
            Some(Ok(Some(in_place))) => in_place.finish(),
            _ => Ok(()),
        }
    }
}

/// Runs RUN steps in the `/` kiln runs in (see the module docs). One step at a time: the
/// tree is one.
pub struct InPlaceWorker {
    live: LiveRoot,
    /// kiln's directory and its store, with (device, inode): a step must leave them be.
    guarded: Vec<(PathBuf, (u64, u64))>,
    /// Where probe programs are written.
    scratch: PathBuf,
    /// Whether each architecture runs here, probed once.
    runs: Mutex<HashMap<String, bool>>,
    state: Mutex<Option<Applied>>,
    cleanup: bool,
    /// Whether a step laid `/` out.
    touched: AtomicBool,
}

/// What the tree holds: the stack of layer dirs it was laid out from, plus the changes of the
/// last step if they made a layer (`pending`: the upper dir, whose inode stays when the store
/// renames it into place), and the record of it taken after that step.
struct Applied {
    lowers: Vec<PathBuf>,
    /// Held open: where the store already had that layer it removes the upper dir, and the
    /// filesystem could give its inode number to the next directory made (a COPY's layer).
    pending: Option<std::fs::File>,
    record: Inventory,
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|md| (md.dev(), md.ino()))
}

impl Applied {
    /// The layers that `lowers` has on top of what the tree holds, if it holds a prefix of it.
    fn missing<'a>(&self, lowers: &'a [PathBuf]) -> Option<&'a [PathBuf]> {
        let mut have = self.lowers.len();
        if !lowers.starts_with(&self.lowers) {
            return None;
        }
        if let Some(pending) = &self.pending {
            let next = lowers.get(have)?;
            let held = pending.metadata().ok().map(|md| (md.dev(), md.ino()));
            if held.is_none() || inode(next) != held {
                return None;
            }
            have += 1;
        }
        Some(&lowers[have..])
    }
}

impl InPlaceWorker {
    pub fn new(opts: &BuildOptions, store: &Store) -> Result<InPlaceWorker, BuildError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(BuildError::InPlaceNotRoot);
        }
        // Symlinks resolved where the path exists; relative paths (an output not written
        // yet) taken from the current directory.
        let absolute = |path: &Path| {
            std::fs::canonicalize(path)
                .or_else(|_| std::path::absolute(path))
                .unwrap_or_else(|_| path.to_path_buf())
        };
        let kiln_dir = absolute(&opts.in_place.kiln_dir);
        let store_root = absolute(store.root());
        let mut keep = vec![
            kiln_dir.clone(),
            store_root.clone(),
            absolute(&opts.context_dir),
        ];
        keep.extend(opts.in_place.keep.iter().map(|path| absolute(path)));
        // A named context's files are read when a step first needs them.
        keep.extend(
            opts.named_contexts
                .values()
                .filter_map(|named| match named {
                    crate::NamedContext::Dir(dir) => Some(absolute(dir)),
                    crate::NamedContext::Image(_) => None,
                }),
        );
        if let Ok(exe) = std::env::current_exe() {
            keep.push(exe);
        }
        keep.extend(mount_points());
        keep.extend(CONTAINER_FILES.iter().map(PathBuf::from));
        let keep: Vec<PathBuf> = keep
            .iter()
            .filter_map(|path| path.strip_prefix("/").ok())
            .filter(|rel| !rel.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        let guarded = [kiln_dir, store_root]
            .into_iter()
            .filter_map(|path| inode(&path).map(|id| (path, id)))
            .collect();
        Ok(InPlaceWorker {
            live: LiveRoot::new(Path::new("/"), keep),
            guarded,
            scratch: store.scratch().to_path_buf(),
            runs: Mutex::new(HashMap::new()),
            state: Mutex::new(None),
            cleanup: opts.in_place.cleanup,
            touched: AtomicBool::new(false),
        })
    }

    /// Lays the tree out as `lowers` and returns the record to compare with after the step.
    fn lay_out(&self, state: Option<Applied>, lowers: &[PathBuf]) -> Result<Inventory, String> {
        let err = |e: &dyn std::fmt::Display| format!("laying out / for the step: {e}");
        self.touched.store(true, Ordering::Relaxed);
        if let Some(applied) = state
            && let Some(missing) = applied.missing(lowers)
        {
            if missing.is_empty() {
                return Ok(applied.record);
            }
            for layer in missing {
                self.live.apply(layer).map_err(|e| err(&e))?;
            }
        } else {
            self.live.reset(lowers).map_err(|e| err(&e))?;
        }
        self.live.inventory().map_err(|e| err(&e))
    }

    fn check_guarded(&self) -> Result<(), String> {
        for (path, id) in &self.guarded {
            if inode(path) != Some(*id) {
                return Err(format!(
                    "the step removed or replaced {}, which kiln keeps its own files in; \
                     nothing can be built or pushed after that",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

impl Worker for InPlaceWorker {
    fn check(&self, platform: &Platform) -> Result<bool, BuildError> {
        let arch = platform.normalized().architecture;
        let native = kiln_sandbox::runs_natively(&arch);
        let mut runs = self.runs.lock().unwrap();
        let runs_here = match runs.get(&arch) {
            Some(known) => *known,
            None => {
                let probed = kiln_sandbox::runs_in_place(&arch, &self.scratch).map_err(|e| {
                    BuildError::Emulation {
                        platform: platform.to_string(),
                        message: e.to_string(),
                    }
                })?;
                runs.insert(arch, probed);
                probed
            }
        };
        match runs_here {
            true => Ok(!native),
            false => Err(BuildError::InPlaceForeign {
                platform: platform.to_string(),
            }),
        }
    }

    fn trial(&self, _scratch: &Path) -> Result<(), BuildError> {
        Ok(())
    }

    /// `--cleanup`: what the steps left in `/` goes once the build is done with it.
    fn finish(&self) -> Result<(), BuildError> {
        if !self.cleanup || !self.touched.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.live
            .reset(&[])
            .map_err(|e| BuildError::io("--cleanup: emptying /")(std::io::Error::other(e)))
    }

    fn run(&self, job: ExecJob, output: &mut dyn FnMut(&str)) -> Result<ExecOutcome, String> {
        let mut state = self.state.lock().unwrap();
        // Unknown until the step is done and read: an error on the way leaves it unknown.
        let record = self.lay_out(state.take(), &job.spec.lowers)?;
        // Checked in the tree just laid out: its symlinks are where the mounts would go.
        for mount in &job.spec.mounts {
            if let Some(kept) = self.live.kept_at(Path::new(&mount.target)) {
                return Err(format!(
                    "RUN --mount target {}: in place, a mount there would move or change {}, \
                     which kiln leaves alone (its own directory or store, the context, the \
                     outputs, a mount point or an --ignore-path). Mount elsewhere, or build \
                     where kiln can use namespaces",
                    mount.target,
                    kept.display()
                ));
            }
        }
        let ran = kiln_sandbox::run_in_place(&job.spec, output);
        self.check_guarded()?;
        let ran = ran.map_err(|e| e.to_string())?;
        if !ran.status.success() {
            return Ok(ExecOutcome {
                status: ran.status,
                tail: ran.tail,
            });
        }
        let upper = &job.spec.upper;
        let mounted: Vec<&Path> = job
            .spec
            .mounts
            .iter()
            .map(|mount| Path::new(&mount.target))
            .collect();
        let (changes, now) = self
            .live
            .changes(&record, &mounted)
            .map_err(|e| format!("reading what the step changed: {e}"))?;
        self.live
            .capture(&changes, upper)
            .map_err(|e| format!("storing what the step changed: {e}"))?;
        let made_layer = std::fs::read_dir(upper).is_ok_and(|mut dir| dir.next().is_some());
        *state = Some(Applied {
            lowers: job.spec.lowers.clone(),
            pending: made_layer
                .then(|| std::fs::File::open(upper).ok())
                .flatten(),
            record: now,
        });
        Ok(ExecOutcome {
            status: ran.status,
            tail: ran.tail,
        })
    }
}

/// Every mount point but `/`, from /proc/self/mountinfo (the fifth field, octal-escaped).
fn mount_points() -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .filter(|path| path != Path::new("/"))
        .collect()
}

/// `\040` and the like, as the kernel escapes space, tab, newline and backslash.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::{allow_in_place, unescape_octal};
    use crate::BuildError;
    use std::path::PathBuf;

    #[test]
    fn in_place_outside_a_container_needs_force() {
        assert!(matches!(
            allow_in_place(false, false),
            Err(BuildError::InPlaceOutsideContainer)
        ));
        assert!(allow_in_place(false, true).is_ok());
        assert!(allow_in_place(true, false).is_ok());
        let message = BuildError::InPlaceOutsideContainer.to_string();
        assert!(
            message.contains("--force") && message.contains("wipe the host"),
            "{message}"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal("/run/a\\040b"), PathBuf::from("/run/a b"));
        assert_eq!(unescape_octal("/x\\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape_octal("/plain\\9"), PathBuf::from("/plain\\9"));
    }
}
