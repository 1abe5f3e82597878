//! A real `docker-registry` (CNCF distribution 2.8) process on 127.0.0.1.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Another process may grab the port between our probe bind and the registry's bind.
const START_ATTEMPTS: usize = 5;

/// A real CNCF distribution registry serving plain HTTP on `127.0.0.1:<free port>`, with its
/// storage in a temporary directory. Dropping it kills the process and removes the storage.
pub struct Registry {
    child: Child,
    addr: String,
    // Dropped after `child` is killed (see `Drop`), which removes config, log and storage.
    workdir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: run scripts/install-deps.sh (Debian package docker-registry)"
        );
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start() {
                Ok(registry) => return registry,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "docker-registry did not start after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// The registry's `host:port`, e.g. `127.0.0.1:41234`, usable in image references.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The directory the registry stores blobs and manifests in (removed on drop).
    pub fn storage_dir(&self) -> PathBuf {
        self.workdir.path().join("storage")
    }

    fn try_start() -> Result<Registry, String> {
        let workdir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .map_err(|e| format!("creating the registry's temp dir: {e}"))?;
        let storage = workdir.path().join("storage");
        fs::create_dir(&storage).map_err(|e| format!("creating {}: {e}", storage.display()))?;
        let port = free_loopback_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config_path = workdir.path().join("config.yml");
        fs::write(&config_path, registry_config(&addr, &storage))
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log_path = workdir.path().join("registry.log");
        let log = fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log_for_stderr = log
            .try_clone()
            .map_err(|e| format!("cloning the log file handle: {e}"))?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .map_err(|e| format!("spawning {REGISTRY_BINARY}: {e}"))?;
        let mut registry = Registry {
            child,
            addr,
            workdir,
        };
        registry.wait_until_ready().map_err(|reason| {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            format!("{reason}\nregistry log:\n{log}")
        })?;
        Ok(registry)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_answer = String::from("no connection yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("docker-registry on {} exited: {status}", self.addr));
            }
            match http_get_status_line(&self.addr, "/v2/") {
                Ok(line) if line.split_whitespace().nth(1) == Some("200") => return Ok(()),
                Ok(line) => last_answer = line,
                Err(e) => last_answer = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "GET http://{}/v2/ did not answer 200 within {STARTUP_TIMEOUT:?} (last: {last_answer})",
            self.addr
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // The process may already be gone; either way it must be reaped before storage goes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_config(addr: &str, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n",
        storage.display()
    )
}

fn free_loopback_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading the bound port: {e}"))
}

/// Sends a bare HTTP/1.0 GET and returns the response's status line.
fn http_get_status_line(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    Ok(text.lines().next().unwrap_or_default().to_string())
}
