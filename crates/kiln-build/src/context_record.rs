//! The per-context record that makes context hashing incremental: for each entry of the
//! context that a COPY read, its stat stamp (size, mtime, ctime, inode, device) and the digest
//! of what kiln read from it (see [`crate::context_hash`]). While an entry's stamp is unchanged,
//! its digest is taken from here instead of reading the file again.
//!
//! The record is a text file, one line per entry, sorted by path component by component (the
//! order of a depth-first walk with sorted names), so that it is read and rewritten as a
//! stream, a line at a time, without holding it in memory:
//!
//! ```text
//! kiln-context-record v1
//! /src/main.rs 5d41402abc4b2a76b9719d911017c592b1c4b5d41402abc4b2a76b9719d911 120 1700000000000000000 1700000000000000000 131 2049
//! ```
//!
//! (path with `%XX` escapes, payload digest, size, mtime ns, ctime ns, inode, device). A
//! record is replaced as a whole by writing a temp file next to it and renaming it over, so a
//! reader sees the old one or the new one, never half of one; two builds that write at once:
//! the last rename wins. A missing or unreadable record is an empty one; reading stops
//! quietly at the first malformed or out-of-order line (what came before is still good: every
//! line is checked against a fresh stat before it is used), and the caller rewrites it.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const HEADER: &[u8] = b"kiln-context-record v1";
/// A path is at most 4 KiB on Linux and escapes at most triple it: a longer line is corrupt.
const MAX_LINE: u64 = 16 * 1024;
/// Temp files of writers that were killed before their rename are removed when this old.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What stat says about an entry: while all of it stays the same, its content is taken to be
/// the same. The ctime catches rewrites that restore size and mtime (`touch -r`), the inode
/// and device a file replaced by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
}

impl Stamp {
    pub(crate) fn of(md: &fs::Metadata) -> Stamp {
        let ns = |sec: i64, nsec: i64| i128::from(sec) * 1_000_000_000 + i128::from(nsec);
        Stamp {
            size: md.size(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            dev: md.dev(),
        }
    }
}

/// One entry of the record: the stamp the entry had when `payload` was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub stamp: Stamp,
    pub payload: [u8; 32],
}

/// A context-relative path (`/`-separated, empty for the root) as the record orders it: with
/// NUL, which no name contains and which sorts first, in place of `/`, plain byte order is the
/// order of a depth-first walk whose siblings are sorted by name.
pub(crate) fn key_of(rel: &[u8]) -> Vec<u8> {
    rel.iter().map(|&b| if b == b'/' { 0 } else { b }).collect()
}

/// Streams the lines of a record in order. Ends at the end of the file or at the first line
/// that is malformed or out of order, and then says whether the record was whole.
struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    /// The key of the line before (valid once `line_count` > 0).
    last_key: Vec<u8>,
    line_count: u64,
    corrupt: bool,
    ended: bool,
}

impl<R: Read> Lines<R> {
    /// Checks the header; `None` for a record of another format (which is then rewritten).
    fn new(inner: R) -> Option<Lines<R>> {
        let mut lines = Lines {
            reader: BufReader::with_capacity(64 * 1024, inner),
            line: Vec::new(),
            last_key: Vec::new(),
            line_count: 0,
            corrupt: false,
            ended: false,
        };
        match lines.raw_line() {
            Some(header) if header == HEADER => Some(lines),
            _ => None,
        }
    }

    /// The next line without its newline; `None` at the end, and for an overlong or
    /// unterminated line (a record cut short).
    fn raw_line(&mut self) -> Option<&[u8]> {
        self.line.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line);
        match read {
            Ok(0) => None,
            Ok(_) if self.line.last() == Some(&b'\n') => {
                self.line.pop();
                Some(&self.line)
            }
            _ => {
                self.corrupt = true;
                None
            }
        }
    }

    fn next_entry(&mut self) -> Option<(Vec<u8>, Recorded)> {
        if self.ended {
            return None;
        }
        let parsed = match self.raw_line() {
            None => None,
            Some(line) => {
                let parsed = parse_line(line);
                if parsed.is_none() {
                    self.corrupt = true;
                }
                parsed
            }
        };
        let first = self.line_count == 0;
        let parsed = parsed.filter(|(key, _)| {
            let in_order = first || self.last_key < *key;
            if !in_order {
                self.corrupt = true;
            }
            in_order
        });
        match parsed {
            Some((key, recorded)) => {
                self.line_count += 1;
                self.last_key.clear();
                self.last_key.extend_from_slice(&key);
                Some((key, recorded))
            }
            None => {
                self.ended = true;
                None
            }
        }
    }
}

fn open_lines(path: &Path) -> Option<Lines<File>> {
    File::open(path).ok().and_then(Lines::new)
}

/// The record's entries for `keys` (sorted, without repeats): one answer per key. The flag
/// says the record was missing its header or had a bad line, so it should be rewritten.
pub(crate) fn lookup(path: &Path, keys: &[&[u8]]) -> (Vec<Option<Recorded>>, bool) {
    let mut found = vec![None; keys.len()];
    let Some(mut lines) = open_lines(path) else {
        return (found, path.exists());
    };
    let mut next = 0;
    while next < keys.len() {
        let Some((key, recorded)) = lines.next_entry() else {
            break;
        };
        while next < keys.len() && keys[next] < key.as_slice() {
            next += 1;
        }
        if next < keys.len() && keys[next] == key.as_slice() {
            found[next] = Some(recorded);
            next += 1;
        }
    }
    (found, lines.corrupt)
}

/// Rewrites the record at `path`: `updates` (sorted by key, without repeats) replace the
/// lines of their keys (`None` removes one), and every other line of the current record is
/// kept if `keep` says so. Written to a temp file in the same directory and renamed over
/// `path`, so readers and other writers never see a partial record.
pub(crate) fn rewrite(
    path: &Path,
    updates: &[(&[u8], Option<Recorded>)],
    keep: &dyn Fn(&[u8], &Recorded) -> bool,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Private, as everything kiln makes in its root (docs/security.md).
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{name}.");
    remove_stale_temps(dir, &prefix);
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    let mut out = BufWriter::with_capacity(64 * 1024, temp);
    out.write_all(HEADER)?;
    out.write_all(b"\n")?;
    let mut old = open_lines(path);
    let mut old_next = old.as_mut().and_then(Lines::next_entry);
    let mut line = Vec::new();
    for (key, update) in updates {
        while let Some((old_key, recorded)) = old_next.as_ref() {
            if old_key.as_slice() >= *key {
                break;
            }
            if keep(old_key, recorded) {
                write_line(&mut out, &mut line, old_key, recorded)?;
            }
            old_next = old.as_mut().and_then(Lines::next_entry);
        }
        if old_next.as_ref().is_some_and(|(k, _)| k.as_slice() == *key) {
            old_next = old.as_mut().and_then(Lines::next_entry);
        }
        if let Some(recorded) = update {
            write_line(&mut out, &mut line, key, recorded)?;
        }
    }
    while let Some((old_key, recorded)) = old_next {
        if keep(&old_key, &recorded) {
            write_line(&mut out, &mut line, &old_key, &recorded)?;
        }
        old_next = old.as_mut().and_then(Lines::next_entry);
    }
    let temp = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes the temp files (`<prefix>*.tmp`) that writers killed before their rename left.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(prefix) || !name.ends_with(".tmp") {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_TEMP));
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn write_line(
    out: &mut impl Write,
    line: &mut Vec<u8>,
    key: &[u8],
    recorded: &Recorded,
) -> io::Result<()> {
    line.clear();
    line.push(b'/');
    for &b in key {
        match b {
            0 => line.push(b'/'),
            b'%' | ..=b' ' | 0x7f.. => line.extend_from_slice(format!("%{b:02X}").as_bytes()),
            b => line.push(b),
        }
    }
    let s = &recorded.stamp;
    let fields = format!(
        " {} {} {} {} {} {}\n",
        hex::encode(recorded.payload),
        s.size,
        s.mtime_ns,
        s.ctime_ns,
        s.ino,
        s.dev
    );
    line.extend_from_slice(fields.as_bytes());
    out.write_all(line)
}

fn parse_line(line: &[u8]) -> Option<(Vec<u8>, Recorded)> {
    let mut fields = line.split(|&b| b == b' ');
    let path = fields.next()?;
    let payload_hex = fields.next()?;
    let mut number = || std::str::from_utf8(fields.next()?).ok();
    let (size, mtime, ctime, ino, dev) = (number()?, number()?, number()?, number()?, number()?);
    if fields.next().is_some() {
        return None;
    }
    let mut payload = [0u8; 32];
    hex::decode_to_slice(payload_hex, &mut payload).ok()?;
    let stamp = Stamp {
        size: size.parse().ok()?,
        mtime_ns: mtime.parse().ok()?,
        ctime_ns: ctime.parse().ok()?,
        ino: ino.parse().ok()?,
        dev: dev.parse().ok()?,
    };
    Some((unescape(path)?, Recorded { stamp, payload }))
}

/// The key of an escaped path (`/a/b%20c` -> `a\0b c`).
fn unescape(path: &[u8]) -> Option<Vec<u8>> {
    let rest = path.strip_prefix(b"/")?;
    let mut key = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'/' => key.push(0),
            b'%' => {
                let hex = [*bytes.next()?, *bytes.next()?];
                let mut byte = [0u8];
                hex::decode_to_slice(hex, &mut byte).ok()?;
                key.push(byte[0]);
            }
            b => key.push(b),
        }
    }
    Some(key)
}

/// The record file of the context at `root` (canonical) in the directory `records`.
pub(crate) fn record_path(records: &Path, root: &Path) -> PathBuf {
    use sha2::{Digest as _, Sha256};
    let id = hex::encode(Sha256::digest(root.as_os_str().as_bytes()));
    records.join(id)
}

/// The context-relative path of a key.
pub(crate) fn rel_of(key: &[u8]) -> PathBuf {
    let rel: Vec<u8> = key.iter().map(|&b| if b == 0 { b'/' } else { b }).collect();
    PathBuf::from(OsStr::from_bytes(&rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(n: u8) -> Recorded {
        Recorded {
            stamp: Stamp {
                size: u64::from(n),
                mtime_ns: -5,
                ctime_ns: 1_700_000_000_123_456_789,
                ino: 7,
                dev: 2049,
            },
            payload: [n; 32],
        }
    }

    #[test]
    fn lines_round_trip_with_odd_names_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        let keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            key_of(b"a"),
            key_of(b"a/b c"),
            key_of(b"a/new\nline%"),
            key_of(b"a-c"),
            vec![b'\xff', b'\x01'],
        ];
        let updates: Vec<(&[u8], Option<Recorded>)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_slice(), Some(recorded(i as u8))))
            .collect();
        rewrite(&path, &updates, &|_, _| true).unwrap();
        let wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let (found, corrupt) = lookup(&path, &wanted);
        assert!(!corrupt);
        for (i, f) in found.iter().enumerate() {
            assert_eq!(*f, Some(recorded(i as u8)), "key {:?}", keys[i]);
        }
    }

    #[test]
    fn a_rewrite_merges_updates_removals_and_kept_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        let (a, b, c, d) = (key_of(b"a"), key_of(b"b"), key_of(b"c"), key_of(b"d"));
        let all = [
            (a.as_slice(), Some(recorded(1))),
            (b.as_slice(), Some(recorded(2))),
        ];
        rewrite(&path, &all, &|_, _| true).unwrap();
        let all = [
            (c.as_slice(), Some(recorded(3))),
            (d.as_slice(), Some(recorded(4))),
        ];
        rewrite(&path, &all, &|_, _| true).unwrap();
        // `a` is replaced, `c` removed, `b` dropped by `keep`, `d` kept.
        let updates = [(a.as_slice(), Some(recorded(9))), (c.as_slice(), None)];
        rewrite(&path, &updates, &|k, _| k != b"b").unwrap();
        let (found, corrupt) = lookup(&path, &[&a, &b, &c, &d]);
        assert!(!corrupt);
        assert_eq!(
            found,
            vec![Some(recorded(9)), None, None, Some(recorded(4))]
        );
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file is left behind");
    }

    #[test]
    fn a_damaged_record_yields_what_came_before_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        let (a, b) = (key_of(b"a"), key_of(b"b"));
        let all = [
            (a.as_slice(), Some(recorded(1))),
            (b.as_slice(), Some(recorded(2))),
        ];
        rewrite(&path, &all, &|_, _| true).unwrap();
        let text = fs::read(&path).unwrap();
        // Cut in the middle of the last line, as a full disk might leave it.
        fs::write(&path, &text[..text.len() - 10]).unwrap();
        assert_eq!(
            lookup(&path, &[&a, &b]),
            (vec![Some(recorded(1)), None], true)
        );
        fs::write(&path, b"garbage\n").unwrap();
        assert_eq!(lookup(&path, &[&a]), (vec![None], true));
        fs::write(&path, [HEADER, b"\n/b x\n"].concat()).unwrap();
        assert_eq!(lookup(&path, &[&b]), (vec![None], true));
        // Out of order: reading stops there.
        let mut swapped = HEADER.to_vec();
        swapped.push(b'\n');
        for (k, r) in [(&b, recorded(2)), (&a, recorded(1))] {
            write_line(&mut swapped, &mut Vec::new(), k, &r).unwrap();
        }
        fs::write(&path, swapped).unwrap();
        let c = key_of(b"c");
        assert_eq!(
            lookup(&path, &[&a, &b, &c]),
            (vec![None, Some(recorded(2)), None], true)
        );
        let missing = dir.path().join("missing");
        assert_eq!(lookup(&missing, &[&a]), (vec![None], false));
    }
}
