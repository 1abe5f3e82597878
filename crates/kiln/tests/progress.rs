//! `--progress`: the live `tty` display, driven on a real terminal (tmux) and read off its
//! screen, and buildx's `rawjson` events, parsed line by line.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use kiln_testkit::{Fault, FaultProxy, FaultRule, noise};

/// The lines of stderr that are JSON events (a failed build ends with kiln's report).
fn events(o: &std::process::Output) -> Vec<Value> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The vertexes of every event, in order.
fn vertexes(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter_map(|e| e["vertexes"].as_array())
        .flatten()
        .collect()
}

#[test]
fn rawjson_writes_buildxs_status_events_one_per_line() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo hello-json && echo second-line\n",
        )],
    );
    let out = env.path("out");
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress=rawjson", "-o"];
        let dest = format!("type=oci,dest={},tar=false", out.display());
        args.push(&dest);
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        env.kiln(&args)
    };
    let o = build(&[]);
    assert_ok(&o);
    // Every line of stderr is one event.
    for line in stderr(&o).lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            ["vertexes", "logs", "statuses", "warnings"]
                .iter()
                .any(|k| event.get(*k).is_some()),
            "{line}"
        );
    }
    let all = events(&o);
    let run: Vec<&Value> = vertexes(&all)
        .into_iter()
        .filter(|v| {
            v["name"]
                .as_str()
                .unwrap_or("")
                .contains("RUN echo hello-json")
        })
        .collect();
    assert_eq!(run.len(), 2, "started, then completed: {run:?}");
    let digest = run[0]["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"));
    assert!(run[0]["started"].is_string() && run[0]["completed"].is_null());
    assert_eq!(run[1]["digest"], digest);
    assert!(run[1]["started"].is_string() && run[1]["completed"].is_string());
    assert!(run[1]["error"].is_null() && run[1]["cached"].is_null());
    // The step's output, as base64 log data of its vertex on stream 1.
    let logs: String = all
        .iter()
        .filter_map(|e| e["logs"].as_array())
        .flatten()
        .filter(|l| l["vertex"] == digest)
        .map(|l| {
            assert_eq!(l["stream"], 1);
            assert!(l["timestamp"].is_string());
            let data = base64::engine::general_purpose::STANDARD
                .decode(l["data"].as_str().unwrap())
                .unwrap();
            String::from_utf8(data).unwrap()
        })
        .collect();
    assert_eq!(logs, "hello-json\nsecond-line\n");
    // kiln's other lines are statuses.
    assert!(
        all.iter()
            .filter_map(|e| e["statuses"].as_array())
            .flatten()
            .any(|s| s["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("build summary")),
        "{}",
        stderr(&o)
    );

    // Again: the step is a cached vertex.
    let o = build(&[]);
    assert_ok(&o);
    let all = events(&o);
    let cached: Vec<&Value> = vertexes(&all)
        .into_iter()
        .filter(|v| v["digest"] == digest)
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(cached[0]["cached"], true);
    assert!(cached[0]["started"].is_string() && cached[0]["completed"].is_string());

    // A failing step's vertex carries the error.
    let failing = env.context(
        "failing",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo about-to-fail && exit 3\n",
        )],
    );
    let o = env.kiln(&["build", "--progress=rawjson", failing.to_str().unwrap()]);
    assert_failed(&o);
    let all = events(&o);
    let failed = vertexes(&all)
        .into_iter()
        .find(|v| v["error"].is_string())
        .unwrap_or_else(|| panic!("no vertex with an error: {}", stderr(&o)));
    assert!(
        failed["name"]
            .as_str()
            .unwrap()
            .contains("RUN echo about-to-fail")
    );
    assert!(
        failed["error"].as_str().unwrap().contains("exit code 3"),
        "{failed}"
    );
}

/// A tmux session running one command on a 160x50 terminal, killed when dropped.
struct Terminal(String);

impl Terminal {
    fn start(name: &str, script: &Path) -> Terminal {
        let session = format!("kiln-{name}-{}", std::process::id());
        run_tool(Command::new("tmux").args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "50",
            &format!("sh {}", script.display()),
        ]));
        Terminal(session)
    }

    fn screen(&self) -> String {
        stdout(&run_tool(Command::new("tmux").args([
            "capture-pane",
            "-p",
            "-t",
            &self.0,
        ])))
    }

    /// The screen once `done` says it is what the test waits for (at most five minutes).
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn tty_shows_running_steps_live_and_collapses_finished_ones() {
    let env = Env::new();
    // The step sleeps long enough to be seen running.
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo live-line-1 && echo live-line-2 && sleep 3\n",
        )],
    );
    let script = env.path("build.sh");
    std::fs::write(
        &script,
        format!(
            "KILN_ROOT={root} {kiln} build --progress=tty -o type=oci,dest={out},tar=false {ctx}; \
             echo KILN-EXIT=$?; sleep 600\n",
            root = env.store().display(),
            kiln = env!("CARGO_BIN_EXE_kiln"),
            out = env.path("out").display(),
            ctx = ctx.display(),
        ),
    )
    .unwrap();
    let terminal = Terminal::start("tty", &script);
    // While the RUN step sleeps: its line with a running time, its last output lines under it.
    let running = terminal.wait_for("the running step and its output", |s| {
        s.contains("   | live-line-2") || s.contains("KILN-EXIT")
    });
    assert!(
        !running.contains("KILN-EXIT"),
        "never seen running:\n{running}"
    );
    let step = running
        .lines()
        .find(|l| l.contains("RUN echo live-line-1"))
        .unwrap_or_else(|| panic!("no running step line:\n{running}"));
    assert!(
        step.contains("00:00:0"),
        "elapsed time on the step's line: {step}"
    );
    assert!(
        running.contains("   | live-line-1") && running.contains("   | live-line-2"),
        "{running}"
    );

    // Finished: one line per step, the output gone, then the summary plain prints.
    let done = terminal.wait_for("the end of the build", |s| s.contains("KILN-EXIT"));
    assert!(done.contains("KILN-EXIT=0"), "{done}");
    let run_lines: Vec<&str> = done
        .lines()
        .filter(|l| l.contains("RUN echo live-line-1") || l.contains("live-line"))
        .collect();
    assert!(
        run_lines.iter().all(|l| !l.contains("   | ")),
        "output lines left on the final screen:\n{done}"
    );
    assert!(
        done.lines()
            .any(|l| l.contains("DONE") && l.starts_with('[')),
        "{done}"
    );
    assert!(
        done.contains("build summary: 1 steps ran, 0 cached"),
        "{done}"
    );
    // The summary plain prints, word for word.
    let plain = env.kiln(&[
        "build",
        "--progress=plain",
        "-o",
        &format!("type=oci,dest={},tar=false", env.path("out2").display()),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&plain);
    assert!(stderr(&plain).contains("build summary: 0 steps ran, 1 cached"));

    // A cached step is one CACHED line.
    let script2 = env.path("again.sh");
    std::fs::write(
        &script2,
        std::fs::read_to_string(&script)
            .unwrap()
            .replace("/out,", "/out3,"),
    )
    .unwrap();
    let terminal = Terminal::start("tty-again", &script2);
    let done = terminal.wait_for("the end of the cached build", |s| s.contains("KILN-EXIT"));
    assert!(
        done.lines()
            .any(|l| l.starts_with("CACHED [") && l.contains("RUN echo live-line-1")),
        "{done}"
    );
}

#[test]
fn transfers_show_their_bytes_live_on_a_tty_and_as_statuses_in_rawjson() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM $REG/busybox:latest\nCOPY big.bin /\n")],
    );
    std::fs::write(ctx.join("big.bin"), noise(8 << 20, 7)).unwrap();

    // rawjson: a status when each blob's upload starts and one when it ends.
    let name = env.tag("bytes-json:1");
    let o = env.kiln(&[
        "build",
        "--progress=rawjson",
        "--push",
        "-t",
        &name,
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let layer = &manifest(&name)["layers"][1];
    let id = layer["digest"].as_str().unwrap();
    let statuses: Vec<Value> = events(&o)
        .iter()
        .filter_map(|e| e["statuses"].as_array())
        .flatten()
        .filter(|s| s["id"] == id)
        .cloned()
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses[0]["name"], format!("pushing {id}"));
    assert_eq!(statuses[0]["total"], layer["size"]);
    assert!(statuses[0]["started"].is_string() && statuses[0]["completed"].is_null());
    assert_eq!(statuses[1]["current"], layer["size"]);
    assert!(statuses[1]["completed"].is_string());

    // tty: a fresh store pulls that image as a base, through a proxy that cuts the big
    // layer's download after 4 MiB and then answers 503 with Retry-After: 2, so its bar
    // stays up half way while kiln waits.
    let big = format!("/blobs/{id}");
    let proxy = FaultProxy::start(
        env.reg(),
        vec![
            FaultRule::new(Some("GET"), &big, Fault::CutAnswerAfterBytes(4 << 20), 1),
            FaultRule::new(
                Some("GET"),
                &big,
                Fault::Status {
                    status: 503,
                    retry_after: Some(2),
                },
                1,
            ),
        ],
    );
    let pulling = env.context(
        "pulling",
        &[(
            "Dockerfile",
            &format!("FROM {}/bytes-json:1\nRUN test -s /big.bin\n", proxy.addr()),
        )],
    );
    let script = env.path("pull.sh");
    std::fs::write(
        &script,
        format!(
            "KILN_ROOT={root} {kiln} build --progress=tty {ctx}; echo KILN-EXIT=$?; sleep 600\n",
            root = env.path("fresh-store").display(),
            kiln = env!("CARGO_BIN_EXE_kiln"),
            ctx = pulling.display(),
        ),
    )
    .unwrap();
    let terminal = Terminal::start("bytes", &script);
    let prefix = format!("pulling {}", &id[..19]);
    let during = terminal.wait_for("a pull with its bytes", |s| {
        s.contains(&prefix) || s.contains("KILN-EXIT")
    });
    let bar = during
        .lines()
        .find(|l| l.contains(&prefix))
        .unwrap_or_else(|| panic!("no pull bar:\n{during}"));
    assert!(bar.contains("/8.00 MiB"), "bytes of the total: {bar}");
    assert!(bar.contains("/s"), "a rate: {bar}");
    let done = terminal.wait_for("the end of the build", |s| s.contains("KILN-EXIT"));
    assert!(done.contains("KILN-EXIT=0"), "{done}");
    assert!(
        !done.contains("pulling sha256:"),
        "a bar left over:\n{done}"
    );
    assert_eq!(proxy.injected().len(), 2, "{:?}", proxy.injected());
}
