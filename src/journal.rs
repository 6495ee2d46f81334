//! `-Y`: events to the systemd journal, as BCC's tcpstates -Y does (through python-systemd): the
//! journal's native protocol, one datagram of `KEY=value` lines per entry on
//! /run/systemd/journal/socket (a value holding a newline goes in the protocol's binary form).

use std::os::unix::net::UnixDatagram;

use anyhow::{Result, anyhow};

const SOCKET: &str = "/run/systemd/journal/socket";

pub struct Journal {
    sock: UnixDatagram,
    failed: u64,
    first_error: Option<String>,
}

/// One entry in the native protocol.
pub fn encode(fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        if v.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

impl Journal {
    /// Connects to journald's socket (`SOCKRAY_JOURNAL_SOCKET` overrides the path, for tests).
    pub fn connect() -> Result<Journal> {
        let path = std::env::var("SOCKRAY_JOURNAL_SOCKET").unwrap_or_else(|_| SOCKET.to_string());
        let sock = UnixDatagram::unbound()?;
        sock.connect(&path).map_err(|e| {
            anyhow!(
                "-Y: cannot reach the systemd journal at {path}: {e} (is systemd-journald running?)"
            )
        })?;
        Ok(Journal {
            sock,
            failed: 0,
            first_error: None,
        })
    }

    /// Sends one entry; a failure is counted and reported at the end ([`Journal::report`]), the
    /// tool's own output goes on.
    pub fn send(&mut self, fields: &[(&str, String)]) {
        if let Err(e) = self.sock.send(&encode(fields)) {
            self.failed += 1;
            self.first_error.get_or_insert_with(|| e.to_string());
        }
    }

    /// What could not be sent, said on stderr.
    pub fn report(&self, tool: &str) {
        if self.failed > 0 {
            crate::cli::say(format_args!(
                "{tool}: {} entries not sent to the journal ({})",
                self.failed,
                self.first_error.as_deref().unwrap_or("")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_protocol() {
        let e = encode(&[
            ("MESSAGE", "a → b".to_string()),
            ("PRIORITY", "5".to_string()),
        ]);
        assert_eq!(e, "MESSAGE=a → b\nPRIORITY=5\n".as_bytes());
        let e = encode(&[("X", "a\nb".to_string())]);
        let mut want = b"X\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(e, want);
    }
}
