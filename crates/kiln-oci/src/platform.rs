use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An OCI platform: `os/arch[/variant]`, as found in an index entry and an image config.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown platform `{given}`: expected os/arch[/variant], for example linux/amd64, linux/arm64, linux/arm/v7, linux/386, linux/ppc64le, linux/s390x, linux/riscv64"
)]
pub struct PlatformError {
    pub given: String,
}

const KNOWN_ARCHES: &[&str] = &[
    "amd64", "386", "arm", "arm64", "ppc64le", "s390x", "riscv64", "mips64le", "loong64",
];

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_string(),
            os: os.to_string(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform kiln itself runs on, as an OCI platform.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform::new("linux", arch, variant)
    }

    /// The normalised form: `aarch64` is `arm64`, `x86_64` is `amd64`, `arm64/v8` drops the
    /// default variant, and `arm` without a variant is `arm/v7`, as containerd normalises.
    pub fn normalized(&self) -> Platform {
        let mut p = self.clone();
        p.os = p.os.to_ascii_lowercase();
        p.architecture = match p.architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".into(),
            "aarch64" => "arm64".into(),
            "armhf" | "armel" => "arm".into(),
            "i386" | "i686" => "386".into(),
            other => other.into(),
        };
        p.variant = match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8") | Some("8")) => None,
            ("arm", None) => Some("v7".into()),
            ("arm", Some(v)) if !v.starts_with('v') => Some(format!("v{v}")),
            ("amd64", Some("v1")) => None,
            (_, v) => v.map(str::to_string),
        };
        p
    }

    /// The platforms whose images can serve `self`, best first: itself, then for 32-bit arm
    /// the lower variants (v7 runs v6 and v5 code), as containerd orders them.
    pub fn compatible(&self) -> Vec<Platform> {
        let me = self.normalized();
        let mut out = vec![me.clone()];
        if me.architecture == "arm" {
            let n: u32 = me
                .variant
                .as_deref()
                .and_then(|v| v.strip_prefix('v'))
                .and_then(|v| v.parse().ok())
                .unwrap_or(7);
            for lower in (5..n).rev() {
                out.push(Platform::new(&me.os, "arm", Some(&format!("v{lower}"))));
            }
        }
        out
    }

    /// Whether an index entry's platform serves a request for `self` exactly (after
    /// normalising both sides; os.version and features are ignored).
    pub fn matches(&self, candidate: &Platform) -> bool {
        let (a, b) = (self.normalized(), candidate.normalized());
        a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PlatformError {
            given: s.to_string(),
        };
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err());
        }
        let p = match parts.as_slice() {
            [os, arch] => Platform::new(os, arch, None),
            [os, arch, variant] => Platform::new(os, arch, Some(variant)),
            [arch] if KNOWN_ARCHES.contains(arch) => Platform::new("linux", arch, None),
            _ => return Err(err()),
        }
        .normalized();
        if p.os != "linux" && p.os != "windows" || !KNOWN_ARCHES.contains(&p.architecture.as_str())
        {
            return Err(err());
        }
        Ok(p)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        assert_eq!(
            "linux/arm".parse::<Platform>().unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            "linux/x86_64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            "arm64".parse::<Platform>().unwrap().to_string(),
            "linux/arm64"
        );
    }

    #[test]
    fn rejects_malformed_with_accepted_forms() {
        for bad in ["", "linux/", "linux/sparc", "plan9/amd64", "a/b/c/d"] {
            let e = bad.parse::<Platform>().unwrap_err();
            assert!(e.to_string().contains("linux/arm/v7"), "{e}");
        }
    }

    #[test]
    fn arm_falls_back_to_lower_variants_only() {
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        let names: Vec<String> = v7.compatible().iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]);
        let arm64: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(arm64.compatible(), vec![arm64.clone()]);
    }

    #[test]
    fn matching_ignores_default_variants() {
        let want: Platform = "linux/arm64".parse().unwrap();
        assert!(want.matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(!want.matches(&Platform::new("linux", "amd64", None)));
    }
}
