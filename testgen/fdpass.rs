//! `fd-pass`: file descriptors passed over a Unix socketpair between this process and a forked child
//! with a name of its own (sofdsnoop tests). Each round, a thread of the parent sends one message
//! carrying one fd (a regular file), then one carrying three (a UDP socket, the file, a pipe's read
//! end), each with one byte of data; the child receives each message, closes what it got and
//! acknowledges it with one byte, so messages never merge. With --mmsg, the same two messages go in
//! one sendmmsg() and come in one recvmmsg() (a SOCK_SEQPACKET pair, which keeps their boundaries).
//!
//! The thread first sends one plain byte (no fds), which the child waits for before its first receive.
//! Lines (JSON): {"role":"ready"} (parent pid, sender thread's tid, child pid; with --wait-go it then
//! waits for a go line), one {"role":"sent"} per message (pid, tid, comm, sock_fd, sock, fds:
//! [{fd, name}] with names as /proc/self/fd shows them), one {"role":"received"} per message from the
//! child, and {"role":"round","round":R} once a round is acknowledged.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    IO_TIMEOUT, emit, fork_role, getpid, set_comm, set_rcvtimeo, wait_children, wait_for_go,
};

#[derive(clap::Args)]
pub struct FdPassArgs {
    /// comm of the parent (and its sending thread)
    #[arg(long, default_value = "tg-fdsend")]
    comm: String,
    /// comm of the forked child that receives
    #[arg(long, default_value = "tg-fdrecv")]
    child_comm: String,
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// pause after each round, ms
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// after the ready line, wait for a go line on stdin
    #[arg(long)]
    wait_go: bool,
    /// send both messages of a round with one sendmmsg(), receive them with one recvmmsg()
    #[arg(long)]
    mmsg: bool,
    /// instead, each round one message carrying MANY fds (the file, dup'ed; at most 253)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=253))]
    many: u32,
}

fn gettid() -> u32 {
    // SAFETY: gettid never fails.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

fn link(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "N/A".into())
}

fn fds_json(fds: &[RawFd]) -> Value {
    Value::Array(
        fds.iter()
            .map(|&fd| json!({"fd": fd, "name": link(fd)}))
            .collect(),
    )
}

/// room for SCM_MAX_FD (253) fds
const CMSG_ROOM: usize = 1040;

/// A msghdr over `data` with `fds` as one SCM_RIGHTS control message in `ctl`.
fn msghdr_with_fds(
    iov: &mut libc::iovec,
    ctl: &mut [u64; CMSG_ROOM / 8],
    fds: &[RawFd],
) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr; the control buffer holds CMSG_SPACE(fds) (checked).
    unsafe {
        let mut m: libc::msghdr = mem::zeroed();
        m.msg_iov = iov;
        m.msg_iovlen = 1;
        let len = mem::size_of_val(fds) as u32;
        assert!((libc::CMSG_SPACE(len) as usize) <= CMSG_ROOM);
        m.msg_control = ctl.as_mut_ptr().cast();
        m.msg_controllen = libc::CMSG_SPACE(len) as _;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(len) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        m
    }
}

/// The fds of every SCM_RIGHTS control message of a received msghdr.
fn received_fds(m: &libc::msghdr) -> Vec<RawFd> {
    let mut out = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into our own buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..n {
                    out.push(std::ptr::read_unaligned(p.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    out
}

fn child(a: &FdPassArgs, sock: OwnedFd) -> Result<()> {
    set_comm(&a.child_comm)?;
    let fd = sock.as_raw_fd();
    set_rcvtimeo(fd, IO_TIMEOUT)?;
    let (pid, tid) = (getpid(), gettid());
    let sock_name = link(fd);
    // the parent's start byte first: the first recvmsg() then begins after the test's go (a tracer
    // started meanwhile sees it whole; one already blocked when it starts is not seen)
    let mut start = [0u8; 1];
    // SAFETY: one byte into a valid buffer (the socket has a receive timeout)
    if unsafe { libc::recv(fd, start.as_mut_ptr().cast(), 1, 0) } != 1 {
        return Err(io::Error::last_os_error()).context("waiting for the start byte");
    }
    let report = |fds: &[RawFd]| {
        emit(&json!({
            "role": "received", "pid": pid, "tid": tid, "comm": a.child_comm,
            "sock_fd": fd, "sock": sock_name, "fds": fds_json(fds),
        }));
        for &f in fds {
            // SAFETY: fds the kernel just installed for us.
            unsafe { libc::close(f) };
        }
    };
    loop {
        let mut bufs = [[0u8; 1]; 2];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 1,
            })
            .collect();
        let mut ctls = [[0u64; CMSG_ROOM / 8]; 2];
        // SAFETY: all-zero msghdrs, pointed at our buffers.
        let mut hdrs: Vec<libc::mmsghdr> = (0..2)
            .map(|_| unsafe { mem::zeroed::<libc::mmsghdr>() })
            .collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = ctls[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_ROOM as _;
        }
        let got = if a.mmsg {
            // SAFETY: two valid mmsghdrs; waits for both (MSG_WAITFORONE would return after one)
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    2,
                    libc::MSG_WAITALL as _,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("recvmmsg");
            }
            n as usize
        } else {
            // SAFETY: one valid msghdr
            let n = unsafe { libc::recvmsg(fd, &mut hdrs[0].msg_hdr, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("recvmsg");
            }
            hdrs[0].msg_len = n as u32;
            usize::from(n > 0)
        };
        if got == 0 || hdrs[0].msg_len == 0 {
            return Ok(()); // EOF (SOCK_SEQPACKET: empty messages): the parent is done
        }
        for h in &hdrs[..got] {
            if h.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0 {
                bail!("control message truncated");
            }
            report(&received_fds(&h.msg_hdr));
        }
        // SAFETY: one byte from a valid buffer
        if unsafe { libc::send(fd, b"a".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) } != 1 {
            return Err(io::Error::last_os_error()).context("ack");
        }
    }
}

fn send_round(a: &FdPassArgs, fd: RawFd, msgs: &[&[RawFd]]) -> Result<()> {
    let (pid, tid) = (getpid(), gettid());
    let mut data = [b'r'; 2];
    let mut iovs: Vec<libc::iovec> = data
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: (b as *mut u8).cast(),
            iov_len: 1,
        })
        .collect();
    let mut ctls = [[0u64; CMSG_ROOM / 8]; 2];
    let hdrs: Vec<libc::msghdr> = msgs
        .iter()
        .zip(iovs.iter_mut().zip(ctls.iter_mut()))
        .map(|(fds, (iov, ctl))| msghdr_with_fds(iov, ctl, fds))
        .collect();
    let sent = |fds: &[RawFd]| {
        emit(&json!({
            "role": "sent", "pid": pid, "tid": tid, "comm": a.comm,
            "sock_fd": fd, "sock": link(fd), "fds": fds_json(fds),
        }));
    };
    if a.mmsg {
        let mut mm: Vec<libc::mmsghdr> = hdrs
            .into_iter()
            .map(|h| libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            })
            .collect();
        // SAFETY: valid mmsghdrs over live buffers
        let n = unsafe { libc::sendmmsg(fd, mm.as_mut_ptr(), mm.len() as _, libc::MSG_NOSIGNAL) };
        if n != mm.len() as i32 {
            return Err(io::Error::last_os_error()).context("sendmmsg");
        }
        msgs.iter().for_each(|m| sent(m));
        wait_ack(fd)?;
    } else {
        for (h, fds) in hdrs.iter().zip(msgs) {
            // SAFETY: a valid msghdr over live buffers
            if unsafe { libc::sendmsg(fd, h, libc::MSG_NOSIGNAL) } != 1 {
                return Err(io::Error::last_os_error()).context("sendmsg");
            }
            sent(fds);
            wait_ack(fd)?;
        }
    }
    Ok(())
}

fn wait_ack(fd: RawFd) -> Result<()> {
    let mut b = [0u8; 1];
    // SAFETY: one byte into a valid buffer (the socket has a receive timeout)
    if unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, 0) } != 1 {
        return Err(io::Error::last_os_error()).context("waiting for the ack");
    }
    Ok(())
}

pub fn fd_pass(a: &FdPassArgs) -> Result<()> {
    set_comm(&a.comm)?;
    let kind = if a.mmsg {
        libc::SOCK_SEQPACKET
    } else {
        libc::SOCK_STREAM
    };
    let mut sv = [0; 2];
    // SAFETY: a socketpair into a two-int array
    if unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) }
        != 0
    {
        return Err(io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: fresh fds we own
    let (mine, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let budget = Duration::from_millis(a.interval_ms) * a.rounds + Duration::from_secs(30);
    let mine_raw = mine.as_raw_fd();
    // the closure (and so the child's end) is dropped in the parent, run in the child
    let pid = fork_role("fd-pass child", move || {
        // SAFETY: the parent's end, in the child
        unsafe { libc::close(mine_raw) };
        child(a, theirs)
    })?;
    set_rcvtimeo(mine.as_raw_fd(), IO_TIMEOUT)?;

    let path = std::env::temp_dir().join(format!("sockray-fdpass-{}", getpid()));
    std::fs::write(&path, b"sofdsnoop test file\n").context("temp file")?;
    let file = std::fs::File::open(&path).context("open temp file")?;
    let mut p = [0; 2];
    // SAFETY: a pipe into a two-int array
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: fresh fds we own
    let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").context("udp socket")?;

    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            set_comm(&a.comm)?;
            emit(&json!({"role": "ready", "pid": getpid(), "tid": gettid(), "child_pid": pid}));
            if a.wait_go {
                wait_for_go()?;
            }
            // SAFETY: one byte from a valid buffer
            if unsafe {
                libc::send(
                    mine.as_raw_fd(),
                    b"s".as_ptr().cast(),
                    1,
                    libc::MSG_NOSIGNAL,
                )
            } != 1
            {
                return Err(io::Error::last_os_error()).context("start byte");
            }
            let f = file.as_raw_fd();
            // SAFETY: dups of our own open file, closed when the process ends
            let dups: Vec<RawFd> = (0..a.many).map(|_| unsafe { libc::dup(f) }).collect();
            if dups.iter().any(|&d| d < 0) {
                return Err(io::Error::last_os_error()).context("dup");
            }
            for r in 0..a.rounds {
                if a.many > 0 {
                    send_round(a, mine.as_raw_fd(), &[&dups])?;
                } else {
                    send_round(
                        a,
                        mine.as_raw_fd(),
                        &[&[f], &[udp.as_raw_fd(), f, pr.as_raw_fd()]],
                    )?;
                }
                emit(&json!({"role": "round", "round": r}));
                std::thread::sleep(Duration::from_millis(a.interval_ms));
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| bail!("sender thread panicked"))
    });
    let _ = std::fs::remove_file(&path);
    drop(pw);
    // SAFETY: our own socket: EOF for the child
    unsafe { libc::shutdown(mine.as_raw_fd(), libc::SHUT_RDWR) };
    let ok = wait_children(&[pid], Instant::now() + budget);
    result?;
    if !ok {
        bail!("the receiving child failed");
    }
    Ok(())
}
