//! A token service for distribution's `auth.token` scheme: it checks basic credentials (or a
//! refresh token), grants the requested repository scopes to its one user, signs ES256 JWTs
//! with a certificate from the test CA (sent in the `x5c` header), and records every request.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use crate::http::{RequestHead, read_head};
use crate::tls::TestCa;

pub const TOKEN_ISSUER: &str = "kiln-test-issuer";
pub const TOKEN_SERVICE: &str = "kiln-test-registry";

/// One request the token service answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user that authenticated, `None` for anonymous requests.
    pub user: Option<String>,
    /// `GET` (basic credentials) or `POST` (OAuth2 refresh token).
    pub method: String,
    /// The scopes asked for, in order.
    pub scopes: Vec<String>,
    /// Whether a token was issued (wrong credentials get a 401).
    pub granted: bool,
}

struct Shared {
    user: String,
    password: String,
    expires_in: u64,
    signer: EcdsaKeyPair,
    x5c: String,
    requests: Mutex<Vec<TokenRequest>>,
    issued: AtomicU64,
    stop: AtomicBool,
}

/// The token service, serving plain HTTP on 127.0.0.1 until dropped.
pub struct TokenServer {
    addr: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The CA bundle the registry trusts for token signatures.
    pub root_cert_bundle: PathBuf,
}

impl TokenServer {
    /// Serves tokens to `user` (with `password`, which is also accepted as the user's OAuth2
    /// refresh token), valid for `expires_in` seconds.
    pub fn start(ca: &TestCa, user: &str, password: &str, expires_in: u64) -> TokenServer {
        let signing = ca.issue("token-signer", &["kiln-token-signer"]);
        let signer = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing.key_pkcs8,
            &SystemRandom::new(),
        )
        .expect("loading the token signing key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let addr = listener
            .local_addr()
            .expect("token server address")
            .to_string();
        let shared = Arc::new(Shared {
            user: user.to_string(),
            password: password.to_string(),
            expires_in,
            signer,
            x5c: STANDARD.encode(&signing.cert_der),
            requests: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let serving = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    // A client that hangs up mid-request only loses its own answer.
                    let _ = serve(&serving, stream);
                }
            }
        });
        TokenServer {
            addr,
            shared,
            thread: Some(thread),
            root_cert_bundle: ca.ca_path(),
        }
    }

    /// The URL registries send clients to (`realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn serve(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let authorization = head.header("Authorization").map(str::to_string);
    let content_length: usize = head
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let RequestHead { method, target, .. } = head;
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let params = if method == "POST" {
        form_pairs(&String::from_utf8_lossy(&body))
    } else {
        form_pairs(query)
    };
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let scopes: Vec<String> = if method == "POST" {
        param("scope")
            .map(|s| s.split(' ').map(str::to_string).collect())
            .unwrap_or_default()
    } else {
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect()
    };
    // Ok(Some(user)): authenticated; Ok(None): anonymous; Err: wrong credentials.
    let who: Result<Option<String>, ()> = if method == "POST" {
        match param("refresh_token") {
            Some(t) if *t == shared.password => Ok(Some(shared.user.clone())),
            _ => Err(()),
        }
    } else {
        match authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
        {
            None => Ok(None),
            Some(encoded) => {
                let decoded = STANDARD.decode(encoded.trim()).unwrap_or_default();
                let expected = format!("{}:{}", shared.user, shared.password);
                if decoded == expected.as_bytes() {
                    Ok(Some(shared.user.clone()))
                } else {
                    Err(())
                }
            }
        }
    };
    shared.requests.lock().unwrap().push(TokenRequest {
        user: who.clone().ok().flatten(),
        method: method.clone(),
        scopes: scopes.clone(),
        granted: who.is_ok(),
    });
    let mut out = stream;
    match who {
        Err(()) => {
            let body = r#"{"details":"wrong credentials"}"#;
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Ok(user) => {
            let token = sign_token(shared, user.as_deref(), &scopes);
            let body = json!({
                "token": token,
                "access_token": token,
                "expires_in": shared.expires_in,
            })
            .to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
    }
}

/// A JWT granting `scopes` to `user`, nothing to anonymous requests.
fn sign_token(shared: &Shared, user: Option<&str>, scopes: &[String]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let access: Vec<Value> = match user {
        None => Vec::new(),
        Some(_) => scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect(),
    };
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [shared.x5c]});
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": user.unwrap_or(""),
        "aud": TOKEN_SERVICE,
        "exp": now + shared.expires_in,
        "nbf": now - 10,
        "iat": now,
        "jti": shared.issued.fetch_add(1, Ordering::SeqCst).to_string(),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = shared
        .signer
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .expect("signing a token");
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}
