//! The content digest of what a COPY or ADD takes from the build context, for its cache key.
//!
//! # Calling it
//!
//! ```ignore
//! // Once per build: keep the per-context record under the kiln root.
//! let context = BuildContext::open(&dir, ignore_file)?.with_records_in(&root.join("cache/context"));
//! // For one COPY/ADD: every context source it names, resolved as the copy resolves them.
//! let mut sources = Vec::new();
//! for pattern in &context_patterns {
//!     sources.extend(context.sources(pattern)); // empty: "not found", as today
//! }
//! let exclude: Option<IgnoreMatcher> = /* the --exclude patterns, as the copy uses them */;
//! let hashed = context.digest(&sources, exclude.as_ref())?; // .digest, and .stats: what it read
//! ```
//!
//! [`BuildContext::digest`] takes the sources in the order the copy applies them (a later one
//! overwrites an earlier one, so the order is part of the digest), and the `--exclude` matcher.
//! The copy must take exactly what the digest covered: filter its walk with
//! [`BuildContext::copy_takes`] (`.dockerignore` and `--exclude` in one predicate). What the
//! copy does with the files (`--chown`, `--chmod`, `--link`, `--parents`, the destination, ADD's
//! unpacking) belongs to the op's definition, not to this digest. Safe to call from several
//! threads at once; each call stats the entries in parallel and blocks until done.
//!
//! # What the digest covers
//!
//! Following BuildKit's `contenthash` where it is sound: for each source, every entry the copy
//! takes (the source itself, and for a directory everything below it that `.dockerignore` and
//! `--exclude` let through), in the order of a depth-first walk with names sorted by their
//! bytes, each with what reaches the layer:
//! - its path relative to the context root (BuildKit hashes only base names of pattern
//!   matches; the whole path is never ambiguous),
//! - its type and permission bits (`mode & 0o7777`; not for symlinks, whose mode the layer
//!   does not keep), a device's major/minor,
//! - a file's contents, a symlink's target, the extended attributes the copy carries
//!   (overlayfs' own excluded),
//! - for a file hard-linked to one taken earlier from the same source, the path of that one
//!   (the copy makes the same hard link).
//!
//! Not covered, because it does not reach the layer or is not the context's: modification
//! times (BuildKit leaves them out too, so a fresh checkout still hits), owners (context files
//! are copied as 0:0 unless `--chown`), sockets and whiteout devices (the copy skips them),
//! and anything `.dockerignore`d or `--exclude`d, which is never even opened. The top
//! symlink of a source is followed, as COPY follows it ([`BuildContext::sources`] resolves it
//! inside the context); symlinks below a directory source are hashed as links, never followed.
//!
//! # Incremental
//!
//! With a record directory, each entry's stat stamp (size, mtime, ctime, inode, device) and
//! its payload digest (contents or link target, and xattrs) are kept in a record per context
//! (see `context_record`). An entry whose stamp is unchanged is not read again: a rebuild with
//! nothing changed costs one `lstat` per entry, spread over the cores. An entry changed in
//! the last two seconds before hashing is not recorded (its next change could keep the same
//! coarse timestamps), so it is read again next time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_dockerfile::IgnoreMatcher;
use kiln_oci::Digest;
use nix::fcntl::OFlag;
use sha2::{Digest as _, Sha256};

use crate::BuildError;
use crate::context::{BuildContext, ContextSource};
use crate::context_record::{self as record, Recorded, Stamp};

/// Entries handed to a hashing thread at a time.
const CHUNK: usize = 256;
/// More threads than this only contend for the disk.
const MAX_THREADS: usize = 8;
/// How recent a change may be and still be recorded: timestamps come from a coarse clock
/// (a kernel tick; a second on some filesystems), so a file changed twice within one tick
/// keeps its stamp. An entry changed this close to the hashing is read again next time.
const RACY_WINDOW_NS: i128 = 2_000_000_000;
/// How files are opened for hashing: never through a final symlink, and without blocking on
/// a FIFO that replaced the file since its `lstat`.
const NOFOLLOW_NONBLOCK: i32 = OFlag::O_NOFOLLOW.bits() | OFlag::O_NONBLOCK.bits();

/// The digest of what a COPY takes from the context, and what computing it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextDigest {
    pub digest: Digest,
    pub stats: HashStats,
}

/// What one [`BuildContext::digest`] looked at and read: shown with the step, so a user sees
/// that a rebuild read only what changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Entries looked at (one `lstat` each).
    pub entries: u64,
    /// Regular files whose contents were read, because the record had no matching stamp.
    pub files_read: u64,
    pub bytes_read: u64,
}

/// The hashing state a [`BuildContext`] owns.
pub(crate) struct ContextHasher {
    /// The record file, if the context keeps one.
    record: Option<PathBuf>,
    /// Rewrites of the record from this process, one at a time, so none loses another's lines.
    rewriting: Mutex<()>,
    pub(crate) racy_window_ns: i128,
}

/// An entry the copy takes, in walk order.
struct Entry {
    /// Index of its source.
    source: usize,
    /// Its path relative to the context root, `/`-separated, exactly as the filesystem has it.
    rel: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Kind {
    fn of(ft: fs::FileType) -> Kind {
        if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        }
    }

    fn tag(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::CharDevice => b'c',
            Kind::BlockDevice => b'b',
            Kind::Fifo => b'p',
            Kind::Socket => b's',
        }
    }
}

/// What one entry contributes, from a fresh `lstat` and the record or a read.
struct Examined {
    kind: Kind,
    mode: u32,
    rdev: u64,
    nlink: u64,
    inode: (u64, u64),
    /// Digest of what is not in the stat: contents or link target, and xattrs.
    payload: [u8; 32],
    /// What the record says about the entry from now on.
    recorded: Option<Recorded>,
    /// The bytes read from a regular file whose stamp the record did not have.
    bytes_read: Option<u64>,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// At most 200 characters of a context path, for an error message.
fn shown(rel: &[u8]) -> String {
    let text = String::from_utf8_lossy(rel);
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

fn hash_error(rel: &[u8]) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        context: format!("hashing `{}` in the build context", shown(rel)),
        source,
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    match dir.is_empty() {
        true => name.to_vec(),
        false => [dir, b"/", name].concat(),
    }
}

/// Writes a length-prefixed field, so that no two different sequences hash alike.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

impl ContextHasher {
    pub(crate) fn new(record: Option<PathBuf>) -> ContextHasher {
        ContextHasher {
            record,
            rewriting: Mutex::new(()),
            racy_window_ns: RACY_WINDOW_NS,
        }
    }

    /// See [`BuildContext::digest`].
    pub(crate) fn digest(
        &self,
        context: &BuildContext,
        sources: &[ContextSource],
        exclude: Option<&IgnoreMatcher>,
    ) -> Result<ContextDigest, BuildError> {
        let started_ns = now_ns();
        let entries = walk(context, sources, exclude)?;
        let keys: Vec<Vec<u8>> = entries.iter().map(|e| record::key_of(&e.rel)).collect();
        // The record's keys in its order, each once; `slot[i]`: where entry i's key is. One
        // source's walk is in that order already, which the sort notices.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let mut wanted: Vec<&[u8]> = Vec::with_capacity(order.len());
        let mut slot = vec![0; entries.len()];
        for i in order {
            if wanted.last() != Some(&keys[i].as_slice()) {
                wanted.push(&keys[i]);
            }
            slot[i] = wanted.len() - 1;
        }
        let (old, corrupt) = match &self.record {
            Some(path) => record::lookup(path, &wanted),
            None => (vec![None; wanted.len()], false),
        };
        let known: Vec<Option<Recorded>> = slot.iter().map(|&s| old[s]).collect();
        let examined = self.examine_all(context.root(), &entries, &known, started_ns)?;
        let mut stats = HashStats {
            entries: entries.len() as u64,
            ..HashStats::default()
        };
        for bytes in examined.iter().filter_map(|ex| ex.bytes_read) {
            stats.files_read += 1;
            stats.bytes_read += bytes;
        }
        let digest = ContextDigest {
            digest: seal(sources, &entries, &examined),
            stats,
        };

        let Some(path) = &self.record else {
            return Ok(digest);
        };
        let mut updates: Vec<(&[u8], Option<Recorded>)> =
            wanted.iter().map(|k| (*k, None)).collect();
        for (&s, ex) in slot.iter().zip(&examined) {
            updates[s].1 = ex.recorded;
        }
        let changed = updates.iter().zip(&old).any(|((_, new), old)| new != old);
        if corrupt || changed {
            let root = context.root();
            // An entry no COPY looked at this time stays while its stamp is unchanged.
            let still_same = |key: &[u8], recorded: &Recorded| {
                fs::symlink_metadata(root.join(record::rel_of(key)))
                    .is_ok_and(|md| Stamp::of(&md) == recorded.stamp)
            };
            let _one_writer = self
                .rewriting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            record::rewrite(path, &updates, &still_same).map_err(|source| BuildError::Io {
                context: format!("writing the build context record {}", path.display()),
                source,
            })?;
        }
        Ok(digest)
    }

    /// Stats (and where the record has no matching stamp, reads) every entry, on up to
    /// [`MAX_THREADS`] threads that take [`CHUNK`] entries at a time.
    fn examine_all(
        &self,
        root: &Path,
        entries: &[Entry],
        known: &[Option<Recorded>],
        started_ns: i128,
    ) -> Result<Vec<Examined>, BuildError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS)
            .min(entries.len().div_ceil(CHUNK))
            .max(1);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || -> Result<Vec<(usize, Vec<Examined>)>, BuildError> {
            let mut done = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while !failed.load(Ordering::Relaxed) {
                let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                if start >= entries.len() {
                    break;
                }
                let end = (start + CHUNK).min(entries.len());
                let mut chunk = Vec::with_capacity(end - start);
                for i in start..end {
                    let rel = &entries[i].rel;
                    let host = root.join(OsStr::from_bytes(rel));
                    match self.examine(&host, known[i].as_ref(), started_ns, &mut buf) {
                        Ok(ex) => chunk.push(ex),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            return Err(hash_error(rel)(e));
                        }
                    }
                }
                done.push((start, chunk));
            }
            Ok(done)
        };
        let mut chunks = Vec::new();
        if threads == 1 {
            chunks = work()?;
        } else {
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            });
            for result in results {
                chunks.extend(result?);
            }
        }
        chunks.sort_unstable_by_key(|(start, _)| *start);
        Ok(chunks.into_iter().flat_map(|(_, chunk)| chunk).collect())
    }

    /// One entry: its stat, and its payload from the record if the stamp matches, else read.
    fn examine(
        &self,
        host: &Path,
        known: Option<&Recorded>,
        started_ns: i128,
        buf: &mut [u8],
    ) -> io::Result<Examined> {
        let mut md = fs::symlink_metadata(host)?;
        let kind = Kind::of(md.file_type());
        let mut bytes_read = None;
        let (payload, recorded) = match known {
            Some(known) if known.stamp == Stamp::of(&md) => (known.payload, Some(*known)),
            _ => {
                let mut h = Sha256::new();
                h.update([kind.tag()]);
                match kind {
                    Kind::File => {
                        let (opened, content, read) = read_file(host, &md, buf)?;
                        // The stamp that goes with what was read is the open file's.
                        md = opened;
                        h.update(content);
                        bytes_read = Some(read);
                    }
                    Kind::Symlink => field(&mut h, fs::read_link(host)?.as_os_str().as_bytes()),
                    _ => {}
                }
                let xattrs = kiln_snapshot::copied_xattrs(host)?;
                h.update((xattrs.len() as u64).to_le_bytes());
                for (name, value) in &xattrs {
                    field(&mut h, name);
                    field(&mut h, value);
                }
                let payload: [u8; 32] = h.finalize().into();
                let stamp = Stamp::of(&md);
                let settled = stamp.mtime_ns.max(stamp.ctime_ns) < started_ns - self.racy_window_ns;
                (payload, settled.then_some(Recorded { stamp, payload }))
            }
        };
        Ok(Examined {
            kind,
            mode: md.mode() & 0o7777,
            rdev: md.rdev(),
            nlink: md.nlink(),
            inode: (md.dev(), md.ino()),
            payload,
            recorded,
            bytes_read,
        })
    }
}

/// Reads a regular file through a descriptor that cannot be a symlink, a FIFO (which would
/// block) or another file than the one stat saw; returns its fstat, the digest of its
/// contents and how many bytes it had.
fn read_file(
    host: &Path,
    seen: &fs::Metadata,
    buf: &mut [u8],
) -> io::Result<(fs::Metadata, [u8; 32], u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW_NONBLOCK)
        .open(host)?;
    let md = file.metadata()?;
    if !md.is_file() || (md.dev(), md.ino()) != (seen.dev(), seen.ino()) {
        return Err(io::Error::other("it was replaced while kiln read it"));
    }
    let mut h = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = read_some(&mut file, buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((md, h.finalize().into(), total))
}

fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Lists what the copy takes from each source, depth first with sorted names: the order in
/// which the copy walks, so hard links are "first copies" in both. An explicit stack, so a
/// deep tree costs memory, not call stack.
fn walk(
    context: &BuildContext,
    sources: &[ContextSource],
    exclude: Option<&IgnoreMatcher>,
) -> Result<Vec<Entry>, BuildError> {
    let mut entries = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let top = source.rel.as_bytes();
        let md = fs::symlink_metadata(&source.host_path).map_err(hash_error(top))?;
        if !context.takes_source(source, exclude, md.is_dir()) {
            continue;
        }
        // (path inside the source, whether it is a directory to descend into)
        let mut pending: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), md.is_dir())];
        while let Some((inner, is_dir)) = pending.pop() {
            let rel = match inner.is_empty() {
                true => top.to_vec(),
                false => join(top, &inner),
            };
            if is_dir {
                let dir = source.host_path.join(OsStr::from_bytes(&inner));
                let mut children = Vec::new();
                for child in fs::read_dir(&dir).map_err(hash_error(&rel))? {
                    let child = child.map_err(hash_error(&rel))?;
                    let is_dir = child.file_type().map_err(hash_error(&rel))?.is_dir();
                    children.push((child.file_name().into_vec(), is_dir));
                }
                children.sort_unstable();
                for (name, is_dir) in children.into_iter().rev() {
                    let inner = join(&inner, &name);
                    if context.takes_inside(source, exclude, Path::new(OsStr::from_bytes(&inner))) {
                        pending.push((inner, is_dir));
                    }
                }
            }
            entries.push(Entry { source: index, rel });
        }
    }
    Ok(entries)
}

/// The digest of the walk: a length-prefixed serialization of every entry, in walk order.
fn seal(sources: &[ContextSource], entries: &[Entry], examined: &[Examined]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"kiln context digest v1\n");
    let mut current = None;
    // First path of each multiply-linked inode in the current source.
    let mut first_links: HashMap<(u64, u64), &[u8]> = HashMap::new();
    for (entry, ex) in entries.iter().zip(examined) {
        let whiteout = ex.kind == Kind::CharDevice && ex.rdev == 0;
        if ex.kind == Kind::Socket || whiteout {
            continue;
        }
        if current != Some(entry.source) {
            current = Some(entry.source);
            first_links.clear();
            h.update(b"S");
            field(&mut h, sources[entry.source].rel.as_bytes());
        }
        h.update(b"E");
        field(&mut h, &entry.rel);
        h.update([ex.kind.tag()]);
        if ex.kind != Kind::Symlink {
            h.update(ex.mode.to_le_bytes());
        }
        if matches!(ex.kind, Kind::CharDevice | Kind::BlockDevice) {
            h.update(ex.rdev.to_le_bytes());
        }
        let linked_to = match ex.kind != Kind::Dir && ex.nlink > 1 {
            true => Some(*first_links.entry(ex.inode).or_insert(&entry.rel)),
            false => None,
        };
        match linked_to {
            Some(first) if first != entry.rel.as_slice() => {
                h.update(b"H");
                field(&mut h, first);
            }
            _ => {
                h.update(b"P");
                h.update(ex.payload);
            }
        }
    }
    format!("sha256:{}", hex::encode(h.finalize()))
        .parse()
        .expect("a sha256 in hex is a digest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::Duration;

    /// Opens `dir` as a context (with its `.dockerignore`, if any), keeping its record in
    /// `records` if given. Files a test just wrote count as settled: each test waits between
    /// a change and the next.
    fn open(dir: &Path, records: Option<&Path>) -> BuildContext {
        let mut context = BuildContext::open(dir, Some(&dir.join(".dockerignore"))).unwrap();
        if let Some(records) = records {
            context = context.with_records_in(records);
        }
        context.hasher.racy_window_ns = 0;
        context
    }

    fn hashed(context: &BuildContext, patterns: &[&str], exclude: Option<&str>) -> ContextDigest {
        let sources: Vec<ContextSource> =
            patterns.iter().flat_map(|p| context.sources(p)).collect();
        let exclude = exclude.map(|e| IgnoreMatcher::parse(e).unwrap());
        context.digest(&sources, exclude.as_ref()).unwrap()
    }

    fn digest(context: &BuildContext, patterns: &[&str], exclude: Option<&str>) -> Digest {
        hashed(context, patterns, exclude).digest
    }

    fn put(dir: &Path, rel: &str, content: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// Long enough for the next change to get new timestamps from the kernel's coarse clock.
    fn tick() {
        std::thread::sleep(Duration::from_millis(30));
    }

    const FILES: [(&str, &str); 4] = [
        ("app/main.rs", "fn main() {}"),
        ("app/lib/util.rs", "pub fn util() {}"),
        ("app/README", "read me"),
        ("top.txt", "top"),
    ];

    #[test]
    fn the_same_files_give_the_same_digest_whatever_their_order_and_times() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (rel, content) in FILES {
            put(one.path(), rel, content);
        }
        for (rel, content) in FILES.iter().rev() {
            put(two.path(), rel, content);
        }
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let file = File::options().write(true).open(two.path().join("top.txt"));
        file.unwrap().set_modified(old).unwrap();
        let (a, b) = (open(one.path(), None), open(two.path(), None));
        assert_eq!(digest(&a, &["."], None), digest(&b, &["."], None));
        assert_eq!(
            digest(&a, &["app", "*.txt"], None),
            digest(&b, &["app", "*.txt"], None)
        );
        assert_ne!(
            digest(&a, &["app", "*.txt"], None),
            digest(&a, &["*.txt", "app"], None)
        );
    }

    #[test]
    fn a_byte_a_mode_a_link_target_or_a_name_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (rel, content) in FILES {
            put(root, rel, content);
        }
        symlink("main.rs", root.join("app/link")).unwrap();
        let records = tempfile::tempdir().unwrap();
        let context = open(root, Some(records.path()));
        let mut seen = vec![digest(&context, &["app"], None)];
        let mut changed = |what: &str, change: &dyn Fn()| {
            tick();
            change();
            // Both with the record and from scratch.
            let now = digest(&context, &["app"], None);
            assert_eq!(now, digest(&open(root, None), &["app"], None), "{what}");
            assert!(!seen.contains(&now), "{what} did not change the digest");
            seen.push(now);
        };
        changed("a byte", &|| put(root, "app/main.rs", "fn main() {} "));
        changed("a mode", &|| {
            let mode = fs::Permissions::from_mode(0o755);
            fs::set_permissions(root.join("app/main.rs"), mode).unwrap();
        });
        changed("a directory's mode", &|| {
            let mode = fs::Permissions::from_mode(0o700);
            fs::set_permissions(root.join("app/lib"), mode).unwrap();
        });
        changed("a link target", &|| {
            fs::remove_file(root.join("app/link")).unwrap();
            symlink("README", root.join("app/link")).unwrap();
        });
        changed("a name", &|| {
            fs::rename(root.join("app/README"), root.join("app/README.md")).unwrap();
        });
        changed("a type", &|| {
            fs::remove_file(root.join("app/README.md")).unwrap();
            fs::create_dir(root.join("app/README.md")).unwrap();
        });
        changed("a hard link", &|| {
            fs::hard_link(root.join("app/main.rs"), root.join("app/copy.rs")).unwrap();
        });
        changed("a copy instead of a hard link", &|| {
            fs::remove_file(root.join("app/copy.rs")).unwrap();
            fs::copy(root.join("app/main.rs"), root.join("app/copy.rs")).unwrap();
        });
    }

    #[test]
    fn dockerignored_and_excluded_files_never_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (rel, content) in FILES {
            put(root, rel, content);
        }
        put(root, "app/secret.env", "TOKEN=1");
        put(root, "app/debug.log", "log 1");
        put(root, ".dockerignore", "**/*.env\n");
        let context = open(root, None);
        let before = (
            digest(&context, &["."], Some("**/*.log")),
            digest(&context, &["app"], Some("**/*.log")),
            digest(&context, &["app/*"], Some("**/*.log")),
        );
        let plain = digest(&context, &["app"], None);
        tick();
        put(root, "app/secret.env", "TOKEN=2");
        put(root, "app/debug.log", "log 2");
        let after = (
            digest(&context, &["."], Some("**/*.log")),
            digest(&context, &["app"], Some("**/*.log")),
            digest(&context, &["app/*"], Some("**/*.log")),
        );
        assert_eq!(before, after);
        assert_ne!(
            plain,
            digest(&context, &["app"], None),
            "the log counts without --exclude"
        );
    }

    #[test]
    fn a_rewrite_that_keeps_size_and_mtime_is_seen_by_its_ctime() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "a.txt", "hello");
        let records = tempfile::tempdir().unwrap();
        let context = open(root, Some(records.path()));
        let first = digest(&context, &["a.txt"], None);
        let before = fs::metadata(root.join("a.txt")).unwrap();
        tick();
        // `touch -r`: same size, mtime put back.
        fs::write(root.join("a.txt"), "jello").unwrap();
        let file = File::options()
            .write(true)
            .open(root.join("a.txt"))
            .unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
        let after = fs::metadata(root.join("a.txt")).unwrap();
        assert_eq!(
            (before.len(), before.modified().unwrap()),
            (after.len(), after.modified().unwrap())
        );
        let again = hashed(&context, &["a.txt"], None);
        assert_ne!(first, again.digest);
        assert_eq!(again.stats.files_read, 1);
    }

    #[test]
    fn a_rebuild_reads_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..600 {
            put(root, &format!("d{}/f{i}", i % 7), &format!("file {i}"));
        }
        let records = tempfile::tempdir().unwrap();
        let first_build = open(root, Some(records.path()));
        let first = hashed(&first_build, &["."], None);
        assert_eq!(first.stats.files_read, 600);
        let first = first.digest;
        // A later build, in a new process: all from the record.
        let second_build = open(root, Some(records.path()));
        let second = hashed(&second_build, &["."], None);
        assert_eq!(second.digest, first);
        let stats = second.stats;
        assert_eq!((stats.entries, stats.files_read), (608, 0));
        let written = fs::metadata(record::record_path(records.path(), first_build.root()));
        tick();
        put(root, "d3/f10", "changed");
        let third_build = open(root, Some(records.path()));
        let third = hashed(&third_build, &["."], None);
        assert_ne!(third.digest, first);
        assert_eq!(third.digest, digest(&open(root, None), &["."], None));
        assert_eq!(third.stats.files_read, 1);
        let rewritten = fs::metadata(record::record_path(records.path(), first_build.root()));
        assert_ne!(
            written.unwrap().modified().unwrap(),
            rewritten.unwrap().modified().unwrap()
        );
    }

    #[test]
    fn a_corrupt_record_is_rebuilt_without_complaint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (rel, content) in FILES {
            put(root, rel, content);
        }
        let records = tempfile::tempdir().unwrap();
        let expected = digest(&open(root, None), &["."], None);
        let record_file = record::record_path(records.path(), &root.canonicalize().unwrap());
        for garbage in [
            &b"\0\xff garbage"[..],
            b"kiln-context-record v1\n/top.txt 12 x\n",
            b"",
        ] {
            fs::write(&record_file, garbage).unwrap();
            let context = open(root, Some(records.path()));
            let repaired = hashed(&context, &["."], None);
            assert_eq!(
                (repaired.digest, repaired.stats.files_read),
                (expected.clone(), 4)
            );
            // Rewritten whole: the next build reads nothing.
            let context = open(root, Some(records.path()));
            let again = hashed(&context, &["."], None);
            assert_eq!(
                (again.digest, again.stats.files_read),
                (expected.clone(), 0)
            );
        }
    }

    #[test]
    fn symlinks_inside_a_source_are_hashed_as_links_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        put(outside.path(), "secret", "host secret 1");
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "app/main.rs", "fn main() {}");
        symlink(outside.path().join("secret"), dir.path().join("app/escape")).unwrap();
        symlink(outside.path(), dir.path().join("app/escape-dir")).unwrap();
        let context = open(dir.path(), None);
        let before = hashed(&context, &["app"], None);
        assert_eq!(before.stats.bytes_read, 12, "only main.rs was read");
        tick();
        put(outside.path(), "secret", "host secret 2");
        put(outside.path(), "new", "more");
        let after = hashed(&context, &["app"], None);
        assert_eq!((after.digest, after.stats.bytes_read), (before.digest, 12));
    }

    #[test]
    fn concurrent_builds_share_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..300 {
            put(root, &format!("d{}/f{i}", i % 5), &format!("file {i}"));
        }
        let records = tempfile::tempdir().unwrap();
        let expected = digest(&open(root, None), &["."], None);
        std::thread::scope(|scope| {
            for pattern in [".", "d1", "d2", "."] {
                let context = open(root, Some(records.path()));
                let expected = &expected;
                scope.spawn(move || {
                    let got = digest(&context, &[pattern], None);
                    assert!(pattern != "." || got == *expected);
                });
            }
        });
        // Whichever writer won, the record is whole and right.
        let context = open(root, Some(records.path()));
        assert_eq!(digest(&context, &["."], None), expected);
        let leftovers = fs::read_dir(records.path()).unwrap().count();
        assert_eq!(leftovers, 1, "one record, no temp files");
    }

    #[test]
    fn a_deep_tree_needs_no_deep_stack() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for _ in 0..600 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), "bottom").unwrap();
        let plain = open(dir.path(), None);
        put(dir.path(), "ignored/.dockerignore", "d\n!d/**/f\n");
        let ignoring =
            BuildContext::open(dir.path(), Some(&dir.path().join("ignored/.dockerignore")));
        let ignoring = ignoring.unwrap();
        let small_stack = std::thread::Builder::new().stack_size(64 * 1024);
        let hashed = small_stack
            .spawn(move || {
                digest(&plain, &["d"], None);
                // The re-included file deep down keeps `d` in the context.
                ignoring.sources("d").len()
            })
            .unwrap()
            .join();
        assert_eq!(hashed.ok(), Some(1), "a 64 KiB stack was enough");
    }
}
