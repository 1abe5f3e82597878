//! Flags between the keyword and the arguments (`COPY --from=build ...`).
//!
//! BuildKit accepts `--name=value` and bare `--name` (booleans only); `--name value` is not a
//! flag with a value, the value would be taken as an argument.

use crate::mount::MountSpec;
use crate::suggest;

/// A flag as written, quotes removed, with its byte offset in the logical line.
#[derive(Clone)]
pub(crate) struct RawFlag {
    pub name: String,
    pub value: Option<String>,
    pub offset: usize,
}

/// Reads flags from the start of `args` (offsets relative to `args`). Returns them and the
/// offset where the real arguments begin. A bare `--` ends the flags.
pub(crate) fn extract(args: &str) -> (Vec<RawFlag>, usize) {
    let mut flags = Vec::new();
    // Walks the string in place: most instructions have no flags and allocate nothing here.
    let mut chars = args.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let start = chars.peek().map_or(args.len(), |(o, _)| *o);
        if !args[start..].starts_with("--") {
            return (flags, start);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some((_, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => break,
                Some(q) if c == q => quote = None,
                None if c == '\'' || c == '"' => quote = Some(c),
                // Flags always use `\` as their escape, whatever the escape directive says.
                _ if c == '\\' => {
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                }
                _ => word.push(c),
            }
        }
        if word == "--" {
            return (flags, chars.peek().map_or(args.len(), |(o, _)| *o));
        }
        let body = &word[2..];
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (body.to_string(), None),
        };
        flags.push(RawFlag {
            name,
            value,
            offset: start,
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Needs `=value`, at most once.
    Value,
    /// Bare, or `=true` / `=false`.
    Bool,
    /// Needs `=value`, may repeat.
    Repeated,
}

const FROM: &[(&str, Kind)] = &[("platform", Kind::Value)];
const RUN: &[(&str, Kind)] = &[
    ("mount", Kind::Repeated),
    ("network", Kind::Value),
    ("security", Kind::Value),
];
const COPY: &[(&str, Kind)] = &[
    ("from", Kind::Value),
    ("chown", Kind::Value),
    ("chmod", Kind::Value),
    ("link", Kind::Bool),
    ("parents", Kind::Bool),
    ("exclude", Kind::Repeated),
];
const ADD: &[(&str, Kind)] = &[
    ("from", Kind::Value),
    ("chown", Kind::Value),
    ("chmod", Kind::Value),
    ("link", Kind::Bool),
    ("parents", Kind::Bool),
    ("exclude", Kind::Repeated),
    ("checksum", Kind::Value),
    ("keep-git-dir", Kind::Bool),
    ("unpack", Kind::Bool),
];
const HEALTHCHECK: &[(&str, Kind)] = &[
    ("interval", Kind::Value),
    ("timeout", Kind::Value),
    ("start-period", Kind::Value),
    ("start-interval", Kind::Value),
    ("retries", Kind::Value),
];
const TABLES: &[&[(&str, Kind)]] = &[FROM, RUN, COPY, ADD, HEALTHCHECK];

fn allowed(keyword: &str) -> &'static [(&'static str, Kind)] {
    match keyword {
        "FROM" => FROM,
        "RUN" => RUN,
        "COPY" => COPY,
        "ADD" => ADD,
        "HEALTHCHECK" => HEALTHCHECK,
        _ => &[],
    }
}

/// Why a flag was rejected; `index` points into the checked list.
pub(crate) struct Problem {
    pub index: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// Whether `keyword` takes a flag called `name`.
pub(crate) fn is_known(keyword: &str, name: &str) -> bool {
    allowed(keyword).iter().any(|(n, _)| *n == name)
}

/// Checks names, values and repetition of `flags` for `keyword`.
pub(crate) fn validate(keyword: &str, flags: &[RawFlag]) -> Result<(), Problem> {
    let table = allowed(keyword);
    for (index, flag) in flags.iter().enumerate() {
        let problem = |message: String, hint: Option<String>| Problem {
            index,
            message,
            hint,
        };
        let name = flag.name.as_str();
        let Some(&(_, kind)) = table.iter().find(|(n, _)| *n == name) else {
            let accepted: Vec<String> = table.iter().map(|(n, _)| format!("--{n}")).collect();
            let known_elsewhere = TABLES.iter().any(|t| t.iter().any(|(n, _)| *n == name));
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            let hint = match suggest::closest(name, &names) {
                Some(near) if !known_elsewhere => Some(format!("did you mean --{near}?")),
                _ if accepted.is_empty() => Some(format!("{keyword} takes no flags")),
                _ => Some(format!("{keyword} accepts {}", accepted.join(", "))),
            };
            let message = if known_elsewhere {
                format!("flag --{name} is not allowed on {keyword}")
            } else {
                format!("unknown flag --{name} on {keyword}")
            };
            return Err(problem(message, hint));
        };
        match (kind, &flag.value) {
            (Kind::Value | Kind::Repeated, None) => {
                return Err(problem(
                    format!("missing a value on flag --{name}"),
                    Some(format!("write it as --{name}=VALUE")),
                ));
            }
            (Kind::Bool, Some(v))
                if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") =>
            {
                return Err(problem(
                    format!("expecting a boolean value for flag --{name}, not {v:?}"),
                    None,
                ));
            }
            _ => {}
        }
        if kind != Kind::Repeated && flags[..index].iter().any(|f| f.name == name) {
            return Err(problem(format!("duplicate flag --{name}"), None));
        }
    }
    Ok(())
}

/// A flag's value as written: quotes removed, variables not expanded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    pub value: String,
    /// Byte offset of the flag's `--` in [`Instruction::text`](crate::Instruction::text);
    /// [`Instruction::position`](crate::Instruction::position) gives its line and column.
    pub offset: usize,
}

/// The flags of COPY and ADD, typed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyFlags {
    pub from: Option<FlagValue>,
    pub chown: Option<FlagValue>,
    pub chmod: Option<FlagValue>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<FlagValue>,
    /// ADD only.
    pub checksum: Option<FlagValue>,
    /// ADD only; `None` when not given (local archives are unpacked, remote ones are not).
    pub unpack: Option<bool>,
    /// ADD only.
    pub keep_git_dir: bool,
}

/// One `RUN --mount`: its options, and the flag as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFlag {
    pub spec: MountSpec,
    pub written: FlagValue,
}

/// The flags of RUN, typed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunFlags {
    pub mounts: Vec<MountFlag>,
    pub network: Option<FlagValue>,
    pub security: Option<FlagValue>,
}

/// The flags of FROM, typed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FromFlags {
    pub platform: Option<FlagValue>,
}

/// The typed flags of an instruction (HEALTHCHECK's stay in `Instruction::flags`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TypedFlags {
    #[default]
    None,
    From(FromFlags),
    Run(RunFlags),
    Copy(CopyFlags),
}

/// Types the flags of `keyword` (already [`validate`]d). `offset` is added to each flag's
/// offset, to make it an offset in the instruction's text.
pub(crate) fn typed(
    keyword: &str,
    flags: &[RawFlag],
    offset: usize,
) -> Result<TypedFlags, Problem> {
    let word = |flag: &RawFlag| FlagValue {
        value: flag.value.clone().unwrap_or_default(),
        offset: offset + flag.offset,
    };
    let boolean = |flag: &RawFlag| {
        flag.value
            .as_deref()
            .is_none_or(|v| v.eq_ignore_ascii_case("true"))
    };
    Ok(match keyword {
        "FROM" => TypedFlags::From(FromFlags {
            platform: flags.iter().find(|f| f.name == "platform").map(word),
        }),
        "RUN" => {
            let mut run = RunFlags::default();
            for (index, flag) in flags.iter().enumerate() {
                match flag.name.as_str() {
                    "mount" => {
                        let written = word(flag);
                        let spec = MountSpec::parse(&written.value).map_err(|m| Problem {
                            index,
                            message: format!("--mount={}: {m}", written.value),
                            hint: None,
                        })?;
                        run.mounts.push(MountFlag { spec, written });
                    }
                    "network" => run.network = Some(word(flag)),
                    _ => run.security = Some(word(flag)),
                }
            }
            TypedFlags::Run(run)
        }
        "COPY" | "ADD" => {
            let mut copy = CopyFlags::default();
            for flag in flags {
                match flag.name.as_str() {
                    "from" => copy.from = Some(word(flag)),
                    "chown" => copy.chown = Some(word(flag)),
                    "chmod" => copy.chmod = Some(word(flag)),
                    "link" => copy.link = boolean(flag),
                    "parents" => copy.parents = boolean(flag),
                    "exclude" => copy.exclude.push(word(flag)),
                    "checksum" => copy.checksum = Some(word(flag)),
                    "unpack" => copy.unpack = Some(boolean(flag)),
                    _ => copy.keep_git_dir = boolean(flag),
                }
            }
            TypedFlags::Copy(copy)
        }
        _ => TypedFlags::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_flags_with_quotes_and_stops_at_first_argument() {
        let args = r#"--from=build --mount="type=cache,target=/x y" --link src --not-a-flag"#;
        let (flags, rest) = extract(args);
        let got: Vec<(&str, Option<&str>, usize)> = flags
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_deref(), f.offset))
            .collect();
        assert_eq!(
            got,
            vec![
                ("from", Some("build"), 0),
                ("mount", Some("type=cache,target=/x y"), 13),
                ("link", None, 46)
            ]
        );
        assert_eq!(&args[rest..], "src --not-a-flag");
    }

    #[test]
    fn double_dash_ends_flags() {
        let (flags, rest) = extract("--link -- --weird dest");
        assert_eq!(flags.len(), 1);
        assert_eq!(&"--link -- --weird dest"[rest..], "--weird dest");
    }
}
