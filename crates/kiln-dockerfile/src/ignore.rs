//! `.dockerignore` matching with moby's patternmatcher rules.
//!
//! Unlike `.gitignore`, a pattern is anchored at the context root: `foo` matches `foo` and
//! everything below it, but not `a/foo`. The last matching pattern decides, and `!pattern`
//! re-includes.

use crate::error::IgnoreError;
use crate::glob::Glob;

#[derive(Debug, Clone)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    glob: Glob,
    /// `!pattern`: re-includes what it matches.
    exception: bool,
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// A path to test, relative to the context root: cleaned, without a leading `/` or `./`.
fn normalize(rel_path: &str) -> String {
    let cleaned = clean(rel_path);
    cleaned.trim_start_matches('/').to_string()
}

impl IgnoreMatcher {
    /// Reads a `.dockerignore` file. Lines starting with `#` and blank lines are ignored.
    pub fn parse(content: &str) -> Result<IgnoreMatcher, IgnoreError> {
        let content = content.strip_prefix('\u{feff}').unwrap_or(content);
        let mut patterns = Vec::new();
        for (index, line) in content.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let error = |message: &str| IgnoreError {
                line: index + 1,
                pattern: line.to_string(),
                message: message.to_string(),
            };
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if pattern.is_empty() {
                return Err(error("illegal exclusion pattern"));
            }
            let mut pattern = clean(pattern);
            if pattern.len() > 1 && pattern.starts_with('/') {
                pattern.remove(0);
            }
            let glob = Glob::path(&pattern).map_err(|message| error(&message))?;
            patterns.push(Pattern { glob, exception });
        }
        Ok(IgnoreMatcher { patterns })
    }

    /// Whether the path (relative to the context root, `/`-separated) is excluded from the
    /// context, either itself or because a parent directory is.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let path: Vec<char> = normalize(rel_path).chars().collect();
        // Whether a prefix matches does not depend on what follows it, so one run over the
        // path answers for the path and for every parent directory (the prefixes ending
        // before a `/`): the work is linear in the path's length, not in its depth times that.
        let parent_ends: Vec<usize> = (0..path.len()).filter(|&i| path[i] == '/').collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the outcome needs testing.
            if pattern.exception != excluded {
                continue;
            }
            let ends = pattern.glob.prefix_matches(&path);
            if ends[path.len()] || parent_ends.iter().any(|&end| ends[end]) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// True if some exception pattern could re-include something under this excluded dir (so a walker must still descend).
    pub fn may_reinclude_under(&self, rel_dir: &str) -> bool {
        let dir = normalize(rel_dir);
        let prefix = if dir == "." || dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.patterns
            .iter()
            .any(|p| p.exception && p.glob.could_match_below(&prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(content: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(content).unwrap()
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        let m = matcher("foo\n");
        assert!(m.is_excluded("foo"));
        assert!(m.is_excluded("foo/bar.txt"), "children of an excluded dir");
        assert!(!m.is_excluded("a/foo"));
        assert!(!m.is_excluded("foobar"));
    }

    #[test]
    fn double_star_matches_any_depth() {
        let m = matcher("**/foo\n");
        assert!(m.is_excluded("foo"));
        assert!(m.is_excluded("a/foo"));
        assert!(m.is_excluded("a/b/foo/c"));
        assert!(!m.is_excluded("a/foox"));
        let m = matcher("**/*.log\n");
        assert!(m.is_excluded("x.log"));
        assert!(m.is_excluded("a/b/x.log"));
    }

    #[test]
    fn star_stays_in_one_directory() {
        let m = matcher("*.md\n");
        assert!(m.is_excluded("CHANGES.md"));
        assert!(!m.is_excluded("docs/guide.md"));
        let m = matcher("*/*.tmp\n");
        assert!(m.is_excluded("a/x.tmp"));
        assert!(!m.is_excluded("a/b/x.tmp"));
    }

    #[test]
    fn exceptions_and_last_match_wins() {
        let m = matcher("*.md\n!README.md\n");
        assert!(m.is_excluded("CHANGES.md"));
        assert!(!m.is_excluded("README.md"));
        let m = matcher("!README.md\n*.md\n");
        assert!(m.is_excluded("README.md"), "a later exclusion overrides");
        let m = matcher("build\n!build/keep\n");
        assert!(m.is_excluded("build/other"));
        assert!(!m.is_excluded("build/keep"));
        assert!(!m.is_excluded("build/keep/deep/file"));
    }

    #[test]
    fn patterns_are_cleaned_and_comments_skipped() {
        let m = matcher("# comment\n\n  /dist/  \n./tmp//x\nlib/../out\n  # not a comment\n");
        assert!(m.is_excluded("dist/app.js"));
        assert!(m.is_excluded("tmp/x"));
        assert!(m.is_excluded("out"));
        assert!(!m.is_excluded("lib"));
        assert!(m.is_excluded("./dist"));
        assert!(
            m.is_excluded("# not a comment"),
            "an indented # starts a pattern, not a comment"
        );
    }

    #[test]
    fn may_reinclude_under_reports_exceptions_below_a_dir() {
        let m = matcher("build\n!build/keep\n");
        assert!(m.is_excluded("build"));
        assert!(m.may_reinclude_under("build"));
        let m = matcher("node_modules\n*.md\n!README.md\n");
        assert!(!m.may_reinclude_under("node_modules"));
        let m = matcher("vendor\n!**/LICENSE\n");
        assert!(m.may_reinclude_under("vendor/a/b"));
        assert!(!m.is_excluded("vendor/a/LICENSE"));
        assert!(m.is_excluded("vendor/a/main.go"));
        assert!(!matcher("vendor\n").may_reinclude_under("vendor"));
    }

    #[test]
    fn invalid_patterns_are_errors() {
        let err = IgnoreMatcher::parse("ok\n!\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(IgnoreMatcher::parse("[abc\n").is_err());
    }

    /// A context nested thousands of directories deep is untrusted input too: each pattern
    /// runs once over a path, not once per parent directory.
    #[test]
    fn deep_paths_are_matched_in_one_run_per_pattern() {
        let m = matcher("**/x*y*z\n!**/keep\n*/*/q\n");
        let deep = "d/".repeat(2000);
        let started = std::time::Instant::now();
        for i in 0..50 {
            assert!(!m.is_excluded(&format!("{deep}file{i}")));
            assert!(m.is_excluded(&format!("{deep}x_y_z/file{i}")));
        }
        assert!(!m.is_excluded(&format!("{deep}x_y_z/keep")));
        assert!(m.is_excluded("a/b/q/deeper"));
        // The quadratic code took minutes here; the bound leaves room for a loaded machine.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn clean_matches_go() {
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("/../x/"), "/x");
        assert_eq!(clean("../../a"), "../../a");
        assert_eq!(clean("./"), ".");
    }
}
