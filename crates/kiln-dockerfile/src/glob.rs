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
        self.match_from(0, &chars, 0, false)
    }

    /// Whether some string that starts with `prefix` could match.
    pub(crate) fn could_match_below(&self, prefix: &str) -> bool {
        let chars: Vec<char> = prefix.chars().collect();
        self.match_from(0, &chars, 0, true)
    }

    fn single_char_ok(&self, c: char) -> bool {
        !(self.stops_at_slash && c == '/')
    }

    /// Backtracking matcher. With `open_end`, running out of text counts as a match because
    /// the caller asks about longer strings that start with `text`.
    fn match_from(&self, t: usize, text: &[char], s: usize, open_end: bool) -> bool {
        if open_end && s == text.len() {
            return true;
        }
        let Some(token) = self.tokens.get(t) else {
            return s == text.len();
        };
        match token {
            Token::Literal(c) => {
                s < text.len() && text[s] == *c && self.match_from(t + 1, text, s + 1, open_end)
            }
            Token::AnyChar => {
                s < text.len()
                    && self.single_char_ok(text[s])
                    && self.match_from(t + 1, text, s + 1, open_end)
            }
            Token::Class { negated, ranges } => {
                s < text.len()
                    && self.single_char_ok(text[s])
                    && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&text[s])) != *negated
                    && self.match_from(t + 1, text, s + 1, open_end)
            }
            Token::AnyRun => {
                for k in s..=text.len() {
                    if self.match_from(t + 1, text, k, open_end) {
                        return true;
                    }
                    if k < text.len() && !self.single_char_ok(text[k]) {
                        break;
                    }
                }
                false
            }
            Token::AnyDirs => {
                self.match_from(t + 1, text, s, open_end)
                    || (s..text.len())
                        .filter(|&k| text[k] == '/')
                        .any(|k| self.match_from(t + 1, text, k + 1, open_end))
            }
            Token::AnyRest => true,
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
