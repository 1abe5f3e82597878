use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_oci::{Descriptor, Digest, DigestReader, media};
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};

use crate::config::RegistryConfig;
use crate::credentials::{Credential, CredentialStore, Secret};
use crate::retry::RetryPolicy;
use crate::{Reference, RegistryError};

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
}

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
        let message: String = resp
            .text()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(400)
            .collect();
        TryFailure::Transient {
            what: format!("{what}: {message}"),
            retry_after,
        }
    }
}

impl From<RegistryError> for TryFailure {
    /// A connection that failed may work on the next try; every other error stays.
    fn from(e: RegistryError) -> TryFailure {
        match e {
            RegistryError::Unreachable { detail, .. } => TryFailure::Transient {
                what: detail,
                retry_after: None,
            },
            e => TryFailure::Fatal(e),
        }
    }
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

/// A manifest or index as fetched, with the digest of its exact bytes.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// How requests to one registry for one set of scopes are authorised.
#[derive(Clone)]
enum CachedAuth {
    Basic { username: String, password: String },
    Bearer { token: String, expires: Instant },
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
}

#[derive(Clone, Copy)]
pub(crate) enum Access {
    Pull,
    Push,
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

/// What a registry's `WWW-Authenticate` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The challenge in a 401 answer's `WWW-Authenticate` header, if it has one kiln can answer.
fn challenge_in(resp: &Response) -> Option<Challenge> {
    resp.headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge)
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v, t))
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        s = tail.trim_start_matches(',').trim();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
    })
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
        })
    }

    /// The HTTP client for `registry`, with its CAs, client certificates and verification
    /// setting; built once per registry.
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
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(None)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(self.config.skips_tls_verify(&r.registry));
        if let Some(host) = self.config.host(&r.registry) {
            for ca in &host.ca {
                let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
                    .map_err(|e| setup_error(ca.display().to_string(), error_chain(&e)))?;
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            for pair in &host.keypair {
                let mut pem = read(&pair.key)?;
                pem.push(b'\n');
                pem.extend(read(&pair.cert)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    setup_error(
                        format!("{} and {}", pair.cert.display(), pair.key.display()),
                        error_chain(&e),
                    )
                })?;
                builder = builder.identity(identity);
            }
        }
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
        let has_tls_settings = self.config.skips_tls_verify(&r.registry)
            || settings.is_some_and(|h| !h.ca.is_empty() || !h.keypair.is_empty());
        if !is_loopback(host) || has_tls_settings {
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
                return Err(Self::transport_error(r, e));
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

    fn scope(r: &Reference, access: &Access) -> String {
        match access {
            Access::Pull => format!("repository:{}:pull", r.repository),
            Access::Push => format!("repository:{}:pull,push", r.repository),
        }
    }

    fn transport_error(r: &Reference, e: reqwest::Error) -> RegistryError {
        let detail = error_chain(&e);
        let (registry, repository) = (r.registry.clone(), r.repository.clone());
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
        let resp = request.send().map_err(|e| Self::transport_error(r, e))?;
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
        let body: serde_json::Value = resp.json().map_err(|e| Self::transport_error(r, e))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let seconds = body
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_TOKEN_SECONDS);
        // Renew a little early: the token's clock started when the service issued it.
        let lifetime = Duration::from_secs(seconds).mul_f64(0.9);
        Ok(CachedAuth::Bearer {
            token,
            expires: Instant::now() + lifetime,
        })
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
    /// authorisation while it is valid; on a 401 it answers the challenge (basic credentials,
    /// or a fresh bearer token) and sends the request again.
    fn send_once(
        &self,
        r: &Reference,
        access: Access,
        extra_scopes: &[String],
        build: &impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let http = self.http_for(r)?;
        let mut scopes = vec![Self::scope(r, &access)];
        scopes.extend(extra_scopes.iter().cloned());
        let key = (r.registry.clone(), scopes.join(" "));
        let cached = {
            let mut cache = self.auth.lock().unwrap();
            let expired = matches!(cache.get(&key),
                Some(CachedAuth::Bearer { expires, .. }) if *expires <= Instant::now());
            if expired {
                cache.remove(&key);
            }
            cache.get(&key).cloned()
        };
        let send_with = |auth: Option<&CachedAuth>| {
            let request = build(&http);
            let request = match auth {
                Some(CachedAuth::Basic { username, password }) => {
                    request.basic_auth(username, Some(password))
                }
                Some(CachedAuth::Bearer { token, .. }) => request.bearer_auth(token),
                None => request,
            };
            request.send().map_err(|e| Self::transport_error(r, e))
        };
        let resp = send_with(cached.as_ref())?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(challenge) = challenge_in(&resp) else {
            return Ok(resp);
        };
        let credential = self.credential(&r.registry)?;
        let auth = match challenge {
            Challenge::Basic => match credential.as_ref().map(|c| &c.secret) {
                Some(Secret::Basic { username, password }) => CachedAuth::Basic {
                    username: username.clone(),
                    password: password.clone(),
                },
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
            |request: RequestBuilder| request.send().map_err(|e| Self::transport_error(&r, e));
        let resp = send(http.get(&url))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let answer = match challenge_in(&resp) {
            Some(Challenge::Basic) => send(http.get(&url).basic_auth(username, Some(password)))?,
            Some(Challenge::Bearer { realm, service }) => {
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
        let message = resp
            .text()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(400)
            .collect();
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
                message,
            },
            _ => RegistryError::Http {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                action: action.to_string(),
                status: status.as_u16(),
                message,
            },
        }
    }

    /// Fetches the manifest or index `r` points to (by tag or digest). When `r` is pinned by
    /// digest, the bytes are checked against it.
    pub fn fetch_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        self.pull_via_mirrors(r, |r| self.fetch_manifest_from(r))
    }

    fn fetch_manifest_from(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base_url(r)?, r.target());
        let resp = self.send(r, Access::Pull, |c| {
            c.get(&url).header(ACCEPT, MANIFEST_ACCEPT)
        })?;
        if !resp.status().is_success() {
            return Err(Self::error_for(
                r,
                "fetching a manifest",
                &format!("manifest `{}`", r.target()),
                resp,
            ));
        }
        let header_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let bytes = resp
            .bytes()
            .map_err(|e| Self::transport_error(r, e))?
            .to_vec();
        let digest = Digest::of(&bytes);
        if let Some(expected) = r.digest.as_ref().filter(|e| **e != digest) {
            return Err(RegistryError::DigestMismatch {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        // The body's own mediaType wins over a generic Content-Type header.
        let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
        let media_type = body_type.or(header_type).unwrap_or_default();
        if !media::is_index(&media_type) && !media::is_manifest(&media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                media_type,
            });
        }
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Streams a blob into `dest`, verifying size and digest on the way. The file appears at
    /// `dest` only when it matched; nothing is left behind otherwise.
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
        let tmp = dest.with_extension(format!("part-{}", std::process::id()));
        // A download cut short starts again from the first byte.
        let result = self.with_retries(r, || self.download_blob(r, blob, &tmp));
        let result = result.and_then(|()| {
            fs::rename(&tmp, dest).map_err(|source| RegistryError::Io {
                context: format!("storing {}", dest.display()),
                source,
            })
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// One try at streaming a blob into `tmp`, checking its size and digest.
    fn download_blob(
        &self,
        r: &Reference,
        blob: &Descriptor,
        tmp: &Path,
    ) -> Result<(), TryFailure> {
        let resp = self.blob_response(r, blob).map_err(TryFailure::Fatal)?;
        let io_err = |context: String| {
            move |source| TryFailure::Fatal(RegistryError::Io { context, source })
        };
        let file = File::create(tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let mut out = BufWriter::with_capacity(TRANSFER_BUFFER, file);
        let mut reader = DigestReader::new(resp);
        let mut buf = vec![0; TRANSFER_BUFFER];
        loop {
            let n = reader.read(&mut buf).map_err(|e| TryFailure::Transient {
                what: format!(
                    "downloading blob {} from {}/{}: {e}",
                    blob.digest, r.registry, r.repository
                ),
                retry_after: None,
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err(format!("writing {}", tmp.display())))?;
        }
        out.flush()
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        let (actual, size) = reader.finish();
        if actual != blob.digest || size != blob.size {
            return Err(TryFailure::Fatal(RegistryError::DigestMismatch {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                expected: blob.digest.clone(),
                actual,
            }));
        }
        Ok(())
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

    /// Fetches a small blob (an image config) into memory, checking its digest.
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
        let resp = self.blob_response(r, blob)?;
        let bytes = resp
            .bytes()
            .map_err(|e| Self::transport_error(r, e))?
            .to_vec();
        let actual = Digest::of(&bytes);
        if actual != blob.digest {
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
            let (what, retry_after) = match self.patch_from(r, path, &location, offset..end) {
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
            let piece = body_file.take(range.end - offset);
            let body = reqwest::blocking::Body::sized(
                BufReader::with_capacity(TRANSFER_BUFFER, piece),
                range.end - offset,
            );
            c.patch(location.clone())
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
    fn challenges_are_parsed() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="kiln-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example:5000"));
    }
}
