//! OCI image layouts, as directories (`oci:`) and as tar archives (`oci-archive:`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, ImageIndex, media, to_json_bytes};
use kiln_registry::Reference;

use crate::files::{
    Files, OpenFile, TarIndex, place_blob, read_verified, temp_beside, temp_dir_beside,
    write_atomic, write_verified,
};
use crate::{ImageDestination, ImageSource, RawManifest, TransportError};

/// The index.json annotation that names an image in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The index.json annotation containerd and buildx put the full image name in.
pub const IMAGE_NAME: &str = "io.containerd.image.name";

const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A name an image gets in a layout's index.json.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutName {
    /// `org.opencontainers.image.ref.name`, which `oci:DIR:NAME` selects.
    pub ref_name: String,
    /// `io.containerd.image.name`: the full image name, as containerd and buildx record it.
    pub image_name: Option<String>,
    /// Other annotations of the entry (buildx's `--annotation index-descriptor:`).
    pub annotations: BTreeMap<String, String>,
}

impl LayoutName {
    /// A ref name alone, as skopeo writes one.
    pub fn new(ref_name: String) -> LayoutName {
        LayoutName {
            ref_name,
            image_name: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The name buildx gives the image of `-t NAME[:TAG]`: its tag (`latest` without one) as
    /// the ref name, the whole reference as the image name.
    pub fn of_reference(r: &Reference) -> LayoutName {
        LayoutName {
            ref_name: r.tag.clone().unwrap_or_else(|| "latest".into()),
            image_name: Some(r.to_string()),
            annotations: BTreeMap::new(),
        }
    }

    /// The same name, its entry carrying `annotations` too.
    pub fn with_annotations(mut self, annotations: BTreeMap<String, String>) -> LayoutName {
        self.annotations = annotations;
        self
    }

    /// Whether the index entry `d` carries this name, so the name moves from it to a new
    /// image, as a tag does. An entry of another image name keeps its ref name.
    fn is_on(&self, d: &Descriptor) -> bool {
        ref_name(d) == Some(&self.ref_name)
            && match (&self.image_name, d.annotations.get(IMAGE_NAME)) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }

    /// `d` annotated with this name.
    fn annotate(&self, mut d: Descriptor) -> Descriptor {
        d.annotations.extend(self.annotations.clone());
        d.annotations.insert(REF_NAME.into(), self.ref_name.clone());
        if let Some(image) = &self.image_name {
            d.annotations.insert(IMAGE_NAME.into(), image.clone());
        }
        d
    }
}

/// Which image of a layout to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutRef {
    /// The only entry of index.json (an error if there are several).
    Only,
    /// The entry whose `org.opencontainers.image.ref.name` is this.
    Name(String),
    /// The manifest or index with this digest, listed in index.json or not.
    Digest(Digest),
}

impl LayoutRef {
    /// `Name` when a name is given, else `Only`.
    pub fn from_name(name: Option<String>) -> LayoutRef {
        name.map_or(LayoutRef::Only, LayoutRef::Name)
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

fn read_index(files: &Files) -> Result<ImageIndex, TransportError> {
    serde_json::from_slice(&files.read_small("index.json")?).map_err(|e| {
        TransportError::invalid(files.describe(), format!("unreadable index.json: {e}"))
    })
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.get(REF_NAME).map(String::as_str)
}

/// An OCI layout read from a directory or an archive.
pub struct OciLayoutSource {
    files: Files,
    location: String,
    top: Descriptor,
}

impl OciLayoutSource {
    pub fn open_dir(dir: &Path, which: LayoutRef) -> Result<OciLayoutSource, TransportError> {
        Self::open_files(Files::Dir(dir.to_path_buf()), "oci", which)
    }

    pub fn open_archive(file: &Path, which: LayoutRef) -> Result<OciLayoutSource, TransportError> {
        Self::open_files(Files::Tar(TarIndex::scan(file)?), "oci-archive", which)
    }

    /// A layout directory, or an archive if `path` is a file.
    pub fn open(path: &Path, which: LayoutRef) -> Result<OciLayoutSource, TransportError> {
        if path.is_file() {
            Self::open_archive(path, which)
        } else {
            Self::open_dir(path, which)
        }
    }

    /// The ref names of a layout's index.json entries (directory or archive).
    pub fn ref_names(path: &Path) -> Result<Vec<String>, TransportError> {
        let files = if path.is_file() {
            Files::Tar(TarIndex::scan(path)?)
        } else {
            Files::Dir(path.to_path_buf())
        };
        Ok(read_index(&files)?
            .manifests
            .iter()
            .filter_map(ref_name)
            .map(str::to_string)
            .collect())
    }

    fn open_files(
        files: Files,
        transport: &str,
        which: LayoutRef,
    ) -> Result<OciLayoutSource, TransportError> {
        let mut location = format!("{transport}:{}", files.describe());
        let index = read_index(&files)?;
        let names = || {
            let names: Vec<&str> = index.manifests.iter().filter_map(ref_name).collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        let top = match &which {
            LayoutRef::Only => match index.manifests.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(TransportError::invalid(
                        location,
                        "the layout holds no image",
                    ));
                }
                _ => {
                    return Err(TransportError::invalid(
                        &location,
                        format!(
                            "the layout holds several images; name one (its names: {})",
                            names()
                        ),
                    ));
                }
            },
            LayoutRef::Name(name) => {
                location = format!("{location}:{name}");
                index
                    .manifests
                    .iter()
                    .find(|d| ref_name(d) == Some(name))
                    .cloned()
                    .ok_or_else(|| {
                        TransportError::invalid(
                            &location,
                            format!("no image named `{name}` (its names: {})", names()),
                        )
                    })?
            }
            LayoutRef::Digest(digest) => {
                location = format!("{location}@{digest}");
                match index.manifests.iter().find(|d| &d.digest == digest) {
                    Some(d) => d.clone(),
                    None => Self::describe_blob(&files, &location, digest)?,
                }
            }
        };
        if !media::is_index(&top.media_type) && !media::is_manifest(&top.media_type) {
            return Err(TransportError::invalid(
                location,
                format!(
                    "{} has unsupported media type {}",
                    top.digest, top.media_type
                ),
            ));
        }
        Ok(OciLayoutSource {
            files,
            location,
            top,
        })
    }

    /// A descriptor for a manifest blob not listed in index.json, from its own mediaType.
    fn describe_blob(
        files: &Files,
        location: &str,
        digest: &Digest,
    ) -> Result<Descriptor, TransportError> {
        let bytes = files.read_small(&blob_name(digest)).map_err(|_| {
            TransportError::invalid(location, format!("the layout has no manifest {digest}"))
        })?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(Descriptor::new(
            &media_type,
            digest.clone(),
            bytes.len() as u64,
        ))
    }
}

impl ImageSource for OciLayoutSource {
    fn describe(&self) -> String {
        self.location.clone()
    }

    fn top(&self) -> Result<RawManifest, TransportError> {
        self.manifest(&self.top)
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, TransportError> {
        let (reader, _) = self.open_blob(desc)?;
        let bytes = read_verified(reader, desc, &self.location, "manifest")?;
        Ok(RawManifest {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            bytes,
        })
    }

    fn blob_to_file(&self, desc: &Descriptor, dest: &Path) -> Result<(), TransportError> {
        let (reader, _) = self.open_blob(desc)?;
        write_verified(reader, desc, dest, &self.location, "blob")
    }
}

impl OciLayoutSource {
    fn open_blob(&self, desc: &Descriptor) -> Result<OpenFile<'_>, TransportError> {
        self.files.open(&blob_name(&desc.digest))?.ok_or_else(|| {
            TransportError::invalid(
                &self.location,
                format!("the layout has no blob {}", desc.digest),
            )
        })
    }
}

/// Writes into an OCI layout directory.
///
/// A new layout is assembled in a temp directory beside the destination and renamed into
/// place on commit. Into an existing layout, blobs are added in place (each through a temp
/// name) and index.json is replaced last, so the layout stays consistent if the copy fails.
/// A directory that holds anything but a layout is refused, never replaced.
pub struct OciDirDestination {
    dest: PathBuf,
    /// The names the image gets in index.json; none gives one unnamed entry.
    names: Vec<LayoutName>,
    /// Where blobs go: the destination itself, or the temp directory becoming it.
    work: PathBuf,
    staging: Option<tempfile::TempDir>,
    /// The blobs and manifests this copy wrote, in the order it wrote them.
    written: Vec<Digest>,
}

impl OciDirDestination {
    pub fn create(dir: &Path, names: Vec<LayoutName>) -> Result<OciDirDestination, TransportError> {
        let existing_layout = dir.join("oci-layout").is_file();
        let empty_dir = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if dir.exists() && !existing_layout && !empty_dir {
            return Err(TransportError::invalid(
                format!("oci:{}", dir.display()),
                "exists and is not an OCI layout",
            ));
        }
        if existing_layout {
            return Ok(OciDirDestination {
                dest: dir.to_path_buf(),
                names,
                work: dir.to_path_buf(),
                staging: None,
                written: Vec::new(),
            });
        }
        let staging = temp_dir_beside(dir, ".kiln-layout-")?;
        Ok(OciDirDestination {
            dest: dir.to_path_buf(),
            names,
            work: staging.path().to_path_buf(),
            staging: Some(staging),
            written: Vec::new(),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.work.join(blob_name(digest))
    }

    fn existing_index(&self) -> Result<Option<ImageIndex>, TransportError> {
        if self.staging.is_some() {
            return Ok(None);
        }
        read_index(&Files::Dir(self.work.clone())).map(Some)
    }

    /// `transport:path[:first name]`, for messages.
    fn describe_as(&self, transport: &str, path: &Path) -> String {
        match self.names.first() {
            Some(n) => format!("{transport}:{}:{}", path.display(), n.ref_name),
            None => format!("{transport}:{}", path.display()),
        }
    }
}

impl ImageDestination for OciDirDestination {
    fn describe(&self) -> String {
        self.describe_as("oci", &self.dest)
    }

    fn put_blob(
        &mut self,
        source: &dyn ImageSource,
        desc: &Descriptor,
    ) -> Result<(), TransportError> {
        let path = self.blob_path(&desc.digest);
        if path.is_file() {
            return Ok(());
        }
        fs::create_dir_all(path.parent().expect("blob paths have a parent")).map_err(
            TransportError::io(format!("creating {}", self.work.display())),
        )?;
        place_blob(source, desc, &path)?;
        self.written.push(desc.digest.clone());
        Ok(())
    }

    fn put_manifest(&mut self, manifest: &RawManifest) -> Result<(), TransportError> {
        let path = self.blob_path(&manifest.digest);
        if path.is_file() {
            return Ok(());
        }
        write_atomic(&path, &manifest.bytes)?;
        self.written.push(manifest.digest.clone());
        Ok(())
    }

    fn commit(&mut self, top: &RawManifest) -> Result<(), TransportError> {
        self.commit_index(top).map(drop)
    }
}

impl OciDirDestination {
    /// Stores `top`, lists it in index.json and moves a staged layout into place; returns
    /// the index written, so an archive need not read it back.
    fn commit_index(&mut self, top: &RawManifest) -> Result<ImageIndex, TransportError> {
        self.put_manifest(top)?;
        let mut index = self
            .existing_index()?
            .unwrap_or_else(|| ImageIndex::new(media::OCI_INDEX, Vec::new()));
        if self.names.is_empty() {
            index
                .manifests
                .retain(|d| d.digest != top.digest || ref_name(d).is_some());
            index.manifests.push(top.descriptor());
        }
        for name in &self.names {
            index.manifests.retain(|d| !name.is_on(d));
            index.manifests.push(name.annotate(top.descriptor()));
        }
        write_atomic(&self.work.join("oci-layout"), OCI_LAYOUT_FILE)?;
        write_atomic(&self.work.join("index.json"), &to_json_bytes(&index))?;
        if let Some(staging) = self.staging.take() {
            let from = staging.keep();
            // rename(2) replaces an empty directory, which is all `create` lets through.
            fs::rename(&from, &self.dest).map_err(|e| {
                let _ = fs::remove_dir_all(&from);
                TransportError::io(format!("moving the layout to {}", self.dest.display()))(e)
            })?;
            self.work = self.dest.clone();
        }
        Ok(index)
    }
}

/// Writes an OCI layout archive: assembled as a directory in a temp dir, then written as a
/// tar under a temp name and renamed into place.
pub struct OciArchiveDestination {
    file: PathBuf,
    layout: OciDirDestination,
    // Dropped after `layout`, which lives inside it.
    _staging: tempfile::TempDir,
}

impl OciArchiveDestination {
    pub fn create(
        file: &Path,
        names: Vec<LayoutName>,
    ) -> Result<OciArchiveDestination, TransportError> {
        let staging = temp_dir_beside(file, ".kiln-archive-")?;
        let layout = OciDirDestination::create(&staging.path().join("layout"), names)?;
        Ok(OciArchiveDestination {
            file: file.to_path_buf(),
            layout,
            _staging: staging,
        })
    }

    /// The layout as a tar: its directories, its blobs in the order the copy wrote them
    /// (layers and configs, then manifests, the top one last), then `oci-layout` and
    /// `index.json`, every entry owned by 0:0 with mtime 0, so equal copies give equal
    /// archives.
    fn write_tar(&self, index: &ImageIndex) -> Result<(), TransportError> {
        let tmp = temp_beside(&self.file)?;
        let context = || format!("writing {}", self.file.display());
        let mut ar = tar::Builder::new(BufWriter::new(tmp.as_file()));
        let header = |kind: Option<tar::EntryType>, mode: u32, size: u64| {
            let mut h = tar::Header::new_ustar();
            if let Some(kind) = kind {
                h.set_entry_type(kind);
            }
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_size(size);
            h
        };
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(Some(tar::EntryType::Directory), 0o755, 0);
            ar.append_data(&mut h, dir, io::empty())
                .map_err(TransportError::io(context()))?;
        }
        for digest in &self.layout.written {
            let f =
                File::open(self.layout.blob_path(digest)).map_err(TransportError::io(context()))?;
            let size = f.metadata().map_err(TransportError::io(context()))?.len();
            let mut h = header(Some(tar::EntryType::Regular), 0o644, size);
            ar.append_data(&mut h, blob_name(digest), f)
                .map_err(TransportError::io(context()))?;
        }
        // These two keep the old-style type byte (0) that kiln's archives have always had.
        for (name, data) in [
            ("oci-layout", OCI_LAYOUT_FILE.to_vec()),
            ("index.json", to_json_bytes(index)),
        ] {
            let mut h = header(None, 0o644, data.len() as u64);
            ar.append_data(&mut h, name, &data[..])
                .map_err(TransportError::io(context()))?;
        }
        ar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(TransportError::io(context()))?;
        tmp.persist(&self.file)
            .map_err(|e| TransportError::io(context())(e.error))?;
        Ok(())
    }
}

impl ImageDestination for OciArchiveDestination {
    fn describe(&self) -> String {
        self.layout.describe_as("oci-archive", &self.file)
    }

    fn put_blob(
        &mut self,
        source: &dyn ImageSource,
        desc: &Descriptor,
    ) -> Result<(), TransportError> {
        self.layout.put_blob(source, desc)
    }

    fn put_manifest(&mut self, manifest: &RawManifest) -> Result<(), TransportError> {
        self.layout.put_manifest(manifest)
    }

    fn commit(&mut self, top: &RawManifest) -> Result<(), TransportError> {
        let index = self.layout.commit_index(top)?;
        self.write_tar(&index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Selection, copy};
    use kiln_oci::ImageManifest;

    /// A layout at `dir` holding one image (a config and one layer with `layer` as content)
    /// named `name`; returns the manifest's digest and the layer's.
    fn make_layout(dir: &Path, name: &str, layer: &[u8]) -> (Digest, Digest) {
        let work = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut put = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            let p = work.path().join(d.hex());
            fs::write(&p, bytes).unwrap();
            files.push((d.clone(), p));
            Descriptor::new("", d, bytes.len() as u64)
        };
        let config = put(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let layer_desc = put(layer);
        let manifest = to_json_bytes(&ImageManifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: media::OCI_CONFIG.into(),
                ..config
            },
            layers: vec![Descriptor {
                media_type: media::OCI_LAYER_TAR.into(),
                ..layer_desc.clone()
            }],
            annotations: Default::default(),
        });
        let manifest_desc = put(&manifest);
        let mut entry = Descriptor::new(
            media::OCI_MANIFEST,
            manifest_desc.digest.clone(),
            manifest_desc.size,
        );
        entry.annotations.insert(REF_NAME.into(), name.into());
        // Written by hand, not by the code under test.
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        for (digest, path) in &files {
            fs::copy(path, dir.join(blob_name(digest))).unwrap();
        }
        fs::write(dir.join("oci-layout"), OCI_LAYOUT_FILE).unwrap();
        let index = ImageIndex::new(media::OCI_INDEX, vec![entry]);
        fs::write(dir.join("index.json"), to_json_bytes(&index)).unwrap();
        (manifest_desc.digest, layer_desc.digest)
    }

    fn copy_between(
        from: &OciLayoutSource,
        to: &mut dyn ImageDestination,
    ) -> Result<Digest, TransportError> {
        copy(from, to, &Selection::All).map(|r| r.digest)
    }

    #[test]
    fn layout_to_archive_to_layout_keeps_digest_and_name() {
        let t = tempfile::tempdir().unwrap();
        let (manifest, _) = make_layout(&t.path().join("a"), "app:1", b"layer one");
        let src = OciLayoutSource::open_dir(&t.path().join("a"), LayoutRef::Name("app:1".into()))
            .unwrap();
        let archive = t.path().join("a.tar");
        let mut dest =
            OciArchiveDestination::create(&archive, vec![LayoutName::new("carried".into())])
                .unwrap();
        assert_eq!(copy_between(&src, &mut dest).unwrap(), manifest);
        drop(dest);

        let from_archive =
            OciLayoutSource::open(&archive, LayoutRef::Name("carried".into())).unwrap();
        let back = t.path().join("b");
        let mut dest =
            OciDirDestination::create(&back, vec![LayoutName::new("app:1".into())]).unwrap();
        assert_eq!(copy_between(&from_archive, &mut dest).unwrap(), manifest);
        assert_eq!(OciLayoutSource::ref_names(&back).unwrap(), ["app:1"]);
        let top = OciLayoutSource::open_dir(&back, LayoutRef::Digest(manifest.clone()))
            .unwrap()
            .top()
            .unwrap();
        assert_eq!(
            top.bytes,
            fs::read(t.path().join("a").join(blob_name(&manifest))).unwrap()
        );
        let mut names = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        names.sort();
        assert_eq!(names, ["a", "a.tar", "b"], "no temp files or dirs left");
    }

    #[test]
    fn a_corrupt_blob_leaves_no_new_layout_and_an_old_one_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let (_, layer) = make_layout(&t.path().join("src"), "app:1", b"good layer");
        fs::write(t.path().join("src").join(blob_name(&layer)), b"evil layer").unwrap();
        let src = OciLayoutSource::open_dir(&t.path().join("src"), LayoutRef::Only).unwrap();

        let fresh = t.path().join("fresh");
        let mut dest = OciDirDestination::create(&fresh, Vec::new()).unwrap();
        let err = copy_between(&src, &mut dest).unwrap_err().to_string();
        drop(dest);
        assert!(err.contains(&layer.to_string()), "{err}");
        assert!(!fresh.exists());

        let old = t.path().join("old");
        make_layout(&old, "other", b"other layer");
        let before = fs::read(old.join("index.json")).unwrap();
        let mut dest =
            OciDirDestination::create(&old, vec![LayoutName::new("app:1".into())]).unwrap();
        assert!(copy_between(&src, &mut dest).is_err());
        assert_eq!(fs::read(old.join("index.json")).unwrap(), before);
        assert!(!old.join(blob_name(&layer)).exists());
        let mut names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["old", "src"]);
    }

    #[test]
    fn a_name_moves_to_the_newest_image_and_others_stay() {
        let t = tempfile::tempdir().unwrap();
        let dest_dir = t.path().join("dest");
        make_layout(&dest_dir, "keep", b"kept");
        let (first, _) = make_layout(&t.path().join("one"), "x", b"first");
        let (second, _) = make_layout(&t.path().join("two"), "x", b"second");
        for (src, expected) in [("one", &first), ("two", &second)] {
            let from = OciLayoutSource::open_dir(&t.path().join(src), LayoutRef::Only).unwrap();
            let mut dest =
                OciDirDestination::create(&dest_dir, vec![LayoutName::new("app".into())]).unwrap();
            assert_eq!(&copy_between(&from, &mut dest).unwrap(), expected);
        }
        let index = read_index(&Files::Dir(dest_dir.clone())).unwrap();
        let named: Vec<(Option<&str>, &Digest)> = index
            .manifests
            .iter()
            .map(|d| (ref_name(d), &d.digest))
            .collect();
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(named[1], (Some("app"), &second));
        assert_eq!(named[0].0, Some("keep"));
        let err = OciLayoutSource::open_dir(&dest_dir, LayoutRef::Only)
            .err()
            .unwrap();
        assert!(err.to_string().contains("keep, app"), "{err}");
    }

    #[test]
    fn names_of_references_carry_the_image_name_and_move_like_tags() {
        let t = tempfile::tempdir().unwrap();
        let (first, _) = make_layout(&t.path().join("one"), "x", b"first");
        let (second, _) = make_layout(&t.path().join("two"), "x", b"second");
        let name = |r: &str| LayoutName::of_reference(&r.parse().unwrap());
        let dest_dir = t.path().join("dest");
        let copy_in = |src: &str, names: Vec<LayoutName>| {
            let from = OciLayoutSource::open_dir(&t.path().join(src), LayoutRef::Only).unwrap();
            let mut dest = OciDirDestination::create(&dest_dir, names).unwrap();
            copy_between(&from, &mut dest).unwrap();
        };
        let listed = || {
            read_index(&Files::Dir(dest_dir.clone()))
                .unwrap()
                .manifests
                .iter()
                .map(|d| {
                    let image = d.annotations.get(IMAGE_NAME).cloned();
                    (ref_name(d).map(str::to_string), image, d.digest.clone())
                })
                .collect::<Vec<_>>()
        };
        let some = |s: &str| Some(s.to_string());

        copy_in("one", vec![name("a:1"), name("localhost:5000/b")]);
        assert_eq!(
            listed(),
            [
                (some("1"), some("docker.io/library/a:1"), first.clone()),
                (
                    some("latest"),
                    some("localhost:5000/b:latest"),
                    first.clone()
                ),
            ]
        );
        // Another image of the same tag keeps its entry; the same image name moves.
        copy_in("two", vec![name("c:1"), name("localhost:5000/b:latest")]);
        assert_eq!(
            listed(),
            [
                (some("1"), some("docker.io/library/a:1"), first.clone()),
                (some("1"), some("docker.io/library/c:1"), second.clone()),
                (
                    some("latest"),
                    some("localhost:5000/b:latest"),
                    second.clone()
                ),
            ]
        );
        // A bare ref name (kiln copy's) takes the name from every image that had it.
        copy_in("one", vec![LayoutName::new("1".into())]);
        assert_eq!(
            listed(),
            [
                (
                    some("latest"),
                    some("localhost:5000/b:latest"),
                    second.clone()
                ),
                (some("1"), None, first.clone()),
            ]
        );
    }

    #[test]
    fn archives_are_reproducible_and_layouts_get_ordinary_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        make_layout(&t.path().join("src"), "app", b"layer");
        let src = OciLayoutSource::open_dir(&t.path().join("src"), LayoutRef::Only).unwrap();
        let archive = |name: &str| {
            let path = t.path().join(name);
            let mut dest =
                OciArchiveDestination::create(&path, vec![LayoutName::new("app".into())]).unwrap();
            copy_between(&src, &mut dest).unwrap();
            drop(dest);
            fs::read(path).unwrap()
        };
        assert_eq!(archive("a.tar"), archive("b.tar"));
        let mut names: Vec<String> = tar::Archive::new(&archive("c.tar")[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names.split_off(names.len() - 2),
            ["oci-layout", "index.json"]
        );
        assert_eq!(&names[..2], ["blobs/", "blobs/sha256/"]);
        // The layer, the config, the manifest: as the copy wrote them.
        let blobs: Vec<String> = names[2..]
            .iter()
            .map(|n| n.trim_start_matches("blobs/sha256/").to_string())
            .collect();
        let manifest = src.top().unwrap();
        let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes).unwrap();
        let expected = [
            &parsed.layers[0].digest,
            &parsed.config.digest,
            &manifest.digest,
        ];
        assert_eq!(blobs, expected.map(|d| d.hex().to_string()));

        let dir = t.path().join("layout");
        let mut dest = OciDirDestination::create(&dir, Vec::new()).unwrap();
        copy_between(&src, &mut dest).unwrap();
        let umask = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o755 & !umask);
        assert_eq!(mode(&dir.join("index.json")), 0o644 & !umask);
    }
}
