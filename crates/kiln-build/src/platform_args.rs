//! The automatic platform ARGs BuildKit defines in global scope.

use std::collections::BTreeMap;

use kiln_oci::Platform;

/// Values of the automatic ARGs for building `target` on `build`.
pub(crate) fn platform_args(target: &Platform, build: &Platform) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        let p = p.normalized();
        out.insert(format!("{prefix}PLATFORM"), p.to_string());
        out.insert(format!("{prefix}OS"), p.os.clone());
        out.insert(format!("{prefix}ARCH"), p.architecture.clone());
        out.insert(
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_buildkit_naming() {
        let target: Platform = "linux/arm/v7".parse().unwrap();
        let build: Platform = "linux/amd64".parse().unwrap();
        let a = platform_args(&target, &build);
        assert_eq!(a["TARGETPLATFORM"], "linux/arm/v7");
        assert_eq!(a["TARGETARCH"], "arm");
        assert_eq!(a["TARGETVARIANT"], "v7");
        assert_eq!(a["BUILDPLATFORM"], "linux/amd64");
        assert_eq!(a["BUILDVARIANT"], "");
        assert_eq!(a.len(), 8);
    }
}
