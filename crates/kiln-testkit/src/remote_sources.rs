//! Servers of build contexts on loopback: a static file server over HTTP, `git daemon`, and
//! git's smart HTTP behind Basic auth.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::http::read_head;

/// An accept loop on 127.0.0.1 that hands each connection to a handler, one at a time;
/// stopped when dropped.
struct Listening {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listening {
    fn start(handle: impl Fn(TcpStream) -> std::io::Result<()> + Send + 'static) -> Listening {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test server");
        let addr = listener
            .local_addr()
            .expect("test server address")
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    // A client that hangs up only loses its own answer.
                    let _ = handle(stream);
                }
            }
        });
        Listening {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves the files of a directory over plain HTTP/1.1 on 127.0.0.1 (GET only; 404 for what
/// is not a file there); stopped when dropped.
pub struct FileServer {
    listening: Listening,
}

impl FileServer {
    pub fn start(dir: &Path) -> FileServer {
        let dir = dir.to_path_buf();
        FileServer {
            listening: Listening::start(move |stream| serve_file(&dir, stream)),
        }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        self.listening.url(path)
    }
}

fn serve_file(dir: &Path, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let name = head.target.trim_start_matches('/');
    let file = (!name.contains("..")).then(|| dir.join(name));
    let mut stream = stream;
    match file.filter(|f| head.method == "GET" && f.is_file()) {
        Some(file) => {
            let body = std::fs::read(file)?;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)
        }
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// git's smart HTTP (`git http-backend` as CGI) for every repository under a directory, on
/// 127.0.0.1, answering only requests with Basic auth of one user and password (401 with
/// `WWW-Authenticate: Basic realm="git"` otherwise, as a git host does); stopped when
/// dropped. Request bodies must come with a Content-Length (git sends one for the small
/// requests of the tests' repositories).
pub struct GitHttpServer {
    listening: Listening,
}

impl GitHttpServer {
    pub fn start(base: &Path, user: &str, password: &str) -> GitHttpServer {
        let backend = git_exec_path().join("git-http-backend");
        let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let (base, user) = (base.to_path_buf(), user.to_string());
        GitHttpServer {
            listening: Listening::start(move |stream| {
                serve_git(&backend, &base, &user, &expected, stream)
            }),
        }
    }

    /// `http://127.0.0.1:PORT/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        self.listening.url(repo)
    }
}

fn serve_git(
    backend: &Path,
    base: &Path,
    user: &str,
    expected: &str,
    stream: TcpStream,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut stream = stream;
    if head.header("Authorization") != Some(expected) {
        return stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let length: usize = head
        .header("Content-Length")
        .map_or(Ok(0), str::parse)
        .map_err(std::io::Error::other)?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let mut cgi = Command::new(backend);
    cgi.env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &head.method)
        .env("CONTENT_TYPE", head.header("Content-Type").unwrap_or(""))
        .env("CONTENT_LENGTH", length.to_string())
        .env("REMOTE_USER", user);
    // git compresses larger requests and asks for protocol v2 through these headers.
    for (header, var) in [
        ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        if let Some(value) = head.header(header) {
            cgi.env(var, value);
        }
    }
    let mut cgi = cgi
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // The backend reads the whole request before it answers.
    cgi.stdin.take().expect("piped stdin").write_all(&body)?;
    let output = cgi.wait_with_output()?;
    let out = output.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("git http-backend wrote no header block"))?;
    let cgi_head = String::from_utf8_lossy(&out[..split]);
    let mut status = "200 OK".to_string();
    let mut headers = String::new();
    for line in cgi_head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("Status") => {
                status = value.trim().to_string();
            }
            _ => headers.push_str(&format!("{line}\r\n")),
        }
    }
    let body = &out[split + 4..];
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)
}

/// The directory of git's own programs (`git --exec-path`).
fn git_exec_path() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("running git --exec-path");
    PathBuf::from(
        String::from_utf8(out.stdout)
            .expect("git's exec path")
            .trim(),
    )
}

/// `git daemon` serving every repository under `base` (`--export-all --base-path`) on a free
/// port of 127.0.0.1; stopped when dropped.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        let port = free_port();
        // git-daemon itself: `git daemon` would run it as a child that outlives a kill of
        // `git`.
        let child = Command::new(git_exec_path().join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // It reports each client that hangs up early, as the failing tests' clients do.
            .stderr(Stdio::null())
            .spawn()
            .expect("starting git daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        GitDaemon { child, port }
    }

    /// `git://127.0.0.1:PORT/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// Runs `git ARGS` in `dir` as a test author (no user config needed); panics on failure.
pub fn git_in(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=kiln test",
            "-c",
            "user.email=test@kiln.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `files` (path, content) under `dir`, making directories as needed.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("a file has a parent")).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir.to_path_buf()
}
