use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, DigestWriter};
use kiln_snapshot::{LayerBlob, LayerOptions};

use crate::BuildError;

/// kiln's work and cache directory: a content-addressed blob store, extracted layer dirs keyed
/// by diff_id, and scratch space. Everything lands under a temporary name first and is renamed
/// into place, so an interrupted build never leaves a half-written blob or layer dir.
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        for sub in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(sub)).map_err(BuildError::io(format!(
                "creating {}",
                root.join(sub).display()
            )))?;
        }
        let root = root
            .canonicalize()
            .map_err(BuildError::io(format!("opening {}", root.display())))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A scratch directory removed when dropped.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, BuildError> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.root.join("tmp"))
            .map_err(BuildError::io("creating a scratch dir in the kiln store"))
    }

    /// A path in the scratch area for a file that will be renamed into the store.
    pub fn temp_path(&self, prefix: &str) -> Result<tempfile::TempPath, BuildError> {
        Ok(tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(self.root.join("tmp"))
            .map_err(BuildError::io("creating a scratch file in the kiln store"))?
            .into_temp_path())
    }

    fn commit_blob(&self, tmp: tempfile::TempPath, digest: &Digest) -> Result<(), BuildError> {
        let dest = self.blob_path(digest);
        tmp.persist(&dest)
            .map_err(|e| BuildError::io(format!("storing blob {digest}"))(e.error))
    }

    /// Stores a JSON document (config, manifest or index) and describes it.
    pub fn put_json(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, BuildError> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            let tmp = self.temp_path("json-")?;
            fs::write(&tmp, bytes).map_err(BuildError::io("writing a blob"))?;
            self.commit_blob(tmp, &digest)?;
        }
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    /// Turns an overlay-format dir into a compressed layer blob in the store.
    pub fn put_layer(&self, dir: &Path, opts: &LayerOptions) -> Result<LayerBlob, BuildError> {
        let tmp = self.temp_path("layer-")?;
        let file = File::create(&tmp).map_err(BuildError::io("creating a layer blob"))?;
        let mut out = BufWriter::new(file);
        let blob = kiln_snapshot::write_layer(dir, &mut out, opts).map_err(|e| BuildError::Io {
            context: format!("writing a layer from {}", dir.display()),
            source: std::io::Error::other(e),
        })?;
        out.flush()
            .map_err(BuildError::io("writing a layer blob"))?;
        self.commit_blob(tmp, &blob.digest)?;
        Ok(blob)
    }

    /// Copies a blob from a reader into the store, checking it hashes to `expected`.
    pub fn put_blob_from(
        &self,
        mut src: impl std::io::Read,
        expected: &Digest,
    ) -> Result<(), BuildError> {
        let tmp = self.temp_path("blob-")?;
        let mut w = DigestWriter::new(BufWriter::new(
            File::create(&tmp).map_err(BuildError::io("creating a blob"))?,
        ));
        std::io::copy(&mut src, &mut w).map_err(BuildError::io("writing a blob"))?;
        let (digest, _, mut inner) = w.finish();
        inner.flush().map_err(BuildError::io("writing a blob"))?;
        if &digest != expected {
            return Err(BuildError::Io {
                context: format!("storing blob {expected}"),
                source: std::io::Error::other(format!("content hashes to {digest}")),
            });
        }
        self.commit_blob(tmp, expected)
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// Moves a finished layer dir into place under its diff_id. If another build already
    /// stored the same layer, that one is kept and `dir` is removed.
    pub fn commit_layer_dir(&self, dir: &Path, diff_id: &Digest) -> Result<PathBuf, BuildError> {
        let dest = self.layer_dir(diff_id);
        if dest.exists() {
            let _ = fs::remove_dir_all(dir);
            return Ok(dest);
        }
        match fs::rename(dir, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.exists() => {
                let _ = fs::remove_dir_all(dir);
                Ok(dest)
            }
            Err(e) => Err(BuildError::io(format!("storing layer {diff_id}"))(e)),
        }
    }
}
