//! tcptracer: one line per connect (C), accept (A) and close (X) of an established TCP connection,
//! each named by the process that owns the socket. Hooks: sock:inet_sock_set_state (tp_btf, else
//! raw_tp) for C and X, the accept()/accept4() syscall tracepoints for A (BCC uses kprobes on
//! tcp_v4/v6_connect, tcp_set_state and tcp_close and a kretprobe on inet_csk_accept).

use std::ffi::OsString;
use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, FamilyArgs, ScopeArgs, SocketTable, load_tool};
use crate::filter::{Filters, parse_id};
use crate::format::{ip_addr, ip_version, owner_fields};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;
use crate::tools::solisten::parse_netns;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcptracer.skel.rs"));
}
use skel::{TcptracerSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcptracer                  # trace TCP connects, accepts and closes
    tcptracer -v               # long type names (connect/accept/close) and the NETNS column
    tcptracer -t               # include timestamp (seconds since the first event; -v: ns)
    tcptracer -p 181           # only trace PID 181
    tcptracer -U               # include UID
    tcptracer -u 1000          # only trace UID 1000 (the socket owner's)
    tcptracer -N 4026531840    # only this network namespace (its inode number)
    tcptracer -N /run/netns/blue  # ... or a namespace file: /run/netns/NAME, /proc/PID/ns/net
    tcptracer -4               # only trace IPv4 family
    tcptracer -6               # only trace IPv6 family
    tcptracer --json           # one JSON object per event (\"type\": connect, accept or close)
    tcptracer --cgroup /sys/fs/cgroup/system.slice/nginx.service  # only this cgroup
    tcptracer --cgroupmap mappath  # only trace cgroups in this BPF map
    tcptracer --mntnsmap mappath   # only trace mount namespaces in the map

T is C (connect: an active open reached ESTABLISHED), A (accept() returned the connection) or X (an
established connection closed: its socket reached CLOSE). SADDR/SPORT are the local end and
DADDR/DPORT the remote end on every line, so a server's A and X lines show its own port as SPORT.

PID and COMM are the process that owns the socket: for C the process that called connect(), for A
the one that called accept(), for X the one that owned (last closed or accepted) the socket, also
when the kernel finishes the close in softirq context (on loopback, in the peer's task). 0 and ?
when the owner cannot be known (a socket older than tcptracer that no process holds any more).
-p and --cgroup select by that owner.

X is printed when the connection is gone (after the FIN exchange or a reset), not when close() is
called; a connection that never got established (refused, reset during the handshake) has no C and
no X. Not seen: accepts made with io_uring (IORING_OP_ACCEPT) or by 32-bit (compat) programs, which
make no accept() syscall the tracepoints report; their connections still get an X line.

-v is BCC's: long type names and the NETNS column (left out with -N). --verbose (long form only)
says which kernel hooks were chosen, on stderr, as in every sockray tool.";

/// Trace TCP connections: connect, accept and close
#[derive(Parser, Debug)]
#[command(
    name = "tcptracer",
    after_help = EXAMPLES,
    // -v is BCC's long output here; diagnostics keep --verbose
    mut_arg("verbose", |a| a.short(None)),
    // libbpf-tools' -C/-M
    mut_arg("cgroupmap", |a| a.short('C')),
    mut_arg("mntnsmap", |a| a.short('M')),
)]
struct Args {
    /// include timestamp on output (seconds; with -v nanoseconds)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// include UID on output
    #[arg(short = 'U', long = "print-uid")]
    print_uid: bool,
    /// trace this UID only
    #[arg(short = 'u', long, value_parser = parse_id)]
    uid: Option<u32>,
    /// trace this network namespace only: its inode number, or a namespace file
    #[arg(short = 'N', long, value_parser = parse_netns)]
    netns: Option<u32>,
    #[command(flatten)]
    scope: ScopeArgs,
    #[command(flatten)]
    family: FamilyArgs,
    /// long type names (connect, accept, close) and the network namespace column (BCC's -v)
    #[arg(short = 'v')]
    long_output: bool,
    #[command(flatten)]
    sockets: SocketTable,
    #[command(flatten)]
    common: Common,
}

fn columns(long: bool, timestamp: bool, netns_col: bool, uid: bool) -> Vec<Col> {
    let mut cols = Vec::new();
    if long && timestamp {
        cols.push(Col::left("TIME(ns)", "time_rel_ns", 14));
    }
    // libbpf-tools' -U: UID after the time, before the type
    if uid {
        cols.push(Col::left("UID", "uid", 6));
    }
    if long {
        cols.push(Col::left("TYPE", "type", 12));
    } else {
        cols.push(Col::left("T", "t", 2));
    }
    cols.extend([
        Col::left("PID", "pid", 6),
        Col::cut("COMM", "comm", 16),
        Col::left("IP", "ip", 2),
        Col::left("SADDR", "saddr", 16),
        Col::left("DADDR", "daddr", 16),
        Col::left("SPORT", "sport", 6),
        Col::left("DPORT", "dport", 6),
    ]);
    if long && netns_col {
        cols.push(Col::left("NETNS", "netns", 8));
    }
    cols
}

/// BCC's type letter and long name.
fn type_names(t: u32) -> (&'static str, &'static str) {
    match t {
        1 => ("C", "connect"),
        2 => ("A", "accept"),
        3 => ("X", "close"),
        _ => ("U", "unknown"),
    }
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    runtime::set_max_sockets(a.sockets.max_sockets);
    if a.common.ebpf {
        return cli::print_ebpf("tcptracer");
    }
    let filters = Filters {
        pid: a.pid,
        uid: a.uid,
        family: a.family.family(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let json = a.common.json;
    let long = a.long_output;
    let mode = a.common.mode(false);
    // BCC: TIME(s) with 3 decimals; with -v integer nanoseconds (a column of our own, below)
    let mut printer = Printer::new(
        mode,
        columns(long, a.timestamp, a.netns.is_none(), a.print_uid),
        TimeCols {
            hms: false,
            secs: a.timestamp && !long,
        },
    )
    .with_secs_decimals(3);

    let netns = a.netns.unwrap_or(0);
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcptracerSkelBuilder,
        &mut storage,
        "tcptracer",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.filter_netns = netns;
        },
        // tcptracer's own accept hooks record the accepting owner
        |prog: &str| prog.starts_with("sockowner_refresh") && prog.contains("__accept")
    );
    let mut first_ts: Option<u64> = None;
    runtime::print_events(
        skel.object(),
        "tcptracer",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::tcptracer_event| {
            let (letter, name) = type_names(e.kind);
            let mut f = Vec::with_capacity(12);
            if !json {
                let first = *first_ts.get_or_insert(e.ts_ns);
                f.push(("time_rel_ns", Value::U(e.ts_ns.saturating_sub(first))));
                f.push(("t", Value::S(letter.into())));
            }
            f.push(("type", Value::S(name.into())));
            f.extend(owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm));
            f.extend([
                ("ip", Value::U(ip_version(e.family) as u64)),
                ("saddr", Value::Ip(ip_addr(e.family, &e.saddr))),
                ("sport", Value::U(e.sport as u64)),
                ("daddr", Value::Ip(ip_addr(e.family, &e.daddr))),
                ("dport", Value::U(e.dport as u64)),
                ("netns", Value::U(e.netns as u64)),
            ]);
            Some((e.ts_ns, f))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn short_v_is_long_output_and_long_verbose_is_diagnostics() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["tcptracer", "-v"]).unwrap();
        assert!(a.long_output && !a.common.verbose);
        let a = Args::try_parse_from(["tcptracer", "--verbose"]).unwrap();
        assert!(!a.long_output && a.common.verbose);
        let a = Args::try_parse_from(["tcptracer", "-tv", "-N", "4026531840", "-4"]).unwrap();
        assert!(a.long_output && a.timestamp && a.family.ipv4);
        assert_eq!(a.netns, Some(4026531840));
        assert!(Args::try_parse_from(["tcptracer", "-4", "-6"]).is_err());
    }

    #[test]
    fn bcc_headers() {
        let titles = |cols: Vec<Col>| -> Vec<&str> { cols.iter().map(|c| c.title).collect() };
        assert_eq!(
            titles(columns(false, false, true, false)),
            ["T", "PID", "COMM", "IP", "SADDR", "DADDR", "SPORT", "DPORT"]
        );
        assert_eq!(
            titles(columns(true, true, true, false)),
            [
                "TIME(ns)", "TYPE", "PID", "COMM", "IP", "SADDR", "DADDR", "SPORT", "DPORT",
                "NETNS"
            ]
        );
        assert_eq!(
            titles(columns(true, false, false, false)).last(),
            Some(&"DPORT")
        );
        assert_eq!(
            titles(columns(false, false, true, true))[..3],
            ["UID", "T", "PID"]
        );
        assert_eq!(type_names(1), ("C", "connect"));
        assert_eq!(type_names(2), ("A", "accept"));
        assert_eq!(type_names(3), ("X", "close"));
    }
}
