//! sofdsnoop: every file descriptor passed over a Unix socket (SCM_RIGHTS), on send and on receive, one
//! line per fd, with what it refers to. Hooks: the sendmsg/recvmsg/sendmmsg/recvmmsg syscall
//! tracepoints (BCC uses kprobes on __scm_send and scm_detach_fds).

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::MapCore as _;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, load_tool};
use crate::filter::{Filters, parse_id};
use crate::format::{comm, owner_fields};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/sofdsnoop.skel.rs"));
}
use skel::{SofdsnoopSkelBuilder, types};

const EXAMPLES: &str = "examples:
    sofdsnoop           # trace passed file descriptors
    sofdsnoop -T        # include timestamps
    sofdsnoop -p 181    # only trace PID 181
    sofdsnoop -t 123    # only trace TID 123
    sofdsnoop -d 10     # trace for 10 seconds only
    sofdsnoop -n main   # only print process names containing \"main\"
    sofdsnoop --json    # one JSON object per passed fd

Every file descriptor passed over a Unix socket (SCM_RIGHTS) is shown on a line of its own, once
where it is sent (SEND) and once where it is received (RECV), several fds of one message each on
its own line. TID and COMM are the thread that called sendmsg()/recvmsg(); SOCKET is the Unix socket
it went through (its fd in that process, and socket:[inode], the same inode on both lines of one
socketpair end); FD is the fd as that process sees it: the sender's fd on SEND, the new fd the
receiver got on RECV (BCC shows the sender's number there). NAME is what the fd refers to, read in
the kernel from the process's fd table when the call returns (not from /proc afterwards, when the
fd may be closed already): a path (\" (deleted)\" when unlinked, \".../\" in front when deeper than
16 directories; each name up to 63 bytes), socket:[inode], pipe:[inode], anon_inode:[eventfd], ...
A SEND line is a sendmsg() that succeeded: a failed one passed nothing.

The filters (-p, -t, -n) work in the kernel; -n matches a part of the 15-byte comm, as BCC.
sendmsg()/recvmsg() calls without room for control messages, and on other sockets than Unix
sockets, are left at once.

Not seen: fds passed by io_uring (IORING_OP_SENDMSG/RECVMSG make no syscall), by 32-bit (compat)
programs, control messages beyond the 8th of a message, fds beyond the 64th of one control message,
messages beyond the 8th of one sendmmsg()/recvmmsg(): those are counted and reported on stderr at
exit. Calls already in progress when the tool starts (a recvmsg() waiting) are not seen.";

/// Trace file descriptors passed via socket
#[derive(Parser, Debug)]
#[command(name = "sofdsnoop", after_help = EXAMPLES)]
struct Args {
    /// include timestamp on output
    #[arg(short = 'T', long = "timestamp")]
    timestamp: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// trace this TID only
    #[arg(short = 't', long, value_parser = parse_id)]
    tid: Option<u32>,
    /// only print process names containing this name
    #[arg(short = 'n', long, value_parser = parse_name)]
    name: Option<String>,
    /// total duration of trace in seconds
    #[arg(short = 'd', long, value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    #[command(flatten)]
    common: Common,
}

/// `-n`: a part of a comm, so 1 to 15 bytes.
fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty name".into());
    }
    if s.len() > 15 || s.contains('\0') {
        return Err(format!(
            "name '{s}' is longer than 15 bytes: a process name (comm) is at most 15, so it would never match"
        ));
    }
    Ok(s.to_string())
}

const SOCKFS_MAGIC: u32 = 0x534F_434B;
const PIPEFS_MAGIC: u32 = 0x5049_5045;
const ANON_INODE_FS_MAGIC: u32 = 0x0904_1934;
const PIDFS_MAGIC: u32 = 0x5049_4446;
const NSFS_MAGIC: u32 = 0x6e73_6673;
const PATH_FULL: u8 = 1;
const DELETED: u8 = 2;

/// What an fd refers to, as `/proc/PID/fd/N` names it: from the file's file system (magic), inode
/// number and path components (last first, as the kernel walked them). None: no open file at that fd.
fn fd_name(magic: u32, ino: u64, comps: &[String], flags: u8) -> Option<String> {
    Some(match magic {
        0 => return None,
        SOCKFS_MAGIC => format!("socket:[{ino}]"),
        PIPEFS_MAGIC => format!("pipe:[{ino}]"),
        ANON_INODE_FS_MAGIC => format!("anon_inode:{}", comps.first().map_or("", |s| s)),
        PIDFS_MAGIC => "anon_inode:[pidfd]".to_string(),
        NSFS_MAGIC => format!("nsfs:[{ino}]"),
        _ => {
            let mut p = String::new();
            if flags & PATH_FULL == 0 {
                p.push_str("...");
            }
            for c in comps.iter().rev().filter(|c| !c.is_empty()) {
                p.push('/');
                p.push_str(c);
            }
            if p.is_empty() {
                p.push('/');
            }
            if flags & DELETED != 0 {
                p.push_str(" (deleted)");
            }
            p
        }
    })
}

fn columns() -> Vec<Col> {
    vec![
        Col::left("ACTION", "action", 6),
        Col::left("TID", "tid", 6),
        Col::left("COMM", "comm", 16),
        Col::left("SOCKET", "socket", 25),
        Col::left("FD", "fd", 5),
        Col::left("NAME", "name", 0),
    ]
}

/// What the bounded walk left out (the `unseen` map's slots), for the report at exit.
fn unseen_message(fds: u64, cmsgs: u64, msgs: u64) -> Option<String> {
    let mut parts = Vec::new();
    if fds > 0 {
        parts.push(format!("{fds} fds beyond the 64th of a control message"));
    }
    if cmsgs > 0 {
        parts.push(format!(
            "{cmsgs} messages with control messages beyond the 8th"
        ));
    }
    if msgs > 0 {
        parts.push(format!(
            "{msgs} messages beyond the 8th of a sendmmsg()/recvmmsg()"
        ));
    }
    (!parts.is_empty()).then(|| format!("sockray: sofdsnoop: not shown: {}", parts.join(", ")))
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.common.ebpf {
        return cli::print_ebpf("sofdsnoop");
    }
    let filters = Filters {
        pid: a.pid,
        ..Default::default()
    };
    let mode = a.common.mode(false);
    let mut printer = Printer::new(
        mode,
        columns(),
        TimeCols {
            hms: false,
            secs: a.timestamp,
        },
    )
    .with_secs_decimals(9);

    // what the lost-event report says when the table of calls in progress was full
    runtime::set_map_entries(
        String::new(),
        "the calls in progress that may pass fds: 16,384 threads at once",
    );
    let tid = a.tid.unwrap_or(0);
    let name = a.name.clone().unwrap_or_default();
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        SofdsnoopSkelBuilder,
        &mut storage,
        "sofdsnoop",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.filter_tid = tid;
            ro.filter_comm_len = name.len() as u32;
            for (d, s) in ro.filter_comm.iter_mut().zip(name.bytes()) {
                *d = s as _;
            }
        }
    );
    let duration = a.duration.map(Duration::from_secs);
    // records that reached user space: with --verbose, said at exit (the filters work in the kernel, so
    // this is the number of rows)
    let mut records = 0u64;
    runtime::print_events(
        skel.object(),
        "sofdsnoop",
        a.common.verbose,
        &mut printer,
        duration,
        |e: &types::sofdsnoop_event| {
            records += 1;
            let depth = (e.depth as usize).min(e.comps.len());
            let comps: Vec<String> = e.comps[..depth]
                .iter()
                .map(|c| comm(&[c.head, c.tail].concat()))
                .collect();
            let name = fd_name(e.magic, e.ino, &comps, e.flags);
            let sock = format!("socket:[{}]", e.sock_ino);
            let mut f = owner_fields(e.pid, e.uid, &e.comm);
            f.extend([
                (
                    "action",
                    Value::S(if e.action == 0 { "SEND" } else { "RECV" }.into()),
                ),
                ("tid", Value::U(e.tid as u64)),
                ("socket", Value::S(format!("{}:{sock}", e.sock_fd))),
                ("sock_fd", Value::I(e.sock_fd as i64)),
                ("sock_ino", Value::U(e.sock_ino)),
                ("fd", Value::I(e.fd as i64)),
                (
                    "name",
                    match name {
                        Some(n) => Value::S(n),
                        None if mode == crate::output::Mode::Json => Value::Null,
                        None => Value::S("N/A".into()),
                    },
                ),
                ("ino", Value::U(e.ino)),
                ("index", Value::U(e.index as u64)),
                ("count", Value::U(e.count as u64)),
            ]);
            Some((e.ts_ns, f))
        },
    )?;
    cli::debug(format_args!("sofdsnoop: {records} records from the kernel"));
    let sum = |slot: u32| -> u64 {
        skel.maps
            .unseen
            .lookup_percpu(&slot.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .map_or(0, |v| {
                v.iter().filter_map(|b| runtime::read_event::<u64>(b)).sum()
            })
    };
    if let Some(m) = unseen_message(sum(0), sum(1), sum(2)) {
        cli::say(format_args!("{m}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_as_proc_shows_them() {
        assert_eq!(fd_name(0, 0, &[], 0), None);
        assert_eq!(
            fd_name(SOCKFS_MAGIC, 4711, &[], 0).unwrap(),
            "socket:[4711]"
        );
        assert_eq!(fd_name(PIPEFS_MAGIC, 12, &[], 0).unwrap(), "pipe:[12]");
        assert_eq!(
            fd_name(ANON_INODE_FS_MAGIC, 1, &v(&["[eventfd]"]), PATH_FULL).unwrap(),
            "anon_inode:[eventfd]"
        );
        // components come last first
        assert_eq!(
            fd_name(0xEF53, 99, &v(&["passwd", "etc"]), PATH_FULL).unwrap(),
            "/etc/passwd"
        );
        assert_eq!(
            fd_name(0x01021994, 5, &v(&["x.tmp", "tmp"]), PATH_FULL | DELETED).unwrap(),
            "/tmp/x.tmp (deleted)"
        );
        // a mount crossed leaves an empty component
        assert_eq!(
            fd_name(0x01021994, 7, &v(&["f", "", "run"]), PATH_FULL).unwrap(),
            "/run/f"
        );
        // deeper than the walk went
        assert_eq!(fd_name(0xEF53, 5, &v(&["c", "b"]), 0).unwrap(), ".../b/c");
        assert_eq!(fd_name(0xEF53, 2, &[], PATH_FULL).unwrap(), "/");
    }

    #[test]
    fn name_filter_fits_a_comm() {
        assert_eq!(parse_name("main").unwrap(), "main");
        assert!(parse_name("").is_err());
        assert!(
            parse_name("a-name-of-16-byt")
                .unwrap_err()
                .contains("15 bytes")
        );
        assert!(parse_name("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn unseen_report() {
        assert_eq!(unseen_message(0, 0, 0), None);
        let m = unseen_message(3, 0, 2).unwrap();
        assert!(m.starts_with("sockray: sofdsnoop: not shown: 3 fds"), "{m}");
        assert!(m.contains("2 messages beyond the 8th"), "{m}");
    }
}
