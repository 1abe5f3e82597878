//! The Dockerfile frontend: parser directives, instructions, heredocs, BuildKit-compatible
//! word expansion and `.dockerignore` matching.
//!
//! Nothing here touches a filesystem or a registry: the parser turns text into
//! [`Instruction`]s with spans, and the build lowers them into a plan later. Arguments stay
//! raw (quotes kept, variables unexpanded) because their meaning depends on build args and
//! the stage's environment; [`expand`] and [`expand_words`] apply BuildKit's rules then.

pub mod check;
mod directives;
mod error;
mod expand;
mod flags;
mod glob;
mod heredoc;
mod ignore;
mod instruction;
mod json;
mod lines;
mod mount;
mod parser;
mod stage;
mod suggest;
mod words;

pub use check::{Finding, Level, check};
pub use directives::Directives;
pub use error::{ExpandError, IgnoreError, ParseError};
pub use expand::{MAX_MATCH_WORK, MAX_NESTING, MAX_WORD_BYTES, expand, expand_words};
pub use flags::{CopyFlags, FlagValue, FromFlags, MountFlag, RunFlags, TypedFlags};
pub use glob::glob_match;
pub use ignore::IgnoreMatcher;
pub use instruction::{Command, Flag, Heredoc, Instruction, ShellOrExec, Span};
pub use json::{instruction_json, to_json};
pub use mount::{Mount, MountSpec, MountType, Sharing, parse_size};
pub use parser::{parse, parse_syntax};
pub use stage::Stage;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The path given to [`parse`], for messages.
    pub path: String,
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
}
