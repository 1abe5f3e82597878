//! A built image's layers in the compression an output asks for (`compression=`,
//! `compression-level=`, `force-compression=`). The build's own layers are re-encoded;
//! base layers keep their blobs unless `force-compression=true`, as in BuildKit. Each
//! re-encoded blob is kept in the store under (source diff_id, encoding), so a second build
//! or output asking for the same pays nothing.

use std::fs::{self, File};
use std::io::BufReader;

use kiln_oci::{Descriptor, Digest, ImageConfig, ImageManifest, media, to_json_bytes};
use kiln_snapshot::{LayerBlob, LayerEncoding, LayerOptions, TOC_DIGEST_ANNOTATION};
use serde::{Deserialize, Serialize};

use crate::output::ImageFormat;
use crate::progress::Progress;
use crate::{BuildError, BuiltImage, Store, base};

/// Makes a layer blob the store lacks (one left in its registry) local.
pub(crate) type Fetch<'a> = dyn Fn(&Descriptor) -> Result<(), BuildError> + 'a;

/// A layer re-encoded, as the store remembers it.
#[derive(Serialize, Deserialize)]
struct Variant {
    blob: Descriptor,
    diff_id: Digest,
}

/// The manifest of `image` with its layers as `format` asks (the image's own manifest when
/// nothing changes), stored; its descriptor carries the image's platform.
pub(crate) fn manifest_in(
    store: &Store,
    image: &BuiltImage,
    format: &ImageFormat,
    fetch: &Fetch<'_>,
    progress: &Progress,
) -> Result<Descriptor, BuildError> {
    let read = |desc: &Descriptor, what: &str| {
        fs::read(store.blob_path(&desc.digest))
            .map_err(BuildError::io(format!("reading a built {what}")))
    };
    let parse_failed = |what: &str| {
        let context = format!("reading a built {what}");
        move |e: serde_json::Error| BuildError::Io {
            context,
            source: std::io::Error::other(e),
        }
    };
    let mut manifest: ImageManifest = serde_json::from_slice(&read(&image.manifest, "manifest")?)
        .map_err(parse_failed("manifest"))?;
    let mut config: ImageConfig =
        serde_json::from_slice(&read(&image.config, "config")?).map_err(parse_failed("config"))?;
    let mut changed = false;
    for (index, layer) in manifest.layers.iter_mut().enumerate() {
        let base = index < image.base_layers;
        if base && !format.force_compression || in_encoding(layer, format.encoding) {
            continue;
        }
        let Some(diff_id) = config.rootfs.diff_ids.get(index).cloned() else {
            continue;
        };
        let variant = variant(store, layer, &diff_id, format.encoding, fetch, || {
            let clamp = (!base).then_some(image.source_date_epoch).flatten();
            progress.detail(&format!(
                "compressing layer {} as {}",
                layer.digest, format.encoding
            ));
            clamp
        })?;
        *layer = variant.blob;
        config.rootfs.diff_ids[index] = variant.diff_id;
        changed = true;
    }
    if !changed {
        return Ok(image.manifest.clone());
    }
    let config_type = manifest.config.media_type.clone();
    let config_desc = store.put_json(&config_type, &to_json_bytes(&config))?;
    manifest.config = config_desc;
    let mut desc = store.put_json(media::OCI_MANIFEST, &to_json_bytes(&manifest))?;
    desc.platform = Some(image.platform.clone());
    Ok(desc)
}

/// Whether `layer` is already in `encoding` (at any level: an existing blob is not
/// recompressed for its level, as BuildKit does not).
fn in_encoding(layer: &Descriptor, encoding: LayerEncoding) -> bool {
    match encoding {
        LayerEncoding::Estargz { .. } => layer.annotations.contains_key(TOC_DIGEST_ANNOTATION),
        _ => media::layer_compression(&layer.media_type).is_some_and(|c| encoding.matches(c)),
    }
}

/// `layer` (whose tar has `diff_id`) in `encoding`: from the store's record of an earlier
/// re-encoding, or made now (`starting` says so, and gives the SOURCE_DATE_EPOCH to clamp
/// to when the tar is written anew from the layer dir).
fn variant(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    encoding: LayerEncoding,
    fetch: &Fetch<'_>,
    starting: impl FnOnce() -> Option<i64>,
) -> Result<Variant, BuildError> {
    let record = store
        .root()
        .join("cache/variants")
        .join(diff_id.hex())
        .join(encoding.to_string());
    // A re-encoding that keeps the tar keeps its diff_id: a record saying otherwise is not
    // this layer's (a store written before kiln checked, below).
    if let Some(found) = fs::read(&record)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Variant>(&bytes).ok())
        .filter(|v| !encoding.keeps_tar() || v.diff_id == *diff_id)
        .filter(|v| store.has_blob(&v.blob.digest))
    {
        return Ok(found);
    }
    let clamp = starting();
    fetch(layer)?;
    let made = match encoding.keeps_tar() {
        true => {
            let source = File::open(store.blob_path(&layer.digest))
                .map_err(BuildError::io("opening a layer blob"))?;
            store.put_layer_with(
                || {
                    format!(
                        "re-encoding layer {} ({}) as {encoding}",
                        layer.digest, layer.media_type
                    )
                },
                |out| kiln_snapshot::recompress(BufReader::new(source), out, encoding),
                // The blob is the image's, unchecked unless a step extracted it: a layer
                // whose tar is not the diff_id its config names would be recorded as that
                // diff_id's, and pushed in its place by every later build of an image that
                // has it.
                |blob| {
                    let from = format!("layer {}", layer.digest);
                    base::same_diff_id(&from, layer, &blob.diff_id, diff_id)
                },
            )?
        }
        false => {
            // eStargz rewrites the tar, from the layer dir.
            let from = format!("layer {}", layer.digest);
            base::ensure_extracted(store, layer, diff_id, &from, || {})?;
            let opts = LayerOptions {
                encoding,
                source_date_epoch: clamp,
            };
            store.put_layer(&store.layer_dir(diff_id), &opts)?
        }
    };
    let variant = Variant {
        blob: descriptor(&made),
        diff_id: made.diff_id.clone(),
    };
    let bytes = serde_json::to_vec(&variant).expect("a variant serializes");
    store.write_record(&record, &bytes, "recording a re-encoded layer")?;
    Ok(variant)
}

/// The descriptor of a layer blob kiln wrote.
pub(crate) fn descriptor(blob: &LayerBlob) -> Descriptor {
    let mut desc = Descriptor::new(blob.media_type, blob.digest.clone(), blob.size);
    desc.annotations = blob.annotations.clone();
    desc
}
