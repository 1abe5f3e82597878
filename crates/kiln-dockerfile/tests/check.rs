//! Lint rules: each one fires on the mistake and stays quiet on the fixed Dockerfile.

use kiln_dockerfile::{Finding, Level, check, parse};

fn findings(source: &str) -> Vec<Finding> {
    let df = parse("Dockerfile", source).unwrap_or_else(|e| panic!("{e}"));
    check(&df)
}

/// The findings of `rule` as (line, message).
fn of_rule(source: &str, rule: &str) -> Vec<(usize, String)> {
    findings(source)
        .into_iter()
        .filter(|f| f.rule == rule)
        .map(|f| (f.line, f.message))
        .collect()
}

/// Asserts `rule` fires exactly once, at `line`, with a message containing `needle`.
fn fires(source: &str, rule: &str, line: usize, needle: &str) {
    let found = of_rule(source, rule);
    assert!(
        found.len() == 1 && found[0].0 == line && found[0].1.contains(needle),
        "{rule}: expected one finding at line {line} mentioning {needle:?}, got {found:?}\n{source}"
    );
}

fn quiet(source: &str, rule: &str) {
    let found = of_rule(source, rule);
    assert!(found.is_empty(), "{rule} fired: {found:?}\n{source}");
}

#[test]
fn duplicate_stage_name() {
    fires(
        "FROM a AS build\nFROM b AS Build\n",
        "DuplicateStageName",
        2,
        "Duplicate stage name \"build\"",
    );
    quiet("FROM a AS build\nFROM b AS test\n", "DuplicateStageName");
}

#[test]
fn reserved_stage_name() {
    fires("FROM a AS scratch\n", "ReservedStageName", 1, "\"scratch\"");
    quiet("FROM a AS base\n", "ReservedStageName");
}

#[test]
fn from_platform_flag_const_disallowed() {
    fires(
        "FROM --platform=linux/amd64 alpine\n",
        "FromPlatformFlagConstDisallowed",
        1,
        "\"linux/amd64\"",
    );
    quiet(
        "FROM --platform=$BUILDPLATFORM alpine\n",
        "FromPlatformFlagConstDisallowed",
    );
    // Named after its platform: pinned on purpose.
    quiet(
        "FROM --platform=linux/arm64 alpine AS build-arm64\n",
        "FromPlatformFlagConstDisallowed",
    );
}

#[test]
fn redundant_target_platform() {
    fires(
        "FROM --platform=$TARGETPLATFORM alpine\n",
        "RedundantTargetPlatform",
        1,
        "redundant",
    );
    quiet(
        "FROM --platform=$BUILDPLATFORM alpine\n",
        "RedundantTargetPlatform",
    );
}

#[test]
fn undefined_var() {
    fires(
        "FROM a\nARG VERSION=1\nCOPY app-$VERSON.tar /\n",
        "UndefinedVar",
        3,
        "Usage of undefined variable '$VERSON' (did you mean $VERSION?)",
    );
    fires("FROM a\nENV X=$MISSING\n", "UndefinedVar", 2, "'$MISSING'");
    // Defined by ARG or ENV before, well known, automatic, guarded, or only in RUN (the
    // shell's business).
    quiet(
        "FROM a\nARG V=1\nENV E=2\nWORKDIR /$V/$E/$HOME/$PATH\nCOPY ${UNSET:-x} /\nRUN echo $ANYTHING\nENV Y=\\$LITERAL Z='$NOPE'\n",
        "UndefinedVar",
    );
}

#[test]
fn maintainer_deprecated() {
    fires(
        "FROM a\nMAINTAINER me@example.com\n",
        "MaintainerDeprecated",
        2,
        "deprecated",
    );
    quiet(
        "FROM a\nLABEL org.opencontainers.image.authors=me@example.com\n",
        "MaintainerDeprecated",
    );
}

#[test]
fn json_args_recommended() {
    fires(
        "FROM a\nCMD ./server --port 80\n",
        "JSONArgsRecommended",
        2,
        "JSON arguments recommended for CMD",
    );
    fires(
        "FROM a\nENTRYPOINT ./server\n",
        "JSONArgsRecommended",
        2,
        "for ENTRYPOINT",
    );
    quiet("FROM a\nCMD [\"./server\"]\n", "JSONArgsRecommended");
    // An explicit SHELL means the author chose shell form on purpose.
    quiet(
        "FROM a\nSHELL [\"/bin/bash\", \"-c\"]\nCMD ./server\n",
        "JSONArgsRecommended",
    );
}

#[test]
fn stage_name_casing_and_from_as_casing() {
    fires(
        "FROM a AS Build\n",
        "StageNameCasing",
        1,
        "'Build' should be lowercase",
    );
    quiet("FROM a AS build\n", "StageNameCasing");
    fires("FROM a as build\n", "FromAsCasing", 1, "'as' and 'FROM'");
    fires("from a AS build\n", "FromAsCasing", 1, "'AS' and 'from'");
    quiet("FROM a AS build\nfrom b as test\n", "FromAsCasing");
}

#[test]
fn undefined_arg_in_from() {
    fires(
        "ARG VERSION=3\nFROM alpine:$VERSON\n",
        "UndefinedArgInFrom",
        2,
        "FROM argument 'VERSON' is not declared (did you mean VERSION?)",
    );
    quiet(
        "ARG VERSION=3\nFROM --platform=$BUILDPLATFORM alpine:$VERSION\nFROM alpine:${TARGETARCH}\n",
        "UndefinedArgInFrom",
    );
}

#[test]
fn invalid_default_arg_in_from() {
    fires(
        "ARG TAG\nFROM alpine:${TAG}\n",
        "InvalidDefaultArgInFrom",
        2,
        "Default value for ARG alpine:${TAG} results in empty or invalid base image name",
    );
    fires(
        "ARG IMAGE\nFROM $IMAGE\n",
        "InvalidDefaultArgInFrom",
        2,
        "$IMAGE",
    );
    quiet(
        "ARG TAG=3.20\nARG IMAGE=alpine:${TAG}\nFROM $IMAGE AS base\nFROM ${BASE_STAGE:-base}\n",
        "InvalidDefaultArgInFrom",
    );
}

#[test]
fn consistent_instruction_casing() {
    fires(
        "FROM a\nRUN x\nrun y\nCOPY a b\n",
        "ConsistentInstructionCasing",
        3,
        "Command 'run' should match the case of the command majority (uppercase)",
    );
    fires(
        "from a\nRun x\n",
        "ConsistentInstructionCasing",
        2,
        "Command 'Run' should be consistently cased",
    );
    quiet("from a\nrun x\ncopy a b\n", "ConsistentInstructionCasing");
}

#[test]
fn multiple_instructions_disallowed() {
    let found = of_rule(
        "FROM a\nCMD [\"a\"]\nCMD [\"b\"]\nENTRYPOINT [\"e\"]\nHEALTHCHECK NONE\nHEALTHCHECK NONE\n",
        "MultipleInstructionsDisallowed",
    );
    let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![2, 5]);
    assert!(found[0].1.starts_with("Multiple CMD instructions"));
    // One per stage is fine.
    quiet(
        "FROM a\nCMD [\"a\"]\nFROM b\nCMD [\"b\"]\n",
        "MultipleInstructionsDisallowed",
    );
}

#[test]
fn workdir_relative_path() {
    fires(
        "FROM a\nWORKDIR app\n",
        "WorkdirRelativePath",
        2,
        "Relative workdir \"app\"",
    );
    quiet("FROM a\nWORKDIR /srv\nWORKDIR app\n", "WorkdirRelativePath");
    // The stage builds on one that set an absolute workdir.
    quiet(
        "FROM a AS base\nWORKDIR /srv\nFROM base\nWORKDIR app\n",
        "WorkdirRelativePath",
    );
}

#[test]
fn secrets_used_in_arg_or_env() {
    fires(
        "FROM a\nARG GITHUB_TOKEN\n",
        "SecretsUsedInArgOrEnv",
        2,
        "(ARG \"GITHUB_TOKEN\")",
    );
    fires(
        "FROM a\nENV DB_PASSWORD=x\n",
        "SecretsUsedInArgOrEnv",
        2,
        "(ENV \"DB_PASSWORD\")",
    );
    quiet(
        "FROM a\nARG KEYBOARD=us\nENV PUBLIC_KEY=x MONKEY=1\n",
        "SecretsUsedInArgOrEnv",
    );
}

#[test]
fn legacy_key_value_format() {
    fires(
        "FROM a\nENV PATH /opt/bin:$PATH\n",
        "LegacyKeyValueFormat",
        2,
        "\"ENV key=value\" should be used",
    );
    quiet("FROM a\nENV PATH=/opt/bin:$PATH\n", "LegacyKeyValueFormat");
}

#[test]
fn hardcoded_architecture() {
    fires(
        "FROM a\nRUN curl -fsSL https://example.com/v1/tool-linux-amd64.tar.gz | tar xz\n",
        "HardcodedArchitecture",
        2,
        "\"amd64\" in \"https://example.com/v1/tool-linux-amd64.tar.gz\"",
    );
    fires(
        "FROM a\nADD https://example.com/tool_aarch64.deb /tmp/\n",
        "HardcodedArchitecture",
        2,
        "\"aarch64\"",
    );
    fires(
        "FROM a\nRUN ln -s /usr/lib/x86_64-linux-gnu/libz.so /lib/\n",
        "HardcodedArchitecture",
        2,
        "\"x86_64\"",
    );
    quiet(
        "FROM a\nARG TARGETARCH\nRUN curl -fsSL https://example.com/tool-linux-${TARGETARCH}.tar.gz | tar xz\nRUN apt-get install -y gcc-aarch64-linux-gnu && dpkg --add-architecture arm64\n",
        "HardcodedArchitecture",
    );
}

#[test]
fn target_arch_without_arg() {
    fires(
        "FROM golang\nRUN GOARCH=$TARGETARCH go env GOARCH\n",
        "TargetArchWithoutArg",
        2,
        "$TARGETARCH is used but the stage has no `ARG TARGETARCH`",
    );
    // A global ARG is not visible inside the stage.
    fires(
        "ARG TARGETOS\nFROM a\nCOPY bin/${TARGETOS} /bin/\n",
        "TargetArchWithoutArg",
        3,
        "TARGETOS",
    );
    fires(
        "FROM a\nRUN <<EOF\necho $TARGETPLATFORM\nEOF\n",
        "TargetArchWithoutArg",
        2,
        "TARGETPLATFORM",
    );
    quiet(
        "FROM --platform=$BUILDPLATFORM golang\nARG TARGETARCH TARGETOS\nRUN GOOS=$TARGETOS GOARCH=$TARGETARCH go env\n",
        "TargetArchWithoutArg",
    );
    // Only the stage that declared it sees it.
    fires(
        "FROM a\nARG TARGETARCH\nFROM b\nRUN echo $TARGETARCH\n",
        "TargetArchWithoutArg",
        4,
        "TARGETARCH",
    );
}

#[test]
fn compiler_in_target_stage() {
    fires(
        "FROM golang:1.23 AS build\nRUN CGO_ENABLED=0 go build -o /app .\n",
        "CompilerInTargetStage",
        2,
        "`go build` runs in stage 'build', whose FROM has no --platform=$BUILDPLATFORM",
    );
    fires(
        "FROM rust\nRUN apt-get update && cargo build --release\n",
        "CompilerInTargetStage",
        2,
        "`cargo build`",
    );
    fires(
        "FROM node\nRUN npm ci\n",
        "CompilerInTargetStage",
        2,
        "`npm ci`",
    );
    quiet(
        "FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETOS TARGETARCH\nRUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /app .\n\
         FROM build AS test\nRUN go build ./...\nFROM alpine\nRUN apk add curl && go version\n",
        "CompilerInTargetStage",
    );
}

#[test]
fn check_directive_skips_rules() {
    let source = "# check=skip=JSONArgsRecommended,MaintainerDeprecated\nFROM a\nMAINTAINER me\nCMD run\nWORKDIR rel\n";
    let rules: Vec<&str> = findings(source).iter().map(|f| f.rule).collect();
    assert_eq!(rules, vec!["WorkdirRelativePath"]);
    assert!(findings("# check=skip=all\nFROM a\nMAINTAINER me\nCMD run\n").is_empty());
}

#[test]
fn warnings_unless_error_true() {
    let source = "FROM a\nMAINTAINER me\nCMD run\n";
    let levels: Vec<Level> = findings(source).iter().map(|f| f.level).collect();
    assert_eq!(levels, vec![Level::Warning, Level::Warning]);
    let strict = format!("# check=error=true\n{source}");
    let found = findings(&strict);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|f| f.level == Level::Error));
    assert_eq!(found[0].line, 3, "lines count the directive line");
}

#[test]
fn clean_multi_platform_dockerfile_has_no_findings() {
    let source = "# syntax=docker/dockerfile:1\n\
        ARG GO_VERSION=1.23\n\
        FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build\n\
        WORKDIR /src\n\
        ARG TARGETOS TARGETARCH\n\
        RUN --mount=type=cache,target=/root/.cache GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app .\n\
        FROM alpine:3.20\n\
        COPY --from=build /out/app /usr/local/bin/app\n\
        USER 65534\n\
        ENTRYPOINT [\"app\"]\n";
    let found = findings(source);
    assert!(found.is_empty(), "{found:#?}");
}
