use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use kiln_registry::Reference;

use crate::TransportError;

/// An image location in skopeo's transport syntax.
///
/// The path of the file transports ends at the first `:`; everything after it is the name
/// (so `oci:dir:busybox:latest` is the layout `dir`, image `busybox:latest`), as skopeo
/// splits them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageLocation {
    /// `docker://REF`: a registry.
    Registry(Reference),
    /// `oci:DIR[:NAME]`: an OCI layout directory; NAME is the
    /// `org.opencontainers.image.ref.name` annotation of an `index.json` entry.
    OciDir { dir: PathBuf, name: Option<String> },
    /// `oci-archive:FILE[:NAME]`: an OCI layout in a tar archive.
    OciArchive { file: PathBuf, name: Option<String> },
    /// `docker-archive:FILE[:REF]`: a `docker save` archive; REF selects (reading) or names
    /// (writing) the image by its RepoTags entry.
    DockerArchive {
        file: PathBuf,
        reference: Option<Reference>,
    },
}

const TRANSPORTS: &str =
    "docker://REF, oci:DIR[:NAME], oci-archive:FILE[:NAME], docker-archive:FILE[:REF]";

impl FromStr for ImageLocation {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| TransportError::Location {
            given: s.to_string(),
            reason,
        };
        let (transport, rest) = s
            .split_once(':')
            .ok_or_else(|| err(format!("expected one of {TRANSPORTS}")))?;
        let path_and_name = |rest: &str| -> Result<(PathBuf, Option<String>), TransportError> {
            let (path, name) = match rest.split_once(':') {
                Some((p, n)) => (p, Some(n.to_string())),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(err("the path is empty".into()));
            }
            if name.as_deref() == Some("") {
                return Err(err("the name after the path is empty".into()));
            }
            Ok((PathBuf::from(path), name))
        };
        match transport {
            "docker" => {
                let reference = rest
                    .strip_prefix("//")
                    .ok_or_else(|| err("a registry reference is written docker://REF".into()))?;
                Ok(ImageLocation::Registry(
                    reference.parse().map_err(|e| err(format!("{e}")))?,
                ))
            }
            "oci" => {
                let (dir, name) = path_and_name(rest)?;
                Ok(ImageLocation::OciDir { dir, name })
            }
            "oci-archive" => {
                let (file, name) = path_and_name(rest)?;
                Ok(ImageLocation::OciArchive { file, name })
            }
            "docker-archive" => {
                let (file, name) = path_and_name(rest)?;
                let reference = name
                    .map(|n| n.parse().map_err(|e| err(format!("{e}"))))
                    .transpose()?;
                Ok(ImageLocation::DockerArchive { file, reference })
            }
            other => Err(err(format!(
                "unknown transport `{other}`: expected one of {TRANSPORTS}"
            ))),
        }
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_name = |f: &mut fmt::Formatter<'_>, t: &str, p: &PathBuf, n: Option<&str>| {
            write!(f, "{t}:{}", p.display())?;
            match n {
                Some(n) => write!(f, ":{n}"),
                None => Ok(()),
            }
        };
        match self {
            ImageLocation::Registry(r) => write!(f, "docker://{r}"),
            ImageLocation::OciDir { dir, name } => with_name(f, "oci", dir, name.as_deref()),
            ImageLocation::OciArchive { file, name } => {
                with_name(f, "oci-archive", file, name.as_deref())
            }
            ImageLocation::DockerArchive { file, reference } => with_name(
                f,
                "docker-archive",
                file,
                reference.as_ref().map(|r| r.to_string()).as_deref(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> ImageLocation {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn file_transports_split_path_at_the_first_colon() {
        assert_eq!(
            loc("oci:/tmp/lay:busybox:latest"),
            ImageLocation::OciDir {
                dir: "/tmp/lay".into(),
                name: Some("busybox:latest".into())
            }
        );
        assert_eq!(
            loc("oci:lay:127.0.0.1:5000/busybox:1"),
            ImageLocation::OciDir {
                dir: "lay".into(),
                name: Some("127.0.0.1:5000/busybox:1".into())
            }
        );
        assert_eq!(
            loc("oci-archive:img.tar"),
            ImageLocation::OciArchive {
                file: "img.tar".into(),
                name: None
            }
        );
        let ImageLocation::DockerArchive { file, reference } = loc("docker-archive:x.tar:app:v1")
        else {
            panic!("not a docker archive")
        };
        assert_eq!(file, PathBuf::from("x.tar"));
        assert_eq!(reference.unwrap().to_string(), "docker.io/library/app:v1");
    }

    #[test]
    fn registry_references_need_the_double_slash() {
        let ImageLocation::Registry(r) = loc("docker://localhost:5000/team/app:2") else {
            panic!("not a registry")
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "team/app")
        );
        assert!("docker:busybox".parse::<ImageLocation>().is_err());
    }

    #[test]
    fn bad_locations_say_why_and_round_trip_otherwise() {
        for (bad, why) in [
            ("busybox", "expected one of"),
            ("tarball:x", "unknown transport `tarball`"),
            ("oci:", "the path is empty"),
            ("oci:dir:", "name after the path is empty"),
            ("docker-archive:x.tar:UPPER", "x.tar:UPPER"),
        ] {
            let e = bad.parse::<ImageLocation>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        for good in [
            "oci:dir:busybox:latest",
            "oci-archive:a.tar",
            "docker://localhost:5000/app:1",
            "docker-archive:a.tar:docker.io/library/app:1",
        ] {
            assert_eq!(loc(good).to_string(), good);
        }
    }
}
