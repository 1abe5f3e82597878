//! Word expansion with BuildKit's shell-lexer rules (`shell.Lex.ProcessWord(s)`).
//!
//! This is not a shell: there is no command substitution, arithmetic or globbing of file
//! names. It removes quotes, honours the escape character and expands variables.
//!
//! Words come from untrusted Dockerfiles, so expansion is bounded. The lexer keeps its own
//! stack of what it is inside (no recursion: nesting costs heap, not call stack), and
//! `${...}` nests at most [`MAX_NESTING`] deep; what a word holds while it is expanded
//! exceeds its own length by at most [`MAX_WORD_BYTES`]; one pattern operation takes at most
//! [`MAX_MATCH_WORK`] steps. BuildKit has none of these limits; they are far above what a
//! real Dockerfile needs.

use crate::error::ExpandError;
use crate::glob::Glob;

/// How deeply `${...}` may nest in one word. Real Dockerfiles nest two or three levels; each
/// level costs two frames (72 bytes each, plus the text they hold) on the lexer's own stack.
pub const MAX_NESTING: usize = 1000;

/// How much a word may grow while it is expanded: its text so far plus what every open
/// `${...}` holds may exceed the word as written by this much (a COPY heredoc, expanded as
/// one word, may itself be large). 1 MiB is eight times what Linux lets one environment
/// string be (`MAX_ARG_STRLEN`, 128 KiB), so no value a RUN step could receive is refused.
pub const MAX_WORD_BYTES: usize = 1 << 20;

/// The most steps one `${v#pat}`, `${v%pat}` or `${v/pat/rep}` may take: a step is one
/// character of the value against one token of the pattern. 64 Mi steps is a 1 MiB value
/// against a 63-character pattern, and takes tens of milliseconds.
pub const MAX_MATCH_WORK: usize = 1 << 26;

/// Expands `word` into one string: quotes removed, escapes applied, variables substituted.
/// Unset variables expand to the empty string.
pub fn expand(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    Lexer::new(word, lookup, escape)
        .run(false)
        .map(|(text, _)| text)
}

/// Like [`expand`], then splits the result into words on whitespace that was neither quoted
/// nor escaped. Whitespace produced by a variable's value does split, as in BuildKit.
pub fn expand_words(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    Lexer::new(text, lookup, escape)
        .run(true)
        .map(|(_, words)| words)
}

/// Removes quotes and escapes from `word` without expanding anything, keeping `$name` as
/// written. Returns the bare word and whether quoting characters were present.
pub(crate) fn unquote_literal(word: &str) -> Result<(String, bool), ExpandError> {
    let lookup = |_: &str| None;
    let mut lexer = Lexer::new(word, &lookup, '\\');
    lexer.keep_unset = true;
    let (bare, _) = lexer.run(false)?;
    let quote_count = |s: &str| s.chars().filter(|c| matches!(c, '\'' | '"')).count();
    let mut raw_lexer = Lexer::new(word, &lookup, '\\');
    raw_lexer.keep_unset = true;
    raw_lexer.raw_quotes = true;
    let (with_quotes, _) = raw_lexer.run(false)?;
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
    /// Leave unset variables as written instead of expanding them to "".
    keep_unset: bool,
    /// How many `${...}` are open.
    depth: usize,
    /// Bytes of every string the lexer holds now: the text of each open frame and the
    /// words its `${...}` have read. Kept under `limit`.
    held: usize,
    /// The word's length plus [`MAX_WORD_BYTES`].
    limit: usize,
}

/// What the lexer is inside, innermost last.
enum Frame {
    /// Text up to `stop` (consumed). The outermost frame reads to the end of the word.
    Text {
        stop: Option<char>,
        /// Keep escape characters (in patterns, where they still matter).
        raw_escapes: bool,
        text: String,
    },
    /// Inside double quotes.
    Quoted { raw_escapes: bool, text: String },
    /// `${name<op>...}` reading its words; `raw_escapes` is that of its surroundings.
    Braced {
        at: usize,
        name: String,
        op: Op,
        raw_escapes: bool,
        words: Vec<String>,
    },
}

/// The operator of a `${name<op>word}`.
#[derive(Clone, Copy)]
enum Op {
    /// `?`: the value, or an error with the word as message.
    Required,
    /// `+` or `-`: the word if the variable is set (`+`) or unset (`-`).
    Unset(char),
    /// `:` and a modifier: like the above, an empty value counting as unset.
    Colon(char),
    /// `#`, `##`, `%`, `%%`: the value without a matching prefix or suffix.
    Trim { suffix: bool, longest: bool },
    /// `/` or `//`: the value with the first or every match of a pattern replaced.
    Substitute { all: bool },
}

/// What reading at the top frame led to.
enum Step {
    Continue,
    /// Open a frame on top.
    Open(Frame),
    /// Open a `${...}` and the frame that reads its first word.
    OpenBraced(Frame, Frame),
    /// The top frame is complete.
    Close,
    /// The end of the word, in the outermost frame.
    End,
}

/// What a `$` at the current position is.
enum Dollar {
    /// Expanded already (held).
    Value(String),
    /// A `${...}` with words to read.
    Open(Frame, Frame),
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
            keep_unset: false,
            depth: 0,
            held: 0,
            limit: text.len().saturating_add(MAX_WORD_BYTES),
        }
    }

    /// Expands the whole word; with `split`, also into whitespace-separated words.
    fn run(&mut self, split: bool) -> Result<(String, Vec<String>), ExpandError> {
        let mut words = split.then(Words::default);
        let mut stack = vec![Frame::Text {
            stop: None,
            raw_escapes: false,
            text: String::new(),
        }];
        loop {
            // Only the outermost frame's text is split into words.
            let outermost = stack.len() == 1;
            let step = match stack.last_mut() {
                Some(Frame::Text {
                    stop,
                    raw_escapes,
                    text,
                }) => {
                    let words = words.as_mut().filter(|_| outermost);
                    self.text_step(*stop, *raw_escapes, text, words)
                }
                Some(Frame::Quoted { raw_escapes, text }) => self.quoted_step(*raw_escapes, text),
                // A `${...}` always has the frame reading its word above it.
                Some(Frame::Braced { .. }) | None => Ok(Step::End),
            };
            let step = step.map_err(|e| self.at_end(&stack, e))?;
            match step {
                Step::Continue => {}
                Step::Open(frame) => stack.push(frame),
                Step::OpenBraced(braced, word) => {
                    self.depth += 1;
                    stack.push(braced);
                    stack.push(word);
                }
                Step::Close => {
                    self.close(&mut stack, words.as_mut())
                        .map_err(|e| self.at_end(&stack, e))?;
                }
                Step::End => {
                    let text = match stack.pop() {
                        Some(Frame::Text { text, .. }) => text,
                        _ => String::new(),
                    };
                    return Ok((text, words.map(Words::into_words).unwrap_or_default()));
                }
            }
        }
    }

    /// An error at the end of the word inside `${...}` means its closing brace (or the `/`
    /// after a pattern) is missing; BuildKit reports that, for the outermost open `${...}`.
    fn at_end(&self, stack: &[Frame], error: ExpandError) -> ExpandError {
        if error.is_limit() || self.peek().is_some() {
            return error;
        }
        let outermost = stack.iter().find_map(|frame| match frame {
            Frame::Braced { op, words, .. } => Some((*op, words.len())),
            _ => None,
        });
        match outermost {
            Some((Op::Substitute { .. }, 0)) => {
                ExpandError::new("syntax error: missing '/' in ${}")
            }
            Some(_) => missing_brace(),
            None => error,
        }
    }

    /// Closes the top frame and hands its text to the frame below.
    fn close(
        &mut self,
        stack: &mut Vec<Frame>,
        words: Option<&mut Words>,
    ) -> Result<(), ExpandError> {
        match stack.pop() {
            Some(Frame::Text { text, .. }) => {
                // Only a `${...}` word has a stop, so a `${...}` is below.
                let Some(Frame::Braced {
                    op,
                    raw_escapes,
                    words: braced_words,
                    ..
                }) = stack.last_mut()
                else {
                    return Ok(());
                };
                braced_words.push(text);
                if let (Op::Substitute { .. }, 1) = (*op, braced_words.len()) {
                    // The pattern is read; the replacement follows.
                    let replacement = Frame::Text {
                        stop: Some('}'),
                        raw_escapes: *raw_escapes,
                        text: String::new(),
                    };
                    stack.push(replacement);
                    return Ok(());
                }
                let Some(Frame::Braced {
                    at,
                    name,
                    op,
                    words: braced_words,
                    ..
                }) = stack.pop()
                else {
                    return Ok(());
                };
                self.depth -= 1;
                let value = self.apply(at, &name, op, braced_words)?;
                let outermost = stack.len() == 1;
                match stack.last_mut() {
                    Some(Frame::Text { text, .. }) => {
                        if let Some(words) = words.filter(|_| outermost) {
                            words.push_splitting(&value);
                        }
                        text.push_str(&value);
                    }
                    Some(Frame::Quoted { text, .. }) => text.push_str(&value),
                    _ => {}
                }
            }
            Some(Frame::Quoted { mut text, .. }) => {
                if self.raw_quotes {
                    self.push_char(&mut text, '"', self.pos)?;
                }
                // Double quotes only open in text.
                let outermost = stack.len() == 1;
                if let Some(Frame::Text { text: outer, .. }) = stack.last_mut() {
                    if let Some(words) = words.filter(|_| outermost) {
                        words.push_literal(&text);
                    }
                    outer.push_str(&text);
                }
            }
            Some(Frame::Braced { .. }) | None => {}
        }
        Ok(())
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

    /// Counts `bytes` more as held; `at` is the character offset to blame if that is too
    /// much.
    fn hold(&mut self, bytes: usize, at: usize) -> Result<(), ExpandError> {
        self.held += bytes;
        if self.held > self.limit {
            return Err(word_too_large(at));
        }
        Ok(())
    }

    /// Holds a string made here (not from held parts).
    fn hold_new(&mut self, text: String, at: usize) -> Result<String, ExpandError> {
        self.hold(text.len(), at)?;
        Ok(text)
    }

    /// Stops counting held strings that are no longer needed.
    fn discard(&mut self, parts: &[&str]) {
        for part in parts {
            self.held -= part.len();
        }
    }

    /// Keeps one held string as the result and discards the other.
    fn choose(&mut self, kept: String, dropped: &str) -> String {
        self.discard(&[dropped]);
        kept
    }

    /// Appends a character of the word itself.
    fn push_char(&mut self, out: &mut String, c: char, at: usize) -> Result<(), ExpandError> {
        self.hold(c.len_utf8(), at)?;
        out.push(c);
        Ok(())
    }

    /// Reads at the current position in a text frame.
    fn text_step(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        text: &mut String,
        words: Option<&mut Words>,
    ) -> Result<Step, ExpandError> {
        let Some(c) = self.peek() else {
            return match stop {
                Some(stop) => Err(unexpected_end(stop)),
                None => Ok(Step::End),
            };
        };
        if Some(c) == stop {
            self.bump();
            return Ok(Step::Close);
        }
        let at = self.pos;
        match c {
            '$' => match self.dollar(raw_escapes)? {
                Dollar::Value(value) => {
                    if let Some(words) = words {
                        words.push_splitting(&value);
                    }
                    text.push_str(&value);
                }
                Dollar::Open(braced, word) => return Ok(Step::OpenBraced(braced, word)),
            },
            '\'' => {
                let value = self.single_quoted()?;
                if let Some(words) = words {
                    words.push_literal(&value);
                }
                text.push_str(&value);
            }
            '"' => {
                self.bump();
                let mut quoted = String::new();
                if self.raw_quotes {
                    self.push_char(&mut quoted, '"', at)?;
                }
                return Ok(Step::Open(Frame::Quoted {
                    raw_escapes,
                    text: quoted,
                }));
            }
            _ => {
                self.bump();
                let start = text.len();
                if c == self.escape {
                    if raw_escapes {
                        self.push_char(text, c, at)?;
                    }
                    // An escape at the very end is dropped.
                    let Some(escaped) = self.bump() else {
                        return Ok(Step::Continue);
                    };
                    self.push_char(text, escaped, at)?;
                    if let Some(words) = words {
                        words.push_literal(&text[start..]);
                    }
                } else {
                    self.push_char(text, c, at)?;
                    if let Some(words) = words {
                        words.push_splitting(&text[start..]);
                    }
                }
            }
        }
        Ok(Step::Continue)
    }

    /// Reads at the current position inside double quotes.
    fn quoted_step(&mut self, raw_escapes: bool, text: &mut String) -> Result<Step, ExpandError> {
        let at = self.pos;
        match self.peek() {
            None => Err(ExpandError::new(
                "unexpected end of statement while looking for matching double-quote",
            )),
            Some('"') => {
                self.bump();
                Ok(Step::Close)
            }
            Some('$') => match self.dollar(raw_escapes)? {
                Dollar::Value(value) => {
                    text.push_str(&value);
                    Ok(Step::Continue)
                }
                Dollar::Open(braced, word) => Ok(Step::OpenBraced(braced, word)),
            },
            Some(c) => {
                self.bump();
                if c != self.escape {
                    self.push_char(text, c, at)?;
                    return Ok(Step::Continue);
                }
                // Inside double quotes only `"`, `$` and the escape itself can be escaped;
                // any other escape character stays as written.
                match self.peek() {
                    Some(next) if next == '"' || next == '$' || next == self.escape => {
                        self.bump();
                        if raw_escapes {
                            self.push_char(text, c, at)?;
                        }
                        self.push_char(text, next, at)?;
                    }
                    Some(_) => self.push_char(text, c, at)?,
                    None => {}
                }
                Ok(Step::Continue)
            }
        }
    }

    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        let at = self.pos;
        self.bump();
        let mut out = String::new();
        if self.raw_quotes {
            self.push_char(&mut out, '\'', at)?;
        }
        loop {
            match self.bump() {
                None => {
                    return Err(ExpandError::new(
                        "unexpected end of statement while looking for matching single-quote",
                    ));
                }
                Some('\'') => break,
                Some(c) => self.push_char(&mut out, c, at)?,
            }
        }
        if self.raw_quotes {
            self.push_char(&mut out, '\'', at)?;
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

    /// The variable's value, held. Looked up once the words of its `${...}` are read, so
    /// open frames never hold copies of values.
    fn value_of(&mut self, name: &str, at: usize) -> Result<Option<String>, ExpandError> {
        let value = (self.lookup)(name);
        if let Some(value) = &value {
            self.hold(value.len(), at)?;
        }
        Ok(value)
    }

    /// A plain variable, held; unset ones are empty unless kept as written.
    fn plain(&mut self, name: &str, written: &[&str], at: usize) -> Result<String, ExpandError> {
        match self.value_of(name, at)? {
            Some(value) => Ok(value),
            None if self.keep_unset => self.hold_new(written.concat(), at),
            None => Ok(String::new()),
        }
    }

    /// Reads the `$...` at the current position: a plain variable is expanded at once; for
    /// `${name<op>word}` the frames that read its words are returned. `raw_escapes` is that
    /// of the surroundings.
    fn dollar(&mut self, raw_escapes: bool) -> Result<Dollar, ExpandError> {
        let at = self.pos;
        self.bump();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok(Dollar::Value(self.hold_new("$".to_string(), at)?));
            }
            return Ok(Dollar::Value(self.plain(&name, &["$", &name], at)?));
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
        // What the first word ends at and whether it keeps escapes.
        let (op, stop, word_raw_escapes) = match op {
            '}' => return Ok(Dollar::Value(self.plain(&name, &["${", &name, "}"], at)?)),
            '?' => (Op::Required, '}', raw_escapes),
            '+' | '-' => (Op::Unset(op), '}', raw_escapes),
            ':' => {
                let Some(modifier) = self.bump() else {
                    return Err(missing_brace());
                };
                (Op::Colon(modifier), '}', raw_escapes)
            }
            '#' | '%' => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.bump();
                }
                let suffix = op == '%';
                (Op::Trim { suffix, longest }, '}', true)
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.bump();
                }
                (Op::Substitute { all }, '/', true)
            }
            other => return Err(unsupported_modifier(other)),
        };
        if self.depth >= MAX_NESTING {
            return Err(nested_too_deep(at));
        }
        let braced = Frame::Braced {
            at,
            name,
            op,
            raw_escapes,
            words: Vec::new(),
        };
        let word = Frame::Text {
            stop: Some(stop),
            raw_escapes: word_raw_escapes,
            text: String::new(),
        };
        Ok(Dollar::Open(braced, word))
    }

    /// The value of a `${...}` whose words are read (held, as they were; they are released).
    fn apply(
        &mut self,
        at: usize,
        name: &str,
        op: Op,
        words: Vec<String>,
    ) -> Result<String, ExpandError> {
        let mut words = words.into_iter();
        let word = words.next().unwrap_or_default();
        let written = |op: &str, word: &str| ["${", name, op, word, "}"].concat();
        match op {
            Op::Required => {
                let value = self.value_of(name, at)?;
                self.discard(&[&word]);
                match value {
                    Some(value) => Ok(value),
                    None if self.keep_unset => self.hold_new(written("?", &word), at),
                    None => Err(unset_error(name, &word)),
                }
            }
            Op::Unset(op) => {
                let value = self.value_of(name, at)?;
                if value.is_none() && self.keep_unset {
                    self.discard(&[&word]);
                    return self.hold_new(written(&op.to_string(), &word), at);
                }
                Ok(match (op, value) {
                    ('+', Some(value)) => self.choose(word, &value),
                    ('+', None) => self.choose(String::new(), &word),
                    (_, Some(value)) => self.choose(value, &word),
                    (_, None) => word,
                })
            }
            Op::Colon(modifier) => {
                let value = self.value_of(name, at)?;
                if value.is_none() && self.keep_unset {
                    self.discard(&[&word]);
                    return self.hold_new(written(&format!(":{modifier}"), &word), at);
                }
                let value = value.unwrap_or_default();
                match modifier {
                    '+' if value.is_empty() => Ok(self.choose(value, &word)),
                    '+' => Ok(self.choose(word, &value)),
                    '-' if value.is_empty() => Ok(self.choose(word, &value)),
                    '-' => Ok(self.choose(value, &word)),
                    '?' if value.is_empty() => Err(unset_error(name, &word)),
                    '?' => Ok(self.choose(value, &word)),
                    other => Err(unsupported_modifier(other)),
                }
            }
            Op::Trim { suffix, longest } => {
                let pattern = Glob::shell(&word, self.escape);
                let value = self.value_of(name, at)?.unwrap_or_default();
                let chars: Vec<char> = value.chars().collect();
                check_work(&pattern, chars.len(), at)?;
                let trimmed = if suffix {
                    trim_suffix(&chars, &pattern, longest)
                } else {
                    trim_prefix(&chars, &pattern, longest)
                };
                self.discard(&[&value, &word]);
                self.hold_new(trimmed, at)
            }
            Op::Substitute { all } => {
                let replacement = words.next().unwrap_or_default();
                let pattern = Glob::shell(&word, self.escape);
                let value = self.value_of(name, at)?.unwrap_or_default();
                let chars: Vec<char> = value.chars().collect();
                check_work(&pattern, chars.len(), at)?;
                self.discard(&[&value, &word, &replacement]);
                let room = self.limit - self.held;
                let replaced = replace(&chars, &pattern, &replacement, all, room)
                    .ok_or_else(|| word_too_large(at))?;
                self.hold_new(replaced, at)
            }
        }
    }
}

fn word_too_large(at: usize) -> ExpandError {
    ExpandError::limit(
        at,
        format!(
            "the word grows by more than {} MiB while it is expanded (the limit for one word)",
            MAX_WORD_BYTES >> 20
        ),
    )
}

fn unexpected_end(stop: char) -> ExpandError {
    ExpandError::new(format!(
        "unexpected end of statement while looking for matching {stop}"
    ))
}

fn nested_too_deep(at: usize) -> ExpandError {
    ExpandError::limit(
        at,
        format!("${{...}} nests more than {MAX_NESTING} levels deep"),
    )
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

/// Refuses a pattern operation that would take more than [`MAX_MATCH_WORK`] steps. Each
/// operation runs the pattern over the value a bounded number of times, so its time is
/// linear in the value's length times the pattern's.
fn check_work(pattern: &Glob, value_len: usize, at: usize) -> Result<(), ExpandError> {
    if pattern.work(value_len) > MAX_MATCH_WORK {
        return Err(ExpandError::limit(
            at,
            format!(
                "pattern matching here would take more than {} Mi steps (a {value_len}-character \
                 value against a pattern that long takes {} Mi; the limit is the value's length \
                 times the pattern's)",
                MAX_MATCH_WORK >> 20,
                pattern.work(value_len) >> 20
            ),
        ));
    }
    Ok(())
}

fn trim_prefix(chars: &[char], pattern: &Glob, longest: bool) -> String {
    let ends = pattern.prefix_matches(chars);
    let mut cuts = 0..=chars.len();
    let cut = if longest {
        cuts.rfind(|&k| ends[k])
    } else {
        cuts.find(|&k| ends[k])
    };
    chars[cut.unwrap_or(0)..].iter().collect()
}

/// Suffix removal is prefix removal on the reversed value with the reversed pattern, as
/// BuildKit does it.
fn trim_suffix(chars: &[char], pattern: &Glob, longest: bool) -> String {
    let reversed: Vec<char> = chars.iter().rev().copied().collect();
    let kept = trim_prefix(&reversed, &pattern.reversed(), longest);
    kept.chars().rev().collect()
}

/// Replaces the leftmost (or every) non-empty, longest match of `pattern` in `chars`. Returns
/// `None` if the result would be longer than `room` bytes.
///
/// Which positions start a match comes from one run over the text. From such a start, the
/// longest match is searched for only as far as a match can reach: its fixed length for a
/// pattern without `*`, else the end of the text; a pattern with `*` replaces at most once,
/// because the first match's `*` can stretch over any later match.
fn replace(
    chars: &[char],
    pattern: &Glob,
    replacement: &str,
    all: bool,
    room: usize,
) -> Option<String> {
    let n = chars.len();
    let starts = pattern.nonempty_match_starts(chars);
    let mut out = String::new();
    let mut copied_to = 0;
    let mut i = 0;
    while i < n {
        if !starts[i] {
            i += 1;
            continue;
        }
        let reach = pattern.max_len().map_or(n, |len| (i + len).min(n));
        let ends = pattern.prefix_matches(&chars[i..reach]);
        let Some(end) = (i + 1..=reach).rfind(|&end| ends[end - i]) else {
            // `starts` promised a match here.
            i += 1;
            continue;
        };
        out.extend(&chars[copied_to..i]);
        out.push_str(replacement);
        if out.len() > room {
            return None;
        }
        copied_to = end;
        if !all {
            break;
        }
        i = end;
    }
    out.extend(&chars[copied_to..]);
    (out.len() <= room).then_some(out)
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

    /// `${v//*z/r}` on 100k characters took 25 s: every start position ran the pattern over
    /// the rest of the value. Now each operation runs it a fixed number of times.
    #[test]
    fn pattern_operations_on_100k_characters_are_linear() {
        let value = "a".repeat(100_000);
        let with_z = format!("{value}z{value}");
        let vars = [("V", value.as_str()), ("Z", with_z.as_str())];
        let started = std::time::Instant::now();
        assert_eq!(ok("${V//*z/r}", &vars), value);
        assert_eq!(ok("${Z//*z/r}", &vars), format!("r{value}"));
        assert_eq!(ok("${Z/a*z/r}", &vars), format!("r{value}"));
        assert_eq!(ok("${V//a/b}", &vars), "b".repeat(100_000));
        assert_eq!(ok("${V//?a/b}", &vars), "b".repeat(50_000));
        assert_eq!(ok("${Z%%z*}", &vars), value);
        assert_eq!(ok("${Z%z*}", &vars), value);
        assert_eq!(ok("${Z#*z}", &vars), value);
        assert_eq!(ok("${V%*z}", &vars), value);
        assert_eq!(ok("${V%%*a}", &vars), "");
        assert_eq!(ok("${V%a}", &vars).len(), 99_999);
        // The quadratic code took minutes here; the bound leaves room for a loaded machine.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    /// Trimming and replacing agree with a brute-force search that tests every cut or
    /// substring with a whole-text match.
    #[test]
    fn pattern_operations_agree_with_brute_force() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let pattern_chars = ['a', 'b', '/', '*', '?', '*', '[', ']', '!', '\\'];
        let value_chars = ['a', 'b', '/', '*', '['];
        for _ in 0..20_000 {
            let pattern: String = (0..random(6))
                .map(|_| pattern_chars[random(pattern_chars.len())])
                .collect();
            let value: String = (0..random(10))
                .map(|_| value_chars[random(value_chars.len())])
                .collect();
            let glob = Glob::shell(&pattern, '\\');
            let chars: Vec<char> = value.chars().collect();
            let n = chars.len();
            let text = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
            let prefix_cuts: Vec<usize> = (0..=n).filter(|&k| glob.matches(&text(0, k))).collect();
            let suffix_cuts: Vec<usize> = (0..=n).filter(|&k| glob.matches(&text(k, n))).collect();
            for longest in [false, true] {
                let prefix_cut = if longest {
                    prefix_cuts.last()
                } else {
                    prefix_cuts.first()
                };
                let suffix_cut = if longest {
                    suffix_cuts.first()
                } else {
                    suffix_cuts.last()
                };
                let context = format!("pattern {pattern:?} value {value:?} longest {longest}");
                assert_eq!(
                    trim_prefix(&chars, &glob, longest),
                    text(*prefix_cut.unwrap_or(&0), n),
                    "{context}"
                );
                assert_eq!(
                    trim_suffix(&chars, &glob, longest),
                    text(0, *suffix_cut.unwrap_or(&n)),
                    "{context}"
                );
            }
            for all in [false, true] {
                let mut expected = String::new();
                let mut i = 0;
                let mut replaced_once = false;
                while i < n {
                    let end = (i + 1..=n)
                        .rev()
                        .find(|&end| glob.matches(&text(i, end)))
                        .filter(|_| all || !replaced_once);
                    match end {
                        Some(end) => {
                            expected.push('R');
                            replaced_once = true;
                            i = end;
                        }
                        None => {
                            expected.push(chars[i]);
                            i += 1;
                        }
                    }
                }
                assert_eq!(
                    replace(&chars, &glob, "R", all, usize::MAX).unwrap(),
                    expected,
                    "pattern {pattern:?} value {value:?} all {all}"
                );
            }
        }
    }

    #[test]
    fn nesting_is_limited_and_reported_at_its_dollar() {
        let nested = |levels: usize| format!("{}x{}", "${a:-".repeat(levels), "}".repeat(levels));
        assert_eq!(ok(&nested(MAX_NESTING), &[]), "x");
        let err = ex(&nested(MAX_NESTING + 1), &[]).unwrap_err();
        assert!(err.is_limit());
        assert_eq!(err.offset, Some(MAX_NESTING * "${a:-".len()));
        assert!(err.message.contains("nests more than 1000 levels"), "{err}");
    }

    /// The lexer keeps its own stack: nesting far past the limit, on a thread with a small
    /// stack, ends in the limit's error (before, 3,000 levels overflowed the stack).
    #[test]
    fn deep_nesting_needs_no_call_stack() {
        let word = format!("{}x{}", "${a:-\"".repeat(100_000), "\"}".repeat(100_000));
        let result = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || expand(&word, &|_| None, '\\'))
            .unwrap()
            .join()
            .unwrap();
        assert!(result.unwrap_err().is_limit());
    }

    /// The error of a word that must fail, without echoing a huge result if it does not.
    fn limit_error(word: &str, vars: &[(&str, &str)]) -> ExpandError {
        match ex(word, vars) {
            Ok(text) => panic!("{word:?} expanded to {} bytes", text.len()),
            Err(e) => {
                assert!(e.is_limit(), "{e}");
                e
            }
        }
    }

    #[test]
    fn word_size_is_limited_including_what_open_levels_hold() {
        let big = "v".repeat(MAX_WORD_BYTES / 2 + 100);
        let vars = [("BIG", big.as_str()), ("W", "0123456789")];
        assert_eq!(ok("$BIG", &vars).len(), big.len());
        let err = limit_error("a$BIG$BIG", &vars);
        assert_eq!(err.offset, Some(5), "the second $BIG");
        assert!(err.message.contains("1 MiB"), "{err}");
        // Each open level holds its text while the next is read.
        limit_error("${U:-${BIG}${U:-${BIG}x}}", &vars);
        // A replacement that multiplies the value stops at the limit, not at 10 x 1 MiB.
        assert_eq!(limit_error("${BIG//?/$W}", &vars).offset, Some(0));
        // What the word itself holds does not count against the growth.
        let written = format!("{big}{big}$W");
        assert_eq!(ok(&written, &vars).len(), written.len() - 2 + 10);
    }

    #[test]
    fn pattern_work_is_limited() {
        let value = "a".repeat(600 << 10);
        let vars = [("V", value.as_str())];
        let pattern = "?".repeat(120);
        let err = limit_error(&format!("x${{V/{pattern}/}}"), &vars);
        assert_eq!(err.offset, Some(1));
        assert!(err.message.contains("64 Mi steps"), "{err}");
        let half = "a".repeat(300 << 10);
        let vars = [("V", half.as_str())];
        assert_eq!(
            ok(&format!("${{V#{pattern}}}"), &vars).len(),
            half.len() - 120
        );
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
