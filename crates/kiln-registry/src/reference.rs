use std::fmt;
use std::str::FromStr;

use kiln_oci::Digest;

/// Docker Hub's name in references, and the host its API really lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// An image reference, normalised the way docker does: `busybox` is
/// `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference `{given}`: {reason}")]
pub struct ReferenceError {
    pub given: String,
    pub reason: String,
}

impl Reference {
    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host the distribution API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The same repository, pointing at `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository, with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

fn valid_repo_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError {
            given: s.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(err(&format!("`{t}` is not a valid tag")));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        // `demo:a:b`: the name holds the first colon of the last component.
        if !name[last_slash..].is_empty() && name[last_slash..].contains(':') {
            return Err(err(
                "a tag follows the only `:` after the last `/` (NAME:TAG), so a name holds no \
                 `:` itself; a registry's port goes before the first `/` (HOST:PORT/NAME:TAG)",
            ));
        }
        if repository.is_empty() || !repository.split('/').all(valid_repo_component) {
            return Err(err(
                "repository names are lowercase letters, digits and separators (. _ -) between slashes",
            ));
        }
        let tag = match (&digest, tag) {
            (_, Some(t)) => Some(t.to_string()),
            (Some(_), None) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        assert_eq!(r("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r("user/app:1").to_string(), "docker.io/user/app:1");
        assert_eq!(r("busybox").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn registry_with_port_and_digest() {
        let d = Digest::of(b"x");
        let x = r(&format!("127.0.0.1:5000/team/app@{d}"));
        assert_eq!(x.registry, "127.0.0.1:5000");
        assert_eq!(x.repository, "team/app");
        assert_eq!(x.tag, None);
        assert_eq!(x.target(), d.to_string());
        let y = r("localhost/app:v1.2");
        assert_eq!(
            (y.registry.as_str(), y.tag.as_deref()),
            ("localhost", Some("v1.2"))
        );
    }

    #[test]
    fn bad_references_say_why() {
        for bad in ["UPPER/case", "app:", "app:-x", "app@sha256:12", "a//b"] {
            let e = bad.parse::<Reference>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        // Two colons: not "repository names are lowercase", but where a tag goes.
        let e = "demo:a:b".parse::<Reference>().unwrap_err().to_string();
        assert!(
            e.contains("a tag follows the only `:` after the last `/`"),
            "{e}"
        );
        // A port is fine where it belongs.
        assert_eq!(r("host:5000/demo:a").tag.as_deref(), Some("a"));
    }
}
