//! Foreign-architecture RUN steps. Since Linux 6.7 binfmt_misc can be mounted inside a user
//! namespace, and what is registered there is seen only by that namespace: the sandbox
//! registers QEMU for the step's architecture in its own instance, and the host's binfmt_misc
//! stays untouched. The `F` flag makes the kernel open the emulator at registration, while host
//! paths are still reachable, so it need not exist in the rootfs.

use std::ffi::CStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::unistd::{ForkResult, chdir, chroot, execve, fork};

use crate::arch::{ForeignArch, escaped, foreign_arch};
use crate::helper::wait_for;
use crate::mounts::remount_readonly;
use crate::protocol::HelperRequest;
use crate::{Emulator, ExitStatus, Sandbox, SandboxError};

/// How foreign binaries of an architecture can run here, decided before a build starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmulationMode {
    /// The CPU runs them.
    Native,
    /// The kernel supports a binfmt_misc mount in a user namespace and the emulator is
    /// present: set [`crate::RunSpec::emulator`] to this emulator.
    PrivateBinfmt(Emulator),
    /// A binfmt_misc registration of the host already runs them; leave
    /// [`crate::RunSpec::emulator`] unset.
    HostBinfmt,
}

/// Whether this host runs `arch` (an OCI architecture; a variant suffix such as `arm/v7` is
/// ignored) natively: amd64 and 386 on an x86_64 host, arm64 and arm on aarch64, else only
/// the host's own architecture.
pub fn runs_natively(arch: &str) -> bool {
    let base = arch.split('/').next().unwrap_or(arch);
    let native: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["amd64", "386"],
        "x86" => &["386"],
        "aarch64" => &["arm64", "arm"],
        "arm" => &["arm"],
        "powerpc64" if cfg!(target_endian = "little") => &["ppc64le"],
        "s390x" => &["s390x"],
        "riscv64" => &["riscv64"],
        _ => &[],
    };
    native.contains(&base)
}

/// Finds `qemu-<name>-static` for `arch`: only in `qemu_dir` when given, else in the dirs of
/// `PATH`, then in /usr/bin. The ELF pattern comes from kiln's built-in table.
pub fn find_emulator(arch: &str, qemu_dir: Option<&Path>) -> Result<Emulator, SandboxError> {
    let foreign = known_arch(arch)?;
    let file_name = format!("qemu-{}-static", foreign.qemu);
    let dirs: Vec<PathBuf> = match qemu_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin")])
            .collect(),
    };
    let mut searched: Vec<PathBuf> = Vec::new();
    for candidate in dirs.iter().map(|dir| dir.join(&file_name)) {
        if !searched.contains(&candidate) {
            searched.push(candidate);
        }
    }
    let executable = |path: &&PathBuf| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    let Some(found) = searched.iter().find(executable) else {
        return Err(SandboxError::NoEmulator {
            arch: foreign.oci.to_string(),
            searched,
        });
    };
    // The helper may run in another working dir: a relative PATH entry must not matter.
    let interpreter = std::fs::canonicalize(found)?;
    Ok(Emulator {
        arch: foreign.oci.to_string(),
        interpreter,
        magic: foreign.magic.to_vec(),
        mask: foreign.mask.to_vec(),
    })
}

fn known_arch(arch: &str) -> Result<&'static ForeignArch, SandboxError> {
    foreign_arch(arch).ok_or_else(|| SandboxError::UnknownArch {
        arch: arch.to_string(),
    })
}

impl Sandbox {
    /// Decides how binaries of `arch` can run, before any build step: natively; else through
    /// the emulator (found as by [`find_emulator`]) registered in a binfmt_misc private to the
    /// sandbox; else through a registration of the host. The last two are probed by running
    /// a tiny program of `arch` in a sandbox, so neither the host's binfmt_misc nor its mounts
    /// change. Call it once per architecture of a build: each call starts the helper.
    pub fn emulation_for(
        &self,
        arch: &str,
        qemu_dir: Option<&Path>,
    ) -> Result<EmulationMode, SandboxError> {
        if runs_natively(arch) {
            return Ok(EmulationMode::Native);
        }
        let foreign = known_arch(arch)?;
        let mut why = Vec::new();
        match find_emulator(arch, qemu_dir) {
            Ok(emulator) => match self.probe(foreign, Some(&emulator)) {
                Ok(()) => return Ok(EmulationMode::PrivateBinfmt(emulator)),
                Err(err) => why.push(format!(
                    "registering {} in a private binfmt_misc did not work: {err}",
                    emulator.interpreter.display()
                )),
            },
            Err(err) => why.push(err.to_string()),
        }
        match self.probe(foreign, None) {
            Ok(()) => Ok(EmulationMode::HostBinfmt),
            Err(err) => {
                why.push(format!("no binfmt_misc handler of the host runs it: {err}"));
                Err(SandboxError::CannotEmulate {
                    arch: foreign.oci.to_string(),
                    why: why.join("; "),
                })
            }
        }
    }

    /// Runs the probe program of `foreign` in the helper, through `emulator` when given.
    fn probe(&self, foreign: &ForeignArch, emulator: Option<&Emulator>) -> Result<(), String> {
        let template = std::env::temp_dir().join("kiln-probe-XXXXXX");
        let scratch = nix::unistd::mkdtemp(&template)
            .map_err(|err| format!("creating a temp dir like {}: {err}", template.display()))?;
        let request = HelperRequest::ProbeEmulation {
            arch: foreign.oci.to_string(),
            emulator: emulator.cloned(),
            scratch: scratch.clone(),
        };
        let outcome = self.run_request(&request, &mut |_| {});
        // The helper mounted a tmpfs there in its own mount namespace: the dir is empty here.
        let _ = std::fs::remove_dir(&scratch);
        match outcome {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(format!(
                "the test program ended with {}{}",
                output.status,
                match output.tail.last() {
                    Some(line) => format!(" ({line})"),
                    None => String::new(),
                }
            )),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// Mounts the binfmt_misc instance of the helper's user namespace on `work/binfmt_misc` and
/// registers `emulator` there, through a read-only bind of it at `work/emulator`. The
/// registration lasts while a mount of that instance does: the caller keeps it mounted until
/// the command is done (or lets the namespace end).
///
/// Every emulated process of the step can name the emulator's file as `/proc/<pid>/exe`, and
/// as real root the step's uid 0 owns the host's file: through a writable mount it could chmod
/// it setuid (a root shell for every local user), chown it or change its times. The kernel
/// opens the file at registration (the `F` flag) through the read-only bind, so that is the
/// mount `/proc/<pid>/exe` leads to, and every such change fails with EROFS.
pub(crate) fn register_private(emulator: &Emulator, work: &Path) -> Result<(), String> {
    let fail = |why: String| {
        format!(
            "cannot set up emulation of {} binaries with {}: {why}",
            emulator.arch,
            emulator.interpreter.display()
        )
    };
    let read_only = work.join("emulator");
    let rule = registration(&Emulator {
        interpreter: read_only.clone(),
        ..emulator.clone()
    })
    .map_err(fail)?;
    std::fs::File::create(&read_only)
        .map_err(|err| fail(format!("creating {}: {err}", read_only.display())))?;
    mount(
        Some(&emulator.interpreter),
        &read_only,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .and_then(|()| remount_readonly(&read_only))
    .map_err(|err| {
        fail(format!(
            "bind-mounting it read-only on {}: {err}",
            read_only.display()
        ))
    })?;
    let mount_point = &work.join("binfmt_misc");
    std::fs::create_dir_all(mount_point)
        .map_err(|err| fail(format!("creating {}: {err}", mount_point.display())))?;
    mount(
        Some("binfmt_misc"),
        mount_point,
        Some("binfmt_misc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|err| {
        let hint = match err {
            Errno::EPERM | Errno::ENODEV | Errno::EINVAL => {
                " (a binfmt_misc in a user namespace needs Linux 6.7 or later)"
            }
            _ => "",
        };
        fail(format!(
            "mounting a private binfmt_misc on {}: {err}{hint}",
            mount_point.display()
        ))
    })?;
    std::fs::write(mount_point.join("register"), rule)
        .map_err(|err| fail(format!("registering it in the private binfmt_misc: {err}")))
}

/// The `register` line: `:name:M::magic:mask:interpreter:PF`. `P` passes the command's own
/// `argv[0]` on (QEMU sees the flag in `AT_FLAGS`): busybox's shell runs applets through
/// /proc/self/exe and tells them apart by `argv[0]` alone.
fn registration(emulator: &Emulator) -> Result<String, String> {
    let interpreter = emulator.interpreter.to_str().unwrap_or_default();
    if !emulator.interpreter.is_absolute() || interpreter.contains(':') {
        return Err(format!(
            "the emulator's path must be absolute, UTF-8 and without ':' (got {})",
            emulator.interpreter.display()
        ));
    }
    let name_ok = !emulator.arch.is_empty()
        && emulator
            .arch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(format!("{:?} is not an architecture name", emulator.arch));
    }
    // The kernel compares at most the first 128 bytes of a file.
    if emulator.magic.is_empty() || emulator.magic.len() > 128 {
        return Err(format!(
            "the ELF pattern must have 1 to 128 bytes, not {}",
            emulator.magic.len()
        ));
    }
    if emulator.mask.len() != emulator.magic.len() {
        return Err(format!(
            "the ELF pattern's mask has {} bytes, its magic {}",
            emulator.mask.len(),
            emulator.magic.len()
        ));
    }
    Ok(format!(
        ":kiln-{}:M::{}:{}:{interpreter}:PF",
        emulator.arch,
        escaped(&emulator.magic),
        escaped(&emulator.mask)
    ))
}

/// The helper's side of [`Sandbox::emulation_for`]: mounts a private tmpfs on `scratch`,
/// registers `emulator` if given and runs the probe program of `arch` chrooted in a dir that
/// holds nothing else, as a RUN step would run it: a host registration without the `F` flag
/// would need its emulator inside the rootfs, and fails here as it would there.
pub(crate) fn probe_in_helper(
    arch: &str,
    emulator: Option<&Emulator>,
    scratch: &Path,
) -> Result<ExitStatus, String> {
    let foreign = foreign_arch(arch).ok_or_else(|| format!("unknown architecture {arch:?}"))?;
    // Nothing the probe writes reaches the host's file system.
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=700,size=1m"),
    )
    .map_err(|err| format!("mounting a tmpfs on {}: {err}", scratch.display()))?;
    if let Some(emulator) = emulator {
        register_private(emulator, scratch)?;
    }
    let root = scratch.join("root");
    let program = root.join("probe");
    std::fs::create_dir(&root).map_err(|err| format!("creating {}: {err}", root.display()))?;
    std::fs::write(&program, foreign.probe_program())
        .and_then(|()| std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)))
        .map_err(|err| format!("writing {}: {err}", program.display()))?;
    // SAFETY: the helper is single-threaded, so the child may use the standard library.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Not through std's Command: its execvp retries a file the kernel cannot run
            // with /bin/sh, and reports that missing shell instead.
            let err = chroot(&root)
                .and_then(|()| chdir("/"))
                .and_then(|()| execve(c"/probe", &[c"/probe"], &[] as &[&CStr]).map(drop));
            if let Err(err) = err {
                eprintln!("executing the {arch} test program: {err}");
            }
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => wait_for(child),
        Err(err) => Err(format!("fork: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::registration;
    use crate::Emulator;

    #[test]
    fn registration_escapes_every_byte_and_sets_the_p_and_f_flags() {
        let emulator = Emulator {
            arch: "arm64".to_string(),
            interpreter: PathBuf::from("/opt/qemu/qemu-aarch64-static"),
            magic: b"\x7fELF".to_vec(),
            mask: vec![0xff, 0xff, 0xfe, 0x00],
        };
        assert_eq!(
            registration(&emulator).unwrap(),
            ":kiln-arm64:M::\\x7f\\x45\\x4c\\x46:\\xff\\xff\\xfe\\x00:/opt/qemu/qemu-aarch64-static:PF"
        );
        let colon = Emulator {
            interpreter: PathBuf::from("/opt/a:b/qemu"),
            ..emulator.clone()
        };
        assert!(registration(&colon).unwrap_err().contains("':'"));
        let short_mask = Emulator {
            mask: vec![0xff],
            ..emulator
        };
        assert!(registration(&short_mask).unwrap_err().contains("mask"));
    }
}
