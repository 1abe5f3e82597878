//! buildx's `--annotation`: `[TYPES][[PLATFORM]]:KEY=VALUE`, where TYPES is a comma list of
//! `manifest` (the default), `index`, `manifest-descriptor` and `index-descriptor`, and a
//! platform selector limits a manifest or manifest-descriptor annotation to that platform's
//! image.

use std::collections::BTreeMap;

use kiln_oci::Platform;
use kiln_registry::Reference;

use crate::Output;

/// Where an annotation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnotationTarget {
    /// Each image manifest.
    Manifest,
    /// The index of a multi-platform build.
    Index,
    /// Each manifest's descriptor in the index.
    ManifestDescriptor,
    /// The index's (or the image's) entry in an OCI layout's index.json.
    IndexDescriptor,
}

impl AnnotationTarget {
    const ALL: [(&'static str, AnnotationTarget); 4] = [
        ("manifest", AnnotationTarget::Manifest),
        ("index", AnnotationTarget::Index),
        ("manifest-descriptor", AnnotationTarget::ManifestDescriptor),
        ("index-descriptor", AnnotationTarget::IndexDescriptor),
    ];
}

/// One `--annotation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub targets: Vec<AnnotationTarget>,
    pub platform: Option<Platform>,
    pub key: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--annotation {spec}: {message}")]
pub struct AnnotationError {
    spec: String,
    message: String,
}

impl Annotation {
    pub fn parse(spec: &str) -> Result<Annotation, AnnotationError> {
        let invalid = |message: String| AnnotationError {
            spec: spec.to_string(),
            message,
        };
        let (key, value) = spec
            .split_once('=')
            .ok_or_else(|| invalid("expected [TYPE[,TYPE]][[PLATFORM]]:KEY=VALUE".into()))?;
        // A prefix ends at the first `:` before the `=`; keys themselves hold no `:`.
        let (prefix, key) = match key.split_once(':') {
            Some((prefix, key)) => (Some(prefix), key),
            None => (None, key),
        };
        if key.is_empty() {
            return Err(invalid("the key is empty".into()));
        }
        let (types, platform) = match prefix {
            None => ("", None),
            Some(prefix) => match prefix.split_once('[') {
                Some((types, rest)) => {
                    let selector = rest
                        .strip_suffix(']')
                        .ok_or_else(|| invalid(format!("`{prefix}`: a `[` without its `]`")))?;
                    let platform = selector
                        .parse::<Platform>()
                        .map_err(|e| invalid(e.to_string()))?;
                    (types, Some(platform))
                }
                None => (prefix, None),
            },
        };
        let targets = match types {
            "" => vec![AnnotationTarget::Manifest],
            types => types
                .split(',')
                .map(|t| {
                    AnnotationTarget::ALL
                        .iter()
                        .find(|(name, _)| *name == t)
                        .map(|(_, target)| *target)
                        .ok_or_else(|| {
                            let names: Vec<&str> =
                                AnnotationTarget::ALL.iter().map(|(n, _)| *n).collect();
                            invalid(format!("unknown type `{t}` (known: {})", names.join(", ")))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let per_image = |t: &AnnotationTarget| {
            matches!(
                t,
                AnnotationTarget::Manifest | AnnotationTarget::ManifestDescriptor
            )
        };
        if platform.is_some() && !targets.iter().all(per_image) {
            return Err(invalid(
                "a [platform] selects an image: it goes with manifest or manifest-descriptor"
                    .into(),
            ));
        }
        Ok(Annotation {
            targets,
            platform,
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// The build's annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations(pub Vec<Annotation>);

impl Annotations {
    /// The annotations for `target`, of the image of `platform` when it is per image (later
    /// ones win).
    pub fn get(
        &self,
        target: AnnotationTarget,
        platform: Option<&Platform>,
    ) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|a| a.targets.contains(&target))
            .filter(|a| match (&a.platform, platform) {
                (Some(wanted), Some(image)) => wanted.matches(image),
                _ => true,
            })
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect()
    }

    /// Whether any annotation goes to `target`.
    fn any(&self, target: AnnotationTarget) -> bool {
        self.0.iter().any(|a| a.targets.contains(&target))
    }

    /// Refuses, before the build, annotations that would have nowhere to go: `index` without
    /// an index (one platform), `index-descriptor` without an OCI layout entry (an OCI output
    /// and a `-t` name), and any with Docker media types (which carry none).
    pub fn check(
        &self,
        platforms: usize,
        outputs: &[Output],
        names: &[Reference],
    ) -> Result<(), AnnotationError> {
        let refuse = |target: &str, message: &str| {
            Err(AnnotationError {
                spec: format!("{target}:..."),
                message: message.to_string(),
            })
        };
        if self.any(AnnotationTarget::Index) && platforms < 2 {
            return refuse(
                "index",
                "a build of one platform makes no index; annotate the manifest instead",
            );
        }
        let layout = outputs
            .iter()
            .any(|o| matches!(o, Output::OciArchive { .. } | Output::OciDir { .. }));
        if self.any(AnnotationTarget::IndexDescriptor) && (!layout || names.is_empty()) {
            return refuse(
                "index-descriptor",
                "it goes on the image's entry in an OCI layout: needs -o type=oci and a -t name",
            );
        }
        if !self.0.is_empty() && outputs.iter().any(|o| !o.format().oci_mediatypes) {
            return refuse(
                "manifest",
                "Docker media types (oci-mediatypes=false) carry no annotations",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms_parse_and_bad_prefixes_are_refused() {
        let a = Annotation::parse("org.opencontainers.image.revision=abc").unwrap();
        assert_eq!(a.targets, [AnnotationTarget::Manifest]);
        assert_eq!(
            (a.key.as_str(), a.value.as_str()),
            ("org.opencontainers.image.revision", "abc")
        );
        let a = Annotation::parse("index,manifest-descriptor:k=v=w").unwrap();
        assert_eq!(
            a.targets,
            [
                AnnotationTarget::Index,
                AnnotationTarget::ManifestDescriptor
            ]
        );
        assert_eq!(a.value, "v=w");
        let a = Annotation::parse("manifest[linux/arm64]:k=v").unwrap();
        assert_eq!(a.platform, Some("linux/arm64".parse().unwrap()));
        let err = |s: &str| Annotation::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("manifests:k=v"),
            "--annotation manifests:k=v: unknown type `manifests` (known: manifest, index, \
             manifest-descriptor, index-descriptor)"
        );
        assert_eq!(
            err("index[linux/amd64]:k=v"),
            "--annotation index[linux/amd64]:k=v: a [platform] selects an image: it goes with \
             manifest or manifest-descriptor"
        );
        assert!(err("manifest[linux/amd64:k=v").contains("without its `]`"));
        assert!(err("novalue").contains("expected"));
        assert!(err("manifest:=v").contains("the key is empty"));
    }

    #[test]
    fn a_platform_selector_limits_an_annotation_to_that_image() {
        let all = Annotations(
            ["manifest:a=1", "manifest[linux/arm64]:b=2", "manifest:a=3"]
                .iter()
                .map(|s| Annotation::parse(s).unwrap())
                .collect(),
        );
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let got = |p: &Platform| all.get(AnnotationTarget::Manifest, Some(p));
        assert_eq!(got(&amd64), BTreeMap::from([("a".into(), "3".into())]));
        assert_eq!(
            got(&arm64),
            BTreeMap::from([("a".into(), "3".into()), ("b".into(), "2".into())])
        );
        assert!(all.get(AnnotationTarget::Index, None).is_empty());
    }
}
