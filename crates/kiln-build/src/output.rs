//! Where built images go: buildx's `-o` specs (and kiln's flags that mean the same) as typed
//! outputs. [`crate::deliver`] writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_registry::{Reference, ReferenceError};

/// Where built images go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Push to a registry.
    Registry {
        /// Each name's tag receives the image (or, with `push_by_digest`, only its repository).
        names: Vec<Reference>,
        /// OCI media types (default) or Docker v2 schema 2 ones.
        oci_mediatypes: bool,
        /// Push without a tag; the result is known by its digest only.
        push_by_digest: bool,
    },
    /// An OCI layout as a tar archive (`type=oci,dest=x.tar`).
    OciArchive(PathBuf),
    /// An OCI layout directory (`type=oci,dest=x,tar=false`).
    OciDir(PathBuf),
    /// A `docker save` archive of a single image, tagged with the build's names (kaniko's
    /// `--tar-path`).
    DockerArchive(PathBuf),
}

/// A `-o` spec kiln cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum OutputSpecError {
    #[error(transparent)]
    Name(#[from] ReferenceError),
    #[error(
        "a docker archive (-o type=docker, --tar-path) holds a single platform, but {platforms} were requested: \
         use -o type=oci (an index of all platforms) or type=registry, or build one --platform"
    )]
    DockerSinglePlatform { platforms: usize },
    #[error("-o type=oci needs dest=PATH")]
    OciNeedsDest,
    #[error(
        "output type `{0}` is not supported by this version of kiln (supported: registry, image, oci)"
    )]
    Unsupported(String),
    #[error("--push needs at least one -t NAME:TAG to push to")]
    PushWithoutName,
    #[error("pushing needs a name: pass -t NAME:TAG or -o type=registry,name=NAME:TAG")]
    RegistryWithoutName,
}

/// What a build's output flags ask for.
#[derive(Clone, Debug, Default)]
pub struct OutputFlags<'a> {
    /// `-o` specs, in order.
    pub specs: &'a [String],
    /// Push to the image's names (`--push`, or kaniko's `--destination`).
    pub push: bool,
    /// With `push`: push by digest only (`--push-by-digest`).
    pub push_by_digest: bool,
    /// An OCI layout directory to write (kaniko's `--oci-layout-path`).
    pub oci_layout_path: Option<&'a Path>,
    /// A `docker save` archive to write (kaniko's `--tar-path`).
    pub docker_archive_path: Option<&'a Path>,
}

impl Output {
    /// The file or directory the output writes, if it writes one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Output::OciArchive(path) | Output::OciDir(path) | Output::DockerArchive(path) => {
                Some(path)
            }
            _ => None,
        }
    }

    /// Parses one `-o` spec, buildx's comma-separated `key=value` list: `type=registry`,
    /// `type=image[,push=true]`, `type=oci,dest=PATH[,tar=false]`, with `name=`,
    /// `oci-mediatypes=` and `push-by-digest=` for the pushing ones. A registry output
    /// without `name=` pushes to `names` (the `-t` names); `platforms` is how many platforms
    /// the build makes. `None` is an output that keeps the image in kiln's store only
    /// (`type=image` without `push=true`).
    pub fn parse(
        spec: &str,
        names: &[Reference],
        platforms: usize,
    ) -> Result<Option<Output>, OutputSpecError> {
        let mut kv = BTreeMap::new();
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            kv.insert(k.trim().to_string(), v.trim().to_string());
        }
        // A bare key, or `key=true`, switches an attribute on.
        let flag =
            |k: &str, default: bool| kv.get(k).map_or(default, |v| v == "true" || v.is_empty());
        let registry = || -> Result<Option<Output>, OutputSpecError> {
            let names = match kv.get("name") {
                Some(n) => n
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<Reference>, _>>()?,
                None => names.to_vec(),
            };
            Ok(Some(Output::Registry {
                names,
                oci_mediatypes: flag("oci-mediatypes", true),
                push_by_digest: flag("push-by-digest", false),
            }))
        };
        match kv.get("type").map(String::as_str).unwrap_or("") {
            "registry" => registry(),
            "image" if flag("push", false) => registry(),
            "image" => Ok(None),
            "docker" if platforms > 1 => Err(OutputSpecError::DockerSinglePlatform { platforms }),
            "oci" => {
                let dest = kv
                    .get("dest")
                    .filter(|d| !d.is_empty())
                    .ok_or(OutputSpecError::OciNeedsDest)?;
                if kv.get("tar").is_some_and(|v| v == "false") {
                    Ok(Some(Output::OciDir(PathBuf::from(dest))))
                } else {
                    Ok(Some(Output::OciArchive(PathBuf::from(dest))))
                }
            }
            other => Err(OutputSpecError::Unsupported(other.to_string())),
        }
    }

    /// Every output `flags` ask for, for a build named `names` (the `-t` names) that makes
    /// `platforms` platforms: each `-o` spec, then the push, then the layout directory. Every
    /// registry output must have a name to push to.
    pub fn from_flags(
        flags: &OutputFlags<'_>,
        names: &[Reference],
        platforms: usize,
    ) -> Result<Vec<Output>, OutputSpecError> {
        let mut outputs = Vec::new();
        for spec in flags.specs {
            outputs.extend(Output::parse(spec, names, platforms)?);
        }
        if flags.push {
            if names.is_empty() {
                return Err(OutputSpecError::PushWithoutName);
            }
            outputs.push(Output::Registry {
                names: names.to_vec(),
                oci_mediatypes: true,
                push_by_digest: flags.push_by_digest,
            });
        }
        if let Some(dir) = flags.oci_layout_path {
            outputs.push(Output::OciDir(dir.to_path_buf()));
        }
        if let Some(file) = flags.docker_archive_path {
            if platforms > 1 {
                return Err(OutputSpecError::DockerSinglePlatform { platforms });
            }
            outputs.push(Output::DockerArchive(file.to_path_buf()));
        }
        let unnamed = |o: &Output| matches!(o, Output::Registry { names, .. } if names.is_empty());
        if outputs.iter().any(unnamed) {
            return Err(OutputSpecError::RegistryWithoutName);
        }
        Ok(outputs)
    }

    /// Whether the images are written in OCI media types: everywhere but a registry output
    /// with `oci-mediatypes=false`.
    pub(crate) fn oci_mediatypes(&self) -> bool {
        match self {
            Output::Registry { oci_mediatypes, .. } => *oci_mediatypes,
            Output::OciArchive(_) | Output::OciDir(_) | Output::DockerArchive(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<Reference> {
        vec!["localhost:5000/app:1".parse().unwrap()]
    }

    fn parse(spec: &str) -> Result<Option<Output>, OutputSpecError> {
        Output::parse(spec, &names(), 1)
    }

    #[test]
    fn registry_outputs_push_to_the_tags_or_their_own_name() {
        let pushed = |oci_mediatypes, push_by_digest, names| {
            Some(Output::Registry {
                names,
                oci_mediatypes,
                push_by_digest,
            })
        };
        assert_eq!(
            parse("type=registry").unwrap(),
            pushed(true, false, names())
        );
        assert_eq!(
            parse("type=image,push=true").unwrap(),
            pushed(true, false, names())
        );
        assert_eq!(
            parse("type=image,push").unwrap(),
            pushed(true, false, names())
        );
        assert_eq!(parse("type=image").unwrap(), None);
        assert_eq!(parse("type=image,push=false").unwrap(), None);
        assert_eq!(
            parse(" type = registry , oci-mediatypes=false,push-by-digest=true").unwrap(),
            pushed(false, true, names())
        );
        assert_eq!(
            parse("type=registry,name=other:2").unwrap(),
            pushed(true, false, vec!["other:2".parse().unwrap()])
        );
        assert_eq!(
            Output::parse("type=registry", &[], 3).unwrap(),
            pushed(true, false, Vec::new())
        );
    }

    #[test]
    fn oci_outputs_are_archives_unless_tar_is_false() {
        assert_eq!(
            parse("type=oci,dest=out.tar").unwrap(),
            Some(Output::OciArchive("out.tar".into()))
        );
        assert_eq!(
            parse("type=oci,dest=out,tar=false").unwrap(),
            Some(Output::OciDir("out".into()))
        );
        assert_eq!(
            parse("type=oci,dest=out,tar=true").unwrap(),
            Some(Output::OciArchive("out".into()))
        );
    }

    #[test]
    fn unusable_specs_say_what_to_write_instead() {
        let err = |spec: &str, platforms| {
            Output::parse(spec, &names(), platforms)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("type=oci", 1), "-o type=oci needs dest=PATH");
        assert_eq!(err("type=oci,dest=", 1), "-o type=oci needs dest=PATH");
        assert_eq!(
            err("type=docker,dest=x.tar", 2),
            "a docker archive (-o type=docker, --tar-path) holds a single platform, but 2 were requested: use -o type=oci \
             (an index of all platforms) or type=registry, or build one --platform"
        );
        for spec in ["type=docker,dest=x.tar", "type=local,dest=d", "dest=x"] {
            let kind = spec
                .strip_prefix("type=")
                .map_or("", |s| s.split(',').next().unwrap());
            assert_eq!(
                err(spec, 1),
                format!(
                    "output type `{kind}` is not supported by this version of kiln \
                     (supported: registry, image, oci)"
                )
            );
        }
        assert!(
            err("type=registry,name=UPPER", 1).starts_with("invalid image reference `UPPER`"),
            "{}",
            err("type=registry,name=UPPER", 1)
        );
    }

    #[test]
    fn flags_add_a_push_and_a_layout_after_the_specs_and_every_push_needs_a_name() {
        let specs = ["type=oci,dest=a.tar".to_string()];
        let flags = OutputFlags {
            specs: &specs,
            push: true,
            push_by_digest: true,
            oci_layout_path: Some(Path::new("dir")),
            docker_archive_path: Some(Path::new("img.tar")),
        };
        assert_eq!(
            Output::from_flags(&flags, &names(), 1).unwrap(),
            [
                Output::OciArchive("a.tar".into()),
                Output::Registry {
                    names: names(),
                    oci_mediatypes: true,
                    push_by_digest: true,
                },
                Output::OciDir("dir".into()),
                Output::DockerArchive("img.tar".into()),
            ]
        );
        let err =
            |flags: &OutputFlags<'_>| Output::from_flags(flags, &[], 1).unwrap_err().to_string();
        assert_eq!(
            err(&flags),
            "--push needs at least one -t NAME:TAG to push to"
        );
        let specs = ["type=registry".to_string()];
        let unnamed = OutputFlags {
            specs: &specs,
            ..OutputFlags::default()
        };
        assert_eq!(
            err(&unnamed),
            "pushing needs a name: pass -t NAME:TAG or -o type=registry,name=NAME:TAG"
        );
        assert_eq!(
            Output::from_flags(&OutputFlags::default(), &[], 1).unwrap(),
            []
        );
    }

    #[test]
    fn only_registry_outputs_may_use_docker_media_types() {
        let docker = parse("type=registry,oci-mediatypes=false")
            .unwrap()
            .unwrap();
        assert!(!docker.oci_mediatypes());
        assert!(Output::OciDir("d".into()).oci_mediatypes());
        assert!(Output::OciArchive("a".into()).oci_mediatypes());
    }
}
