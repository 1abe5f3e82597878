//! A real `docker-registry` (CNCF distribution 2.8) process on 127.0.0.1: plain HTTP, or TLS
//! with a test CA, with htpasswd basic auth or token auth if asked.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestCa;
use crate::token_server::{TOKEN_ISSUER, TOKEN_SERVICE, TokenRequest, TokenServer};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Another process may grab the port between our probe bind and the registry's bind.
const START_ATTEMPTS: usize = 5;

/// How a test registry is set up. `Default` is plain HTTP without authentication.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate for 127.0.0.1 from a CA made for this registry.
    pub tls: bool,
    /// Require this user and password (htpasswd, bcrypt). distribution needs `tls` for it.
    pub htpasswd: Option<(String, String)>,
    /// Require tokens from a test token server that grants what this user asks for.
    pub token_auth: Option<(String, String)>,
    /// Token lifetime in seconds (300 if unset).
    pub token_expires_in: Option<u64>,
    /// With `tls`: require a client certificate signed by the test CA (see
    /// [`Registry::client_cert`]).
    pub client_certs: bool,
    /// Serve HTTPS with this certificate and key (PEM paths) instead of one from a test CA.
    pub server_cert: Option<(PathBuf, PathBuf)>,
}

/// A real CNCF distribution registry on `127.0.0.1:<free port>`, with its storage in a
/// temporary directory. Dropping it kills the process and removes the storage.
pub struct Registry {
    child: Child,
    addr: String,
    tls: bool,
    // Dropped after `child` is killed (see `Drop`), which removes config, log and storage.
    workdir: tempfile::TempDir,
    setup: Setup,
}

/// What every start attempt shares and the registry reads while it runs: certificates,
/// password file, token server.
#[derive(Default)]
struct Setup {
    ca: Option<TestCa>,
    server_cert: Option<(PathBuf, PathBuf)>,
    client_cert: Option<(PathBuf, PathBuf)>,
    htpasswd: Option<tempfile::NamedTempFile>,
    token_server: Option<TokenServer>,
}

impl Registry {
    /// Starts a plain HTTP registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts a registry set up as `options` say and waits until it serves.
    pub fn start_with(options: RegistryOptions) -> Registry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: run scripts/install-deps.sh (Debian package docker-registry)"
        );
        let needs_ca = options.tls || options.token_auth.is_some();
        let ca = needs_ca.then(TestCa::new);
        let server_cert = ca
            .as_ref()
            .filter(|_| options.tls)
            .map(|ca| ca.issue_loopback_server())
            .map(|c| (c.cert_path, c.key_path))
            .or_else(|| options.server_cert.clone());
        let client_cert = ca
            .as_ref()
            .filter(|_| options.tls && options.client_certs)
            .map(|ca| ca.issue("client", &["kiln-test-client"]))
            .map(|c| (c.cert_path, c.key_path));
        let htpasswd = options.htpasswd.as_ref().map(|(user, password)| {
            let hash = bcrypt::hash(password, 4).expect("bcrypt-hashing the test password");
            let mut file = tempfile::NamedTempFile::new().expect("creating the htpasswd file");
            writeln!(file, "{user}:{hash}").expect("writing the htpasswd file");
            file
        });
        let token_server = options.token_auth.as_ref().map(|(user, password)| {
            let ca = ca.as_ref().expect("made above for token auth");
            TokenServer::start(ca, user, password, options.token_expires_in.unwrap_or(300))
        });
        let setup = Setup {
            ca,
            server_cert,
            client_cert,
            htpasswd,
            token_server,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&setup) {
                Ok(mut registry) => {
                    registry.setup = setup;
                    return registry;
                }
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

    /// The PEM file of the CA that signed the registry's certificate (TLS registries) and the
    /// token signing certificate (token auth).
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.setup.ca.as_ref().map(TestCa::ca_path)
    }

    /// The client certificate and key (PEM paths) a registry started with `client_certs`
    /// accepts.
    pub fn client_cert(&self) -> Option<(PathBuf, PathBuf)> {
        self.setup.client_cert.clone()
    }

    /// Every request the token server answered (empty without token auth).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.setup
            .token_server
            .as_ref()
            .map(TokenServer::requests)
            .unwrap_or_default()
    }

    /// Each blob the registry has served to a GET so far, by digest (`sha256:...`), with the
    /// bytes it sent, once per request, read from its access log.
    pub fn blob_gets_with_bytes(&self) -> Vec<(String, u64)> {
        let log = fs::read_to_string(self.workdir.path().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains("\"GET /v2/"))
            .filter_map(|line| {
                let start = line.find("/blobs/sha256:")? + "/blobs/".len();
                let digest = line.get(start..start + "sha256:".len() + 64)?.to_string();
                // Combined log format: `"GET ... HTTP/1.1" STATUS BYTES ...`.
                let after = &line[start + line[start..].find('"')? + 1..];
                let bytes = after.split_whitespace().nth(1)?.parse().unwrap_or(0);
                Some((digest, bytes))
            })
            .collect()
    }

    /// The digests of [`Registry::blob_gets_with_bytes`].
    pub fn blob_gets(&self) -> Vec<String> {
        self.blob_gets_with_bytes()
            .into_iter()
            .map(|(digest, _)| digest)
            .collect()
    }

    /// The directory the registry stores blobs and manifests in (removed on drop).
    pub fn storage_dir(&self) -> PathBuf {
        self.workdir.path().join("storage")
    }

    fn try_start(setup: &Setup) -> Result<Registry, String> {
        let workdir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .map_err(|e| format!("creating the registry's temp dir: {e}"))?;
        let storage = workdir.path().join("storage");
        fs::create_dir(&storage).map_err(|e| format!("creating {}: {e}", storage.display()))?;
        let port = free_loopback_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config_path = workdir.path().join("config.yml");
        fs::write(&config_path, registry_config(&addr, &storage, setup))
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
            tls: setup.server_cert.is_some(),
            workdir,
            setup: Setup::default(),
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
            // A TLS registry is ready once it accepts connections; a plain one once it
            // answers (401 when it wants credentials).
            if self.tls {
                match TcpStream::connect(&self.addr) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_answer = e.to_string(),
                }
            } else {
                match http_get_status_line(&self.addr, "/v2/") {
                    Ok(line) if matches!(line.split_whitespace().nth(1), Some("200" | "401")) => {
                        return Ok(());
                    }
                    Ok(line) => last_answer = line,
                    Err(e) => last_answer = e,
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the registry on {} was not ready within {STARTUP_TIMEOUT:?} (last: {last_answer})",
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

fn registry_config(addr: &str, storage: &Path, setup: &Setup) -> String {
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n",
        storage.display()
    );
    if let Some((cert, key)) = &setup.server_cert {
        config += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        if setup.client_cert.is_some() {
            let ca = setup
                .ca
                .as_ref()
                .expect("client certificates come from the CA");
            config += &format!("    clientcas:\n      - {}\n", ca.ca_path().display());
        }
    }
    if let Some(file) = &setup.htpasswd {
        config += &format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            file.path().display()
        );
    } else if let Some(server) = &setup.token_server {
        config += &format!(
            "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            server.realm(),
            server.root_cert_bundle.display()
        );
    }
    config
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
