//! `-o type=local` and `-o type=tar`: the files of the built images, each image's layers
//! merged (whiteouts applied) into its final rootfs, in a directory per platform when there
//! are several (`linux_amd64`, `linux_arm_v7`), as buildx lays them out.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_oci::{ImageConfig, Platform};
use kiln_snapshot::LayerStack;
use kiln_transport::ImageSource;

use crate::export::StoreSource;
use crate::output::STDOUT;
use crate::{BuildError, BuiltImage, Store, base};

/// Writes the rootfs of every image to `dest`: a directory, or with `tar` a tar file (or
/// standard output). The directory or file appears whole, by a rename, or not at all.
pub(crate) fn write(
    store: &Store,
    images: &[BuiltImage],
    source: &StoreSource<'_>,
    dest: &Path,
    tar: bool,
) -> Result<(), BuildError> {
    let shown = match dest == Path::new(STDOUT) {
        true => "to standard output".to_string(),
        false => dest.display().to_string(),
    };
    let action = |what: &str| format!("writing the {what} {shown}");
    let tar_failed = |e: kiln_snapshot::SnapshotError| BuildError::Io {
        context: action("tar"),
        source: io::Error::other(e.to_string()),
    };
    // A directory is made beside its destination (a rename cannot cross filesystems); a tar's
    // files in the store's scratch space.
    let staging = match tar {
        true => store.temp_dir("rootfs-")?,
        false => {
            let parent = parent_of(dest);
            fs::create_dir_all(parent).map_err(BuildError::io(action("directory")))?;
            // 0700 from the start: the image's setuid programs and device nodes are made in
            // it, long before the finished tree is closed off and renamed into place.
            tempfile::Builder::new()
                .prefix(".kiln-local-")
                .permissions(fs::Permissions::from_mode(0o700))
                .tempdir_in(parent)
                .map_err(BuildError::io(action("directory")))?
        }
    };
    let root = staging.path().join("rootfs");
    match images {
        [image] => export_image(store, image, source, &root)?,
        _ => {
            fs::create_dir(&root).map_err(BuildError::io(action("directory")))?;
            for image in images {
                export_image(
                    store,
                    image,
                    source,
                    &root.join(platform_dir(&image.platform)),
                )?;
            }
        }
    }
    if !tar {
        // The image's setuid programs and device nodes keep their owners and modes: only the
        // user kiln runs as may reach them. The merge gave the top the owner of the image's
        // `/`, which a step may have handed to any uid (`RUN chown 1000 /`), so it becomes
        // the owner of the directory kiln made it in.
        let ours = fs::metadata(staging.path()).map_err(BuildError::io(action("directory")))?;
        std::os::unix::fs::lchown(&root, Some(ours.uid()), Some(ours.gid()))
            .and_then(|()| fs::set_permissions(&root, fs::Permissions::from_mode(0o700)))
            .map_err(BuildError::io(action("directory")))?;
        // An empty directory is replaced; anything else is the user's and stays.
        if dest.is_dir() {
            fs::remove_dir(dest).map_err(|e| BuildError::Io {
                context: format!("{} exists and is not an empty directory", dest.display()),
                source: e,
            })?;
        }
        return fs::rename(&root, dest).map_err(BuildError::io(action("directory")));
    }
    if dest == Path::new(STDOUT) {
        let mut out = io::stdout().lock();
        return kiln_snapshot::write_tar(&root, &mut out, None).map_err(tar_failed);
    }
    let parent = parent_of(dest);
    fs::create_dir_all(parent).map_err(BuildError::io(action("tar")))?;
    let file = tempfile::Builder::new()
        .prefix(".kiln-part-")
        .tempfile_in(parent)
        .map_err(BuildError::io(action("tar")))?;
    let mut out = BufWriter::new(file.as_file());
    kiln_snapshot::write_tar(&root, &mut out, None).map_err(tar_failed)?;
    out.flush().map_err(BuildError::io(action("tar")))?;
    drop(out);
    file.persist(dest)
        .map_err(|e| BuildError::io(action("tar"))(e.error))?;
    Ok(())
}

/// The directory `dest` is in (`.` for a bare name).
fn parent_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// buildx's name for a platform's directory: `linux_amd64`, `linux_arm_v7`.
fn platform_dir(platform: &Platform) -> String {
    platform.to_string().replace('/', "_")
}

/// Merges the layers of `image` into the new directory `dir`.
fn export_image(
    store: &Store,
    image: &BuiltImage,
    source: &StoreSource<'_>,
    dir: &Path,
) -> Result<(), BuildError> {
    LayerStack::new(layer_dirs(store, image, source)?)
        .export(Path::new("/"), dir)
        .map_err(|e| BuildError::Io {
            context: format!("merging the layers of the {} image", image.platform),
            source: io::Error::other(e.to_string()),
        })
}

/// The layer dirs of `image`, bottom first. A layer the store lacks (the build never needed
/// it) is fetched, and every layer dir used is one kiln saw its blob decompress to.
pub(crate) fn layer_dirs(
    store: &Store,
    image: &BuiltImage,
    source: &dyn ImageSource,
) -> Result<Vec<PathBuf>, BuildError> {
    let config: ImageConfig = serde_json::from_slice(
        &fs::read(store.blob_path(&image.config.digest))
            .map_err(BuildError::io("reading a built image config"))?,
    )
    .map_err(|e| BuildError::io("reading a built image config")(io::Error::other(e)))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (blob, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
        let from = format!("layer {}", blob.digest);
        if !store.has_blob(&blob.digest) {
            source
                .blob_to_file(blob, &store.blob_path(&blob.digest))
                .map_err(|e| BuildError::Export {
                    action: format!("fetching {from}"),
                    source: Box::new(e),
                })?;
        }
        base::ensure_extracted(store, blob, diff_id, &from, || {})?;
        dirs.push(store.layer_dir(diff_id));
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_directories_are_named_as_buildx_names_them() {
        let dir = |p: &str| platform_dir(&p.parse().unwrap());
        assert_eq!(dir("linux/amd64"), "linux_amd64");
        assert_eq!(dir("linux/arm/v7"), "linux_arm_v7");
    }
}
