//! Servers of build contexts on loopback: a static file server over HTTP and `git daemon`.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::http::read_head;

/// Serves the files of a directory over plain HTTP/1.1 on 127.0.0.1 (GET only; 404 for what
/// is not a file there); stopped when dropped.
pub struct FileServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    pub fn start(dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the file server");
        let addr = listener
            .local_addr()
            .expect("file server address")
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, stopping) = (dir.to_path_buf(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    // A client that hangs up only loses its own answer.
                    let _ = serve_file(&dir, stream);
                }
            }
        });
        FileServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
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

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("running git --exec-path");
        let exec_path = String::from_utf8(exec_path.stdout).expect("git's exec path");
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
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
