//! kiln's multi-platform checks: mistakes that only show when one Dockerfile builds for
//! several platforms.

use std::collections::HashSet;

use super::scan::{path_tokens, simple_commands, variable_refs};
use super::{Checker, PLATFORM_ARGS};
use crate::instruction::{Command, Instruction, ShellOrExec};

/// Architecture names as they appear in release file names, package names and lib paths.
const ARCH_NAMES: [&str; 11] = [
    "amd64", "x86_64", "x86-64", "aarch64", "arm64", "armhf", "armel", "armv7", "i386", "i686",
    "ppc64le",
];

/// Extensions of downloadable artifacts: a token ending in one is a file name.
const ARTIFACT_EXTENSIONS: [&str; 14] = [
    ".tar",
    ".gz",
    ".tgz",
    ".xz",
    ".bz2",
    ".zst",
    ".zip",
    ".deb",
    ".rpm",
    ".apk",
    ".sh",
    ".bin",
    ".appimage",
    ".run",
];

pub(super) fn check(checker: &mut Checker<'_>) {
    let build_platform = build_platform_stages(checker);
    for (index, on_build_platform) in build_platform.into_iter().enumerate() {
        let stage = &checker.stages[index];
        let body = stage.body.clone();
        let stage_label = match &stage.name {
            Some(name) => format!("stage '{name}'"),
            None => format!("stage {index}"),
        };
        let mut declared: HashSet<String> = HashSet::new();
        for instruction in body {
            hardcoded_architecture(checker, instruction);
            target_arch_without_arg(checker, instruction, &declared);
            if !on_build_platform {
                compiler_in_target_stage(checker, instruction, &stage_label);
            }
            match &instruction.command {
                Command::Arg(args) => declared.extend(args.iter().map(|(n, _)| n.clone())),
                Command::Env(pairs) => declared.extend(pairs.iter().map(|(n, _)| n.clone())),
                _ => {}
            }
        }
    }
}

/// For each stage: does it run on the build platform (`FROM --platform=$BUILDPLATFORM`,
/// directly or through the stage it is based on)?
fn build_platform_stages(checker: &Checker<'_>) -> Vec<bool> {
    let mut result: Vec<bool> = Vec::new();
    for stage in &checker.stages {
        let on_build = match stage.from.flag("platform").and_then(|f| f.value.as_deref()) {
            Some(platform) => platform.contains("BUILDPLATFORM"),
            None => stage.parent.is_some_and(|p| result[p]),
        };
        result.push(on_build);
    }
    result
}

/// The texts of an instruction that a shell runs (RUN) or the build expands.
fn run_texts(instruction: &Instruction) -> Vec<&str> {
    let mut texts: Vec<&str> = match &instruction.command {
        Command::Run(ShellOrExec::Shell(text)) => vec![text],
        Command::Run(ShellOrExec::Exec(words)) => words.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    if matches!(instruction.command, Command::Run(_)) {
        texts.extend(instruction.heredocs.iter().map(|h| h.content.as_str()));
    }
    texts
}

/// HardcodedArchitecture: `curl .../tool-linux-amd64.tar.gz` fetches the amd64 binary into
/// the arm64 image too.
fn hardcoded_architecture(checker: &mut Checker<'_>, instruction: &Instruction) {
    let mut texts = run_texts(instruction);
    if let Command::Add { sources, .. } | Command::Copy { sources, .. } = &instruction.command {
        texts.extend(sources.iter().map(String::as_str));
    }
    let mut reported: HashSet<&str> = HashSet::new();
    for token in texts.into_iter().flat_map(path_tokens) {
        // A token built from a variable is already parametrised.
        if token.contains('$') || !names_a_file(token) || reported.contains(token) {
            continue;
        }
        if let Some(arch) = ARCH_NAMES.iter().find(|a| contains_word(token, a)) {
            reported.insert(token);
            checker.report(
                "HardcodedArchitecture",
                instruction,
                format!(
                    "{} hardcodes the architecture {arch:?} in {token:?}: every platform gets the {arch} file; derive it from $TARGETARCH (declare `ARG TARGETARCH` in the stage)",
                    instruction.keyword()
                ),
            );
        }
    }
}

fn names_a_file(token: &str) -> bool {
    let lower = token.to_ascii_lowercase();
    lower.contains('/') || ARTIFACT_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// `word` occurs in `text` with no letter or digit right before or after it.
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(start, _)| {
        let before = text[..start].chars().next_back();
        let after = text[start + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// TargetArchWithoutArg: the automatic platform ARGs are global; a stage sees them only
/// after `ARG TARGETARCH`, otherwise they are empty.
fn target_arch_without_arg(
    checker: &mut Checker<'_>,
    instruction: &Instruction,
    declared: &HashSet<String>,
) {
    let escape = checker.df.directives.escape;
    // RUN text is read by the shell, whose escape is always `\`.
    let mut texts: Vec<(&str, char)> = run_texts(instruction)
        .into_iter()
        .map(|t| (t, '\\'))
        .collect();
    texts.extend(
        instruction
            .flags
            .iter()
            .filter_map(|f| f.value.as_deref())
            .map(|v| (v, escape)),
    );
    match &instruction.command {
        Command::Run(_)
        | Command::Cmd(_)
        | Command::Entrypoint(_)
        | Command::Healthcheck(_)
        | Command::Shell(_)
        | Command::Onbuild(_)
        | Command::From { .. } => {}
        _ => texts.push((instruction.raw_args(), escape)),
    }
    let mut reported = HashSet::new();
    for (text, escape) in texts {
        for var in variable_refs(text, escape) {
            let name = var.name;
            if PLATFORM_ARGS.contains(&name.as_str())
                && !declared.contains(&name)
                && reported.insert(name.clone())
            {
                checker.report(
                    "TargetArchWithoutArg",
                    instruction,
                    format!("${name} is used but the stage has no `ARG {name}`: it expands to an empty string; add `ARG {name}` after FROM"),
                );
            }
        }
    }
}

/// The compiler or installer a command runs, e.g. `go build`, if it is one.
fn compiler(words: &[String]) -> Option<String> {
    let program = words[0].rsplit('/').next().unwrap_or_default();
    let sub = words.get(1).map(String::as_str).unwrap_or_default();
    let known = match program {
        "gcc" | "g++" | "cc" | "c++" | "clang" | "clang++" | "rustc" | "make" => true,
        "go" => matches!(sub, "build" | "install"),
        "cargo" => matches!(sub, "build" | "install"),
        "npm" => matches!(sub, "install" | "ci" | "i"),
        "yarn" => matches!(sub, "install" | ""),
        "pip" | "pip3" => sub == "install",
        _ => false,
    };
    known.then(|| {
        if sub.is_empty()
            || sub.starts_with('-')
            || !matches!(program, "go" | "cargo" | "npm" | "yarn" | "pip" | "pip3")
        {
            program.to_string()
        } else {
            format!("{program} {sub}")
        }
    })
}

/// CompilerInTargetStage: compiling in a target-platform stage runs the compiler under
/// emulation for every foreign platform.
fn compiler_in_target_stage(checker: &mut Checker<'_>, instruction: &Instruction, stage: &str) {
    let found = run_texts(instruction)
        .into_iter()
        .flat_map(simple_commands)
        .find_map(|words| compiler(&words));
    if let Some(tool) = found {
        checker.report(
            "CompilerInTargetStage",
            instruction,
            format!("`{tool}` runs in {stage}, whose FROM has no --platform=$BUILDPLATFORM: a multi-platform build runs it under emulation, many times slower; build in a `FROM --platform=$BUILDPLATFORM` stage that cross-compiles for $TARGETOS/$TARGETARCH, then COPY --from the result"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_words_need_boundaries() {
        assert!(contains_word("tool-linux-amd64.tar.gz", "amd64"));
        assert!(contains_word("/usr/lib/x86_64-linux-gnu/", "x86_64"));
        assert!(!contains_word("arm64v8", "arm64"));
        assert!(!contains_word("xamd64", "amd64"));
        assert!(names_a_file("https://x/y"));
        assert!(names_a_file("foo_arm64.deb"));
        assert!(!names_a_file("gcc-aarch64-linux-gnu"));
    }

    #[test]
    fn recognises_compilers() {
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            compiler(&words("go build ./...")).as_deref(),
            Some("go build")
        );
        assert_eq!(
            compiler(&words("/usr/bin/gcc -O2 x.c")).as_deref(),
            Some("gcc")
        );
        assert_eq!(compiler(&words("yarn")).as_deref(), Some("yarn"));
        assert_eq!(compiler(&words("go version")), None);
        assert_eq!(compiler(&words("npm run start")), None);
    }
}
