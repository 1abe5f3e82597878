//! Logical lines to instructions, following BuildKit's parser and instruction rules.

use crate::Dockerfile;
use crate::directives;
use crate::error::ParseError;
use crate::flags;
use crate::heredoc;
use crate::instruction::{Command, Flag, Heredoc, Instruction, ShellOrExec, Span};
use crate::lines::{LogicalLine, Source};
use crate::suggest;
use crate::words::{JsonArgs, parse_json_args, split_quoted, split_whitespace};

const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Parses a Dockerfile. `path` is only used in error messages.
pub fn parse(path: &str, source: &str) -> Result<Dockerfile, ParseError> {
    parse_as(path, source, false)
}

/// Parses a Dockerfile as BuildKit's parser does, for tools (`kiln dockerfile parse`): the
/// syntax only. Flags an instruction does not take are kept as written (not typed), and
/// instructions may come before the first FROM; a build refuses both.
pub fn parse_syntax(path: &str, source: &str) -> Result<Dockerfile, ParseError> {
    parse_as(path, source, true)
}

fn parse_as(path: &str, source: &str, syntax_only: bool) -> Result<Dockerfile, ParseError> {
    let mut parser = Parser {
        path,
        source: Source::new(source),
        escape: '\\',
        syntax_only,
    };
    let (directives, _) = directives::read(parser.source.lines())
        .map_err(|e| parser.error_at(e.line_index + 1, e.column, e.message, None))?;
    parser.escape = directives.escape;
    parser.source.set_escape(directives.escape);

    let mut instructions = Vec::new();
    while let Some(line) = parser.source.next_logical() {
        instructions.push(parser.instruction(&line)?);
    }
    if instructions.is_empty() {
        return Err(parser.error_at(
            1,
            1,
            "file with no instructions".to_string(),
            Some("a Dockerfile needs at least a FROM instruction".to_string()),
        ));
    }
    if !syntax_only {
        parser.check_from_comes_first(&instructions)?;
    }
    Ok(Dockerfile {
        path: path.to_string(),
        directives,
        instructions,
    })
}

struct Parser<'s> {
    path: &'s str,
    source: Source<'s>,
    escape: char,
    /// [`parse_syntax`]: no checks of flags or of what comes before FROM.
    syntax_only: bool,
}

/// Where the parts of the instruction being parsed are, as offsets in its logical line.
struct At<'l> {
    line: &'l LogicalLine,
    keyword: usize,
    args: usize,
}

impl Parser<'_> {
    fn error_at(
        &self,
        line: usize,
        column: usize,
        message: String,
        hint: Option<String>,
    ) -> ParseError {
        ParseError {
            path: self.path.to_string(),
            line,
            column,
            message,
            source_line: self.source.line(line).to_string(),
            hint,
        }
    }

    fn error_at_offset(
        &self,
        line: &LogicalLine,
        offset: usize,
        message: String,
        hint: Option<String>,
    ) -> ParseError {
        let (line, column) = line.locate(offset);
        self.error_at(line, column, message, hint)
    }

    /// An error about the instruction as a whole: points at the keyword.
    fn keyword_error(&self, at: &At, message: String, hint: Option<&str>) -> ParseError {
        self.error_at_offset(at.line, at.keyword, message, hint.map(str::to_string))
    }

    /// An error about the arguments: points at their start.
    fn args_error(&self, at: &At, message: String, hint: Option<&str>) -> ParseError {
        self.error_at_offset(at.line, at.args, message, hint.map(str::to_string))
    }

    /// Parses one logical line and then reads the bodies of its heredocs, if any.
    fn instruction(&mut self, line: &LogicalLine) -> Result<Instruction, ParseError> {
        let (mut instruction, args_offset) = self.instruction_at(line, 0)?;
        let args = &line.text[args_offset..];
        let may_have_heredocs = matches!(
            instruction.command,
            Command::Run(ShellOrExec::Shell(_)) | Command::Copy { .. } | Command::Add { .. }
        ) && args.contains("<<")
            && !matches!(parse_json_args(args), JsonArgs::Strings(_));
        if may_have_heredocs {
            for marker in heredoc::markers(args) {
                let body = self.heredoc_body(&marker.name, marker.strip_tabs);
                let Some((content, last_line)) = body else {
                    let offset = args_offset + args.find(&marker.raw).unwrap_or(0);
                    return Err(self.error_at_offset(
                        line,
                        offset,
                        format!("unterminated heredoc {}", marker.name),
                        Some(format!(
                            "end the here-document with a line containing only {}",
                            marker.name
                        )),
                    ));
                };
                instruction.span.end_line = last_line;
                instruction.parsed_span = instruction.span;
                instruction.heredocs.push(Heredoc {
                    name: marker.name,
                    content,
                    expand: marker.expand,
                    strip_tabs: marker.strip_tabs,
                });
            }
        }
        Ok(instruction)
    }

    /// Reads lines up to the delimiter. Returns the body and the delimiter's line number, or
    /// `None` at the end of the file.
    fn heredoc_body(&mut self, delimiter: &str, strip_tabs: bool) -> Option<(String, usize)> {
        let mut content = String::new();
        while let Some((number, raw)) = self.source.next_raw() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let line = if strip_tabs {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if line == delimiter {
                return Some((content, number));
            }
            content.push_str(if strip_tabs {
                raw.trim_start_matches('\t')
            } else {
                raw
            });
            content.push('\n');
        }
        None
    }

    /// Parses the instruction that starts at byte `start` of `line` (0, or after ONBUILD).
    /// Returns it and the offset of its arguments.
    fn instruction_at(
        &self,
        line: &LogicalLine,
        start: usize,
    ) -> Result<(Instruction, usize), ParseError> {
        let text = &line.text[start..];
        let keyword_offset = start + (text.len() - text.trim_start().len());
        let rest = &line.text[keyword_offset..];
        let word = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
        let known = KEYWORDS.iter().find(|k| k.eq_ignore_ascii_case(word));
        // BuildKit's parser takes any keyword (its builder refuses the unknown ones), so the
        // syntax-only parse does too.
        let keyword = match known {
            Some(keyword) => keyword,
            None if self.syntax_only => "",
            None => {
                let hint = suggest::closest(word, &KEYWORDS).map(|k| format!("did you mean {k}?"));
                return Err(self.error_at_offset(
                    line,
                    keyword_offset,
                    format!("unknown instruction: {word}"),
                    hint,
                ));
            }
        };
        let flags_offset = keyword_offset + word.len();
        let (raw_flags, args_relative) = flags::extract(&line.text[flags_offset..]);
        let typed_flags = match self.syntax_only {
            true if known.is_none() => crate::TypedFlags::default(),
            // The flags the keyword takes, typed if their values allow; all stay as written.
            true => {
                let known: Vec<flags::RawFlag> = raw_flags
                    .iter()
                    .filter(|f| flags::is_known(keyword, &f.name))
                    .cloned()
                    .collect();
                flags::typed(keyword, &known, flags_offset - keyword_offset).unwrap_or_default()
            }
            false => flags::validate(keyword, &raw_flags)
                .and_then(|()| flags::typed(keyword, &raw_flags, flags_offset - keyword_offset))
                .map_err(|problem| {
                    let offset = flags_offset + raw_flags[problem.index].offset;
                    self.error_at_offset(line, offset, problem.message, problem.hint)
                })?,
        };
        let flags = raw_flags
            .into_iter()
            .map(|f| Flag {
                column: line.locate(flags_offset + f.offset).1,
                name: f.name,
                value: f.value,
            })
            .collect();
        let at = At {
            line,
            keyword: keyword_offset,
            args: flags_offset + args_relative,
        };
        let args = line.text[at.args..].trim_end();
        let command = match known {
            Some(_) => self.command(keyword, args, &at)?,
            None => Command::Unknown {
                keyword: word.to_ascii_uppercase(),
                args: args.to_string(),
            },
        };
        let (_, column) = line.locate(keyword_offset);
        let span = Span {
            start_line: line.start_line,
            end_line: line.end_line,
            column,
        };
        let instruction = Instruction {
            command,
            flags,
            typed_flags,
            heredocs: Vec::new(),
            span,
            text: line.text[keyword_offset..].trim_end().to_string(),
            layout: line.layout.from(&line.text, keyword_offset),
            parsed_span: span,
        };
        Ok((instruction, at.args))
    }

    fn command(&self, keyword: &str, args: &str, at: &At) -> Result<Command, ParseError> {
        if args.is_empty() {
            return Err(match keyword {
                "FROM" => self.keyword_error(
                    at,
                    "FROM requires an image name".to_string(),
                    Some("for example: FROM alpine:3.20 AS build"),
                ),
                _ => self.keyword_error(
                    at,
                    format!("{keyword} requires at least one argument"),
                    None,
                ),
            });
        }
        Ok(match keyword {
            "FROM" => self.from(args, at)?,
            "RUN" => Command::Run(self.shell_or_exec(args, at)?),
            "CMD" => Command::Cmd(self.shell_or_exec(args, at)?),
            "ENTRYPOINT" => Command::Entrypoint(self.shell_or_exec(args, at)?),
            "COPY" | "ADD" => {
                let mut words = self.list(args, at)?;
                if words.len() < 2 {
                    return Err(self.keyword_error(
                        at,
                        format!(
                            "{keyword} requires at least two arguments: one or more sources and a destination"
                        ),
                        Some("for example: COPY src/ /app/src/"),
                    ));
                }
                let dest = words.pop().unwrap_or_default();
                if keyword == "COPY" {
                    Command::Copy {
                        sources: words,
                        dest,
                    }
                } else {
                    Command::Add {
                        sources: words,
                        dest,
                    }
                }
            }
            "ENV" => Command::Env(self.name_values(keyword, args, at)?),
            "LABEL" => Command::Label(self.name_values(keyword, args, at)?),
            "ARG" => Command::Arg(self.args(args, at)?),
            "EXPOSE" => Command::Expose(split_whitespace(args)),
            "WORKDIR" => Command::Workdir(args.to_string()),
            "USER" => Command::User(args.to_string()),
            "STOPSIGNAL" => Command::StopSignal(args.to_string()),
            "MAINTAINER" => Command::Maintainer(args.to_string()),
            "VOLUME" => {
                let volumes = self.list(args, at)?;
                if volumes.is_empty() {
                    return Err(self.args_error(
                        at,
                        "VOLUME requires at least one path".to_string(),
                        None,
                    ));
                }
                Command::Volume(volumes)
            }
            "SHELL" => match parse_json_args(args) {
                JsonArgs::Strings(words) if !words.is_empty() => Command::Shell(words),
                JsonArgs::Strings(_) => {
                    return Err(self.args_error(
                        at,
                        "SHELL requires at least one argument".to_string(),
                        None,
                    ));
                }
                _ => {
                    return Err(self.args_error(
                        at,
                        "SHELL requires the arguments to be in JSON form".to_string(),
                        Some(r#"for example: SHELL ["/bin/bash", "-eo", "pipefail", "-c"]"#),
                    ));
                }
            },
            "HEALTHCHECK" => self.healthcheck(args, at)?,
            "ONBUILD" => self.onbuild(args, at)?,
            other => unreachable!("keyword {other} is in KEYWORDS but has no parser"),
        })
    }

    fn not_strings_error(&self, at: &At) -> ParseError {
        self.args_error(
            at,
            "when using JSON array syntax, arrays must be comprised of strings only".to_string(),
            None,
        )
    }

    /// JSON array of strings: exec form; anything else: shell form.
    fn shell_or_exec(&self, args: &str, at: &At) -> Result<ShellOrExec, ParseError> {
        match parse_json_args(args) {
            JsonArgs::Strings(words) => Ok(ShellOrExec::Exec(words)),
            JsonArgs::NotJson => Ok(ShellOrExec::Shell(args.to_string())),
            JsonArgs::NotStrings => Err(self.not_strings_error(at)),
        }
    }

    /// JSON array of strings, or else whitespace-separated raw words.
    fn list(&self, args: &str, at: &At) -> Result<Vec<String>, ParseError> {
        match parse_json_args(args) {
            JsonArgs::Strings(words) => Ok(words),
            JsonArgs::NotJson => Ok(split_whitespace(args)),
            JsonArgs::NotStrings => Err(self.not_strings_error(at)),
        }
    }

    fn from(&self, args: &str, at: &At) -> Result<Command, ParseError> {
        let words = split_whitespace(args);
        match words.as_slice() {
            [image] => Ok(Command::From {
                image: image.clone(),
                name: None,
            }),
            [image, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
                let name = name.to_ascii_lowercase();
                let mut chars = name.chars();
                let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                    && chars
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
                if !valid {
                    return Err(self.args_error(
                        at,
                        format!(
                            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                        ),
                        None,
                    ));
                }
                Ok(Command::From {
                    image: image.clone(),
                    name: Some(name),
                })
            }
            _ => Err(self.args_error(
                at,
                "FROM requires either one or three arguments".to_string(),
                Some("FROM <image> [AS <name>]"),
            )),
        }
    }

    /// ENV and LABEL: `k=v k2=v2 ...`, or the legacy `k value with spaces`.
    fn name_values(
        &self,
        keyword: &str,
        args: &str,
        at: &At,
    ) -> Result<Vec<(String, String)>, ParseError> {
        let words = split_quoted(args, self.escape);
        if !words.first().is_some_and(|w| w.contains('=')) {
            let (name, value) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
            let value = value.trim_start();
            if value.is_empty() {
                return Err(self.args_error(
                    at,
                    format!("{keyword} must have two arguments"),
                    Some(&format!("write it as {keyword} {name}=value")),
                ));
            }
            return Ok(vec![(name.to_string(), value.to_string())]);
        }
        words
            .iter()
            .map(|word| {
                let Some((name, value)) = word.split_once('=') else {
                    return Err(self.args_error(
                        at,
                        format!(
                            "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
                        ),
                        None,
                    ));
                };
                if name.is_empty() {
                    return Err(self.args_error(
                        at,
                        format!("{keyword} names can not be blank"),
                        None,
                    ));
                }
                Ok((name.to_string(), value.to_string()))
            })
            .collect()
    }

    /// ARG: `name` or `name=default`, several per line.
    fn args(&self, args: &str, at: &At) -> Result<Vec<(String, Option<String>)>, ParseError> {
        split_quoted(args, self.escape)
            .into_iter()
            .map(|word| {
                let (name, default) = match word.split_once('=') {
                    Some((name, default)) => (name.to_string(), Some(default.to_string())),
                    None => (word.clone(), None),
                };
                let mut chars = name.chars();
                let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if !valid {
                    return Err(self.args_error(
                        at,
                        format!("invalid ARG name {name:?}"),
                        Some("ARG names start with a letter or '_' and contain letters, digits, '_', '-' or '.'"),
                    ));
                }
                Ok((name, default))
            })
            .collect()
    }

    fn healthcheck(&self, args: &str, at: &At) -> Result<Command, ParseError> {
        let (kind, rest) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        let rest = rest.trim_start();
        match kind.to_ascii_uppercase().as_str() {
            "NONE" if rest.is_empty() => Ok(Command::Healthcheck(None)),
            "NONE" => {
                Err(self.args_error(at, "HEALTHCHECK NONE takes no arguments".to_string(), None))
            }
            "CMD" if rest.is_empty() => Err(self.args_error(
                at,
                "Missing command after HEALTHCHECK CMD".to_string(),
                None,
            )),
            "CMD" => Ok(Command::Healthcheck(Some(self.shell_or_exec(rest, at)?))),
            _ => Err(self.args_error(
                at,
                format!("unknown type {kind:?} in HEALTHCHECK"),
                Some("use HEALTHCHECK [OPTIONS] CMD <command> or HEALTHCHECK NONE"),
            )),
        }
    }

    fn onbuild(&self, args: &str, at: &At) -> Result<Command, ParseError> {
        let trigger = args
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match trigger.as_str() {
            "ONBUILD" => Err(self.args_error(
                at,
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string(),
                None,
            )),
            "FROM" | "MAINTAINER" => Err(self.args_error(
                at,
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
                None,
            )),
            _ => {
                let (nested, _) = self.instruction_at(at.line, at.args)?;
                Ok(Command::Onbuild(Box::new(nested)))
            }
        }
    }

    /// Only ARG may come before the first FROM.
    fn check_from_comes_first(&self, instructions: &[Instruction]) -> Result<(), ParseError> {
        for instruction in instructions {
            match instruction.command {
                Command::From { .. } => return Ok(()),
                Command::Arg(_) => {}
                _ => {
                    let line = instruction.span.start_line;
                    return Err(self.error_at(
                        line,
                        instruction.span.column,
                        format!(
                            "no FROM instruction before {} at line {line}",
                            instruction.keyword()
                        ),
                        Some("only ARG may come before the first FROM".to_string()),
                    ));
                }
            }
        }
        Ok(())
    }
}
