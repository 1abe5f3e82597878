//! Registry credentials as docker and podman store them: `config.json` / `auth.json` files
//! (`auths` entries) and `docker-credential-<name>` helpers (`credHelpers`, `credsStore`).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::reference::DOCKER_HUB;

/// The key docker uses for Docker Hub in config files and with credential helpers.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a registry accepts as proof of identity.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A user name and password (or personal access token), sent as HTTP basic credentials.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token service.
    IdentityToken(String),
}

impl fmt::Debug for Secret {
    // Secrets never reach logs or panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Secret::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// Where a credential came from, named in error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    File(PathBuf),
    Helper(String),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::File(p) => write!(f, "file {}", p.display()),
            CredentialSource::Helper(h) => write!(f, "helper {h}"),
        }
    }
}

/// A credential for one registry and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub secret: Secret,
    pub source: CredentialSource,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read credentials file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("credentials file {} is not valid: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
    #[error("credential helper {helper} failed for {server}: {detail}")]
    Helper {
        helper: String,
        server: String,
        detail: String,
    },
    #[error("cannot write credentials file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The credential files kiln reads, in order, and the one `login` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialStore {
    /// Podman's `auth.json` (`REGISTRY_AUTH_FILE`), consulted first when set.
    pub auth_file: Option<PathBuf>,
    /// Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    pub docker_config: PathBuf,
    /// podman's and buildah's default `auth.json` files, consulted after docker's file when
    /// `REGISTRY_AUTH_FILE` is not set: `$XDG_RUNTIME_DIR/containers/auth.json`, then
    /// `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/...`).
    pub podman_auth_files: Vec<PathBuf>,
    /// Each `docker-credential-<name>` the files named when the store was made, found on
    /// PATH then: the only programs kiln runs for credentials. A helper looked up at push
    /// time could be one a build step put on PATH (in place, `/` is the built image then).
    pub helpers: BTreeMap<String, PathBuf>,
}

impl Default for CredentialStore {
    fn default() -> Self {
        Self::from_env()
    }
}

/// `s` without a leading `https://` or `http://`.
pub(crate) fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s)
}

/// The registry part of a config key: `https://index.docker.io/v1/` is `index.docker.io`.
fn host_of_key(key: &str) -> &str {
    let rest = strip_scheme(key);
    rest.split('/').next().unwrap_or(rest)
}

/// One name per registry, whatever alias a file uses for Docker Hub.
fn canonical_host(host: &str) -> &str {
    match host {
        DOCKER_HUB | "index.docker.io" | "registry-1.docker.io" => "index.docker.io",
        other => other,
    }
}

/// The server URL docker uses for `registry` with helpers and as the key it writes.
pub fn server_key(registry: &str) -> String {
    if canonical_host(host_of_key(registry)) == "index.docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        host_of_key(registry).to_string()
    }
}

/// The registry name `server` means, as image references name it: scheme and path dropped,
/// Docker Hub's aliases as `docker.io`.
pub fn registry_name(server: &str) -> String {
    let host = host_of_key(server);
    if canonical_host(host) == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

fn key_matches(key: &str, registry: &str) -> bool {
    canonical_host(host_of_key(key)) == canonical_host(host_of_key(registry))
}

impl CredentialStore {
    /// The files docker and podman users have: `REGISTRY_AUTH_FILE` (if set), then
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, then (without
    /// `REGISTRY_AUTH_FILE`) where `podman login` writes by default.
    pub fn from_env() -> CredentialStore {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let home = var("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
        let docker_dir = var("DOCKER_CONFIG").map_or_else(|| home.join(".docker"), PathBuf::from);
        let auth_file = var("REGISTRY_AUTH_FILE").map(PathBuf::from);
        let podman_auth_files = if auth_file.is_some() {
            Vec::new()
        } else {
            let config_home =
                var("XDG_CONFIG_HOME").map_or_else(|| home.join(".config"), PathBuf::from);
            var("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .into_iter()
                .chain([config_home])
                .map(|dir| dir.join("containers/auth.json"))
                .collect()
        };
        let mut store = CredentialStore {
            auth_file,
            docker_config: docker_dir.join("config.json"),
            podman_auth_files,
            helpers: BTreeMap::new(),
        };
        store.helpers = store.find_helpers(var("PATH").as_deref());
        store
    }

    /// The helpers the files name, found on `search_path` now. A file that cannot be read
    /// here gives its error later, when it is looked at.
    fn find_helpers(&self, search_path: Option<&std::ffi::OsStr>) -> BTreeMap<String, PathBuf> {
        let Some(search_path) = search_path else {
            return BTreeMap::new();
        };
        let named = self
            .files()
            .into_iter()
            .filter_map(|path| read_config(path).ok().flatten())
            .flat_map(|config| helper_names(&config));
        named
            .filter_map(|name| {
                let binary = helper_binary(&name);
                std::env::split_paths(search_path)
                    .filter(|dir| dir.is_absolute())
                    .map(|dir| dir.join(&binary))
                    .find(|candidate| is_executable_file(candidate))
                    .map(|found| (name, found))
            })
            .collect()
    }

    /// The helper programs kiln may run (see [`CredentialStore::helpers`]).
    pub fn helper_programs(&self) -> impl Iterator<Item = &Path> {
        self.helpers.values().map(PathBuf::as_path)
    }

    /// The files looked at, in order.
    pub fn files(&self) -> Vec<&Path> {
        self.auth_file
            .iter()
            .map(PathBuf::as_path)
            .chain([self.docker_config.as_path()])
            .chain(self.podman_auth_files.iter().map(PathBuf::as_path))
            .collect()
    }

    /// The file `login` and `logout` change: the auth file when set (as podman does), else
    /// docker's config.
    pub fn writable_file(&self) -> &Path {
        self.auth_file.as_deref().unwrap_or(&self.docker_config)
    }

    /// The credential for `registry` (`host[:port]`, `docker.io` for Docker Hub), if any file
    /// or helper has one. The first file with an entry for the registry decides.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        for path in self.files() {
            let Some(config) = read_config(path)? else {
                continue;
            };
            if let Some(helper) = helper_for(&config, registry) {
                return self.helper_get(&helper, registry);
            }
            if let Some(entry) = auth_entry(&config, registry)
                && let Some(secret) = secret_from_entry(entry, path)?
            {
                return Ok(Some(Credential {
                    secret,
                    source: CredentialSource::File(path.to_path_buf()),
                }));
            }
        }
        Ok(None)
    }

    /// Stores credentials for `registry` as `docker login` does: in the configured helper when
    /// there is one, else base64 in `auths`. Returns where they went.
    pub fn login(
        &self,
        registry: &str,
        username: &str,
        secret: &str,
    ) -> Result<CredentialSource, CredentialError> {
        let path = self.writable_file();
        let mut config = read_config(path)?.unwrap_or_default();
        let key = server_key(registry);
        let source = if let Some(helper) = helper_for(&config, registry) {
            let request = json!({"ServerURL": key, "Username": username, "Secret": secret});
            self.run_helper(&helper, "store", &request.to_string(), registry)?;
            if config.get("credsStore").is_some() && !has_cred_helper(&config, registry) {
                // docker leaves an empty entry so `docker info` can list the registry.
                remove_auth_entries(&mut config, registry);
                auths_mut(&mut config).insert(key, json!({}));
                write_config(path, &config)?;
            }
            CredentialSource::Helper(helper_binary(&helper))
        } else {
            remove_auth_entries(&mut config, registry);
            let auth = BASE64.encode(format!("{username}:{secret}"));
            auths_mut(&mut config).insert(key, json!({ "auth": auth }));
            write_config(path, &config)?;
            CredentialSource::File(path.to_path_buf())
        };
        Ok(source)
    }

    /// Removes the credentials for `registry` from the helper and the file. Returns whether
    /// there were any in the file or helper.
    pub fn logout(&self, registry: &str) -> Result<bool, CredentialError> {
        let path = self.writable_file();
        let Some(mut config) = read_config(path)? else {
            return Ok(false);
        };
        let mut removed = false;
        if let Some(helper) = helper_for(&config, registry) {
            removed = self
                .run_helper(&helper, "erase", &server_key(registry), registry)
                .is_ok();
        }
        if remove_auth_entries(&mut config, registry) {
            removed = true;
            write_config(path, &config)?;
        }
        Ok(removed)
    }
}

fn read_config(path: &Path) -> Result<Option<Map<String, Value>>, CredentialError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(CredentialError::Invalid {
            path: path.to_path_buf(),
            detail: "not a JSON object".into(),
        }),
        Err(e) => Err(CredentialError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Writes `config` next to `path` and renames it into place, readable by its owner only.
fn write_config(path: &Path, config: &Map<String, Value>) -> Result<(), CredentialError> {
    let err = |source| CredentialError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::create_dir_all(dir).map_err(err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    let mut text = serde_json::to_string_pretty(config).expect("a JSON map serialises");
    text.push('\n');
    let name = path
        .file_name()
        .map_or("config.json".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn auths_mut(config: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    auths.as_object_mut().expect("just made an object")
}

/// Drops every `auths` key naming `registry`; returns whether one was there.
fn remove_auth_entries(config: &mut Map<String, Value>, registry: &str) -> bool {
    let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else {
        return false;
    };
    let before = auths.len();
    auths.retain(|k, _| !key_matches(k, registry));
    auths.len() != before
}

fn has_cred_helper(config: &Map<String, Value>, registry: &str) -> bool {
    config
        .get("credHelpers")
        .and_then(Value::as_object)
        .is_some_and(|h| h.keys().any(|k| key_matches(k, registry)))
}

/// Every helper name a file gives: `credsStore` and each `credHelpers` entry.
fn helper_names(config: &Map<String, Value>) -> Vec<String> {
    let per_registry = config
        .get("credHelpers")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|helpers| helpers.values());
    config
        .get("credsStore")
        .into_iter()
        .chain(per_registry)
        .filter_map(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// The helper name (`pass` for `docker-credential-pass`) for `registry`: its `credHelpers`
/// entry, else `credsStore`.
fn helper_for(config: &Map<String, Value>, registry: &str) -> Option<String> {
    let per_registry = config
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|h| h.iter().find(|(k, _)| key_matches(k, registry)))
        .and_then(|(_, v)| v.as_str());
    per_registry
        .or_else(|| config.get("credsStore").and_then(Value::as_str))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

fn auth_entry<'a>(config: &'a Map<String, Value>, registry: &str) -> Option<&'a Value> {
    let auths = config.get("auths")?.as_object()?;
    // An exact key wins over an alias (`docker.io` vs `https://index.docker.io/v1/`).
    auths.get(&server_key(registry)).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| key_matches(k, registry))
            .map(|(_, v)| v)
    })
}

fn secret_from_entry(entry: &Value, path: &Path) -> Result<Option<Secret>, CredentialError> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(token) = field("identitytoken") {
        return Ok(Some(Secret::IdentityToken(token.to_string())));
    }
    if let Some(auth) = field("auth") {
        let invalid = |detail: String| CredentialError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let decoded = BASE64
            .decode(auth.trim())
            .map_err(|e| invalid(format!("an `auth` entry is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| invalid("an `auth` entry is not UTF-8".into()))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("an `auth` entry is not `user:password`".into()))?;
        return Ok(Some(Secret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Ok(Some(Secret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    Ok(None)
}

fn helper_binary(helper: &str) -> String {
    format!("docker-credential-{helper}")
}

/// Whether `path` is a regular file (following links) that someone may execute.
fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
}

impl CredentialStore {
    /// Runs `docker-credential-<helper> <action>` with `input` on stdin and returns its
    /// stdout; only a helper found when the store was made.
    fn run_helper(
        &self,
        helper: &str,
        action: &str,
        input: &str,
        registry: &str,
    ) -> Result<String, CredentialError> {
        let binary = helper_binary(helper);
        let fail = |detail: String| CredentialError::Helper {
            helper: binary.clone(),
            server: server_key(registry),
            detail,
        };
        let program = self.helpers.get(helper).ok_or_else(|| {
            fail(
                "no such program on PATH when kiln started (kiln looks for credential \
                  helpers then, and runs only those)"
                    .to_string(),
            )
        })?;
        run_program(program, &binary, action, input).map_err(fail)
    }

    fn helper_get(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let binary = helper_binary(helper);
        let stdout = match self.run_helper(helper, "get", &server_key(registry), registry) {
            Ok(out) => out,
            // Helpers say so in their own words when they hold nothing for a server.
            Err(CredentialError::Helper { detail, .. })
                if detail.contains("credentials not found") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        helper_answer(&stdout, binary, registry)
    }
}

/// Runs `program` (`binary` in messages) with `action` and `input` on stdin; its stdout, or
/// what went wrong.
fn run_program(program: &Path, binary: &str, action: &str, input: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{binary} {action}`: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `{binary} {action}`: {e}"))?;
    written.map_err(|e| format!("writing to `{binary} {action}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let said = format!("{stdout} {}", String::from_utf8_lossy(&output.stderr));
        return Err(format!("`{action}` failed: {}", said.trim()));
    }
    Ok(stdout)
}

/// The credential in a helper's answer to `get`.
fn helper_answer(
    stdout: &str,
    binary: String,
    registry: &str,
) -> Result<Option<Credential>, CredentialError> {
    let answer: Value = serde_json::from_str(stdout).map_err(|e| CredentialError::Helper {
        helper: binary.clone(),
        server: server_key(registry),
        detail: format!("`get` printed something that is not JSON: {e}"),
    })?;
    let text = |name: &str| {
        answer
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (username, secret) = (text("Username"), text("Secret"));
    if secret.is_empty() {
        return Ok(None);
    }
    let secret = if username == "<token>" {
        Secret::IdentityToken(secret)
    } else {
        Secret::Basic {
            username,
            password: secret,
        }
    };
    Ok(Some(Credential {
        secret,
        source: CredentialSource::Helper(binary),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &Path, config: &str) -> CredentialStore {
        fs::write(dir.join("config.json"), config).unwrap();
        CredentialStore {
            auth_file: None,
            docker_config: dir.join("config.json"),
            podman_auth_files: Vec::new(),
            helpers: Default::default(),
        }
    }

    fn basic(u: &str, p: &str) -> Secret {
        Secret::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn auths_entries_are_found_by_any_docker_hub_alias_and_with_or_without_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(
            dir.path(),
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "https://reg.example:5000": {"username": "u", "password": "p"},
                "tok.example": {"identitytoken": "refresh-me"}
            }}"#,
        );
        let hub = store.lookup("docker.io").unwrap().unwrap();
        assert_eq!(hub.secret, basic("hub", "secret"));
        assert_eq!(
            hub.source.to_string(),
            format!("file {}", dir.path().join("config.json").display())
        );
        assert_eq!(
            store.lookup("reg.example:5000").unwrap().unwrap().secret,
            basic("u", "p")
        );
        assert_eq!(
            store.lookup("tok.example").unwrap().unwrap().secret,
            Secret::IdentityToken("refresh-me".into())
        );
        assert_eq!(store.lookup("other.example").unwrap(), None);
    }

    #[test]
    fn auth_file_is_consulted_before_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(
            dir.path(),
            r#"{"auths": {"r.example": {"auth": "ZDpk"}, "only-docker.example": {"auth": "ZDpk"}}}"#,
        );
        let podman = dir.path().join("auth.json");
        fs::write(&podman, r#"{"auths": {"r.example": {"auth": "cDpw"}}}"#).unwrap();
        store.auth_file = Some(podman.clone());
        let found = store.lookup("r.example").unwrap().unwrap();
        assert_eq!(found.secret, basic("p", "p"));
        assert_eq!(found.source, CredentialSource::File(podman));
        assert_eq!(
            store.lookup("only-docker.example").unwrap().unwrap().secret,
            basic("d", "d")
        );
    }

    #[test]
    fn podman_default_auth_files_are_consulted_after_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(
            dir.path(),
            r#"{"auths": {"both.example": {"auth": "ZDpk"}}}"#,
        );
        let podman = dir.path().join("containers-auth.json");
        fs::write(
            &podman,
            r#"{"auths": {"both.example": {"auth": "cDpw"}, "podman.example": {"auth": "cDpw"}}}"#,
        )
        .unwrap();
        store.podman_auth_files = vec![dir.path().join("absent.json"), podman.clone()];
        assert_eq!(
            store.lookup("both.example").unwrap().unwrap().secret,
            basic("d", "d")
        );
        let found = store.lookup("podman.example").unwrap().unwrap();
        assert_eq!(found.secret, basic("p", "p"));
        assert_eq!(found.source, CredentialSource::File(podman));
        // kiln login still writes docker's file.
        assert_eq!(store.writable_file(), store.docker_config);
    }

    #[test]
    fn login_and_logout_edit_auths_and_keep_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), r#"{"psFormat": "table {{.ID}}"}"#);
        let source = store.login("docker.io", "me", "pw").unwrap();
        assert_eq!(source, CredentialSource::File(store.docker_config.clone()));
        let written: Value =
            serde_json::from_str(&fs::read_to_string(&store.docker_config).unwrap()).unwrap();
        assert_eq!(written["psFormat"], "table {{.ID}}");
        assert_eq!(
            written["auths"]["https://index.docker.io/v1/"]["auth"],
            BASE64.encode("me:pw")
        );
        let mode = fs::metadata(&store.docker_config)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.logout("index.docker.io").unwrap());
        let written: Value =
            serde_json::from_str(&fs::read_to_string(&store.docker_config).unwrap()).unwrap();
        assert_eq!(written["auths"], json!({}));
        assert!(!store.logout("docker.io").unwrap());
    }

    #[test]
    fn server_keys_are_what_docker_writes() {
        assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(
            server_key("https://reg.example:5000/v2/"),
            "reg.example:5000"
        );
        assert!(key_matches("http://127.0.0.1:5000", "127.0.0.1:5000"));
        assert_eq!(registry_name("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_name("https://reg.example/v2/"), "reg.example");
        assert!(!key_matches("127.0.0.1:5001", "127.0.0.1:5000"));
    }
}
