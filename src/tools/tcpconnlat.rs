//! tcpconnlat: active TCP opens with their handshake latency (SYN_SENT until ESTABLISHED).
//! Hook: sock:inet_sock_set_state (tp_btf, else raw_tp), both transitions keyed by socket; the owner is
//! recorded at SYN_SENT (in connect(), the connecting task), never taken from the softirq context.

use std::ffi::OsString;
use std::mem::MaybeUninit;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, FamilyArgs, ScopeArgs, load_tool};
use crate::filter::{Filters, parse_id};
use crate::format::{ip_addr, ip_version, owner_fields};
use crate::output::{Col, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpconnlat.skel.rs"));
}
use skel::{TcpconnlatSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpconnlat           # trace all TCP connect()s, with their latency
    tcpconnlat 1         # only connects slower than 1 ms
    tcpconnlat 0.1       # only connects slower than 100 us
    tcpconnlat -t        # include timestamps
    tcpconnlat -p 181    # only trace PID 181
    tcpconnlat -L        # include LPORT on output
    tcpconnlat -4        # trace IPv4 family only
    tcpconnlat -6        # trace IPv6 family only
    tcpconnlat --cgroup /sys/fs/cgroup/system.slice/nginx.service  # only this cgroup
    tcpconnlat --json    # one JSON object per connect (lat_ms, lport, uid, ...)
    tcpconnlat --ebpf    # print the BPF program (BCC's -v; here -v is --verbose)

LAT(ms) is the time from the socket entering SYN_SENT (inside connect(), before the SYN is sent)
until the SYN-ACK is processed and it is ESTABLISHED. Handshakes that fail (refused, timed out,
reset) are not latencies and are not shown; `tcpconnect` shows every attempt. PID and COMM are the
process that called connect(), even though the handshake completes in softirq context.";

/// Trace TCP connects and show connection latency
#[derive(Parser, Debug)]
#[command(name = "tcpconnlat", after_help = EXAMPLES)]
struct Args {
    /// include timestamp on output (seconds since the first event)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// include LPORT on output
    #[arg(short = 'L', long = "lport")]
    lport: bool,
    #[command(flatten)]
    family: FamilyArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    /// minimum latency to show, in ms (fractions allowed: 0.1 = 100 us)
    #[arg(value_name = "min_ms", value_parser = parse_min_ms)]
    min_ms: Option<f64>,
    #[command(flatten)]
    common: Common,
}

fn parse_min_ms(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err(format!(
            "invalid latency '{s}': must be a positive number of ms"
        )),
        Err(_) => Err(format!("invalid latency '{s}': must be a number of ms")),
    }
}

/// ms to ns, rounded to the microsecond as BCC does (`0.1` is 100 us).
fn min_ns(ms: f64) -> u64 {
    ((ms * 1000.0).round() as u64).saturating_mul(1000)
}

fn columns(lport: bool) -> Vec<Col> {
    let mut cols = vec![
        Col::left("PID", "pid", 6),
        Col::cut("COMM", "comm", 12),
        Col::left("IP", "ip", 2),
        Col::left("SADDR", "saddr", 16),
    ];
    if lport {
        cols.push(Col::left("LPORT", "lport", 6));
    }
    cols.extend([
        Col::left("DADDR", "daddr", 16),
        Col::left("DPORT", "dport", 5),
        Col::left("LAT(ms)", "lat_ms", 0),
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
        return cli::print_ebpf("tcpconnlat");
    }
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mode = a.common.mode(false);
    let mut printer = Printer::new(
        mode,
        columns(a.lport),
        TimeCols {
            hms: false,
            secs: a.timestamp,
        },
    )
    .with_secs_decimals(3); // BCC's %-9.3f
    let min = min_ns(a.min_ms.unwrap_or(0.0));
    // BCC's column has 2 decimals; JSON keeps microseconds
    let decimals = if a.common.json { 3 } else { 2 };

    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpconnlatSkelBuilder,
        &mut storage,
        "tcpconnlat",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.min_lat_ns = min;
        }
    );
    runtime::print_events(
        skel.object(),
        "tcpconnlat",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::tcpconnlat_event| {
            let mut f = owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm);
            f.extend([
                ("ip", Value::U(ip_version(e.family) as u64)),
                ("saddr", Value::Ip(ip_addr(e.family, &e.saddr))),
                ("lport", Value::U(e.lport as u64)),
                ("daddr", Value::Ip(ip_addr(e.family, &e.daddr))),
                ("dport", Value::U(e.dport as u64)),
                ("lat_ms", Value::F(e.lat_ns as f64 / 1e6, decimals)),
            ]);
            Some((e.ts_ns, f))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_latency_in_ns() {
        assert_eq!(min_ns(0.0), 0);
        assert_eq!(min_ns(1.0), 1_000_000);
        assert_eq!(min_ns(0.1), 100_000);
        assert_eq!(min_ns(2.5), 2_500_000);
    }

    #[test]
    fn min_latency_parsing() {
        assert_eq!(parse_min_ms("0.1"), Ok(0.1));
        assert_eq!(parse_min_ms("10"), Ok(10.0));
        assert!(parse_min_ms("-1").is_err());
        assert!(parse_min_ms("abc").is_err());
        assert!(parse_min_ms("inf").is_err());
    }

    #[test]
    fn columns_like_bcc() {
        let titles = |l| columns(l).iter().map(|c| c.title).collect::<Vec<_>>();
        assert_eq!(
            titles(false),
            ["PID", "COMM", "IP", "SADDR", "DADDR", "DPORT", "LAT(ms)"]
        );
        assert_eq!(
            titles(true),
            [
                "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT", "LAT(ms)"
            ]
        );
    }
}
