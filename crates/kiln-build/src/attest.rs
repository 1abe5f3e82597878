//! Attestations in BuildKit's layout (`--provenance`, `--sbom`, `--attest`): for each built
//! image, one attestation manifest, an OCI image manifest whose layers are in-toto
//! statements about that image (SLSA v0.2 provenance, an SPDX 2.3 SBOM) and whose config is
//! the minimal `unknown/unknown` one. [`crate::deliver`] lists it in the index after the
//! images, with platform `unknown/unknown` and the `vnd.docker.reference.*` annotations that
//! name the image it is about.

use std::collections::BTreeMap;

use kiln_oci::{Descriptor, Digest, ImageManifest, Platform, media, to_json_bytes};
use kiln_registry::{DOCKER_HUB, Reference};
use kiln_snapshot::LayerStack;
use serde_json::{Value, json};

use crate::base::{BaseRef, ResolvedImage};
use crate::context::BuildContext;
use crate::export::{OriginClients, StoreSource};
use crate::plan::{ImagePlan, OpId, OpKind, Plan, Source};
use crate::progress::Progress;
use crate::{BuildError, BuildOptions, BuiltImage, Redactor, Store, rootfs, sbom, timefmt};

/// The media type of an in-toto statement layer.
const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// The annotation of a statement layer naming its predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// The predicate type of SLSA provenance v0.2 (BuildKit's default).
pub const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/v0.2";
/// The predicate type of an SPDX document.
pub const SPDX_DOCUMENT: &str = "https://spdx.dev/Document";
/// The annotations of an attestation manifest's index entry: what it is, and the digest of
/// the image it is about.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
pub const REFERENCE_DIGEST_ANNOTATION: &str = "vnd.docker.reference.digest";
const ATTESTATION_MANIFEST: &str = "attestation-manifest";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v0.1";
/// The invocation's parameters follow BuildKit's schema (frontend, args, locals), so the
/// build type is BuildKit's: tools that read BuildKit's provenance read kiln's.
const BUILD_TYPE: &str = "https://mobyproject.org/buildkit@v1";

/// How much the provenance says (buildx's `mode=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvenanceMode {
    /// Builder, invocation (with build args), materials.
    Min,
    /// Also the build's steps and its timing.
    Max,
}

/// The attestations a build attaches to its images. None by default: older tools take an
/// attestation manifest for an image of an unknown platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attestations {
    pub provenance: Option<ProvenanceMode>,
    pub sbom: bool,
}

/// An attestation flag kiln cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum AttestSpecError {
    #[error("{flag} {spec}: give type=provenance or type=sbom")]
    MissingType { flag: &'static str, spec: String },
    #[error(
        "{flag} {spec}: unknown attestation type `{kind}` (kiln writes type=provenance and type=sbom)"
    )]
    UnknownType {
        flag: &'static str,
        spec: String,
        kind: String,
    },
    #[error("{flag} {spec}: unknown attribute `{key}` (accepted: {accepted})")]
    UnknownAttribute {
        flag: &'static str,
        spec: String,
        key: String,
        accepted: &'static str,
    },
    #[error("{flag} {spec}: `{key}={value}` is not accepted (accepted: {accepted})")]
    BadValue {
        flag: &'static str,
        spec: String,
        key: String,
        value: String,
        accepted: &'static str,
    },
}

impl Attestations {
    /// Whether any attestation is asked for.
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.sbom
    }

    /// buildx's flags: each `--attest type=...` in order, then `--provenance` (`true`,
    /// `false`, or attributes such as `mode=max`) and `--sbom` (`true`, `false`, or
    /// attributes), which win over the long forms.
    pub fn from_flags(
        provenance: Option<&str>,
        sbom: Option<&str>,
        attest: &[String],
    ) -> Result<Attestations, AttestSpecError> {
        let mut out = Attestations::default();
        for spec in attest {
            let attrs = attributes(spec);
            let kind = attrs
                .iter()
                .find(|(k, _)| *k == "type")
                .map(|(_, v)| *v)
                .ok_or_else(|| AttestSpecError::MissingType {
                    flag: "--attest",
                    spec: spec.clone(),
                })?;
            let rest: Vec<_> = attrs.into_iter().filter(|(k, _)| *k != "type").collect();
            out.apply("--attest", spec, kind, &rest)?;
        }
        for (flag, kind, given) in [
            ("--provenance", "provenance", provenance),
            ("--sbom", "sbom", sbom),
        ] {
            let Some(spec) = given else { continue };
            let attrs = match parse_bool(spec) {
                Some(on) => vec![("disabled", if on { "false" } else { "true" })],
                None => attributes(spec),
            };
            out.apply(flag, spec, kind, &attrs)?;
        }
        Ok(out)
    }

    fn apply(
        &mut self,
        flag: &'static str,
        spec: &str,
        kind: &str,
        attrs: &[(&str, &str)],
    ) -> Result<(), AttestSpecError> {
        let accepted = match kind {
            "provenance" => "mode=min|max, version=v0.2, disabled=true|false",
            "sbom" => "disabled=true|false",
            other => {
                return Err(AttestSpecError::UnknownType {
                    flag,
                    spec: spec.to_string(),
                    kind: other.to_string(),
                });
            }
        };
        let bad = |key: &str, value: &str| AttestSpecError::BadValue {
            flag,
            spec: spec.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            accepted,
        };
        let mut enabled = true;
        let mut mode = ProvenanceMode::Min;
        for &(key, value) in attrs {
            match (kind, key) {
                (_, "disabled") => enabled = !parse_bool(value).ok_or_else(|| bad(key, value))?,
                ("provenance", "mode") => {
                    mode = match value {
                        "min" => ProvenanceMode::Min,
                        "max" => ProvenanceMode::Max,
                        _ => return Err(bad(key, value)),
                    }
                }
                ("provenance", "version") if value == "v0.2" => {}
                ("provenance", "version") => return Err(bad(key, value)),
                _ => {
                    return Err(AttestSpecError::UnknownAttribute {
                        flag,
                        spec: spec.to_string(),
                        key: key.to_string(),
                        accepted,
                    });
                }
            }
        }
        match kind {
            "provenance" => self.provenance = enabled.then_some(mode),
            _ => self.sbom = enabled,
        }
        Ok(())
    }
}

/// `k=v,k=v` pairs (a bare `k` has an empty value).
fn attributes(spec: &str) -> Vec<(&str, &str)> {
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// Go's `strconv.ParseBool`, which buildx reads these flags with.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// What the attestations are made from, besides the images.
pub(crate) struct Inputs<'a> {
    pub plan: &'a Plan,
    pub opts: &'a BuildOptions,
    pub store: &'a Store,
    pub context: &'a BuildContext,
    /// The Dockerfile's digest, taken before any step ran.
    pub dockerfile: Option<Digest>,
    /// When the build started (seconds since the epoch).
    pub started: i64,
    /// For the layers an SBOM must read that the store lacks.
    pub clients: OriginClients<'a>,
    pub progress: &'a Progress,
}

/// Makes the attestation manifest of each image in `images` (in the order of the plan's
/// images) and records it in [`BuiltImage::attestation`].
pub(crate) fn attach(inputs: &Inputs, images: &mut [BuiltImage]) -> Result<(), BuildError> {
    let wanted = &inputs.opts.attestations;
    let context_digest = match wanted.provenance {
        Some(_) => {
            let sources = inputs.context.sources(".");
            Some(inputs.context.digest(&sources, None)?.digest)
        }
        None => None,
    };
    let finished = timefmt::now_secs();
    let created = timefmt::rfc3339(inputs.opts.source_date_epoch.unwrap_or(finished));
    for (plan, image) in inputs.plan.images.iter().zip(images.iter_mut()) {
        let mut statements: Vec<(&str, Value)> = Vec::new();
        if let Some(mode) = wanted.provenance {
            let predicate = provenance(inputs, plan, mode, context_digest.as_ref(), finished);
            statements.push((SLSA_PROVENANCE, predicate));
        }
        if wanted.sbom {
            inputs.progress.detail(&format!(
                "listing the packages of the {} image",
                image.platform
            ));
            let source = StoreSource::with_origins(
                inputs.store,
                image.manifest.clone(),
                inputs.clients,
                &image.origins,
            );
            let dirs = rootfs::layer_dirs(inputs.store, image, &source)?;
            let packages = sbom::scan(&LayerStack::new(dirs));
            if packages.len() >= sbom::MAX_PACKAGES {
                inputs.progress.warning(&format!(
                    "the SBOM of the {} image lists only the first {} packages found",
                    image.platform,
                    sbom::MAX_PACKAGES
                ));
            }
            let name = format!("image {}", image.platform);
            let document = sbom::document(&packages, &name, &image.manifest.digest, &created);
            statements.push((SPDX_DOCUMENT, document));
        }
        image.attestation = Some(store_manifest(inputs.store, &image.manifest, statements)?);
    }
    Ok(())
}

/// The attestation manifest `entry` for another manifest of the same image (an output that
/// re-encodes its layers has one): the same statements, about `subject`.
pub(crate) fn about(
    store: &Store,
    entry: &Descriptor,
    subject: &Descriptor,
) -> Result<Descriptor, BuildError> {
    let named = entry.annotations.get(REFERENCE_DIGEST_ANNOTATION);
    if named == Some(&subject.digest.to_string()) {
        return Ok(entry.clone());
    }
    let read = |desc: &Descriptor| -> Result<Value, BuildError> {
        let bytes = std::fs::read(store.blob_path(&desc.digest))
            .map_err(BuildError::io("reading an attestation"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| BuildError::io("reading an attestation")(std::io::Error::other(e)))
    };
    let manifest: ImageManifest = serde_json::from_value(read(entry)?)
        .map_err(|e| BuildError::io("reading an attestation")(std::io::Error::other(e)))?;
    let mut statements = Vec::new();
    for layer in &manifest.layers {
        let kind = layer
            .annotations
            .get(PREDICATE_TYPE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        statements.push((kind, read(layer)?["predicate"].take()));
    }
    let statements = statements
        .iter()
        .map(|(kind, predicate)| (kind.as_str(), predicate.clone()))
        .collect();
    store_manifest(store, subject, statements)
}

/// Stores the attestation manifest of `statements` about `subject` and returns its index
/// entry.
fn store_manifest(
    store: &Store,
    subject: &Descriptor,
    statements: Vec<(&str, Value)>,
) -> Result<Descriptor, BuildError> {
    let mut layers = Vec::new();
    for (predicate_type, predicate) in statements {
        let statement = json!({
            "_type": STATEMENT_TYPE,
            // BuildKit names an unnamed subject `_`; the digest is what binds it.
            "subject": [{
                "name": "_",
                "digest": {subject.digest.algorithm(): subject.digest.hex()},
            }],
            "predicateType": predicate_type,
            "predicate": predicate,
        });
        let bytes = serde_json::to_vec(&statement).expect("a JSON value always serialises");
        let mut layer = store.put_json(IN_TOTO_MEDIA_TYPE, &bytes)?;
        layer
            .annotations
            .insert(PREDICATE_TYPE_ANNOTATION.into(), predicate_type.into());
        layers.push(layer);
    }
    // BuildKit's config for attestation manifests: nothing to run, its statements as the
    // (uncompressed) layers.
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = store.put_json(
        media::OCI_CONFIG,
        &serde_json::to_vec(&config).expect("a JSON value always serialises"),
    )?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config,
        layers,
        annotations: BTreeMap::new(),
    };
    let mut entry = store.put_json(media::OCI_MANIFEST, &to_json_bytes(&manifest))?;
    entry.platform = Some(Platform::new("unknown", "unknown", None));
    entry.annotations = BTreeMap::from([
        (
            REFERENCE_TYPE_ANNOTATION.into(),
            ATTESTATION_MANIFEST.into(),
        ),
        (
            REFERENCE_DIGEST_ANNOTATION.into(),
            subject.digest.to_string(),
        ),
    ]);
    Ok(entry)
}

/// The SLSA v0.2 provenance predicate of the image `image`. Never holds a secret's value:
/// secrets reach steps through mounts, which the plan names by id only, and any string that
/// holds a secret's value anyway (a build arg set to it) is redacted.
fn provenance(
    inputs: &Inputs,
    image: &ImagePlan,
    mode: ProvenanceMode,
    context: Option<&Digest>,
    finished: i64,
) -> Value {
    let opts = inputs.opts;
    let ops = inputs.plan.ops_for(image);
    let mut materials: Vec<Value> = Vec::new();
    for id in &ops {
        if let OpKind::Source(Source::Image(base)) = &inputs.plan.op(*id).kind {
            let material = material(base);
            if !materials.contains(&material) {
                materials.push(material);
            }
        }
    }
    let mut args = serde_json::Map::new();
    for (key, value) in &opts.build_args {
        args.insert(format!("build-arg:{key}"), value.clone().into());
    }
    if let Some(target) = &opts.target {
        args.insert("target".into(), target.clone().into());
    }
    let entry_point = std::path::Path::new(&opts.dockerfile_path)
        .file_name()
        .map_or_else(|| "Dockerfile".into(), |n| n.to_string_lossy().into_owned());
    let sha256 = |d: Option<&Digest>| d.map(|d| json!({d.algorithm(): d.hex()}));
    let mut config_source = json!({"entryPoint": entry_point});
    let mut dockerfile_local = json!({"name": "dockerfile"});
    if let Some(digest) = sha256(inputs.dockerfile.as_ref()) {
        config_source["digest"] = digest.clone();
        dockerfile_local["digest"] = digest;
    }
    let mut context_local = json!({"name": "context"});
    if let Some(digest) = sha256(context) {
        context_local["digest"] = digest;
    }
    let mut predicate = json!({
        "builder": {"id": format!("urn:kiln:{}", env!("CARGO_PKG_VERSION"))},
        "buildType": BUILD_TYPE,
        "materials": materials,
        "invocation": {
            "configSource": config_source,
            "parameters": {
                "frontend": "dockerfile.v0",
                "args": args,
                "locals": [context_local, dockerfile_local],
            },
            "environment": {"platform": Platform::host().to_string()},
        },
    });
    if mode == ProvenanceMode::Max {
        predicate["buildConfig"] = build_config(inputs.plan, &ops);
        predicate["metadata"] = json!({
            "buildStartedOn": timefmt::rfc3339(inputs.started),
            "buildFinishedOn": timefmt::rfc3339(finished),
            // Build args and the environment are all here; a local context is not a
            // material, so the materials are not complete. kiln does not promise
            // bit-for-bit rebuilds.
            "completeness": {"parameters": true, "environment": true, "materials": false},
            "reproducible": false,
        });
    }
    redact(&mut predicate, opts.secrets.redactor());
    predicate
}

/// The steps of the build as lowered: each op the image needs, with the ops it reads.
fn build_config(plan: &Plan, ops: &[OpId]) -> Value {
    let step_id = |id: OpId| format!("step{}", id.0);
    let steps: Vec<Value> = ops
        .iter()
        .map(|&id| {
            let op = plan.op(id);
            let what = match &op.kind {
                OpKind::Source(Source::Scratch) => json!({"source": "scratch"}),
                OpKind::Source(Source::Image(base)) => json!({"source": material(base)["uri"]}),
                // A `--build-context` directory, by its name (its host path is no one's
                // business, as the main context's is not).
                OpKind::Source(Source::Local { name, .. }) => json!({"local": name}),
                OpKind::Exec(exec) => json!({"exec": exec}),
                OpKind::Copy(copy) => json!({"copy": copy}),
                OpKind::Mkdir(mkdir) => json!({"mkdir": mkdir}),
            };
            json!({
                "id": step_id(id),
                "instruction": op.origin.text,
                "platform": op.origin.platform.to_string(),
                "op": what,
                "inputs": op.inputs.iter().map(|&i| step_id(i)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"steps": steps})
}

/// A base image as a material: its purl (`pkg:docker/debian@bookworm?platform=linux%2Famd64`,
/// as BuildKit writes it) and the digest of the manifest used.
fn material(base: &ResolvedImage) -> Value {
    let uri = match &base.source {
        BaseRef::Registry { reference, .. } => docker_purl(reference, &base.platform),
        BaseRef::Layout { .. } => base.source.to_string(),
    };
    json!({"uri": uri, "digest": {base.manifest.algorithm(): base.manifest.hex()}})
}

/// The purl of an image: its name as Docker shows it, its tag (else digest), its platform.
fn docker_purl(reference: &Reference, platform: &Platform) -> String {
    let name = match reference.registry.as_str() {
        DOCKER_HUB => reference
            .repository
            .strip_prefix("library/")
            .unwrap_or(&reference.repository)
            .to_string(),
        registry => format!("{registry}/{}", reference.repository),
    };
    let name: Vec<String> = name.split('/').map(sbom::purl_encode).collect();
    let version = match (&reference.tag, &reference.digest) {
        (Some(tag), _) => tag.clone(),
        (None, Some(digest)) => digest.to_string(),
        (None, None) => "latest".into(),
    };
    format!(
        "pkg:docker/{}@{}?platform={}",
        name.join("/"),
        sbom::purl_encode(&version),
        sbom::purl_encode(&platform.to_string())
    )
}

/// Redacts every string in `value` (secret values given as build args, say).
fn redact(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(redacted) = redactor.redact(s) {
                *s = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, redactor)),
        Value::Object(map) => map.values_mut().for_each(|v| redact(v, redactor)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(p: Option<&str>, s: Option<&str>, attest: &[&str]) -> Attestations {
        let attest: Vec<String> = attest.iter().map(|a| a.to_string()).collect();
        Attestations::from_flags(p, s, &attest).unwrap()
    }

    #[test]
    fn buildx_forms_map_to_the_same_attestations() {
        let max = Attestations {
            provenance: Some(ProvenanceMode::Max),
            sbom: true,
        };
        assert_eq!(parsed(Some("mode=max"), Some("true"), &[]), max);
        assert_eq!(
            parsed(None, None, &["type=provenance,mode=max", "type=sbom"]),
            max
        );
        assert_eq!(
            parsed(Some("true"), None, &[]).provenance,
            Some(ProvenanceMode::Min)
        );
        assert_eq!(
            parsed(
                Some("false"),
                Some("false"),
                &["type=provenance", "type=sbom"]
            ),
            Attestations::default()
        );
        assert!(!parsed(None, None, &[]).any());
    }

    #[test]
    fn unknown_types_attributes_and_values_are_errors() {
        let err = |p: Option<&str>, s: Option<&str>, a: &[&str]| {
            let a: Vec<String> = a.iter().map(|a| a.to_string()).collect();
            Attestations::from_flags(p, s, &a).unwrap_err().to_string()
        };
        assert!(err(None, None, &["type=vex"]).contains("unknown attestation type `vex`"));
        assert!(err(None, None, &["mode=max"]).contains("give type=provenance"));
        assert!(err(Some("mode=full"), None, &[]).contains("`mode=full` is not accepted"));
        assert!(err(None, Some("generator=x"), &[]).contains("unknown attribute `generator`"));
        assert!(err(None, None, &["type=sbom,mode=max"]).contains("unknown attribute `mode`"));
    }

    #[test]
    fn base_images_are_named_by_docker_purls() {
        let purl = |r: &str, p: &str| docker_purl(&r.parse().unwrap(), &p.parse().unwrap());
        assert_eq!(
            purl("debian:bookworm", "linux/arm64"),
            "pkg:docker/debian@bookworm?platform=linux%2Farm64"
        );
        assert_eq!(
            purl("127.0.0.1:5000/team/app:1", "linux/arm/v7"),
            "pkg:docker/127.0.0.1%3A5000/team/app@1?platform=linux%2Farm%2Fv7"
        );
    }
}
