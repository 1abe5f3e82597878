//! Build secrets (`kiln build --secret`): their values, read once when the build starts; the
//! redaction of those values from everything kiln prints; and the files that `RUN
//! --mount=type=secret` mounts, kept in memory (on /dev/shm) where that is possible.
//!
//! Redaction rule: every line of a secret's value (split at newlines, surrounding whitespace
//! trimmed) that is at least [`MIN_REDACTED_CHARS`] characters long is replaced by
//! [`REDACTED`] wherever it occurs in a line kiln prints or puts in an error. Shorter lines are
//! left alone (they would redact ordinary words); a secret with no line that long gets a
//! warning instead. The form Rust's `{:?}` gives a line is redacted too (some sandbox errors
//! quote output that way). Encodings (base64, hex, URL escapes) of a value, and a value cut
//! across two lines of output, are not recognised.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::store::LockedDir;
use crate::{BuildError, Store};

/// Where the value of a build secret (`kiln build --secret`) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file on the host.
    File(PathBuf),
    /// An environment variable of kiln's process, by name.
    Env(String),
}

/// What a secret's value is replaced with.
pub const REDACTED: &str = "****";

/// Lines of a secret shorter than this (in characters) are not redacted: a one-letter secret
/// would otherwise blank out that letter everywhere.
pub const MIN_REDACTED_CHARS: usize = 4;

/// The largest secret kiln reads, as in BuildKit (500 KiB): a secret is a token or a key, and
/// `src=/dev/zero` should fail, not fill the memory.
const MAX_SECRET_BYTES: u64 = 500 << 10;

/// The values of a build's secrets, by id. A secret whose variable is unset counts as not
/// given, as in BuildKit. Its `Debug` shows the ids only.
#[derive(Default)]
pub struct Secrets {
    values: BTreeMap<String, Vec<u8>>,
    redactor: Redactor,
    unredactable: Vec<String>,
}

impl Secrets {
    /// Reads every secret now, so that the values redacted are the values mounted.
    pub fn load(sources: &BTreeMap<String, SecretSource>) -> Result<Secrets, BuildError> {
        let mut values = BTreeMap::new();
        for (id, source) in sources {
            let value = match source {
                SecretSource::Env(name) => match std::env::var_os(name) {
                    Some(value) => value.into_encoded_bytes(),
                    None => continue,
                },
                SecretSource::File(path) => read_limited(path).map_err(BuildError::io(format!(
                    "reading secret `{id}` from {}",
                    path.display()
                )))?,
            };
            if value.len() as u64 > MAX_SECRET_BYTES {
                return Err(BuildError::Io {
                    context: format!("secret `{id}`"),
                    source: std::io::Error::other(format!(
                        "larger than {} KiB, the most a secret may hold",
                        MAX_SECRET_BYTES >> 10
                    )),
                });
            }
            values.insert(id.clone(), value);
        }
        let mut patterns = Vec::new();
        let mut unredactable = Vec::new();
        for (id, value) in &values {
            let found = redaction_patterns(value);
            let blank = String::from_utf8_lossy(value).trim().is_empty();
            if found.is_empty() && !blank {
                unredactable.push(id.clone());
            }
            patterns.extend(found);
        }
        patterns.sort();
        patterns.dedup();
        Ok(Secrets {
            values,
            redactor: Redactor {
                patterns: patterns.into(),
            },
            unredactable,
        })
    }

    /// The value of secret `id`, if it was given.
    pub fn value(&self, id: &str) -> Option<&[u8]> {
        self.values.get(id).map(Vec::as_slice)
    }

    /// Redacts the values of these secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The ids of secrets too short to be redacted.
    pub fn unredactable(&self) -> &[String] {
        &self.unredactable
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("ids", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Reads at most one byte more than a secret may hold.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut value = Vec::new();
    File::open(path)?
        .take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut value)?;
    Ok(value)
}

/// The strings that stand for `value` in a line of output: each line of it, trimmed, that is
/// long enough; and each such line as Rust's `{:?}` escapes it, the form some sandbox errors
/// quote output in.
fn redaction_patterns(value: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(value);
    let mut patterns = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.chars().count() < MIN_REDACTED_CHARS {
            continue;
        }
        let quoted = format!("{line:?}");
        let escaped = &quoted[1..quoted.len() - 1];
        if escaped != line {
            patterns.push(escaped.to_string());
        }
        patterns.push(line.to_string());
    }
    patterns
}

/// Replaces secret values in text with [`REDACTED`]. Cheap to clone; the default redacts
/// nothing. Its `Debug` shows how many strings it hides, not what they are.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Never empty strings, and none holds a newline: a match never spans two lines.
    patterns: Arc<[String]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} patterns)", self.patterns.len())
    }
}

impl Redactor {
    /// `text` with every occurrence of a secret replaced; overlapping and adjacent occurrences
    /// become one [`REDACTED`].
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut hidden: Vec<(usize, usize)> = Vec::new();
        for pattern in self.patterns.iter() {
            let mut from = 0;
            while let Some(at) = text[from..].find(pattern.as_str()) {
                let start = from + at;
                hidden.push((start, start + pattern.len()));
                // The next occurrence may overlap this one.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if hidden.is_empty() {
            return Cow::Borrowed(text);
        }
        hidden.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut shown_from = 0;
        let mut ranges = hidden.into_iter().peekable();
        while let Some((start, mut end)) = ranges.next() {
            while let Some(&(next_start, next_end)) = ranges.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                ranges.next();
            }
            out.push_str(&text[shown_from..start]);
            out.push_str(REDACTED);
            shown_from = end;
        }
        out.push_str(&text[shown_from..]);
        Cow::Owned(out)
    }
}

/// The files `RUN --mount=type=secret` mounts. They live in one directory per build: on
/// /dev/shm when it is a tmpfs, so that no value is written to a disk, else in the store's
/// scratch dir of this build. Either way the directory is mode 0700 and held locked by this
/// process, and the next kiln to start removes it if this one was killed.
pub(crate) struct SecretFiles<'a> {
    store: &'a Store,
    dir: Mutex<Option<LockedDir>>,
}

/// Where secret files go when it is a tmpfs, and the prefix of a build's dir there.
const SHM: &str = "/dev/shm";
const SHM_PREFIX: &str = "kiln-secrets-";

impl<'a> SecretFiles<'a> {
    /// Also removes what killed builds left on /dev/shm.
    pub fn new(store: &'a Store) -> SecretFiles<'a> {
        if in_memory() {
            LockedDir::remove_stale(Path::new(SHM), SHM_PREFIX);
        }
        SecretFiles {
            store,
            dir: Mutex::new(None),
        }
    }

    /// Writes `value` into a new file with `mode` and owner `uid:gid`; the file is removed
    /// when the returned path is dropped. Errors are meant for the user.
    pub fn write(
        &self,
        value: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<tempfile::TempPath, String> {
        let mut held = self.dir.lock().unwrap();
        let dir: &LockedDir = match &mut *held {
            Some(dir) => dir,
            empty => empty.insert(self.create_dir()?),
        };
        let fail =
            |e: std::io::Error| format!("preparing a secret file in {}: {e}", dir.path().display());
        let mut file = tempfile::Builder::new()
            .prefix("secret-")
            .tempfile_in(dir.path())
            .map_err(fail)?;
        file.write_all(value).map_err(fail)?;
        let path = file.into_temp_path();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(fail)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(fail)?;
        Ok(path)
    }

    fn create_dir(&self) -> Result<LockedDir, String> {
        let (base, prefix) = match in_memory() {
            true => (Path::new(SHM), SHM_PREFIX),
            false => (self.store.scratch(), "secrets-"),
        };
        LockedDir::create(base, prefix)
            .map_err(|e| format!("creating a dir for secrets in {}: {e}", base.display()))
    }
}

/// Whether /dev/shm is a tmpfs, which keeps files in memory only.
fn in_memory() -> bool {
    nix::sys::statfs::statfs(SHM)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        let sources = values
            .iter()
            .enumerate()
            .map(|(n, value)| {
                let path = dir.path().join(n.to_string());
                fs::write(&path, value).unwrap();
                (format!("s{n}"), SecretSource::File(path))
            })
            .collect();
        Secrets::load(&sources).unwrap()
    }

    #[test]
    fn every_occurrence_in_a_line_is_replaced() {
        let secrets = redactor(&["hunter2x\n"]);
        let r = secrets.redactor();
        assert_eq!(r.redact("pw=hunter2x;again:hunter2x"), "pw=****;again:****");
        assert_eq!(r.redact("nothing here"), "nothing here");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn overlapping_secrets_leave_no_part_visible() {
        let secrets = redactor(&["abcdef", "defghi", "abab"]);
        let r = secrets.redactor();
        assert_eq!(r.redact("xabcdefghiy"), "x****y");
        // Occurrences of one secret that overlap each other.
        assert_eq!(r.redact("ababab"), "****");
    }

    #[test]
    fn each_long_enough_line_of_a_multi_line_secret_is_redacted() {
        let secrets =
            redactor(&["-----BEGIN KEY-----\r\n  c2VjcmV0bGluZQ==  \nab\n-----END KEY-----\n"]);
        let r = secrets.redactor();
        assert_eq!(r.redact("key: c2VjcmV0bGluZQ== end"), "key: **** end");
        assert_eq!(r.redact("-----END KEY-----"), "****");
        assert_eq!(r.redact("ab stays"), "ab stays", "too short to redact");
        assert!(secrets.unredactable().is_empty());
    }

    #[test]
    fn short_secrets_are_reported_not_redacted() {
        let secrets = redactor(&["abc\n", "   \n", "long enough"]);
        assert_eq!(secrets.unredactable(), ["s0".to_string()]);
        assert_eq!(secrets.redactor().redact("abc"), "abc");
    }

    #[test]
    fn debug_quoted_secrets_are_redacted_too() {
        let secrets = redactor(&["say \"hi\"\\now, it's\t"]);
        let quoted = format!("{:?}", "x say \"hi\"\\now, it's");
        assert_eq!(secrets.redactor().redact(&quoted), "\"x ****\"");
    }

    #[test]
    fn unicode_around_and_in_secrets_is_kept_whole() {
        let secrets = redactor(&["ключ-секрет"]);
        assert_eq!(secrets.redactor().redact("é ключ-секрет ü"), "é **** ü");
    }

    #[test]
    fn debug_output_shows_no_value() {
        let secrets = redactor(&["do-not-print-me"]);
        let shown = format!("{secrets:?} {:?}", secrets.redactor());
        assert!(!shown.contains("do-not-print-me"), "{shown}");
        assert!(shown.contains("s0"), "{shown}");
    }

    #[test]
    fn oversized_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'x'; (MAX_SECRET_BYTES + 1) as usize]).unwrap();
        let sources = [("big".to_string(), SecretSource::File(path))].into();
        let err = Secrets::load(&sources).unwrap_err().to_string();
        assert!(err.contains("`big`") && err.contains("500 KiB"), "{err}");
    }
}
