use kiln_oci::{Descriptor, ImageIndex, Platform};

/// No entry of an index serves the wanted platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformMissing {
    pub wanted: String,
    /// The runnable platforms the index has, comma-separated.
    pub available: String,
}

/// Picks the manifest for `platform` from an index: the exact variant first, then the
/// compatible lower ones (32-bit arm), as containerd picks.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, PlatformMissing> {
    platform
        .compatible()
        .iter()
        .find_map(|want| {
            index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        })
        .ok_or_else(|| PlatformMissing {
            wanted: platform.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| p.normalized().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_oci::{Digest, media};

    fn index(platforms: &[&str]) -> ImageIndex {
        ImageIndex::new(
            media::OCI_INDEX,
            platforms
                .iter()
                .map(|p| {
                    let mut d = Descriptor::new(media::OCI_MANIFEST, Digest::of(p.as_bytes()), 1);
                    d.platform = Some(p.parse().unwrap());
                    d
                })
                .collect(),
        )
    }

    fn pick(idx: &ImageIndex, want: &str) -> Result<String, PlatformMissing> {
        select_platform(idx, &want.parse().unwrap())
            .map(|d| d.platform.as_ref().unwrap().to_string())
    }

    #[test]
    fn exact_variant_wins_then_lower_arm_variants() {
        let idx = index(&["linux/arm/v6", "linux/arm/v7", "linux/arm64"]);
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), "linux/arm/v7");
        let idx = index(&["linux/arm/v5", "linux/arm/v6", "linux/arm64"]);
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), "linux/arm/v6");
        // Never a higher variant, and never 32-bit arm for arm64.
        let idx = index(&["linux/arm/v7"]);
        let err = pick(&idx, "linux/arm/v6").unwrap_err();
        assert_eq!(
            err,
            PlatformMissing {
                wanted: "linux/arm/v6".into(),
                available: "linux/arm/v7".into()
            }
        );
        assert!(pick(&idx, "linux/arm64").is_err());
    }
}
