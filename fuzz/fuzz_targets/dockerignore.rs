//! Input split on NUL: a `.dockerignore`, then paths. Parsing returns a matcher or an error,
//! and matching never panics. Without exception patterns, whatever is excluded is excluded
//! with everything below it (for paths that clean to themselves). Each pattern line is also tried as a COPY source pattern.
#![no_main]

use kiln_dockerfile::{IgnoreMatcher, glob_match};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut parts = text.split('\0');
    let content = parts.next().unwrap_or_default();
    let paths: Vec<&str> = parts.collect();
    if let Ok(matcher) = IgnoreMatcher::parse(content) {
        let has_exceptions = content.lines().any(|l| l.trim_start().starts_with('!'));
        for path in &paths {
            let excluded = matcher.is_excluded(path);
            let _ = matcher.may_reinclude_under(path);
            // Paths that clean to themselves: `a/b`, not `./a`, `a//b` or `/`.
            let plain = path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            if excluded && !has_exceptions && plain {
                assert!(matcher.is_excluded(&format!("{path}/below")));
            }
        }
    }
    for pattern in content.lines() {
        for path in &paths {
            let _ = glob_match(pattern, path);
        }
    }
});
