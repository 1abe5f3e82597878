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

/// Where [`Glob::simulate`] lets matches begin.
#[derive(Clone, Copy)]
enum Starts {
    AtZero,
    Everywhere,
}

/// The outcome of [`Glob::simulate`]: for each position of the text, whether a match (one
/// that consumed characters, or an empty one) ends there.
struct Run {
    nonempty: Vec<bool>,
    empty: Vec<bool>,
    /// Whether some token's step reached the end of the text.
    reached_end: bool,
}

impl Glob {
    /// Compiles a shell pattern; `escape` makes the next character literal. A `[` without a
    /// valid closing `]` is taken literally, as shells do.
    pub(crate) fn shell(pattern: &str, escape: char) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        // A `[` before this index is known not to open a class: a class scan that failed at
        // some character also fails, at the same character or earlier, from every `[` it
        // read past (the scans agree from the character after that `[`). Remembering it keeps
        // `[[[[...` linear instead of quadratic.
        let mut no_class_before = 0;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                // `**` matches what `*` does; one token does the work of a run of them.
                '*' if tokens.last() == Some(&Token::AnyRun) => {}
                '*' => tokens.push(Token::AnyRun),
                '?' => tokens.push(Token::AnyChar),
                '[' if i <= no_class_before => tokens.push(Token::Literal('[')),
                '[' => match parse_class(&chars, i, escape) {
                    Ok((class, next)) => {
                        tokens.push(class);
                        i = next;
                    }
                    Err(failure) => {
                        no_class_before = failure.at;
                        tokens.push(Token::Literal('['));
                    }
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
                    let (class, next) =
                        parse_class(&chars, i, '\\').map_err(|failure| failure.message)?;
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
        self.prefix_matches(&chars)[chars.len()]
    }

    /// Whether some string that starts with `prefix` could match: some way through the
    /// pattern consumes all of `prefix`.
    pub(crate) fn could_match_below(&self, prefix: &str) -> bool {
        let chars: Vec<char> = prefix.chars().collect();
        self.simulate(&chars, Starts::AtZero).reached_end
    }

    /// For each `len` in `0..=text.len()`, whether `text[..len]` matches. Whether a prefix
    /// matches never depends on what follows it, so one run answers for every prefix.
    pub(crate) fn prefix_matches(&self, text: &[char]) -> Vec<bool> {
        let run = self.simulate(text, Starts::AtZero);
        run.nonempty
            .iter()
            .zip(&run.empty)
            .map(|(nonempty, empty)| *nonempty || *empty)
            .collect()
    }

    /// For each `start` in `0..=text.len()`, whether some non-empty `text[start..end]`
    /// matches. One run of the reversed pattern over the reversed text: a match starting at
    /// `start` is a match of the reversal ending at `text.len() - start`.
    pub(crate) fn nonempty_match_starts(&self, text: &[char]) -> Vec<bool> {
        let reversed_text: Vec<char> = text.iter().rev().copied().collect();
        let mut starts = self
            .reversed()
            .simulate(&reversed_text, Starts::Everywhere)
            .nonempty;
        starts.reverse();
        starts
    }

    /// The pattern read backwards: it matches exactly the reversals of what `self` matches.
    /// Only shell patterns reverse token by token; every token of theirs is one character or
    /// a run of them.
    pub(crate) fn reversed(&self) -> Glob {
        debug_assert!(!self.stops_at_slash, "only shell patterns are reversed");
        Glob {
            tokens: self.tokens.iter().rev().cloned().collect(),
            stops_at_slash: self.stops_at_slash,
        }
    }

    /// The most characters a match can have: `None` if a wildcard run makes it unbounded.
    pub(crate) fn max_len(&self) -> Option<usize> {
        self.tokens
            .iter()
            .all(|t| matches!(t, Token::Literal(_) | Token::AnyChar | Token::Class { .. }))
            .then_some(self.tokens.len())
    }

    /// How many steps a run over `text_len` characters takes: the unit of work limits.
    pub(crate) fn work(&self, text_len: usize) -> usize {
        (text_len + 1).saturating_mul(self.tokens.len() + 1)
    }

    fn single_char_ok(&self, c: char) -> bool {
        !(self.stops_at_slash && c == '/')
    }

    /// Runs the pattern over `text` as sets of positions: after each token, where in the
    /// text a match may have got to. Sets instead of backtracking keep the cost at tokens x
    /// text even for patterns like `*a*a*a*b` (backtracking is exponential).
    ///
    /// Matches are tracked in two sets, those that consumed characters and those still empty,
    /// so callers can ask for non-empty matches. `starts` says where matches may begin.
    fn simulate(&self, text: &[char], starts: Starts) -> Run {
        let n = text.len();
        let mut nonempty = vec![false; n + 1];
        let mut empty = match starts {
            Starts::AtZero => {
                let mut at_zero = vec![false; n + 1];
                at_zero[0] = true;
                at_zero
            }
            Starts::Everywhere => vec![true; n + 1],
        };
        let mut reached_end = empty[n];
        for token in &self.tokens {
            let mut next_nonempty = vec![false; n + 1];
            let at = |s: usize| nonempty[s] || empty[s];
            match token {
                Token::Literal(_) | Token::AnyChar | Token::Class { .. } => {
                    for s in (0..n).filter(|&s| at(s)) {
                        next_nonempty[s + 1] = self.single_char_matches(token, text[s]);
                    }
                    empty.fill(false);
                }
                Token::AnyRun => {
                    // Whether a match from before `s` can run on to `s`.
                    let mut running = false;
                    for s in 0..=n {
                        next_nonempty[s] = nonempty[s] || running;
                        running = (running || at(s)) && s < n && self.single_char_ok(text[s]);
                    }
                }
                Token::AnyDirs => {
                    let mut running = false;
                    for s in 0..=n {
                        next_nonempty[s] |= nonempty[s];
                        running |= at(s);
                        if running && s < n && text[s] == '/' {
                            next_nonempty[s + 1] = true;
                        }
                    }
                }
                Token::AnyRest => {
                    if let Some(first) = (0..=n).find(|&s| at(s)) {
                        next_nonempty[first + 1..].fill(true);
                        next_nonempty[first] = nonempty[first];
                    }
                }
            }
            nonempty = next_nonempty;
            reached_end |= nonempty[n] || empty[n];
            if !nonempty.contains(&true) && !empty.contains(&true) {
                break;
            }
        }
        Run {
            nonempty,
            empty,
            reached_end,
        }
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

/// Why a bracket expression is not one, and the index of the character where that showed.
struct ClassFailure {
    message: String,
    at: usize,
}

/// Parses a bracket expression whose `[` was just consumed; `start` indexes the first character
/// after it. Returns the class token and the index after the closing `]`.
fn parse_class(chars: &[char], start: usize, escape: char) -> Result<(Token, usize), ClassFailure> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('^') | Some('!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let read_char = |i: &mut usize| -> Result<char, ClassFailure> {
        let unterminated = |at: usize| ClassFailure {
            message: "unterminated '[' in pattern".to_string(),
            at,
        };
        match chars.get(*i) {
            None => Err(unterminated(*i)),
            Some(&c) if c == escape => {
                *i += 1;
                let escaped = chars.get(*i).copied().ok_or_else(|| unterminated(*i))?;
                *i += 1;
                Ok(escaped)
            }
            Some(&c) if c == '-' || c == ']' => Err(ClassFailure {
                message: format!("unexpected '{c}' in '[...]'"),
                at: *i,
            }),
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

    /// A `[` that opens no class used to rescan the rest of the pattern for its `]`, so a
    /// pattern of 100k `[` took time quadratic in its length.
    #[test]
    fn unclosed_brackets_parse_in_linear_time() {
        let started = std::time::Instant::now();
        for tail in ["", "-", "a-", "\\"] {
            let pattern = format!("{}{tail}", "[".repeat(100_000));
            let glob = Glob::shell(&pattern, '\\');
            assert_eq!(glob.tokens.len(), pattern.chars().count());
            assert!(glob.tokens.iter().all(|t| matches!(t, Token::Literal(_))));
        }
        let closed = Glob::shell(&format!("{}]", "[".repeat(100_000)), '\\');
        assert!(closed.matches("["), "one class holding `[`");
        assert!(
            Glob::shell("[[]x", '\\').matches("[x"),
            "a class can hold `[`"
        );
        assert!(
            Glob::shell("[-[a]", '\\').matches("[-a"),
            "a later `[` still opens one"
        );
        // The quadratic code took minutes here; the bound leaves room for a loaded machine.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn reversed_patterns_and_match_starts() {
        let g = Glob::shell("a*b?", '\\');
        assert!(g.reversed().matches("xb__a"));
        let text: Vec<char> = "xab_abc".chars().collect();
        assert_eq!(
            g.nonempty_match_starts(&text),
            [false, true, false, false, true, false, false, false]
        );
        // An empty match is not a start.
        let text: Vec<char> = "ab".chars().collect();
        assert_eq!(
            Glob::shell("*", '\\').nonempty_match_starts(&text),
            [true, true, false]
        );
        assert_eq!(Glob::shell("a*b?", '\\').max_len(), None);
        assert_eq!(Glob::shell("a[bc]?", '\\').max_len(), Some(3));
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
