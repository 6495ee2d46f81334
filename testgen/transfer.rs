//! `transfer`: one connection moving known byte counts both ways (tcptop and tcpsubnet tests). A
//! server process accepts once, reads exactly SEND bytes, writes REPLY bytes, waits for the client's
//! close; a client process connects, sends SEND bytes in pieces of WRITE_SIZE (with write(), sendfile()
//! from a memfd or splice() from a pipe), GAP_MS apart, reads the reply and closes. Each prints one JSON
//! line (`server`, `client`) with its pid, comm, addresses, ports and the bytes it sent and received.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{
    GO_TIMEOUT, IO_TIMEOUT, connect, emit, family_of, fork_role, getpid, getuid, make_listener,
    new_socket, poll_readable, read_exact_n, set_comm, wait_children, wait_eof, wait_for_go,
    write_n,
};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum How {
    Write,
    Sendfile,
    Splice,
}

#[derive(clap::Args, Clone)]
pub struct TransferArgs {
    #[arg(long)]
    addr: IpAddr,
    /// Server port (0: the kernel picks one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address the client binds to before connecting (default: the kernel's choice).
    #[arg(long)]
    bind: Option<IpAddr>,
    #[arg(long, default_value = "tg-tsrv")]
    server_comm: String,
    #[arg(long, default_value = "tg-tcli")]
    client_comm: String,
    /// Bytes the client sends.
    #[arg(long, default_value_t = 0)]
    send: u64,
    /// Bytes the server sends back once it has them all.
    #[arg(long, default_value_t = 0)]
    reply: u64,
    /// Bytes per send call of the client.
    #[arg(long, default_value_t = 65536)]
    write_size: u64,
    /// Pause after each of the client's sends, in ms.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// How the client sends.
    #[arg(long, value_enum, default_value = "write")]
    how: How,
    /// The server runs in this network namespace (`ip netns` name), the client where the command runs
    /// (the two ends of a veth pair).
    #[arg(long)]
    server_netns: Option<String>,
    /// The client prints {"role":"client-ready",...} and waits for a line on stdin before connecting.
    #[arg(long)]
    wait_go: bool,
    /// With --wait-go: the client connects and sends this many of its bytes first, then says
    /// client-ready (with its ports) and waits (a connection older than the tool).
    #[arg(long, default_value_t = 0)]
    pre_send: u64,
}

pub fn transfer(a: &TransferArgs) -> Result<()> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let server = fork_role("server", || {
        // SAFETY: the child keeps only the write end.
        let wr = unsafe {
            libc::close(rfd);
            std::fs::File::from_raw_fd(wfd)
        };
        server(a, wr)
    });
    // SAFETY: the parent keeps only the read end.
    let mut rd = unsafe {
        libc::close(wfd);
        std::fs::File::from_raw_fd(rfd)
    };
    let server = server?;
    let port = poll_readable(rd.as_raw_fd(), IO_TIMEOUT).and_then(|()| {
        let mut p = [0u8; 2];
        rd.read_exact(&mut p).context("server port")?;
        Ok(u16::from_be_bytes(p))
    });
    let port = match port {
        Ok(p) => p,
        Err(e) => {
            wait_children(&[server], Instant::now() + Duration::from_secs(2));
            return Err(e.context("server did not start"));
        }
    };
    let client = fork_role("client", || client(a, port))?;
    let pieces = a.send.div_ceil(a.write_size.max(1));
    let budget = IO_TIMEOUT * 3 + GO_TIMEOUT + Duration::from_millis(a.gap_ms * pieces);
    if !wait_children(&[server, client], Instant::now() + budget) {
        bail!("transfer failed");
    }
    Ok(())
}

fn server(a: &TransferArgs, mut ready: std::fs::File) -> Result<()> {
    set_comm(&a.server_comm)?;
    if let Some(ns) = &a.server_netns {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("network namespace {ns}"))?;
        // SAFETY: setns on an open namespace file; this process is single-threaded.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
    }
    let listener = make_listener(a.addr, a.port, 4)?;
    crate::set_rcvtimeo(listener.as_raw_fd(), IO_TIMEOUT + GO_TIMEOUT)?;
    ready.write_all(&listener.local_addr()?.port().to_be_bytes())?;
    drop(ready);
    let (mut s, peer) = listener.accept().context("accept")?;
    let pieces = a.send.div_ceil(a.write_size.max(1));
    s.set_read_timeout(Some(IO_TIMEOUT + Duration::from_millis(a.gap_ms * pieces)))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = s.local_addr()?;
    let received = read_exact_n(&mut s, a.send)?;
    let sent = write_n(&mut s, a.reply)?;
    wait_eof(&mut s, false)?;
    drop(s);
    emit(&json!({
        "role": "server", "pid": getpid(), "comm": a.server_comm, "uid": getuid(),
        "family": family_of(&local.ip()),
        "laddr": local.ip().to_string(), "lport": local.port(),
        "raddr": peer.ip().to_string(), "rport": peer.port(),
        "sent": sent, "received": received,
    }));
    Ok(())
}

fn client(a: &TransferArgs, port: u16) -> Result<()> {
    set_comm(&a.client_comm)?;
    if a.wait_go && a.pre_send == 0 {
        emit(&json!({"role": "client-ready", "pid": getpid(), "comm": a.client_comm}));
        wait_for_go()?;
    }
    let remote = SocketAddr::new(a.addr, port);
    let fd = new_socket(&a.addr)?;
    if let Some(b) = a.bind {
        crate::bind(fd.as_raw_fd(), &SocketAddr::new(b, 0))?;
    }
    connect(fd.as_raw_fd(), &remote).with_context(|| format!("connect {remote}"))?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = s.local_addr()?;
    let mut pre = 0;
    if a.wait_go && a.pre_send > 0 {
        pre = write_n(&mut s, a.pre_send.min(a.send))?;
        emit(
            &json!({"role": "client-ready", "pid": getpid(), "comm": a.client_comm,
            "lport": local.port(), "pre_sent": pre}),
        );
        wait_for_go()?;
    }
    let rest = TransferArgs {
        send: a.send - pre,
        ..a.clone()
    };
    let a = &rest;
    let sent = pre
        + match a.how {
            How::Write => send_pieces(a, |n| write_n(&mut s, n))?,
            How::Sendfile => send_sendfile(a, &s)?,
            How::Splice => send_splice(a, &s)?,
        };
    let received = read_exact_n(&mut s, a.reply)?;
    s.shutdown(std::net::Shutdown::Write)?;
    wait_eof(&mut s, false)?;
    drop(s);
    emit(&json!({
        "role": "client", "pid": getpid(), "comm": a.client_comm, "uid": getuid(),
        "family": family_of(&local.ip()),
        "laddr": local.ip().to_string(), "lport": local.port(),
        "raddr": remote.ip().to_string(), "rport": remote.port(),
        "sent": sent, "received": received, "how": a.how.to_possible_value().map(|v| v.get_name().to_string()),
    }));
    Ok(())
}

use clap::ValueEnum as _;

/// Sends a.send bytes in pieces of a.write_size with `f`, pausing a.gap_ms after each.
fn send_pieces(a: &TransferArgs, mut f: impl FnMut(u64) -> Result<u64>) -> Result<u64> {
    let mut sent = 0;
    while sent < a.send {
        let n = (a.send - sent).min(a.write_size.max(1));
        sent += f(n)?;
        if a.gap_ms > 0 {
            std::thread::sleep(Duration::from_millis(a.gap_ms));
        }
    }
    Ok(sent)
}

fn send_sendfile(a: &TransferArgs, s: &TcpStream) -> Result<u64> {
    // SAFETY: memfd_create with a static name.
    let mfd = unsafe { libc::memfd_create(c"tg-transfer".as_ptr(), libc::MFD_CLOEXEC) };
    if mfd < 0 {
        return Err(io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: mfd was just created and is ours.
    let mut file = unsafe { std::fs::File::from_raw_fd(mfd) };
    let chunk = vec![b's'; 65536];
    let mut left = a.send;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut off: libc::off_t = 0;
    send_pieces(a, |n| {
        let mut done = 0u64;
        while done < n {
            // SAFETY: both fds are open; off is ours.
            let r = unsafe { libc::sendfile(s.as_raw_fd(), mfd, &mut off, (n - done) as usize) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("sendfile");
            }
            if r == 0 {
                bail!("sendfile sent nothing");
            }
            done += r as u64;
        }
        Ok(done)
    })
}

fn send_splice(a: &TransferArgs, s: &TcpStream) -> Result<u64> {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both ends are ours.
    let (rd, mut wr) = unsafe {
        (
            std::fs::File::from_raw_fd(p[0]),
            std::fs::File::from_raw_fd(p[1]),
        )
    };
    let chunk = vec![b'p'; 16384];
    send_pieces(a, |n| {
        let mut done = 0u64;
        while done < n {
            // at most what the pipe holds (64 KiB by default) at once
            let k = (n - done).min(chunk.len() as u64) as usize;
            wr.write_all(&chunk[..k])?;
            let mut moved = 0usize;
            while moved < k {
                // SAFETY: the pipe's read end and the socket are open.
                let r = unsafe {
                    libc::splice(
                        rd.as_raw_fd(),
                        std::ptr::null_mut(),
                        s.as_raw_fd(),
                        std::ptr::null_mut(),
                        k - moved,
                        libc::SPLICE_F_MOVE,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e).context("splice");
                }
                moved += r as usize;
            }
            done += k as u64;
        }
        Ok(done)
    })
}
