//! Manifest lists over images already in registries, as `docker manifest`, `buildx
//! imagetools create` and manifest-tool make them: the entries a source contributes, the
//! checks a list must pass, pushing one (its images copied into each target repository, the
//! index last), and the local store of unpushed lists (`<root>/manifests/`, as docker keeps
//! them under `~/.docker/manifests`).

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, Platform};
use kiln_registry::{Reference, ReferenceError, RegistryClient, RegistryError, stitch};

use crate::{
    ImageDestination, ImageSource, RawManifest, RegistryDestination, RegistrySource,
    TransportError, put_manifest_tree,
};
use serde::{Deserialize, Serialize};

/// What went wrong making, keeping or pushing a list. Every variant names the list, the
/// source or the file.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A source that cannot be parsed or fetched.
    #[error("source {name}: {error}")]
    Source {
        name: String,
        #[source]
        error: Box<SourceError>,
    },
    #[error("two sources provide {platform}: {first} and {second}")]
    SamePlatform {
        platform: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    Push(#[from] RegistryError),
    #[error(transparent)]
    Copy(#[from] TransportError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is damaged: {source}", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("there is no local list {list}: make one with `kiln manifest create {list} SOURCE...`")]
    NoList { list: Reference },
    #[error(
        "a local list {list} exists already: add to it with `--amend`, or delete it with \
         `kiln manifest rm {list}`"
    )]
    Exists { list: Reference },
    #[error("{given}: a list is named by a tag, not a digest")]
    NamedByDigest { given: String },
    #[error("the list {list} has no entry {source_name}; its images: {images}")]
    NoEntry {
        list: String,
        source_name: String,
        images: String,
    },
    #[error(
        "{source_name} is an index that gave {count} entries of {list}: name one by digest: {images}"
    )]
    AmbiguousEntry {
        list: String,
        source_name: String,
        count: usize,
        images: String,
    },
    /// An entry's platform set to something no runtime matches.
    #[error("annotating {image}: {error}")]
    Annotate {
        image: String,
        error: UnknownPlatform,
    },
}

/// Why a source contributed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A platform whose os or architecture is not one a runtime can match.
#[derive(Debug, thiserror::Error)]
pub enum UnknownPlatform {
    #[error("unknown os `{os}`: expected one of {}", KNOWN_OS.join(", "))]
    Os { os: String },
    #[error("unknown architecture `{architecture}`: expected one of {}", KNOWN_ARCH.join(", "))]
    Architecture { architecture: String },
}

impl ListError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ListError {
        let context = context.into();
        move |source| ListError::Io { context, source }
    }
}

/// GOOS and GOARCH values: what docker accepts in a platform.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

/// Checks a platform's os and architecture are ones a runtime can match.
pub fn validate_platform(p: &Platform) -> Result<(), UnknownPlatform> {
    if !KNOWN_OS.contains(&p.os.as_str()) {
        return Err(UnknownPlatform::Os { os: p.os.clone() });
    }
    if !KNOWN_ARCH.contains(&p.architecture.as_str()) {
        return Err(UnknownPlatform::Architecture {
            architecture: p.architecture.clone(),
        });
    }
    Ok(())
}

/// One image of a list: where it came from, where it is (pinned by digest), and the
/// descriptor the index will hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListEntry {
    /// The source as named on the command line, normalised.
    pub source: String,
    /// The image itself, `registry/repository@digest`.
    pub image: String,
    pub descriptor: Descriptor,
}

impl ListEntry {
    pub fn image_ref(&self) -> Result<Reference, ReferenceError> {
        self.image.parse()
    }
}

/// The entries `sources` contribute, each source's failure naming it: an index gives its
/// platform images (attestation manifests dropped unless `keep_attestations`), an image
/// itself, with the platform of its config.
pub fn resolve_sources(
    client: &RegistryClient,
    sources: &[String],
    keep_attestations: bool,
) -> Result<Vec<ListEntry>, ListError> {
    let mut entries = Vec::new();
    for s in sources {
        let failed = |error: SourceError| ListError::Source {
            name: s.clone(),
            error: Box::new(error),
        };
        let r: Reference = s.parse().map_err(|e| failed(SourceError::Reference(e)))?;
        let found = stitch::platform_manifests(client, &r, keep_attestations)
            .map_err(|e| failed(SourceError::Registry(e)))?;
        for (at, descriptor) in found {
            let image = Reference { tag: None, ..at };
            entries.push(ListEntry {
                source: r.to_string(),
                image: image.to_string(),
                descriptor,
            });
        }
    }
    Ok(entries)
}

/// Refuses two runnable entries for one platform: a runtime would only ever pull the first.
pub fn check_distinct_platforms(entries: &[ListEntry]) -> Result<(), ListError> {
    for (i, e) in entries.iter().enumerate() {
        if stitch::is_attestation(&e.descriptor) {
            continue;
        }
        let Some(platform) = &e.descriptor.platform else {
            continue;
        };
        if let Some(dup) = entries[..i].iter().find(|d| {
            !stitch::is_attestation(&d.descriptor)
                && d.descriptor.platform.as_ref() == Some(platform)
        }) {
            return Err(ListError::SamePlatform {
                platform: platform.to_string(),
                first: dup.source.clone(),
                second: e.source.clone(),
            });
        }
    }
    Ok(())
}

/// Copies the entries into every target's repository and pushes the index over them to each
/// target, last; returns the index's digest. The one registry push path: blobs are mounted
/// within a registry and streamed across registries, as every push and copy does.
pub fn push_entries(
    client: &RegistryClient,
    entries: &[ListEntry],
    targets: &[Reference],
) -> Result<Digest, ListError> {
    let mut dest = RegistryDestination::to_all(client, targets.to_vec())
        .expect("a list is pushed to at least one target");
    for entry in entries {
        let pinned = entry
            .image_ref()?
            .with_digest(entry.descriptor.digest.clone());
        let source = RegistrySource::new(client, pinned);
        let manifest = source.manifest(&entry.descriptor)?;
        put_manifest_tree(&source, &mut dest, &manifest)?;
    }
    let (media_type, bytes) = index_bytes(entries);
    let index = RawManifest {
        digest: Digest::of(&bytes),
        media_type,
        bytes,
    };
    dest.commit(&index)?;
    Ok(index.digest)
}

/// The index over `entries`: its media type and bytes.
pub fn index_bytes(entries: &[ListEntry]) -> (String, Vec<u8>) {
    let descriptors: Vec<Descriptor> = entries.iter().map(|e| e.descriptor.clone()).collect();
    stitch::index_of(&descriptors)
}

/// The platform fields `kiln manifest annotate` sets; `None` leaves a field as it is, an empty
/// value clears an optional one.
#[derive(Clone, Debug, Default)]
pub struct PlatformEdit {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub os_version: Option<String>,
    /// Replaces the entry's features.
    pub os_features: Option<Vec<String>>,
}

/// A list as kept in the local store.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestList {
    pub name: String,
    pub entries: Vec<ListEntry>,
}

impl ManifestList {
    /// Adds `added`; each replaces an entry of the same image or the same (runnable) platform.
    pub fn amend(&mut self, added: Vec<ListEntry>) {
        self.entries.retain(|old| {
            !added.iter().any(|new| {
                new.descriptor.digest == old.descriptor.digest
                    || (!stitch::is_attestation(&new.descriptor)
                        && new.descriptor.platform.is_some()
                        && new.descriptor.platform == old.descriptor.platform)
            })
        });
        self.entries.extend(added);
    }

    /// The position of the entry `source`: the source as given to create, or the image by
    /// digest. Errors name the candidates.
    pub fn find_entry(&self, source: &str) -> Result<usize, ListError> {
        let wanted: Reference = source.parse()?;
        let matches: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.source == wanted.to_string()
                    || wanted.digest.as_ref().is_some_and(|d| {
                        *d == e.descriptor.digest
                            && e.image_ref().is_ok_and(|r| {
                                r.registry == wanted.registry && r.repository == wanted.repository
                            })
                    })
            })
            .map(|(i, _)| i)
            .collect();
        let images = |which: &mut dyn Iterator<Item = &ListEntry>| {
            which
                .map(|e| e.image.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(ListError::NoEntry {
                list: self.name.clone(),
                source_name: source.to_string(),
                images: images(&mut self.entries.iter()),
            }),
            _ => Err(ListError::AmbiguousEntry {
                list: self.name.clone(),
                source_name: source.to_string(),
                count: matches.len(),
                images: images(&mut matches.iter().map(|i| &self.entries[*i])),
            }),
        }
    }

    /// Sets the platform fields of the entry `source` (see [`ManifestList::find_entry`]);
    /// the result must be a platform a runtime can match.
    pub fn annotate(&mut self, source: &str, edit: &PlatformEdit) -> Result<(), ListError> {
        let at = self.find_entry(source)?;
        let entry = &mut self.entries[at];
        let mut platform = entry
            .descriptor
            .platform
            .clone()
            .unwrap_or_else(|| Platform::new("", "", None));
        if let Some(os) = &edit.os {
            platform.os = os.clone();
        }
        if let Some(architecture) = &edit.architecture {
            platform.architecture = architecture.clone();
        }
        if let Some(v) = &edit.variant {
            platform.variant = Some(v.clone()).filter(|v| !v.is_empty());
        }
        if let Some(v) = &edit.os_version {
            platform.os_version = Some(v.clone()).filter(|v| !v.is_empty());
        }
        if let Some(features) = &edit.os_features {
            platform.os_features = features.iter().filter(|f| !f.is_empty()).cloned().collect();
        }
        validate_platform(&platform).map_err(|error| ListError::Annotate {
            image: entry.image.clone(),
            error,
        })?;
        entry.descriptor.platform = Some(platform);
        Ok(())
    }

    /// The index `push` would send: its media type and bytes.
    pub fn index_bytes(&self) -> (String, Vec<u8>) {
        index_bytes(&self.entries)
    }
}

/// Unpushed lists, one directory per list, each holding `list.json`.
pub struct ListStore {
    dir: PathBuf,
}

impl ListStore {
    /// The lists kept in kiln's root `root`, under `manifests/`.
    pub fn in_root(root: &Path) -> ListStore {
        ListStore {
            dir: root.join("manifests"),
        }
    }

    /// The list's directory: its reference with `/`, `:` and `@` percent-escaped, so that
    /// distinct references never share one.
    fn list_dir(&self, list: &Reference) -> PathBuf {
        let escaped = list
            .to_string()
            .replace('/', "%2F")
            .replace(':', "%3A")
            .replace('@', "%40");
        self.dir.join(escaped)
    }

    pub fn load(&self, list: &Reference) -> Result<Option<ManifestList>, ListError> {
        let path = self.list_dir(list).join("list.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ListError::io(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_str(&text)
            .map_err(|source| ListError::Damaged { path, source })
            .map(Some)
    }

    /// The list `list`, which must exist.
    pub fn load_existing(&self, list: &Reference) -> Result<ManifestList, ListError> {
        self.load(list)?
            .ok_or_else(|| ListError::NoList { list: list.clone() })
    }

    /// The list `create` starts from: none yet (an empty one), or with `amend` the one
    /// kept. A list is named by a tag; `given` is its name as the user wrote it.
    pub fn start(
        &self,
        given: &str,
        list: &Reference,
        amend: bool,
    ) -> Result<ManifestList, ListError> {
        if list.digest.is_some() {
            return Err(ListError::NamedByDigest {
                given: given.to_string(),
            });
        }
        match self.load(list)? {
            Some(_) if !amend => Err(ListError::Exists { list: list.clone() }),
            Some(kept) => Ok(kept),
            None => Ok(ManifestList {
                name: list.to_string(),
                entries: Vec::new(),
            }),
        }
    }

    /// Writes the list through a temp file and a rename, so a reader never sees half a list.
    pub fn save(&self, list: &Reference, kept: &ManifestList) -> Result<(), ListError> {
        let dir = self.list_dir(list);
        let cannot_write = || format!("cannot write the list into {}", dir.display());
        std::fs::create_dir_all(&dir)
            .map_err(ListError::io(format!("cannot create {}", dir.display())))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(ListError::io(cannot_write()))?;
        serde_json::to_writer_pretty(&mut tmp, kept)
            .map_err(std::io::Error::from)
            .and_then(|()| tmp.flush())
            .map_err(ListError::io(cannot_write()))?;
        tmp.persist(dir.join("list.json"))
            .map_err(|e| ListError::io(cannot_write())(e.error))?;
        Ok(())
    }

    /// Deletes a list; false if there was none.
    pub fn remove(&self, list: &Reference) -> Result<bool, ListError> {
        let dir = self.list_dir(list);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ListError::io(format!("cannot delete {}", dir.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_oci::media;

    fn entry(source: &str, image: &str, platform: Option<&str>) -> ListEntry {
        let digest = image.rsplit('@').next().unwrap().parse().unwrap();
        let mut descriptor = Descriptor::new(media::OCI_MANIFEST, digest, 1);
        descriptor.platform = platform.map(|p| {
            let (os, arch) = p.split_once('/').unwrap();
            Platform::new(os, arch, None)
        });
        ListEntry {
            source: source.parse::<Reference>().unwrap().to_string(),
            image: image.to_string(),
            descriptor,
        }
    }

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:x}").repeat(64))
    }

    #[test]
    fn list_dirs_are_distinct_for_distinct_references() {
        let store = ListStore::in_root(Path::new("/x"));
        let a = store.list_dir(&"127.0.0.1:5000/a-b:1".parse().unwrap());
        let b = store.list_dir(&"127.0.0.1:5000/a/b:1".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x/manifests")));
    }

    #[test]
    fn an_amended_entry_replaces_the_same_image_or_platform() {
        let image = |n| format!("localhost:5000/app@{}", digest(n));
        let mut list = ManifestList {
            name: "localhost:5000/list:1".into(),
            entries: vec![
                entry("localhost:5000/app:a", &image(1), Some("linux/amd64")),
                entry("localhost:5000/app:b", &image(2), Some("linux/arm64")),
            ],
        };
        list.amend(vec![entry(
            "localhost:5000/app:c",
            &image(3),
            Some("linux/amd64"),
        )]);
        let images: Vec<&str> = list.entries.iter().map(|e| e.image.as_str()).collect();
        assert_eq!(images, [image(2), image(3)]);
    }

    #[test]
    fn entries_are_found_by_source_or_digest_and_annotated_with_known_platforms() {
        let image = |n| format!("localhost:5000/app@{}", digest(n));
        let mut list = ManifestList {
            name: "localhost:5000/list:1".into(),
            entries: vec![
                entry("localhost:5000/app:multi", &image(1), Some("linux/amd64")),
                entry("localhost:5000/app:multi", &image(2), Some("linux/arm64")),
            ],
        };
        assert_eq!(list.find_entry(&image(2)).unwrap(), 1);
        let err = list.find_entry("localhost:5000/app:multi").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("localhost:5000/app:multi is an index that gave 2 entries"),
            "{err}"
        );
        let err = list.find_entry("localhost:5000/other:1").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the list localhost:5000/list:1 has no entry localhost:5000/other:1; its \
                 images: {}, {}",
                image(1),
                image(2)
            )
        );

        let edit = PlatformEdit {
            variant: Some("v8".into()),
            os_features: Some(vec!["".into(), "sse4".into()]),
            ..PlatformEdit::default()
        };
        list.annotate(&image(2), &edit).unwrap();
        let platform = list.entries[1].descriptor.platform.as_ref().unwrap();
        assert_eq!(
            (platform.variant.as_deref(), platform.os_features.as_slice()),
            (Some("v8"), ["sse4".to_string()].as_slice())
        );
        let sparc = PlatformEdit {
            architecture: Some("sparc".into()),
            ..PlatformEdit::default()
        };
        let err = list.annotate(&image(1), &sparc).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "annotating {}: unknown architecture `sparc`: expected one of 386, amd64",
                image(1)
            )),
            "{err}"
        );
        assert_eq!(
            list.entries[0].descriptor.platform,
            Some("linux/amd64".parse().unwrap()),
            "a refused annotation changes nothing"
        );
    }

    #[test]
    fn two_runnable_entries_for_one_platform_are_refused() {
        let image = |n| format!("localhost:5000/app@{}", digest(n));
        let entries = [
            entry("localhost:5000/app:a", &image(1), Some("linux/amd64")),
            entry("localhost:5000/app:b", &image(2), Some("unknown/unknown")),
            entry("localhost:5000/app:c", &image(3), Some("unknown/unknown")),
            entry("localhost:5000/app:d", &image(4), Some("linux/amd64")),
        ];
        assert_eq!(
            check_distinct_platforms(&entries).unwrap_err().to_string(),
            "two sources provide linux/amd64: localhost:5000/app:a and localhost:5000/app:d"
        );
        check_distinct_platforms(&entries[..3]).unwrap();
    }

    #[test]
    fn a_list_is_kept_whole_and_named_by_a_tag() {
        let root = tempfile::tempdir().unwrap();
        let store = ListStore::in_root(root.path());
        let name: Reference = "localhost:5000/list:1".parse().unwrap();
        assert!(matches!(
            store.load_existing(&name),
            Err(ListError::NoList { .. })
        ));
        let mut list = store.start("localhost:5000/list:1", &name, false).unwrap();
        list.amend(vec![entry(
            "localhost:5000/app:a",
            &format!("localhost:5000/app@{}", digest(1)),
            Some("linux/amd64"),
        )]);
        store.save(&name, &list).unwrap();
        assert_eq!(store.load_existing(&name).unwrap().entries.len(), 1);
        let err = store.start("x", &name, false).unwrap_err().to_string();
        assert!(err.contains("exists already"), "{err}");
        assert_eq!(store.start("x", &name, true).unwrap().entries.len(), 1);
        let pinned = name.with_digest(digest(1).parse().unwrap());
        assert_eq!(
            store.start("l@d", &pinned, true).unwrap_err().to_string(),
            "l@d: a list is named by a tag, not a digest"
        );

        let list_json = store.list_dir(&name).join("list.json");
        std::fs::write(&list_json, "{").unwrap();
        let err = store.load(&name).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{} is damaged: ", list_json.display())),
            "{err}"
        );
        assert!(store.remove(&name).unwrap());
        assert!(!store.remove(&name).unwrap());
    }
}
