//! Word expansion with BuildKit's shell-lexer rules (`shell.Lex.ProcessWord(s)`).
//!
//! This is not a shell: there is no command substitution, arithmetic or globbing of file
//! names. It removes quotes, honours the escape character and expands variables.

use crate::error::ExpandError;
use crate::glob::Glob;

/// Expands `word` into one string: quotes removed, escapes applied, variables substituted.
/// Unset variables expand to the empty string.
pub fn expand(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    Lexer::new(word, lookup, escape).run().map(|(text, _)| text)
}

/// Like [`expand`], then splits the result into words on whitespace that was neither quoted
/// nor escaped. Whitespace produced by a variable's value does split, as in BuildKit.
pub fn expand_words(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    Lexer::new(text, lookup, escape)
        .run()
        .map(|(_, words)| words)
}

/// Removes quotes and escapes from `word` without expanding anything, keeping `$name` as
/// written. Returns the bare word and whether quoting characters were present.
pub(crate) fn unquote_literal(word: &str) -> Result<(String, bool), ExpandError> {
    let lookup = |_: &str| None;
    let mut lexer = Lexer::new(word, &lookup, '\\');
    lexer.keep_unset = true;
    let (bare, _) = lexer.run()?;
    let quote_count = |s: &str| s.chars().filter(|c| matches!(c, '\'' | '"')).count();
    let mut raw_lexer = Lexer::new(word, &lookup, '\\');
    raw_lexer.keep_unset = true;
    raw_lexer.raw_quotes = true;
    let (with_quotes, _) = raw_lexer.run()?;
    Ok((
        bare.clone(),
        quote_count(&bare) != quote_count(&with_quotes),
    ))
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    escape: char,
    /// Keep quote characters in the output (used to detect quoting).
    raw_quotes: bool,
    /// Keep escape characters in the output (used for patterns, where they still matter).
    raw_escapes: bool,
    /// Leave unset variables as written instead of expanding them to "".
    keep_unset: bool,
}

/// Collects words: expanded text splits on whitespace, quoted or escaped text does not.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    current: String,
}

impl Words {
    fn push_splitting(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_whitespace() {
                self.finish_word();
            } else {
                self.current.push(c);
            }
        }
    }

    fn push_literal(&mut self, text: &str) {
        self.current.push_str(text);
    }

    fn finish_word(&mut self) {
        if !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    fn into_words(mut self) -> Vec<String> {
        self.finish_word();
        self.done
    }
}

fn is_special_parameter(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

impl<'a> Lexer<'a> {
    fn new(text: &str, lookup: &'a dyn Fn(&str) -> Option<String>, escape: char) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            lookup,
            escape,
            raw_quotes: false,
            raw_escapes: false,
            keep_unset: false,
        }
    }

    fn run(&mut self) -> Result<(String, Vec<String>), ExpandError> {
        self.process_until(None)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes text up to `stop` (consumed) or the end. Reaching the end while looking for
    /// `stop` is an error.
    fn process_until(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ExpandError> {
        let mut text = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.bump();
                return Ok((text, words.into_words()));
            }
            match c {
                '$' => {
                    let value = self.dollar()?;
                    words.push_splitting(&value);
                    text.push_str(&value);
                }
                '\'' => {
                    let value = self.single_quoted()?;
                    words.push_literal(&value);
                    text.push_str(&value);
                }
                '"' => {
                    let value = self.double_quoted()?;
                    words.push_literal(&value);
                    text.push_str(&value);
                }
                _ => {
                    self.bump();
                    let mut literal = String::new();
                    if c == self.escape {
                        if self.raw_escapes {
                            literal.push(c);
                        }
                        // An escape at the very end is dropped.
                        let Some(escaped) = self.bump() else { break };
                        literal.push(escaped);
                        words.push_literal(&literal);
                    } else {
                        literal.push(c);
                        words.push_splitting(&literal);
                    }
                    text.push_str(&literal);
                }
            }
        }
        match stop {
            Some(stop) => Err(ExpandError::new(format!(
                "unexpected end of statement while looking for matching {stop}"
            ))),
            None => Ok((text, words.into_words())),
        }
    }

    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        self.bump();
        let mut out = String::new();
        if self.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.bump() {
                None => {
                    return Err(ExpandError::new(
                        "unexpected end of statement while looking for matching single-quote",
                    ));
                }
                Some('\'') => break,
                Some(c) => out.push(c),
            }
        }
        if self.raw_quotes {
            out.push('\'');
        }
        Ok(out)
    }

    fn double_quoted(&mut self) -> Result<String, ExpandError> {
        self.bump();
        let mut out = String::new();
        if self.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(ExpandError::new(
                        "unexpected end of statement while looking for matching double-quote",
                    ));
                }
                Some('"') => {
                    self.bump();
                    break;
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.bump();
                    if c != self.escape {
                        out.push(c);
                        continue;
                    }
                    // Inside double quotes only `"`, `$` and the escape itself can be escaped;
                    // any other escape character stays as written.
                    match self.peek() {
                        Some(next) if next == '"' || next == '$' || next == self.escape => {
                            self.bump();
                            if self.raw_escapes {
                                out.push(c);
                            }
                            out.push(next);
                        }
                        Some(_) => out.push(c),
                        None => {}
                    }
                }
            }
        }
        if self.raw_quotes {
            out.push('"');
        }
        Ok(out)
    }

    /// A variable name after `$`: letters, digits and `_`; or a run of digits; or one
    /// special parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(d) = self.peek().filter(|d| d.is_ascii_digit()) {
                    name.push(d);
                    self.bump();
                }
                return name;
            }
            Some(c) if is_special_parameter(c) => {
                self.bump();
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            name.push(c);
            self.bump();
        }
        name
    }

    fn value_of(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// The word inside `${name<op>word}` up to the closing brace.
    fn braced_word(&mut self, keep_escapes: bool) -> Result<String, ExpandError> {
        let saved = self.raw_escapes;
        self.raw_escapes = saved || keep_escapes;
        let result = self.process_until(Some('}'));
        self.raw_escapes = saved;
        match result {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(missing_brace()),
            Err(e) => Err(e),
        }
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        self.bump();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.value_of(&name) {
                Some(value) => value,
                None if self.keep_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.bump();
        match self.peek() {
            None => return Err(missing_brace()),
            Some('{') | Some('}') | Some(':') => {
                return Err(ExpandError::new("syntax error: bad substitution"));
            }
            Some(_) => {}
        }
        let name = self.name();
        let Some(op) = self.bump() else {
            return Err(missing_brace());
        };
        let value = self.value_of(&name);
        match op {
            '}' => Ok(match value {
                Some(value) => value,
                None if self.keep_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            '?' => {
                let message = self.braced_word(false)?;
                match value {
                    Some(value) => Ok(value),
                    None if self.keep_unset => Ok(format!("${{{name}?{message}}}")),
                    None => Err(unset_error(&name, &message)),
                }
            }
            '+' | '-' => {
                let word = self.braced_word(false)?;
                if value.is_none() && self.keep_unset {
                    return Ok(format!("${{{name}{op}{word}}}"));
                }
                Ok(match (op, value) {
                    ('+', Some(_)) => word,
                    ('+', None) => String::new(),
                    (_, Some(value)) => value,
                    (_, None) => word,
                })
            }
            ':' => {
                let Some(modifier) = self.bump() else {
                    return Err(missing_brace());
                };
                let word = self.braced_word(false)?;
                if value.is_none() && self.keep_unset {
                    return Ok(format!("${{{name}:{modifier}{word}}}"));
                }
                let value = value.unwrap_or_default();
                match modifier {
                    '+' if value.is_empty() => Ok(String::new()),
                    '+' => Ok(word),
                    '-' if value.is_empty() => Ok(word),
                    '-' => Ok(value),
                    '?' if value.is_empty() => Err(unset_error(&name, &word)),
                    '?' => Ok(value),
                    other => Err(unsupported_modifier(other)),
                }
            }
            '#' | '%' => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.bump();
                }
                let pattern = Glob::shell(&self.braced_word(true)?, self.escape);
                let value = value.unwrap_or_default();
                Ok(if op == '#' {
                    trim_prefix(&value, &pattern, longest)
                } else {
                    trim_suffix(&value, &pattern, longest)
                })
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.bump();
                }
                let saved = self.raw_escapes;
                self.raw_escapes = true;
                let pattern = self.process_until(Some('/'));
                self.raw_escapes = saved;
                let pattern = match pattern {
                    Ok((pattern, _)) => pattern,
                    Err(_) if self.peek().is_none() => {
                        return Err(ExpandError::new("syntax error: missing '/' in ${}"));
                    }
                    Err(e) => return Err(e),
                };
                let replacement = self.braced_word(false)?;
                let value = value.unwrap_or_default();
                Ok(replace(
                    &value,
                    &Glob::shell(&pattern, self.escape),
                    &replacement,
                    all,
                ))
            }
            other => Err(unsupported_modifier(other)),
        }
    }
}

fn missing_brace() -> ExpandError {
    ExpandError::new("syntax error: missing '}'")
}

fn unsupported_modifier(modifier: char) -> ExpandError {
    ExpandError::new(format!("unsupported modifier ({modifier}) in substitution"))
}

fn unset_error(name: &str, message: &str) -> ExpandError {
    let message = if message.is_empty() {
        "is not allowed to be unset"
    } else {
        message
    };
    ExpandError::new(format!("{name}: {message}"))
}

fn trim_prefix(value: &str, pattern: &Glob, longest: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let ends = pattern.prefix_matches(&chars);
    let mut cuts = 0..=chars.len();
    let cut = if longest {
        cuts.rfind(|&k| ends[k])
    } else {
        cuts.find(|&k| ends[k])
    };
    cut.map_or_else(|| value.to_string(), |k| chars[k..].iter().collect())
}

fn trim_suffix(value: &str, pattern: &Glob, longest: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    let suffix_matches = |k: &usize| pattern.prefix_matches(&chars[*k..])[n - *k];
    let mut cuts = 0..=n;
    let cut = if longest {
        cuts.find(suffix_matches)
    } else {
        cuts.rfind(suffix_matches)
    };
    cut.map_or_else(|| value.to_string(), |k| chars[..k].iter().collect())
}

/// Replaces the leftmost (or every) non-empty, longest match of `pattern` in `value`.
fn replace(value: &str, pattern: &Glob, replacement: &str, all: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut copied_to = 0;
    let mut i = 0;
    while i < chars.len() {
        let ends = pattern.prefix_matches(&chars[i..]);
        match (i + 1..=chars.len()).rfind(|&end| ends[end - i]) {
            Some(end) => {
                out.extend(&chars[copied_to..i]);
                out.push_str(replacement);
                copied_to = end;
                if !all {
                    break;
                }
                i = end;
            }
            None => i += 1,
        }
    }
    out.extend(&chars[copied_to..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ex(word: &str, vars: &[(&str, &str)]) -> Result<String, ExpandError> {
        let env = env(vars);
        expand(word, &|k| env.get(k).cloned(), '\\')
    }

    fn ok(word: &str, vars: &[(&str, &str)]) -> String {
        ex(word, vars).unwrap_or_else(|e| panic!("expanding {word:?}: {e}"))
    }

    #[test]
    fn plain_and_braced_variables() {
        let vars = [("A", "one"), ("B_2", "two")];
        assert_eq!(ok("$A-${B_2}", &vars), "one-two");
        assert_eq!(ok("x${A}y", &vars), "xoney");
        assert_eq!(ok("$Ay", &vars), "", "the name runs while letters continue");
        assert_eq!(ok("$UNSET/x", &vars), "/x");
        assert_eq!(ok("cost: $", &vars), "cost: $");
        assert_eq!(ok("$1x", &[("1", "first")]), "firstx");
    }

    #[test]
    fn default_and_alternative_modifiers_distinguish_unset_and_empty() {
        let vars = [("SET", "v"), ("EMPTY", "")];
        assert_eq!(ok("${SET:-d}", &vars), "v");
        assert_eq!(ok("${EMPTY:-d}", &vars), "d");
        assert_eq!(ok("${UNSET:-d}", &vars), "d");
        assert_eq!(ok("${EMPTY-d}", &vars), "");
        assert_eq!(ok("${UNSET-d}", &vars), "d");
        assert_eq!(ok("${SET:+alt}", &vars), "alt");
        assert_eq!(ok("${EMPTY:+alt}", &vars), "");
        assert_eq!(ok("${EMPTY+alt}", &vars), "alt");
        assert_eq!(ok("${UNSET+alt}", &vars), "");
    }

    #[test]
    fn nested_default_expands_inner_variable() {
        assert_eq!(ok("${a:-${b}}", &[("b", "inner")]), "inner");
        assert_eq!(ok("${a:-${b:-deep}/x}", &[]), "deep/x");
        assert_eq!(ok("${a:-${b}}", &[("a", "outer"), ("b", "inner")]), "outer");
    }

    #[test]
    fn required_variables_report_name_and_message() {
        let err = ex("${FOO:?must be set}", &[]).unwrap_err();
        assert_eq!(err.message, "FOO: must be set");
        let err = ex("${FOO:?}", &[("FOO", "")]).unwrap_err();
        assert_eq!(err.message, "FOO: is not allowed to be unset");
        assert_eq!(ok("${FOO?msg}", &[("FOO", "")]), "");
        assert_eq!(ex("${FOO?msg}", &[]).unwrap_err().message, "FOO: msg");
        assert_eq!(ok("${FOO:?x}", &[("FOO", "ok")]), "ok");
    }

    #[test]
    fn prefix_and_suffix_removal_with_globs() {
        let vars = [("P", "path/to/file.tar.gz")];
        assert_eq!(ok("${P#*/}", &vars), "to/file.tar.gz");
        assert_eq!(ok("${P##*/}", &vars), "file.tar.gz");
        assert_eq!(ok("${P%.*}", &vars), "path/to/file.tar");
        assert_eq!(ok("${P%%.*}", &vars), "path/to/file");
        assert_eq!(ok("${P#nomatch}", &vars), "path/to/file.tar.gz");
        assert_eq!(ok("${P%?.gz}", &vars), "path/to/file.ta");
        assert_eq!(ok("${UNSET#x}", &vars), "");
    }

    #[test]
    fn replacement_first_and_all() {
        let vars = [("V", "a-b-c")];
        assert_eq!(ok("${V/-/_}", &vars), "a_b-c");
        assert_eq!(ok("${V//-/_}", &vars), "a_b_c");
        assert_eq!(ok("${V//?-/X}", &vars), "XXc");
        assert_eq!(ok("${V/b*/Z}", &vars), "a-Z");
        assert_eq!(ok("${V//x/y}", &vars), "a-b-c");
        assert_eq!(
            ex("${V/-}", &vars).unwrap_err().message,
            "syntax error: missing '/' in ${}"
        );
    }

    /// Found by fuzzing: replacement used to test every substring from scratch, cubic in
    /// the value's length.
    #[test]
    fn replacement_in_long_values_is_fast() {
        let value = "xab".repeat(1000);
        let started = std::time::Instant::now();
        let replaced = ok("${V//x/y}", &[("V", &value)]);
        assert_eq!(replaced, "yab".repeat(1000));
        assert_eq!(ok("${V%%b*}", &[("V", &value)]), "xa");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn escapes_and_quotes() {
        let vars = [("X", "val")];
        assert_eq!(ok("\\$X", &vars), "$X");
        assert_eq!(ok("'$X'", &vars), "$X");
        assert_eq!(ok("\"$X\"", &vars), "val");
        assert_eq!(ok("\"a \\\"q\\\" \\$X \\n\"", &vars), "a \"q\" $X \\n");
        assert_eq!(ok("a\\ b", &vars), "a b");
        assert_eq!(ok("'it''s'", &vars), "its");
    }

    #[test]
    fn backtick_escape_character() {
        let env = env(&[("X", "val")]);
        let lookup = |k: &str| env.get(k).cloned();
        assert_eq!(expand("`$X", &lookup, '`').unwrap(), "$X");
        assert_eq!(expand("C:\\dir\\$X", &lookup, '`').unwrap(), "C:\\dir\\val");
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            ex("${X", &[]).unwrap_err().message,
            "syntax error: missing '}'"
        );
        assert_eq!(
            ex("${}", &[]).unwrap_err().message,
            "syntax error: bad substitution"
        );
        assert_eq!(
            ex("${X:=y}", &[]).unwrap_err().message,
            "unsupported modifier (=) in substitution"
        );
        assert_eq!(
            ex("'open", &[]).unwrap_err().message,
            "unexpected end of statement while looking for matching single-quote"
        );
        assert_eq!(
            ex("\"open", &[]).unwrap_err().message,
            "unexpected end of statement while looking for matching double-quote"
        );
    }

    #[test]
    fn words_split_on_unquoted_whitespace_and_expanded_values() {
        let env = env(&[("PORTS", "80/tcp  443"), ("EMPTY", "")]);
        let lookup = |k: &str| env.get(k).cloned();
        assert_eq!(
            expand_words("8080 $PORTS \"a b\" c\\ d $EMPTY ''", &lookup, '\\').unwrap(),
            vec!["8080", "80/tcp", "443", "a b", "c d"]
        );
        assert_eq!(
            expand_words("\"$PORTS\"", &lookup, '\\').unwrap(),
            vec!["80/tcp  443"]
        );
    }

    #[test]
    fn unquote_literal_reports_quoting_and_keeps_variables() {
        assert_eq!(unquote_literal("EOF").unwrap(), ("EOF".to_string(), false));
        assert_eq!(unquote_literal("'EOF'").unwrap(), ("EOF".to_string(), true));
        assert_eq!(
            unquote_literal("\"EOF\"").unwrap(),
            ("EOF".to_string(), true)
        );
        assert_eq!(unquote_literal("$X").unwrap(), ("$X".to_string(), false));
    }
}
