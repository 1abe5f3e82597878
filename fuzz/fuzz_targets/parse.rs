//! Any text: the parser returns a Dockerfile or a ParseError, never panics; on success the
//! JSON view, the stage split and every lint rule must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(df) = kiln_dockerfile::parse("Dockerfile", text) else {
        return;
    };
    let json = kiln_dockerfile::to_json(&df);
    assert!(json["instructions"].is_array());
    let _ = df.stages();
    for finding in kiln_dockerfile::check(&df) {
        assert!(finding.line >= 1 && finding.line <= text.lines().count().max(1));
    }
});
