use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_oci::Digest;
use kiln_registry::{TransferObserver, TransferProgress};
use serde_json::json;

use crate::Redactor;

/// How much of one step's output is printed, as BuildKit clips a step's log by default
/// (`BUILDKIT_STEP_LOG_MAX_SIZE`): a step must not flood the CI log. What the error of a
/// failing step quotes is its last lines, whatever was clipped.
pub const STEP_LOG_LIMIT: usize = 2 << 20;

/// How much the build prints, on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Steps, their times and the output of RUN steps; what CI logs want.
    Plain,
    /// Only errors.
    Quiet,
    /// A live display on a terminal (buildx's `tty`): running steps with their time and
    /// last output lines, finished ones as one line each. Off a terminal, `Plain`.
    Tty,
    /// buildx's `rawjson`: one JSON status event per line (vertexes, logs, statuses,
    /// warnings), for CI tools.
    RawJson,
}

impl ProgressMode {
    /// buildx's `--progress` values: `auto` is `tty` on a terminal, else `plain`.
    pub fn from_flag(value: &str) -> Option<ProgressMode> {
        Some(match value {
            "auto" if std::io::stderr().is_terminal() => ProgressMode::Tty,
            "auto" | "plain" => ProgressMode::Plain,
            "tty" => ProgressMode::Tty,
            "rawjson" => ProgressMode::RawJson,
            "quiet" => ProgressMode::Quiet,
            _ => return None,
        })
    }
}

/// How many of a running step's last output lines the live display shows.
const LIVE_LINES: usize = 4;

/// How each printed line looks: kiln's own text, with a timestamp in front, or one JSON object
/// (`level`, `msg`, `time`) per line, as kaniko's `--log-timestamp` and `--log-format=json`
/// print them for log collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStyle {
    pub json: bool,
    pub timestamps: bool,
}

/// Prints build steps as `[stage n/m] INSTRUCTION` with their times. Everything it prints,
/// in every mode, passes through its [`Redactor`].
pub struct Progress {
    mode: ProgressMode,
    redactor: Redactor,
    style: LogStyle,
    /// The live display (`Tty` on a terminal) or the event stream (`RawJson`), shared by
    /// every copy of this progress.
    display: Option<Arc<Mutex<Display>>>,
}

enum Display {
    Tty(Live),
    Json(Events),
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        let display = match mode {
            ProgressMode::Tty if std::io::stderr().is_terminal() => Some(Display::Tty(Live::new())),
            ProgressMode::RawJson => Some(Display::Json(Events::default())),
            _ => None,
        };
        Progress {
            mode: match mode {
                ProgressMode::Tty => ProgressMode::Plain,
                other => other,
            },
            redactor: Redactor::default(),
            style: LogStyle::default(),
            display: display.map(|d| Arc::new(Mutex::new(d))),
        }
    }

    /// The same progress, printing its lines in `style`.
    pub fn styled(self, style: LogStyle) -> Progress {
        Progress { style, ..self }
    }

    /// The same progress, hiding what `redactor` hides.
    pub fn redacting(&self, redactor: Redactor) -> Progress {
        Progress {
            mode: self.mode,
            redactor,
            style: self.style,
            display: self.display.clone(),
        }
    }

    /// Runs `f` on the live display or event stream, if there is one.
    fn on_display(&self, f: impl FnOnce(&mut Display)) -> bool {
        match &self.display {
            Some(display) => {
                f(&mut display.lock().unwrap_or_else(|e| e.into_inner()));
                true
            }
            None => false,
        }
    }

    fn line(&self, text: &str) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        let text = self.redactor.redact(text);
        let shown = self.on_display(|d| match d {
            Display::Tty(live) => live.println(&text),
            Display::Json(events) => events.status(&text),
        });
        if !shown {
            self.print("info", &text);
        }
    }

    fn print(&self, level: &str, text: &str) {
        let text = self.redactor.redact(text);
        let time = || crate::timefmt::rfc3339(crate::timefmt::now_secs());
        let line = match self.style {
            LogStyle { json: true, .. } => {
                serde_json::json!({"level": level, "msg": text, "time": time()}).to_string()
            }
            LogStyle {
                timestamps: true, ..
            } => format!("{} {text}", time()),
            LogStyle { .. } => text.into_owned(),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    pub fn step_start(&self, label: &str, instruction: &str) {
        let name = self
            .redactor
            .redact(&format!("{label} {instruction}"))
            .into_owned();
        let shown = self.on_display(|d| match d {
            Display::Tty(live) => live.start(label, &name),
            Display::Json(events) => events.vertex(label, &name, Vertex::Started),
        });
        if !shown {
            self.line(&name);
        }
    }

    /// A step whose result came from the cache, as buildx shows one.
    pub fn step_cached(&self, label: &str, instruction: &str) {
        let name = self
            .redactor
            .redact(&format!("{label} {instruction}"))
            .into_owned();
        let line = format!("CACHED {name}");
        let shown = self.on_display(|d| match d {
            Display::Tty(live) => live.println(&line),
            Display::Json(events) => events.vertex(label, &name, Vertex::Cached),
        });
        if !shown {
            self.line(&line);
        }
    }

    pub fn step_done(&self, label: &str, elapsed: Duration, note: &str) {
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        let outcome = format!("DONE {:.2}s{note}", elapsed.as_secs_f64());
        let outcome = self.redactor.redact(&outcome).into_owned();
        let line = format!("{label} {outcome}");
        let shown = self.on_display(|d| match d {
            Display::Tty(live) => live.finish(label, &outcome),
            Display::Json(events) => events.vertex(label, "", Vertex::Completed(None)),
        });
        if !shown {
            self.line(&line);
        }
    }

    /// A step that failed with `error` after `elapsed`.
    pub fn step_failed(&self, label: &str, elapsed: Duration, error: &str) {
        let error = self.redactor.redact(error).into_owned();
        let outcome = format!("ERROR {:.2}s", elapsed.as_secs_f64());
        let line = format!("{label} {outcome}");
        let shown = self.on_display(|d| match d {
            Display::Tty(live) => live.finish(label, &outcome),
            Display::Json(events) => events.vertex(label, "", Vertex::Completed(Some(&error))),
        });
        if !shown {
            self.line(&line);
        }
    }

    /// Where a RUN step's output lines go, up to [`STEP_LOG_LIMIT`].
    pub(crate) fn step_log<'p>(&'p self, label: &'p str) -> StepLog<'p> {
        StepLog {
            progress: self,
            label,
            printed: 0,
        }
    }

    /// A sub-task of the current step (pulling, extracting, pushing).
    pub fn detail(&self, text: &str) {
        self.line(&format!("  - {text}"));
    }

    pub fn info(&self, text: &str) {
        self.line(text);
    }

    /// What a registry client tells of its blob transfers: the live display shows each
    /// with its bytes and rate, `rawjson` as statuses when it starts and ends (`None` in the
    /// other modes, which print a line per blob when it is done).
    pub fn transfer_observer(&self) -> Option<TransferObserver> {
        let display = self.display.clone()?;
        Some(Arc::new(move |t: TransferProgress<'_>| {
            let mut display = display.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *display {
                Display::Tty(live) => live.transfer(t),
                Display::Json(events) => events.transfer(t),
            }
        }))
    }

    /// Something the user should act on; printed in every mode, `--progress=quiet` too.
    pub fn warning(&self, text: &str) {
        let redacted = self.redactor.redact(text);
        if self.on_display(|d| match d {
            Display::Tty(live) => live.println(&format!("[warning] {redacted}")),
            Display::Json(events) => events.warning(&redacted),
        }) {
            return;
        }
        if self.style.json {
            self.print("warning", text);
        } else {
            self.print("warning", &format!("[warning] {text}"));
        }
    }
}

/// The printed output of one RUN step.
pub(crate) struct StepLog<'p> {
    progress: &'p Progress,
    label: &'p str,
    /// Bytes of output printed so far; past the limit, nothing more is.
    printed: usize,
}

impl StepLog<'_> {
    pub fn line(&mut self, text: &str) {
        if self.printed > STEP_LOG_LIMIT {
            return;
        }
        if self.progress.mode != ProgressMode::Quiet {
            let text = self.progress.redactor.redact(text);
            let label = self.label;
            if self.progress.on_display(|d| match d {
                Display::Tty(live) => live.log(label, &text),
                Display::Json(events) => events.log(label, &text),
            }) {
                self.printed += text.len() + 1;
                return;
            }
        }
        self.printed += text.len() + 1;
        if self.printed > STEP_LOG_LIMIT {
            self.progress.line(&format!(
                "{}   | [output clipped, log limit {} MiB reached]",
                self.label,
                STEP_LOG_LIMIT >> 20
            ));
            return;
        }
        self.progress.line(&format!("{}   | {text}", self.label));
    }
}

/// The live display: a spinner line per running step (its elapsed time, then its last
/// output lines under it); a finished step becomes one printed line.
struct Live {
    bars: MultiProgress,
    /// Each running step's bar, its name and its last output lines, by label.
    running: BTreeMap<String, Running>,
    /// A bar per blob being pushed or pulled, by digest.
    transfers: BTreeMap<String, ProgressBar>,
}

struct Running {
    bar: ProgressBar,
    name: String,
    last: VecDeque<String>,
}

impl Live {
    fn new() -> Live {
        Live {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            running: BTreeMap::new(),
            transfers: BTreeMap::new(),
        }
    }

    fn println(&self, line: &str) {
        // Off a terminal indicatif prints nothing; the display only exists on one.
        let _ = self.bars.println(line);
    }

    fn start(&mut self, label: &str, name: &str) {
        let bar = self.bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise}{msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        let running = Running {
            bar,
            name: name.to_string(),
            last: VecDeque::new(),
        };
        self.running.insert(label.to_string(), running);
    }

    fn log(&mut self, label: &str, line: &str) {
        if let Some(running) = self.running.get_mut(label) {
            if running.last.len() == LIVE_LINES {
                running.last.pop_front();
            }
            running.last.push_back(line.to_string());
            let lines: String = running.last.iter().map(|l| format!("\n   | {l}")).collect();
            running.bar.set_message(lines);
        }
    }

    /// A blob's bar, made at its first bytes and gone when they are all there.
    fn transfer(&mut self, t: TransferProgress<'_>) {
        let key = t.digest.to_string();
        if t.done >= t.total {
            if let Some(bar) = self.transfers.remove(&key) {
                bar.finish_and_clear();
                self.bars.remove(&bar);
            }
            return;
        }
        let bars = &self.bars;
        let bar = self.transfers.entry(key).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(t.total));
            bar.set_style(
                ProgressStyle::with_template(
                    "  {prefix} {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed_precise}",
                )
                .expect("a valid template"),
            );
            let short = &t.digest.hex()[..12];
            let verb = if t.upload { "pushing" } else { "pulling" };
            bar.set_prefix(format!("{verb} sha256:{short}"));
            // Redrawn while a retry waits, too.
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        bar.set_position(t.done);
    }

    /// The step is over: its bar goes, and one line says how it ended (`outcome`).
    fn finish(&mut self, label: &str, outcome: &str) {
        match self.running.remove(label) {
            Some(running) => {
                running.bar.finish_and_clear();
                self.bars.remove(&running.bar);
                self.println(&format!("{} {outcome}", running.name));
            }
            None => self.println(&format!("{label} {outcome}")),
        }
    }
}

/// The display ends with the build, whichever way: steps still running (another
/// platform's, when one failed) are cleared, and the printed lines stay.
impl Drop for Live {
    fn drop(&mut self) {
        for (_, running) in std::mem::take(&mut self.running) {
            running.bar.finish_and_clear();
        }
        for (_, bar) in std::mem::take(&mut self.transfers) {
            bar.finish_and_clear();
        }
        let _ = self.bars.clear();
    }
}

/// buildx's `rawjson` events, one JSON object per line on stderr.
#[derive(Default)]
struct Events {
    /// When each step started (RFC 3339) and its name.
    started: BTreeMap<String, (String, String)>,
    /// When each blob transfer under way started, by digest.
    transfers: BTreeMap<String, String>,
}

enum Vertex<'a> {
    Started,
    Cached,
    Completed(Option<&'a str>),
}

impl Events {
    fn emit(&self, event: serde_json::Value) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{event}");
    }

    fn now() -> String {
        crate::timefmt::rfc3339(crate::timefmt::now_secs())
    }

    /// A step's vertex digest: stable for its label, as BuildKit's is for its operation.
    fn digest(label: &str) -> String {
        Digest::of(label.as_bytes()).to_string()
    }

    fn vertex(&mut self, label: &str, name: &str, state: Vertex<'_>) {
        let now = Self::now();
        let digest = Self::digest(label);
        let mut vertex = json!({"digest": digest, "name": name});
        match state {
            Vertex::Started => {
                vertex["started"] = json!(now);
                self.started
                    .insert(label.to_string(), (now, name.to_string()));
            }
            Vertex::Cached => {
                vertex["started"] = json!(now);
                vertex["completed"] = json!(now);
                vertex["cached"] = json!(true);
            }
            Vertex::Completed(error) => {
                if let Some((started, name)) = self.started.remove(label) {
                    vertex["started"] = json!(started);
                    vertex["name"] = json!(name);
                }
                vertex["completed"] = json!(now);
                if let Some(error) = error {
                    vertex["error"] = json!(error);
                }
            }
        }
        self.emit(json!({"vertexes": [vertex]}));
    }

    fn log(&self, label: &str, line: &str) {
        let data = base64::engine::general_purpose::STANDARD.encode(format!("{line}\n"));
        self.emit(json!({"logs": [{
            "vertex": Self::digest(label),
            "stream": 1,
            "data": data,
            "timestamp": Self::now(),
        }]}));
    }

    fn warning(&self, text: &str) {
        let short = base64::engine::general_purpose::STANDARD.encode(text);
        self.emit(json!({"warnings": [{"level": 1, "short": short}]}));
    }

    /// A blob transfer's status, when it starts and when it ends.
    fn transfer(&mut self, t: TransferProgress<'_>) {
        let id = t.digest.to_string();
        let now = Self::now();
        let name = format!("{} {id}", if t.upload { "pushing" } else { "pulling" });
        let mut status =
            json!({"id": id, "name": name, "total": t.total, "current": t.done, "timestamp": now});
        if t.done >= t.total {
            let started = self.transfers.remove(&id).unwrap_or_else(|| now.clone());
            status["started"] = json!(started);
            status["completed"] = json!(now);
        } else if let std::collections::btree_map::Entry::Vacant(entry) = self.transfers.entry(id) {
            status["started"] = json!(now);
            entry.insert(now);
        } else {
            return;
        }
        self.emit(json!({"statuses": [status]}));
    }

    fn status(&self, text: &str) {
        let now = Self::now();
        self.emit(json!({"statuses": [{
            "id": text,
            "name": text,
            "timestamp": now,
            "started": now,
            "completed": now,
        }]}));
    }
}
