//! solisten: one line per listen() on a TCP socket: who, which port and address (also the port the
//! kernel picks for an unbound socket), backlog, network namespace, and whether it failed.
//! Hooks: the listen() syscall tracepoints (BCC uses a kprobe on inet_listen).

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, load_tool};
use crate::filter::{Filters, parse_id};
use crate::format::{AF_INET6, errno_name, ip_addr, ip_version, owner_fields};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/solisten.skel.rs"));
}
use skel::{SolistenSkelBuilder, types};

const EXAMPLES: &str = "examples:
    solisten                       # trace listen() on TCP sockets
    solisten -t                    # include timestamp (seconds since the first event)
    solisten -p 1234               # only trace PID 1234
    solisten --show-netns          # show the network namespace (useful for containers)
    solisten -n 4026532281         # only this network namespace (its inode number)
    solisten -n /run/netns/blue    # ... or a namespace file: /run/netns/NAME, /proc/PID/ns/net
    solisten --json                # one JSON object per listen() call

PORT is read when listen() returns, so a listen() on a socket that was never bound shows the port
the kernel picked for it (ADDR 0.0.0.0 or ::). BACKLOG is the value passed to listen() (the kernel
caps it at net.core.somaxconn).

Failed listen() calls are shown too, with the reason after ADDR, e.g. \"failed: EADDRINUSE\" (another
socket listens on that port). In --json every record has \"ret\": 0, or -errno when listen() failed.

Only TCP sockets (IPv4 and IPv6) are traced, as BCC's solisten: listen() on UDP or UNIX sockets and
on fds that are not sockets is not shown. PROTO is TCPv4 or TCPv6 (the socket's family: an IPv6
socket that also accepts IPv4 is TCPv6). Not seen: listen() by 32-bit (compat) programs.";

/// Trace listen() on TCP sockets (IPv4 and IPv6)
#[derive(Parser, Debug)]
#[command(name = "solisten", after_help = EXAMPLES)]
struct Args {
    /// show network namespace (NETNS column: the namespace's inode number)
    #[arg(long = "show-netns")]
    show_netns: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// trace this network namespace only: its inode number, or a namespace file
    #[arg(short = 'n', long, value_parser = parse_netns)]
    netns: Option<u32>,
    /// include timestamp on output (seconds)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    #[command(flatten)]
    common: Common,
}

/// A network namespace: an inode number (as `--show-netns` prints it), or a file naming one
/// (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub(crate) fn parse_netns(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.trim().parse::<u32>() {
        return if n == 0 {
            Err("invalid network namespace '0'".into())
        } else {
            Ok(n)
        };
    }
    if !s.contains('/') {
        return Err(format!(
            "invalid network namespace '{s}': expected an inode number or a file such as /run/netns/NAME"
        ));
    }
    let md = std::fs::metadata(s).map_err(|e| format!("network namespace '{s}': {e}"))?;
    u32::try_from(md.ino()).map_err(|_| format!("network namespace '{s}': inode out of range"))
}

fn columns(show_netns: bool) -> Vec<Col> {
    let mut cols = vec![Col::left("PID", "pid", 6), Col::cut("COMM", "comm", 12)];
    if show_netns {
        cols.push(Col::left("NETNS", "netns", 12));
    }
    cols.extend([
        Col::left("PROTO", "proto", 6),
        Col::left("BACKLOG", "backlog", 8),
        Col::left("PORT", "lport", 5),
        Col::left("ADDR", "laddr", 39),
        // untitled: empty for a successful listen(), so the header and those rows stay BCC's
        Col::left("", "failed", 0),
    ]);
    cols
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.common.ebpf {
        return cli::print_ebpf("solisten");
    }
    let filters = Filters {
        pid: a.pid,
        ..Default::default()
    };
    let json = a.common.json;
    let mode = a.common.mode(false);
    let mut printer = Printer::new(
        mode,
        columns(a.show_netns),
        TimeCols {
            hms: false,
            secs: a.timestamp,
        },
    );

    let netns = a.netns.unwrap_or(0);
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        SolistenSkelBuilder,
        &mut storage,
        "solisten",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.filter_netns = netns;
        }
    );
    runtime::print_events(
        skel.object(),
        "solisten",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::solisten_event| {
            let proto = if e.family == AF_INET6 {
                "TCPv6"
            } else {
                "TCPv4"
            };
            let mut f = owner_fields(e.pid, e.uid, &e.comm);
            f.extend([
                ("netns", Value::U(e.netns as u64)),
                ("proto", Value::S(proto.into())),
                ("ip", Value::U(ip_version(e.family) as u64)),
                ("backlog", Value::I(e.backlog as i64)),
                ("lport", Value::U(e.lport as u64)),
                ("laddr", Value::Ip(ip_addr(e.family, &e.laddr))),
                ("ret", Value::I(e.ret as i64)),
            ]);
            if e.ret != 0 && !json {
                f.push((
                    "failed",
                    Value::S(format!("failed: {}", errno_name(-e.ret))),
                ));
            }
            Some((e.ts_ns, f))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_numbers_and_files() {
        assert_eq!(parse_netns("4026531840"), Ok(4026531840));
        assert!(parse_netns("0").is_err());
        assert!(parse_netns("abc").is_err());
        assert!(
            parse_netns("/nonexistent/ns")
                .unwrap_err()
                .contains("/nonexistent/ns")
        );
        assert!(parse_netns("/proc/self/ns/net").is_ok());
    }
}
