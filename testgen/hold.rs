//! `hold`: many TCP connections open at once, from several client processes to pre-forked server
//! processes accepting from one listener, then closed: the scale a load balancer or a connection pool brings (tens of thousands of sockets).
//! Each client connects its share, writes 1 byte on each connection, and holds them; the server accepts
//! every connection and reads its byte. Once all are established, {"role":"held"} is printed (and, with
//! --wait-go, a line on stdin is awaited); then the clients close theirs and the server closes each on
//! its EOF. Each client's line lists its local address and ports, each server's line its peers (address,
//! port), so that a test can check every session's owner.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{
    connect, emit, fork_role, getpid, getuid, make_listener, new_socket, set_comm, wait_children,
    wait_for_go,
};

#[derive(clap::Args)]
pub struct HoldArgs {
    /// Address to listen on and connect to (127.0.0.1, ::1, ...).
    #[arg(long)]
    addr: IpAddr,
    /// Server port (0: let the kernel pick one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Connections held open at once (twice as many sockets).
    #[arg(long)]
    conns: u32,
    /// Client processes sharing them (at least as many as the open-file limit needs; the servers are
    /// as many as it needs).
    #[arg(long, default_value_t = 2)]
    procs: u32,
    #[arg(long, default_value = "tg-hold-srv")]
    server_comm: String,
    #[arg(long, default_value = "tg-hold-cli")]
    client_comm: String,
    /// Wait for a line on stdin while the connections are held.
    #[arg(long)]
    wait_go: bool,
    /// The clients close their connections at about this rate in all (connections a second; 0: all
    /// at once, as fast as the processes can).
    #[arg(long, default_value_t = 0)]
    close_rate: u32,
}

/// Time for everything: connecting, holding, closing.
const BUDGET: Duration = Duration::from_secs(240);

/// A pipe: (read end, write end), both closed on exec.
fn pipe() -> Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: two new fds that nothing else owns.
    unsafe { Ok((File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))) }
}

/// This network namespace (the test's own) gets room for the connections: every port as an ephemeral
/// one, and an accept queue as long as the kernel allows.
fn widen_namespace() {
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535");
    let _ = std::fs::write("/proc/sys/net/core/somaxconn", "65535");
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_max_syn_backlog", "65535");
}

/// Processes needed for `n` sockets at `per` open files each.
fn procs_for(n: u32, per: u32) -> u32 {
    n.div_ceil(per).max(1)
}

/// This process's share of `n` among `k`.
fn share(n: u32, k: u32, i: u32) -> u32 {
    n / k + u32::from(i < n % k)
}

pub fn hold(a: &HoldArgs) -> Result<()> {
    if a.conns == 0 {
        bail!("--conns must be above 0");
    }
    let deadline = Instant::now() + BUDGET;
    widen_namespace();
    let per = open_files_per_process()?;
    let servers = procs_for(a.conns, per);
    let clients = a.procs.max(procs_for(a.conns, per));
    let (close_rd, close_wr) = pipe()?;
    // every process of ours inherits the parent's end of the close pipe: each closes it first, so that
    // the parent's close is the end of file the clients wait for
    let close_wr_fd = close_wr.as_raw_fd();
    let forget_close = move || {
        // SAFETY: closing the inherited copy of an fd this (child) process does not otherwise use.
        unsafe { libc::close(close_wr_fd) };
    };

    // the listener is this process's (named as the servers), which forks the servers that accept from it
    set_comm(&a.server_comm)?;
    let listener = make_listener(a.addr, a.port, 65535)?;
    let la = listener.local_addr()?;
    let port = la.port();
    emit(&json!({
        "role": "server-listen", "pid": getpid(), "comm": a.server_comm, "uid": getuid(),
        "family": crate::family_of(&a.addr), "laddr": la.ip().to_string(), "lport": port,
    }));
    let mut pids = Vec::new();
    let mut reports = Vec::new();
    for i in 0..servers {
        let n = share(a.conns, servers, i);
        let (rep_rd, rep_wr) = pipe()?;
        let listener = listener.try_clone()?;
        pids.push(fork_role("server", move || {
            forget_close();
            server_role(a, &listener, n, rep_wr, deadline)
        })?);
        reports.push(rep_rd);
    }
    drop(listener);
    for i in 0..clients {
        let n = share(a.conns, clients, i);
        let (rep_rd, rep_wr) = pipe()?;
        let close_rd = close_rd.try_clone()?;
        // each client binds its own local ports: the kernel's search for a free ephemeral port grows
        // with the ports in use (50,000 connections took 48 s that way, seconds this way). Over IPv4
        // loopback each client has an address of its own (127.0.0.2, ...) and every port; over IPv6 (one
        // loopback address) the clients share the ports out.
        let (src, ports) = match a.addr {
            IpAddr::V4(v4) if v4.is_loopback() => {
                let o = v4.octets();
                let src =
                    std::net::Ipv4Addr::new(o[0], 2 + (i / 250) as u8, 0, 2 + (i % 250) as u8);
                (IpAddr::V4(src), 1024..65535)
            }
            other => {
                let span = (65535 - 1024) / clients;
                (
                    other,
                    (1024 + i * span) as u16..(1024 + (i + 1) * span) as u16,
                )
            }
        };
        pids.push(fork_role("client", move || {
            forget_close();
            client_role(a, port, n, clients, src, ports, rep_wr, close_rd, deadline)
        })?);
        reports.push(rep_rd);
    }
    drop(close_rd);
    // every process's report (written once all its connections are established)
    let mut lines = Vec::new();
    for mut r in reports {
        let mut s = String::new();
        r.read_to_string(&mut s).context("a report")?;
        if s.is_empty() {
            // it failed (its error is on stderr)
            wait_children(&pids, Instant::now());
            bail!("a process of the hold failed before it reported");
        }
        lines.push(s);
    }
    for l in &lines {
        print!("{l}");
    }
    emit(&json!({"role": "held", "conns": a.conns, "port": port}));
    if a.wait_go {
        wait_for_go()?;
    }
    drop(close_wr); // the clients close theirs now
    if !wait_children(&pids, deadline) {
        bail!("a process of the hold failed");
    }
    Ok(())
}

/// Open files a process may have here, less a margin (the soft limit is raised to the hard one).
fn open_files_per_process() -> Result<u32> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let per = lim.rlim_cur.min(1 << 20).saturating_sub(256);
    if per < 256 {
        bail!("too few open files allowed per process ({})", lim.rlim_cur);
    }
    Ok(per as u32)
}

fn server_role(
    a: &HoldArgs,
    listener: &std::net::TcpListener,
    n: u32,
    mut report: File,
    deadline: Instant,
) -> Result<()> {
    let mut conns = Vec::with_capacity(n as usize);
    while conns.len() < n as usize {
        if Instant::now() >= deadline {
            bail!("accepted {} of {n} before the deadline", conns.len());
        }
        let (s, _) = listener
            .accept()
            .with_context(|| format!("accept #{}", conns.len()))?;
        conns.push(s);
    }
    // each connection's byte
    let mut peers = Vec::with_capacity(n as usize);
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .with_context(|| format!("reading connection #{i}'s byte"))?;
        let peer = s.peer_addr()?;
        peers.push(json!([peer.ip().to_string(), peer.port()]));
    }
    let line = json!({
        "role": "server", "pid": getpid(), "comm": a.server_comm, "uid": getuid(), "conns": n,
        "peers": peers,
    });
    writeln!(report, "{line}")?;
    drop(report);
    // the clients close first; each connection is closed here on its EOF
    for (i, mut s) in conns.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => bail!("connection #{i}: data after its byte"),
            Err(e) => return Err(e).with_context(|| format!("connection #{i}: waiting for EOF")),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn client_role(
    a: &HoldArgs,
    port: u16,
    n: u32,
    clients: u32,
    src: IpAddr,
    mut ports: std::ops::Range<u16>,
    mut report: File,
    mut close: File,
    deadline: Instant,
) -> Result<()> {
    set_comm(&a.client_comm)?;
    let remote = SocketAddr::new(a.addr, port);
    let mut held: Vec<TcpStream> = Vec::with_capacity(n as usize);
    let mut lports = Vec::with_capacity(n as usize);
    for i in 0..n {
        if Instant::now() >= deadline {
            bail!("connected {i} of {n} before the deadline");
        }
        let fd: OwnedFd = new_socket(&a.addr)?;
        loop {
            let Some(p) = ports.next() else {
                bail!("no local port left for connection #{i}");
            };
            if p != port && crate::bind(fd.as_raw_fd(), &SocketAddr::new(src, p)).is_ok() {
                break;
            }
        }
        connect(fd.as_raw_fd(), &remote).with_context(|| format!("connect #{i} to {remote}"))?;
        let mut s = TcpStream::from(fd);
        s.write_all(b"x")?;
        lports.push(s.local_addr()?.port());
        held.push(s);
    }
    let line = json!({
        "role": "client", "pid": getpid(), "comm": a.client_comm, "uid": getuid(),
        "family": crate::family_of(&a.addr), "laddr": src.to_string(), "rport": port, "conns": n,
        "lports": lports,
    });
    writeln!(report, "{line}")?;
    drop(report);
    // held until the parent closes its end of the close pipe (EOF)
    crate::poll_readable(
        close.as_raw_fd(),
        deadline.saturating_duration_since(Instant::now()),
    )
    .context("waiting for the close")?;
    let mut b = [0u8; 1];
    let _ = close.read(&mut b);
    if a.close_rate == 0 {
        drop(held);
        return Ok(());
    }
    // paced: batches of 1/100 s of this client's share of the rate
    let batch = (a.close_rate / clients / 100).max(1) as usize;
    let start = Instant::now();
    let mut closed = 0usize;
    while !held.is_empty() {
        let n = batch.min(held.len());
        held.drain(..n);
        closed += n;
        let due = start
            + Duration::from_secs_f64(closed as f64 * f64::from(clients) / f64::from(a.close_rate));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    Ok(())
}
