//! Glob patterns shared by word expansion (`${v#pattern}` and friends) and `.dockerignore`.
//!
//! Two dialects:
//! - shell patterns, where `*` and `?` match any character including `/`;
//! - path patterns (moby's patternmatcher), where `*` and `?` stop at `/`, `**/` matches any
//!   number of leading directories and a trailing `**` matches everything below.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters (not `/` in path patterns).
    AnyRun,
    /// `?`: one character (not `/` in path patterns).
    AnyChar,
    /// `[...]`: one character in (or, negated, not in) the listed ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` (or `**` before more pattern): nothing, or anything ending in `/`.
    AnyDirs,
    /// Trailing `**`: everything that is left.
    AnyRest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    tokens: Vec<Token>,
    /// Path dialect: single-character wildcards never match `/`.
    stops_at_slash: bool,
}

impl Glob {
    /// Compiles a shell pattern; `escape` makes the next character literal. A `[` without a
    /// valid closing `]` is taken literally, as shells do.
    pub(crate) fn shell(pattern: &str, escape: char) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => tokens.push(Token::AnyRun),
                '?' => tokens.push(Token::AnyChar),
                '[' => match parse_class(&chars, i, escape) {
                    Ok((class, next)) => {
                        tokens.push(class);
                        i = next;
                    }
                    Err(_) => tokens.push(Token::Literal('[')),
                },
                c if c == escape && i < chars.len() => {
                    tokens.push(Token::Literal(chars[i]));
                    i += 1;
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Glob {
            tokens,
            stops_at_slash: false,
        }
    }

    /// Compiles a cleaned `.dockerignore` pattern (moby patternmatcher rules).
    pub(crate) fn path(pattern: &str) -> Result<Glob, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    // `**/` behaves like `**`: the slash is part of the wildcard.
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        tokens.push(Token::AnyRest);
                    } else {
                        tokens.push(Token::AnyDirs);
                    }
                }
                '*' => tokens.push(Token::AnyRun),
                '?' => tokens.push(Token::AnyChar),
                '[' => {
                    let (class, next) = parse_class(&chars, i, '\\')?;
                    tokens.push(class);
                    i = next;
                }
                ']' => return Err("unmatched ']'".to_string()),
                '\\' if i < chars.len() => {
                    tokens.push(Token::Literal(chars[i]));
                    i += 1;
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Glob {
            tokens,
            stops_at_slash: true,
        })
    }

    /// Whether the whole of `text` matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        self.simulate(&chars).0[chars.len()]
    }

    /// Whether some string that starts with `prefix` could match: some way through the
    /// pattern consumes all of `prefix`.
    pub(crate) fn could_match_below(&self, prefix: &str) -> bool {
        let chars: Vec<char> = prefix.chars().collect();
        self.simulate(&chars).1
    }

    /// For each `len` in `0..=text.len()`, whether `text[..len]` matches.
    pub(crate) fn prefix_matches(&self, text: &[char]) -> Vec<bool> {
        self.simulate(text).0
    }

    fn single_char_ok(&self, c: char) -> bool {
        !(self.stops_at_slash && c == '/')
    }

    /// Runs the pattern over `text` as a set of positions: after each token,
    /// where in the text the match may have got to. A set instead of backtracking keeps the
    /// cost at tokens x text even for patterns like `*a*a*a*b` (backtracking is exponential).
    /// Returns the final set and whether some step reached the end of the text.
    fn simulate(&self, text: &[char]) -> (Vec<bool>, bool) {
        let n = text.len();
        let mut current = vec![false; n + 1];
        current[0] = true;
        let mut reached_end = current[n];
        for token in &self.tokens {
            let mut next = vec![false; n + 1];
            match token {
                Token::Literal(_) | Token::AnyChar | Token::Class { .. } => {
                    for s in (0..n).filter(|&s| current[s]) {
                        next[s + 1] = self.single_char_matches(token, text[s]);
                    }
                }
                Token::AnyRun => {
                    let mut running = false;
                    for s in 0..=n {
                        running |= current[s];
                        next[s] = running;
                        if s < n && !self.single_char_ok(text[s]) {
                            running = false;
                        }
                    }
                }
                Token::AnyDirs => {
                    let mut running = false;
                    for s in 0..=n {
                        running |= current[s];
                        next[s] |= current[s];
                        if running && s < n && text[s] == '/' {
                            next[s + 1] = true;
                        }
                    }
                }
                Token::AnyRest => {
                    if let Some(first) = current.iter().position(|&c| c) {
                        next[first..].fill(true);
                    }
                }
            }
            reached_end |= next[n];
            current = next;
            if !current.contains(&true) {
                break;
            }
        }
        (current, reached_end)
    }

    fn single_char_matches(&self, token: &Token, c: char) -> bool {
        match token {
            Token::Literal(l) => c == *l,
            Token::AnyChar => self.single_char_ok(c),
            Token::Class { negated, ranges } => {
                self.single_char_ok(c)
                    && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
            _ => false,
        }
    }
}

/// Parses a bracket expression whose `[` was just consumed; `start` indexes the first character
/// after it. Returns the class token and the index after the closing `]`.
fn parse_class(chars: &[char], start: usize, escape: char) -> Result<(Token, usize), String> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('^') | Some('!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let read_char = |i: &mut usize| -> Result<char, String> {
        match chars.get(*i) {
            None => Err("unterminated '[' in pattern".to_string()),
            Some(&c) if c == escape => {
                *i += 1;
                let escaped = chars
                    .get(*i)
                    .copied()
                    .ok_or_else(|| "unterminated '[' in pattern".to_string())?;
                *i += 1;
                Ok(escaped)
            }
            Some(&c) if c == '-' || c == ']' => Err(format!("unexpected '{c}' in '[...]'")),
            Some(&c) => {
                *i += 1;
                Ok(c)
            }
        }
    };
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, i + 1));
        }
        let lo = read_char(&mut i)?;
        let hi = if chars.get(i) == Some(&'-') {
            i += 1;
            read_char(&mut i)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_star_crosses_slashes_and_question_mark_is_one_char() {
        let g = Glob::shell("a*z", '\\');
        assert!(g.matches("a/b/z"));
        assert!(g.matches("az"));
        assert!(!g.matches("a/b/y"));
        assert!(Glob::shell("v?.?", '\\').matches("v1.2"));
        assert!(!Glob::shell("v?.?", '\\').matches("v10.2"));
    }

    #[test]
    fn shell_escape_makes_wildcards_literal() {
        let g = Glob::shell("a\\*", '\\');
        assert!(g.matches("a*"));
        assert!(!g.matches("ab"));
    }

    #[test]
    fn classes_ranges_and_negation() {
        let g = Glob::shell("[a-c]x[!0-9]", '\\');
        assert!(g.matches("bxy"));
        assert!(!g.matches("dxy"));
        assert!(!g.matches("bx1"));
        // Unterminated bracket is literal in shell patterns but an error in path patterns.
        assert!(Glob::shell("[ab", '\\').matches("[ab"));
        assert!(Glob::path("[ab").is_err());
    }

    #[test]
    fn path_wildcards_stop_at_slash() {
        let g = Glob::path("*.md").unwrap();
        assert!(g.matches("README.md"));
        assert!(!g.matches("docs/README.md"));
        let g = Glob::path("**/*.md").unwrap();
        assert!(g.matches("README.md"));
        assert!(g.matches("docs/a/README.md"));
        let g = Glob::path("a/**/b").unwrap();
        assert!(g.matches("a/b"));
        assert!(g.matches("a/x/y/b"));
        assert!(!g.matches("a/xb"));
        let g = Glob::path("dir/**").unwrap();
        assert!(g.matches("dir/x/y"));
        assert!(!g.matches("dir"));
    }

    #[test]
    fn could_match_below_sees_through_wildcards() {
        assert!(Glob::path("a/keep").unwrap().could_match_below("a/"));
        assert!(!Glob::path("b/keep").unwrap().could_match_below("a/"));
        assert!(Glob::path("**/keep").unwrap().could_match_below("x/y/"));
        assert!(Glob::path("*/keep").unwrap().could_match_below("x/"));
        assert!(!Glob::path("*/keep").unwrap().could_match_below("x/y/"));
    }

    /// Found by fuzzing: the backtracking matcher took exponential time on many stars.
    #[test]
    fn many_stars_match_in_polynomial_time() {
        let text = "a".repeat(2000);
        let started = std::time::Instant::now();
        assert!(!Glob::shell("*a*a*a*a*a*a*a*a*b", '\\').matches(&text));
        assert!(Glob::shell("*a*a*a*a*a*a*a*a*", '\\').matches(&text));
        assert!(!Glob::path("**/*a*a*a*a*a*b").unwrap().matches(&text));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}

/// Whether a COPY source pattern component (`*.txt`, `file?.[ch]`) matches a file name, with
/// the path dialect's rules (`*` and `?` never match `/`). An invalid pattern matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::path(pattern).is_ok_and(|g| g.matches(name))
}

#[cfg(test)]
mod glob_match_tests {
    use super::glob_match;

    #[test]
    fn component_patterns_match_names() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "a.md"));
        assert!(glob_match("file?.[ch]", "file1.c"));
        assert!(!glob_match("*", "a/b"));
        assert!(!glob_match("[", "["));
    }
}
