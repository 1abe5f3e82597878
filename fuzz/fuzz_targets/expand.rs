//! Input split on NUL: a word, then `NAME=VALUE` variables. Expansion with either escape
//! character, and the word read as a `.dockerignore` tested against the other parts as
//! paths, must return results or errors, never panic.
#![no_main]

use std::collections::HashMap;

use kiln_dockerfile::{IgnoreMatcher, expand, expand_words, glob_match};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut parts = text.split('\0');
    let word = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let vars: HashMap<&str, &str> = rest.iter().filter_map(|p| p.split_once('=')).collect();
    let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
    for escape in ['\\', '`'] {
        let _ = expand(word, &lookup, escape);
        let _ = expand_words(word, &lookup, escape);
    }
    if let Ok(matcher) = IgnoreMatcher::parse(word) {
        for path in &rest {
            let _ = matcher.is_excluded(path);
            let _ = matcher.may_reinclude_under(path);
        }
    }
    for name in &rest {
        let _ = glob_match(word, name);
    }
});
