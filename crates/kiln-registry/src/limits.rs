//! How much of what a registry sends kiln holds in memory, and how it reads and shows it.
//! Blobs are streamed to disk and stop at their descriptor's size instead.

use std::io::{self, Read};

/// The largest manifest or index kiln reads: distribution's own limit for manifests it
/// accepts (and the one the OCI distribution spec tells clients to expect).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The largest image config kiln reads: twice the 4 MiB containers/image (skopeo, Podman)
/// reads configs under, so no image those tools pull is refused here.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// A token service's answer: a token or two and a few fields.
pub(crate) const MAX_TOKEN_BYTES: u64 = 1 << 20;

/// The body of an error answer: distribution's JSON error list fits many times over.
pub(crate) const MAX_ERROR_BYTES: u64 = 64 << 10;

/// The most of an error body an error message shows.
const SHOWN_ERROR_CHARS: usize = 400;

/// `n` bytes as people write them: `4 MiB`, `64 KiB`, `1234 bytes`.
pub(crate) fn size_text(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        1 => "1 byte".into(),
        n => format!("{n} bytes"),
    }
}

/// Reads `reader` to its end, keeping at most `limit` bytes; `Ok(None)` when there is more.
/// `expected` (a Content-Length) only sizes the buffer, never beyond `limit`.
pub(crate) fn read_at_most(
    reader: impl Read,
    limit: u64,
    expected: Option<u64>,
) -> io::Result<Option<Vec<u8>>> {
    let capacity = expected.unwrap_or(0).min(limit).min(1 << 20);
    let mut bytes = Vec::with_capacity(capacity as usize);
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// What an error answer's body says, made fit for a message: the codes and messages of
/// distribution's `{"errors": [...]}` when the body is that, else its text; control
/// characters (a terminal's escape sequences among them) become spaces, and the whole is cut
/// to a few hundred characters.
pub(crate) fn error_text(body: &[u8]) -> String {
    let listed = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let errors = v.get("errors")?.as_array()?;
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let field = |k: &str| e.get(k).and_then(|s| s.as_str()).unwrap_or_default();
                    match (field("code"), field("message")) {
                        ("", m) | (m, "") => m.to_string(),
                        (c, m) => format!("{c}: {m}"),
                    }
                })
                .filter(|p| !p.is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        });
    let text = listed.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let clean: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(SHOWN_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_one_byte_past_the_limit() {
        assert_eq!(
            read_at_most(&b"abcd"[..], 4, None).unwrap(),
            Some(b"abcd".to_vec())
        );
        assert_eq!(read_at_most(&b"abcde"[..], 4, Some(5)).unwrap(), None);
        let endless = io::repeat(b' ');
        assert_eq!(
            read_at_most(endless, 1 << 10, Some(u64::MAX)).unwrap(),
            None
        );
    }

    #[test]
    fn error_bodies_are_shortened_and_cleaned() {
        let json = br#"{"errors":[{"code":"DENIED","message":"no"},{"message":"also"}]}"#;
        assert_eq!(error_text(json), "DENIED: no; also");
        assert_eq!(error_text(b"  plain\x1b[2Jtext\n"), "plain [2Jtext");
        let long = "x".repeat(10_000);
        let shown = error_text(long.as_bytes());
        assert_eq!(shown.chars().count(), SHOWN_ERROR_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn sizes_are_written_in_their_unit() {
        assert_eq!(size_text(MAX_MANIFEST_BYTES), "4 MiB");
        assert_eq!(size_text(MAX_ERROR_BYTES), "64 KiB");
        assert_eq!(size_text(1234), "1234 bytes");
    }
}
