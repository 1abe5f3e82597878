//! Parser throughput (plain main; `cargo bench -p kiln-dockerfile --bench parse`): a generated
//! 10,000-instruction Dockerfile parsed by kiln and, in the same run, by the
//! `parse-dockerfile` crate as a peer.

use std::fmt::Write;
use std::time::{Duration, Instant};

const INSTRUCTIONS: usize = 10_000;
const RUNS: usize = 21;

/// A Dockerfile that mixes every common shape: stages, ARG/ENV/LABEL pairs, COPY with flags,
/// RUN with continuations and a comment inside, exec form, and a heredoc.
fn generate() -> String {
    let mut s =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM ${BASE} AS stage0\n");
    let mut n = 2;
    let mut stage = 0;
    while n < INSTRUCTIONS {
        let line = match n % 10 {
            0 => {
                stage += 1;
                format!("FROM ${{BASE}}:latest AS stage{stage}\n")
            }
            1 => format!("ENV A{n}=value{n} B{n}=\"two words\"\n"),
            2 => format!("LABEL org.example.n{n}=\"{n}\" other=x\n"),
            3 => format!("COPY --chown=1000:1000 --chmod=0644 src/file{n}.txt /app/dir{n}/\n"),
            4 => format!(
                "RUN set -e; \\\n    echo step {n} \\\n    # a comment inside\n    && touch /tmp/f{n}\n"
            ),
            5 => format!("ARG V{n}=${{BASE:-x}}\n"),
            6 => "CMD [\"sh\", \"-c\", \"echo hi\"]\n".to_string(),
            7 => format!("WORKDIR /app/w{n}\n"),
            8 => format!("RUN <<EOF\necho heredoc {n}\nEOF\n"),
            _ => format!("EXPOSE {}/tcp\n", 1000 + n % 5000),
        };
        s.push_str(&line);
        n += 1;
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    let mut v = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        f();
        v.push(start.elapsed());
    }
    median(v)
}

fn main() {
    let text = generate();
    let kiln_count = kiln_dockerfile::parse("Dockerfile", &text)
        .expect("kiln parses the generated file")
        .instructions
        .len();
    let peer_count = parse_dockerfile::parse(&text)
        .expect("the peer parses the generated file")
        .instructions
        .len();
    let kiln = time(|| {
        std::hint::black_box(
            kiln_dockerfile::parse("Dockerfile", std::hint::black_box(&text)).unwrap(),
        );
    });
    let peer = time(|| {
        std::hint::black_box(parse_dockerfile::parse(std::hint::black_box(&text)).unwrap());
    });
    let mut out = String::new();
    writeln!(
        out,
        "parse a {} KiB Dockerfile, median of {RUNS} runs:",
        text.len() / 1024
    )
    .unwrap();
    writeln!(
        out,
        "  kiln-dockerfile:  {:>8.2} ms ({kiln_count} instructions)",
        kiln.as_secs_f64() * 1e3
    )
    .unwrap();
    writeln!(
        out,
        "  parse-dockerfile: {:>8.2} ms ({peer_count} instructions)",
        peer.as_secs_f64() * 1e3
    )
    .unwrap();
    writeln!(
        out,
        "  ratio kiln / peer: {:.2}",
        kiln.as_secs_f64() / peer.as_secs_f64()
    )
    .unwrap();
    print!("{out}");
}
