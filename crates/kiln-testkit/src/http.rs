//! HTTP/1.1 request heads as the test servers read them off the wire.

use std::io::{self, BufRead};

/// A request head as read off the wire.
pub(crate) struct RequestHead {
    pub(crate) method: String,
    pub(crate) target: String,
    /// Header lines without the final CRLF, in order.
    pub(crate) headers: Vec<String>,
}

impl RequestHead {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads a request line and headers; `None` when the peer closed before sending any.
pub(crate) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<RequestHead>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other(format!("bad request line {line:?}")));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        headers.push(h.to_string());
    }
    Ok(Some(RequestHead {
        method,
        target,
        headers,
    }))
}
