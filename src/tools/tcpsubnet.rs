//! tcpsubnet: bytes sent over TCP, summed per destination subnet (first match in the order given wins),
//! every interval. The counting is tcptop's (bpf/tcptop.bpf.c through src/flows.rs: bytes per flow in
//! the kernel, read once per interval; only its send hooks are loaded); the flows are summed per subnet
//! here, so IPv6 subnets come at no cost (BCC's counts IPv4 only).

use std::ffi::OsString;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use crate::cli::{self, Common};
use crate::filter::Filters;
use crate::flows::{Counting, Flow, FlowCounter};
use crate::format::ip_addr;
use crate::output::{Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

/// BCC's default list.
const DEFAULT_SUBNETS: &str = "127.0.0.1/32,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,0.0.0.0/0";

const EXAMPLES: &str = "examples:
    tcpsubnet                 # Trace TCP sent to the default subnets:
                              # 127.0.0.1/32,10.0.0.0/8,172.16.0.0/12,
                              # 192.168.0.0/16,0.0.0.0/0
    tcpsubnet -f K            # Trace TCP sent to the default subnets
                              # aggregated in KBytes.
    tcpsubnet 10.80.0.0/24    # Trace TCP sent to 10.80.0.0/24 only
    tcpsubnet -J              # Format the output in JSON.
    tcpsubnet fd00::/8,::/0   # IPv6 subnets too
    tcpsubnet --json          # one sockray JSON object per subnet per interval (exact bytes)

Bytes sent: what the senders' send calls returned (sendfile and splice included), per destination
address; each flow counts in the first subnet that holds its remote address (an IPv4-mapped IPv6
address as IPv4).

--walk: no hook on the send path; each interval the TCP sockets are walked and their own counters
read: bytes sent is then what the peer acknowledged (retransmits not counted twice).";

/// Summarize TCP send and aggregate by subnet
#[derive(Parser, Debug)]
#[command(name = "tcpsubnet", after_help = EXAMPLES)]
struct Args {
    /// comma separated list of subnets
    #[arg(value_parser = parse_subnets)]
    subnets: Option<Subnets>,
    /// format output in JSON (BCC's: one object per interval, subnet -> value)
    #[arg(short = 'J')]
    bcc_json: bool,
    /// [bkmBKM] format to report: bits, Kbits, Mbits, bytes, KBytes, MBytes (default B)
    #[arg(short = 'f', long = "format", default_value = "B", value_parser = ["b", "k", "m", "B", "K", "M"])]
    format: String,
    /// output interval, in seconds
    #[arg(short = 'i', long = "interval", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    interval: u64,
    /// count from the sockets' own counters, walked every interval (no hook per send): bytes acked by
    /// the peer
    #[arg(long)]
    walk: bool,
    #[command(flatten)]
    flows: crate::flows::FlowTable,
    #[command(flatten)]
    common: Common,
}

/// One subnet as given, and what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subnet {
    text: String,
    net: IpAddr,
    prefix: u8,
}

#[derive(Clone, Debug)]
struct Subnets(Vec<Subnet>);

fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let s = s.trim();
    let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
    let net: IpAddr = addr
        .parse()
        .map_err(|_| format!("subnet '{s}': '{addr}' is not an IP address"))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = if prefix.is_empty() {
        max
    } else {
        prefix
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("subnet '{s}': prefix length must be 0 to {max}"))?
    };
    Ok(Subnet {
        text: s.to_string(),
        net,
        prefix,
    })
}

fn parse_subnets(s: &str) -> Result<Subnets, String> {
    s.split(',')
        .map(parse_subnet)
        .collect::<Result<Vec<_>, _>>()
        .map(Subnets)
}

fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

impl Subnet {
    fn contains(&self, a: IpAddr) -> bool {
        if a.is_ipv4() != self.net.is_ipv4() {
            return false;
        }
        let width = if a.is_ipv4() { 32 } else { 128 };
        let shift = width - self.prefix as u32;
        if shift >= 128 {
            return true;
        }
        bits(a) >> shift == bits(self.net) >> shift
    }
}

/// The index of the first subnet that holds a (an IPv4-mapped IPv6 address as IPv4).
fn first_match(subnets: &[Subnet], a: IpAddr) -> Option<usize> {
    let a = match a {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    subnets.iter().position(|s| s.contains(a))
}

/// Bytes sent per subnet (index into the list), over the flows of one interval.
fn per_subnet(subnets: &[Subnet], flows: &[Flow]) -> Vec<u64> {
    let mut sums = vec![0u64; subnets.len()];
    for f in flows {
        if let Some(i) = first_match(subnets, ip_addr(f.key.family, &f.key.raddr)) {
            sums[i] += f.val.tx_bytes;
        }
    }
    sums
}

/// BCC's units: bytes as bits, Kbits, Mbits, bytes, KBytes, MBytes (whole numbers, rounded down).
fn scaled(bytes: u64, format: &str) -> u64 {
    match format {
        "b" => bytes * 8,
        "k" => bytes * 8 / 1024,
        "m" => bytes * 8 / (1024 * 1024),
        "K" => bytes / 1024,
        "M" => bytes / (1024 * 1024),
        _ => bytes,
    }
}

fn strftime(fmt: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r fills the tm we own; strftime writes at most buf.len() bytes.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        let mut buf = [0u8; 64];
        let c = std::ffi::CString::new(fmt).unwrap_or_default();
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c.as_ptr(), &tm);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// Subnets with bytes, most first (ties in the order given).
fn ranked(subnets: &[Subnet], sums: &[u64]) -> Vec<(usize, u64)> {
    let mut v: Vec<(usize, u64)> = sums
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, b)| b > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = subnets;
    v
}

/// BCC's table: the time in brackets, then `subnet value` per subnet that sent something.
fn table(subnets: &[Subnet], sums: &[u64], format: &str, stamp: &str) -> String {
    let mut s = format!("[{stamp}]\n");
    for (i, b) in ranked(subnets, sums) {
        s.push_str(&format!(
            "{:<21} {:>6}\n",
            subnets[i].text,
            scaled(b, format)
        ));
    }
    s
}

/// BCC's -J: one object per interval, subnet -> value, with the date and time.
fn bcc_json(subnets: &[Subnet], sums: &[u64], format: &str, date: &str, time: &str) -> String {
    let mut m = serde_json::Map::new();
    for (i, b) in ranked(subnets, sums) {
        m.insert(
            subnets[i].text.clone(),
            serde_json::Value::from(scaled(b, format)),
        );
    }
    m.insert("date".into(), date.into());
    m.insert("time".into(), time.into());
    serde_json::Value::Object(m).to_string()
}

fn json_fields(subnet: &Subnet, bytes: u64, tick: u64, time_ns: u64) -> Fields {
    vec![
        ("time_ns", Value::U(time_ns)),
        ("tick", Value::U(tick)),
        ("subnet", Value::S(subnet.text.clone())),
        ("tx_bytes", Value::U(bytes)),
    ]
}

fn print_interval(
    printer: &mut Printer,
    a: &Args,
    subnets: &[Subnet],
    flows: &[Flow],
    tick: u64,
) -> Result<()> {
    let sums = per_subnet(subnets, flows);
    if a.common.json {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for (i, b) in ranked(subnets, &sums) {
            printer.json_record(&json_fields(&subnets[i], b, tick, now))?;
        }
        printer.flush()?;
        return Ok(());
    }
    let text = if a.bcc_json {
        bcc_json(
            subnets,
            &sums,
            &a.format,
            &strftime("%m/%d/%y"),
            &strftime("%H:%M:%S"),
        ) + "\n"
    } else {
        table(subnets, &sums, &a.format, &strftime("%m/%d/%y %H:%M:%S"))
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
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
    let subnets = match &a.subnets {
        Some(s) => s.0.clone(),
        None => {
            parse_subnets(DEFAULT_SUBNETS)
                .map_err(anyhow::Error::msg)?
                .0
        }
    };
    // only the families some subnet can match
    let v4 = subnets.iter().any(|s| s.net.is_ipv4());
    let v6 = subnets.iter().any(|s| s.net.is_ipv6());
    let filters = Filters {
        // IPv4-mapped addresses are on IPv6 sockets: IPv4 subnets alone still need those
        family: (!v4 && v6).then_some(crate::format::AF_INET6),
        ..Default::default()
    };
    let mut storage = MaybeUninit::uninit();
    let counting = Counting::load(&mut storage, a.walk, true, "tcpsubnet", &a.common, &filters)?;
    let obj = counting.object();
    let mode = a.common.mode(false);
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    let mut counter = FlowCounter::new();
    if a.common.verbose {
        for s in &subnets {
            cli::debug(format_args!(
                "tcpsubnet: subnet {} = {}/{}",
                s.text, s.net, s.prefix
            ));
        }
        runtime::say_ready(true);
    }
    if mode != Mode::Json && !a.bcc_json {
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
        None,
        None,
        |n, last| {
            // at Ctrl-C, SIGTERM, SIGHUP: with --json, what was sent since the last interval
            if last && !a.common.json {
                return Ok(());
            }
            let flows = counting.take(&mut counter)?;
            print_interval(&mut printer, &a, &subnets, &flows, n)
        },
    )?;
    runtime::report_lost(&mut printer, "tcpsubnet", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_parse_and_match() {
        let l = parse_subnets(DEFAULT_SUBNETS).unwrap().0;
        assert_eq!(l.len(), 5);
        assert_eq!(first_match(&l, ip("127.0.0.1")), Some(0));
        assert_eq!(first_match(&l, ip("127.0.0.2")), Some(4));
        assert_eq!(first_match(&l, ip("10.1.2.3")), Some(1));
        assert_eq!(first_match(&l, ip("172.31.255.255")), Some(2));
        assert_eq!(first_match(&l, ip("172.32.0.1")), Some(4));
        assert_eq!(first_match(&l, ip("192.168.9.9")), Some(3));
        assert_eq!(first_match(&l, ip("8.8.8.8")), Some(4));
        assert_eq!(first_match(&l, ip("::1")), None, "no IPv6 in BCC's list");
        // IPv4-mapped IPv6 addresses count as IPv4
        assert_eq!(first_match(&l, ip("::ffff:10.0.0.1")), Some(1));
        let l6 = parse_subnets("fd77::/64, ::/0").unwrap().0;
        assert_eq!(first_match(&l6, ip("fd77::2")), Some(0));
        assert_eq!(first_match(&l6, ip("fd78::2")), Some(1));
        assert_eq!(first_match(&l6, ip("10.0.0.1")), None);
        // a bare address is a host
        assert_eq!(parse_subnet("10.0.0.1").unwrap().prefix, 32);
        assert_eq!(parse_subnet("::1").unwrap().prefix, 128);
        // the order given wins over the longest prefix
        let l = parse_subnets("10.0.0.0/8,10.1.0.0/16").unwrap().0;
        assert_eq!(first_match(&l, ip("10.1.0.1")), Some(0));
    }

    #[test]
    fn bad_subnets() {
        assert!(
            parse_subnets("10.0.0.0/33")
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(
            parse_subnets("fd00::/129")
                .unwrap_err()
                .contains("0 to 128")
        );
        assert!(parse_subnets("nope/8").unwrap_err().contains("nope"));
        assert!(parse_subnets("10.0.0.0/8,").is_err());
    }

    #[test]
    fn units_and_output() {
        assert_eq!(scaled(2048, "B"), 2048);
        assert_eq!(scaled(2048, "K"), 2);
        assert_eq!(scaled(2048, "b"), 16384);
        assert_eq!(scaled(2048, "k"), 16);
        assert_eq!(scaled(3 << 20, "M"), 3);
        assert_eq!(scaled(1 << 20, "m"), 8);
        let l = parse_subnets("10.0.0.0/8,0.0.0.0/0,fd00::/8").unwrap().0;
        let t = table(&l, &[10, 0, 300], "B", "12/03/26 10:00:00");
        assert_eq!(
            t,
            "[12/03/26 10:00:00]\nfd00::/8                 300\n10.0.0.0/8                10\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&bcc_json(&l, &[10, 0, 300], "B", "12/03/26", "10:00:00"))
                .unwrap();
        assert_eq!(j["10.0.0.0/8"], 10);
        assert_eq!(j["fd00::/8"], 300);
        assert!(j.get("0.0.0.0/0").is_none());
        assert_eq!(j["time"], "10:00:00");
    }
}
