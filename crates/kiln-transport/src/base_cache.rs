//! kaniko's base-image cache (`--cache-dir`, filled by kaniko's warmer or `kiln warmer`): per
//! image, a `docker save` archive named by the digest of the image's manifest for its
//! platform (`sha256:...`), holding its blobs as the registry serves them, and beside it
//! `<digest>.json`, that manifest. An entry older than the TTL (by its mtime) is not used.
//! Every blob read from an entry is checked against the manifest, so an entry can make a
//! build fail over to the registry but never change what it builds on.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_oci::{Digest, ImageManifest, Platform, media};
use kiln_registry::{MAX_MANIFEST_BYTES, Reference, RegistryClient};

use crate::files::{open_regular, read_capped, write_atomic};
use crate::{
    DockerArchiveDestination, ImageSource, RawManifest, RegistrySource, Selection, TransportError,
    copy, platform_manifest,
};

/// A kaniko `--cache-dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImageCache {
    dir: PathBuf,
    ttl: Duration,
}

/// What the cache holds for a manifest digest.
#[derive(Debug, PartialEq, Eq)]
pub enum CachedImage {
    /// The archive, younger than the TTL.
    Fresh(PathBuf),
    /// An archive older than the TTL: a miss.
    Expired(PathBuf),
    Missing,
}

/// What [`BaseImageCache::warm`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Warmed {
    Written(Digest),
    /// A fresh entry was there already (nothing downloaded).
    AlreadyCached(Digest),
}

impl BaseImageCache {
    pub fn new(dir: PathBuf, ttl: Duration) -> BaseImageCache {
        BaseImageCache { dir, ttl }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn archive_path(&self, manifest: &Digest) -> PathBuf {
        self.dir.join(manifest.to_string())
    }

    /// The entry for the image whose manifest has digest `manifest`.
    pub fn lookup(&self, manifest: &Digest) -> CachedImage {
        let path = self.archive_path(manifest);
        // Anything but a file (a FIFO, a device, a directory) is no entry.
        let Some(modified) = fs::metadata(&path)
            .ok()
            .filter(fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
        else {
            return CachedImage::Missing;
        };
        // A time in the future counts as new, as kaniko compares mtime + TTL with now.
        match SystemTime::now().duration_since(modified) {
            Ok(age) if age > self.ttl => CachedImage::Expired(path),
            _ => CachedImage::Fresh(path),
        }
    }

    /// The manifest saved beside a fresh entry, when its bytes have digest `manifest`: an image
    /// named by digest is then read with no registry at all. `None` for anything else (no
    /// entry, another digest, an index, a file that is no regular file or too large).
    pub fn manifest(&self, manifest: &Digest) -> Option<RawManifest> {
        if !matches!(self.lookup(manifest), CachedImage::Fresh(_)) {
            return None;
        }
        let path = self.dir.join(format!("{manifest}.json"));
        let bytes = read_capped(open_regular(&path).ok()?, MAX_MANIFEST_BYTES).ok()?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES || &Digest::of(&bytes) != manifest {
            return None;
        }
        // An index need not say it is one (its mediaType is optional): whatever is not an
        // image manifest is left to the registry.
        let media_type = serde_json::from_slice::<ImageManifest>(&bytes)
            .ok()?
            .media_type
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        (!media::is_index(&media_type)).then(|| RawManifest {
            media_type,
            digest: manifest.clone(),
            bytes,
        })
    }

    /// kaniko's warmer: stores `reference`'s image for `platform`, unless a fresh entry holds
    /// it already and `force` is not set. The archive and its manifest are each written
    /// under a temporary name and renamed into place.
    pub fn warm(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        platform: &Platform,
        force: bool,
    ) -> Result<Warmed, TransportError> {
        let source = RegistrySource::new(client, reference.clone());
        let manifest = platform_manifest(&source, &source.top()?, platform)?;
        // Stored means both files: a warmer stopped between the two writes stores both again.
        if !force && self.manifest(&manifest.digest).is_some() {
            return Ok(Warmed::AlreadyCached(manifest.digest));
        }
        fs::create_dir_all(&self.dir).map_err(TransportError::io(format!(
            "creating the cache directory {}",
            self.dir.display()
        )))?;
        let pinned = RegistrySource::new(client, reference.with_digest(manifest.digest.clone()));
        let mut dest = DockerArchiveDestination::as_stored(
            &self.archive_path(&manifest.digest),
            vec![reference.clone()],
        )?;
        copy(&pinned, &mut dest, &Selection::All)?;
        write_atomic(
            &self.dir.join(format!("{}.json", manifest.digest)),
            &manifest.bytes,
        )?;
        Ok(Warmed::Written(manifest.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_manifest_is_used_only_when_it_is_an_image_manifest_of_that_digest() {
        let t = tempfile::tempdir().unwrap();
        let cache = BaseImageCache::new(t.path().to_path_buf(), Duration::from_secs(3600));
        let layer = format!(
            r#"{{"mediaType":"{}","digest":"{}","size":1}}"#,
            media::OCI_LAYER_GZIP,
            Digest::of(b"l")
        );
        let config = format!(
            r#"{{"mediaType":"{}","digest":"{}","size":1}}"#,
            media::OCI_CONFIG,
            Digest::of(b"c")
        );
        let image = format!(r#"{{"schemaVersion":2,"config":{config},"layers":[{layer}]}}"#);
        // An OCI index need not carry its mediaType.
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{layer}]}}"#);
        for (json, used) in [(image, true), (index, false)] {
            let digest = Digest::of(json.as_bytes());
            fs::write(t.path().join(digest.to_string()), "an archive").unwrap();
            fs::write(t.path().join(format!("{digest}.json")), &json).unwrap();
            let found = cache.manifest(&digest);
            assert_eq!(found.is_some(), used, "{json}");
            if let Some(found) = found {
                assert_eq!(found.media_type, media::OCI_MANIFEST);
                assert_eq!(found.bytes, json.as_bytes());
            }
        }
    }
}
