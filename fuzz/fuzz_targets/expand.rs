//! Input split on NUL: a word, then `NAME=VALUE` variables. Expansion with either escape
//! character must return a result or an error, never panic, and stay within its limits: a
//! result exceeds the word by at most `MAX_WORD_BYTES`, and a limit error points inside it.
#![no_main]

use std::collections::HashMap;

use kiln_dockerfile::{MAX_WORD_BYTES, expand, expand_words};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut parts = text.split('\0');
    let word = parts.next().unwrap_or_default();
    let vars: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
    let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
    for escape in ['\\', '`'] {
        match expand(word, &lookup, escape) {
            Ok(expanded) => assert!(expanded.len() <= word.len() + MAX_WORD_BYTES),
            Err(e) if e.is_limit() => {
                let offset = e.offset.expect("limit errors say where");
                assert!(offset < word.chars().count());
            }
            Err(_) => {}
        }
        if let Ok(words) = expand_words(word, &lookup, escape) {
            assert!(words.iter().all(|w| !w.is_empty()));
        }
    }
});
