//! A fault-injecting HTTP proxy that sits in front of a real registry, for the faults a real
//! registry does not produce on demand: a connection dropped in the middle of an upload, 5xx
//! answers and 429 rate limiting, and a hostile registry's answers: redirects and upload
//! `Location`s naming another host, endless bodies, bodies longer than promised, stalls.
//! Every request without a matching fault is forwarded unchanged (the `Host` header included,
//! so the registry's `Location` URLs point back at the proxy). Every request is recorded with
//! its headers, so a proxy on another address can tell what a client sent it.

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
    /// Answer with this status and these headers, and an empty body, without forwarding:
    /// e.g. a 401 with a `WWW-Authenticate` challenge of the test's choosing.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Answer `307 Temporary Redirect` to the same path on `host:port`.
    Redirect { to: String },
    /// Forward the request, and point the answer's `Location` at the same path on `host:port`.
    RewriteLocation { to: String },
    /// Answer with this status and content type and a body of `bytes` spaces (valid leading
    /// JSON whitespace) with no length given, delimited by closing the connection: as good as
    /// endless for a client that should stop reading long before.
    Flood {
        status: u16,
        content_type: String,
        bytes: u64,
    },
    /// Forward the request, then pass on the registry's answer with its length removed and
    /// this many bytes (spaces) after its body: content longer than its descriptor says.
    AppendToAnswer(u64),
    /// Forward the request, pass on the answer's head and this many bytes of its body, then
    /// send nothing more while keeping the connection open, until the client closes it (or
    /// ten minutes pass): a registry that stalls after its headers.
    StallAfterHead(u64),
}

/// How long a stalled answer is held at most.
const STALL_LIMIT: Duration = Duration::from_secs(600);

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
    /// Every header line (`Name: value`), in order.
    pub headers: Vec<String>,
    /// When its head arrived.
    pub at: Instant,
}

impl SeenRequest {
    /// The value of the header `name` (any case), if the request had one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
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
        Self::start_on("127.0.0.1:0", upstream, rules)
    }

    /// Starts a proxy listening on `bind` (e.g. `127.0.0.2:0`: another host, as far as a
    /// client can tell, than a registry on 127.0.0.1) forwarding to `upstream`.
    pub fn start_on(bind: &str, upstream: &str, rules: Vec<FaultRule>) -> FaultProxy {
        let listener = TcpListener::bind(bind)
            .unwrap_or_else(|e| panic!("bind the fault proxy to {bind}: {e}"));
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

    /// Every request the proxy received, in order, with its headers and arrival time.
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
            headers: head.headers.clone(),
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
            Some(Fault::Respond { status, headers }) => {
                let injected = format!("{} {} -> {status}", head.method, head.target);
                shared.injected.lock().unwrap().push(injected);
                let mut answer = format!("HTTP/1.1 {status} Injected\r\n");
                for (name, value) in headers {
                    answer += &format!("{name}: {value}\r\n");
                }
                answer += "Content-Length: 0\r\n\r\n";
                writer.write_all(answer.as_bytes())?;
                writer.flush()?;
            }
            Some(Fault::Redirect { to }) => {
                let location = format!("http://{to}{}", head.target);
                let injected = format!("{} {} -> 307 {location}", head.method, head.target);
                shared.injected.lock().unwrap().push(injected);
                write!(
                    writer,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                )?;
                writer.flush()?;
            }
            Some(Fault::RewriteLocation { to }) => {
                let (answer_head, answer_body) = split_answer(forward(shared, &head, &body)?);
                let rewritten: Vec<String> = answer_head
                    .lines()
                    .map(|line| match line.split_once(':') {
                        Some((name, value)) if name.eq_ignore_ascii_case("location") => {
                            format!("Location: http://{to}{}", path_of(value.trim()))
                        }
                        _ => line.to_string(),
                    })
                    .collect();
                shared.injected.lock().unwrap().push(format!(
                    "{} {} -> Location moved to {to}",
                    head.method, head.target
                ));
                let mut answer = rewritten.join("\r\n").into_bytes();
                answer.extend_from_slice(b"\r\n\r\n");
                answer.extend_from_slice(&answer_body);
                writer.write_all(&close_delimited(answer))?;
                writer.flush()?;
            }
            Some(Fault::Flood {
                status,
                content_type,
                bytes,
            }) => {
                shared.injected.lock().unwrap().push(format!(
                    "{} {} -> {status} with {bytes} bytes",
                    head.method, head.target
                ));
                write!(
                    writer,
                    "HTTP/1.1 {status} Flood\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
                )?;
                let _ = write_filler(&mut writer, bytes);
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::AppendToAnswer(extra)) => {
                let (answer_head, answer_body) = split_answer(forward(shared, &head, &body)?);
                shared.injected.lock().unwrap().push(format!(
                    "{} {} -> {} body bytes and {extra} more",
                    head.method,
                    head.target,
                    answer_body.len()
                ));
                let lengthless: Vec<&str> = answer_head
                    .lines()
                    .filter(|l| {
                        let name = l.split(':').next().unwrap_or("").trim();
                        !name.eq_ignore_ascii_case("content-length")
                            && !name.eq_ignore_ascii_case("connection")
                    })
                    .collect();
                write!(
                    writer,
                    "{}\r\nConnection: close\r\n\r\n",
                    lengthless.join("\r\n")
                )?;
                writer.write_all(&answer_body)?;
                let _ = write_filler(&mut writer, extra);
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::StallAfterHead(n)) => {
                let (answer_head, answer_body) = split_answer(forward(shared, &head, &body)?);
                shared.injected.lock().unwrap().push(format!(
                    "{} {} -> stalled after the head and {n} of {} body bytes",
                    head.method,
                    head.target,
                    answer_body.len()
                ));
                write!(writer, "{answer_head}\r\n\r\n")?;
                writer.write_all(&answer_body[..(n as usize).min(answer_body.len())])?;
                writer.flush()?;
                hold_until_closed(&mut reader, shared);
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

/// An answer split into its head (without the blank line) and body.
fn split_answer(answer: Vec<u8>) -> (String, Vec<u8>) {
    match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (
            String::from_utf8_lossy(&answer[..end]).into_owned(),
            answer[end + 4..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&answer).into_owned(), Vec::new()),
    }
}

/// The path (and query) of a `Location` value, absolute or relative.
fn path_of(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

/// Writes `bytes` spaces, stopping early when the client goes away.
fn write_filler(writer: &mut impl Write, bytes: u64) -> io::Result<()> {
    let chunk = [b' '; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        writer.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    writer.flush()
}

/// Keeps a connection open without sending anything until the client closes it, the proxy
/// stops, or [`STALL_LIMIT`] passes.
fn hold_until_closed(reader: &mut BufReader<TcpStream>, shared: &Shared) {
    let deadline = Instant::now() + STALL_LIMIT;
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let mut byte = [0u8; 1];
    while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
        match reader.get_mut().read(&mut byte) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
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
