//! Help as a user reads it: `-h` a summary, `--help` the long text with examples, and man
//! pages that `man` renders.

mod common;

use std::process::Command;

use common::*;

/// Runs kiln with a throwaway store (help needs none, but kiln is always given one here).
fn kiln(args: &[&str]) -> std::process::Output {
    let root = tempfile::tempdir().unwrap();
    kiln_with_root(root.path(), args)
}

const BUILD_HEADINGS: [&str; 9] = [
    "Input:",
    "Output:",
    "Platforms:",
    "Attestations:",
    "Registries:",
    "Secrets:",
    "RUN steps:",
    "Progress:",
    "Cache:",
];

/// Lines the long help of `kiln build` shows as examples of a flag's syntax.
const EXAMPLES: [&str; 3] = [
    "-o type=oci,dest=app,tar=false",
    "--secret id=npmrc,src=$HOME/.npmrc",
    "--registry-certificate registry.internal:5000=",
];

#[test]
fn dash_h_is_a_summary_and_help_adds_the_examples() {
    let short = kiln(&["build", "-h"]);
    let long = kiln(&["build", "--help"]);
    assert_ok(&short);
    assert_ok(&long);
    let (short, long) = (stdout(&short), stdout(&long));
    for help in [&short, &long] {
        for heading in BUILD_HEADINGS {
            assert!(help.lines().any(|l| l == heading), "{heading}:\n{help}");
        }
    }
    assert!(
        short.lines().count() * 3 / 2 < long.lines().count(),
        "-h has {} lines, --help {}",
        short.lines().count(),
        long.lines().count()
    );
    assert!(short.contains("(see more with '--help')"), "{short}");
    for example in EXAMPLES {
        assert!(!short.contains(example), "-h shows {example}:\n{short}");
        assert!(
            long.lines().any(|l| l.trim_start().starts_with(example)),
            "--help lacks {example}:\n{long}"
        );
    }
}

/// `man -l PAGE` with the text on stdout: what a user reads, and what man complained about.
fn man(page: &std::path::Path) -> (String, String) {
    let o = run_tool(
        Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"),
    );
    (stdout(&o), stderr(&o))
}

#[test]
fn man_pages_cover_every_subcommand_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    assert_ok(&kiln(&["man", "--dir", pages.to_str().unwrap()]));

    let (top, complaints) = man(&pages.join("kiln.1"));
    assert_eq!(complaints, "");
    assert!(
        top.lines().any(|l| l.trim_start().starts_with("kiln ")),
        "{top}"
    );
    // Each subcommand the top page lists has its own page, and nested ones do too.
    let listed: Vec<&str> = top
        .lines()
        .filter_map(|l| l.trim().strip_suffix("(1)"))
        .filter(|name| name.starts_with("kiln-"))
        .collect();
    assert!(listed.len() >= 10, "{top}");
    for name in listed
        .iter()
        .chain(&["kiln-manifest-push", "kiln-imagetools-create"])
    {
        let (text, complaints) = man(&pages.join(format!("{name}.1")));
        assert_eq!(complaints, "", "{name}");
        let named = |l: &str| l.trim_start().starts_with(&format!("{name} "));
        assert!(text.lines().any(named), "{name}:\n{text}");
    }

    let (build, _) = man(&pages.join("kiln-build.1"));
    for flag in ["--push", "--registry-certificate <HOST=PATH>", "--platform"] {
        assert!(build.contains(flag), "{flag}:\n{build}");
    }
    // The long help, examples included, is what the page says.
    for example in EXAMPLES {
        assert!(build.contains(example), "{example}:\n{build}");
    }
}
