//! A JSON view of a parsed Dockerfile for editors and other tools.
//!
//! Arguments are split the way BuildKit's parser splits them into its node tree, before any
//! expansion: exec-form arrays element by element, shell form as one string, ENV and LABEL
//! as alternating names and values, WORKDIR/USER/STOPSIGNAL/MAINTAINER as one string, and
//! the rest word by word with quotes kept.

use serde_json::{Value, json};

use crate::Dockerfile;
use crate::instruction::{Command, Flag, Instruction, ShellOrExec};
use crate::words::split_whitespace;

/// The whole file: `{"directives": {...}, "instructions": [...]}`.
pub fn to_json(df: &Dockerfile) -> Value {
    json!({
        "directives": {
            "syntax": df.directives.syntax,
            "escape": df.directives.escape.to_string(),
            "check": df.directives.check,
        },
        "instructions": df.instructions.iter().map(instruction_json).collect::<Vec<_>>(),
    })
}

/// One instruction: keyword, flags, args, heredocs, lines, and `trigger` for ONBUILD.
pub fn instruction_json(instruction: &Instruction) -> Value {
    let mut value = json!({
        "keyword": instruction.keyword().to_ascii_lowercase(),
        "flags": instruction.flags.iter().map(flag_text).collect::<Vec<_>>(),
        "args": args(instruction),
        "heredocs": instruction.heredocs.iter().map(|h| json!({
            "name": h.name,
            "content": h.content,
            "expand": h.expand,
        })).collect::<Vec<_>>(),
        "start_line": instruction.span.start_line,
        "end_line": instruction.span.end_line,
    });
    if let Command::Onbuild(trigger) = &instruction.command {
        value["trigger"] = instruction_json(trigger);
    }
    value
}

/// `--name=value` or `--name`, as BuildKit's parser keeps it (quotes removed).
fn flag_text(flag: &Flag) -> String {
    match &flag.value {
        Some(value) => format!("--{}={value}", flag.name),
        None => format!("--{}", flag.name),
    }
}

fn shell_or_exec(command: &ShellOrExec) -> Vec<String> {
    match command {
        ShellOrExec::Shell(text) => vec![text.clone()],
        ShellOrExec::Exec(words) => words.clone(),
    }
}

fn pairs(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(name, value)| [name.clone(), value.clone()])
        .collect()
}

fn args(instruction: &Instruction) -> Vec<String> {
    match &instruction.command {
        // The AST lowercases the stage name; tools want the words as written.
        Command::From { .. } => split_whitespace(instruction.raw_args()),
        Command::Run(c) | Command::Cmd(c) | Command::Entrypoint(c) => shell_or_exec(c),
        Command::Healthcheck(None) => vec!["NONE".to_string()],
        Command::Healthcheck(Some(c)) => std::iter::once("CMD".to_string())
            .chain(shell_or_exec(c))
            .collect(),
        Command::Copy { sources, dest } | Command::Add { sources, dest } => sources
            .iter()
            .chain(std::iter::once(dest))
            .cloned()
            .collect(),
        Command::Env(p) | Command::Label(p) => pairs(p),
        Command::Arg(args) => args
            .iter()
            .map(|(name, default)| match default {
                Some(default) => format!("{name}={default}"),
                None => name.clone(),
            })
            .collect(),
        Command::Expose(words) | Command::Volume(words) | Command::Shell(words) => words.clone(),
        Command::Workdir(s)
        | Command::User(s)
        | Command::StopSignal(s)
        | Command::Maintainer(s) => {
            vec![s.clone()]
        }
        Command::Onbuild(_) => Vec::new(),
        Command::Unknown { args, .. } => split_whitespace(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn onbuild_trigger_keeps_its_own_flags_and_args() {
        let df = parse("Dockerfile", "FROM a\nONBUILD COPY --from=b x /y\n").unwrap();
        let v = instruction_json(&df.instructions[1]);
        assert_eq!(v["keyword"], "onbuild");
        assert_eq!(v["args"], json!([]));
        assert_eq!(v["trigger"]["keyword"], "copy");
        assert_eq!(v["trigger"]["flags"], json!(["--from=b"]));
        assert_eq!(v["trigger"]["args"], json!(["x", "/y"]));
    }

    #[test]
    fn from_words_keep_their_case() {
        let df = parse(
            "Dockerfile",
            "FROM --platform=$BUILDPLATFORM Img:1 As Build\n",
        )
        .unwrap();
        let v = instruction_json(&df.instructions[0]);
        assert_eq!(v["args"], json!(["Img:1", "As", "Build"]));
        assert_eq!(v["flags"], json!(["--platform=$BUILDPLATFORM"]));
    }
}
