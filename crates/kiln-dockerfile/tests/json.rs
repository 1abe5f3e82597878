//! The JSON view of a parsed Dockerfile, instruction by instruction.

use kiln_dockerfile::{parse, to_json};
use serde_json::{Value, json};

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1.7
# check=skip=JSONArgsRecommended
ARG BASE=alpine:3.20
FROM --platform=$BUILDPLATFORM ${BASE} AS Build
RUN --mount=type=cache,target=/root/.cache \
    # a comment inside the continuation
    apk add \
      curl
RUN ["/bin/sh", "-c", "echo hi"]
COPY --from=build --link --chmod=755 "a b.txt" c.txt /dst/
ADD ["https://example.com/x.tgz", "/opt/"]
ENV A="one two" B=3
ENV LEGACY value with spaces
LABEL org.opencontainers.image.title='kiln' version=1
ARG TARGETARCH VERSION=1.0
EXPOSE 80/tcp 443
WORKDIR /app
USER app:app
VOLUME ["/data", "/cache"]
STOPSIGNAL SIGTERM
SHELL ["/bin/bash", "-c"]
HEALTHCHECK --interval=30s CMD curl -f http://localhost/
MAINTAINER someone@example.com
ONBUILD COPY --chown=1:1 . /src
COPY <<EOF /etc/motd
hello $USER
EOF
RUN <<-'SCRIPT' bash
	echo $HOME
	SCRIPT
CMD echo done
ENTRYPOINT ["/entry"]
"#;

fn instructions() -> Vec<Value> {
    let df = parse("Dockerfile", DOCKERFILE).unwrap_or_else(|e| panic!("{e}"));
    let Value::Array(items) = to_json(&df)["instructions"].clone() else {
        panic!("instructions is not an array");
    };
    items
}

/// The instruction of the JSON output that starts at `line`.
fn at_line(line: u64) -> Value {
    instructions()
        .into_iter()
        .find(|i| i["start_line"] == line)
        .unwrap_or_else(|| panic!("no instruction starts at line {line}"))
}

#[test]
fn directives_are_reported() {
    let df = parse("Dockerfile", DOCKERFILE).unwrap();
    assert_eq!(
        to_json(&df)["directives"],
        json!({"syntax": "docker/dockerfile:1.7", "escape": "\\", "check": "skip=JSONArgsRecommended"})
    );
    let df = parse("Dockerfile", "# escape=`\nFROM a\n").unwrap();
    assert_eq!(
        to_json(&df)["directives"],
        json!({"syntax": null, "escape": "`", "check": null})
    );
}

#[test]
fn every_instruction_kind_in_order() {
    let keywords: Vec<Value> = instructions()
        .iter()
        .map(|i| i["keyword"].clone())
        .collect();
    assert_eq!(
        keywords,
        json!([
            "arg",
            "from",
            "run",
            "run",
            "copy",
            "add",
            "env",
            "env",
            "label",
            "arg",
            "expose",
            "workdir",
            "user",
            "volume",
            "stopsignal",
            "shell",
            "healthcheck",
            "maintainer",
            "onbuild",
            "copy",
            "run",
            "cmd",
            "entrypoint"
        ])
        .as_array()
        .unwrap()
        .clone()
    );
}

#[test]
fn from_keeps_words_and_raw_flag() {
    assert_eq!(
        at_line(4),
        json!({
            "keyword": "from",
            "flags": ["--platform=$BUILDPLATFORM"],
            "args": ["${BASE}", "AS", "Build"],
            "heredocs": [],
            "start_line": 4,
            "end_line": 4,
        })
    );
}

#[test]
fn shell_form_is_one_string_without_continuations_or_comments() {
    let run = at_line(5);
    assert_eq!(
        run["flags"],
        json!(["--mount=type=cache,target=/root/.cache"])
    );
    assert_eq!(run["args"], json!(["apk add       curl"]));
    assert_eq!(
        (run["start_line"].clone(), run["end_line"].clone()),
        (json!(5), json!(8))
    );
    assert_eq!(at_line(9)["args"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(at_line(31)["args"], json!(["echo done"]));
    assert_eq!(at_line(32)["args"], json!(["/entry"]));
}

#[test]
fn copy_and_add_keep_quotes_and_flags_as_written() {
    let copy = at_line(10);
    assert_eq!(
        copy["flags"],
        json!(["--from=build", "--link", "--chmod=755"])
    );
    assert_eq!(copy["args"], json!(["\"a", "b.txt\"", "c.txt", "/dst/"]));
    assert_eq!(
        at_line(11)["args"],
        json!(["https://example.com/x.tgz", "/opt/"])
    );
}

#[test]
fn env_and_label_are_name_value_pairs_with_quotes() {
    assert_eq!(at_line(12)["args"], json!(["A", "\"one two\"", "B", "3"]));
    assert_eq!(at_line(13)["args"], json!(["LEGACY", "value with spaces"]));
    assert_eq!(
        at_line(14)["args"],
        json!(["org.opencontainers.image.title", "'kiln'", "version", "1"])
    );
    assert_eq!(at_line(15)["args"], json!(["TARGETARCH", "VERSION=1.0"]));
}

#[test]
fn single_string_and_word_list_instructions() {
    assert_eq!(at_line(16)["args"], json!(["80/tcp", "443"]));
    assert_eq!(at_line(17)["args"], json!(["/app"]));
    assert_eq!(at_line(18)["args"], json!(["app:app"]));
    assert_eq!(at_line(19)["args"], json!(["/data", "/cache"]));
    assert_eq!(at_line(20)["args"], json!(["SIGTERM"]));
    assert_eq!(at_line(21)["args"], json!(["/bin/bash", "-c"]));
    let healthcheck = at_line(22);
    assert_eq!(healthcheck["flags"], json!(["--interval=30s"]));
    assert_eq!(
        healthcheck["args"],
        json!(["CMD", "curl -f http://localhost/"])
    );
    assert_eq!(at_line(23)["args"], json!(["someone@example.com"]));
}

#[test]
fn onbuild_holds_its_trigger() {
    assert_eq!(
        at_line(24),
        json!({
            "keyword": "onbuild",
            "flags": [],
            "args": [],
            "heredocs": [],
            "start_line": 24,
            "end_line": 24,
            "trigger": {
                "keyword": "copy",
                "flags": ["--chown=1:1"],
                "args": [".", "/src"],
                "heredocs": [],
                "start_line": 24,
                "end_line": 24,
            }
        })
    );
}

#[test]
fn heredocs_with_bodies_and_expansion_flag() {
    let copy = at_line(25);
    assert_eq!(copy["args"], json!(["<<EOF", "/etc/motd"]));
    assert_eq!(
        copy["heredocs"],
        json!([{"name": "EOF", "content": "hello $USER\n", "expand": true}])
    );
    assert_eq!(copy["end_line"], json!(27));
    let run = at_line(28);
    assert_eq!(run["args"], json!(["<<-'SCRIPT' bash"]));
    assert_eq!(
        run["heredocs"],
        json!([{"name": "SCRIPT", "content": "echo $HOME\n", "expand": false}])
    );
    assert_eq!(run["end_line"], json!(30));
}
