//! The SBOM attestation: an SPDX 2.3 JSON document of the packages in an image's final
//! rootfs, read without any external scanner from dpkg's status database (and distroless'
//! `status.d`), apk's installed database and the build info Go embeds in its binaries.
//!
//! Everything here reads the image, which is untrusted: files are found through the
//! [`LayerStack`] (symlinks resolve inside the image, never on the host), each read is
//! bounded, and anything malformed is skipped.

use std::collections::BTreeSet;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_oci::Digest;
use kiln_snapshot::LayerStack;
use serde_json::{Value, json};

/// The most of a package database read (Debian's status file for a full desktop is a few
/// MiB); it is held in memory whole.
const MAX_DB_BYTES: u64 = 16 << 20;
/// The most of one distroless `status.d` file read.
const MAX_STATUS_D_BYTES: u64 = 4 << 20;
/// `status.d` files read at most.
const MAX_STATUS_D_FILES: usize = 10_000;
/// Executables larger than this are not searched for Go build info.
const MAX_BINARY_BYTES: u64 = 512 << 20;
/// Files looked at per binary directory.
const MAX_BINARIES_PER_DIR: usize = 5_000;
/// The most of a Go build info blob read (its module list).
const MAX_BUILDINFO_BYTES: usize = 4 << 20;
/// The most packages listed. A large distribution image holds a few thousand; an image
/// can make its databases list millions of tiny ones, and each costs the document far more
/// memory than its line of text did.
pub(crate) const MAX_PACKAGES: usize = 50_000;
/// The longest purl of a package listed (its name, version and arch, encoded). Real ones are
/// a few hundred bytes at most; a database can name a package with megabytes, and thousands
/// of such packages, each copied several times into the document, would not fit in memory.
const MAX_PURL_BYTES: usize = 1024;
/// Where Go binaries are looked for.
const BIN_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/go/bin",
    "/ko-app",
];
/// The SPDX id of the image's own package.
const IMAGE_ID: &str = "SPDXRef-Image";
/// What starts the build info block of a Go binary.
const GO_BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ecosystem {
    Deb,
    Apk,
    Golang,
}

impl Ecosystem {
    fn tag(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Apk => "apk",
            Ecosystem::Golang => "golang",
        }
    }
}

/// A package found in the rootfs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: String,
    pub purl: String,
}

/// Every package the rootfs `stack` holds, sorted, each once; the first
/// [`MAX_PACKAGES`] found when it holds more.
pub(crate) fn scan(stack: &LayerStack) -> Vec<Package> {
    let mut found = BTreeSet::new();
    let distro = os_release_id(stack);
    if let Some(text) = read_text(stack, Path::new("/var/lib/dpkg/status"), MAX_DB_BYTES) {
        add(&mut found, parse_dpkg(&text, &distro));
    }
    let status_d = Path::new("/var/lib/dpkg/status.d");
    for name in stack
        .read_dir(status_d)
        .unwrap_or_default()
        .into_iter()
        .take(MAX_STATUS_D_FILES)
    {
        // distroless keeps each package's `md5sums` beside its paragraph.
        if name.to_string_lossy().ends_with(".md5sums") || is_full(&found) {
            continue;
        }
        if let Some(text) = read_text(stack, &status_d.join(name), MAX_STATUS_D_BYTES) {
            add(&mut found, parse_dpkg(&text, &distro));
        }
    }
    if let Some(text) = read_text(stack, Path::new("/lib/apk/db/installed"), MAX_DB_BYTES) {
        add(&mut found, parse_apk(&text));
    }
    go_packages(stack, &mut found);
    found.into_iter().collect()
}

/// Adds `packages` to `found` while it has fewer than [`MAX_PACKAGES`], leaving out those
/// whose purl is longer than [`MAX_PURL_BYTES`].
fn add(found: &mut BTreeSet<Package>, packages: Vec<Package>) {
    for package in packages {
        if is_full(found) {
            return;
        }
        if package.purl.len() <= MAX_PURL_BYTES {
            found.insert(package);
        }
    }
}

fn is_full(found: &BTreeSet<Package>) -> bool {
    found.len() >= MAX_PACKAGES
}

/// The distribution's `ID` from `/etc/os-release`, the purl namespace of its deb packages
/// (`debian` when it is missing or odd).
fn os_release_id(stack: &LayerStack) -> String {
    let text = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| read_text(stack, Path::new(p), 64 << 10))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .map(|id| id.trim().trim_matches('"').to_string())
        .filter(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        .unwrap_or_else(|| "debian".into())
}

/// The regular file at `path` in the image, through the stack, if it is one.
fn image_file(stack: &LayerStack, path: &Path) -> Option<(PathBuf, Metadata)> {
    let host = stack.lookup(path, true)?;
    let meta = std::fs::symlink_metadata(&host).ok()?;
    meta.file_type().is_file().then_some((host, meta))
}

/// The text of the file at `path` in the image, if it is a regular file of at most `limit`
/// bytes (a longer one is not read at all: half a database would list half the packages).
fn read_text(stack: &LayerStack, path: &Path, limit: u64) -> Option<String> {
    let (host, meta) = image_file(stack, path)?;
    if meta.len() > limit {
        return None;
    }
    let mut bytes = Vec::new();
    File::open(host)
        .ok()?
        .take(limit)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// dpkg's status paragraphs: `Field: value` lines, continuation lines indented, paragraphs
/// apart by blank lines. Packages dpkg does not hold as installed are left out (a distroless
/// `status.d` paragraph has no `Status`: it is installed).
pub(crate) fn parse_dpkg(text: &str, distro: &str) -> Vec<Package> {
    paragraphs(text, ": ")
        .filter_map(|fields| {
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.trim())
            };
            if get("Status").is_some_and(|s| s.split_whitespace().last() != Some("installed")) {
                return None;
            }
            let name = get("Package").filter(|n| !n.is_empty())?;
            let version = get("Version").filter(|v| !v.is_empty())?;
            let arch = get("Architecture").filter(|a| !a.is_empty());
            let mut purl = format!(
                "pkg:deb/{distro}/{}@{}",
                purl_encode(name),
                purl_encode(version)
            );
            if let Some(arch) = arch {
                purl.push_str(&format!("?arch={}", purl_encode(arch)));
            }
            Some(Package {
                ecosystem: Ecosystem::Deb,
                name: name.to_string(),
                version: version.to_string(),
                purl,
            })
        })
        .collect()
}

/// apk's installed database: `P:name`, `V:version`, `A:arch` lines, paragraphs apart by blank
/// lines.
pub(crate) fn parse_apk(text: &str) -> Vec<Package> {
    paragraphs(text, ":")
        .filter_map(|fields| {
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.trim())
                    .filter(|v| !v.is_empty())
            };
            let name = get("P")?;
            let version = get("V")?;
            let mut purl = format!(
                "pkg:apk/alpine/{}@{}",
                purl_encode(name),
                purl_encode(version)
            );
            if let Some(arch) = get("A") {
                purl.push_str(&format!("?arch={}", purl_encode(arch)));
            }
            Some(Package {
                ecosystem: Ecosystem::Apk,
                name: name.to_string(),
                version: version.to_string(),
                purl,
            })
        })
        .collect()
}

/// The paragraphs of a `key<sep>value` file, each as its fields; a line starting with
/// whitespace continues the field before it and is dropped (no field read here spans lines).
fn paragraphs<'t>(text: &'t str, sep: &'t str) -> impl Iterator<Item = Vec<(&'t str, &'t str)>> {
    text.split("\n\n").map(move |para| {
        para.lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .filter_map(|l| l.split_once(sep))
            .collect()
    })
}

/// Adds the packages of the Go binaries in the usual binary directories to `found` (each
/// file once, however many directories and hard links lead to it: an image of thousands of
/// links to one large file must not have it read thousands of times).
fn go_packages(stack: &LayerStack, found: &mut BTreeSet<Package>) {
    for host in binaries(stack) {
        if is_full(found) {
            return;
        }
        if let Some(info) = read_go_buildinfo(&host) {
            add(found, parse_go_buildinfo(&info));
        }
    }
}

/// The files of the usual bin dirs that could be Go binaries, each file once however many
/// names it has (thousands of hard links to one large file are one search).
fn binaries(stack: &LayerStack) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for dir in BIN_DIRS {
        let dir = Path::new(dir);
        for name in stack
            .read_dir(dir)
            .unwrap_or_default()
            .into_iter()
            .take(MAX_BINARIES_PER_DIR)
        {
            let Some((host, meta)) = image_file(stack, &dir.join(&name)) else {
                continue;
            };
            if meta.len() <= MAX_BINARY_BYTES && seen.insert((meta.dev(), meta.ino())) {
                files.push(host);
            }
        }
    }
    files
}

/// The build info blob of the ELF file at `host`, if it is a Go binary: from the magic to
/// at most [`MAX_BUILDINFO_BYTES`] after it.
fn read_go_buildinfo(host: &Path) -> Option<Vec<u8>> {
    let mut file = File::open(host).ok()?;
    let mut head = [0u8; 4];
    file.read_exact(&mut head).ok()?;
    if head != *b"\x7fELF" {
        return None;
    }
    file.seek(SeekFrom::Start(0)).ok()?;
    let at = find(&mut file, GO_BUILDINFO_MAGIC)?;
    file.seek(SeekFrom::Start(at)).ok()?;
    let mut blob = Vec::new();
    file.take(MAX_BUILDINFO_BYTES as u64)
        .read_to_end(&mut blob)
        .ok()?;
    Some(blob)
}

/// The offset of the first `needle` (which holds no zero byte) in `file`. Only its data is
/// read: the needle cannot be in a hole, and extraction keeps a tar's sparse files sparse, so
/// an image of thousands of "binaries" of hundreds of MiB each would otherwise cost almost
/// nothing to ship and hours to search.
fn find(file: &mut File, needle: &[u8]) -> Option<u64> {
    find_counting(file, needle, &mut 0)
}

/// [`find`], adding to `read` the bytes it read.
fn find_counting(file: &mut File, needle: &[u8], read: &mut u64) -> Option<u64> {
    let mut pos = 0;
    while let Some((start, end)) = kiln_snapshot::next_data(file, pos).ok()? {
        file.seek(SeekFrom::Start(start)).ok()?;
        let found = find_in(file.by_ref().take(end - start), needle);
        *read += file.stream_position().ok()? - start;
        if let Some(at) = found {
            return Some(start + at);
        }
        pos = end;
    }
    None
}

/// The offset of the first `needle` in `data`, read in chunks.
fn find_in(mut data: impl Read, needle: &[u8]) -> Option<u64> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + needle.len()];
    let mut kept = 0;
    let mut base = 0u64;
    loop {
        let n = data.read(&mut buf[kept..]).ok()?;
        if n == 0 {
            return None;
        }
        let filled = kept + n;
        if let Some(i) = buf[..filled]
            .windows(needle.len())
            .position(|w| w == needle)
        {
            return Some(base + i as u64);
        }
        // Keep the tail that could start a match across the chunk boundary.
        kept = (needle.len() - 1).min(filled);
        buf.copy_within(filled - kept..filled, 0);
        base += (filled - kept) as u64;
    }
}

/// The modules of a Go build info blob (Go 1.18 and later, which inline the strings): the
/// standard library at the Go version, the main module and every dependency (a `=>`
/// replacement stands for the module it replaces). Older binaries point into their data
/// instead and are skipped.
pub(crate) fn parse_go_buildinfo(blob: &[u8]) -> Vec<Package> {
    const HEADER: usize = 32;
    const FLAGS_VERSION_INLINE: u8 = 0x2;
    if blob.len() < HEADER
        || !blob.starts_with(GO_BUILDINFO_MAGIC)
        || blob[15] & FLAGS_VERSION_INLINE == 0
    {
        return Vec::new();
    }
    let mut rest = &blob[HEADER..];
    let Some(version) = varint_string(&mut rest) else {
        return Vec::new();
    };
    let Some(modinfo) = varint_string(&mut rest) else {
        return Vec::new();
    };
    // The module info is framed by 16 sentinel bytes on each side.
    let modinfo = match modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        true => &modinfo[16..modinfo.len() - 16],
        false => modinfo,
    };
    let golang = |name: &str, version: &str| Package {
        ecosystem: Ecosystem::Golang,
        name: name.to_string(),
        version: version.to_string(),
        purl: format!("pkg:golang/{}@{}", encode_path(name), purl_encode(version)),
    };
    let mut found = Vec::new();
    if let Some(v) = std::str::from_utf8(version)
        .ok()
        .and_then(|v| v.strip_prefix("go"))
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
    {
        found.push(golang("stdlib", v));
    }
    for line in String::from_utf8_lossy(modinfo).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["mod" | "dep", path, version, ..] if !path.is_empty() && !version.is_empty() => {
                found.push(golang(path, version));
            }
            ["=>", path, version, ..] if !path.is_empty() && !version.is_empty() => {
                if let Some(last) = found.last_mut().filter(|p| p.name != "stdlib") {
                    *last = golang(path, version);
                }
            }
            _ => {}
        }
    }
    found
}

/// A uvarint-length-prefixed string at the front of `rest`, which moves past it.
fn varint_string<'b>(rest: &mut &'b [u8]) -> Option<&'b [u8]> {
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut used = 0;
    loop {
        let byte = *rest.get(used)?;
        used += 1;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let len = usize::try_from(len).ok()?;
    let end = used.checked_add(len)?;
    let s = rest.get(used..end)?;
    *rest = &rest[end..];
    Some(s)
}

/// `s` percent-encoded for a purl name, version or qualifier value.
pub(crate) fn purl_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' | b'+' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A Go module path for a purl: its `/`-separated segments encoded one by one.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(purl_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// An SPDX id made of what `name` has of the allowed characters, unique by its index.
fn spdx_id(package: &Package, index: usize) -> String {
    let clean: String = package
        .name
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                true => c,
                false => '-',
            },
        )
        .collect();
    format!(
        "SPDXRef-Package-{}-{clean}-{index}",
        package.ecosystem.tag()
    )
}

/// The SPDX 2.3 document listing `packages`, named `name`, made at `created` (RFC 3339) by
/// kiln. Its namespace is made unique by `subject` (a digest of what it describes).
pub(crate) fn document(packages: &[Package], name: &str, subject: &Digest, created: &str) -> Value {
    let entries: Vec<(String, &Package)> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| (spdx_id(p, i), p))
        .collect();
    let listed: Vec<Value> = entries
        .iter()
        .map(|(id, p)| {
            json!({
                "name": p.name,
                "SPDXID": id,
                "versionInfo": p.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": p.purl,
                }],
            })
        })
        .collect();
    // The image itself is a package too, so that the document describes something even
    // when the rootfs holds no package kiln knows (SPDX requires it); it contains the rest.
    let image = json!({
        "name": name,
        "SPDXID": IMAGE_ID,
        "versionInfo": subject.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
    });
    let listed: Vec<Value> = std::iter::once(image).chain(listed).collect();
    let relationship = |from: &str, kind: &str, to: &str| json!({"spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to});
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    for (id, _) in &entries {
        relationships.push(relationship("SPDXRef-DOCUMENT", "DESCRIBES", id));
        relationships.push(relationship(IMAGE_ID, "CONTAINS", id));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        // `.invalid` is reserved for names that resolve nowhere: the namespace only has to
        // be a unique URI.
        "documentNamespace": format!("https://kiln.invalid/spdx/{}", subject.hex()),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": listed,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_with_debian_purls() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
                      Version: 2.36-9+deb12u4\nDescription: GNU C Library\n continued line\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: tzdata\nStatus: install ok installed\nArchitecture: all\n\
                      Version: 1:2024a-0\n\nPackage: broken\nStatus: install ok installed\n";
        let found = parse_dpkg(status, "debian");
        let purls: Vec<&str> = found.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64",
                "pkg:deb/debian/tzdata@1%3A2024a-0?arch=all",
            ]
        );
        assert_eq!(found[0].version, "2.36-9+deb12u4");
    }

    #[test]
    fn distroless_status_d_paragraphs_have_no_status_and_count_as_installed() {
        let found = parse_dpkg(
            "Package: base-files\nVersion: 12.4\nArchitecture: arm64\n",
            "debian",
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "base-files");
    }

    #[test]
    fn apk_database_lists_packages_with_alpine_purls() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nT:the C library\n\n\
                  P:busybox\nV:1.36.1-r5\nA:x86_64\n\nP:noversion\n";
        let found = parse_apk(db);
        let purls: Vec<&str> = found.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64",
                "pkg:apk/alpine/busybox@1.36.1-r5?arch=x86_64"
            ]
        );
    }

    /// A Go 1.18+ build info blob with `version` and `modinfo` inlined.
    fn buildinfo(version: &str, modinfo: &str) -> Vec<u8> {
        let mut blob = GO_BUILDINFO_MAGIC.to_vec();
        blob.extend([8, 0x2]);
        blob.resize(32, 0);
        let framed = format!("{}{modinfo}{}", "0".repeat(16), "1".repeat(16));
        for s in [version, framed.as_str()] {
            let mut len = s.len();
            while len >= 0x80 {
                blob.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            blob.push(len as u8);
            blob.extend(s.as_bytes());
        }
        blob
    }

    #[test]
    fn go_build_info_names_stdlib_main_module_and_dependencies() {
        let modinfo = "path\texample.com/app\nmod\texample.com/app\t(devel)\t\n\
                       dep\tgolang.org/x/sys\tv0.15.0\th1:abc=\n\
                       dep\tgithub.com/old/lib\tv1.0.0\th1:def=\n\
                       =>\tgithub.com/new/lib\tv1.1.0\th1:ghi=\nbuild\t-compiler=gc\n";
        let found = parse_go_buildinfo(&buildinfo("go1.21.5", modinfo));
        let purls: Vec<&str> = found.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:golang/stdlib@1.21.5",
                "pkg:golang/example.com/app@%28devel%29",
                "pkg:golang/golang.org/x/sys@v0.15.0",
                "pkg:golang/github.com/new/lib@v1.1.0",
            ]
        );
    }

    #[test]
    fn malformed_go_build_info_is_skipped() {
        let good = buildinfo("go1.22.0", "mod\tm\tv1\t\n");
        for cut in 0..good.len() {
            parse_go_buildinfo(&good[..cut]);
        }
        // A length that runs past the end, and a varint that never ends.
        let mut long = good[..32].to_vec();
        long.extend([0xff, 0xff, 0xff, 0x7f]);
        assert!(parse_go_buildinfo(&long).is_empty());
        let mut endless = good[..32].to_vec();
        endless.extend([0xff; 20]);
        assert!(parse_go_buildinfo(&endless).is_empty());
        // Pointer-style (pre-1.18) info is not read.
        let mut old = good.clone();
        old[15] = 0;
        assert!(parse_go_buildinfo(&old).is_empty());
    }

    #[test]
    fn a_found_magic_across_chunks_is_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        let mut bytes = b"\x7fELF".to_vec();
        bytes.resize((1 << 20) - 5, 0);
        bytes.extend(buildinfo("go1.20.1", "mod\tm\tv1.0.0\t\n"));
        std::fs::write(&path, &bytes).unwrap();
        let blob = read_go_buildinfo(&path).unwrap();
        assert_eq!(parse_go_buildinfo(&blob)[1].purl, "pkg:golang/m@v1.0.0");
    }

    #[test]
    fn sparse_binaries_are_searched_for_their_data_only() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("layer/usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        // ELF files as large as are searched, all holes but their first bytes (and one's
        // build info, deep in it): hundreds of GiB to read if holes were read.
        for i in 0..200 {
            let file = bin.join(format!("sparse{i}"));
            std::fs::write(&file, b"\x7fELF").unwrap();
            let mut f = File::options().write(true).open(&file).unwrap();
            if i == 7 {
                f.seek(SeekFrom::Start(300 << 20)).unwrap();
                std::io::Write::write_all(&mut f, &buildinfo("go1.22.0", "mod\tm\tv1\t\n"))
                    .unwrap();
            }
            f.set_len(MAX_BINARY_BYTES).unwrap();
        }
        let stack = LayerStack::new(vec![dir.path().join("layer")]);
        let found = scan(&stack);
        let purls: Vec<&str> = found.iter().map(|p| p.purl.as_str()).collect();
        assert_eq!(purls, ["pkg:golang/m@v1", "pkg:golang/stdlib@1.22.0"]);
        // What the search reads is the files' data, a few KiB each, not their holes.
        let mut read = 0;
        for host in binaries(&stack) {
            let mut file = File::open(host).unwrap();
            find_counting(&mut file, GO_BUILDINFO_MAGIC, &mut read);
        }
        assert!(read < 200 * (64 << 10), "{read} bytes read");
    }

    #[test]
    fn the_scan_reads_through_the_stack_and_not_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("var/lib/dpkg")).unwrap();
        // A status file that is a link to the host's would list the host's packages.
        std::os::unix::fs::symlink("/var/lib/dpkg/status", layer.join("var/lib/dpkg/status"))
            .unwrap();
        std::fs::create_dir_all(layer.join("lib/apk/db")).unwrap();
        std::fs::write(layer.join("lib/apk/db/installed"), "P:a\nV:1\n").unwrap();
        let found = scan(&LayerStack::new(vec![layer]));
        let names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn an_image_listing_millions_of_packages_lists_no_more_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        let dpkg = layer.join("var/lib/dpkg");
        std::fs::create_dir_all(dpkg.join("status.d")).unwrap();
        // Each database just under its size limit, full of one-letter packages.
        let db = |prefix: &str, limit: u64| {
            let mut text = String::new();
            for i in 0.. {
                let para = format!("Package: {prefix}{i}\nVersion: 1\n\n");
                if (text.len() + para.len()) as u64 > limit {
                    break;
                }
                text.push_str(&para);
            }
            text
        };
        std::fs::write(dpkg.join("status"), db("p", MAX_DB_BYTES)).unwrap();
        for file in 0..4 {
            let text = db(&format!("d{file}-"), MAX_STATUS_D_BYTES);
            std::fs::write(dpkg.join(format!("status.d/{file}")), text).unwrap();
        }
        let found = scan(&LayerStack::new(vec![layer]));
        assert_eq!(found.len(), MAX_PACKAGES);
    }

    #[test]
    fn packages_with_names_of_megabytes_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let status_d = dir.path().join("layer/var/lib/dpkg/status.d");
        std::fs::create_dir_all(&status_d).unwrap();
        let huge = "a".repeat(1 << 20);
        std::fs::write(
            status_d.join("huge"),
            format!("Package: {huge}\nVersion: 1\n"),
        )
        .unwrap();
        std::fs::write(
            status_d.join("long-version"),
            format!("Package: v\nVersion: {huge}\n"),
        )
        .unwrap();
        std::fs::write(status_d.join("libc6"), "Package: libc6\nVersion: 2.36\n").unwrap();
        let found = scan(&LayerStack::new(vec![dir.path().join("layer")]));
        // Lengths, so that a failure does not print megabytes.
        let sizes: Vec<(usize, usize)> = found
            .iter()
            .map(|p| (p.name.len(), p.version.len()))
            .collect();
        assert_eq!(sizes, [("libc6".len(), "2.36".len())]);
    }

    #[test]
    fn hard_links_to_one_large_binary_have_it_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("layer/usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        // A large ELF file with no build info, and thousands of names for it: a hundred GiB
        // to search if each name counted.
        let file = bin.join("big");
        let mut bytes = vec![1u8; 64 << 20];
        bytes[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(&file, bytes).unwrap();
        for i in 0..2_000 {
            std::fs::hard_link(&file, bin.join(format!("link{i}"))).unwrap();
        }
        let stack = LayerStack::new(vec![dir.path().join("layer")]);
        assert_eq!(binaries(&stack).len(), 1, "2,001 names, one file");
        assert!(scan(&stack).is_empty());
    }

    #[test]
    fn the_document_describes_every_package() {
        let packages = parse_apk("P:a b\nV:1\n\nP:c\nV:2\n");
        let subject = Digest::of(b"image");
        let doc = document(&packages, "img", &subject, "2024-01-01T00:00:00Z");
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["packages"][0]["SPDXID"], "SPDXRef-Image");
        assert_eq!(doc["packages"][1]["SPDXID"], "SPDXRef-Package-apk-a-b-0");
        let described: Vec<&Value> = doc["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "DESCRIBES")
            .map(|r| &r["relatedSpdxElement"])
            .collect();
        assert_eq!(
            described,
            [
                "SPDXRef-Image",
                "SPDXRef-Package-apk-a-b-0",
                "SPDXRef-Package-apk-c-1"
            ]
        );
        assert_eq!(
            doc["creationInfo"]["creators"][0],
            format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
