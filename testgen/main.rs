//! `sockray-testgen`: a TCP traffic generator for sockray's integration tests.
//!
//! Every process it runs names itself (`prctl(PR_SET_NAME)`) with the comm given on the command line,
//! and every role prints one JSON line per socket on stdout describing exactly what it did (pid, comm,
//! addresses, ports, bytes moved), so a test can compare a tracer's output against the truth.
//!
//! Traffic only goes where the caller points it; the tests run it inside a network namespace of their
//! own (`ip netns exec NS sockray-testgen ...`) on loopback. Every blocking call has a timeout and every
//! process it forks is waited for (and killed by PID if it overruns), so it always ends by itself.

use std::io::{self, BufRead, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::exit;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

mod backlog;
mod fdpass;
mod hold;
mod listen_accept;
mod stall;
mod transfer;

/// Read/write/accept timeout of every socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `--wait-go` client waits for the test's go line.
const GO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "sockray-testgen",
    about = "TCP traffic generator with known process names (sockray tests)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Closer {
    Client,
    Server,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fork a server and a client process and run COUNT TCP sessions between them, one after another.
    Session {
        /// Address to listen on and connect to (127.0.0.1, ::1, ...).
        #[arg(long)]
        addr: IpAddr,
        /// Server port (0: let the kernel pick one; the JSON lines tell which).
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tg-srv")]
        server_comm: String,
        #[arg(long, default_value = "tg-cli")]
        client_comm: String,
        /// Bytes the client writes (the server reads exactly that many).
        #[arg(long, default_value_t = 0)]
        client_send: u64,
        /// Bytes the server writes back (the client reads exactly that many).
        #[arg(long, default_value_t = 0)]
        server_send: u64,
        /// How long the client holds each connection after the exchange (and, when the server closes
        /// first, after the server's FIN), in ms.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Which side closes first; the other waits for EOF, then closes.
        #[arg(long, value_enum, default_value = "client")]
        closer: Closer,
        /// Number of sessions.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Once the server listens, the client prints {"role":"client-ready",...} and waits for a line
        /// on stdin before its first connect (lets a test start a tracer that filters on its pid).
        #[arg(long)]
        wait_go: bool,
        /// After the first exchange the client prints {"role":"client-connected",...} and waits for a
        /// line on stdin before it holds and closes (lets a test start a tracer on an open connection).
        #[arg(long)]
        close_on_go: bool,
        /// With --wait-go: the client creates its first socket before it prints client-ready (a socket
        /// that exists, unconnected, when a tracer starts).
        #[arg(long)]
        socket_early: bool,
        /// Pre-forked: the server process listens, then forks a worker named WORKER_COMM that accepts
        /// and serves every connection (its `server` lines carry the worker's pid and comm).
        #[arg(long)]
        worker_comm: Option<String>,
        /// The client ends each connection with a reset (SO_LINGER 0) instead of a FIN; the server
        /// takes the reset as the end of the connection. Only with `--closer client`.
        #[arg(long)]
        reset: bool,
        /// The server does not read the client's bytes: once they are in, it writes its reply and
        /// closes, so the kernel resets the connection from the server's close() (unread data) instead
        /// of sending a FIN; the client reads the reply and takes the reset as the end. Needs
        /// `--closer server` and `--client-send` > 0.
        #[arg(long)]
        server_unread: bool,
        /// The client runs in this other network namespace (a name under /run/netns, as `ip netns`
        /// makes them) and connects from there: traffic that crosses a link between the two.
        #[arg(long)]
        client_netns: Option<String>,
    },
    /// Connect to a port where nothing listens and expect ECONNREFUSED.
    Refused {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tg-ref")]
        comm: String,
    },
    /// A server with THREADS threads blocked in accept() on one listener, and a client connecting
    /// COUNT times (tcpaccept tests).
    Accept(listen_accept::AcceptArgs),
    /// Hold many connections open at once from several client processes, then close them.
    Hold(hold::HoldArgs),
    /// One connection whose traffic the test makes the network lose (tcpretrans tests): connect, wait
    /// for go, write, wait for go, reset.
    Stall(stall::StallArgs),
    /// One connection moving known byte counts both ways, by write(), sendfile() or splice() (tcptop,
    /// tcpsubnet tests).
    Transfer(transfer::TransferArgs),
    /// listen() calls with known outcomes, one JSON line each: explicit port, kernel-picked port,
    /// EADDRINUSE, and non-TCP listens (UDP, a pipe) (solisten tests).
    ListenCases(listen_accept::ListenCasesArgs),
    /// A listener with a known backlog that never accepts (or accepts at once), and a client connecting
    /// CLIENTS times (tcpsynbl tests).
    Backlog(backlog::BacklogArgs),
    /// File descriptors passed over a Unix socketpair to a forked child, one and then three per round
    /// (sofdsnoop tests).
    FdPass(fdpass::FdPassArgs),
    /// Connect COUNT times to ADDR:PORT, a fresh socket each time, and print one JSON line per attempt:
    /// connect()'s return value (`ret`: 0 or -errno), the final outcome (`result`: 0 or -errno) and the
    /// local port getsockname() reports after connect() returned (the kernel keeps it after a refusal).
    Connect {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tg-con")]
        comm: String,
        /// O_NONBLOCK: connect() returns EINPROGRESS; the outcome is then awaited with poll().
        #[arg(long)]
        nonblock: bool,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Do not await the outcome: connect() without blocking, print the line (`result` null), hold
        /// the socket PENDING_MS (a handshake in progress, towards a peer that does not answer), close.
        #[arg(long)]
        pending_ms: Option<u64>,
    },
    /// Resolve NAME through the system resolver (getaddrinfo: /etc/resolv.conf) against a DNS server
    /// this command runs itself on 127.0.0.1:53 (a child named DNS_COMM that answers every A query
    /// for NAME with ANSWER, and AAAA queries with no records), then connect to the answer on PORT
    /// from a child named COMM. Prints a `dns-connect` line like `connect`'s, plus `name`.
    /// Run it in a netns whose /etc/netns/<ns>/resolv.conf says `nameserver 127.0.0.1`.
    DnsConnect {
        #[arg(long)]
        name: String,
        #[arg(long)]
        answer: Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tg-dnscli")]
        comm: String,
        #[arg(long, default_value = "tg-dns")]
        dns_comm: String,
    },
    /// A slow handshake: a server listens with backlog 0 and does not accept for ACCEPT_DELAY_MS; the
    /// client's first connect fills the accept queue, so the kernel drops the SYN of its second, which
    /// completes only when the SYN is retransmitted (about 1 s later). Prints `filler` and `client`
    /// lines (like `session`'s) with `connect_ms`, how long connect() took.
    SlowHandshake {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tg-slow-srv")]
        server_comm: String,
        #[arg(long, default_value = "tg-slow-cli")]
        client_comm: String,
        #[arg(long, default_value_t = 300)]
        accept_delay_ms: u64,
    },
    /// Listen (backlog 16), print one JSON line, sleep HOLD_MS, close.
    Listen {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tg-lsn")]
        comm: String,
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Session {
            addr,
            port,
            server_comm,
            client_comm,
            client_send,
            server_send,
            hold_ms,
            closer,
            count,
            wait_go,
            close_on_go,
            socket_early,
            worker_comm,
            reset,
            server_unread,
            client_netns,
        } => session(&SessionCfg {
            addr,
            port,
            server_comm,
            client_comm,
            client_send,
            server_send,
            hold_ms,
            closer,
            count,
            wait_go,
            close_on_go,
            socket_early,
            worker_comm,
            reset,
            server_unread,
            client_netns,
        }),
        Cmd::Refused { addr, port, comm } => refused(addr, port, &comm),
        Cmd::Listen {
            addr,
            port,
            comm,
            hold_ms,
        } => listen_role(addr, port, &comm, hold_ms),
        Cmd::SlowHandshake {
            addr,
            port,
            server_comm,
            client_comm,
            accept_delay_ms,
        } => slow_handshake(addr, port, &server_comm, &client_comm, accept_delay_ms),
        Cmd::Connect {
            addr,
            port,
            comm,
            pending_ms: Some(ms),
            ..
        } => pending_connect(addr, port, &comm, ms),
        Cmd::Connect {
            addr,
            port,
            comm,
            nonblock,
            count,
            pending_ms: None,
        } => connect_role(addr, port, &comm, nonblock, count),
        Cmd::DnsConnect {
            name,
            answer,
            port,
            comm,
            dns_comm,
        } => dns_connect(&name, answer, port, &comm, &dns_comm),
        Cmd::Accept(a) => listen_accept::accept(&a),
        Cmd::Hold(a) => hold::hold(&a),
        Cmd::Stall(a) => stall::stall(&a),
        Cmd::Transfer(a) => transfer::transfer(&a),
        Cmd::ListenCases(a) => listen_accept::listen_cases(&a),
        Cmd::Backlog(a) => backlog::backlog(&a),
        Cmd::FdPass(a) => fdpass::fd_pass(&a),
    };
    if let Err(e) = res {
        eprintln!("sockray-testgen: {e:#}");
        exit(1);
    }
}

// ---------------------------------------------------------------------------------------------------
// small libc helpers

fn set_comm(comm: &str) -> Result<()> {
    let mut buf = [0u8; 16];
    let b = comm.as_bytes();
    if b.len() > 15 || b.contains(&0) {
        bail!("comm {comm:?} is longer than 15 bytes or contains NUL");
    }
    buf[..b.len()].copy_from_slice(b);
    // SAFETY: buf is a NUL-terminated 16-byte buffer.
    if unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_NAME)");
    }
    Ok(())
}

fn getpid() -> u32 {
    // SAFETY: getpid never fails.
    unsafe { libc::getpid() as u32 }
}

fn getuid() -> u32 {
    // SAFETY: getuid never fails.
    unsafe { libc::getuid() }
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

fn new_socket(addr: &IpAddr) -> Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn to_sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Result<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(sin6.sin6_port),
            ))
        }
        f => bail!("unexpected address family {f}"),
    }
}

fn bind(fd: RawFd, sa: &SocketAddr) -> Result<()> {
    let (ss, len) = to_sockaddr(sa);
    // SAFETY: ss/len describe a valid sockaddr.
    if unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind {sa}"));
    }
    Ok(())
}

/// connect(2); the raw io::Error so the caller can look at the errno.
fn connect(fd: RawFd, sa: &SocketAddr) -> io::Result<()> {
    let (ss, len) = to_sockaddr(sa);
    loop {
        // SAFETY: ss/len describe a valid sockaddr.
        if unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn local_addr(fd: RawFd) -> Result<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is valid; getsockname fills at most len bytes.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    if unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return Err(io::Error::last_os_error()).context("getsockname");
    }
    from_sockaddr(&ss)
}

/// setsockopt(2) with a value of any plain C type.
fn setsockopt_val<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> Result<()> {
    // SAFETY: val is a live T of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("setsockopt({level}, {name})"));
    }
    Ok(())
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> Result<()> {
    setsockopt_val(fd, level, name, &val)
}

/// SO_LINGER with a zero timeout: close() then resets the connection instead of sending a FIN.
fn set_linger_zero(fd: RawFd) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt_val(fd, libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// SO_RCVTIMEO on a listener bounds accept(2) too.
fn set_rcvtimeo(fd: RawFd, d: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt_val(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// A listening socket on addr:port, SO_REUSEADDR, IPV6_V6ONLY for v6.
fn make_listener(addr: IpAddr, port: u16, backlog: i32) -> Result<TcpListener> {
    let fd = new_socket(&addr)?;
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(fd.as_raw_fd(), &SocketAddr::new(addr, port))?;
    // SAFETY: plain listen(2) on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error()).context("listen");
    }
    set_rcvtimeo(fd.as_raw_fd(), IO_TIMEOUT)?;
    Ok(TcpListener::from(fd))
}

/// Print one JSON line with a single write(2), so lines of several processes sharing stdout never mix.
fn emit(v: &Value) {
    let mut line = v.to_string();
    line.push('\n');
    let mut out = io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn read_exact_n(s: &mut TcpStream, n: u64) -> Result<u64> {
    let mut buf = [0u8; 65536];
    let mut got = 0u64;
    while got < n {
        let want = (n - got).min(buf.len() as u64) as usize;
        match s.read(&mut buf[..want]) {
            Ok(0) => bail!("EOF after {got} of {n} bytes"),
            Ok(k) => got += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("read after {got} of {n} bytes")),
        }
    }
    Ok(got)
}

fn write_n(s: &mut TcpStream, n: u64) -> Result<u64> {
    let buf = [b'x'; 65536];
    let mut sent = 0u64;
    while sent < n {
        let want = (n - sent).min(buf.len() as u64) as usize;
        match s.write(&buf[..want]) {
            Ok(0) => bail!("write returned 0 after {sent} of {n} bytes"),
            Ok(k) => sent += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("write after {sent} of {n} bytes")),
        }
    }
    Ok(sent)
}

/// Waits until n bytes are in s's receive queue, without reading them (SIOCINQ).
fn wait_queued(s: &TcpStream, n: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD (SIOCINQ) writes one int.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
            return Err(io::Error::last_os_error()).context("FIONREAD");
        }
        if queued as u64 >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{queued} of {n} bytes arrived in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until every byte written on `s` is acknowledged by the peer (SIOCOUTQ 0), so that a close that
/// resets the connection afterwards does not race with the peer's ACK (tcplife's bytes sent are the
/// bytes acknowledged: a reset before the ACK, as under emulation, leaves them 0).
fn wait_acked(s: &TcpStream, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) } != 0 {
            return Err(io::Error::last_os_error()).context("SIOCOUTQ");
        }
        if unacked == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{unacked} bytes still unacknowledged after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Wait for the peer's FIN (the next read must return 0), or with `reset` for its reset.
fn wait_eof(s: &mut TcpStream, reset: bool) -> Result<()> {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) if !reset => return Ok(()),
            Ok(0) => bail!("expected a reset, got EOF"),
            Ok(k) => bail!("expected EOF, got {k} more bytes"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if reset && e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e).context("waiting for EOF"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// processes

/// fork(); the child runs f and exits with 0 on Ok, 1 on Err (after printing it).
fn fork_role(what: &str, f: impl FnOnce() -> Result<()>) -> Result<libc::pid_t> {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: this program is single-threaded, so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        let code = match f() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("sockray-testgen {what} (pid {}): {e:#}", getpid());
                1
            }
        };
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        // SAFETY: leave the child without running the parent's atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// Wait for every pid until the deadline; on overrun SIGKILL the ones still running (our own children,
/// by PID) and reap them. Returns true when every child exited with status 0.
fn wait_children(pids: &[libc::pid_t], deadline: Instant) -> bool {
    let mut pending: Vec<libc::pid_t> = pids.to_vec();
    let mut ok = true;
    while !pending.is_empty() {
        pending.retain(|&pid| {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    eprintln!("sockray-testgen: child {pid} failed (wait status {status:#x})");
                    ok = false;
                }
                false
            } else if r < 0 {
                ok = false;
                false
            } else {
                true
            }
        });
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for &pid in &pending {
                eprintln!("sockray-testgen: child {pid} overran its time; killing it");
                // SAFETY: our own child, by PID; then reap it.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    ok
}

/// Wait (bounded) until fd is readable.
fn poll_readable(fd: RawFd, timeout: Duration) -> Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out after {timeout:?}");
        }
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("poll");
            }
        }
    }
}

struct SessionCfg {
    addr: IpAddr,
    port: u16,
    server_comm: String,
    client_comm: String,
    client_send: u64,
    server_send: u64,
    hold_ms: u64,
    closer: Closer,
    count: u32,
    wait_go: bool,
    close_on_go: bool,
    socket_early: bool,
    worker_comm: Option<String>,
    reset: bool,
    server_unread: bool,
    client_netns: Option<String>,
}

/// How long a session's processes may take: every connection up to IO_TIMEOUT per blocking step, plus
/// the hold; plus the go wait.
fn session_budget(cfg: &SessionCfg) -> Duration {
    let per_conn = Duration::from_millis(cfg.hold_ms) + Duration::from_secs(5);
    let mut budget = IO_TIMEOUT * 2 + per_conn * cfg.count;
    if cfg.wait_go || cfg.close_on_go {
        budget += GO_TIMEOUT;
    }
    budget
}

fn session(cfg: &SessionCfg) -> Result<()> {
    if cfg.reset && cfg.closer != Closer::Client {
        bail!("--reset needs --closer client");
    }
    if cfg.server_unread && (cfg.closer != Closer::Server || cfg.client_send == 0) {
        bail!("--server-unread needs --closer server and --client-send > 0");
    }
    // The server tells the parent its port once it listens (2 bytes, big endian) through this pipe.
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    let (rfd, wfd) = (fds[0], fds[1]);

    let server = fork_role("server", || {
        // SAFETY: the child owns its copies of both pipe ends; it keeps only the write end.
        let wr = unsafe {
            libc::close(rfd);
            std::fs::File::from_raw_fd(wfd)
        };
        server_role(cfg, wr)
    });
    // SAFETY: the parent owns its copies of both pipe ends; it keeps only the read end.
    let mut rd = unsafe {
        libc::close(wfd);
        std::fs::File::from_raw_fd(rfd)
    };
    let server = server?;

    let started = poll_readable(rd.as_raw_fd(), IO_TIMEOUT).and_then(|()| {
        let mut p = [0u8; 2];
        rd.read_exact(&mut p)
            .context("server did not report its port")?;
        Ok(u16::from_be_bytes(p))
    });
    let port = match started {
        Ok(p) => p,
        Err(e) => {
            wait_children(&[server], Instant::now() + Duration::from_secs(2));
            return Err(e.context("server did not start"));
        }
    };

    let client = fork_role("client", || client_role(cfg, port))?;

    if !wait_children(&[server, client], Instant::now() + session_budget(cfg)) {
        bail!("session failed");
    }
    Ok(())
}

fn server_role(cfg: &SessionCfg, mut ready: std::fs::File) -> Result<()> {
    set_comm(&cfg.server_comm)?;
    let listener = make_listener(cfg.addr, cfg.port, 16)?;
    if cfg.wait_go {
        // the first accept also waits for the test's go (tracers starting: seconds under emulation)
        set_rcvtimeo(listener.as_raw_fd(), IO_TIMEOUT + GO_TIMEOUT)?;
    }
    let la = listener.local_addr().context("listener address")?;
    emit(&json!({
        "role": "server-listen", "pid": getpid(), "comm": cfg.server_comm, "uid": getuid(),
        "family": family_of(&cfg.addr), "laddr": la.ip().to_string(), "lport": la.port(),
    }));
    ready
        .write_all(&la.port().to_be_bytes())
        .context("report port")?;
    drop(ready);

    let Some(worker_comm) = &cfg.worker_comm else {
        return serve(cfg, &listener, &cfg.server_comm);
    };
    // pre-forked: the worker inherits the listener, accepts and serves; this process (which called
    // listen()) only waits for it
    let worker = fork_role("worker", || {
        set_comm(worker_comm)?;
        serve(cfg, &listener, worker_comm)
    })?;
    if !wait_children(&[worker], Instant::now() + session_budget(cfg)) {
        bail!("worker failed");
    }
    drop(listener);
    Ok(())
}

/// Accepts and serves cfg.count connections on listener, as the process named comm.
fn serve(cfg: &SessionCfg, listener: &TcpListener, comm: &str) -> Result<()> {
    for i in 0..cfg.count {
        let (mut s, peer) = listener.accept().with_context(|| format!("accept #{i}"))?;
        // with --close-on-go the client's close (our EOF) also waits for the test's go
        let read_timeout = if cfg.close_on_go {
            IO_TIMEOUT + GO_TIMEOUT
        } else {
            IO_TIMEOUT
        };
        s.set_read_timeout(Some(read_timeout))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let local = s.local_addr()?;
        let received = if cfg.server_unread {
            // the whole request is in (unread) before the reply and the close: the close resets
            wait_queued(&s, cfg.client_send, read_timeout)?;
            cfg.client_send
        } else {
            read_exact_n(&mut s, cfg.client_send)?
        };
        let sent = write_n(&mut s, cfg.server_send)?;
        if cfg.server_unread {
            // the reply is acknowledged before the close resets the connection
            wait_acked(&s, IO_TIMEOUT)?;
        }
        let closed_first = cfg.closer == Closer::Server;
        if !closed_first {
            wait_eof(&mut s, cfg.reset)?;
        }
        drop(s);
        emit(&json!({
            "role": "server", "pid": getpid(), "comm": comm, "uid": getuid(), "index": i,
            "family": family_of(&local.ip()),
            "laddr": local.ip().to_string(), "lport": local.port(),
            "raddr": peer.ip().to_string(), "rport": peer.port(),
            "sent": sent, "received": received, "closed_first": closed_first,
        }));
    }
    Ok(())
}

/// Waits (up to GO_TIMEOUT) for the test's go: one line on stdin.
fn wait_for_go() -> Result<()> {
    poll_readable(libc::STDIN_FILENO, GO_TIMEOUT).context("waiting for go on stdin")?;
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read go line")?;
    Ok(())
}

/// Moves this (single-threaded) process into the network namespace `ip netns` named `name`.
fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns on an fd we own; this process has one thread (a forked role).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

fn client_role(cfg: &SessionCfg, port: u16) -> Result<()> {
    set_comm(&cfg.client_comm)?;
    if let Some(ns) = &cfg.client_netns {
        enter_netns(ns)?;
    }
    let mut early = if cfg.socket_early {
        Some(new_socket(&cfg.addr)?)
    } else {
        None
    };
    if cfg.wait_go {
        emit(
            &json!({"role": "client-ready", "pid": getpid(), "comm": cfg.client_comm, "uid": getuid()}),
        );
        wait_for_go()?;
    }
    let remote = SocketAddr::new(cfg.addr, port);
    for i in 0..cfg.count {
        let fd = match early.take() {
            Some(fd) => fd,
            None => new_socket(&cfg.addr)?,
        };
        connect(fd.as_raw_fd(), &remote).with_context(|| format!("connect #{i} to {remote}"))?;
        let mut s = TcpStream::from(fd);
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let local = s.local_addr()?;
        let sent = write_n(&mut s, cfg.client_send)?;
        let received = read_exact_n(&mut s, cfg.server_send)?;
        if cfg.close_on_go && i == 0 {
            emit(&json!({
                "role": "client-connected", "pid": getpid(), "comm": cfg.client_comm,
                "lport": local.port(),
            }));
            wait_for_go()?;
        }
        let closed_first = cfg.closer == Closer::Client;
        if !closed_first {
            // the server closes first: its FIN is in before the hold starts, so CLOSE_WAIT spans the
            // whole hold (the FIN may come well after our read of its data, e.g. under emulation);
            // a server that does not read resets instead
            wait_eof(&mut s, cfg.server_unread)?;
        }
        std::thread::sleep(Duration::from_millis(cfg.hold_ms));
        if cfg.reset {
            set_linger_zero(s.as_raw_fd())?;
        }
        drop(s);
        emit(&json!({
            "role": "client", "pid": getpid(), "comm": cfg.client_comm, "uid": getuid(), "index": i,
            "family": family_of(&cfg.addr),
            "laddr": local.ip().to_string(), "lport": local.port(),
            "raddr": remote.ip().to_string(), "rport": remote.port(),
            "sent": sent, "received": received, "closed_first": closed_first,
        }));
    }
    Ok(())
}

fn refused(addr: IpAddr, port: u16, comm: &str) -> Result<()> {
    set_comm(comm)?;
    let fd = new_socket(&addr)?;
    // Bind to an ephemeral port first so the local port is known: after a refused connect the kernel
    // has already released an autobound port (getsockname would say 0).
    bind(fd.as_raw_fd(), &SocketAddr::new(addr, 0))?;
    let lport = local_addr(fd.as_raw_fd())?.port();
    let remote = SocketAddr::new(addr, port);
    match connect(fd.as_raw_fd(), &remote) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        Err(e) => {
            return Err(anyhow!(e).context(format!("connect {remote}: expected ECONNREFUSED")));
        }
        Ok(()) => bail!("connect {remote}: connected, expected ECONNREFUSED"),
    }
    drop(fd);
    emit(&json!({
        "role": "refused", "pid": getpid(), "comm": comm, "uid": getuid(), "family": family_of(&addr),
        "laddr": addr.to_string(), "lport": lport, "raddr": addr.to_string(), "rport": port,
    }));
    Ok(())
}

fn listen_role(addr: IpAddr, port: u16, comm: &str, hold_ms: u64) -> Result<()> {
    set_comm(comm)?;
    let l = make_listener(addr, port, 16)?;
    let la = l.local_addr()?;
    emit(&json!({
        "role": "listen", "pid": getpid(), "comm": comm, "uid": getuid(), "family": family_of(&addr),
        "laddr": la.ip().to_string(), "lport": la.port(),
    }));
    std::thread::sleep(Duration::from_millis(hold_ms));
    drop(l);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// connect attempts, and DNS-resolved connects

fn neg_errno(e: &io::Error) -> i64 {
    -(e.raw_os_error().unwrap_or(libc::EIO) as i64)
}

/// SO_ERROR of a socket: 0 or -errno.
fn so_error(fd: RawFd) -> i64 {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err/len are live and sized for SO_ERROR.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return neg_errno(&io::Error::last_os_error());
    }
    -(err as i64)
}

/// One connect attempt: (connect()'s return, final outcome, local address after connect()).
fn connect_once(remote: &SocketAddr, nonblock: bool) -> Result<(i64, i64, SocketAddr)> {
    let fd = new_socket(&remote.ip())?;
    if nonblock {
        // SAFETY: fcntl on our own socket.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    } else {
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv is a live timeval; SO_SNDTIMEO bounds a blocking connect().
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &tv as *const _ as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }
    let ret = match connect(fd.as_raw_fd(), remote) {
        Ok(()) => 0,
        Err(e) => neg_errno(&e),
    };
    let local = local_addr(fd.as_raw_fd())?;
    let result = if ret == -(libc::EINPROGRESS as i64) {
        connect_outcome(fd.as_raw_fd(), remote)?
    } else {
        ret
    };
    Ok((ret, result, local))
}

/// A handshake left in progress for `ms`, then abandoned (see Cmd::Connect's `pending_ms`).
fn pending_connect(addr: IpAddr, port: u16, comm: &str, ms: u64) -> Result<()> {
    set_comm(comm)?;
    let remote = SocketAddr::new(addr, port);
    let fd = new_socket(&addr)?;
    // SAFETY: fcntl on our own socket.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let ret = match connect(fd.as_raw_fd(), &remote) {
        Ok(()) => 0,
        Err(e) => neg_errno(&e),
    };
    let local = local_addr(fd.as_raw_fd())?;
    emit(&json!({
        "role": "connect", "pid": getpid(), "comm": comm, "uid": getuid(), "index": 0,
        "family": family_of(&addr), "laddr": local.ip().to_string(), "lport": local.port(),
        "raddr": addr.to_string(), "rport": port, "ret": ret, "result": null,
    }));
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

/// The outcome (0 or -errno) of a non-blocking connect in progress, awaited (bounded) with poll().
fn connect_outcome(fd: RawFd, remote: &SocketAddr) -> Result<i64> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, IO_TIMEOUT.as_millis() as i32) };
    if r <= 0 {
        bail!("non-blocking connect to {remote}: no outcome within {IO_TIMEOUT:?}");
    }
    Ok(so_error(fd))
}

fn connect_role(addr: IpAddr, port: u16, comm: &str, nonblock: bool, count: u32) -> Result<()> {
    set_comm(comm)?;
    let remote = SocketAddr::new(addr, port);
    for i in 0..count {
        let (ret, result, local) = connect_once(&remote, nonblock)?;
        emit(&json!({
            "role": "connect", "pid": getpid(), "comm": comm, "uid": getuid(), "index": i,
            "family": family_of(&addr), "laddr": local.ip().to_string(), "lport": local.port(),
            "raddr": addr.to_string(), "rport": port, "ret": ret, "result": result,
        }));
    }
    Ok(())
}

/// A DNS response to `query`: for an A question about `name`, one A record `answer`; otherwise
/// (AAAA, other names) NOERROR without records.
fn dns_response(query: &[u8], name: &str, answer: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // the question: labels up to the root label, then QTYPE and QCLASS
    let mut i = 12;
    let mut labels = Vec::new();
    while *query.get(i)? != 0 {
        let len = query[i] as usize;
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).into_owned());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let qend = i + 5;
    let question = query.get(12..qend)?;
    let hit = qtype == 1
        && labels
            .join(".")
            .eq_ignore_ascii_case(name.trim_end_matches('.'));
    let mut r = Vec::new();
    r.extend_from_slice(&query[..2]); // id
    r.extend(0x8180u16.to_be_bytes()); // response, RD, RA, NOERROR
    r.extend(1u16.to_be_bytes());
    r.extend((hit as u16).to_be_bytes());
    r.extend([0, 0, 0, 0]);
    r.extend_from_slice(question);
    if hit {
        r.extend([0xc0, 12]); // the question's name
        r.extend(1u16.to_be_bytes()); // A
        r.extend(1u16.to_be_bytes()); // IN
        r.extend(60u32.to_be_bytes());
        r.extend(4u16.to_be_bytes());
        r.extend(answer.octets());
    }
    Some(r)
}

fn dns_server(name: &str, answer: Ipv4Addr, comm: &str, mut ready: std::fs::File) -> Result<()> {
    set_comm(comm)?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:53").context("bind 127.0.0.1:53/udp")?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    ready.write_all(b"r").context("report ready")?;
    drop(ready);
    let mut buf = [0u8; 512];
    loop {
        // ends when the parent kills it (or after 30 s without a query)
        let (n, peer) = sock.recv_from(&mut buf).context("dns server recv")?;
        if let Some(resp) = dns_response(&buf[..n], name, answer) {
            sock.send_to(&resp, peer).context("dns server send")?;
        }
    }
}

fn dns_connect(name: &str, answer: Ipv4Addr, port: u16, comm: &str, dns_comm: &str) -> Result<()> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let server = fork_role("dns server", || {
        // SAFETY: the child keeps only the write end.
        let wr = unsafe {
            libc::close(rfd);
            std::fs::File::from_raw_fd(wfd)
        };
        dns_server(name, answer, dns_comm, wr)
    });
    // SAFETY: the parent keeps only the read end.
    let mut rd = unsafe {
        libc::close(wfd);
        std::fs::File::from_raw_fd(rfd)
    };
    let server = server?;
    let stop_server = |server: libc::pid_t| {
        // SAFETY: our own child, by PID; then reap it.
        unsafe {
            libc::kill(server, libc::SIGKILL);
            libc::waitpid(server, std::ptr::null_mut(), 0);
        }
    };
    let started = poll_readable(rd.as_raw_fd(), IO_TIMEOUT).and_then(|()| {
        let mut b = [0u8; 1];
        rd.read_exact(&mut b).context("dns server did not start")?;
        Ok(())
    });
    if let Err(e) = started {
        stop_server(server);
        return Err(e);
    }
    let client = fork_role("dns client", || {
        set_comm(comm)?;
        use std::net::ToSocketAddrs;
        let addrs: Vec<SocketAddr> = (name, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {name}"))?
            .collect();
        let remote = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .copied()
            .ok_or_else(|| anyhow!("{name} resolved to {addrs:?}, no IPv4 address"))?;
        let (ret, result, local) = connect_once(&remote, false)?;
        emit(&json!({
            "role": "dns-connect", "pid": getpid(), "comm": comm, "uid": getuid(), "name": name,
            "family": 4, "laddr": local.ip().to_string(), "lport": local.port(),
            "raddr": remote.ip().to_string(), "rport": port, "ret": ret, "result": result,
        }));
        Ok(())
    });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            stop_server(server);
            return Err(e);
        }
    };
    let ok = wait_children(&[client], Instant::now() + IO_TIMEOUT * 2);
    stop_server(server);
    if !ok {
        bail!("dns client failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// a handshake slowed down by a full accept queue

fn slow_handshake(
    addr: IpAddr,
    port: u16,
    server_comm: &str,
    client_comm: &str,
    accept_delay_ms: u64,
) -> Result<()> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let server = fork_role("slow server", || {
        // SAFETY: the child keeps only the write end.
        let mut wr = unsafe {
            libc::close(rfd);
            std::fs::File::from_raw_fd(wfd)
        };
        set_comm(server_comm)?;
        let listener = make_listener(addr, port, 0)?;
        let la = listener.local_addr()?;
        emit(&json!({
            "role": "server-listen", "pid": getpid(), "comm": server_comm, "uid": getuid(),
            "family": family_of(&addr), "laddr": la.ip().to_string(), "lport": la.port(),
        }));
        wr.write_all(&la.port().to_be_bytes())
            .context("report port")?;
        drop(wr);
        std::thread::sleep(Duration::from_millis(accept_delay_ms));
        let mut conns = Vec::new();
        for i in 0..2 {
            let (s, _) = listener.accept().with_context(|| format!("accept #{i}"))?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            conns.push(s);
        }
        for mut s in conns {
            wait_eof(&mut s, false)?;
        }
        Ok(())
    });
    // SAFETY: the parent keeps only the read end.
    let mut rd = unsafe {
        libc::close(wfd);
        std::fs::File::from_raw_fd(rfd)
    };
    let server = server?;
    let started = poll_readable(rd.as_raw_fd(), IO_TIMEOUT).and_then(|()| {
        let mut p = [0u8; 2];
        rd.read_exact(&mut p)
            .context("server did not report its port")?;
        Ok(u16::from_be_bytes(p))
    });
    let port = match started {
        Ok(p) => p,
        Err(e) => {
            wait_children(&[server], Instant::now() + Duration::from_secs(2));
            return Err(e.context("server did not start"));
        }
    };
    let client = fork_role("slow client", || {
        set_comm(client_comm)?;
        let remote = SocketAddr::new(addr, port);
        let mut lines = Vec::new();
        let mut streams = Vec::new();
        for role in ["filler", "client"] {
            let fd = new_socket(&addr)?;
            let t = Instant::now();
            connect(fd.as_raw_fd(), &remote).with_context(|| format!("{role} connect"))?;
            let connect_ms = t.elapsed().as_secs_f64() * 1000.0;
            let local = local_addr(fd.as_raw_fd())?;
            lines.push(json!({
                "role": role, "pid": getpid(), "comm": client_comm, "uid": getuid(),
                "family": family_of(&addr), "laddr": local.ip().to_string(), "lport": local.port(),
                "raddr": addr.to_string(), "rport": port, "connect_ms": connect_ms,
            }));
            streams.push(TcpStream::from(fd));
        }
        drop(streams);
        for l in &lines {
            emit(l);
        }
        Ok(())
    })?;
    let budget = Duration::from_millis(accept_delay_ms) + IO_TIMEOUT * 2;
    if !wait_children(&[server, client], Instant::now() + budget) {
        bail!("slow handshake failed");
    }
    Ok(())
}
