//! Any text as a registry's `WWW-Authenticate` header: the challenge kiln picks is one the
//! header names (its scheme appears in it), and parsing never panics.
#![no_main]

use kiln_registry::{Challenge, parse_challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let lower = header.to_ascii_lowercase();
    match parse_challenge(header) {
        Some(Challenge::Basic) => assert!(lower.contains("basic"), "{header:?}"),
        Some(Challenge::Bearer { realm, service }) => {
            assert!(
                lower.contains("bearer") && lower.contains("realm"),
                "{header:?}"
            );
            // Unescaping only ever drops backslashes.
            assert!(realm.len() <= header.len(), "{header:?}");
            assert!(
                service.is_none_or(|s| s.len() <= header.len()),
                "{header:?}"
            );
        }
        None => {}
    }
});
