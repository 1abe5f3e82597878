//! The file ops the solver runs itself, through kiln-snapshot: COPY and ADD into a fresh layer
//! dir, and WORKDIR's directory. Owners are resolved through the image's /etc/passwd and
//! /etc/group as BuildKit's file operations resolve them.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kiln_dockerfile::IgnoreMatcher;
use kiln_snapshot::{Chmod, CopyOptions, LayerStack};
use sha2::{Digest as _, Sha256};

use crate::BuildError;
use crate::context::{self, BuildContext, ContextSource};
use crate::plan::{Copy, CopySource};
use crate::rules::{join_image_path, kept_by_parents, names_a_directory};

/// How errors of one op are reported: at its Dockerfile line.
pub(crate) trait OpErrors {
    /// A mistake the user can fix in the Dockerfile or the context.
    fn err(&self, message: String) -> BuildError;
    /// A path source that matches nothing in the context.
    fn missing(&self, source: &str, context: &Path) -> BuildError;
}

/// How a name that the image's /etc/passwd or /etc/group does not list is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownName {
    /// An error naming it (`COPY --chown`, as Docker's builders report it), unless the image
    /// has no such file at all, where only root exists and is taken as 0.
    Refused,
    /// uid 0 / the user's gid (WORKDIR under a `USER` the image lacks, as BuildKit's file
    /// operations do).
    Root,
}

/// Resolves `user[:group]` (names or numbers) through the image's /etc/passwd and /etc/group,
/// read and parsed as the sandbox reads them for RUN (regular files of bounded size only). A
/// name gets the gid passwd gives it; a number without a group is also its own gid, whatever
/// passwd says (BuildKit's file operations take a numeric user by id, unlike RUN); a name the
/// image does not list is taken as `unknown` says.
pub(crate) fn resolve_owner(
    spec: &str,
    stack: &LayerStack,
    unknown: UnknownName,
) -> Result<(u32, u32), String> {
    // None: the image has no such file.
    let read = |file: &str| -> Result<Option<String>, String> {
        match stack.lookup(Path::new(file), true) {
            Some(host) => kiln_sandbox::read_account_file(&host)
                .map_err(|err| format!("the image's {file} {err}")),
            None => Ok(None),
        }
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, user_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let passwd = read("/etc/passwd")?;
            match kiln_sandbox::passwd_entries(passwd.as_deref().unwrap_or_default())
                .find(|e| e.name == user)
            {
                Some(e) => (e.uid, e.gid),
                None if unknown == UnknownName::Refused && passwd.is_some() => {
                    return Err(format!("no user `{user}` in the image's /etc/passwd"));
                }
                None => (0, 0),
            }
        }
    };
    let gid = match group {
        None => user_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read("/etc/group")?;
                match kiln_sandbox::group_entries(groups.as_deref().unwrap_or_default())
                    .find(|e| e.name == g)
                {
                    Some(e) => e.gid,
                    None if unknown == UnknownName::Refused && groups.is_some() => {
                        return Err(format!("no group `{g}` in the image's /etc/group"));
                    }
                    None => user_gid,
                }
            }
        },
    };
    Ok((uid, gid))
}

/// GETs `url` (ADD's URLs, http(s) build contexts), failing on an answer that is not a
/// success. A server that stalls is given up on as a registry is: the blocking client applies
/// its timeout to the answer's head and to each read of the body, not to the whole download.
pub(crate) fn http_get(url: &str) -> Result<reqwest::blocking::Response, String> {
    let timeouts = kiln_registry::Timeouts::default();
    let response = reqwest::blocking::Client::builder()
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.read)
        .build()
        .and_then(|client| client.get(url).send())
        .map_err(|e| error_chain(&e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the server answered {status}"));
    }
    Ok(response)
}

/// An error and its causes (`connection refused` is a cause of reqwest's `error sending
/// request`), without the URL, which the caller names (and which may hold a password).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// Downloads `url` into the empty dir `dir` as Docker's ADD does: named after the last
/// component of the URL path, mode 0600, mtime from `Last-Modified`. Returns the file and the
/// digest of its content. With `checksum` (`sha256:<hex>`, checked when the plan was made), a
/// body with another digest is an error and nothing is kept.
pub(crate) fn download(
    url: &str,
    checksum: Option<&str>,
    dir: &Path,
) -> Result<(PathBuf, String), String> {
    let fail = |m: String| format!("ADD {url}: {m}");
    let response = http_get(url).map_err(fail)?;
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
    if let Some(expected) = checksum
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
    Ok((path, digest))
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

/// What one COPY/ADD reads besides the plan.
pub(crate) struct CopyInputs<'a> {
    pub context: &'a BuildContext,
    /// Per source of the COPY, what a context path source found in the context (as its cache
    /// key's digest covered it); empty for other sources.
    pub found: &'a [&'a [ContextSource]],
    /// The image below the destination.
    pub below: &'a LayerStack,
    /// The `--from` stage's or image's filesystem.
    pub from: Option<&'a LayerStack>,
    /// The URL sources already downloaded (before the cache lookup), by URL.
    pub downloaded: &'a [(String, PathBuf)],
    /// An empty scratch dir, removed after the op.
    pub scratch: &'a Path,
}

/// A COPY/ADD source ready on the host.
struct Resolved<'a> {
    host: PathBuf,
    /// Its name in a destination directory.
    name: String,
    /// What it is in the context (context sources only), for what the copy takes of it.
    context: Option<&'a ContextSource>,
    /// What `--parents` keeps of its path under the destination.
    kept_path: String,
    /// Whether ADD extracts it, if it turns out to be an archive.
    unpack: bool,
}

impl Resolved<'_> {
    fn new<'a>(host: PathBuf, name: String, unpack: bool) -> Resolved<'a> {
        Resolved {
            host,
            kept_path: name.clone(),
            name,
            context: None,
            unpack,
        }
    }
}

/// The paths in `stack` (relative to its root) that `pattern` matches and that exist: the
/// path itself, or for a pattern with `*`, `?` or `[...]` in a component, every match (in
/// name order).
fn stack_matches(stack: &LayerStack, pattern: &str) -> Vec<String> {
    let mut found: Vec<String> = vec![String::new()];
    for part in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let mut next = Vec::new();
        for prefix in found {
            if part == ".." {
                next.push(prefix.rsplit_once('/').map_or("", |(p, _)| p).to_string());
            } else if part.contains(['*', '?', '[']) {
                let dir = format!("/{prefix}");
                let mut names: Vec<String> = stack
                    .read_dir(Path::new(&dir))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| kiln_dockerfile::glob_match(part, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| join_rel(&prefix, &n)));
            } else {
                next.push(join_rel(&prefix, part));
            }
        }
        found = next;
    }
    found.retain(|m| stack.lookup(Path::new(&format!("/{m}")), true).is_some());
    found
}

fn join_rel(prefix: &str, name: &str) -> String {
    match prefix.is_empty() {
        true => name.to_string(),
        false => format!("{prefix}/{name}"),
    }
}

/// Builds the layer of one COPY/ADD in `layer` (an empty dir). Returns the number of entries
/// copied.
pub(crate) fn copy(
    copy: &Copy,
    inputs: &CopyInputs,
    layer: &Path,
    errors: &dyn OpErrors,
) -> Result<u64, BuildError> {
    let exclude = excludes(copy, errors)?;
    let chmod = copy
        .chmod
        .as_deref()
        .map(|v| Chmod::parse(v).map_err(|e| errors.err(format!("--chmod: {e}"))))
        .transpose()?;
    let owner = match &copy.chown {
        Some(spec) => Some(
            resolve_owner(spec, inputs.below, UnknownName::Refused)
                .map_err(|m| errors.err(format!("--chown={spec}: {m}")))?,
        ),
        None => None,
    };
    // A --link layer does not depend on what is below: parents get fixed metadata and the
    // destination is not looked up in the base.
    let empty = LayerStack::new(Vec::new());
    let copy_below = if copy.link { &empty } else { inputs.below };
    let from_name = copy.from.as_ref().map(|(_, name)| name.as_str());
    let scratch = inputs.scratch;

    let mut resolved: Vec<Resolved> = Vec::new();
    for (i, src) in copy.sources.iter().enumerate() {
        let own_dir = scratch.join(format!("src-{i}"));
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
                let host = match inputs.downloaded.iter().find(|(u, _)| u == url) {
                    Some((_, host)) => host.clone(),
                    None => {
                        download(url, copy.checksum.as_deref(), &own_dir)
                            .map_err(|m| errors.err(m))?
                            .0
                    }
                };
                let name = host.file_name().unwrap().to_string_lossy().into_owned();
                // Remote archives stay packed unless --unpack=true says otherwise.
                resolved.push(Resolved::new(host, name, copy.unpack == Some(true)));
            }
            CopySource::Path(src) => match inputs.from {
                None => {
                    for f in inputs.found[i] {
                        let name = f.rel.rsplit('/').next().unwrap_or("").to_string();
                        let mut r = Resolved::new(
                            f.host_path.clone(),
                            name,
                            copy.add && copy.unpack != Some(false),
                        );
                        r.kept_path = kept_by_parents(src, &f.rel);
                        r.context = Some(f);
                        resolved.push(r);
                    }
                }
                // .dockerignore is the context's: a stage or an image shows everything.
                Some(stack) => {
                    let present = stack_matches(stack, src);
                    if present.is_empty() {
                        return Err(errors.err(format!(
                            "{src}: not found in stage or image `{}`",
                            from_name.unwrap_or_default()
                        )));
                    }
                    for (n, rel) in present.into_iter().enumerate() {
                        let image_path = format!("/{rel}");
                        let host = own_dir.join(format!("export-{n}"));
                        stack
                            .export(Path::new(&image_path), &host)
                            .map_err(|e| errors.err(format!("{src}: {e}")))?;
                        let name = rel.rsplit('/').next().unwrap_or("").to_string();
                        let mut r =
                            Resolved::new(host, name, copy.add && copy.unpack != Some(false));
                        r.kept_path = kept_by_parents(src, &rel);
                        resolved.push(r);
                    }
                }
            },
        }
    }

    // Several matches of a wildcard onto a destination that is not a directory go to that one
    // path in turn, as in BuildKit: the last one wins.
    let dest_path = &copy.dest_path;
    let dest_is_dir = copy.parents
        || names_a_directory(&copy.dest)
        || copy_below
            .lookup(Path::new(dest_path), true)
            .is_some_and(|p| p.is_dir());
    let mut entries = 0;
    for (i, r) in resolved.iter().enumerate() {
        let is_dir = std::fs::metadata(&r.host)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        // What --exclude (and for the context, .dockerignore) lets through; a dropped archive
        // is not unpacked either. For the context this is the rule its digest followed.
        let takes = |inner: &Path| match r.context {
            Some(source) => inputs.context.copy_takes(source, exclude.as_ref(), inner),
            None if inner.as_os_str().is_empty() => {
                context::exclude_lets_source(exclude.as_ref(), &r.name, is_dir)
            }
            None => context::exclude_lets_inside(exclude.as_ref(), inner),
        };
        if !takes(Path::new("")) {
            continue;
        }
        let (target, dir_target) = if copy.parents {
            let kept = join_image_path(dest_path, &r.kept_path);
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
            (join_image_path(dest_path, &r.name), dest_path.clone())
        };
        if r.unpack && !is_dir {
            let unpacked = scratch.join(format!("unpacked-{i}"));
            std::fs::create_dir(&unpacked)
                .map_err(BuildError::io("creating an ADD scratch dir"))?;
            let extracted = kiln_snapshot::extract_archive(&r.host, &unpacked)
                .map_err(|e| errors.err(format!("extracting {}: {e}", r.name)))?;
            if extracted.is_some() {
                // An archive's entries keep their owners and modes, unless --chown.
                let opts = CopyOptions {
                    chown: owner,
                    keep_owner: true,
                    ..Default::default()
                };
                entries += kiln_snapshot::copy_into_layer(
                    &unpacked,
                    layer,
                    Path::new(&dir_target),
                    copy_below,
                    &opts,
                )
                .map_err(|e| errors.err(e.to_string()))?;
                continue;
            }
        }
        let opts = CopyOptions {
            chown: owner,
            // Files from a stage or an image keep their owners; the context's are root's.
            keep_owner: inputs.from.is_some(),
            chmod: chmod.clone(),
            filter: Some(&takes),
        };
        entries +=
            kiln_snapshot::copy_into_layer(&r.host, layer, Path::new(&target), copy_below, &opts)
                .map_err(|e| errors.err(e.to_string()))?;
    }
    Ok(entries)
}

/// The `--exclude` patterns of `copy` as one matcher, if it has any.
pub(crate) fn excludes(
    copy: &Copy,
    errors: &dyn OpErrors,
) -> Result<Option<IgnoreMatcher>, BuildError> {
    match copy.excludes.is_empty() {
        true => Ok(None),
        false => IgnoreMatcher::parse(&copy.excludes.join("\n"))
            .map(Some)
            .map_err(|e| errors.err(format!("--exclude: {e}"))),
    }
}

/// Makes WORKDIR `dir` in `layer` (an empty dir) unless the image below has it, owned by
/// `user` as BuildKit resolves it. Returns whether it made anything.
pub(crate) fn mkdir(
    dir: &str,
    user: &str,
    below: &LayerStack,
    layer: &Path,
    errors: &dyn OpErrors,
) -> Result<bool, BuildError> {
    if below
        .lookup(Path::new(dir), true)
        .is_some_and(|p| p.is_dir())
    {
        return Ok(false);
    }
    let owner = if user.is_empty() {
        (0, 0)
    } else {
        resolve_owner(user, below, UnknownName::Root)
            .map_err(|m| errors.err(format!("creating WORKDIR {dir} for USER {user}: {m}")))?
    };
    kiln_snapshot::mkdir_in_layer(layer, Path::new(dir), below, owner)
        .map_err(|e| errors.err(e.to_string()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let owner = |spec| resolve_owner(spec, &stack, UnknownName::Refused);
        assert_eq!(owner("builder").unwrap(), (1000, 1001));
        assert_eq!(owner("builder:staff").unwrap(), (1000, 50));
        assert_eq!(owner("42:43").unwrap(), (42, 43));
        assert_eq!(owner("42").unwrap(), (42, 42));
        // A number is its own gid even when passwd gives it another, as in BuildKit.
        assert_eq!(owner("1000").unwrap(), (1000, 1000));
        // --chown: a name the image lacks is an error naming it.
        assert!(owner("ghost").unwrap_err().contains("no user `ghost`"));
        assert!(
            owner("builder:ghosts")
                .unwrap_err()
                .contains("no group `ghosts`")
        );
        // WORKDIR under USER (BuildKit's file operations): a name the image lacks is root; a
        // group name it lacks leaves the user's group.
        let workdir = |spec| resolve_owner(spec, &stack, UnknownName::Root);
        assert_eq!(workdir("ghost").unwrap(), (0, 0));
        assert_eq!(workdir("builder:ghosts").unwrap(), (1000, 1001));
        // No /etc/passwd at all (FROM scratch): only root exists, for both.
        let empty = LayerStack::new(Vec::new());
        assert_eq!(
            resolve_owner("root", &empty, UnknownName::Refused).unwrap(),
            (0, 0)
        );
        assert_eq!(
            resolve_owner("ghost", &empty, UnknownName::Root).unwrap(),
            (0, 0)
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
            let _ = sender.send(resolve_owner("builder", &stack, UnknownName::Root));
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
        assert_eq!(
            resolve_owner("root:0", &stack, UnknownName::Refused),
            Ok((0, 0))
        );
        assert_eq!(
            resolve_owner("root:staff", &stack, UnknownName::Refused),
            Err("the image's /etc/group is a directory, not a regular file".to_string())
        );
    }

    struct Errors;

    impl OpErrors for Errors {
        fn err(&self, message: String) -> BuildError {
            BuildError::Io {
                context: message,
                source: std::io::Error::other("in the test"),
            }
        }

        fn missing(&self, source: &str, _: &Path) -> BuildError {
            self.err(format!("{source} is missing"))
        }
    }

    /// Everything below `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
                if path.is_dir() {
                    pending.push(path);
                }
            }
        }
        found.sort();
        found
    }

    /// What ADD takes of the context is what its cache key's digest covered: `.dockerignore`
    /// and `--exclude` decide both, and an archive `--exclude` drops is not unpacked (it
    /// used to be, while the digest left it out, so changing it kept the stale layer).
    #[test]
    fn add_takes_what_the_context_digest_covered() {
        let ctx = tempfile::tempdir().unwrap();
        let put = |rel: &str, content: &[u8]| {
            let path = ctx.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        };
        put("app/main.rs", b"fn main() {}");
        put("app/debug.log", b"log");
        put("app/secret.env", b"TOKEN=1");
        put(".dockerignore", b"**/*.env\n");
        let archive = |content: &[u8]| {
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, "unpacked.txt", content)
                .unwrap();
            tar.into_inner().unwrap()
        };
        put("pkg.tar", &archive(b"one"));
        let context =
            BuildContext::open(ctx.path(), Some(&ctx.path().join(".dockerignore"))).unwrap();
        let add = Copy {
            add: true,
            sources: vec![
                CopySource::Path("app".into()),
                CopySource::Path("pkg.tar".into()),
            ],
            from: None,
            dest: "/dst/".into(),
            dest_path: "/dst".into(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            unpack: None,
            excludes: vec!["*.log".into(), "*.tar".into()],
            checksum: None,
            source_date_epoch: None,
        };
        let found: Vec<Vec<ContextSource>> = ["app", "pkg.tar"].map(|p| context.sources(p)).into();
        let exclude = excludes(&add, &Errors).unwrap();
        let all: Vec<ContextSource> = ["app", "pkg.tar"]
            .iter()
            .flat_map(|p| context.sources(p))
            .collect();
        let digest = || context.digest(&all, exclude.as_ref()).unwrap().digest;
        let before = digest();

        let scratch = tempfile::tempdir().unwrap();
        let layer = tempfile::tempdir().unwrap();
        let below = LayerStack::new(Vec::new());
        let inputs = CopyInputs {
            context: &context,
            found: &found.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            below: &below,
            from: None,
            downloaded: &[],
            scratch: scratch.path(),
        };
        copy(&add, &inputs, layer.path(), &Errors).unwrap();
        assert_eq!(tree(layer.path()), ["dst", "dst/main.rs"]);

        // Neither the copy nor the digest looks at what they leave out.
        put("pkg.tar", &archive(b"two"));
        put("app/debug.log", b"more log");
        put("app/secret.env", b"TOKEN=2");
        assert_eq!(digest(), before);
        put("app/main.rs", b"fn main() { }");
        assert_ne!(digest(), before);
    }

    #[test]
    fn wildcards_match_in_a_stage() {
        let t = tempfile::tempdir().unwrap();
        for f in ["out/a.txt", "out/b.txt", "out/c.md", "other/d.txt"] {
            let p = t.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        let stack = LayerStack::new(vec![t.path().to_path_buf()]);
        assert_eq!(
            stack_matches(&stack, "/out/*.txt"),
            ["out/a.txt", "out/b.txt"]
        );
        assert_eq!(stack_matches(&stack, "*/d.txt"), ["other/d.txt"]);
        assert_eq!(stack_matches(&stack, "/out/c.md"), ["out/c.md"]);
        assert_eq!(
            stack_matches(&stack, "../../out/../other/*"),
            ["other/d.txt"]
        );
    }
}
