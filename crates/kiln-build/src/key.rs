//! Cache keys: what an operation's result depends on, hashed.
//!
//! An op has two keys (see `plan.rs` and `solve.rs`):
//! - its *definition key*, computed when the plan is made: the op as expanded (command,
//!   environment, user, working dir, platform, network, mount specs; COPY's sources, patterns,
//!   destination, owner, mode and flags; heredoc bodies; an ADD URL's checksum), never a
//!   secret's value or a cache mount's contents, plus the definition keys of its inputs. Two
//!   ops with the same definition key are the same work; that is how platforms share steps.
//! - its *cache key*, computed by the solver just before the op would run: the op's own
//!   definition, the *output keys* of its inputs, and the content of what it reads from
//!   outside the plan (the context files a COPY or a bind mount reads, after `.dockerignore`
//!   and `--exclude`; an ADD URL's body when no checksum is given). The local cache is looked
//!   up by it. An op's output key is its cache key and the diff_id of the layer it produced,
//!   so an op that ran again and made a different layer changes the keys of what follows,
//!   while one that made the same layer does not (as BuildKit's content-based keys do).

use std::fmt;

use kiln_oci::Digest;
use serde::{Deserialize, Serialize};

/// Changes whenever what goes into keys changes meaning, so old records are never read
/// with a new meaning.
const KEY_VERSION: &str = "kiln.cache.key.v1";

/// A sha256 over a canonical serialisation (serde JSON with fields in declaration order).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheKey(Digest);

impl CacheKey {
    /// The key of `parts`, with a tag that says what kind of thing is keyed.
    pub fn of(tag: &str, parts: &impl Serialize) -> CacheKey {
        let mut bytes = format!("{KEY_VERSION}\n{tag}\n").into_bytes();
        serde_json::to_writer(&mut bytes, parts).expect("key parts always serialise");
        CacheKey(Digest::of(&bytes))
    }

    /// The hex form, for file names.
    pub fn hex(&self) -> &str {
        self.0.hex()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_tag_and_every_part() {
        let a = CacheKey::of("exec", &("echo", 1));
        assert_eq!(a, CacheKey::of("exec", &("echo", 1)));
        assert_ne!(a, CacheKey::of("copy", &("echo", 1)));
        assert_ne!(a, CacheKey::of("exec", &("echo", 2)));
        assert_eq!(a.hex().len(), 64);
        assert!(a.to_string().starts_with("sha256:"));
    }
}
