//! `stall`: one client connection whose traffic the test makes the network lose, so that the kernel
//! retransmits (tcpretrans tests). The client connects (non-blocking; with --syn the outcome is not
//! awaited, for a destination the SYN never reaches), prints {"role":"stall",...} with its addresses
//! and ports, waits for a line on stdin, writes SEND bytes (as many as the send buffer takes, without
//! blocking), prints {"role":"sent",...}, waits for another line, and closes with a reset (SO_LINGER 0),
//! so the kernel stops retransmitting at once.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;

use crate::{
    connect, connect_outcome, emit, family_of, getpid, getuid, local_addr, new_socket, set_comm,
    set_linger_zero, wait_for_go,
};

#[derive(clap::Args)]
pub struct StallArgs {
    #[arg(long)]
    addr: IpAddr,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "tg-stall")]
    comm: String,
    /// Bytes to write after the first go line.
    #[arg(long, default_value_t = 0)]
    send: u64,
    /// Do not wait for the handshake (the SYN goes nowhere).
    #[arg(long)]
    syn: bool,
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on our own socket.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

pub fn stall(a: &StallArgs) -> Result<()> {
    set_comm(&a.comm)?;
    let remote = SocketAddr::new(a.addr, a.port);
    let fd = new_socket(&a.addr)?;
    set_nonblocking(fd.as_raw_fd());
    match connect(fd.as_raw_fd(), &remote) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => bail!("connect {remote}: {e}"),
    }
    if !a.syn {
        let err = connect_outcome(fd.as_raw_fd(), &remote)?;
        if err != 0 {
            bail!("connect {remote}: failed ({err})");
        }
    }
    let local = local_addr(fd.as_raw_fd())?;
    emit(&json!({
        "role": "stall", "pid": getpid(), "comm": a.comm, "uid": getuid(), "family": family_of(&a.addr),
        "laddr": local.ip().to_string(), "lport": local.port(),
        "raddr": a.addr.to_string(), "rport": a.port,
    }));
    wait_for_go()?;
    let mut sent = 0u64;
    let buf = vec![b'r'; 4096];
    while sent < a.send {
        let n = (a.send - sent).min(buf.len() as u64) as usize;
        // SAFETY: buf holds at least n bytes.
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                n,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            break; // the send buffer is full (or the connection is gone): what was taken is in flight
        }
        sent += r as u64;
    }
    emit(&json!({"role": "sent", "pid": getpid(), "bytes": sent}));
    wait_for_go()?;
    set_linger_zero(fd.as_raw_fd())?;
    drop(fd);
    std::thread::sleep(Duration::from_millis(10));
    emit(&json!({"role": "closed", "pid": getpid()}));
    Ok(())
}
