//! Layers to rootfs and back.
//!
//! kiln keeps every layer as a directory in *overlayfs format*: a deletion is a 0/0 character
//! device named like the deleted entry, an opaque directory carries `user.overlay.opaque="y"`.
//! This crate turns OCI layer tars into such directories ([`extract_layer`]), such directories
//! into deterministic layer tars, gzip, zstd, eStargz or uncompressed ([`write_layer`]), reads a stack of them as one merged
//! tree ([`LayerStack`]) and builds COPY layers ([`copy_into_layer`]). For in-place builds it
//! lays layers out in a live tree and captures what a command changed there ([`LiveRoot`]).

mod archive;
mod chmod;
mod chunk_pipe;
mod copy;
mod decompress;
mod encoding;
mod estargz;
mod extract;
mod fsmeta;
mod inventory;
mod live;
mod pargz;
mod stack;
mod tar_reader;
mod write;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use archive::extract_archive;
pub use chmod::{Chmod, ChmodError};
pub use chunk_pipe::{ChunkReader, ChunkSender, chunk_pipe};
pub use copy::{CopyOptions, copy_into_layer, mkdir_in_layer, next_data};
pub use decompress::{Compression, DecompressError, MAX_HISTORY_MIB, decompress};
pub use encoding::{LayerEncoding, recompress};
pub use estargz::{TOC_DIGEST_ANNOTATION, TOC_NAME, UNCOMPRESSED_SIZE_ANNOTATION};
pub use extract::{ExtractStats, extract_layer};
pub use fsmeta::copied_xattrs;
pub use inventory::{Changes, Inventory};
pub use live::LiveRoot;
pub use stack::LayerStack;
pub use write::{LayerBlob, LayerOptions, write_layer, write_tar};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the layer tar stream: {0}")]
    TarStream(#[source] io::Error),
    #[error("layer entry `{entry}`: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry `{entry}` would land outside the rootfs")]
    EntryEscapes { entry: String },
    #[error("layer entry `{entry}` goes through the symlink `{symlink}`; refusing to follow it")]
    EntryThroughSymlink { entry: String, symlink: String },
    #[error("layer entry `{entry}`: `{parent}` is not a directory")]
    EntryParentNotDir { entry: String, parent: String },
    #[error("hard link `{entry}` points to `{target}`, which is outside the rootfs")]
    HardLinkEscapes { entry: String, target: String },
    #[error("hard link `{entry}` points to `{target}`, which is not an earlier file of this layer")]
    HardLinkTargetMissing { entry: String, target: String },
    #[error(
        "layer entry `{entry}` (at byte {offset} of the tar): its {what} is {size} bytes, over kiln's limit of {limit}"
    )]
    TooLarge {
        entry: String,
        offset: u64,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("layer entry `{entry}` has unsupported tar entry type {kind:?}")]
    UnsupportedEntryType { entry: String, kind: u8 },
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the layer tar: {0}")]
    Output(#[source] io::Error),
    #[error("`{}` does not exist in the image", path.display())]
    NotInImage { path: PathBuf },
    #[error("`{}` already exists", path.display())]
    DestinationExists { path: PathBuf },
    #[error("cannot copy into `{}`: it or one of its parents is not a directory in the image", path.display())]
    TargetParentNotDir { path: PathBuf },
    #[error("cannot copy the non-directory `{}` onto the image root", src.display())]
    FileOntoRoot { src: PathBuf },
}

/// How an entry name or link target from a tar appears in messages: at most
/// [`SHOWN_BYTES`] of it, so that no error repeats megabytes of an attacker's bytes.
pub(crate) fn shown(name: &[u8]) -> String {
    if name.len() <= SHOWN_BYTES {
        return String::from_utf8_lossy(name).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&name[..SHOWN_BYTES]),
        name.len()
    )
}

const SHOWN_BYTES: usize = 200;

/// Attach a host path to an I/O error.
pub(crate) fn at(path: &std::path::Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}
