//! Lint rules over a parsed Dockerfile: BuildKit's build checks (same names, same
//! messages where BuildKit has one) and kiln's multi-platform checks.
//!
//! Everything here works offline on the syntax tree: the base image's environment is not
//! known, so rules that depend on it err on the side of silence.

mod platform;
mod scan;

use std::collections::{HashMap, HashSet};

use crate::Dockerfile;
use crate::instruction::{Command, Instruction, ShellOrExec};
use crate::suggest;
use crate::words::{split_quoted, split_whitespace};

use scan::variable_refs;

/// How serious a finding is. BuildKit's checks are warnings unless `# check=error=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warning,
    Error,
}

/// One rule violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule's name, e.g. `"JSONArgsRecommended"`.
    pub rule: &'static str,
    /// 1-based line of the instruction.
    pub line: usize,
    pub message: String,
    pub level: Level,
}

/// Every rule [`check`] knows, in the order they are documented.
pub const RULES: &[&str] = &[
    "ConsistentInstructionCasing",
    "DuplicateStageName",
    "FromAsCasing",
    "FromPlatformFlagConstDisallowed",
    "InvalidDefaultArgInFrom",
    "JSONArgsRecommended",
    "LegacyKeyValueFormat",
    "MaintainerDeprecated",
    "MultipleInstructionsDisallowed",
    "RedundantTargetPlatform",
    "ReservedStageName",
    "SecretsUsedInArgOrEnv",
    "StageNameCasing",
    "UndefinedArgInFrom",
    "UndefinedVar",
    "WorkdirRelativePath",
    "HardcodedArchitecture",
    "TargetArchWithoutArg",
    "CompilerInTargetStage",
];

/// The automatic platform ARGs BuildKit defines in the global scope.
pub(crate) const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// Variables a base image or the build provides without any ARG or ENV in the Dockerfile.
const WELL_KNOWN_VARS: [&str; 20] = [
    "PATH",
    "HOME",
    "HOSTNAME",
    "TERM",
    "PWD",
    "SHELL",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What `# check=skip=A,B;error=true` asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Config {
    skip_all: bool,
    skip: Vec<String>,
    error: bool,
}

impl Config {
    fn from_directive(value: Option<&str>) -> Config {
        let mut config = Config::default();
        for part in value.unwrap_or_default().split(';') {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" => {
                    for rule in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                        if rule.eq_ignore_ascii_case("all") {
                            config.skip_all = true;
                        }
                        config.skip.push(rule.to_ascii_lowercase());
                    }
                }
                "error" => config.error = value.trim().eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        config
    }

    fn skips(&self, rule: &str) -> bool {
        self.skip_all || self.skip.contains(&rule.to_ascii_lowercase())
    }
}

/// Runs every rule not skipped by the file's `# check=` directive. Findings come sorted by
/// line; with `error=true` in the directive every finding is an error.
pub fn check(df: &Dockerfile) -> Vec<Finding> {
    let config = Config::from_directive(df.directives.check.as_deref());
    let mut checker = Checker {
        df,
        stages: stage_infos(df),
        findings: Vec::new(),
    };
    checker.casing();
    checker.stage_names();
    checker.base_images();
    checker.per_stage();
    checker.undefined_vars();
    checker.args_and_envs();
    platform::check(&mut checker);

    let level = if config.error {
        Level::Error
    } else {
        Level::Warning
    };
    let mut findings: Vec<Finding> = checker
        .findings
        .into_iter()
        .filter(|f| !config.skips(f.rule))
        .map(|f| Finding { level, ..f })
        .collect();
    findings.sort_by_key(|f| f.line);
    findings
}

/// What the rules need to know about a stage.
pub(crate) struct StageInfo<'a> {
    pub from: &'a Instruction,
    pub name: Option<String>,
    /// The stage's instructions after FROM.
    pub body: Vec<&'a Instruction>,
    /// The earlier stage this one builds on (`FROM build AS test`), as an index.
    pub parent: Option<usize>,
}

fn stage_infos(df: &Dockerfile) -> Vec<StageInfo<'_>> {
    let mut infos: Vec<StageInfo<'_>> = Vec::new();
    for stage in df.stages() {
        let Command::From { image, .. } = &stage.from.command else {
            continue;
        };
        let parent = infos
            .iter()
            .position(|s| s.name.as_deref() == Some(image.to_ascii_lowercase().as_str()));
        infos.push(StageInfo {
            from: stage.from,
            name: stage.name,
            body: stage.instructions,
            parent,
        });
    }
    infos
}

pub(crate) struct Checker<'a> {
    pub df: &'a Dockerfile,
    pub stages: Vec<StageInfo<'a>>,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    pub(crate) fn report(
        &mut self,
        rule: &'static str,
        instruction: &Instruction,
        message: String,
    ) {
        self.findings.push(Finding {
            rule,
            line: instruction.span.start_line,
            message,
            level: Level::Warning,
        });
    }

    /// ConsistentInstructionCasing: keywords all upper or all lower, like the majority.
    fn casing(&mut self) {
        let df = self.df;
        let is_upper = |k: &str| k == k.to_ascii_uppercase();
        let is_lower = |k: &str| k == k.to_ascii_lowercase();
        let keywords = df.instructions.iter().map(Instruction::raw_keyword);
        let upper = keywords.clone().filter(|k| is_upper(k)).count();
        let lower = keywords.filter(|k| is_lower(k)).count();
        let majority_lower = lower > upper;
        for instruction in &df.instructions {
            let keyword = instruction.raw_keyword();
            if !is_upper(keyword) && !is_lower(keyword) {
                self.report(
                    "ConsistentInstructionCasing",
                    instruction,
                    format!("Command '{keyword}' should be consistently cased"),
                );
            } else if is_lower(keyword) != majority_lower {
                let majority = if majority_lower {
                    "lowercase"
                } else {
                    "uppercase"
                };
                self.report(
                    "ConsistentInstructionCasing",
                    instruction,
                    format!("Command '{keyword}' should match the case of the command majority ({majority})"),
                );
            }
        }
    }

    /// DuplicateStageName, ReservedStageName, StageNameCasing, FromAsCasing.
    fn stage_names(&mut self) {
        let mut seen = HashSet::new();
        let froms: Vec<&Instruction> = self.stages.iter().map(|s| s.from).collect();
        for from in froms {
            let words = split_whitespace(from.raw_args());
            let [_, as_word, name] = words.as_slice() else {
                continue;
            };
            let lower = name.to_ascii_lowercase();
            if !seen.insert(lower.clone()) {
                self.report(
                    "DuplicateStageName",
                    from,
                    format!("Duplicate stage name {lower:?}, stage names should be unique"),
                );
            }
            if matches!(lower.as_str(), "scratch" | "context") {
                self.report(
                    "ReservedStageName",
                    from,
                    format!("Stage name should not use the same name as reserved stage {lower:?}"),
                );
            }
            if *name != lower {
                self.report(
                    "StageNameCasing",
                    from,
                    format!("Stage name '{name}' should be lowercase"),
                );
            }
            let keyword = from.raw_keyword();
            let keyword_upper = keyword == keyword.to_ascii_uppercase();
            let as_upper = as_word == &as_word.to_ascii_uppercase();
            let as_lower = as_word == &as_word.to_ascii_lowercase();
            if (keyword_upper && !as_upper) || (!keyword_upper && !as_lower) {
                self.report(
                    "FromAsCasing",
                    from,
                    format!("'{as_word}' and '{keyword}' keywords' casing do not match"),
                );
            }
        }
    }

    /// FromPlatformFlagConstDisallowed, RedundantTargetPlatform, UndefinedArgInFrom,
    /// InvalidDefaultArgInFrom.
    fn base_images(&mut self) {
        let df = self.df;
        let mut global_args: HashMap<String, Option<String>> = HashMap::new();
        for instruction in df.global_args() {
            if let Command::Arg(args) = &instruction.command {
                for (name, default) in args {
                    let value = default.as_ref().map(|d| {
                        let known = |n: &str| global_args.get(n).cloned().flatten();
                        crate::expand(d, &known, df.directives.escape).unwrap_or_default()
                    });
                    global_args.insert(name.clone(), value);
                }
            }
        }
        let froms: Vec<(&Instruction, Option<String>)> = self
            .stages
            .iter()
            .map(|s| (s.from, s.name.clone()))
            .collect();
        let stage_names: Vec<String> = froms.iter().filter_map(|(_, n)| n.clone()).collect();
        for (from, stage_name) in froms {
            let Command::From { image, .. } = &from.command else {
                continue;
            };
            let platform = from.flag("platform").and_then(|f| f.value.clone());
            if let Some(platform) = &platform {
                self.platform_flag(from, platform, stage_name.as_deref());
            }
            let mut undeclared = Vec::new();
            let texts = std::iter::once(image.as_str()).chain(platform.as_deref());
            for text in texts {
                for var in variable_refs(text, df.directives.escape) {
                    if !global_args.contains_key(&var.name)
                        && !PLATFORM_ARGS.contains(&var.name.as_str())
                        && !undeclared.contains(&var.name)
                    {
                        undeclared.push(var.name);
                    }
                }
            }
            for name in &undeclared {
                let candidates: Vec<&str> = global_args
                    .keys()
                    .map(String::as_str)
                    .chain(PLATFORM_ARGS)
                    .collect();
                let hint = suggest::closest(name, &candidates)
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                self.report(
                    "UndefinedArgInFrom",
                    from,
                    format!("FROM argument '{name}' is not declared{hint}"),
                );
            }
            if undeclared.is_empty() && image.contains('$') {
                let lookup = |name: &str| {
                    global_args
                        .get(name)
                        .cloned()
                        .flatten()
                        .or_else(|| platform_arg_example(name))
                };
                let expanded = crate::expand(image, &lookup, df.directives.escape);
                let valid = expanded.is_ok_and(|base| {
                    stage_names.contains(&base.to_ascii_lowercase()) || plausible_image(&base)
                });
                if !valid {
                    self.report(
                        "InvalidDefaultArgInFrom",
                        from,
                        format!("Default value for ARG {image} results in empty or invalid base image name"),
                    );
                }
            }
        }
    }

    fn platform_flag(&mut self, from: &Instruction, platform: &str, stage_name: Option<&str>) {
        if platform == "$TARGETPLATFORM" || platform == "${TARGETPLATFORM}" {
            self.report(
                "RedundantTargetPlatform",
                from,
                "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior".to_string(),
            );
        } else if !platform.contains('$') {
            // A stage named after its platform (`AS build-arm64`) pins it on purpose.
            let named_for_it = stage_name.is_some_and(|name| {
                platform
                    .split('/')
                    .any(|part| !part.is_empty() && name.contains(&part.to_ascii_lowercase()))
            });
            if !named_for_it {
                self.report(
                    "FromPlatformFlagConstDisallowed",
                    from,
                    format!("FROM --platform flag should not use constant value {platform:?}"),
                );
            }
        }
    }

    /// MultipleInstructionsDisallowed, JSONArgsRecommended, WorkdirRelativePath.
    fn per_stage(&mut self) {
        let mut absolute_workdir: Vec<bool> = Vec::new();
        for index in 0..self.stages.len() {
            let stage = &self.stages[index];
            let body = stage.body.clone();
            let mut has_absolute = stage.parent.is_some_and(|p| absolute_workdir[p]);
            let sets_shell = body.iter().any(|i| matches!(i.command, Command::Shell(_)));
            for keyword in ["CMD", "ENTRYPOINT", "HEALTHCHECK"] {
                let all: Vec<&Instruction> = body
                    .iter()
                    .copied()
                    .filter(|i| i.keyword() == keyword)
                    .collect();
                for instruction in all.iter().take(all.len().saturating_sub(1)) {
                    self.report(
                        "MultipleInstructionsDisallowed",
                        instruction,
                        format!("Multiple {keyword} instructions should not be used in the same stage because only the last one will be used"),
                    );
                }
            }
            for instruction in body {
                match &instruction.command {
                    Command::Cmd(ShellOrExec::Shell(_))
                    | Command::Entrypoint(ShellOrExec::Shell(_))
                        if !sets_shell =>
                    {
                        self.report(
                            "JSONArgsRecommended",
                            instruction,
                            format!("JSON arguments recommended for {} to prevent unintended behavior related to OS signals", instruction.keyword()),
                        );
                    }
                    Command::Workdir(dir) => {
                        let windows_absolute =
                            dir.get(1..3) == Some(":\\") || dir.get(1..3) == Some(":/");
                        if dir.starts_with('/') || dir.starts_with('$') || windows_absolute {
                            has_absolute = true;
                        } else if !has_absolute {
                            self.report(
                                "WorkdirRelativePath",
                                instruction,
                                format!("Relative workdir {dir:?} can have unexpected results if the base image changes"),
                            );
                        }
                    }
                    Command::Maintainer(_) => self.report(
                        "MaintainerDeprecated",
                        instruction,
                        "Maintainer instruction is deprecated in favor of using label".to_string(),
                    ),
                    _ => {}
                }
            }
            absolute_workdir.push(has_absolute);
        }
    }

    /// UndefinedVar: a variable in an instruction BuildKit expands that nothing defines.
    /// Without the base image's environment only names no ARG or ENV before mentions, and
    /// that no base image commonly sets, are reported.
    fn undefined_vars(&mut self) {
        let df = self.df;
        let escape = df.directives.escape;
        let mut defined: HashSet<String> = HashSet::new();
        for instruction in &df.instructions {
            let mut texts: Vec<&str> = instruction
                .flags
                .iter()
                .filter_map(|f| f.value.as_deref())
                .collect();
            match &instruction.command {
                Command::From { .. } => continue,
                Command::Run(_)
                | Command::Cmd(_)
                | Command::Entrypoint(_)
                | Command::Healthcheck(_)
                | Command::Shell(_)
                | Command::Onbuild(_) => {}
                Command::Arg(args) => {
                    for (name, default) in args {
                        self.undefined_in(
                            instruction,
                            default.as_deref().unwrap_or(""),
                            escape,
                            &defined,
                        );
                        defined.insert(name.clone());
                    }
                }
                Command::Env(pairs) => {
                    for (_, value) in pairs {
                        texts.push(value);
                    }
                }
                _ => texts.push(instruction.raw_args()),
            }
            for text in texts {
                self.undefined_in(instruction, text, escape, &defined);
            }
            if let Command::Env(pairs) = &instruction.command {
                defined.extend(pairs.iter().map(|(name, _)| name.clone()));
            }
        }
    }

    fn undefined_in(
        &mut self,
        instruction: &Instruction,
        text: &str,
        escape: char,
        defined: &HashSet<String>,
    ) {
        for var in variable_refs(text, escape) {
            let name = var.name.as_str();
            if var.guarded
                || defined.contains(name)
                || PLATFORM_ARGS.contains(&name)
                || WELL_KNOWN_VARS.contains(&name)
            {
                continue;
            }
            let candidates: Vec<&str> = defined.iter().map(String::as_str).collect();
            let hint = suggest::closest(name, &candidates)
                .map(|c| format!(" (did you mean ${c}?)"))
                .unwrap_or_default();
            self.report(
                "UndefinedVar",
                instruction,
                format!("Usage of undefined variable '${name}'{hint}"),
            );
        }
    }

    /// SecretsUsedInArgOrEnv and LegacyKeyValueFormat.
    fn args_and_envs(&mut self) {
        let df = self.df;
        for instruction in &df.instructions {
            let names: Vec<&str> = match &instruction.command {
                Command::Arg(args) => args.iter().map(|(n, _)| n.as_str()).collect(),
                Command::Env(pairs) => pairs.iter().map(|(n, _)| n.as_str()).collect(),
                Command::Label(_) => Vec::new(),
                _ => continue,
            };
            for name in names {
                if looks_secret(name) {
                    self.report(
                        "SecretsUsedInArgOrEnv",
                        instruction,
                        format!(
                            "Do not use ARG or ENV instructions for sensitive data ({} {name:?})",
                            instruction.keyword()
                        ),
                    );
                }
            }
            let legacy = matches!(instruction.command, Command::Env(_) | Command::Label(_))
                && !split_quoted(instruction.raw_args(), df.directives.escape)
                    .first()
                    .is_some_and(|w| w.contains('='));
            if legacy {
                let keyword = instruction.keyword();
                self.report(
                    "LegacyKeyValueFormat",
                    instruction,
                    format!("\"{keyword} key=value\" should be used instead of legacy \"{keyword} key value\" format"),
                );
            }
        }
    }
}

/// A name whose `_`/`-`/`.` separated parts include a word for a credential.
fn looks_secret(name: &str) -> bool {
    const SECRET_WORDS: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "passwd",
        "pword",
        "secret",
        "token",
    ];
    let parts: Vec<String> = name
        .split(['_', '-', '.'])
        .map(str::to_ascii_lowercase)
        .collect();
    parts.iter().any(|p| SECRET_WORDS.contains(&p.as_str())) && !parts.iter().any(|p| p == "public")
}

/// A value for an automatic platform ARG, to see what a FROM line would become.
fn platform_arg_example(name: &str) -> Option<String> {
    let value = match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => "linux/amd64",
        "TARGETOS" | "BUILDOS" => "linux",
        "TARGETARCH" | "BUILDARCH" => "amd64",
        "TARGETVARIANT" | "BUILDVARIANT" => "",
        _ => return None,
    };
    Some(value.to_string())
}

/// Whether `reference` could name an image: `[host[:port]/]path[:tag][@algo:hex]`, with a
/// lowercase path and a non-empty tag and digest when their separators are present.
fn plausible_image(reference: &str) -> bool {
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name_tag, digest)) => (name_tag, Some(digest)),
        None => (reference, None),
    };
    if digest.is_some_and(|d| {
        !d.split_once(':')
            .is_some_and(|(a, h)| !a.is_empty() && !h.is_empty())
    }) {
        return false;
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    });
    let components: Vec<&str> = name.split('/').collect();
    let is_host =
        |c: &str| components.len() > 1 && (c.contains('.') || c.contains(':') || c == "localhost");
    let path_ok = components.iter().enumerate().all(|(i, c)| {
        !c.is_empty()
            && ((i == 0 && is_host(c))
                || c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)))
    });
    tag_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_directive_parts() {
        assert_eq!(
            Config::from_directive(Some("skip=JSONArgsRecommended, StageNameCasing;error=true")),
            Config {
                skip_all: false,
                skip: vec![
                    "jsonargsrecommended".to_string(),
                    "stagenamecasing".to_string()
                ],
                error: true
            }
        );
        assert!(Config::from_directive(Some("skip=all")).skips("UndefinedVar"));
        assert!(!Config::from_directive(Some("error=false")).error);
        assert_eq!(Config::from_directive(Some("nonsense")), Config::default());
    }

    #[test]
    fn image_references() {
        for good in [
            "alpine",
            "alpine:3.20",
            "localhost:5000/a/b:1",
            "Reg.io/x@sha256:ab",
            "scratch",
        ] {
            assert!(plausible_image(good), "{good}");
        }
        for bad in [
            "",
            "alpine:",
            ":1",
            "Alpine",
            "a//b",
            "a@",
            "a@sha256:",
            "a b",
        ] {
            assert!(!plausible_image(bad), "{bad}");
        }
    }

    #[test]
    fn secret_names_match_whole_parts() {
        assert!(looks_secret("API_TOKEN"));
        assert!(looks_secret("aws-secret-key"));
        assert!(!looks_secret("MONKEY"));
        assert!(!looks_secret("PUBLIC_KEY"));
        assert!(!looks_secret("TOKENIZER_VERSION"));
    }
}
