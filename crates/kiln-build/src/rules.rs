//! BuildKit's rules for what instructions mean, as pure functions: shell and exec forms,
//! heredoc scripts, HEALTHCHECK, STOPSIGNAL, EXPOSE, the default PATH, the proxy build args,
//! history lines and image paths. The plan (`lower.rs`) applies them.

use std::collections::BTreeMap;

use kiln_dockerfile::{Command, Dockerfile, Instruction, ShellOrExec};
use kiln_oci::ImageConfig;

pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The proxy build args: BuildKit accepts them, in any case, without an ARG and gives them to
/// every RUN, but never writes them to the image config or history.
pub(crate) const PROXY_ARGS: [&str; 5] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// The environment a RUN gets from the proxy build args: each one set, under both its upper
/// and lower case name, as BuildKit's exec op does. When several spellings of one are given,
/// the last in sorted order wins, as in BuildKit.
pub(crate) fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for name in PROXY_ARGS {
        let value = build_args
            .iter()
            .filter(|(arg, _)| arg.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .next_back();
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            env.push((name.to_string(), value.clone()));
            env.push((name.to_ascii_lowercase(), value.clone()));
        }
    }
    env
}

pub(crate) fn shell_argv(config: &ImageConfig, cmd: &ShellOrExec) -> Vec<String> {
    match cmd {
        ShellOrExec::Exec(v) => v.clone(),
        ShellOrExec::Shell(s) => {
            let mut argv: Vec<String> = config
                .config
                .extra
                .get("Shell")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            argv.push(s.clone());
            argv
        }
    }
}

/// The shell script for a RUN with heredocs, as BuildKit makes it. A RUN that is just
/// `<<EOF` runs the body: with the interpreter its `#!` line names, else with the shell. Any
/// other command line gets the bodies appended, each closed by its delimiter, for the shell
/// to read as ordinary here-documents (a quoted delimiter keeps its body unexpanded there).
pub(crate) fn heredoc_script(command: &str, heredocs: &[kiln_dockerfile::Heredoc]) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    if let ([word], [doc]) = (words.as_slice(), heredocs)
        && word.starts_with("<<")
    {
        return match doc.content.strip_prefix("#!") {
            // The body reaches its interpreter as a file: /dev/stdin, fed by a quoted
            // here-document so the shell leaves it alone.
            Some(rest) => {
                let interpreter = rest.lines().next().unwrap_or("").trim();
                format!(
                    "{interpreter} /dev/stdin <<'{name}'\n{body}{name}",
                    name = doc.name,
                    body = doc.content
                )
            }
            None => doc.content.clone(),
        };
    }
    let mut script = command.to_string();
    for doc in heredocs {
        script.push('\n');
        script.push_str(&doc.content);
        script.push_str(&doc.name);
    }
    script
}

/// The `Healthcheck` of an image config, as Docker writes it: durations in nanoseconds,
/// zero values left out, the test as `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
pub(crate) fn healthcheck_config(
    check: Option<&ShellOrExec>,
    flags: &[kiln_dockerfile::Flag],
) -> Result<serde_json::Value, String> {
    let mut value = serde_json::Map::new();
    let test = match check {
        None => vec!["NONE".to_string()],
        Some(ShellOrExec::Shell(command)) => vec!["CMD-SHELL".to_string(), command.clone()],
        Some(ShellOrExec::Exec(argv)) => std::iter::once("CMD".to_string())
            .chain(argv.iter().cloned())
            .collect(),
    };
    value.insert("Test".into(), serde_json::json!(test));
    // Docker ignores the options of HEALTHCHECK NONE.
    for flag in flags.iter().filter(|_| check.is_some()) {
        let raw = flag.value.as_deref().unwrap_or("");
        let (key, number) = match flag.name.as_str() {
            "retries" => match raw.parse::<i64>() {
                Ok(n) if n >= 0 => ("Retries", n),
                _ => return Err(format!("--retries={raw}: expected a number, 0 or more")),
            },
            name => {
                let key = match name {
                    "interval" => "Interval",
                    "timeout" => "Timeout",
                    "start-period" => "StartPeriod",
                    _ => "StartInterval",
                };
                let nanos = parse_duration(raw).map_err(|m| format!("--{name}={raw}: {m}"))?;
                if nanos != 0 && nanos < 1_000_000 {
                    return Err(format!("--{name}={raw}: cannot be less than 1ms"));
                }
                (key, nanos)
            }
        };
        if number != 0 {
            value.insert(key.into(), serde_json::json!(number));
        }
    }
    Ok(serde_json::Value::Object(value))
}

/// A Go duration (`30s`, `1m30s`, `1.5h`, `500ms`, `0`) in nanoseconds.
fn parse_duration(text: &str) -> Result<i64, String> {
    const UNITS: &[(&str, f64)] = &[
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
        ("m", 60e9),
        ("h", 3600e9),
    ];
    if text == "0" {
        return Ok(0);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err("expected a duration like 30s, 1m30s or 500ms".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| "expected a duration like 30s, 1m30s or 500ms".to_string())?;
        rest = &rest[digits..];
        // Longest unit first, so `ms` is not read as `m` then `s`.
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(|| "a duration needs a unit: ns, us, ms, s, m or h".to_string())?;
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    Ok(total.round() as i64)
}

/// Gives a config without PATH the default one, as BuildKit does for every stage (the saved
/// config and the RUN environment alike), except on Windows.
pub(crate) fn set_default_path(config: &mut ImageConfig) {
    if config.os != "windows" && config.config.env_var("PATH").is_none() {
        config.config.set_env_var("PATH", DEFAULT_PATH);
    }
}

/// Linux signal names, without `SIG`, that BuildKit's STOPSIGNAL accepts (moby/sys/signal).
const SIGNAL_NAMES: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
];

/// Whether BuildKit accepts a STOPSIGNAL value: a non-zero integer, or a signal name in any
/// case with or without `SIG` (`RTMIN+1`..`RTMIN+15` and `RTMAX-14`..`RTMAX-1` included).
pub(crate) fn is_valid_stop_signal(value: &str) -> bool {
    if let Ok(number) = value.parse::<i64>() {
        return number != 0;
    }
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNAL_NAMES.contains(&name)
        || (1..=15).any(|n| name == format!("RTMIN+{n}"))
        || (1..=14).any(|n| name == format!("RTMAX-{n}"))
}

/// The ONBUILD triggers an image config carries.
pub(crate) fn onbuild_triggers(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .extra
        .get("OnBuild")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Words in a RUN command that mean it compiles: worth moving to a build-platform stage
/// when it runs under emulation.
const COMPILER_WORDS: &[&str] = &[
    "go build",
    "go install",
    "cargo build",
    "cargo install",
    "rustc",
    "gcc",
    "g++",
    "cc ",
    "clang",
    "make",
    "cmake",
    "npm install",
    "npm ci",
    "yarn",
    "pip install",
    "pip3 install",
];

pub(crate) fn compiles(command: &str) -> bool {
    COMPILER_WORDS.iter().any(|w| command.contains(w))
}

/// The history line for an instruction, in the form BuildKit writes.
pub(crate) fn history_text(ins: &Instruction) -> String {
    match &ins.command {
        Command::Run(ShellOrExec::Shell(s)) => format!("RUN /bin/sh -c {s} # buildkit"),
        Command::Run(ShellOrExec::Exec(v)) => format!("RUN {} # buildkit", v.join(" ")),
        Command::Copy { .. } | Command::Add { .. } => format!("{} # buildkit", ins.text),
        _ => ins.text.clone(),
    }
}

/// Joins an image path onto a base dir and normalises it (`..` stops at `/`).
pub(crate) fn join_image_path(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut out: Vec<&str> = Vec::new();
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

/// Whether a COPY/ADD destination as written names a directory, whatever the image holds
/// there: it ends in `/`, or it is `.` or ends in `/.` (BuildKit turns `.` into the working
/// dir with a trailing slash, and keeps a trailing `/.`).
pub(crate) fn names_a_directory(dest: &str) -> bool {
    dest.ends_with('/') || dest == "." || dest.ends_with("/.")
}

/// The heredoc a COPY/ADD source word (`<<EOF`, `<<-"EOF"`) stands for, if it is one.
pub(crate) fn heredoc_named<'h>(
    word: &str,
    heredocs: &'h [kiln_dockerfile::Heredoc],
) -> Option<&'h kiln_dockerfile::Heredoc> {
    let marker = word.strip_prefix("<<")?;
    let marker = marker.strip_prefix('-').unwrap_or(marker);
    let name = marker.trim_matches(['"', '\'']);
    heredocs.iter().find(|doc| doc.name == name)
}

/// Expands the variables in a heredoc body for COPY, leaving its quotes and escapes as
/// written (BuildKit expands heredoc files with raw quotes and escapes): each is escaped
/// before the word expansion undoes that.
pub(crate) fn expand_heredoc(
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, kiln_dockerfile::ExpandError> {
    let mut protected = String::with_capacity(content.len());
    let mut chars = content.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape && chars.peek() == Some(&'$') {
            // `\$` stays as written and does not expand.
            chars.next();
            for literal in [escape, '$'] {
                protected.push(escape);
                protected.push(literal);
            }
            continue;
        }
        if c == '"' || c == '\'' || c == escape {
            protected.push(escape);
        }
        protected.push(c);
    }
    kiln_dockerfile::expand(&protected, lookup, escape)
}

/// The part of a source's path that `--parents` keeps: all of it, or what follows a `/./`
/// in the source as written (BuildKit's pivot).
pub(crate) fn kept_by_parents(written: &str, path: &str) -> String {
    let Some((pivot, _)) = written.split_once("/./") else {
        return path.to_string();
    };
    let skip = pivot
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .count();
    path.split('/').skip(skip).collect::<Vec<_>>().join("/")
}

/// The `port/proto` keys of one EXPOSE word (`80`, `53/udp`, `7000-7002/tcp`): the protocol
/// defaults to tcp and a range stands for each of its ports, as Docker's port parser does.
pub(crate) fn exposed_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, protocol) = word.split_once('/').unwrap_or((word, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    let invalid = || format!("invalid port in EXPOSE: {word:?}");
    let number = |text: &str| text.parse::<u16>().map_err(|_| invalid());
    let (first, last) = match ports.split_once('-') {
        Some((first, last)) => (number(first)?, number(last)?),
        None => (number(ports)?, number(ports)?),
    };
    if last < first || !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
        return Err(invalid());
    }
    Ok((first..=last)
        .map(|port| format!("{port}/{protocol}"))
        .collect())
}

/// The `--build-arg`s that no ARG of the Dockerfile declares (usually a typo), except the
/// ones BuildKit predefines.
pub(crate) fn unconsumed_build_args<'a>(
    df: &Dockerfile,
    build_args: &'a BTreeMap<String, String>,
) -> Vec<&'a str> {
    let declared: Vec<&str> = df
        .instructions
        .iter()
        .filter_map(|ins| match &ins.command {
            Command::Arg(decls) => Some(decls.iter().map(|(name, _)| name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    build_args
        .keys()
        .map(String::as_str)
        .filter(|name| {
            let predefined = *name == "SOURCE_DATE_EPOCH"
                || PROXY_ARGS.iter().any(|p| name.eq_ignore_ascii_case(p));
            !predefined && !name.starts_with("BUILDKIT_") && !declared.contains(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_are_joined_and_cleaned() {
        assert_eq!(join_image_path("/app", "src"), "/app/src");
        assert_eq!(join_image_path("/app", "/etc/x"), "/etc/x");
        assert_eq!(join_image_path("/", "../../x/./y/"), "/x/y");
        for dir in ["/app/", "./", ".", "/app/.", "sub/."] {
            assert!(names_a_directory(dir), "{dir}");
        }
        for path in ["/app", "..", "app", "/app/.."] {
            assert!(!names_a_directory(path), "{path}");
        }
    }

    fn doc(name: &str, content: &str) -> kiln_dockerfile::Heredoc {
        kiln_dockerfile::Heredoc {
            name: name.into(),
            content: content.into(),
            expand: true,
            strip_tabs: false,
        }
    }

    #[test]
    fn run_heredocs_become_shell_scripts() {
        assert_eq!(
            heredoc_script("<<EOF", &[doc("EOF", "echo hi\n")]),
            "echo hi\n"
        );
        assert_eq!(
            heredoc_script("<<EOF", &[doc("EOF", "#!/usr/bin/env python3\nprint(1)\n")]),
            "/usr/bin/env python3 /dev/stdin <<'EOF'\n#!/usr/bin/env python3\nprint(1)\nEOF"
        );
        assert_eq!(
            heredoc_script(
                "cat <<A > /a && cat <<'B' > /b",
                &[doc("A", "a\n"), doc("B", "$b\n")]
            ),
            "cat <<A > /a && cat <<'B' > /b\na\nA\n$b\nB"
        );
    }

    #[test]
    fn healthchecks_are_stored_as_docker_does() {
        let flag = |name: &str, value: &str| kiln_dockerfile::Flag {
            name: name.into(),
            value: Some(value.into()),
            column: 1,
        };
        let check = ShellOrExec::Shell("curl -f x || exit 1".into());
        let value = healthcheck_config(
            Some(&check),
            &[
                flag("interval", "1m30s"),
                flag("timeout", "0s"),
                flag("retries", "0"),
            ],
        )
        .unwrap();
        assert_eq!(
            value,
            serde_json::json!({"Test": ["CMD-SHELL", "curl -f x || exit 1"], "Interval": 90_000_000_000u64})
        );
        assert!(healthcheck_config(Some(&check), &[flag("interval", "10us")]).is_err());
        assert!(healthcheck_config(Some(&check), &[flag("retries", "-1")]).is_err());
        assert_eq!(parse_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration("250ms").unwrap(), 250_000_000);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn parents_keep_the_path_after_a_pivot() {
        assert_eq!(kept_by_parents("a/b/*.txt", "a/b/c.txt"), "a/b/c.txt");
        assert_eq!(kept_by_parents("./a/./b/c", "a/b/c"), "b/c");
        assert_eq!(kept_by_parents("/x/y/./z", "x/y/z"), "z");
    }

    #[test]
    fn heredoc_files_expand_variables_but_keep_quotes_and_escapes() {
        let lookup = |n: &str| (n == "V").then(|| "value".to_string());
        assert_eq!(
            expand_heredoc("a \"$V\" '${V}' \\$V \\n\n", &lookup, '\\').unwrap(),
            "a \"value\" 'value' \\$V \\n\n"
        );
    }

    #[test]
    fn stop_signals_are_checked_as_buildkit_does() {
        for ok in [
            "SIGTERM",
            "term",
            "SigKill",
            "9",
            "+15",
            "-1",
            "64",
            "RTMIN",
            "sigrtmin+15",
            "RTMAX-14",
            "SIGRTMAX",
        ] {
            assert!(is_valid_stop_signal(ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "0",
            "-0",
            "SIGFOO",
            "SIGSIGTERM",
            "RTMIN+16",
            "RTMIN+0",
            "RTMAX-15",
            "RTMIN+01",
            "TERM ",
            "99999999999999999999",
        ] {
            assert!(!is_valid_stop_signal(bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn proxy_args_become_both_spellings_of_the_variable() {
        let args: BTreeMap<String, String> = [
            ("http_proxy", "http://lower"),
            ("HTTP_PROXY", "http://upper"),
            ("No_Proxy", "localhost"),
            ("HTTPS_PROXY", ""),
            ("OTHER", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            proxy_env(&args),
            vec![
                pair("HTTP_PROXY", "http://lower"),
                pair("http_proxy", "http://lower"),
                pair("NO_PROXY", "localhost"),
                pair("no_proxy", "localhost"),
            ],
            "the last spelling in sorted order wins; empty values set nothing"
        );
    }

    #[test]
    fn configs_without_path_get_the_default_one() {
        let mut config = ImageConfig::for_platform(&"linux/amd64".parse().unwrap());
        config.config.env = vec!["A=1".into()];
        set_default_path(&mut config);
        assert_eq!(
            config.config.env,
            vec!["A=1".to_string(), format!("PATH={DEFAULT_PATH}")]
        );
        config.config.env = vec!["PATH=/opt/bin".into()];
        set_default_path(&mut config);
        assert_eq!(config.config.env, vec!["PATH=/opt/bin".to_string()]);
        let mut windows = ImageConfig::for_platform(&"windows/amd64".parse().unwrap());
        set_default_path(&mut windows);
        assert!(windows.config.env.is_empty());
    }
}
