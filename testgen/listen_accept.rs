//! Generator roles for the tcpaccept and solisten tests:
//! - `accept`: a server process with N threads blocked in accept() on one listener, and a client process
//!   that connects COUNT times; every accepted connection and every client socket is one JSON line.
//! - `listen-cases`: one process making listen() calls with known outcomes (explicit port, kernel-picked
//!   port, EADDRINUSE, and calls that are not TCP listens at all), one JSON line each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;

use super::*;

#[derive(clap::Args)]
pub struct AcceptArgs {
    /// Address to listen on and connect to (127.0.0.1, ::1, ...).
    #[arg(long)]
    addr: IpAddr,
    /// Server port (0: let the kernel pick one; the JSON lines tell which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, default_value = "tg-acc")]
    server_comm: String,
    #[arg(long, default_value = "tg-con")]
    client_comm: String,
    /// Server threads blocked in accept() at the same time.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Connections the client makes (the server accepts exactly that many).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// listen() backlog.
    #[arg(long, default_value_t = 64)]
    backlog: i32,
    /// The client connects COUNT times first; the server accepts (one thread) only once all COUNT wait
    /// in its accept queue, and reports the queue length after each accept ("backlog_after").
    #[arg(long)]
    queue_first: bool,
    /// Once the server is ready (its threads blocked in accept(), or listening with --queue-first),
    /// print {"role":"server-ready",...} and wait for a line on stdin before the client starts.
    #[arg(long)]
    wait_go: bool,
}

fn gettid() -> u32 {
    // SAFETY: gettid never fails.
    unsafe { libc::gettid() as u32 }
}

/// The inode number of this process's network namespace.
pub fn netns_inode() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("stat /proc/self/ns/net")?
        .ino())
}

/// The listener's accept queue: (connections waiting, limit), from TCP_INFO (tcpi_unacked/tcpi_sacked
/// hold sk_ack_backlog/sk_max_ack_backlog for a socket in LISTEN).
pub(crate) fn accept_queue(fd: RawFd) -> Result<(u32, u32)> {
    // SAFETY: tcp_info is plain old data; getsockopt fills at most len bytes.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("getsockopt(TCP_INFO)");
    }
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

/// Is this thread of ours blocked in accept()/accept4()? (/proc/self/task/TID/syscall names the syscall
/// a sleeping thread is in.)
fn in_accept(tid: u32) -> bool {
    let nr = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    let first = nr.split_whitespace().next().unwrap_or("");
    first == libc::SYS_accept4.to_string() || first == libc::SYS_accept.to_string()
}

fn conn_line(role: &str, comm: &str, s: &TcpStream) -> Result<Value> {
    let local = s.local_addr()?;
    let peer = s.peer_addr()?;
    Ok(json!({
        "role": role, "pid": getpid(), "tid": gettid(), "comm": comm, "uid": getuid(),
        "family": family_of(&local.ip()),
        "laddr": local.ip().to_string(), "lport": local.port(),
        "raddr": peer.ip().to_string(), "rport": peer.port(),
    }))
}

pub fn accept(a: &AcceptArgs) -> Result<()> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let server = fork_role("accept server", || {
        // SAFETY: the child keeps only the write end.
        let wr = unsafe {
            libc::close(rfd);
            std::fs::File::from_raw_fd(wfd)
        };
        accept_server(a, wr)
    });
    // SAFETY: the parent keeps only the read end.
    let mut rd = unsafe {
        libc::close(wfd);
        std::fs::File::from_raw_fd(rfd)
    };
    let server = server?;
    let ready = poll_readable(rd.as_raw_fd(), IO_TIMEOUT).and_then(|()| {
        let mut p = [0u8; 2];
        rd.read_exact(&mut p)
            .context("server did not report its port")?;
        Ok(u16::from_be_bytes(p))
    });
    let port = match ready {
        Ok(p) => p,
        Err(e) => {
            wait_children(&[server], Instant::now() + Duration::from_secs(2));
            return Err(e.context("server did not get ready"));
        }
    };
    if a.wait_go {
        let go =
            ready_then_wait(&json!({"role": "server-ready", "server_pid": server, "lport": port}));
        if let Err(e) = go {
            // SAFETY: our own child, by PID.
            unsafe { libc::kill(server, libc::SIGKILL) };
            wait_children(&[server], Instant::now() + Duration::from_secs(2));
            return Err(e);
        }
    }
    let client = fork_role("accept client", || accept_client(a, port))?;
    let budget = IO_TIMEOUT * 3 + Duration::from_millis(50) * a.count;
    if !wait_children(&[server, client], Instant::now() + budget) {
        bail!("accept run failed");
    }
    Ok(())
}

fn accept_server(a: &AcceptArgs, mut ready: std::fs::File) -> Result<()> {
    set_comm(&a.server_comm)?;
    let listener = make_listener(a.addr, a.port, a.backlog)?;
    if a.wait_go {
        // the threads' first accept also waits for the test's go (tracers starting: seconds under
        // emulation)
        set_rcvtimeo(listener.as_raw_fd(), IO_TIMEOUT + GO_TIMEOUT)?;
    }
    let la = listener.local_addr()?;
    emit(&json!({
        "role": "server-listen", "pid": getpid(), "comm": a.server_comm, "uid": getuid(),
        "family": family_of(&a.addr), "laddr": la.ip().to_string(), "lport": la.port(),
        "backlog": a.backlog, "threads": a.threads,
    }));
    let lfd = listener.as_raw_fd();

    if a.queue_first {
        ready.write_all(&la.port().to_be_bytes())?;
        drop(ready);
        // wait until every connection of the client waits in the accept queue
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        while accept_queue(lfd)?.0 < a.count {
            if Instant::now() >= deadline {
                bail!(
                    "accept queue holds {} of {} connections",
                    accept_queue(lfd)?.0,
                    a.count
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..a.count {
            let (s, _) = listener.accept().with_context(|| format!("accept #{i}"))?;
            let (after, max) = accept_queue(lfd)?;
            let mut v = conn_line("server", &a.server_comm, &s)?;
            v["index"] = json!(i);
            v["backlog_after"] = json!(after);
            v["backlog_max"] = json!(max);
            emit(&v);
        }
        return Ok(());
    }

    let accepted = Arc::new(AtomicU32::new(0));
    let (tid_tx, tid_rx) = mpsc::channel::<u32>();
    let mut workers = Vec::new();
    for _ in 0..a.threads {
        // unnamed threads keep the process's comm
        let l = listener.try_clone()?;
        let accepted = Arc::clone(&accepted);
        let tid_tx = tid_tx.clone();
        let comm = a.server_comm.clone();
        let count = a.count;
        workers.push(std::thread::spawn(move || -> Result<()> {
            let _ = tid_tx.send(gettid());
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                        emit(&conn_line("server", &comm, &s)?);
                        drop(s);
                        if n >= count {
                            // wake the threads still blocked in accept(): they return EINVAL
                            // SAFETY: shutdown(2) on our listener.
                            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
                            return Ok(());
                        }
                    }
                    Err(_) if accepted.load(Ordering::SeqCst) >= count => return Ok(()),
                    Err(e) => return Err(e).context("accept"),
                }
            }
        }));
    }
    drop(tid_tx);
    let tids: Vec<u32> = tid_rx.iter().take(a.threads as usize).collect();
    // tell the client to start only once every thread sleeps in accept()
    let deadline = Instant::now() + IO_TIMEOUT;
    while !tids.iter().all(|&t| in_accept(t)) {
        if Instant::now() >= deadline {
            bail!("server threads did not all block in accept()");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    emit(&json!({"role": "server-blocked", "pid": getpid(), "tids": tids}));
    ready.write_all(&la.port().to_be_bytes())?;
    drop(ready);
    let mut result = Ok(());
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(anyhow!("accept thread panicked")),
        }
    }
    result
}

fn accept_client(a: &AcceptArgs, port: u16) -> Result<()> {
    set_comm(&a.client_comm)?;
    let remote = SocketAddr::new(a.addr, port);
    let mut conns = Vec::new();
    for i in 0..a.count {
        let fd = new_socket(&a.addr)?;
        connect(fd.as_raw_fd(), &remote).with_context(|| format!("connect #{i} to {remote}"))?;
        let s = TcpStream::from(fd);
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut v = conn_line("client", &a.client_comm, &s)?;
        v["index"] = json!(i);
        emit(&v);
        conns.push(s);
    }
    // the server closes each connection once it accepted it
    for (i, mut s) in conns.into_iter().enumerate() {
        wait_eof(&mut s, false).with_context(|| format!("connection #{i}"))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ListenCasesArgs {
    /// Address of the explicit listen, and family of every socket (127.0.0.1, ::1, ...).
    #[arg(long)]
    addr: IpAddr,
    /// Port of the explicit listen.
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "tg-lsn")]
    comm: String,
    /// Backlog of the explicit listen; the other cases use BACKLOG+1, +2, ...
    #[arg(long, default_value_t = 37)]
    backlog: i32,
    /// Keep the sockets this long before closing them, in ms.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Print {"role":"ready","pid":...} and wait for a line on stdin before the first listen().
    #[arg(long)]
    wait_go: bool,
}

/// Print a ready line and wait (up to GO_TIMEOUT) for a line on stdin.
fn ready_then_wait(v: &Value) -> Result<()> {
    emit(v);
    wait_for_go()
}

fn raw_socket(addr: &IpAddr, ty: libc::c_int) -> Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd was just returned by socket(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// listen(2): 0 or -errno.
fn listen_ret(fd: RawFd, backlog: i32) -> i32 {
    // SAFETY: plain listen(2).
    if unsafe { libc::listen(fd, backlog) } == 0 {
        0
    } else {
        -io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

pub fn listen_cases(a: &ListenCasesArgs) -> Result<()> {
    set_comm(&a.comm)?;
    let netns = netns_inode()?;
    let any = if a.addr.is_ipv4() { "0.0.0.0" } else { "::" };
    let line = |case: &str, fd: RawFd, backlog: i32, ret: i32| -> Result<()> {
        let la = local_addr(fd)?;
        emit(&json!({
            "role": "listen", "case": case, "pid": getpid(), "comm": a.comm, "uid": getuid(),
            "netns": netns, "family": family_of(&a.addr),
            "laddr": la.ip().to_string(), "lport": la.port(), "backlog": backlog, "ret": ret,
        }));
        Ok(())
    };
    if a.wait_go {
        ready_then_wait(
            &json!({"role": "ready", "pid": getpid(), "comm": a.comm, "netns": netns}),
        )?;
    }
    let mut keep = Vec::new();

    // 1. explicit address and port
    let fd = raw_socket(&a.addr, libc::SOCK_STREAM)?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if a.addr.is_ipv6() {
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(fd.as_raw_fd(), &SocketAddr::new(a.addr, a.port))?;
    let ret = listen_ret(fd.as_raw_fd(), a.backlog);
    if ret != 0 {
        bail!("explicit listen failed: {ret}");
    }
    line("explicit", fd.as_raw_fd(), a.backlog, ret)?;
    keep.push(fd);

    // 2. never bound: listen() picks the port
    let fd = raw_socket(&a.addr, libc::SOCK_STREAM)?;
    let ret = listen_ret(fd.as_raw_fd(), a.backlog + 1);
    if ret != 0 {
        bail!("autobind listen failed: {ret}");
    }
    let la = local_addr(fd.as_raw_fd())?;
    if la.port() == 0 || la.ip().to_string() != any {
        bail!("autobind listen: unexpected local address {la}");
    }
    line("autobind", fd.as_raw_fd(), a.backlog + 1, ret)?;
    keep.push(fd);

    // 3. two sockets bound to one port (SO_REUSEADDR allows that while neither listens): the second
    //    listen() fails with EADDRINUSE
    let first = raw_socket(&a.addr, libc::SOCK_STREAM)?;
    setsockopt_int(first.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(first.as_raw_fd(), &SocketAddr::new(a.addr, 0))?;
    let shared = local_addr(first.as_raw_fd())?;
    let second = raw_socket(&a.addr, libc::SOCK_STREAM)?;
    setsockopt_int(second.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(second.as_raw_fd(), &shared)?;
    let ret = listen_ret(first.as_raw_fd(), a.backlog + 2);
    if ret != 0 {
        bail!("first listen on the shared port failed: {ret}");
    }
    line("inuse-first", first.as_raw_fd(), a.backlog + 2, ret)?;
    let ret = listen_ret(second.as_raw_fd(), a.backlog + 3);
    if ret != -libc::EADDRINUSE {
        bail!("second listen on {shared}: {ret}, expected EADDRINUSE");
    }
    line("inuse", second.as_raw_fd(), a.backlog + 3, ret)?;
    keep.push(first);
    keep.push(second);

    // 4. not TCP listens: UDP (EOPNOTSUPP) and a pipe (ENOTSOCK)
    let udp = raw_socket(&a.addr, libc::SOCK_DGRAM)?;
    bind(udp.as_raw_fd(), &SocketAddr::new(a.addr, 0))?;
    let ret = listen_ret(udp.as_raw_fd(), a.backlog + 4);
    if ret != -libc::EOPNOTSUPP {
        bail!("listen on UDP: {ret}, expected EOPNOTSUPP");
    }
    line("udp", udp.as_raw_fd(), a.backlog + 4, ret)?;
    keep.push(udp);
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds, which we own from here on.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let ret = listen_ret(pr.as_raw_fd(), a.backlog + 5);
    if ret != -libc::ENOTSOCK {
        bail!("listen on a pipe: {ret}, expected ENOTSOCK");
    }
    emit(&json!({
        "role": "listen", "case": "notsock", "pid": getpid(), "comm": a.comm, "netns": netns,
        "backlog": a.backlog + 5, "ret": ret,
    }));
    drop((pr, pw));

    std::thread::sleep(Duration::from_millis(a.hold_ms));
    drop(keep);
    Ok(())
}
