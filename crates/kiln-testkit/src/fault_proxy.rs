//! A fault-injecting HTTP proxy that sits in front of a real registry, for the faults a real
//! registry does not produce on demand: a connection dropped in the middle of an upload, 5xx
//! answers and 429 rate limiting. Every request without a matching fault is forwarded
//! unchanged (the `Host` header included, so the registry's `Location` URLs point back at the
//! proxy).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{RequestHead, read_head};

/// What the proxy does to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward the request head and this many bytes of its body to the registry, then close
    /// both connections without an answer: a network drop in the middle of an upload.
    DropAfterBodyBytes(u64),
    /// Forward the request, then pass on only this many bytes of the registry's answer (head
    /// included) and close the connection: a drop in the middle of a download.
    CutAnswerAfterBytes(u64),
    /// Answer with this status (and `Retry-After: N` seconds when given) without forwarding.
    Status {
        status: u16,
        retry_after: Option<u32>,
    },
}

/// A fault for requests whose method and path match, injected at most `times` times.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// `PUT`, `PATCH`, ...; `None` matches any method.
    pub method: Option<String>,
    /// A substring of the request target, e.g. `/blobs/uploads/`.
    pub path_contains: String,
    pub fault: Fault,
    pub times: usize,
    /// Matching requests let through untouched before the first fault.
    pub skip: usize,
}

impl FaultRule {
    pub fn new(method: Option<&str>, path_contains: &str, fault: Fault, times: usize) -> Self {
        FaultRule {
            method: method.map(str::to_string),
            path_contains: path_contains.to_string(),
            fault,
            times,
            skip: 0,
        }
    }

    /// The same rule, letting the first `n` matching requests through untouched.
    pub fn after(self, n: usize) -> Self {
        FaultRule { skip: n, ..self }
    }
}

/// A request as the proxy received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// The request target, query included.
    pub target: String,
    /// The `Content-Range` header, for resumed uploads.
    pub content_range: Option<String>,
    /// When its head arrived.
    pub at: Instant,
}

struct Shared {
    upstream: String,
    rules: Mutex<Vec<FaultRule>>,
    injected: Mutex<Vec<String>>,
    requests: Mutex<Vec<SeenRequest>>,
    stop: AtomicBool,
}

/// The proxy; dropping it stops accepting connections.
pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str, rules: Vec<FaultRule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            rules: Mutex::new(rules),
            injected: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn_shared = Arc::clone(&accept_shared);
                thread::spawn(move || {
                    let _ = serve_connection(stream, &conn_shared);
                });
            }
        });
        FaultProxy { addr, shared }
    }

    /// The proxy's `host:port`, to use in image references instead of the registry's.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One line per fault injected so far (`"PATCH /v2/... -> dropped after 1048576 bytes"`).
    pub fn injected(&self) -> Vec<String> {
        self.shared.injected.lock().unwrap().clone()
    }

    /// `METHOD target` of every request the proxy received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }

    /// Every request the proxy received, in order, with its `Content-Range` and arrival time.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Reads a request body (sized or chunked) and returns it de-chunked.
fn read_body(reader: &mut impl BufRead, head: &RequestHead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_text = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|e| io::Error::other(format!("bad chunk size {size_line:?}: {e}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    reader.read_line(&mut t)?;
                    if t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = head.header("Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|e| io::Error::other(format!("bad Content-Length {len:?}: {e}")))?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(body)
}

fn take_fault(shared: &Shared, head: &RequestHead) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let rule = rules.iter_mut().find(|r| {
        r.times > 0
            && r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&head.method))
            && head.target.contains(&r.path_contains)
    })?;
    if rule.skip > 0 {
        rule.skip -= 1;
        return None;
    }
    rule.times -= 1;
    Some(rule.fault.clone())
}

/// The request as sent upstream: same head, the body re-framed with Content-Length, and
/// `Connection: close` so the whole answer is what arrives before EOF.
fn upstream_request(head: &RequestHead, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, head.target).into_bytes();
    for h in &head.headers {
        let name = h.split(':').next().unwrap_or("").trim();
        if ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if body.is_empty() && !matches!(head.method.as_str(), "PUT" | "PATCH" | "POST") {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    out.extend_from_slice(framing.as_bytes());
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

fn serve_connection(client: TcpStream, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    while let Some(head) = read_head(&mut reader)? {
        shared.requests.lock().unwrap().push(SeenRequest {
            method: head.method.clone(),
            target: head.target.clone(),
            content_range: head.header("Content-Range").map(str::to_string),
            at: Instant::now(),
        });
        let body = read_body(&mut reader, &head)?;
        match take_fault(shared, &head) {
            Some(Fault::Status {
                status,
                retry_after,
            }) => {
                shared
                    .injected
                    .lock()
                    .unwrap()
                    .push(format!("{} {} -> {status}", head.method, head.target));
                let retry = retry_after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                let message =
                    b"{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"injected fault\"}]}";
                write!(
                    writer,
                    "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\n\r\n",
                    message.len()
                )?;
                writer.write_all(message)?;
                writer.flush()?;
            }
            Some(Fault::DropAfterBodyBytes(n)) => {
                shared.injected.lock().unwrap().push(format!(
                    "{} {} -> dropped after {n} of {} body bytes",
                    head.method,
                    head.target,
                    body.len()
                ));
                // The registry sees a request whose body stops short, as on a real drop.
                let mut up = TcpStream::connect(&shared.upstream)?;
                let request = upstream_request(&head, &body);
                let head_len = request.len() - body.len();
                let keep = head_len + (n as usize).min(body.len());
                up.write_all(&request[..keep])?;
                up.flush()?;
                // Give the registry time to store what arrived before the drop.
                thread::sleep(Duration::from_millis(200));
                let _ = up.shutdown(Shutdown::Both);
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::CutAnswerAfterBytes(n)) => {
                let answer = forward(shared, &head, &body)?;
                shared.injected.lock().unwrap().push(format!(
                    "{} {} -> answer cut after {n} of {} bytes",
                    head.method,
                    head.target,
                    answer.len()
                ));
                writer.write_all(&answer[..(n as usize).min(answer.len())])?;
                writer.flush()?;
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            None => {
                let answer = forward(shared, &head, &body)?;
                writer.write_all(&close_delimited(answer))?;
                writer.flush()?;
            }
        }
    }
    Ok(())
}

/// Sends the request to the registry and returns its whole answer.
fn forward(shared: &Shared, head: &RequestHead, body: &[u8]) -> io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(&shared.upstream)?;
    up.write_all(&upstream_request(head, body))?;
    up.flush()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    Ok(answer)
}

/// The registry's answer, with `Connection: close` added when it has no length of its own (it
/// was delimited by the upstream connection closing), so the client knows where it ends.
fn close_delimited(answer: Vec<u8>) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    if head.contains("\ncontent-length:") || head.contains("\ntransfer-encoding:") {
        return answer;
    }
    let mut out = answer[..end].to_vec();
    out.extend_from_slice(b"\r\nConnection: close");
    out.extend_from_slice(&answer[end..]);
    out
}
