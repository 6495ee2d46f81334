//! Generator role for the tcpsynbl tests, `backlog`: a server process listens with a known backlog and
//! either never accepts (its accept queue fills, and the kernel drops the handshakes beyond it:
//! ListenOverflows) or accepts each connection at once; a client process connects CLIENTS times,
//! non-blocking, one after another. With `--defer-accept` the listener sets TCP_DEFER_ACCEPT: a
//! handshake makes no child socket until the client's first data, so the first EARLY clients send a
//! byte at once and the others only once all have connected: their data then finds the accept queue
//! full, and the kernel drops the handshake at its last step (syn_recv_sock), not the SYN.
//! The listener is closed before the clients' sockets, so that nothing retried after it counts.
//! Lines: `backlog-listen` (server pid, comm, port, backlog, backlog_max), `backlog-client` per client
//! (connected or not), `backlog-end` (what the server's queue held, what it accepted).

use super::*;
use crate::listen_accept::accept_queue;

#[derive(clap::Args)]
pub struct BacklogArgs {
    #[arg(long)]
    addr: IpAddr,
    /// Server port (0: the kernel picks one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// listen() backlog.
    #[arg(long)]
    backlog: i32,
    /// Connections the client makes, one after another.
    #[arg(long)]
    clients: u32,
    #[arg(long, default_value = "tg-bl-srv")]
    server_comm: String,
    #[arg(long, default_value = "tg-bl-cli")]
    client_comm: String,
    /// The server accepts every connection at once and writes it a byte; the client reads that byte
    /// before its next connect (the queue is empty at every connect).
    #[arg(long)]
    accept: bool,
    /// TCP_DEFER_ACCEPT on the listener (see above).
    #[arg(long)]
    defer_accept: bool,
    /// With --defer-accept: clients that send their byte right after connecting.
    #[arg(long, default_value_t = 0)]
    early: u32,
    /// How long the client holds its connections (the kernel retries dropped handshakes meanwhile)
    /// before the listener, then the clients, close.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: two new fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits (bounded) until fd is readable or at EOF; returns a byte read, None at EOF.
fn read_byte(fd: RawFd, timeout: Duration) -> Result<Option<u8>> {
    poll_readable(fd, timeout)?;
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into our buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    match n {
        1 => Ok(Some(b[0])),
        0 => Ok(None),
        _ => Err(io::Error::last_os_error()).context("read"),
    }
}

fn write_byte(fd: RawFd) -> Result<()> {
    // SAFETY: writing one byte from our buffer.
    if unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error()).context("write");
    }
    Ok(())
}

/// Closes, in a forked child, the pipe ends that belong to its parent (the parent's OwnedFds stay
/// as they are: the child leaves with _exit, dropping nothing).
fn close_in_child(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: fds this child inherited and does not use.
        unsafe { libc::close(fd) };
    }
}

pub fn backlog(a: &BacklogArgs) -> Result<()> {
    let (port_r, port_w) = pipe()?;
    let (close_r, close_w) = pipe()?;
    let (pr, pw, cr, cw) = (
        port_r.as_raw_fd(),
        port_w.as_raw_fd(),
        close_r.as_raw_fd(),
        close_w.as_raw_fd(),
    );
    let server = fork_role("backlog server", || {
        close_in_child(&[pr, cw]);
        server(a, pw, cr)
    })?;
    drop(port_w);
    drop(close_r);
    let mut p = [0u8; 2];
    let got = poll_readable(pr, IO_TIMEOUT).and_then(|()| {
        let mut f = std::fs::File::from(port_r);
        f.read_exact(&mut p)
            .context("server did not report its port")
    });
    if let Err(e) = got {
        drop(close_w);
        wait_children(&[server], Instant::now() + Duration::from_secs(2));
        return Err(e);
    }
    let port = u16::from_be_bytes(p);
    let (held_r, held_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let (hr, hw, dr, dw) = (
        held_r.as_raw_fd(),
        held_w.as_raw_fd(),
        done_r.as_raw_fd(),
        done_w.as_raw_fd(),
    );
    let client = fork_role("backlog client", || {
        close_in_child(&[hr, dw, cw]);
        client(a, port, hw, dr)
    })?;
    drop(held_w);
    drop(done_r);
    // the client holds its connections: the listener closes first, then the clients
    let held = read_byte(hr, IO_TIMEOUT * 3 + Duration::from_millis(a.hold_ms));
    drop(close_w);
    let server_ok = wait_children(&[server], Instant::now() + IO_TIMEOUT);
    drop(done_w);
    let client_ok = wait_children(&[client], Instant::now() + IO_TIMEOUT);
    held?;
    if !(server_ok && client_ok) {
        bail!("backlog run failed");
    }
    Ok(())
}

fn server(a: &BacklogArgs, port_w: RawFd, close_r: RawFd) -> Result<()> {
    set_comm(&a.server_comm)?;
    let listener = make_listener(a.addr, a.port, a.backlog)?;
    let lfd = listener.as_raw_fd();
    if a.defer_accept {
        setsockopt_int(lfd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 30)?;
    }
    let la = listener.local_addr()?;
    let (_, max) = accept_queue(lfd)?;
    emit(&json!({
        "role": "backlog-listen", "pid": getpid(), "comm": a.server_comm, "uid": getuid(),
        "family": family_of(&a.addr), "laddr": la.ip().to_string(), "lport": la.port(),
        "backlog": a.backlog, "backlog_max": max,
    }));
    // SAFETY: this child's own end of the pipe, used once here.
    std::fs::File::from(unsafe { OwnedFd::from_raw_fd(port_w) })
        .write_all(&la.port().to_be_bytes())?;
    let mut accepted = 0u32;
    let deadline = Instant::now() + IO_TIMEOUT * 4 + Duration::from_millis(a.hold_ms);
    loop {
        let mut fds = [
            libc::pollfd {
                fd: close_r,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: lfd,
                events: if a.accept { libc::POLLIN } else { 0 },
                revents: 0,
            },
        ];
        if Instant::now() >= deadline {
            bail!("not told to close in time");
        }
        // SAFETY: two live pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if fds[0].revents != 0 {
            break; // the parent closed its end: time to close
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let (mut s, _) = listener.accept().context("accept")?;
            s.write_all(b"x")?;
            accepted += 1;
        }
    }
    let (queued, max) = accept_queue(lfd)?;
    emit(&json!({
        "role": "backlog-end", "pid": getpid(), "lport": la.port(), "accepted": accepted,
        "queued": queued, "backlog_max": max,
    }));
    drop(listener);
    Ok(())
}

/// Waits (bounded) until a non-blocking connect has completed; true when it connected.
fn connected(fd: RawFd, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return Ok(false);
    }
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one int.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    Ok(err == 0)
}

fn client(a: &BacklogArgs, port: u16, held_w: RawFd, done_r: RawFd) -> Result<()> {
    set_comm(&a.client_comm)?;
    let remote = SocketAddr::new(a.addr, port);
    let mut socks = Vec::new();
    for i in 0..a.clients {
        let fd = new_socket(&a.addr)?;
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on our socket.
        unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) };
        match connect(raw, &remote) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e).with_context(|| format!("connect #{i} to {remote}")),
        }
        // a SYN the full queue dropped stays unanswered: a short wait tells
        let up = connected(raw, Duration::from_millis(500))?;
        if up && a.accept {
            // the server's byte: it has accepted this one before the next connect
            read_byte(raw, IO_TIMEOUT)?.context("server closed before its byte")?;
        }
        if up && a.defer_accept && i < a.early {
            write_byte(raw)?;
        }
        socks.push((fd, up));
    }
    if a.defer_accept {
        for (fd, up) in socks.iter().skip(a.early as usize) {
            if *up {
                write_byte(fd.as_raw_fd())?;
            }
        }
    }
    for (i, (fd, up)) in socks.iter().enumerate() {
        let l = local_addr(fd.as_raw_fd())?;
        emit(&json!({
            "role": "backlog-client", "pid": getpid(), "comm": a.client_comm, "index": i,
            "lport": l.port(), "rport": port, "connected": up,
        }));
    }
    std::thread::sleep(Duration::from_millis(a.hold_ms));
    write_byte(held_w)?;
    // the listener closes; then these
    let _ = read_byte(done_r, IO_TIMEOUT * 2);
    drop(socks);
    Ok(())
}
