//! Where built images go: buildx's `-o` specs (and kiln's flags that mean the same) as typed
//! outputs. [`crate::deliver`] writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_registry::{Reference, ReferenceError};
use kiln_snapshot::LayerEncoding;

/// How an output writes the images: media types and layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageFormat {
    /// OCI media types (default) or Docker v2 schema 2 ones (`oci-mediatypes=false`).
    pub oci_mediatypes: bool,
    /// How the build's layers are compressed (`compression=`, `compression-level=`).
    pub encoding: LayerEncoding,
    /// Base layers too (`force-compression=true`); else they keep their blobs.
    pub force_compression: bool,
}

impl Default for ImageFormat {
    fn default() -> Self {
        ImageFormat {
            oci_mediatypes: true,
            encoding: LayerEncoding::default(),
            force_compression: false,
        }
    }
}

impl ImageFormat {
    /// OCI media types and layers compressed as `compression` names, at `level` (kaniko's
    /// `--compression` and `--compression-level`); `Err` says what is wrong with them.
    pub fn compressed(compression: &str, level: Option<i64>) -> Result<ImageFormat, String> {
        Ok(ImageFormat {
            encoding: LayerEncoding::parse(compression, level)?,
            ..ImageFormat::default()
        })
    }
}

/// Where built images go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Push to a registry.
    Registry {
        /// Each name's tag receives the image (or, with `push_by_digest`, only its repository).
        names: Vec<Reference>,
        format: ImageFormat,
        /// Push without a tag; the result is known by its digest only.
        push_by_digest: bool,
    },
    /// An OCI layout as a tar archive (`type=oci,dest=x.tar`).
    OciArchive { dest: PathBuf, format: ImageFormat },
    /// An OCI layout directory (`type=oci,dest=x,tar=false`).
    OciDir { dest: PathBuf, format: ImageFormat },
    /// A `docker save` archive of a single image, tagged with `names` (`-o type=docker`,
    /// kaniko's `--tar-path`).
    DockerArchive {
        dest: PathBuf,
        names: Vec<Reference>,
    },
    /// The image's files, as a directory (`-o type=local`) or a tar (`-o type=tar`): the
    /// final rootfs, in a sub-directory per platform (`linux_amd64`) when there are several.
    Rootfs { dest: PathBuf, tar: bool },
}

/// The `dest` that means standard output.
pub const STDOUT: &str = "-";

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
    #[error(
        "a docker archive (-o type=docker, --tar-path) is tagged with its names, but `{0}` has \
         no tag: name it NAME:TAG"
    )]
    DockerNameWithoutTag(String),
    #[error("-o type={kind} needs dest=PATH{or}")]
    NeedsDest {
        kind: &'static str,
        or: &'static str,
    },
    #[error(
        "output type `{0}` is not supported by this version of kiln (supported: registry, image, oci, docker, local, tar)"
    )]
    Unsupported(String),
    #[error("-o type={kind}: unknown attribute `{key}` (accepted: {accepted})")]
    UnknownAttribute {
        kind: String,
        key: String,
        accepted: String,
    },
    #[error(
        "rewrite-timestamp=true needs SOURCE_DATE_EPOCH (--build-arg SOURCE_DATE_EPOCH=... or the environment variable)"
    )]
    RewriteNeedsEpoch,
    #[error(
        "rewrite-timestamp=false: kiln always clamps the times of new files to SOURCE_DATE_EPOCH when it is set; unset it, or leave rewrite-timestamp out"
    )]
    AlwaysRewritten,
    #[error("-o type={kind}: {reason}")]
    Compression { kind: String, reason: String },
    #[error(
        "-o type={kind}: zstd layers have no Docker media type; leave oci-mediatypes=false out, or use compression=gzip"
    )]
    ZstdNeedsOci { kind: String },
    #[error("-o type={kind}: `{key}={value}` is neither true nor false")]
    NotABool {
        kind: String,
        key: String,
        value: String,
    },
    #[error("only one output can go to standard output (dest=-)")]
    TwoToStdout,
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
    /// SOURCE_DATE_EPOCH, if set (for `rewrite-timestamp=`).
    pub source_date_epoch: Option<i64>,
    /// How `push` and `oci_layout_path` write the images (kaniko's `--compression`).
    pub format: ImageFormat,
}

impl Output {
    /// Whether the output is an archive written to standard output (`dest=-`).
    pub fn to_stdout(&self) -> bool {
        self.path() == Some(Path::new(STDOUT))
    }

    /// The file or directory the output writes, if it writes one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Output::OciArchive { dest, .. } | Output::OciDir { dest, .. } => Some(dest),
            Output::DockerArchive { dest, .. } | Output::Rootfs { dest, .. } => Some(dest),
            Output::Registry { .. } => None,
        }
    }

    /// Parses one `-o` spec, buildx's comma-separated `key=value` list: `type=registry`,
    /// `type=image[,push=true]`, `type=oci,dest=PATH[,tar=false]`, `type=docker,dest=FILE`,
    /// `type=local,dest=DIR`, `type=tar,dest=FILE`,
    /// with `name=`, `oci-mediatypes=` and `push-by-digest=` for the pushing ones; `dest=-`
    /// writes an archive to standard output. A registry output without `name=` pushes to
    /// `names` (the `-t` names), as a docker archive is tagged with them; `platforms` is how
    /// many platforms the build makes. `None` is an output that keeps the image in kiln's
    /// store only (`type=image` without `push=true`). An attribute the type does not take is
    /// an error naming those it takes; one kiln does not honour yet is an error too.
    pub fn parse(
        spec: &str,
        names: &[Reference],
        platforms: usize,
    ) -> Result<Option<Output>, OutputSpecError> {
        // buildx's shorthands: `-o DIR` is type=local, `-o -` a tar on standard output.
        if !spec.contains('=') && !spec.is_empty() {
            return Ok(Some(Output::Rootfs {
                dest: PathBuf::from(spec),
                tar: spec == STDOUT,
            }));
        }
        let kv = attributes(spec);
        let kind = kv.get("type").cloned().unwrap_or_default();
        let accepted: &[&str] = match kind.as_str() {
            "registry" | "image" => &[
                "type",
                "name",
                "push",
                "push-by-digest",
                "oci-mediatypes",
                "compression",
                "compression-level",
                "force-compression",
                "rewrite-timestamp",
            ],
            "oci" => &[
                "type",
                "dest",
                "tar",
                "name",
                "oci-mediatypes",
                "compression",
                "compression-level",
                "force-compression",
                "rewrite-timestamp",
            ],
            "docker" => &["type", "dest", "name", "rewrite-timestamp"],
            "local" | "tar" => &["type", "dest"],
            other => return Err(OutputSpecError::Unsupported(other.to_string())),
        };
        if let Some(key) = kv.keys().find(|k| !accepted.contains(&k.as_str())) {
            return Err(OutputSpecError::UnknownAttribute {
                kind,
                key: key.clone(),
                accepted: accepted[1..].join(", "),
            });
        }
        // A bare key switches an attribute on; a value is read as buildx reads it (Go's
        // ParseBool), so that `push=True` pushes and `tar=0` is no archive, and anything else
        // is refused rather than read as false.
        let flag = |k: &str, default: bool| match kv.get(k) {
            None => Ok(default),
            Some(value) => yes_no(value).ok_or_else(|| OutputSpecError::NotABool {
                kind: kind.clone(),
                key: k.to_string(),
                value: value.clone(),
            }),
        };
        // Read by `from_flags`, which knows SOURCE_DATE_EPOCH.
        flag("rewrite-timestamp", false)?;
        let format = || -> Result<ImageFormat, OutputSpecError> {
            let compression_failed = |reason: String| OutputSpecError::Compression {
                kind: kind.clone(),
                reason,
            };
            let level = match kv.get("compression-level") {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    compression_failed(format!("compression-level={v} is not a number"))
                })?),
            };
            let name = kv.get("compression").map_or("gzip", String::as_str);
            let encoding = LayerEncoding::parse(name, level).map_err(compression_failed)?;
            let oci_mediatypes = flag("oci-mediatypes", true)?;
            if !oci_mediatypes && matches!(encoding, LayerEncoding::Zstd { .. }) {
                return Err(OutputSpecError::ZstdNeedsOci { kind: kind.clone() });
            }
            Ok(ImageFormat {
                oci_mediatypes,
                encoding,
                force_compression: flag("force-compression", false)?,
            })
        };
        let named = || -> Result<Vec<Reference>, OutputSpecError> {
            Ok(match kv.get("name") {
                Some(n) => n
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<Reference>, _>>()?,
                None => names.to_vec(),
            })
        };
        let dest = |or: &'static str| {
            kv.get("dest")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .ok_or(OutputSpecError::NeedsDest {
                    kind: match kind.as_str() {
                        "oci" => "oci",
                        "local" => "local",
                        "tar" => "tar",
                        _ => "docker",
                    },
                    or,
                })
        };
        match kind.as_str() {
            "registry" => {}
            "image" if flag("push", false)? => {}
            "image" => return Ok(None),
            "docker" if platforms > 1 => {
                return Err(OutputSpecError::DockerSinglePlatform { platforms });
            }
            "docker" => {
                // buildx loads into the Docker engine without dest; kiln has no engine.
                let dest =
                    dest(" (kiln has no engine to load into: dest=FILE, or dest=- | podman load)")?;
                return Ok(Some(Output::DockerArchive {
                    dest,
                    names: docker_tags(named()?)?,
                }));
            }
            "local" | "tar" => {
                let tar = kind == "tar";
                let dest = dest(match tar {
                    true => " (a file, or - for standard output)",
                    false => " (a directory)",
                })?;
                if !tar && dest == Path::new(STDOUT) {
                    return Err(OutputSpecError::NeedsDest {
                        kind: "local",
                        or: " (a directory; type=tar,dest=- writes a tar to standard output)",
                    });
                }
                return Ok(Some(Output::Rootfs { dest, tar }));
            }
            _ => {
                let dest = dest("")?;
                let format = format()?;
                return Ok(Some(match !flag("tar", true)? {
                    true if dest == Path::new(STDOUT) => {
                        return Err(OutputSpecError::NeedsDest {
                            kind: "oci",
                            or: " (a directory: tar=false cannot go to standard output)",
                        });
                    }
                    true => Output::OciDir { dest, format },
                    false => Output::OciArchive { dest, format },
                }));
            }
        }
        Ok(Some(Output::Registry {
            names: named()?,
            format: format()?,
            push_by_digest: flag("push-by-digest", false)?,
        }))
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
            // kiln clamps the times of the files in new layers whenever SOURCE_DATE_EPOCH is
            // set, which is what buildx's rewrite-timestamp=true asks for. (`parse` refused a
            // value that is neither.)
            let rewrite = attributes(spec)
                .get("rewrite-timestamp")
                .and_then(|v| yes_no(v));
            match (rewrite, flags.source_date_epoch) {
                (Some(true), None) => return Err(OutputSpecError::RewriteNeedsEpoch),
                (Some(false), Some(_)) => return Err(OutputSpecError::AlwaysRewritten),
                _ => {}
            }
        }
        if flags.push {
            if names.is_empty() {
                return Err(OutputSpecError::PushWithoutName);
            }
            outputs.push(Output::Registry {
                names: names.to_vec(),
                format: flags.format,
                push_by_digest: flags.push_by_digest,
            });
        }
        if let Some(dir) = flags.oci_layout_path {
            outputs.push(Output::OciDir {
                dest: dir.to_path_buf(),
                format: flags.format,
            });
        }
        if let Some(file) = flags.docker_archive_path {
            if platforms > 1 {
                return Err(OutputSpecError::DockerSinglePlatform { platforms });
            }
            outputs.push(Output::DockerArchive {
                dest: file.to_path_buf(),
                names: docker_tags(names.to_vec())?,
            });
        }
        if outputs.iter().filter(|o| o.to_stdout()).count() > 1 {
            return Err(OutputSpecError::TwoToStdout);
        }
        let unnamed = |o: &Output| matches!(o, Output::Registry { names, .. } if names.is_empty());
        if outputs.iter().any(unnamed) {
            return Err(OutputSpecError::RegistryWithoutName);
        }
        Ok(outputs)
    }

    /// How the output writes the images (docker archives and files: the defaults).
    pub fn format(&self) -> ImageFormat {
        match self {
            Output::Registry { format, .. }
            | Output::OciArchive { format, .. }
            | Output::OciDir { format, .. } => *format,
            Output::DockerArchive { .. } | Output::Rootfs { .. } => ImageFormat::default(),
        }
    }

    /// How a build writes its new layers for `outputs`: in the first output's compression,
    /// so that it need not re-encode them (eStargz, which rewrites the tar, is made at
    /// delivery from gzip layers).
    pub fn layer_encoding(outputs: &[Output]) -> LayerEncoding {
        outputs
            .first()
            .map(|o| o.format().encoding)
            .filter(LayerEncoding::keeps_tar)
            .unwrap_or_default()
    }
}

/// The `key=value` attributes of a `-o` spec, trimmed; a bare key has the value "".
fn attributes(spec: &str) -> BTreeMap<String, String> {
    spec.split(',')
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// A yes/no attribute's value as buildx reads it (Go's ParseBool); empty (a bare key) is yes.
fn yes_no(value: &str) -> Option<bool> {
    match value {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The names a docker archive lists as its RepoTags: a name pinned by digest alone has no tag
/// to list, and would leave the loaded image untagged without a word.
fn docker_tags(names: Vec<Reference>) -> Result<Vec<Reference>, OutputSpecError> {
    match names.iter().find(|n| n.tag.is_none()) {
        Some(untagged) => Err(OutputSpecError::DockerNameWithoutTag(untagged.to_string())),
        None => Ok(names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<Reference> {
        vec!["localhost:5000/app:1".parse().unwrap()]
    }

    fn oci_archive(dest: &str) -> Output {
        Output::OciArchive {
            dest: dest.into(),
            format: ImageFormat::default(),
        }
    }

    fn oci_dir(dest: &str) -> Output {
        Output::OciDir {
            dest: dest.into(),
            format: ImageFormat::default(),
        }
    }

    fn parse(spec: &str) -> Result<Option<Output>, OutputSpecError> {
        Output::parse(spec, &names(), 1)
    }

    #[test]
    fn registry_outputs_push_to_the_tags_or_their_own_name() {
        let pushed = |oci_mediatypes, push_by_digest, names| {
            Some(Output::Registry {
                names,
                format: ImageFormat {
                    oci_mediatypes,
                    ..ImageFormat::default()
                },
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
        // buildx reads yes/no values as Go's ParseBool does: these push too.
        for on in ["True", "TRUE", "1", "t"] {
            assert_eq!(
                parse(&format!("type=image,push={on}")).unwrap(),
                pushed(true, false, names()),
                "push={on}"
            );
        }
        assert_eq!(parse("type=image,push=0").unwrap(), None);
        assert_eq!(
            parse("type=registry,oci-mediatypes=False,push-by-digest=1").unwrap(),
            pushed(false, true, names())
        );
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
    fn rewrite_timestamp_is_what_source_date_epoch_does() {
        let specs = |s: &str| vec![s.to_string()];
        let outputs = |spec: &str, epoch| {
            let specs = specs(spec);
            let flags = OutputFlags {
                specs: &specs,
                source_date_epoch: epoch,
                ..OutputFlags::default()
            };
            Output::from_flags(&flags, &names(), 1).map_err(|e| e.to_string())
        };
        let spec = "type=oci,dest=x.tar,rewrite-timestamp=true";
        assert_eq!(outputs(spec, Some(0)).unwrap(), [oci_archive("x.tar")]);
        assert!(
            outputs(spec, None)
                .unwrap_err()
                .contains("needs SOURCE_DATE_EPOCH")
        );
        let off = "type=registry,rewrite-timestamp=false";
        assert!(outputs(off, Some(0)).unwrap_err().contains("always clamps"));
        assert!(outputs(off, None).is_ok());
        // Spelled as buildx takes them, the same; anything else is refused, not ignored.
        assert!(
            outputs("type=oci,dest=x.tar,rewrite-timestamp=True", None)
                .unwrap_err()
                .contains("needs SOURCE_DATE_EPOCH")
        );
        assert!(
            outputs("type=registry, rewrite-timestamp = 0", Some(0))
                .unwrap_err()
                .contains("always clamps")
        );
        assert_eq!(
            outputs("type=docker,dest=x.tar,rewrite-timestamp=yes", Some(0)).unwrap_err(),
            "-o type=docker: `rewrite-timestamp=yes` is neither true nor false"
        );
    }

    #[test]
    fn a_bare_path_is_a_local_output_and_a_dash_a_tar_on_stdout() {
        assert_eq!(
            parse("out/dir").unwrap(),
            Some(Output::Rootfs {
                dest: "out/dir".into(),
                tar: false
            })
        );
        assert_eq!(
            parse("-").unwrap(),
            Some(Output::Rootfs {
                dest: STDOUT.into(),
                tar: true
            })
        );
    }

    #[test]
    fn docker_outputs_are_tagged_with_the_names_or_their_own() {
        assert_eq!(
            parse("type=docker,dest=-").unwrap(),
            Some(Output::DockerArchive {
                dest: STDOUT.into(),
                names: names(),
            })
        );
        assert_eq!(
            parse("type=docker,dest=img.tar,name=other:2").unwrap(),
            Some(Output::DockerArchive {
                dest: "img.tar".into(),
                names: vec!["other:2".parse().unwrap()],
            })
        );
        assert_eq!(
            parse("type=registry,compression=gzip").unwrap(),
            parse("type=registry").unwrap()
        );
    }

    #[test]
    fn oci_outputs_are_archives_unless_tar_is_false() {
        assert_eq!(
            parse("type=oci,dest=out.tar").unwrap(),
            Some(oci_archive("out.tar"))
        );
        assert_eq!(
            parse("type=oci,dest=out,tar=false").unwrap(),
            Some(oci_dir("out"))
        );
        assert_eq!(
            parse("type=oci,dest=out,tar=true").unwrap(),
            Some(oci_archive("out"))
        );
        for off in ["False", "FALSE", "0", "f"] {
            assert_eq!(
                parse(&format!("type=oci,dest=out,tar={off}")).unwrap(),
                Some(oci_dir("out")),
                "tar={off}"
            );
        }
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
        for spec in ["type=cacheonly", "dest=x"] {
            let kind = spec
                .strip_prefix("type=")
                .map_or("", |s| s.split(',').next().unwrap());
            assert_eq!(
                err(spec, 1),
                format!(
                    "output type `{kind}` is not supported by this version of kiln \
                     (supported: registry, image, oci, docker, local, tar)"
                )
            );
        }
        // An attribute is never ignored: unknown ones name those the type takes.
        assert_eq!(
            err("type=oci,dest=x.tar,push-by-digest=true", 1),
            "-o type=oci: unknown attribute `push-by-digest` (accepted: dest, tar, name, \
             oci-mediatypes, compression, compression-level, force-compression, rewrite-timestamp)"
        );
        assert_eq!(
            err("type=registry,compresion=zstd", 1),
            "-o type=registry: unknown attribute `compresion` (accepted: name, push, \
             push-by-digest, oci-mediatypes, compression, compression-level, force-compression, \
             rewrite-timestamp)"
        );
        assert_eq!(
            err("type=docker,dest=x,compression=zstd", 1),
            "-o type=docker: unknown attribute `compression` (accepted: dest, name, rewrite-timestamp)"
        );
        let pinned = format!("localhost:5000/app@sha256:{}", "a".repeat(64));
        assert_eq!(
            err(&format!("type=docker,dest=x.tar,name={pinned}"), 1),
            format!(
                "a docker archive (-o type=docker, --tar-path) is tagged with its names, but \
                 `{pinned}` has no tag: name it NAME:TAG"
            )
        );
        assert_eq!(
            err("type=docker", 1),
            "-o type=docker needs dest=PATH (kiln has no engine to load into: dest=FILE, or \
             dest=- | podman load)"
        );
        assert_eq!(
            err("type=local", 1),
            "-o type=local needs dest=PATH (a directory)"
        );
        assert_eq!(
            err("type=local,dest=-", 1),
            "-o type=local needs dest=PATH (a directory; type=tar,dest=- writes a tar to \
             standard output)"
        );
        assert_eq!(
            err("type=tar,dest=x,compression=gzip", 1),
            "-o type=tar: unknown attribute `compression` (accepted: dest)"
        );
        assert_eq!(
            err("type=oci,dest=-,tar=false", 1),
            "-o type=oci needs dest=PATH (a directory: tar=false cannot go to standard output)"
        );
        // A yes/no attribute with any other value is refused, never read as "no".
        assert_eq!(
            err("type=image,push=yes", 1),
            "-o type=image: `push=yes` is neither true nor false"
        );
        assert_eq!(
            err("type=oci,dest=x,tar=no", 1),
            "-o type=oci: `tar=no` is neither true nor false"
        );
        assert_eq!(
            err("type=registry,oci-mediatypes=off", 1),
            "-o type=registry: `oci-mediatypes=off` is neither true nor false"
        );
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
            source_date_epoch: None,
            format: ImageFormat::default(),
        };
        assert_eq!(
            Output::from_flags(&flags, &names(), 1).unwrap(),
            [
                oci_archive("a.tar"),
                Output::Registry {
                    names: names(),
                    format: ImageFormat::default(),
                    push_by_digest: true,
                },
                oci_dir("dir"),
                Output::DockerArchive {
                    dest: "img.tar".into(),
                    names: names(),
                },
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
    fn registry_and_oci_outputs_may_use_docker_media_types() {
        for spec in [
            "type=registry,oci-mediatypes=false",
            "type=oci,dest=x,oci-mediatypes=false",
        ] {
            let docker = parse(spec).unwrap().unwrap();
            assert!(!docker.format().oci_mediatypes, "{spec}");
        }
        assert!(oci_dir("d").format().oci_mediatypes);
        let docker = parse("type=docker,dest=x").unwrap().unwrap();
        assert_eq!(docker.format(), ImageFormat::default());
    }

    #[test]
    fn compression_attributes_set_the_layer_encoding() {
        let encoding = |spec: &str| parse(spec).unwrap().unwrap().format().encoding;
        assert_eq!(encoding("type=registry"), LayerEncoding::Gzip { level: 6 });
        assert_eq!(
            encoding("type=registry,compression=zstd"),
            LayerEncoding::Zstd { level: 3 }
        );
        assert_eq!(
            encoding("type=oci,dest=x,compression=zstd,compression-level=12"),
            LayerEncoding::Zstd { level: 12 }
        );
        assert_eq!(
            encoding("type=image,push,compression-level=1"),
            LayerEncoding::Gzip { level: 1 }
        );
        assert_eq!(
            encoding("type=registry,compression=estargz,compression-level=9"),
            LayerEncoding::Estargz { level: 9 }
        );
        assert_eq!(
            encoding("type=registry,compression=uncompressed"),
            LayerEncoding::Uncompressed
        );
        let forced = parse("type=registry,compression=zstd,force-compression=true")
            .unwrap()
            .unwrap();
        assert!(forced.format().force_compression);
        assert!(
            !parse("type=registry")
                .unwrap()
                .unwrap()
                .format()
                .force_compression
        );
        // The build writes its layers in the first output's compression; eStargz is made
        // from gzip layers at delivery.
        let outputs = |specs: &[&str]| -> Vec<Output> {
            specs.iter().map(|s| parse(s).unwrap().unwrap()).collect()
        };
        assert_eq!(
            Output::layer_encoding(&outputs(&[
                "type=registry,compression=zstd",
                "type=registry"
            ])),
            LayerEncoding::Zstd { level: 3 }
        );
        assert_eq!(
            Output::layer_encoding(&outputs(&["type=registry,compression=estargz"])),
            LayerEncoding::default()
        );
        assert_eq!(Output::layer_encoding(&[]), LayerEncoding::default());
    }

    #[test]
    fn bad_compression_attributes_are_refused_before_the_build() {
        let err = |spec: &str| parse(spec).unwrap_err().to_string();
        assert_eq!(
            err("type=registry,compression=lz4"),
            "-o type=registry: unknown compression `lz4` (accepted: gzip, zstd, estargz, uncompressed)"
        );
        assert_eq!(
            err("type=registry,compression-level=10"),
            "-o type=registry: compression-level=10 is out of range for gzip (0 to 9)"
        );
        assert!(
            err("type=oci,dest=x,compression=zstd,compression-level=22").starts_with(
                "-o type=oci: compression-level=22 is out of range for zstd (1 to 19;"
            ),
        );
        assert_eq!(
            err("type=registry,compression-level=high"),
            "-o type=registry: compression-level=high is not a number"
        );
        assert_eq!(
            err("type=registry,compression=uncompressed,compression-level=3"),
            "-o type=registry: compression-level=3 means nothing for uncompressed layers"
        );
        assert_eq!(
            err("type=registry,compression=zstd,oci-mediatypes=false"),
            "-o type=registry: zstd layers have no Docker media type; leave oci-mediatypes=false out, or use compression=gzip"
        );
        assert_eq!(
            err("type=registry,force-compression=maybe"),
            "-o type=registry: `force-compression=maybe` is neither true nor false"
        );
    }
}
