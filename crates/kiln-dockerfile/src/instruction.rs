//! The syntax tree: one [`Instruction`] per Dockerfile instruction.

use crate::flags::{CopyFlags, FromFlags, RunFlags, TypedFlags};
use crate::lines::Layout;

/// Where an instruction is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// 1-based line of the keyword.
    pub start_line: usize,
    /// 1-based last line, including continuation lines and heredoc bodies.
    pub end_line: usize,
    /// 1-based column of the keyword.
    pub column: usize,
}

/// A `--name=value` or bare `--name` flag after the keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The name without the leading `--`.
    pub name: String,
    /// The value with quotes removed but not expanded; `None` for a bare boolean flag.
    pub value: Option<String>,
    /// 1-based column of the `--`.
    pub column: usize,
}

/// A here-document attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF` for `<<'EOF'`).
    pub name: String,
    /// The body: every line up to the delimiter, each with its `\n`. For `<<-` the leading
    /// tabs are already stripped.
    pub content: String,
    /// False when the delimiter was quoted: the body must not be expanded.
    pub expand: bool,
    /// True for `<<-`.
    pub strip_tabs: bool,
}

/// Arguments of RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellOrExec {
    /// Shell form: the raw text, to be run by the stage's shell.
    Shell(String),
    /// Exec form: a JSON array of strings, run without a shell.
    Exec(Vec<String>),
}

/// One instruction with its arguments. Words are raw: quotes kept and variables unexpanded,
/// unless noted; expansion happens when the build knows the variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    From {
        image: String,
        name: Option<String>,
    },
    Run(ShellOrExec),
    Cmd(ShellOrExec),
    Entrypoint(ShellOrExec),
    Copy {
        sources: Vec<String>,
        dest: String,
    },
    Add {
        sources: Vec<String>,
        dest: String,
    },
    Env(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Workdir(String),
    User(String),
    Volume(Vec<String>),
    StopSignal(String),
    Shell(Vec<String>),
    /// `None` is `HEALTHCHECK NONE`.
    Healthcheck(Option<ShellOrExec>),
    Onbuild(Box<Instruction>),
    Maintainer(String),
    /// A keyword BuildKit's parser takes and its builder refuses: only in the syntax-only
    /// parse (`kiln dockerfile parse --json`), which a full parse makes an error.
    Unknown {
        keyword: String,
        args: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub command: Command,
    /// The flags as written, in order (for tools: the JSON form, the lint rules).
    pub flags: Vec<Flag>,
    /// The flags of FROM, RUN, COPY and ADD, typed when parsed (see the accessors).
    pub typed_flags: TypedFlags,
    pub heredocs: Vec<Heredoc>,
    pub span: Span,
    /// The instruction as written, continuation lines joined (for image history).
    pub text: String,
    /// Where the parts of `text` are in the file.
    pub(crate) layout: Layout,
    /// `span` as parsed: positions in `text` mean nothing once `span` points elsewhere (an
    /// ONBUILD trigger is reported at the FROM that ran it).
    pub(crate) parsed_span: Span,
}

impl Command {
    pub fn keyword(&self) -> &str {
        match self {
            Command::From { .. } => "FROM",
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Copy { .. } => "COPY",
            Command::Add { .. } => "ADD",
            Command::Env(_) => "ENV",
            Command::Arg(_) => "ARG",
            Command::Label(_) => "LABEL",
            Command::Expose(_) => "EXPOSE",
            Command::Workdir(_) => "WORKDIR",
            Command::User(_) => "USER",
            Command::Volume(_) => "VOLUME",
            Command::StopSignal(_) => "STOPSIGNAL",
            Command::Shell(_) => "SHELL",
            Command::Healthcheck(_) => "HEALTHCHECK",
            Command::Onbuild(_) => "ONBUILD",
            Command::Maintainer(_) => "MAINTAINER",
            Command::Unknown { keyword, .. } => keyword,
        }
    }
}

impl Instruction {
    /// The uppercase keyword, e.g. `"RUN"`.
    pub fn keyword(&self) -> &str {
        self.command.keyword()
    }

    /// FROM's flags; `None` for another instruction.
    pub fn from_flags(&self) -> Option<&FromFlags> {
        match &self.typed_flags {
            TypedFlags::From(flags) => Some(flags),
            _ => None,
        }
    }

    /// RUN's flags; `None` for another instruction.
    pub fn run_flags(&self) -> Option<&RunFlags> {
        match &self.typed_flags {
            TypedFlags::Run(flags) => Some(flags),
            _ => None,
        }
    }

    /// COPY's or ADD's flags; `None` for another instruction.
    pub fn copy_flags(&self) -> Option<&CopyFlags> {
        match &self.typed_flags {
            TypedFlags::Copy(flags) => Some(flags),
            _ => None,
        }
    }

    /// The first flag with this name (without `--`).
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// The (line, column) in the file of byte `offset` of [`Instruction::text`], unless the
    /// instruction was moved (its `span` changed since parsing).
    pub fn position(&self, offset: usize) -> Option<(usize, usize)> {
        (self.span == self.parsed_span).then(|| self.layout.locate(&self.text, offset))
    }

    /// The (line, column) of character `chars_in` of `word`, the first place after the
    /// keyword where [`Instruction::text`] holds `word` as written.
    pub fn word_position(&self, word: &str, chars_in: usize) -> Option<(usize, usize)> {
        let after_keyword = self.raw_keyword().len();
        let start = after_keyword + self.text[after_keyword..].find(word)?;
        let within = word
            .char_indices()
            .nth(chars_in)
            .map_or(word.len(), |(i, _)| i);
        self.position(start + within)
    }

    /// The (line, column) of the first `--name` flag.
    pub fn flag_position(&self, name: &str) -> Option<(usize, usize)> {
        self.word_position(&format!("--{name}"), 0)
    }

    /// The keyword as written (`from`, `Run`, ...): [`Instruction::text`] starts with it.
    pub(crate) fn raw_keyword(&self) -> &str {
        let end = self
            .text
            .find(char::is_whitespace)
            .unwrap_or(self.text.len());
        &self.text[..end]
    }

    /// The arguments as written, after the keyword and its flags.
    pub(crate) fn raw_args(&self) -> &str {
        let after_keyword = &self.text[self.raw_keyword().len()..];
        let (_, args_offset) = crate::flags::extract(after_keyword);
        after_keyword[args_offset..].trim()
    }
}
