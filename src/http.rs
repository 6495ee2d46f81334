//! The HTTP side of `sockray serve`: GET only, a response per connection, with every resource bounded.
//!
//! Written here rather than taken from a crate: the small servers (tiny_http) start a thread for each
//! waiting client, without a limit, and the large ones (hyper, axum) bring an async runtime for what is
//! one request every 15 s from a Prometheus server. Bounds: WORKERS threads serve connections, a queue of
//! QUEUE waits for them and a connection beyond that is answered 503 at once; a request head is read
//! within READ_TIMEOUT and MAX_HEAD bytes, a response written within WRITE_TIMEOUT (a client that stops
//! reading loses its connection, not a thread for ever).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const WORKERS: usize = 4;
pub const QUEUE: usize = 64;
pub const MAX_HEAD: usize = 8192;
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a handler is asked: the path (without the query) and the `Accept` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub accept: String,
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Parses a request head (up to the blank line). None: not HTTP.
pub fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut accept = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("accept")
        {
            accept = v.trim().to_string();
        }
    }
    Some(Request {
        method,
        path,
        accept,
    })
}

/// Reads a request head: up to the blank line, at most MAX_HEAD bytes. Err(status) when it cannot.
fn read_head(s: &mut TcpStream) -> Result<String, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf) {
            return String::from_utf8(buf[..end].to_vec()).map_err(|_| 400);
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn write_response(s: &mut TcpStream, r: &Response, head_only: bool) {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    let _ = s.write_all(head.as_bytes());
    if !head_only {
        let _ = s.write_all(&r.body);
    }
    let _ = s.flush();
}

fn serve_one(mut s: TcpStream, handler: &(dyn Fn(&Request) -> Response + Send + Sync)) {
    let _ = s.set_read_timeout(Some(READ_TIMEOUT));
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    let r = match read_head(&mut s).map(|h| parse_head(&h)) {
        Ok(Some(req)) if req.method == "GET" || req.method == "HEAD" => {
            let head_only = req.method == "HEAD";
            let resp = handler(&req);
            write_response(&mut s, &resp, head_only);
            return;
        }
        Ok(Some(_)) => Response::text(405, "only GET and HEAD\n"),
        Ok(None) => Response::text(400, "not an HTTP request\n"),
        Err(status) => Response::text(status, format!("{}\n", reason(status))),
    };
    write_response(&mut s, &r, false);
}

/// Binds `addr` (an error names the address and why: in use, not allowed).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the address is in use (another exporter?); choose another with --listen"
                    .to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "not allowed (ports below 1024 need CAP_NET_BIND_SERVICE)".to_string()
            }
            std::io::ErrorKind::AddrNotAvailable => "no such local address".to_string(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}")
    })
}

/// Serves `listener` on threads of their own (an acceptor and WORKERS workers) until the process ends.
pub fn spawn(
    listener: TcpListener,
    handler: Arc<dyn Fn(&Request) -> Response + Send + Sync>,
) -> std::io::Result<()> {
    let (tx, rx): (SyncSender<TcpStream>, Receiver<TcpStream>) = sync_channel(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let rx = Arc::clone(&rx);
        let handler = Arc::clone(&handler);
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || {
                loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(s) => serve_one(s, handler.as_ref()),
                        Err(_) => return,
                    }
                }
            })?;
    }
    std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(s) = conn else {
                    // EMFILE and the like: wait a little rather than spin
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if let Err(TrySendError::Full(mut s)) = tx.try_send(s) {
                    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                    write_response(
                        &mut s,
                        &Response::text(503, "busy: too many clients\n"),
                        false,
                    );
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let r = parse_head(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text; version=1.0.0\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert!(r.accept.starts_with("application/openmetrics-text"));
        assert_eq!(parse_head("GET / HTTP/1.0").unwrap().path, "/");
        assert!(parse_head("hello").is_none());
        assert!(parse_head("GET /").is_none());
        assert!(parse_head("\u{16}\u{3}\u{1} junk").is_none());
    }

    #[test]
    fn head_end() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(14));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost"), None);
    }
}
