use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use kiln_oci::{Descriptor, Digest, DigestReader, media};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};

use crate::{Reference, RegistryError};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP. Loopback registries are
    /// always spoken to over HTTP, as the Docker engine does.
    pub insecure_registries: Vec<String>,
}

/// A manifest or index as fetched, with the digest of its exact bytes.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// A blocking distribution-API client. Bearer tokens are cached per registry and scope.
pub struct RegistryClient {
    http: Client,
    insecure: HashSet<String>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

enum Access {
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

fn parse_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v, t))
        };
        out.insert(key.trim().to_string(), value.to_string());
        s = tail.trim_start_matches(',').trim();
    }
    Some(out)
}

impl RegistryClient {
    pub fn new(options: &ClientOptions) -> Result<RegistryClient, RegistryError> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(None)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Io {
                context: "creating the HTTP client".into(),
                source: io::Error::other(e),
            })?;
        Ok(RegistryClient {
            http,
            insecure: options.insecure_registries.iter().cloned().collect(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn base_url(&self, r: &Reference) -> String {
        let host = r.api_host();
        let scheme = if self.insecure.contains(host)
            || self.insecure.contains(&r.registry)
            || is_loopback(host)
        {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    fn scope(r: &Reference, access: &Access) -> String {
        match access {
            Access::Pull => format!("repository:{}:pull", r.repository),
            Access::Push => format!("repository:{}:pull,push", r.repository),
        }
    }

    fn unreachable(r: &Reference, e: reqwest::Error) -> RegistryError {
        let mut detail = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            detail = format!("{detail}: {s}");
            src = s.source();
        }
        RegistryError::Unreachable {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            detail,
        }
    }

    /// Sends a request, answering a bearer challenge once (anonymous token) if the registry asks.
    fn send(
        &self,
        r: &Reference,
        access: Access,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let scope = Self::scope(r, &access);
        let key = (r.registry.clone(), scope.clone());
        let token = self.tokens.lock().unwrap().get(&key).cloned();
        let with_token = |t: &Option<String>| {
            let rb = build(&self.http);
            match t {
                Some(t) => rb.bearer_auth(t),
                None => rb,
            }
        };
        let resp = with_token(&token)
            .send()
            .map_err(|e| Self::unreachable(r, e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(challenge) = challenge else {
            return Ok(resp);
        };
        let realm = challenge.get("realm").cloned().unwrap_or_default();
        let mut query = vec![("scope", scope.clone())];
        if let Some(service) = challenge.get("service") {
            query.push(("service", service.clone()));
        }
        let token_resp = self
            .http
            .get(&realm)
            .query(&query)
            .send()
            .map_err(|e| Self::unreachable(r, e))?;
        if !token_resp.status().is_success() {
            return Err(RegistryError::Denied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                status: token_resp.status().as_u16(),
                message: format!("token service {realm} refused an anonymous token"),
            });
        }
        let body: serde_json::Value = token_resp.json().map_err(|e| Self::unreachable(r, e))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        self.tokens
            .lock()
            .unwrap()
            .insert(key, token.clone().unwrap_or_default());
        with_token(&token)
            .send()
            .map_err(|e| Self::unreachable(r, e))
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
        let url = format!("{}/manifests/{}", self.base_url(r), r.target());
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
        let bytes = resp.bytes().map_err(|e| Self::unreachable(r, e))?.to_vec();
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
        let resp = self.blob_response(r, blob)?;
        let io_err = |context: String| move |source| RegistryError::Io { context, source };
        let tmp = dest.with_extension(format!("part-{}", std::process::id()));
        let result = (|| {
            let mut out = BufWriter::new(
                File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?,
            );
            let mut reader = DigestReader::new(resp);
            io::copy(&mut reader, &mut out).map_err(io_err(format!(
                "downloading blob {} from {}/{}",
                blob.digest, r.registry, r.repository
            )))?;
            out.flush()
                .map_err(io_err(format!("writing {}", tmp.display())))?;
            let (actual, size) = reader.finish();
            if actual != blob.digest || size != blob.size {
                return Err(RegistryError::DigestMismatch {
                    registry: r.registry.clone(),
                    repository: r.repository.clone(),
                    expected: blob.digest.clone(),
                    actual,
                });
            }
            fs::rename(&tmp, dest).map_err(io_err(format!("storing {}", dest.display())))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Starts downloading a blob; the caller verifies what it reads.
    fn blob_response(&self, r: &Reference, blob: &Descriptor) -> Result<Response, RegistryError> {
        let url = format!("{}/blobs/{}", self.base_url(r), blob.digest);
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
        let resp = self.blob_response(r, blob)?;
        let bytes = resp.bytes().map_err(|e| Self::unreachable(r, e))?.to_vec();
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
        let url = format!("{}/blobs/{digest}", self.base_url(r));
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
        if self.blob_exists(r, &blob.digest)? {
            return Ok(false);
        }
        let start = format!("{}/blobs/uploads/", self.base_url(r));
        let resp = self.send(r, Access::Push, |c| {
            c.post(&start).header("Content-Length", "0")
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::error_for(
                r,
                "starting a blob upload",
                "upload endpoint",
                resp,
            ));
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Http {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                action: "starting a blob upload".into(),
                status: 202,
                message: "no Location header".into(),
            })?;
        let mut url = resp.url().join(location).map_err(|e| RegistryError::Http {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            action: "starting a blob upload".into(),
            status: 202,
            message: format!("bad Location `{location}`: {e}"),
        })?;
        url.query_pairs_mut()
            .append_pair("digest", &blob.digest.to_string());
        let open = || {
            File::open(path).map_err(|source| RegistryError::Io {
                context: format!("reading {}", path.display()),
                source,
            })
        };
        // The body is a file, which cannot be replayed: the token from the POST above is reused.
        let file = open()?;
        let resp = self.send(r, Access::Push, |c| {
            let body = reqwest::blocking::Body::sized(
                file.try_clone().expect("dup a file handle"),
                blob.size,
            );
            c.put(url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body)
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::error_for(
                r,
                "uploading a blob",
                &format!("blob {}", blob.digest),
                resp,
            ));
        }
        Ok(true)
    }

    /// Puts a manifest or index under `r`'s tag (or digest) and returns its digest.
    pub fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base_url(r), r.target());
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
    fn bearer_challenge_is_parsed() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#).unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:a/b:pull");
        assert!(parse_challenge("Basic realm=x").is_none());
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example:5000"));
    }
}
