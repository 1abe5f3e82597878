use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use kiln_oci::{Descriptor, Digest, DigestReader, media};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, LOCATION,
    RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};

use crate::challenge::{Challenge, parse_challenge};
use crate::config::RegistryConfig;
use crate::credentials::{Credential, CredentialStore, Secret};
use crate::limits::{
    MAX_CONFIG_BYTES, MAX_ERROR_BYTES, MAX_MANIFEST_BYTES, MAX_TOKEN_BYTES, error_text,
    read_at_most,
};
use crate::retry::RetryPolicy;
use crate::tls;
use crate::{Reference, RegistryError, partial};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Token lifetime when the token service does not say (the distribution spec's default).
const DEFAULT_TOKEN_SECONDS: u64 = 60;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP. Loopback registries that
    /// do not speak TLS are spoken to over HTTP too, as the Docker engine does.
    pub insecure_registries: Vec<String>,
    /// Per-registry TLS, HTTP and mirror settings.
    pub config: RegistryConfig,
    /// Where credentials are looked up.
    pub credentials: CredentialStore,
    /// How often and how patiently failed requests are tried again.
    pub retry: RetryPolicy,
    /// Upload blobs in PATCHes of at most this many bytes (`None`: `DEFAULT_UPLOAD_CHUNK`).
    /// A dropped connection loses at most the piece in flight: distribution drops a piece
    /// that broke off part-way but keeps every piece it received whole. Smaller pieces lose
    /// less, at the cost of a request per piece.
    pub upload_chunk_size: Option<u64>,
    /// How long kiln waits for a connection and for data.
    pub timeouts: Timeouts,
}

impl ClientOptions {
    /// The files a client reads when it first reaches a registry, which may be long after it
    /// was made: certificates, client keys, the credential files and credential helpers.
    pub fn files(&self) -> Vec<PathBuf> {
        let tls = self.config.hosts.values().flat_map(|host| {
            host.ca.iter().cloned().chain(
                host.keypair
                    .iter()
                    .flat_map(|pair| [pair.cert.clone(), pair.key.clone()]),
            )
        });
        tls.chain(self.credentials.files().into_iter().map(Path::to_path_buf))
            .chain(self.credentials.helper_programs().map(Path::to_path_buf))
            .collect()
    }
}

/// How long kiln waits on a registry before the try counts as failed (and is retried as the
/// retry policy says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For a TCP connection (and TLS handshake) to be set up.
    pub connect: Duration,
    /// For an answer's head once a request is sent, and for each next piece of its body: a
    /// registry that stalls for this long is given up on, however long a download has run.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(60),
        }
    }
}

/// reqwest's blocking client has no timeout per write of a request body: its timeout covers
/// sending the whole body and reading the answer's head. So a PATCH may take the read timeout
/// plus its piece's time at this slow rate.
const SLOWEST_UPLOAD_BYTES_PER_SECOND: u64 = 64 << 10;

/// Redirects followed for one request, as browsers and Go's net/http do.
const MAX_REDIRECTS: usize = 10;

/// Large enough that the per-request cost vanishes next to the transfer, small enough that a
/// dropped connection costs seconds, not the whole layer.
pub const DEFAULT_UPLOAD_CHUNK: u64 = 64 << 20;

/// Read and write buffer for blob bodies: large enough that streaming a blob costs few
/// syscalls, small enough that several transfers at once stay well within memory bounds.
const TRANSFER_BUFFER: usize = 1 << 20;

/// How a blob came to be in a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobTransfer {
    /// The repository had it already.
    AlreadyPresent,
    /// The registry mounted it from another repository.
    Mounted,
    /// Its bytes were uploaded.
    Uploaded,
}

/// Why one try of a request failed, and whether trying again may help.
enum TryFailure {
    Transient {
        what: String,
        retry_after: Option<String>,
    },
    Fatal(RegistryError),
}

impl TryFailure {
    /// A transient answer (429, 5xx, ...), with the registry's message and `Retry-After`.
    fn transient_answer(resp: Response) -> TryFailure {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let what = format!("{} answered HTTP {}", resp.url(), resp.status().as_u16());
        let message = error_message(resp);
        TryFailure::Transient {
            what: format!("{what}: {message}"),
            retry_after,
        }
    }
}

impl From<RegistryError> for TryFailure {
    /// A connection that failed or stalled may work on the next try; every other error stays.
    fn from(e: RegistryError) -> TryFailure {
        match e {
            RegistryError::Unreachable { detail, .. } => TryFailure::Transient {
                what: detail,
                retry_after: None,
            },
            e @ RegistryError::Stalled { .. } => TryFailure::Transient {
                what: e.to_string(),
                retry_after: None,
            },
            e => TryFailure::Fatal(e),
        }
    }
}

/// What an error answer's body says, read up to `MAX_ERROR_BYTES` and shortened (see
/// [`error_text`]); a body that breaks off or stalls is shown as far as it came.
fn error_message(resp: Response) -> String {
    let mut body = Vec::new();
    let _ = resp.take(MAX_ERROR_BYTES).read_to_end(&mut body);
    error_text(&body)
}

/// Runs `work` on every item with up to `max_in_flight` items at once, and returns the first
/// error (items not yet started are then skipped).
pub fn each_in_parallel<T: Sync, E: Send>(
    items: &[T],
    max_in_flight: usize,
    work: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None);
    let workers = max_in_flight.clamp(1, items.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    if failed.lock().unwrap().is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { return };
                    if let Err(e) = work(item) {
                        failed.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The media type of a fetched manifest or index: the body's own `mediaType` wins over a
/// generic Content-Type header. `Err` holds the type found when it is neither a manifest's
/// nor an index's. Public (hidden) for the fuzz target.
#[doc(hidden)]
pub fn manifest_media_type(bytes: &[u8], content_type: Option<&str>) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let body_type = serde_json::from_slice::<Typed>(bytes)
        .ok()
        .and_then(|t| t.media_type);
    let header_type = content_type.map(|s| s.split(';').next().unwrap_or("").trim().to_string());
    let media_type = body_type.or(header_type).unwrap_or_default();
    if media::is_index(&media_type) || media::is_manifest(&media_type) {
        Ok(media_type)
    } else {
        Err(media_type)
    }
}

/// A manifest or index as fetched, with the digest of its exact bytes.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// How requests to one registry for one set of scopes are authorised: the `Authorization`
/// header, until when a token is valid.
#[derive(Clone)]
struct CachedAuth {
    header: HeaderValue,
    expires: Option<Instant>,
}

impl CachedAuth {
    fn basic(username: &str, password: &str) -> CachedAuth {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut header = HeaderValue::from_str(&format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        header.set_sensitive(true);
        CachedAuth {
            header,
            expires: None,
        }
    }
}

/// A blocking distribution-API client. Authorisation (basic or bearer) is cached per registry
/// and scope set, TLS clients per registry, and credentials per registry.
pub struct RegistryClient {
    insecure: HashSet<String>,
    config: RegistryConfig,
    credentials: CredentialStore,
    clients: Mutex<HashMap<String, Client>>,
    schemes: Mutex<HashMap<String, &'static str>>,
    auth: Mutex<HashMap<(String, String), CachedAuth>>,
    found_credentials: Mutex<HashMap<String, Option<Credential>>>,
    retry: RetryPolicy,
    upload_chunk_size: u64,
    timeouts: Timeouts,
    /// Directories whose stale partial downloads were removed already.
    swept: Mutex<HashSet<PathBuf>>,
    /// Told how blob transfers go, as the bytes move (a progress display).
    observer: Option<TransferObserver>,
}

/// How far one blob transfer has got.
#[derive(Clone, Copy, Debug)]
pub struct TransferProgress<'a> {
    pub digest: &'a Digest,
    /// Bytes moved so far (an upload resumed after a failure may go back).
    pub done: u64,
    pub total: u64,
    /// An upload (push) rather than a download (pull).
    pub upload: bool,
}

/// What a [`RegistryClient`] tells of its blob transfers.
pub type TransferObserver = Arc<dyn Fn(TransferProgress<'_>) + Send + Sync>;

/// A reader that tells `observer` how many bytes have passed, starting from `done`.
struct Observed<R> {
    inner: R,
    observer: TransferObserver,
    digest: Digest,
    done: u64,
    total: u64,
    upload: bool,
}

impl<R: Read> Read for Observed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.observer)(TransferProgress {
            digest: &self.digest,
            done: self.done,
            total: self.total,
            upload: self.upload,
        });
        Ok(n)
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Access {
    Pull,
    Push,
}

/// Whether `host` (`name`, `name:port`, `[v6]` or `[v6]:port`) is this machine: `localhost`,
/// or an address in 127.0.0.0/8 or `::1`, written as such. A name that merely starts with
/// `127.` is not.
fn is_loopback(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host` or `host:port` of a URL, as registries are named (`[v6]` for IPv6).
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Whether two URLs are on the same origin: scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Whether an answer sends the client elsewhere, to be asked again with the same method.
fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The challenges in a 401 answer's `WWW-Authenticate` headers: the first kiln can answer.
fn challenge_in(resp: &Response) -> Option<Challenge> {
    resp.headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_challenge)
}

/// Whether a read of an answer's body failed because nothing came for the read timeout.
fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

/// Every message in an error's chain, joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        detail = format!("{detail}: {s}");
        src = s.source();
    }
    detail
}

/// Whether a connection failed because we did not trust the registry's certificate, or the
/// registry did not accept ours; `None` for every other failure.
fn certificate_problem(detail: &str) -> Option<CertificateProblem> {
    if detail.contains("invalid peer certificate") {
        Some(CertificateProblem::Untrusted)
    } else if ["BadCertificate", "CertificateRequired", "UnknownCA"]
        .iter()
        .any(|alert| detail.contains(&format!("fatal alert: {alert}")))
    {
        Some(CertificateProblem::ClientRejected)
    } else {
        None
    }
}

enum CertificateProblem {
    Untrusted,
    ClientRejected,
}

impl RegistryClient {
    pub fn new(options: &ClientOptions) -> Result<RegistryClient, RegistryError> {
        Ok(RegistryClient {
            insecure: options.insecure_registries.iter().cloned().collect(),
            config: options.config.clone(),
            credentials: options.credentials.clone(),
            clients: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
            found_credentials: Mutex::new(HashMap::new()),
            retry: options.retry.clone(),
            upload_chunk_size: options
                .upload_chunk_size
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_UPLOAD_CHUNK),
            timeouts: options.timeouts,
            swept: Mutex::new(HashSet::new()),
            observer: None,
        })
    }

    /// The same client, telling `observer` how each blob upload and download goes.
    pub fn observing_transfers(self, observer: TransferObserver) -> RegistryClient {
        RegistryClient {
            observer: Some(observer),
            ..self
        }
    }

    /// `inner`, observed when there is an observer.
    fn observed<'a, R: Read + Send + 'a>(
        &self,
        inner: R,
        blob: &Descriptor,
        done: u64,
        upload: bool,
    ) -> Box<dyn Read + Send + 'a> {
        match &self.observer {
            Some(observer) => Box::new(Observed {
                inner,
                observer: Arc::clone(observer),
                digest: blob.digest.clone(),
                done,
                total: blob.size,
                upload,
            }),
            None => Box::new(inner),
        }
    }

    /// The HTTP client for `registry`, with its CAs, client certificates and verification
    /// setting; built once per registry. It follows no redirects: [`Self::execute`] does,
    /// deciding where credentials may go.
    fn http_for(&self, r: &Reference) -> Result<Client, RegistryError> {
        if let Some(client) = self.clients.lock().unwrap().get(&r.registry) {
            return Ok(client.clone());
        }
        let setup_error = |what: String, detail: String| RegistryError::TlsSetup {
            registry: r.registry.clone(),
            what,
            detail,
        };
        let read = |path: &Path| {
            fs::read(path).map_err(|e| setup_error(path.display().to_string(), e.to_string()))
        };
        // The blocking client's timeout bounds the wait for an answer's head and for each
        // read of its body: a read timeout, not a limit on a whole download.
        let mut builder = Client::builder()
            .connect_timeout(self.timeouts.connect)
            .timeout(self.timeouts.read)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
        let mut trusted = Vec::new();
        let mut identity = None;
        if let Some(host) = self.config.host(&r.registry) {
            for ca in &host.ca {
                let certs = tls::pem_certificates(&read(ca)?)
                    .map_err(|e| setup_error(ca.display().to_string(), e))?;
                trusted.extend(certs);
            }
            // rustls presents one client certificate: the last pair configured wins, as a
            // later setting overrides an earlier one.
            identity = host
                .keypair
                .last()
                .map(|pair| {
                    tls::identity(&read(&pair.cert)?, &read(&pair.key)?).map_err(|e| {
                        let files = format!("{} and {}", pair.cert.display(), pair.key.display());
                        setup_error(files, e)
                    })
                })
                .transpose()?;
        }
        let skip_verify = self.config.skips_tls_verify(&r.registry);
        let tls = tls::client_config(trusted, identity, skip_verify)
            .map_err(|e| setup_error("the TLS settings".into(), e.to_string()))?;
        builder = builder.use_preconfigured_tls(tls);
        let client = builder
            .build()
            .map_err(|e| setup_error("the HTTP client".into(), error_chain(&e)))?;
        self.clients
            .lock()
            .unwrap()
            .insert(r.registry.clone(), client.clone());
        Ok(client)
    }

    /// `http` or `https` for `r`'s registry. A loopback registry without settings is asked
    /// over TLS once and spoken to over HTTP if it does not speak TLS.
    fn scheme(&self, r: &Reference) -> Result<&'static str, RegistryError> {
        let host = r.api_host();
        if self.insecure.contains(host) || self.insecure.contains(&r.registry) {
            return Ok("http");
        }
        let settings = self.config.host(&r.registry);
        match settings.and_then(|h| h.http) {
            Some(true) => return Ok("http"),
            Some(false) => return Ok("https"),
            None => {}
        }
        // A CA or a client certificate says the registry speaks TLS. Skipping verification
        // does not: `--skip-tls-verify` is often passed for every registry of a job, and a
        // plain-HTTP loopback registry must stay reachable (the probe below skips verifying
        // too, so a self-signed one is still found to speak TLS).
        let has_tls_settings = settings.is_some_and(|h| !h.ca.is_empty() || !h.keypair.is_empty());
        if !(is_loopback(host) || self.config.http_fallback) || has_tls_settings {
            return Ok("https");
        }
        if let Some(scheme) = self.schemes.lock().unwrap().get(host) {
            return Ok(scheme);
        }
        let probe = self
            .http_for(r)?
            .get(format!("https://{host}/v2/"))
            .timeout(Duration::from_secs(15))
            .send();
        let scheme = match probe {
            Ok(_) => "https",
            Err(e) if certificate_problem(&error_chain(&e)).is_some() => {
                return Err(self.transport_error(r, e));
            }
            Err(_) => "http",
        };
        self.schemes
            .lock()
            .unwrap()
            .insert(host.to_string(), scheme);
        Ok(scheme)
    }

    fn base_url(&self, r: &Reference) -> Result<String, RegistryError> {
        let scheme = self.scheme(r)?;
        Ok(format!("{scheme}://{}/v2/{}", r.api_host(), r.repository))
    }

    /// The registry's own origin: the only one its credentials and tokens are sent to.
    fn origin(&self, r: &Reference) -> Result<Url, RegistryError> {
        let url = format!("{}://{}/", self.scheme(r)?, r.api_host());
        Url::parse(&url).map_err(|e| RegistryError::Unreachable {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            detail: format!("{url} is not a URL: {e}"),
        })
    }

    /// Whether the user lets kiln speak plain HTTP to the host of `url`: loopback, marked
    /// insecure (`--insecure-registry`, or `http = true` in the registry config), or found
    /// not to speak TLS where `http_fallback` allowed that.
    fn plain_http_allowed(&self, url: &Url) -> bool {
        let (host, named) = (url.host_str().unwrap_or_default(), authority(url));
        let fell_back = || {
            self.config.http_fallback
                && self.schemes.lock().unwrap().get(named.as_str()) == Some(&"http")
        };
        is_loopback(&named)
            || [host, named.as_str()].iter().any(|h| {
                self.insecure.contains(*h) || self.config.host(h).and_then(|c| c.http) == Some(true)
            })
            || fell_back()
    }

    /// Whether credentials may travel to `url`: over HTTPS, or plain HTTP where allowed.
    fn may_carry_credentials(&self, url: &Url) -> bool {
        match url.scheme() {
            "https" => true,
            "http" => self.plain_http_allowed(url),
            _ => false,
        }
    }

    fn scope(r: &Reference, access: &Access) -> String {
        match access {
            Access::Pull => format!("repository:{}:pull", r.repository),
            Access::Push => format!("repository:{}:pull,push", r.repository),
        }
    }

    fn transport_error(&self, r: &Reference, e: reqwest::Error) -> RegistryError {
        let detail = error_chain(&e);
        let (registry, repository) = (r.registry.clone(), r.repository.clone());
        if e.is_timeout() && !e.is_connect() {
            return RegistryError::Stalled {
                registry,
                repository,
                what: "an answer".into(),
                seconds: self.timeouts.read.as_secs(),
            };
        }
        match certificate_problem(&detail) {
            Some(CertificateProblem::Untrusted) => RegistryError::UntrustedCertificate {
                registry,
                repository,
                detail,
            },
            Some(CertificateProblem::ClientRejected) => RegistryError::ClientCertificateRejected {
                registry,
                repository,
                detail,
            },
            None => RegistryError::Unreachable {
                registry,
                repository,
                detail,
            },
        }
    }

    /// Where the credentials for `registry` come from, for messages: `credentials from file
    /// X` (or helper), `no credentials`, or why they could not be read.
    pub fn credential_source(&self, registry: &str) -> String {
        match self.credential(registry) {
            Ok(Some(found)) => format!("credentials from {}", found.source),
            Ok(None) => "no credentials".to_string(),
            Err(e) => format!("no usable credentials ({e})"),
        }
    }

    /// The credential for `registry`, looked up once per client.
    fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(found) = self.found_credentials.lock().unwrap().get(registry) {
            return Ok(found.clone());
        }
        let found = self.credentials.lookup(registry)?;
        self.found_credentials
            .lock()
            .unwrap()
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    /// The error for a registry or token service refusing us: which credentials were used
    /// and where they came from, or where none were found.
    fn auth_failed(&self, r: &Reference, credential: Option<&Credential>) -> RegistryError {
        match credential {
            Some(c) => RegistryError::BadCredentials {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                from: c.source.to_string(),
            },
            None => RegistryError::NoCredentials {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                searched: self
                    .credentials
                    .files()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        }
    }

    /// Checks that the token service `realm` (from the registry's challenge) may receive
    /// credentials: over HTTPS, or plain HTTP to loopback or a host marked insecure.
    fn check_realm(&self, r: &Reference, realm: &str) -> Result<(), RegistryError> {
        let refused = || RegistryError::PlainHttpRefused {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            url: realm.chars().take(200).collect(),
        };
        let url = Url::parse(realm).map_err(|_| refused())?;
        if self.may_carry_credentials(&url) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// Asks the token service `realm` for a token covering `scopes`, with the registry's
    /// credentials when there are any.
    fn fetch_token(
        &self,
        r: &Reference,
        http: &Client,
        (realm, service): (&str, Option<&str>),
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<CachedAuth, RegistryError> {
        if credential.is_some() {
            self.check_realm(r, realm)?;
        }
        let request = match credential.map(|c| &c.secret) {
            Some(Secret::IdentityToken(refresh)) => {
                let scope = scopes.join(" ");
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "kiln"),
                    ("scope", scope.as_str()),
                ];
                form.extend(service.map(|s| ("service", s)));
                http.post(realm).form(&form)
            }
            basic => {
                let mut query: Vec<(&str, &str)> =
                    scopes.iter().map(|s| ("scope", s.as_str())).collect();
                query.extend(service.map(|s| ("service", s)));
                let mut request = http.get(realm);
                if let Some(Secret::Basic { username, password }) = basic {
                    query.push(("account", username));
                    request = request.basic_auth(username, Some(password));
                }
                request.query(&query)
            }
        };
        let resp = request.send().map_err(|e| self.transport_error(r, e))?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.auth_failed(r, credential));
            }
            s if !s.is_success() => {
                return Err(RegistryError::Denied {
                    registry: r.registry.clone(),
                    repository: r.repository.clone(),
                    status: s.as_u16(),
                    message: format!("token service {realm} refused a token"),
                });
            }
            _ => {}
        }
        let bad_answer = |message: String| RegistryError::Http {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            action: "getting a token".into(),
            status: 200,
            message: format!("token service {realm} {message}"),
        };
        let bytes = self.read_body(r, resp, MAX_TOKEN_BYTES, "a token")?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad_answer(format!("sent something that is not JSON: {e}")))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad_answer("sent a token that cannot be sent back in a header".into()))?;
        header.set_sensitive(true);
        let seconds = body
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_TOKEN_SECONDS);
        // Renew a little early: the token's clock started when the service issued it.
        let lifetime = Duration::from_secs(seconds.min(1 << 32)).mul_f64(0.9);
        Ok(CachedAuth {
            header,
            expires: Some(Instant::now() + lifetime),
        })
    }

    /// Reads an answer's body, at most `limit` bytes; `what` names it in errors. A body
    /// that breaks off or stalls is an error the retry loops try again after.
    fn read_body(
        &self,
        r: &Reference,
        resp: Response,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            what: what.to_string(),
            limit,
        };
        let announced = resp.content_length();
        if announced.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        match read_at_most(resp, limit, announced) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(too_large()),
            Err(e) => Err(self.read_failure(r, what, &e)),
        }
    }

    /// The error for a body that could not be read: stalled, or broken off.
    fn read_failure(&self, r: &Reference, what: &str, e: &io::Error) -> RegistryError {
        if is_timeout(e) {
            RegistryError::Stalled {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                what: what.to_string(),
                seconds: self.timeouts.read.as_secs(),
            }
        } else {
            RegistryError::Unreachable {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                detail: format!("reading {what}: {e}"),
            }
        }
    }

    /// Sends a request for `access` to `r`'s repository. See [`Self::send_scoped`].
    fn send(
        &self,
        r: &Reference,
        access: Access,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.send_scoped(r, access, &[], build)
    }

    /// Sends a request built by `build`, authorised for `access` to `r`'s repository plus
    /// `extra_scopes` (e.g. `repository:src:pull` to mount a blob from another repository),
    /// trying again after connection errors and transient answers (408, 429, most 5xx) as the
    /// retry policy says. `build` is called for every try, so bodies start afresh.
    pub(crate) fn send_scoped(
        &self,
        r: &Reference,
        access: Access,
        extra_scopes: &[String],
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.with_retries(r, || {
            let resp = self.send_once(r, access, extra_scopes, &build)?;
            if RetryPolicy::retryable_status(resp.status().as_u16()) {
                return Err(TryFailure::transient_answer(resp));
            }
            Ok(resp)
        })
    }

    /// After failed try number `attempt`: waits as the policy (and the registry's
    /// `Retry-After`) says, or gives up when the policy's tries are used up.
    fn wait_or_give_up(
        &self,
        r: &Reference,
        attempt: u32,
        last: String,
        retry_after: Option<String>,
    ) -> Result<(), RegistryError> {
        if attempt >= self.retry.attempts.max(1) {
            return Err(RegistryError::RetriesExhausted {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                attempts: attempt,
                last,
            });
        }
        std::thread::sleep(self.retry.delay(attempt, retry_after.as_deref()));
        Ok(())
    }

    /// Runs `once` until it succeeds, fails for good, or the retry policy's tries are used
    /// up, waiting between tries as the policy (and the registry's `Retry-After`) says.
    fn with_retries<T>(
        &self,
        r: &Reference,
        mut once: impl FnMut() -> Result<T, TryFailure>,
    ) -> Result<T, RegistryError> {
        let mut attempt = 1;
        loop {
            match once() {
                Ok(found) => return Ok(found),
                Err(TryFailure::Fatal(e)) => return Err(e),
                Err(TryFailure::Transient { what, retry_after }) => {
                    self.wait_or_give_up(r, attempt, what, retry_after)?;
                    attempt += 1;
                }
            }
        }
    }

    /// Sends a request once (twice when a 401 challenge has to be answered). Uses cached
    /// authorisation while it is valid; on a 401 from the registry itself it answers the
    /// challenge (basic credentials, or a fresh bearer token) and sends the request again. A
    /// 401 from any other host (a redirect's, an upload `Location`'s) is an error: the
    /// registry's credentials never go there.
    fn send_once(
        &self,
        r: &Reference,
        access: Access,
        extra_scopes: &[String],
        build: &impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let http = self.http_for(r)?;
        let origin = self.origin(r)?;
        let mut scopes = vec![Self::scope(r, &access)];
        scopes.extend(extra_scopes.iter().cloned());
        let key = (r.registry.clone(), scopes.join(" "));
        let cached = {
            let mut cache = self.auth.lock().unwrap();
            let expired = cache
                .get(&key)
                .and_then(|a| a.expires)
                .is_some_and(|expires| expires <= Instant::now());
            if expired {
                cache.remove(&key);
            }
            cache.get(&key).cloned()
        };
        let send_with =
            |auth: Option<&CachedAuth>| self.execute(r, &http, &origin, build(&http), auth);
        let resp = send_with(cached.as_ref())?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        if !same_origin(resp.url(), &origin) {
            return Err(RegistryError::CredentialsWithheld {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                host: authority(resp.url()),
            });
        }
        let Some(challenge) = challenge_in(&resp) else {
            return Ok(resp);
        };
        let credential = self.credential(&r.registry)?;
        let auth = match challenge {
            Challenge::Basic => match credential.as_ref().map(|c| &c.secret) {
                Some(Secret::Basic { username, password }) => CachedAuth::basic(username, password),
                _ => return Err(self.auth_failed(r, credential.as_ref())),
            },
            Challenge::Bearer { realm, service } => self.fetch_token(
                r,
                &http,
                (&realm, service.as_deref()),
                &scopes,
                credential.as_ref(),
            )?,
        };
        self.auth.lock().unwrap().insert(key, auth.clone());
        let resp = send_with(Some(&auth))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.auth_failed(r, credential.as_ref()));
        }
        Ok(resp)
    }

    /// Sends `request`, following the redirects of GET and HEAD requests (registries send
    /// blob downloads to storage backends such as S3). `auth` goes only to the registry's
    /// own `origin`: never to another host, whether a redirect or an upload `Location` names
    /// it. Plain HTTP goes only to the registry (whose scheme was chosen already), loopback,
    /// and hosts marked insecure.
    fn execute(
        &self,
        r: &Reference,
        http: &Client,
        origin: &Url,
        request: RequestBuilder,
        auth: Option<&CachedAuth>,
    ) -> Result<Response, RegistryError> {
        let mut request = request.build().map_err(|e| self.transport_error(r, e))?;
        let mut redirects = 0;
        loop {
            let url = request.url();
            let at_registry = same_origin(url, origin);
            if !at_registry && !self.may_carry_credentials(url) {
                return Err(RegistryError::PlainHttpRefused {
                    registry: r.registry.clone(),
                    repository: r.repository.clone(),
                    url: url.as_str().chars().take(200).collect(),
                });
            }
            match auth.filter(|_| at_registry) {
                Some(auth) => request
                    .headers_mut()
                    .insert(AUTHORIZATION, auth.header.clone()),
                None => request.headers_mut().remove(AUTHORIZATION),
            };
            let again = matches!(*request.method(), Method::GET | Method::HEAD)
                .then(|| request.try_clone())
                .flatten();
            let resp = http
                .execute(request)
                .map_err(|e| self.transport_error(r, e))?;
            let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok());
            let (Some(again), Some(location)) = (again, location) else {
                return Ok(resp);
            };
            if !is_redirect(resp.status()) {
                return Ok(resp);
            }
            let bad = |message: String| RegistryError::Http {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                action: "following a redirect".into(),
                status: resp.status().as_u16(),
                message,
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(bad(format!("more than {MAX_REDIRECTS} redirects")));
            }
            let next = resp.url().join(location).map_err(|e| {
                let shown: String = location.chars().take(200).collect();
                bad(format!("bad Location `{shown}`: {e}"))
            })?;
            request = again;
            *request.url_mut() = next;
        }
    }

    /// Checks `username` and `password` against `registry` the way `docker login` does: the
    /// registry's `/v2/` endpoint with basic credentials, or a token request without scopes.
    pub fn verify_login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let r = Reference {
            registry: registry.to_string(),
            repository: "/v2/".to_string(),
            tag: None,
            digest: None,
        };
        let http = self.http_for(&r)?;
        let url = format!("{}://{}/v2/", self.scheme(&r)?, r.api_host());
        let send =
            |request: RequestBuilder| request.send().map_err(|e| self.transport_error(&r, e));
        let resp = send(http.get(&url))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let answer = match challenge_in(&resp) {
            Some(Challenge::Basic) => send(http.get(&url).basic_auth(username, Some(password)))?,
            Some(Challenge::Bearer { realm, service }) => {
                self.check_realm(&r, &realm)?;
                let mut query = vec![("account", username.to_string())];
                query.extend(service.map(|s| ("service", s)));
                send(
                    http.get(&realm)
                        .query(&query)
                        .basic_auth(username, Some(password)),
                )?
            }
            None => {
                return Err(RegistryError::LoginFailed {
                    registry: registry.to_string(),
                    detail: format!("{url} answered HTTP {} without a challenge", resp.status()),
                });
            }
        };
        if answer.status().is_success() {
            return Ok(());
        }
        Err(RegistryError::LoginFailed {
            registry: registry.to_string(),
            detail: format!(
                "{} refused user {username} (HTTP {})",
                answer.url(),
                answer.status().as_u16()
            ),
        })
    }

    /// Runs a pull operation against `r`'s mirrors in order, then against `r`'s registry
    /// unless fallback to it is switched off.
    fn pull_via_mirrors<T>(
        &self,
        r: &Reference,
        pull: impl Fn(&Reference) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mirrors = self
            .config
            .host(&r.registry)
            .map_or(&[][..], |h| h.mirrors.as_slice());
        let mut failures = Vec::new();
        for mirror in mirrors {
            let via_mirror = Reference {
                registry: mirror.clone(),
                ..r.clone()
            };
            match pull(&via_mirror) {
                Ok(found) => return Ok(found),
                Err(e) => failures.push(format!("{mirror}: {e}")),
            }
        }
        if !failures.is_empty() && self.config.no_origin_fallback {
            return Err(RegistryError::MirrorsFailed {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                failures: failures.join("; "),
            });
        }
        pull(r)
    }

    fn error_for(r: &Reference, action: &str, what: &str, resp: Response) -> RegistryError {
        let status = resp.status();
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                what: what.to_string(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                status: status.as_u16(),
                message: error_message(resp),
            },
            _ => RegistryError::Http {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                action: action.to_string(),
                status: status.as_u16(),
                message: error_message(resp),
            },
        }
    }

    /// GETs small content (a manifest, a config) into memory, at most `limit` bytes, trying
    /// again after connection errors, transient answers, and bodies that break off or stall.
    /// Returns the answer's Content-Type and body.
    fn get_small(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        limit: u64,
        (action, what): (&str, &str),
    ) -> Result<(Option<String>, Vec<u8>), RegistryError> {
        let build = |c: &Client| {
            let request = c.get(url);
            match accept {
                Some(types) => request.header(ACCEPT, types),
                None => request,
            }
        };
        self.with_retries(r, || {
            let resp = self.send_once(r, Access::Pull, &[], &build)?;
            if RetryPolicy::retryable_status(resp.status().as_u16()) {
                return Err(TryFailure::transient_answer(resp));
            }
            if !resp.status().is_success() {
                return Err(TryFailure::Fatal(Self::error_for(r, action, what, resp)));
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((content_type, self.read_body(r, resp, limit, what)?))
        })
    }

    /// Fetches the manifest or index `r` points to (by tag or digest), at most
    /// `MAX_MANIFEST_BYTES`. When `r` is pinned by digest, the bytes are checked against it.
    pub fn fetch_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        self.pull_via_mirrors(r, |r| self.fetch_manifest_from(r))
    }

    fn fetch_manifest_from(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base_url(r)?, r.target());
        let what = format!("the manifest `{}`", r.target());
        let (content_type, bytes) = self.get_small(
            r,
            &url,
            Some(MANIFEST_ACCEPT),
            MAX_MANIFEST_BYTES,
            ("fetching a manifest", &what),
        )?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = r.digest.as_ref().filter(|e| **e != digest) {
            return Err(RegistryError::DigestMismatch {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        let media_type =
            manifest_media_type(&bytes, content_type.as_deref()).map_err(|media_type| {
                RegistryError::UnsupportedMediaType {
                    registry: r.registry.clone(),
                    repository: r.repository.clone(),
                    media_type: media_type.chars().take(200).collect(),
                }
            })?;
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Streams a blob into `dest`, verifying size and digest on the way: nothing past the
    /// descriptor's size is written, and more is an error. The file appears at `dest` only
    /// when it matched; nothing is left behind otherwise.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        self.pull_via_mirrors(r, |r| self.fetch_blob_from(r, blob, dest))
    }

    fn fetch_blob_from(
        &self,
        r: &Reference,
        blob: &Descriptor,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        let dir = partial::parent(dest);
        if self.swept.lock().unwrap().insert(dir.to_path_buf()) {
            partial::remove_stale(dir);
        }
        // A download cut short starts again from the first byte, in a new partial file.
        let part = self.with_retries(r, || self.download_blob(r, blob, dest))?;
        part.persist(dest).map_err(|e| RegistryError::Io {
            context: format!("storing {}", dest.display()),
            source: e.error,
        })?;
        Ok(())
    }

    /// One try at streaming a blob into a partial file beside `dest`, checking its size and
    /// digest. A failed try's partial file is removed when it is dropped.
    fn download_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
        dest: &Path,
    ) -> Result<tempfile::NamedTempFile, TryFailure> {
        let too_long = || {
            TryFailure::Fatal(RegistryError::TooLarge {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                what: format!("blob {} (its descriptor's size)", blob.digest),
                limit: blob.size,
            })
        };
        let mut resp = self.blob_response(r, blob).map_err(TryFailure::Fatal)?;
        if resp.content_length().is_some_and(|n| n > blob.size) {
            return Err(too_long());
        }
        let io_err = |context: String| {
            move |source| TryFailure::Fatal(RegistryError::Io { context, source })
        };
        let part = partial::create(dest)
            .map_err(io_err(format!("creating a file beside {}", dest.display())))?;
        let what = format!("blob {}", blob.digest);
        let mut out = BufWriter::with_capacity(TRANSFER_BUFFER, part.as_file());
        let mut reader =
            DigestReader::new(self.observed((&mut resp).take(blob.size), blob, 0, false));
        let mut buf = vec![0; TRANSFER_BUFFER];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| self.read_failure(r, &what, &e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err(format!("writing {}", part.path().display())))?;
        }
        out.flush()
            .map_err(io_err(format!("writing {}", part.path().display())))?;
        drop(out);
        let (actual, size) = reader.finish();
        // One byte more than the descriptor's size is refused, unread past that byte.
        if size == blob.size {
            let mut extra = [0u8; 1];
            let more = resp
                .read(&mut extra)
                .map_err(|e| self.read_failure(r, &what, &e))?;
            if more > 0 {
                return Err(too_long());
            }
        }
        if actual != blob.digest || size != blob.size {
            return Err(TryFailure::Fatal(RegistryError::DigestMismatch {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                expected: blob.digest.clone(),
                actual,
            }));
        }
        Ok(part)
    }

    /// Starts downloading a blob; the caller verifies what it reads.
    fn blob_response(&self, r: &Reference, blob: &Descriptor) -> Result<Response, RegistryError> {
        let url = format!("{}/blobs/{}", self.base_url(r)?, blob.digest);
        let resp = self.send(r, Access::Pull, |c| c.get(&url))?;
        if !resp.status().is_success() {
            return Err(Self::error_for(
                r,
                "fetching a blob",
                &format!("blob {}", blob.digest),
                resp,
            ));
        }
        Ok(resp)
    }

    /// Fetches a small blob (an image config, at most `MAX_CONFIG_BYTES`) into memory,
    /// checking its size and digest.
    pub fn fetch_small_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        self.pull_via_mirrors(r, |r| self.fetch_small_blob_from(r, blob))
    }

    fn fetch_small_blob_from(
        &self,
        r: &Reference,
        blob: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {}", blob.digest);
        if blob.size > MAX_CONFIG_BYTES {
            return Err(RegistryError::TooLarge {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                what: format!("{what} (its descriptor says {} bytes)", blob.size),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let url = format!("{}/blobs/{}", self.base_url(r)?, blob.digest);
        let (_, bytes) = self.get_small(r, &url, None, blob.size, ("fetching a blob", &what))?;
        let actual = Digest::of(&bytes);
        if actual != blob.digest || bytes.len() as u64 != blob.size {
            return Err(RegistryError::DigestMismatch {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                expected: blob.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether the repository already has a blob.
    pub fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base_url(r)?);
        let resp = self.send(r, Access::Push, |c| c.head(&url))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::error_for(
                r,
                "checking a blob",
                &format!("blob {digest}"),
                resp,
            )),
        }
    }

    /// Uploads the blob held in `path` unless the repository has it already. Returns whether
    /// bytes were sent.
    pub fn push_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
        path: &Path,
    ) -> Result<bool, RegistryError> {
        let done = self.mount_or_push_blob(r, blob, path, None)?;
        Ok(done == BlobTransfer::Uploaded)
    }

    /// Makes sure `r`'s repository has the blob held in `path`: nothing to do when it is there
    /// already; a cross-repository mount when `from` is another repository on the same
    /// registry that holds it; an upload otherwise, or when the registry declines the mount.
    pub fn mount_or_push_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
        path: &Path,
        from: Option<&Reference>,
    ) -> Result<BlobTransfer, RegistryError> {
        self.transfer_blob(r, blob, path, from, || Ok(()))
    }

    /// Copies a blob from `source` into `target`'s repository: by a cross-repository mount
    /// when both are on the same registry, else (or when the registry declines the mount) by
    /// downloading it to `scratch` (a file, removed afterwards) and uploading it.
    pub fn copy_blob(
        &self,
        source: &Reference,
        target: &Reference,
        blob: &Descriptor,
        scratch: &Path,
    ) -> Result<BlobTransfer, RegistryError> {
        let done = self.transfer_blob(target, blob, scratch, Some(source), || {
            self.fetch_blob(source, blob, scratch)
        });
        let _ = fs::remove_file(scratch);
        done
    }

    /// The steps shared by pushes and copies; `fetch` puts the blob at `path` when it has to
    /// be uploaded.
    fn transfer_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
        path: &Path,
        from: Option<&Reference>,
        fetch: impl FnOnce() -> Result<(), RegistryError>,
    ) -> Result<BlobTransfer, RegistryError> {
        if self.blob_exists(r, &blob.digest)? {
            return Ok(BlobTransfer::AlreadyPresent);
        }
        let mount_from = from.filter(|f| f.registry == r.registry && f.repository != r.repository);
        let session = match mount_from {
            // A mount is only a shortcut: when the registry or its token service refuses it
            // (no pull access to the source, say), the blob is uploaded.
            Some(src) => match self.start_upload(r, Some((&blob.digest, src))) {
                Ok(None) => return Ok(BlobTransfer::Mounted),
                Ok(Some(declined)) => declined,
                Err(_) => self.open_upload(r)?,
            },
            None => self.open_upload(r)?,
        };
        fetch()?;
        self.upload(r, blob, path, session)?;
        Ok(BlobTransfer::Uploaded)
    }

    /// Checks that blobs can be pushed to `r`'s repository with the credentials found, as
    /// kaniko does before it builds: opens an upload session and cancels it. A refusal names
    /// the registry, the repository and where the credentials came from.
    pub fn check_push(&self, r: &Reference) -> Result<(), RegistryError> {
        let location = self.open_upload(r)?;
        // A registry that cannot cancel the session drops it when it expires.
        let _ = self.send_scoped(r, Access::Push, &[], |c| c.delete(location.clone()));
        Ok(())
    }

    /// Opens an upload session and returns its URL.
    fn open_upload(&self, r: &Reference) -> Result<Url, RegistryError> {
        Ok(self
            .start_upload(r, None)?
            .expect("a start without a mount always opens a session"))
    }

    /// Opens an upload session and returns its URL; with `mount`, asks the registry to mount
    /// the blob from another repository instead, and returns `None` when it did.
    fn start_upload(
        &self,
        r: &Reference,
        mount: Option<(&Digest, &Reference)>,
    ) -> Result<Option<Url>, RegistryError> {
        let mut start = format!("{}/blobs/uploads/", self.base_url(r)?);
        let mut extra_scopes = Vec::new();
        if let Some((digest, src)) = mount {
            start = format!("{start}?mount={digest}&from={}", src.repository);
            // The token must also allow reading the repository mounted from.
            extra_scopes.push(format!("repository:{}:pull", src.repository));
        }
        let resp = self.send_scoped(r, Access::Push, &extra_scopes, |c| {
            c.post(&start).header(CONTENT_LENGTH, "0")
        })?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(Self::upload_location(r, &resp)?)),
            _ => Err(Self::error_for(
                r,
                "starting a blob upload",
                "upload endpoint",
                resp,
            )),
        }
    }

    /// Where an upload continues, from an answer's `Location` (relative to the request).
    fn upload_location(r: &Reference, resp: &Response) -> Result<Url, RegistryError> {
        let bad = |message: String| RegistryError::Http {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            action: "uploading a blob".into(),
            status: resp.status().as_u16(),
            message,
        };
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("no Location header".into()))?;
        resp.url()
            .join(location)
            .map_err(|e| bad(format!("bad Location `{location}`: {e}")))
    }

    /// Streams the blob in `path` into the upload session at `location` (in pieces of the
    /// configured chunk size) and completes it. After a PATCH fails (a dropped connection, a
    /// transient answer), the upload goes on from what the registry says it received; when
    /// the registry gave up the session (distribution does when a PATCH broke off part-way),
    /// a new one starts. Gives up after the retry policy's tries without progress.
    fn upload(
        &self,
        r: &Reference,
        blob: &Descriptor,
        path: &Path,
        mut location: Url,
    ) -> Result<(), RegistryError> {
        let mut offset = 0;
        let mut failures = 0;
        while offset < blob.size {
            let end = blob.size.min(offset.saturating_add(self.upload_chunk_size));
            let (what, retry_after) = match self.patch_from(r, blob, path, &location, offset..end) {
                Ok(next) => {
                    location = next;
                    offset = end;
                    continue;
                }
                Err(TryFailure::Fatal(e)) => return Err(e),
                Err(TryFailure::Transient { what, retry_after }) => (what, retry_after),
            };
            failures += 1;
            self.wait_or_give_up(r, failures, what, retry_after)?;
            match self.upload_progress(r, &location)? {
                Some((received, at)) => {
                    if received > offset {
                        failures = 0;
                    }
                    (offset, location) = (received, at);
                }
                None => {
                    offset = 0;
                    location = self.open_upload(r)?;
                }
            }
        }
        let mut url = location;
        url.query_pairs_mut()
            .append_pair("digest", &blob.digest.to_string());
        let resp = self.send(r, Access::Push, |c| {
            c.put(url.clone()).header(CONTENT_LENGTH, "0")
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::error_for(
                r,
                "completing a blob upload",
                &format!("blob {}", blob.digest),
                resp,
            ));
        }
        Ok(())
    }

    /// One PATCH with the bytes `range` of `path`; returns where the upload continues.
    fn patch_from(
        &self,
        r: &Reference,
        blob: &Descriptor,
        path: &Path,
        location: &Url,
        range: std::ops::Range<u64>,
    ) -> Result<Url, TryFailure> {
        let offset = range.start;
        let io_err = |source| RegistryError::Io {
            context: format!("reading {}", path.display()),
            source,
        };
        let file = File::open(path)
            .map_err(io_err)
            .map_err(TryFailure::Fatal)?;
        let sent = self.send_once(r, Access::Push, &[], &|c: &Client| {
            let mut body_file = file.try_clone().expect("dup a file handle");
            // Clones share the offset: a request sent again after a 401 starts afresh.
            body_file
                .seek(SeekFrom::Start(offset))
                .expect("seek in a regular file");
            let piece = self.observed(body_file.take(range.end - offset), blob, offset, true);
            let body = reqwest::blocking::Body::sized(
                BufReader::with_capacity(TRANSFER_BUFFER, piece),
                range.end - offset,
            );
            let piece_time = (range.end - offset) / SLOWEST_UPLOAD_BYTES_PER_SECOND;
            c.patch(location.clone())
                .timeout(self.timeouts.read + Duration::from_secs(piece_time))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("{offset}-{}", range.end - 1))
                .body(body)
        });
        let resp = sent?;
        let status = resp.status();
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
            return Ok(Self::upload_location(r, &resp)?);
        }
        // A 416 means the registry holds a different amount than we thought: ask it.
        if RetryPolicy::retryable_status(status.as_u16())
            || status == StatusCode::RANGE_NOT_SATISFIABLE
        {
            return Err(TryFailure::transient_answer(resp));
        }
        Err(TryFailure::Fatal(Self::error_for(
            r,
            "uploading a blob",
            "upload session",
            resp,
        )))
    }

    /// How many bytes the upload session at `location` holds and where it continues; `None`
    /// when the registry no longer knows the session, or refuses to go on with it (400).
    fn upload_progress(
        &self,
        r: &Reference,
        location: &Url,
    ) -> Result<Option<(u64, Url)>, RegistryError> {
        let resp = self.send(r, Access::Push, |c| c.get(location.clone()))?;
        if matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
        ) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(Self::error_for(
                r,
                "checking a blob upload",
                "upload session",
                resp,
            ));
        }
        // `Range: 0-N` names the last byte held; distribution says `0-0` for an empty
        // session too, so that one is read as nothing held (a 416 then sets it right).
        let last = resp
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().trim_start_matches("bytes=").split_once('-'))
            .and_then(|(_, end)| end.trim().parse::<u64>().ok());
        let received = match last {
            Some(0) | None => 0,
            Some(end) => end + 1,
        };
        Ok(Some((received, Self::upload_location(r, &resp)?)))
    }

    /// Puts a manifest or index under `r`'s tag (or digest) and returns its digest.
    pub fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base_url(r)?, r.target());
        let resp = self.send(r, Access::Push, |c| {
            c.put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec())
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::error_for(
                r,
                "pushing a manifest",
                &format!("manifest `{}`", r.target()),
                resp,
            ));
        }
        Ok(Digest::of(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_means_loopback_addresses_and_localhost_only() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost",
            "LOCALHOST:80",
            "[::1]",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "registry.example:5000",
            "127.evil.example",
            "127.evil.example:5000",
            "127.0.0.1.nip.io",
            "localhost.example",
            "[::2]:5000",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(
            &url("https://r.example/v2/a"),
            &url("https://r.example:443/x")
        ));
        assert!(!same_origin(
            &url("https://r.example/"),
            &url("http://r.example/")
        ));
        assert!(!same_origin(
            &url("http://127.0.0.1:5000/"),
            &url("http://127.0.0.2:5000/")
        ));
        assert!(!same_origin(
            &url("http://127.0.0.1:5000/"),
            &url("http://127.0.0.1:5001/")
        ));
    }

    #[test]
    fn media_types_come_from_the_body_before_the_header() {
        let index = br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert_eq!(
            manifest_media_type(index, Some("application/json")).unwrap(),
            media::OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(
                b"{}",
                Some(&format!("{}; charset=utf-8", media::OCI_MANIFEST))
            )
            .unwrap(),
            media::OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(b"[]", Some("text/html")).unwrap_err(),
            "text/html"
        );
    }

    #[test]
    fn options_name_every_file_a_client_reads_later() {
        let mut options = ClientOptions::default();
        let host = options.config.host_mut("reg.example:5000");
        host.ca.push(PathBuf::from("/certs/ca.pem"));
        host.keypair.push(crate::KeyPair {
            key: PathBuf::from("/certs/client.key"),
            cert: PathBuf::from("/certs/client.pem"),
        });
        options.credentials.docker_config = PathBuf::from("/kiln/.docker/config.json");
        let files = options.files();
        for expected in [
            "/certs/ca.pem",
            "/certs/client.pem",
            "/certs/client.key",
            "/kiln/.docker/config.json",
        ] {
            assert!(
                files.contains(&PathBuf::from(expected)),
                "{expected}: {files:?}"
            );
        }
    }
}
