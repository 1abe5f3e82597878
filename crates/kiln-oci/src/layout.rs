//! Writing OCI image layouts, as a directory or as a tar archive.
//!
//! Both are written under a temporary name beside the destination and renamed into place, so a
//! failed or interrupted write never leaves a half-written layout where the user asked for one.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Digest, ImageIndex, to_json_bytes};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A blob to place in a layout: its digest and the file holding its bytes.
pub struct LayoutBlob<'a> {
    pub digest: &'a Digest,
    pub path: &'a Path,
}

fn temp_sibling(dest: &Path) -> io::Result<PathBuf> {
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name")
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)?;
    Ok(parent.join(format!(
        ".{}.kiln-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Writes an OCI layout directory at `dest`, replacing what was there.
pub fn write_dir(dest: &Path, blobs: &[LayoutBlob<'_>], index: &ImageIndex) -> io::Result<()> {
    let tmp = temp_sibling(dest)?;
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| {
        let blob_dir = tmp.join("blobs/sha256");
        fs::create_dir_all(&blob_dir)?;
        for b in blobs {
            let target = blob_dir.join(b.digest.hex());
            // A hard link costs nothing when the store is on the same filesystem.
            if fs::hard_link(b.path, &target).is_err() {
                fs::copy(b.path, &target)?;
            }
        }
        fs::write(tmp.join("oci-layout"), OCI_LAYOUT)?;
        fs::write(tmp.join("index.json"), to_json_bytes(index))?;
        if dest.exists() {
            fs::remove_dir_all(dest)?;
        }
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes an OCI layout as a tar archive at `dest`.
pub fn write_tar(dest: &Path, blobs: &[LayoutBlob<'_>], index: &ImageIndex) -> io::Result<()> {
    let tmp = temp_sibling(dest)?;
    let result = (|| {
        let mut ar = tar::Builder::new(BufWriter::new(File::create(&tmp)?));
        let dir = |ar: &mut tar::Builder<_>, path: &str| -> io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            ar.append_data(&mut h, path, io::empty())
        };
        dir(&mut ar, "blobs/")?;
        dir(&mut ar, "blobs/sha256/")?;
        let mut seen = std::collections::BTreeSet::new();
        for b in blobs {
            if !seen.insert(b.digest.hex().to_string()) {
                continue;
            }
            let f = File::open(b.path)?;
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(f.metadata()?.len());
            ar.append_data(&mut h, format!("blobs/sha256/{}", b.digest.hex()), f)?;
        }
        for (name, data) in [
            ("oci-layout", OCI_LAYOUT.to_vec()),
            ("index.json", to_json_bytes(index)),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            ar.append_data(&mut h, name, &data[..])?;
        }
        ar.into_inner()?.flush()?;
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Descriptor, media};

    fn sample(dir: &Path) -> (Digest, PathBuf, ImageIndex) {
        let data = b"blob bytes";
        let d = Digest::of(data);
        let p = dir.join("blob");
        fs::write(&p, data).unwrap();
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: vec![Descriptor::new(
                media::OCI_MANIFEST,
                d.clone(),
                data.len() as u64,
            )],
            annotations: Default::default(),
        };
        (d, p, index)
    }

    #[test]
    fn directory_layout_has_blobs_and_index() {
        let t = tempfile::tempdir().unwrap();
        let (d, p, index) = sample(t.path());
        let dest = t.path().join("out");
        write_dir(
            &dest,
            &[LayoutBlob {
                digest: &d,
                path: &p,
            }],
            &index,
        )
        .unwrap();
        assert_eq!(
            fs::read(dest.join("blobs/sha256").join(d.hex())).unwrap(),
            b"blob bytes"
        );
        let idx: ImageIndex =
            serde_json::from_slice(&fs::read(dest.join("index.json")).unwrap()).unwrap();
        assert_eq!(idx, index);
        assert!(fs::read_dir(t.path()).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .contains("kiln-tmp")
        }));
    }

    #[test]
    fn tar_layout_lists_expected_entries() {
        let t = tempfile::tempdir().unwrap();
        let (d, p, index) = sample(t.path());
        let dest = t.path().join("out.tar");
        write_tar(
            &dest,
            &[LayoutBlob {
                digest: &d,
                path: &p,
            }],
            &index,
        )
        .unwrap();
        let mut ar = tar::Archive::new(File::open(&dest).unwrap());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&format!("blobs/sha256/{}", d.hex())),
            "{names:?}"
        );
        assert!(
            names.contains(&"index.json".to_string()) && names.contains(&"oci-layout".to_string())
        );
    }
}
