//! tcpaccept: one line per TCP connection a process accepted, named by the process that called
//! accept(). Hooks: the accept()/accept4() syscall tracepoints (BCC uses a kretprobe on inet_csk_accept).

use std::ffi::OsString;
use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::attach;
use crate::cli::{self, Common, FamilyArgs, ScopeArgs, load_tool};
use crate::filter::{Filters, PortList, parse_id, parse_ports};
use crate::format::{ip_addr, ip_version, owner_fields};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpaccept.skel.rs"));
}
use skel::{TcpacceptSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpaccept            # trace all TCP accept()s
    tcpaccept -T         # include time column (HH:MM:SS)
    tcpaccept -t         # include timestamp (seconds since the first event)
    tcpaccept -P 80,81   # only trace local ports 80 and 81
    tcpaccept -p 181     # only trace PID 181
    tcpaccept -4         # only trace IPv4 family
    tcpaccept -6         # only trace IPv6 family
    tcpaccept -B         # show the listener's accept queue (BACKLOG current/max)
    tcpaccept --json     # one JSON object per accepted connection
    tcpaccept --cgroup /sys/fs/cgroup/system.slice/nginx.service  # only this cgroup
    tcpaccept --cgroupmap mappath  # only trace cgroups in this BPF map
    tcpaccept --mntnsmap mappath   # only trace mount namespaces in the map

PID and COMM are the process (COMM: the thread) that called accept() or accept4() and got the
connection, never the client, also on loopback where the handshake runs in the client's context.
RADDR/RPORT are the peer; LADDR/LPORT the local end (the listener's port). IPv4 clients of a
dual-stack IPv6 listener show as IP 6 with ::ffff:a.b.c.d addresses, as the socket holds them.

BACKLOG (-B) is the listening socket's accept queue right after this accept: connections still
waiting to be accepted / its limit (listen()'s backlog, capped at net.core.somaxconn). A queue near
its limit means the server accepts too slowly; a full queue makes the kernel drop new handshakes.

Not seen: connections taken with io_uring (IORING_OP_ACCEPT), which makes no accept() syscall
(tcplife and tcpstates do see those connections), and accept() by 32-bit (compat) programs, which
syscall tracepoints do not report. Accepts already blocked when tcpaccept starts are seen.";

/// Trace TCP accepts
#[derive(Parser, Debug)]
#[command(name = "tcpaccept", after_help = EXAMPLES)]
struct Args {
    /// include time column on output (HH:MM:SS)
    #[arg(short = 'T', long = "time")]
    time: bool,
    /// include timestamp on output (seconds)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// comma-separated list of local ports to trace (ranges too: 8000-8010)
    #[arg(short = 'P', long = "port", value_parser = parse_ports)]
    port: Option<PortList>,
    #[command(flatten)]
    family: FamilyArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    /// show the listener's accept queue after each accept: BACKLOG as current/max
    #[arg(short = 'B', long = "backlog")]
    backlog: bool,
    #[command(flatten)]
    common: Common,
}

fn columns(backlog: bool) -> Vec<Col> {
    let mut cols = vec![
        Col::left("PID", "pid", 7),
        Col::cut("COMM", "comm", 12),
        Col::left("IP", "ip", 2),
        Col::left("RADDR", "raddr", 16),
        Col::left("RPORT", "rport", 5),
        Col::left("LADDR", "laddr", 16),
        Col::left("LPORT", "lport", 5),
    ];
    if backlog {
        cols.push(Col::left("BACKLOG", "backlog_q", 0));
    }
    cols
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.common.ebpf {
        return cli::print_ebpf("tcpaccept");
    }
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        lports: a.port.clone(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let json = a.common.json;
    let mode = a.common.mode(false);
    let mut printer = Printer::new(
        mode,
        columns(a.backlog),
        TimeCols {
            hms: a.time,
            secs: a.timestamp,
        },
    );

    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpacceptSkelBuilder,
        &mut storage,
        "tcpaccept",
        &a.common,
        &filters,
        |_| {},
        // the listening fd comes from the syscall's saved registers where the kernel lets a program
        // read them (5.15+): one program run per accept instead of two
        |name: &str| name.starts_with("tcpaccept_enter_") && attach::has_task_pt_regs()
    );
    runtime::print_events(
        skel.object(),
        "tcpaccept",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::tcpaccept_event| {
            let mut f = owner_fields(e.pid, e.uid, &e.comm);
            f.extend([
                ("ip", Value::U(ip_version(e.family) as u64)),
                ("raddr", Value::Ip(ip_addr(e.family, &e.raddr))),
                ("rport", Value::U(e.rport as u64)),
                ("laddr", Value::Ip(ip_addr(e.family, &e.laddr))),
                ("lport", Value::U(e.lport as u64)),
            ]);
            let known = e.has_listener != 0;
            if json {
                // null when the listening socket could not be found (closed meanwhile)
                let n = |v: u32| {
                    if known {
                        Value::U(v as u64)
                    } else {
                        Value::Null
                    }
                };
                f.push(("backlog", n(e.backlog)));
                f.push(("backlog_max", n(e.backlog_max)));
            } else if known {
                f.push((
                    "backlog_q",
                    Value::S(format!("{}/{}", e.backlog, e.backlog_max)),
                ));
            } else {
                f.push(("backlog_q", Value::S("-".into())));
            }
            Some((e.ts_ns, f))
        },
    )
}
