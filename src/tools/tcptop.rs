//! tcptop: who is moving the most TCP bytes, per process and connection, every interval. Counted in the
//! kernel per flow (bpf/tcptop.bpf.c, shared with tcpsubnet through src/flows.rs); user space reads the
//! counts once per interval. Hooks: sock:sock_send_length and sock:sock_recv_length (Linux 6.3+; tp_btf,
//! else raw_tp), else fexit tcp_sendmsg and fentry tcp_cleanup_rbuf.

use std::ffi::OsString;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use crate::cli::{self, Common, FamilyArgs, ScopeArgs};
use crate::filter::{Filters, parse_id};
use crate::flows::{Counting, Flow, FlowCounter};
use crate::format::{AF_INET6, comm, hms, ip_addr, ip_version, owner_fields};
use crate::output::{Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

const EXAMPLES: &str = "examples:
    tcptop            # trace TCP send/recv by host, refresh every second
    tcptop -C         # don't clear the screen
    tcptop -p 181     # only trace PID 181
    tcptop 5 10       # 5 second summaries, 10 times
    tcptop -r 10 -s sent   # the 10 flows that sent most
    tcptop -4         # trace IPv4 family only
    tcptop -6         # trace IPv6 family only
    tcptop --json 1   # one JSON object per flow per interval (exact bytes)
    tcptop -c /sys/fs/cgroup/system.slice/nginx.service  # only this cgroup (also --cgroup)
    tcptop --cgroupmap mappath  # only trace cgroups in this BPF map
    tcptop --mntnsmap mappath   # only trace mount namespaces in the map

RX_KB/TX_KB: payload bytes the process received/sent on the connection in the interval (what its
recv/send calls returned, sendfile and splice to a socket included), in KiB. PID/COMM: the process
that made the calls.

--walk: no hook on the send/receive path; each interval the TCP sockets are walked and their own
counters read: TX is the bytes the peer acknowledged, RX the bytes TCP received (in order), and
--json adds retrans_bytes (bytes sent again); PID/COMM: the socket's owner (the process that
connected it; for an accepted connection, the listener's until the process that took it closes it),
not the caller of send/recv.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Sort {
    All,
    Sent,
    Received,
}

/// Summarize TCP send/recv throughput by host
#[derive(Parser, Debug)]
#[command(
    name = "tcptop",
    after_help = EXAMPLES,
    // libbpf-tools' -c CGROUPPATH
    mut_arg("cgroup", |a| a.short('c')),
)]
struct Args {
    /// don't clear the screen
    #[arg(short = 'C', long = "noclear")]
    noclear: bool,
    /// skip system summary line
    #[arg(short = 'S', long = "nosummary")]
    nosummary: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    #[command(flatten)]
    family: FamilyArgs,
    /// maximum rows to print per table (default: all, as BCC)
    #[arg(short = 'r', long = "rows", value_parser = clap::value_parser!(u64).range(1..))]
    rows: Option<u64>,
    /// sort rows by: all (received + sent), sent, received
    #[arg(short = 's', long = "sort", value_enum, default_value = "all")]
    sort: Sort,
    #[command(flatten)]
    scope: ScopeArgs,
    /// output interval, in seconds
    #[arg(default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    interval: u64,
    /// number of outputs
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// count from the sockets' own counters, walked every interval (no hook per send or receive):
    /// bytes acked by the peer (TX) and received by TCP (RX), attributed to the socket's owner
    #[arg(long)]
    walk: bool,
    #[command(flatten)]
    flows: crate::flows::FlowTable,
    #[command(flatten)]
    common: Common,
}

fn wall_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Flows in print order: most bytes first (by the sort key), then a stable order.
fn sorted(mut flows: Vec<Flow>, sort: Sort) -> Vec<Flow> {
    let weight = |f: &Flow| match sort {
        Sort::All => f.val.tx_bytes + f.val.rx_bytes,
        Sort::Sent => f.val.tx_bytes,
        Sort::Received => f.val.rx_bytes,
    };
    flows.sort_by(|a, b| {
        weight(b).cmp(&weight(a)).then_with(|| {
            (
                a.key.pid,
                a.key.family,
                a.key.lport,
                a.key.rport,
                a.key.laddr,
                a.key.raddr,
            )
                .cmp(&(
                    b.key.pid,
                    b.key.family,
                    b.key.lport,
                    b.key.rport,
                    b.key.laddr,
                    b.key.raddr,
                ))
        })
    });
    flows
}

/// BCC's `addr:port`.
fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> String {
    format!("{}:{port}", ip_addr(family, addr))
}

/// One table (IPv4 or IPv6) as BCC prints it.
fn table(flows: &[&Flow], v6: bool, rows: usize) -> String {
    let w = if v6 { 32 } else { 21 };
    let (l, r) = if v6 {
        ("LADDR6", "RADDR6")
    } else {
        ("LADDR", "RADDR")
    };
    let mut s = format!(
        "{:<6} {:<12} {l:<w$} {r:<w$} {:>6} {:>6}\n",
        "PID", "COMM", "RX_KB", "TX_KB"
    );
    for f in flows.iter().take(rows) {
        let k = &f.key;
        let name: String = comm(&f.val.comm).chars().take(12).collect();
        s.push_str(&format!(
            "{:<6} {:<12} {:<w$} {:<w$} {:>6} {:>6}\n",
            k.pid,
            name,
            endpoint(k.family, &k.laddr, k.lport),
            endpoint(k.family, &k.raddr, k.rport),
            f.val.rx_bytes / 1024,
            f.val.tx_bytes / 1024,
        ));
    }
    s
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The whole screen of one interval.
fn screen(flows: &[Flow], a: &Args, clear: bool) -> String {
    let mut s = String::new();
    if clear {
        s.push_str("\x1b[H\x1b[2J");
    } else {
        s.push('\n');
    }
    if !a.nosummary {
        s.push_str(&format!(
            "{} loadavg: {}\n\n",
            hms(wall_now_ns()),
            loadavg()
        ));
    }
    let rows = a.rows.map_or(usize::MAX, |r| r as usize);
    let (v6, v4): (Vec<&Flow>, Vec<&Flow>) = flows.iter().partition(|f| f.key.family == AF_INET6);
    if !a.family.ipv6 {
        s.push_str(&table(&v4, false, rows));
    }
    if a.family.ipv6 || !v6.is_empty() {
        if !a.family.ipv6 {
            s.push('\n');
        }
        s.push_str(&table(&v6, true, rows));
    }
    s
}

fn json_fields(f: &Flow, tick: u64, time_ns: u64, walk: bool) -> Fields {
    let k = &f.key;
    let v = &f.val;
    let mut out: Fields = vec![("time_ns", Value::U(time_ns)), ("tick", Value::U(tick))];
    out.extend(owner_fields(k.pid, v.uid, &v.comm));
    out.extend([
        ("ip", Value::U(ip_version(k.family) as u64)),
        ("laddr", Value::Ip(ip_addr(k.family, &k.laddr))),
        ("lport", Value::U(k.lport as u64)),
        ("raddr", Value::Ip(ip_addr(k.family, &k.raddr))),
        ("rport", Value::U(k.rport as u64)),
        ("rx_bytes", Value::U(v.rx_bytes)),
        ("tx_bytes", Value::U(v.tx_bytes)),
        ("rx_kb", Value::U(v.rx_bytes / 1024)),
        ("tx_kb", Value::U(v.tx_bytes / 1024)),
    ]);
    if walk {
        // no calls seen: the socket's own counters
        out.push(("retrans_bytes", Value::U(v.retrans_bytes)));
    } else {
        out.extend([
            ("rx_calls", Value::U(v.rx_calls)),
            ("tx_calls", Value::U(v.tx_calls)),
        ]);
    }
    out
}

fn print_interval(
    printer: &mut Printer,
    a: &Args,
    flows: Vec<Flow>,
    tick: u64,
    clear: bool,
) -> Result<()> {
    let flows = sorted(flows, a.sort);
    if a.common.json {
        let now = wall_now_ns();
        let rows = a.rows.map_or(usize::MAX, |r| r as usize);
        let (v6, v4): (Vec<&Flow>, Vec<&Flow>) =
            flows.iter().partition(|f| f.key.family == AF_INET6);
        for f in v4.iter().take(rows).chain(v6.iter().take(rows)) {
            printer.json_record(&json_fields(f, tick, now, a.walk))?;
        }
        printer.flush()?;
        return Ok(());
    }
    crate::output::print_block(&screen(&flows, a, clear))?;
    Ok(())
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    a.flows.apply(a.walk);
    if a.common.ebpf {
        return cli::print_ebpf(if a.walk { "tcpwalk" } else { "tcptop" });
    }
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mut storage = MaybeUninit::uninit();
    let counting = Counting::load(&mut storage, a.walk, false, "tcptop", &a.common, &filters)?;
    let obj = counting.object();
    let mode = a.common.mode(false);
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    let clear = !a.noclear && crate::output::stdout_is_tty();
    let mut counter = FlowCounter::new();
    runtime::say_ready(a.common.verbose);
    if mode != Mode::Json {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Tracing... Output every {} secs. Hit Ctrl-C to end",
            a.interval
        )?;
        out.flush()?;
    }
    let every = Some(Duration::from_secs(a.interval));
    runtime::interval_loop(
        obj,
        |_| Ok(()),
        every,
        a.count,
        None,
        |n, last| {
            // at Ctrl-C, SIGTERM, SIGHUP: with --json the bytes since the last interval, so that the
            // intervals add up to everything counted (the screen is not redrawn for a part of one)
            if last && !a.common.json {
                return Ok(());
            }
            let flows = counting.take(&mut counter)?;
            print_interval(&mut printer, &a, flows, n, clear && !last)
        },
    )?;
    runtime::report_lost(&mut printer, "tcptop", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::types;

    fn flow(pid: u32, v6: bool, rx: u64, tx: u64) -> Flow {
        let mut key = types::tcptop_key {
            pid,
            family: if v6 { 10 } else { 2 },
            lport: 5000 + pid as u16,
            rport: 80,
            ..Default::default()
        };
        if v6 {
            key.laddr[15] = 1;
            key.raddr[15] = 1;
        } else {
            key.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
            key.raddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        }
        let mut val = types::tcptop_val {
            rx_bytes: rx,
            tx_bytes: tx,
            ..Default::default()
        };
        for (i, b) in b"a-rather-long-name".iter().take(15).enumerate() {
            val.comm[i] = *b as _;
        }
        Flow { key, val }
    }

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["tcptop"];
        v.extend(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn sort_orders() {
        let f = vec![
            flow(1, false, 10, 0),
            flow(2, false, 0, 20),
            flow(3, false, 8, 8),
        ];
        let pids = |v: Vec<Flow>| v.iter().map(|f| f.key.pid).collect::<Vec<_>>();
        assert_eq!(pids(sorted(f.clone(), Sort::All)), [2, 3, 1]);
        assert_eq!(pids(sorted(f.clone(), Sort::Sent)), [2, 3, 1]);
        assert_eq!(pids(sorted(f, Sort::Received)), [1, 3, 2]);
    }

    #[test]
    fn screen_like_bcc() {
        let f = vec![flow(7, false, 4096, 1024), flow(8, true, 0, 2048)];
        let s = screen(&sorted(f, Sort::All), &args(&["-C", "-S"]), false);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(
            lines[1],
            "PID    COMM         LADDR                 RADDR                  RX_KB  TX_KB"
        );
        assert_eq!(
            lines[2],
            "7      a-rather-lon 10.0.0.1:5007         10.0.0.2:80                4      1"
        );
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("PID    COMM         LADDR6 "));
        assert!(lines[5].starts_with("8      a-rather-lon ::1:5008 "));
        assert!(lines[5].ends_with("     0      2"));
        // the summary line, and the clear codes on a terminal
        let s = screen(&[], &args(&[]), true);
        assert!(s.starts_with("\x1b[H\x1b[2J"));
        assert!(s.lines().next().unwrap().contains(" loadavg: "));
    }

    #[test]
    fn rows_limit() {
        let f: Vec<Flow> = (1..=5).map(|p| flow(p, false, p as u64, 0)).collect();
        let s = screen(&sorted(f, Sort::All), &args(&["-S", "-r", "2"]), false);
        assert_eq!(s.lines().count(), 4, "{s}");
    }
}
