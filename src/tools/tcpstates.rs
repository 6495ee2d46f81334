//! tcpstates: every TCP state change, with the time spent in the previous state and the owning process.
//! Hook: sock:inet_sock_set_state (tp_btf, else raw_tp).

use std::ffi::OsString;
use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, FamilyArgs, PortArgs, ScopeArgs, SocketTable, load_tool};
use crate::filter::Filters;
use crate::format::{ip_addr, ip_version, owner_fields, tcp_state};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpstates.skel.rs"));
}
use skel::{TcpstatesSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpstates           # trace all TCP state changes
    tcpstates -t        # include timestamp column
    tcpstates -T        # include time column (HH:MM:SS)
    tcpstates -w        # wider columns (fit IPv6)
    tcpstates -stT      # csv output, with times & timestamps
    tcpstates -Y        # log events to the systemd journal
    tcpstates -L 80     # only trace local port 80
    tcpstates -L 80,81  # only trace local ports 80 and 81
    tcpstates -D 80     # only trace remote port 80
    tcpstates -4        # trace IPv4 family only
    tcpstates -6        # trace IPv6 family only
    tcpstates --json    # one JSON object per state change

C-PID and C-COMM are the process that owns the socket (BCC printed whichever task was on the CPU,
which in softirq context is often another process); JSON adds ctx_pid, that task. MS is the time
spent in OLDSTATE.";

/// Trace TCP session state changes and durations
#[derive(Parser, Debug)]
#[command(name = "tcpstates", after_help = EXAMPLES)]
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
    /// log session state changes to the systemd journal
    #[arg(short = 'Y', long = "journal")]
    journal: bool,
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
    let (comm, addr) = if wide { (16, 26) } else { (10, 15) };
    let mut cols = vec![
        Col::left("SKADDR", "skaddr", 16),
        Col::left("C-PID", "pid", 5),
        Col::cut("C-COMM", "comm", comm),
    ];
    if wide {
        cols.push(Col::left("IP", "ip", 2));
    }
    cols.extend([
        Col::left("LADDR", "laddr", addr),
        Col::left("LPORT", "lport", 5),
        Col::left("RADDR", "raddr", addr),
        Col::left("RPORT", "rport", 5),
        Col::left("OLDSTATE", "oldstate", 11),
        Col::literal("->"),
        Col::left("NEWSTATE", "newstate", 11),
        Col::left("MS", "ms", 0),
    ]);
    cols
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    runtime::set_max_sockets(a.sockets.max_sockets);
    if a.common.ebpf {
        return cli::print_ebpf("tcpstates");
    }
    let filters = Filters {
        family: a.family.family(),
        lports: a.ports.localport.clone(),
        rports: a.ports.remoteport.clone(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mode = a.common.mode(a.csv);
    let mut printer = Printer::new(
        mode,
        columns(a.wide || a.csv),
        TimeCols {
            hms: a.time,
            secs: a.timestamp,
        },
    );

    let mut journal = if a.journal {
        Some(crate::journal::Journal::connect()?)
    } else {
        None
    };
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpstatesSkelBuilder,
        &mut storage,
        "tcpstates",
        &a.common,
        &filters,
        |_| {}
    );
    let r = runtime::print_events(
        skel.object(),
        "tcpstates",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::tcpstates_event| {
            let mut f = vec![("skaddr", Value::Hex(e.skaddr))];
            f.extend(owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm));
            f.extend([
                ("ctx_pid", Value::U(e.ctx_pid as u64)),
                ("ip", Value::U(ip_version(e.family) as u64)),
                ("laddr", Value::Ip(ip_addr(e.family, &e.laddr))),
                ("lport", Value::U(e.lport as u64)),
                ("raddr", Value::Ip(ip_addr(e.family, &e.raddr))),
                ("rport", Value::U(e.rport as u64)),
                ("oldstate", Value::S(tcp_state(e.oldstate).into())),
                ("newstate", Value::S(tcp_state(e.newstate).into())),
                ("ms", Value::F(e.delta_ns as f64 / 1e6, 3)),
            ]);
            if let Some(j) = journal.as_mut() {
                j.send(&journal_fields(e));
            }
            Some((e.ts_ns, f))
        },
    );
    if let Some(j) = &journal {
        j.report("tcpstates");
    }
    r
}

/// BCC's journal entry: its fields and message (`COMM SADDR SPORT → DADDR DPORT OLD → NEW`).
fn journal_fields(e: &types::tcpstates_event) -> Vec<(&'static str, String)> {
    let v = if ip_version(e.family) == 6 {
        "IPV6"
    } else {
        "IPV4"
    };
    let (src, dst) = (ip_addr(e.family, &e.laddr), ip_addr(e.family, &e.raddr));
    let comm = if e.owner.pid == 0 {
        "?".to_string()
    } else {
        crate::format::comm(&e.owner.comm)
    };
    let (old, new) = (tcp_state(e.oldstate), tcp_state(e.newstate));
    let message = format!("{comm} {src} {} → {dst} {} {old} → {new}", e.lport, e.rport);
    let src_key = if v == "IPV6" {
        "OBJECT_IPV6_SOURCE_ADDRESS"
    } else {
        "OBJECT_IPV4_SOURCE_ADDRESS"
    };
    let dst_key = if v == "IPV6" {
        "OBJECT_IPV6_DESTINATION_ADDRESS"
    } else {
        "OBJECT_IPV4_DESTINATION_ADDRESS"
    };
    vec![
        ("MESSAGE", message),
        ("SYSLOG_IDENTIFIER", "tcpstates".into()),
        ("PRIORITY", "5".into()),
        ("OBJECT_PID", e.owner.pid.to_string()),
        ("OBJECT_COMM", comm),
        (src_key, src.to_string()),
        ("OBJECT_TCP_SOURCE_PORT", e.lport.to_string()),
        (dst_key, dst.to_string()),
        ("OBJECT_TCP_DESTINATION_PORT", e.rport.to_string()),
        ("OBJECT_TCP_OLD_STATE", old.to_string()),
        ("OBJECT_TCP_NEW_STATE", new.to_string()),
        ("OBJECT_TCP_SPAN_TIME", (e.delta_ns / 1000).to_string()),
    ]
}
