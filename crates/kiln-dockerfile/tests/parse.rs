//! Parser behaviour through the public API.

use kiln_dockerfile::{Command, Heredoc, ParseError, ShellOrExec, parse};

fn parse_ok(source: &str) -> kiln_dockerfile::Dockerfile {
    parse("Dockerfile", source).unwrap_or_else(|e| panic!("unexpected error:\n{e}"))
}

fn parse_err(source: &str) -> ParseError {
    match parse("Dockerfile", source) {
        Ok(df) => panic!("expected an error, got {:#?}", df.instructions),
        Err(e) => e,
    }
}

fn commands(source: &str) -> Vec<Command> {
    parse_ok(source)
        .instructions
        .into_iter()
        .map(|i| i.command)
        .collect()
}

fn shell(s: &str) -> ShellOrExec {
    ShellOrExec::Shell(s.to_string())
}

fn exec(words: &[&str]) -> ShellOrExec {
    ShellOrExec::Exec(words.iter().map(|w| w.to_string()).collect())
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn directives_are_read_from_the_top_only() {
    let df = parse_ok(
        "# syntax=docker/dockerfile:1.7\n#  CHECK = skip=all \n# escape=\\\nFROM a\n# escape=`\nRUN x\n",
    );
    assert_eq!(
        df.directives.syntax.as_deref(),
        Some("docker/dockerfile:1.7")
    );
    assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
    assert_eq!(df.directives.escape, '\\');
    // After a blank line, a directive-shaped comment is just a comment.
    let df = parse_ok("\n# escape=`\nFROM a\nRUN x \\\n  y\n");
    assert_eq!(df.directives.escape, '\\');
    assert_eq!(df.instructions[1].command, Command::Run(shell("x   y")));
}

#[test]
fn duplicate_and_invalid_directives_are_errors() {
    let err = parse_err("# escape=`\n# escape=\\\nFROM a\n");
    assert_eq!(
        (err.line, err.message.as_str()),
        (2, "only one escape parser directive can be used")
    );
    let err = parse_err("# escape=x\nFROM a\n");
    assert_eq!(err.line, 1);
    assert!(
        err.message.contains("invalid escape token 'x'"),
        "{}",
        err.message
    );
}

#[test]
fn continuations_skip_comments_and_empty_lines() {
    let df = parse_ok(
        "FROM alpine\nRUN apk add \\\n# a comment inside\n    curl \\\n\n    git\nRUN echo done\n",
    );
    let run = &df.instructions[1];
    assert_eq!(run.command, Command::Run(shell("apk add     curl     git")));
    assert_eq!(run.text, "RUN apk add     curl     git");
    assert_eq!(
        (run.span.start_line, run.span.end_line, run.span.column),
        (2, 6, 1)
    );
    assert_eq!(df.instructions[2].span.start_line, 7);
}

#[test]
fn backtick_escape_directive_changes_continuation() {
    let df =
        parse_ok("# escape=`\nFROM mcr.microsoft.com/windows\nCOPY c:\\src\\ `\n    c:\\dest\\\n");
    assert_eq!(df.directives.escape, '`');
    assert_eq!(
        df.instructions[1].command,
        Command::Copy {
            sources: strings(&["c:\\src\\"]),
            dest: "c:\\dest\\".to_string()
        }
    );
}

#[test]
fn keywords_are_case_insensitive_and_indented_lines_keep_their_column() {
    let df = parse_ok("from alpine AS Build\n   run true\n");
    assert_eq!(df.instructions[0].keyword(), "FROM");
    assert_eq!(
        df.instructions[0].command,
        Command::From {
            image: "alpine".to_string(),
            name: Some("build".to_string())
        }
    );
    assert_eq!(df.instructions[1].keyword(), "RUN");
    assert_eq!(df.instructions[1].span.column, 4);
}

#[test]
fn exec_shell_and_invalid_json_fallback() {
    let cmds = commands(
        "FROM a\nRUN [\"echo\", \"hi there\"]\nCMD [\"sh\", '-c']\nENTRYPOINT [ \"/bin/app\" ]\nCMD echo [1]\nRUN [not json\nCMD []\n",
    );
    assert_eq!(cmds[1], Command::Run(exec(&["echo", "hi there"])));
    assert_eq!(
        cmds[2],
        Command::Cmd(shell("[\"sh\", '-c']")),
        "single quotes are not JSON"
    );
    assert_eq!(cmds[3], Command::Entrypoint(exec(&["/bin/app"])));
    assert_eq!(cmds[4], Command::Cmd(shell("echo [1]")));
    assert_eq!(cmds[5], Command::Run(shell("[not json")));
    assert_eq!(cmds[6], Command::Cmd(exec(&[])));
}

#[test]
fn json_array_with_non_strings_is_an_error() {
    let err = parse_err("FROM a\nCMD [\"a\", 1]\n");
    assert_eq!((err.line, err.column), (2, 5));
    assert!(err.message.contains("strings only"), "{}", err.message);
}

#[test]
fn copy_and_add_keep_raw_words_and_accept_json() {
    let cmds = commands(
        "FROM a\nCOPY --from=build \"a b\" $SRC/x /dst/\nADD [\"my file\", \"/opt/x y/\"]\nCOPY --chown=1:1 --chmod=0755 --link --exclude=*.md --exclude=*.txt . /app\n",
    );
    assert_eq!(
        cmds[1],
        Command::Copy {
            sources: strings(&["\"a", "b\"", "$SRC/x"]),
            dest: "/dst/".to_string()
        }
    );
    assert_eq!(
        cmds[2],
        Command::Add {
            sources: strings(&["my file"]),
            dest: "/opt/x y/".to_string()
        }
    );
    let df = parse_ok("FROM a\nCOPY --chown=1:1 --link --exclude=*.md --exclude=*.txt . /app\n");
    let copy = &df.instructions[1];
    assert_eq!(
        copy.flag("chown").and_then(|f| f.value.as_deref()),
        Some("1:1")
    );
    assert_eq!(copy.flag("link").map(|f| f.value.clone()), Some(None));
    assert_eq!(copy.flag("link").map(|f| f.column), Some(18));
    let excludes: Vec<_> = copy
        .flags
        .iter()
        .filter(|f| f.name == "exclude")
        .map(|f| f.value.clone().unwrap())
        .collect();
    assert_eq!(excludes, ["*.md", "*.txt"]);
}

#[test]
fn flags_keep_variables_and_drop_quotes() {
    let df = parse_ok(
        "FROM --platform=$BUILDPLATFORM golang AS b\nRUN --mount=\"type=cache,target=/root/.cache\" --network=none go build\n",
    );
    assert_eq!(
        df.instructions[0]
            .flag("platform")
            .unwrap()
            .value
            .as_deref(),
        Some("$BUILDPLATFORM")
    );
    let run = &df.instructions[1];
    assert_eq!(
        run.flag("mount").unwrap().value.as_deref(),
        Some("type=cache,target=/root/.cache")
    );
    assert_eq!(run.command, Command::Run(shell("go build")));
}

#[test]
fn env_forms_and_quotes() {
    let cmds =
        commands("FROM a\nENV A=\"x y\" B='$z' C=plain\\ word D=\nENV LEGACY value with  spaces\n");
    assert_eq!(
        cmds[1],
        Command::Env(pairs(&[
            ("A", "\"x y\""),
            ("B", "'$z'"),
            ("C", "plain\\ word"),
            ("D", "")
        ]))
    );
    assert_eq!(
        cmds[2],
        Command::Env(pairs(&[("LEGACY", "value with  spaces")]))
    );
}

#[test]
fn env_errors() {
    let err = parse_err("FROM a\nENV A=1 B\n");
    assert_eq!((err.line, err.column), (2, 5));
    assert!(
        err.message.contains("can't find = in \"B\""),
        "{}",
        err.message
    );
    let err = parse_err("FROM a\nENV LONELY\n");
    assert_eq!(err.message, "ENV must have two arguments");
    let err = parse_err("FROM a\nENV =x\n");
    assert_eq!(err.message, "ENV names can not be blank");
}

#[test]
fn labels_several_per_line() {
    let cmds = commands(
        "FROM a\nLABEL org.opencontainers.image.title=\"My App\" version=1.0 \\\n      \"com.example.x\"=y\n",
    );
    assert_eq!(
        cmds[1],
        Command::Label(pairs(&[
            ("org.opencontainers.image.title", "\"My App\""),
            ("version", "1.0"),
            ("\"com.example.x\"", "y")
        ]))
    );
}

#[test]
fn args_with_and_without_defaults() {
    let df =
        parse_ok("ARG VERSION=1.2 BASE\nFROM alpine:${VERSION}\nARG GREETING=\"hello world\"\n");
    assert_eq!(
        df.instructions[0].command,
        Command::Arg(vec![
            ("VERSION".to_string(), Some("1.2".to_string())),
            ("BASE".to_string(), None)
        ])
    );
    assert_eq!(
        df.instructions[2].command,
        Command::Arg(vec![(
            "GREETING".to_string(),
            Some("\"hello world\"".to_string())
        )])
    );
    let err = parse_err("FROM a\nARG 9lives=1\n");
    assert_eq!((err.line, err.column), (2, 5));
    assert_eq!(err.message, "invalid ARG name \"9lives\"");
    let err = parse_err("FROM a\nARG =x\n");
    assert_eq!(err.message, "invalid ARG name \"\"");
}

#[test]
fn simple_instructions() {
    let cmds = commands(
        "FROM a\nEXPOSE 80/tcp 443 $PORT\nWORKDIR /app dir\nUSER 1000:1000\nVOLUME /data /cache\nVOLUME [\"/v 1\"]\nSTOPSIGNAL SIGTERM\nSHELL [\"/bin/bash\", \"-c\"]\nMAINTAINER Jane <j@example.com>\n",
    );
    assert_eq!(
        cmds[1],
        Command::Expose(strings(&["80/tcp", "443", "$PORT"]))
    );
    assert_eq!(cmds[2], Command::Workdir("/app dir".to_string()));
    assert_eq!(cmds[3], Command::User("1000:1000".to_string()));
    assert_eq!(cmds[4], Command::Volume(strings(&["/data", "/cache"])));
    assert_eq!(cmds[5], Command::Volume(strings(&["/v 1"])));
    assert_eq!(cmds[6], Command::StopSignal("SIGTERM".to_string()));
    assert_eq!(cmds[7], Command::Shell(strings(&["/bin/bash", "-c"])));
    assert_eq!(
        cmds[8],
        Command::Maintainer("Jane <j@example.com>".to_string())
    );
}

#[test]
fn healthcheck_forms() {
    let df = parse_ok(
        "FROM a\nHEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost/\nHEALTHCHECK none\nHEALTHCHECK CMD [\"/bin/check\"]\n",
    );
    let hc = &df.instructions[1];
    assert_eq!(
        hc.command,
        Command::Healthcheck(Some(shell("curl -f http://localhost/")))
    );
    assert_eq!(hc.flag("interval").unwrap().value.as_deref(), Some("30s"));
    assert_eq!(hc.flag("retries").unwrap().value.as_deref(), Some("3"));
    assert_eq!(df.instructions[2].command, Command::Healthcheck(None));
    assert_eq!(
        df.instructions[3].command,
        Command::Healthcheck(Some(exec(&["/bin/check"])))
    );
    assert_eq!(
        parse_err("FROM a\nHEALTHCHECK NONE x\n").message,
        "HEALTHCHECK NONE takes no arguments"
    );
    assert!(
        parse_err("FROM a\nHEALTHCHECK PING x\n")
            .message
            .contains("unknown type \"PING\"")
    );
}

#[test]
fn stages_with_names_and_indexes() {
    let df = parse_ok(
        "ARG GO=1.22\nARG DEBIAN\nFROM golang:${GO} AS build\nRUN go build\nFROM scratch\nCOPY --from=build /out /out\nCMD [\"/out\"]\n",
    );
    let globals: Vec<_> = df.global_args().iter().map(|i| i.span.start_line).collect();
    assert_eq!(globals, [1, 2]);
    let stages = df.stages();
    assert_eq!(stages.len(), 2);
    assert_eq!(
        (stages[0].index, stages[0].name.as_deref()),
        (0, Some("build"))
    );
    assert_eq!(stages[0].from.span.start_line, 3);
    let kinds: Vec<_> = stages[0].instructions.iter().map(|i| i.keyword()).collect();
    assert_eq!(kinds, ["RUN"]);
    assert_eq!((stages[1].index, stages[1].name.as_deref()), (1, None));
    let kinds: Vec<_> = stages[1].instructions.iter().map(|i| i.keyword()).collect();
    assert_eq!(kinds, ["COPY", "CMD"]);
}

#[test]
fn invalid_stage_name_is_an_error() {
    let err = parse_err("FROM a AS 1st\n");
    assert!(
        err.message
            .contains("invalid name for build stage: \"1st\""),
        "{}",
        err.message
    );
    let err = parse_err("FROM a AS\n");
    assert_eq!(err.message, "FROM requires either one or three arguments");
}

#[test]
fn heredocs_multiple_stripped_and_quoted() {
    let source = "FROM a\nRUN <<EOF\necho $HOME\n  indented\nEOF\nCOPY <<-one <<'two' /dst/\n\t\tfirst\n\tone\nliteral $x\ntwo\nRUN python3 <<\"PY\" > /out\nprint(1)\nPY\nCMD done\n";
    let df = parse_ok(source);
    let run = &df.instructions[1];
    assert_eq!(run.command, Command::Run(shell("<<EOF")));
    assert_eq!(
        run.heredocs,
        vec![Heredoc {
            name: "EOF".to_string(),
            content: "echo $HOME\n  indented\n".to_string(),
            expand: true,
            strip_tabs: false
        }]
    );
    assert_eq!((run.span.start_line, run.span.end_line), (2, 5));
    let copy = &df.instructions[2];
    assert_eq!(
        copy.command,
        Command::Copy {
            sources: strings(&["<<-one", "<<'two'"]),
            dest: "/dst/".to_string()
        }
    );
    assert_eq!(
        copy.heredocs,
        vec![
            Heredoc {
                name: "one".to_string(),
                content: "first\n".to_string(),
                expand: true,
                strip_tabs: true
            },
            Heredoc {
                name: "two".to_string(),
                content: "literal $x\n".to_string(),
                expand: false,
                strip_tabs: false
            }
        ]
    );
    let py = &df.instructions[3];
    assert_eq!(py.heredocs[0].name, "PY");
    assert!(!py.heredocs[0].expand);
    assert_eq!(py.heredocs[0].content, "print(1)\n");
    assert_eq!(df.instructions[4].command, Command::Cmd(shell("done")));
    assert_eq!(df.instructions[4].span.start_line, 14);
}

#[test]
fn heredoc_markers_are_ignored_in_exec_form_and_other_instructions() {
    let df = parse_ok("FROM a\nRUN [\"cat\", \"<<EOF\"]\nCMD x\n");
    assert!(df.instructions[1].heredocs.is_empty());
    assert_eq!(df.instructions[2].command, Command::Cmd(shell("x")));
    // CMD does not take heredocs, so the body line is read as an instruction of its own.
    let err = parse_err("FROM a\nCMD cat <<EOF\nEOF\n");
    assert_eq!(err.line, 3);
    assert_eq!(err.message, "unknown instruction: EOF");
}

#[test]
fn unterminated_heredoc_is_an_error() {
    let err = parse_err("FROM a\nRUN cat <<EOF\nline\nEOF \n");
    assert_eq!((err.line, err.column), (2, 9));
    assert_eq!(err.message, "unterminated heredoc EOF");
}

#[test]
fn onbuild_wraps_a_nested_instruction() {
    let df = parse_ok("FROM a\nONBUILD COPY --chown=app . /src\nonbuild run make\n");
    let Command::Onbuild(nested) = &df.instructions[1].command else {
        panic!("not ONBUILD: {:?}", df.instructions[1].command);
    };
    assert_eq!(
        nested.command,
        Command::Copy {
            sources: strings(&["."]),
            dest: "/src".to_string()
        }
    );
    assert_eq!(nested.flag("chown").unwrap().value.as_deref(), Some("app"));
    assert_eq!(nested.span.column, 9);
    assert_eq!(nested.text, "COPY --chown=app . /src");
    let Command::Onbuild(nested) = &df.instructions[2].command else {
        panic!("not ONBUILD");
    };
    assert_eq!(nested.command, Command::Run(shell("make")));
}

#[test]
fn onbuild_rejects_onbuild_from_and_maintainer() {
    let err = parse_err("FROM a\nONBUILD ONBUILD RUN x\n");
    assert!(err.message.contains("ONBUILD ONBUILD"), "{}", err.message);
    assert_eq!(
        parse_err("FROM a\nONBUILD from b\n").message,
        "FROM isn't allowed as an ONBUILD trigger"
    );
    assert_eq!(
        parse_err("FROM a\nONBUILD MAINTAINER me\n").message,
        "MAINTAINER isn't allowed as an ONBUILD trigger"
    );
}

#[test]
fn error_display_points_at_the_column() {
    let err = parse_err("FROM a\n  COPPY . /app\n");
    assert_eq!((err.line, err.column), (2, 3));
    assert_eq!(err.message, "unknown instruction: COPPY");
    assert_eq!(err.hint.as_deref(), Some("did you mean COPY?"));
    assert_eq!(err.source_line, "  COPPY . /app");
    assert_eq!(
        err.to_string(),
        "Dockerfile:2:3: unknown instruction: COPPY\n 2 |   COPPY . /app\n   |   ^\nhint: did you mean COPY?\n"
    );
}

#[test]
fn unknown_instruction_without_near_match_has_no_hint() {
    let err = parse_err("FROM a\nFROBNICATE x\n");
    assert_eq!(err.hint, None);
}

#[test]
fn missing_from_names_the_instruction_and_line() {
    let err = parse_err("ARG X=1\n# c\nRUN echo\nFROM a\n");
    assert_eq!(err.message, "no FROM instruction before RUN at line 3");
    assert_eq!((err.line, err.column), (3, 1));
}

#[test]
fn missing_arguments() {
    let err = parse_err("FROM\n");
    assert_eq!(err.message, "FROM requires an image name");
    let err = parse_err("FROM a\nCOPY onlyone\n");
    assert_eq!((err.line, err.column), (2, 1));
    assert!(
        err.message
            .starts_with("COPY requires at least two arguments"),
        "{}",
        err.message
    );
    let err = parse_err("FROM a\nCOPY --from=x [\"one\"]\n");
    assert!(
        err.message
            .starts_with("COPY requires at least two arguments")
    );
    let err = parse_err("FROM a\nWORKDIR   \n");
    assert_eq!(err.message, "WORKDIR requires at least one argument");
    let err = parse_err("FROM a\nRUN --network=none\n");
    assert_eq!(err.message, "RUN requires at least one argument");
}

#[test]
fn shell_requires_json() {
    let err = parse_err("FROM a\nSHELL /bin/bash -c\n");
    assert_eq!((err.line, err.column), (2, 7));
    assert_eq!(
        err.message,
        "SHELL requires the arguments to be in JSON form"
    );
    assert!(err.hint.is_some());
}

#[test]
fn unknown_and_misplaced_flags() {
    let err = parse_err("FROM a\nCOPY --frm=build . /\n");
    assert_eq!((err.line, err.column), (2, 6));
    assert_eq!(err.message, "unknown flag --frm on COPY");
    assert_eq!(err.hint.as_deref(), Some("did you mean --from?"));

    let err = parse_err("FROM a\nRUN --network=none \\\n    --from=x true\n");
    assert_eq!(
        (err.line, err.column),
        (3, 5),
        "points into the continuation line"
    );
    assert_eq!(err.message, "flag --from is not allowed on RUN");
    assert_eq!(
        err.hint.as_deref(),
        Some("RUN accepts --mount, --network, --security")
    );

    let err = parse_err("FROM a\nENV --link A=b\n");
    assert_eq!(err.message, "flag --link is not allowed on ENV");
    assert_eq!(err.hint.as_deref(), Some("ENV takes no flags"));
}

#[test]
fn flag_values_are_checked() {
    assert_eq!(
        parse_err("FROM a\nCOPY --from . /\n").message,
        "missing a value on flag --from"
    );
    assert!(
        parse_err("FROM a\nCOPY --link=yes . /\n")
            .message
            .contains("boolean value")
    );
    let df = parse_ok("FROM a\nCOPY --link=false . /\n");
    assert_eq!(
        df.instructions[1].flag("link").unwrap().value.as_deref(),
        Some("false")
    );
    assert_eq!(
        parse_err("FROM a\nCOPY --link --link . /\n").message,
        "duplicate flag --link"
    );
}

#[test]
fn empty_file_is_an_error() {
    assert_eq!(
        parse_err("# just a comment\n\n").message,
        "file with no instructions"
    );
}

#[test]
fn crlf_line_endings() {
    let df = parse_ok("FROM a\r\nRUN a \\\r\n  b\r\nCOPY <<EOF /x\r\nhi\r\nEOF\r\n");
    assert_eq!(df.instructions[1].command, Command::Run(shell("a   b")));
    assert_eq!(df.instructions[2].heredocs[0].content, "hi\r\n");
}

#[test]
fn words_and_flags_are_located_in_the_file() {
    let df = parse_ok(
        "FROM scratch\n  ENV A=1 \\\n    B=${X:-y}\nCOPY --chmod=644 \\\n  --from=a f /\n",
    );
    let env = &df.instructions[1];
    assert_eq!(env.word_position("A=1", 0), Some((2, 7)));
    assert_eq!(env.word_position("${X:-y}", 0), Some((3, 7)));
    assert_eq!(env.word_position("${X:-y}", 2), Some((3, 9)));
    assert_eq!(env.word_position("nowhere", 0), None);
    let copy = &df.instructions[2];
    assert_eq!(copy.flag_position("chmod"), Some((4, 6)));
    assert_eq!(copy.flag_position("from"), Some((5, 3)));
    // An instruction reported elsewhere (an ONBUILD trigger at its FROM) has no positions.
    let mut moved = env.clone();
    moved.span = df.instructions[0].span;
    assert_eq!(moved.word_position("A=1", 0), None);
}

#[test]
fn copy_and_run_flags_are_typed_with_their_positions() {
    let df = parse_ok(
        "FROM a\nCOPY --from=build --chown=$U:1 --link \\\n  --exclude=*.md --exclude=x . /app\n\
         RUN --mount=type=cache,target=$HOME/.cache,sharing=locked --network=none make\n\
         ADD --unpack=false --checksum=sha256:00 --keep-git-dir x /y\n",
    );
    let copy = df.instructions[1].copy_flags().unwrap();
    assert_eq!(copy.from.as_ref().unwrap().value, "build");
    assert_eq!(copy.chown.as_ref().unwrap().value, "$U:1");
    assert!(copy.link && !copy.parents && copy.unpack.is_none());
    let excludes: Vec<&str> = copy.exclude.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(excludes, ["*.md", "x"]);
    // Positions in the file, the second flag line included.
    let at = |offset| df.instructions[1].position(offset);
    assert_eq!(at(copy.from.as_ref().unwrap().offset), Some((2, 6)));
    assert_eq!(at(copy.exclude[1].offset), Some((3, 18)));

    let run = df.instructions[2].run_flags().unwrap();
    let mount = &run.mounts[0];
    assert_eq!(mount.spec.kind, kiln_dockerfile::MountType::Cache);
    assert_eq!(mount.spec.target.as_deref(), Some("$HOME/.cache"));
    assert_eq!(mount.spec.sharing.as_deref(), Some("locked"));
    assert_eq!(run.network.as_ref().unwrap().value, "none");
    assert!(df.instructions[2].copy_flags().is_none());

    let add = df.instructions[3].copy_flags().unwrap();
    assert_eq!(add.unpack, Some(false));
    assert!(add.keep_git_dir);
    assert_eq!(add.checksum.as_ref().unwrap().value, "sha256:00");
}

#[test]
fn mount_flags_are_checked_where_they_are_written() {
    let e = parse_err("FROM a\nRUN --network=none --mount=type=floppy,target=/f true\n");
    assert_eq!((e.line, e.column), (2, 20));
    assert!(e.message.contains("unknown mount type `floppy`"), "{e}");
    let e = parse_err("FROM a\nRUN --mount=type=bind,target=/x,colour=red true\n");
    assert!(e.message.contains("unknown mount option `colour`"), "{e}");
    let e = parse_err("FROM a\nRUN --mount=type=cache true\n");
    assert!(e.message.contains("needs target=PATH"), "{e}");
    // A value is a word: checked once the build knows its variables.
    parse_ok("FROM a\nRUN --mount=type=cache,target=/c,uid=$UID,sharing=$MODE true\n");
}
