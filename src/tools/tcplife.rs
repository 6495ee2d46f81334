//! tcplife: one line per TCP session when it closes, with the owning process on both ends, bytes each
//! way and lifespan. Hook: sock:inet_sock_set_state (tp_btf, else raw_tp).

use std::ffi::OsString;
use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, FamilyArgs, PortArgs, ScopeArgs, SocketTable, load_tool};
use crate::filter::{Filters, parse_id};
use crate::format::{ip_addr, ip_version, owner_fields};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcplife.skel.rs"));
}
use skel::{TcplifeSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcplife           # trace all TCP sessions
    tcplife -T        # include time column (HH:MM:SS)
    tcplife -w        # wider columns (fit IPv6)
    tcplife -stT      # csv output, with times & timestamps
    tcplife -p 181    # only trace PID 181
    tcplife -L 80     # only trace local port 80
    tcplife -L 80,81  # only trace local ports 80 and 81
    tcplife -D 80     # only trace remote port 80
    tcplife -4        # only trace IPv4 family
    tcplife -6        # only trace IPv6 family
    tcplife --json    # one JSON object per session (exact byte counts)
    tcplife --cgroup /sys/fs/cgroup/system.slice/ssh.service  # only this cgroup

PID and COMM are the process that owns the socket on each end (also for the passive side, whose
state changes run in softirq context); 0 and ? when it cannot be known (socket older than the tool
and not held by any process).";

/// Trace the lifespan of TCP sessions and summarize
#[derive(Parser, Debug)]
#[command(name = "tcplife", after_help = EXAMPLES)]
struct Args {
    /// include time column on output (HH:MM:SS)
    #[arg(short = 'T', long = "time")]
    time: bool,
    /// include timestamp on output (seconds)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// wide column output (fits IPv6 addresses)
    #[arg(short = 'w', long)]
    wide: bool,
    /// comma separated values output
    #[arg(short = 's', long)]
    csv: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    #[command(flatten)]
    ports: PortArgs,
    #[command(flatten)]
    family: FamilyArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    #[command(flatten)]
    sockets: SocketTable,
    #[command(flatten)]
    common: Common,
}

fn columns(wide: bool) -> Vec<Col> {
    if wide {
        vec![
            Col::left("PID", "pid", 5),
            Col::cut("COMM", "comm", 16),
            Col::left("IP", "ip", 2),
            Col::left("LADDR", "laddr", 26),
            Col::left("LPORT", "lport", 5),
            Col::left("RADDR", "raddr", 26),
            Col::left("RPORT", "rport", 5),
            Col::right("TX_KB", "tx_kb", 6),
            Col::right("RX_KB", "rx_kb", 6),
            Col::left("MS", "ms", 0),
        ]
    } else {
        vec![
            Col::left("PID", "pid", 5),
            Col::cut("COMM", "comm", 10),
            Col::left("LADDR", "laddr", 15),
            Col::left("LPORT", "lport", 5),
            Col::left("RADDR", "raddr", 15),
            Col::left("RPORT", "rport", 5),
            Col::right("TX_KB", "tx_kb", 5),
            Col::right("RX_KB", "rx_kb", 5),
            Col::left("MS", "ms", 0),
        ]
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
        return cli::print_ebpf("tcplife");
    }
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        lports: a.ports.localport.clone(),
        rports: a.ports.remoteport.clone(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mode = a.common.mode(a.csv);
    // CSV always carries the IP column, as BCC's does
    let mut printer = Printer::new(
        mode,
        columns(a.wide || a.csv),
        TimeCols {
            hms: a.time,
            secs: a.timestamp,
        },
    );

    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcplifeSkelBuilder,
        &mut storage,
        "tcplife",
        &a.common,
        &filters,
        |_| {}
    );
    runtime::print_events(
        skel.object(),
        "tcplife",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::tcplife_event| {
            let mut f = owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm);
            f.extend([
                ("ip", Value::U(ip_version(e.family) as u64)),
                ("laddr", Value::Ip(ip_addr(e.family, &e.laddr))),
                ("lport", Value::U(e.lport as u64)),
                ("raddr", Value::Ip(ip_addr(e.family, &e.raddr))),
                ("rport", Value::U(e.rport as u64)),
                ("tx_bytes", Value::U(e.tx_bytes)),
                ("rx_bytes", Value::U(e.rx_bytes)),
                ("tx_kb", Value::U(e.tx_bytes / 1024)),
                ("rx_kb", Value::U(e.rx_bytes / 1024)),
                // u64::MAX: its start was not kept (the socket table was full; counted as lost)
                (
                    "ms",
                    match e.span_ns {
                        u64::MAX => Value::Null,
                        ns => Value::F(ns as f64 / 1e6, 2),
                    },
                ),
                ("skaddr", Value::Hex(e.skaddr)),
            ]);
            Some((e.ts_ns, f))
        },
    )
}
