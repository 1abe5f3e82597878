//! `RUN --mount` (parsed by kiln-dockerfile, expanded by the plan): preparing what each mount
//! shows on the host (copies of the context or a stage, cache dirs, secret files, agent
//! sockets) for the sandbox to mount. Nothing prepared here becomes part of a layer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_dockerfile::{Mount, MountType, Sharing};
use kiln_sandbox::{MountKind, RunMount};
use kiln_snapshot::{CopyOptions, LayerStack};
use sha2::{Digest as _, Sha256};

use crate::Store;
use crate::context::BuildContext;
use crate::secrets::{SecretFiles, Secrets};

/// What the mounts of one RUN step draw from.
pub(crate) struct MountInputs<'a> {
    pub store: &'a Store,
    pub context: &'a BuildContext,
    pub secrets: &'a Secrets,
    pub secret_files: &'a SecretFiles<'a>,
    pub ssh: &'a BTreeMap<String, PathBuf>,
    /// The step's scratch dir, removed after it: copies go there.
    pub scratch: &'a Path,
}

/// The mounts of one RUN step, ready for the sandbox. Holds cache locks until dropped.
pub(crate) struct PreparedMounts {
    pub mounts: Vec<RunMount>,
    /// `KEY=value` to add to the step's environment (secrets with `env=`, `SSH_AUTH_SOCK`).
    pub env: Vec<String>,
    /// Locks of `sharing=locked` and `sharing=private` caches in use.
    _locks: Vec<File>,
    /// Secret files, removed when the step is done.
    _secret_files: Vec<tempfile::TempPath>,
}

/// The default target of the `n`th ssh mount, as BuildKit names it.
fn ssh_target(n: usize) -> String {
    format!("/run/buildkit/ssh_agent.{n}")
}

/// Prepares `requests` (targets absolute), with the filesystem of each `from=` stage or
/// image alongside. Errors name the mount and are meant for the user.
pub(crate) fn prepare(
    requests: &[(Mount, Option<LayerStack>)],
    inputs: &MountInputs,
) -> Result<PreparedMounts, String> {
    let mut prepared = PreparedMounts {
        mounts: Vec::new(),
        env: Vec::new(),
        _locks: Vec::new(),
        _secret_files: Vec::new(),
    };
    let mut ssh_count = 0;
    for (n, (request, from)) in requests.iter().enumerate() {
        let scratch = inputs.scratch.join(format!("mount-{n}"));
        let target = request.target.clone();
        let mount = |target: String, source: PathBuf, readonly: bool| RunMount {
            target,
            kind: MountKind::Bind { source, readonly },
        };
        match request.kind {
            MountType::Bind => {
                let source = request.source.as_deref().unwrap_or(".");
                let host = match from {
                    Some(stack) => export_from(stack, source, &scratch)?,
                    None => copy_from_context(inputs.context, source, &scratch)?,
                };
                let readonly = request.readonly.unwrap_or(true);
                prepared
                    .mounts
                    .push(mount(target.expect("checked"), host, readonly));
            }
            MountType::Cache => {
                let target = target.expect("checked");
                let id = request.id.clone().unwrap_or_else(|| target.clone());
                let (dir, lock) = cache_dir(inputs, request, &id, from.as_ref(), &scratch)?;
                prepared._locks.extend(lock);
                let readonly = request.readonly.unwrap_or(false);
                prepared.mounts.push(mount(target, dir, readonly));
            }
            MountType::Tmpfs => prepared.mounts.push(RunMount {
                target: target.expect("checked"),
                kind: MountKind::Tmpfs { size: request.size },
            }),
            MountType::Secret => {
                let id = request.id.as_deref().expect("defaulted when parsed");
                let Some(value) = inputs.secrets.value(id) else {
                    if request.required {
                        return Err(format!(
                            "secret `{id}` is required but was not given: pass \
                             --secret id={id},src=FILE (or env=VARIABLE) to kiln build"
                        ));
                    }
                    continue;
                };
                if let Some(name) = &request.env {
                    let text = String::from_utf8(value.to_vec())
                        .map_err(|_| format!("secret `{id}` is not UTF-8 text (env={name})"))?;
                    prepared.env.push(format!("{name}={text}"));
                }
                // With env= alone the secret is only in the environment, as in BuildKit.
                if request.env.is_none() || target.is_some() {
                    let file = inputs.secret_files.write(
                        value,
                        request.mode.unwrap_or(0o400),
                        request.uid.unwrap_or(0),
                        request.gid.unwrap_or(0),
                    )?;
                    let target = target.unwrap_or_else(|| format!("/run/secrets/{id}"));
                    prepared
                        .mounts
                        .push(mount(target, file.to_path_buf(), true));
                    prepared._secret_files.push(file);
                }
            }
            MountType::Ssh => {
                let id = request.id.as_deref().unwrap_or("default");
                let Some(socket) = inputs.ssh.get(id) else {
                    if request.required {
                        return Err(format!(
                            "ssh agent `{id}` is required but was not given: pass \
                             --ssh {id}=SOCKET (or --ssh {id} for $SSH_AUTH_SOCK) to kiln build"
                        ));
                    }
                    continue;
                };
                let target = target.unwrap_or_else(|| ssh_target(ssh_count));
                ssh_count += 1;
                if !prepared.env.iter().any(|v| v.starts_with("SSH_AUTH_SOCK=")) {
                    prepared.env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                // Read-only: connecting to a socket on a read-only mount works, and as real
                // root the step's uid 0 could otherwise chmod or chown the host's socket.
                prepared.mounts.push(mount(target, socket.clone(), true));
            }
        }
    }
    Ok(prepared)
}

/// Copies `source` of a stage's or image's filesystem to `dest`; returns what to mount.
fn export_from(stack: &LayerStack, source: &str, dest: &Path) -> Result<PathBuf, String> {
    let image_path = Path::new("/").join(source.trim_start_matches('/'));
    if stack.lookup(&image_path, true).is_none() {
        return Err(format!(
            "mount source {source}: not found in the `from` stage"
        ));
    }
    stack
        .export(&image_path, dest)
        .map_err(|e| format!("mount source {source}: {e}"))?;
    Ok(dest.to_path_buf())
}

/// Copies `source` of the build context (as `.dockerignore` shows it) under `dest`; returns
/// what to mount. A copy, not the context itself, so that writes of `rw` binds are dropped.
fn copy_from_context(context: &BuildContext, source: &str, dest: &Path) -> Result<PathBuf, String> {
    let found = context.sources(source);
    let [found] = found.as_slice() else {
        return Err(format!(
            "mount source {source}: not found in the build context {}",
            context.root().display()
        ));
    };
    fs::create_dir(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let is_dir = fs::metadata(&found.host_path).is_ok_and(|m| m.is_dir());
    let (image_target, host) = match is_dir {
        true => (PathBuf::from("/"), dest.to_path_buf()),
        false => {
            let name = found.host_path.file_name().unwrap_or_default();
            (Path::new("/").join(name), dest.join(name))
        }
    };
    // What COPY takes of it, as the step's cache key hashed it.
    let filter = |path: &Path| context.copy_takes(found, None, path);
    let options = CopyOptions {
        filter: Some(&filter),
        ..Default::default()
    };
    kiln_snapshot::copy_into_layer(
        &found.host_path,
        dest,
        &image_target,
        &LayerStack::new(Vec::new()),
        &options,
    )
    .map_err(|e| format!("mount source {source}: {e}"))?;
    Ok(host)
}

/// The persistent dir of cache `id` (created on first use, seeded from `from` if given) and
/// the lock its sharing mode takes. A `private` cache in use gives way to a fresh dir.
fn cache_dir(
    inputs: &MountInputs,
    request: &Mount,
    id: &str,
    from: Option<&LayerStack>,
    scratch: &Path,
) -> Result<(PathBuf, Option<File>), String> {
    let caches = inputs.store.root().join("cache");
    let key = hex::encode(Sha256::digest(id.as_bytes()));
    let dir = caches.join(&key);
    let lock = match request.sharing {
        Sharing::Shared => None,
        Sharing::Locked | Sharing::Private => {
            let path = caches.join(format!("{key}.lock"));
            let file = File::create(&path)
                .map_err(|e| format!("creating the cache lock {}: {e}", path.display()))?;
            let taken = match request.sharing {
                Sharing::Locked => file.lock().map(|()| true),
                _ => match file.try_lock() {
                    Ok(()) => Ok(true),
                    Err(fs::TryLockError::WouldBlock) => Ok(false),
                    Err(fs::TryLockError::Error(e)) => Err(e),
                },
            }
            .map_err(|e| format!("locking cache `{id}`: {e}"))?;
            if !taken {
                make_cache_dir(scratch, request, from)?;
                return Ok((scratch.to_path_buf(), None));
            }
            Some(file)
        }
    };
    if !dir.exists() {
        let fresh = caches.join(format!(".new-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&fresh);
        make_cache_dir(&fresh, request, from)?;
        // Another build may have made it meanwhile; the first one stays.
        if fs::rename(&fresh, &dir).is_err() {
            let _ = fs::remove_dir_all(&fresh);
        }
    }
    crate::usage::mark_used(&dir);
    Ok((dir, lock))
}

/// Creates an empty cache dir at `dir` (or a copy of `source` of the `from` stage) with the
/// requested mode (default 0755) and owner (default 0:0).
fn make_cache_dir(dir: &Path, request: &Mount, from: Option<&LayerStack>) -> Result<(), String> {
    match from {
        Some(stack) => {
            export_from(stack, request.source.as_deref().unwrap_or("/"), dir)?;
        }
        None => fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?,
    }
    let set_up = fs::set_permissions(
        dir,
        fs::Permissions::from_mode(request.mode.unwrap_or(0o755)),
    )
    .and_then(|()| {
        std::os::unix::fs::chown(dir, Some(request.uid.unwrap_or(0)), request.gid.or(Some(0)))
    });
    set_up.map_err(|e| format!("setting up cache dir {}: {e}", dir.display()))
}
