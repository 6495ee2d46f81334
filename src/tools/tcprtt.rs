//! tcprtt: log2 histograms of the smoothed TCP round-trip time at every segment an established socket
//! receives (BCC's and libbpf-tools' tcprtt), kept in the kernel and printed every interval (`-i`), at
//! the end of `-d` or at Ctrl-C; per local or remote address (`-b`, `-B`), and what BCC lacks: per
//! remote port (`--by-rport`) and per process owning the socket (`--by-process`).
//! Hooks: tcp:tcp_probe (tp_btf, else raw_tp), fired at tcp_rcv_established()'s entry, where BCC's
//! kprobe sits; with --by-process also the socket-owner component's (sock:inet_sock_set_state and its
//! refresh).

use std::ffi::OsString;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, FamilyArgs, SocketTable, load_tool};
use crate::filter::{Filters, PortList, parse_ports};
use crate::format::{comm, hms, ip_addr, ip_version, owner_fields, wall_now_ns};
use crate::hist;
use crate::output::{Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcprtt.skel.rs"));
}
use skel::{TcprttSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcprtt                # summarize TCP RTT
    tcprtt -i 1 -d 10     # print 1 second summaries, 10 times
    tcprtt -m -T          # summarize in millisecond, and timestamps
    tcprtt -p 443         # filter for local port
    tcprtt -P 443         # filter for remote port
    tcprtt -a 10.0.0.1    # filter for local address
    tcprtt -A 10.0.0.2    # filter for remote address
    tcprtt -b             # show sockets histogram by local address
    tcprtt -B             # show sockets histogram by remote address
    tcprtt -e             # show extension summary(average)
    tcprtt -4             # trace only IPv4 family
    tcprtt -6             # trace only IPv6 family
    tcprtt --by-process   # one histogram per process owning the socket
    tcprtt --by-rport     # one histogram per remote port
    tcprtt -D             # show the BPF program (also --ebpf)
    tcprtt --json -i 5    # one JSON object per histogram, every 5 seconds

The RTT is the socket's smoothed round-trip time (srtt, as TCP_INFO's tcpi_rtt) when a segment
arrives on an established connection, as BCC reads it. -b, -B, --by-rport and --by-process combine:
one histogram per combination seen. --by-process: the process that owns the socket (pid ? when not
known), never the task that happened to be on the CPU when the segment arrived. -p/-P also take
lists and ranges (80,443,8000-8010); -a/-A an IPv4 address also matches IPv4-mapped IPv6 sockets.";

/// Summarize TCP RTT as a histogram
#[derive(Parser, Debug)]
#[command(
    name = "tcprtt",
    after_help = EXAMPLES,
    // BCC's -D: show debug bpf text
    mut_arg("ebpf", |a| a.short('D')),
)]
struct Args {
    /// summary interval, seconds
    #[arg(short = 'i', long = "interval", value_parser = clap::value_parser!(u64).range(1..))]
    interval: Option<u64>,
    /// total duration of trace, seconds
    #[arg(short = 'd', long = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// include timestamp on output
    #[arg(short = 'T', long = "timestamp")]
    timestamp: bool,
    /// millisecond histogram
    #[arg(short = 'm', long = "milliseconds", visible_alias = "millisecond")]
    milliseconds: bool,
    /// filter for local port (also a list or range: 80,8000-8010)
    #[arg(short = 'p', long = "lport", value_parser = parse_ports)]
    lport: Option<PortList>,
    /// filter for remote port (also a list or range)
    #[arg(short = 'P', long = "rport", value_parser = parse_ports)]
    rport: Option<PortList>,
    /// filter for local address
    #[arg(short = 'a', long = "laddr", value_parser = parse_addr)]
    laddr: Option<IpAddr>,
    /// filter for remote address
    #[arg(short = 'A', long = "raddr", value_parser = parse_addr)]
    raddr: Option<IpAddr>,
    /// show sockets histogram by local address
    #[arg(short = 'b', long = "byladdr")]
    byladdr: bool,
    /// show sockets histogram by remote address
    #[arg(short = 'B', long = "byraddr")]
    byraddr: bool,
    /// show extension summary(average)
    #[arg(short = 'e', long = "extension")]
    extension: bool,
    /// one histogram per process owning the socket (sockray)
    #[arg(long = "by-process")]
    by_process: bool,
    /// one histogram per remote port (sockray)
    #[arg(long = "by-rport")]
    by_rport: bool,
    #[command(flatten)]
    family: FamilyArgs,
    #[command(flatten)]
    sockets: SocketTable,
    #[command(flatten)]
    common: Common,
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid address '{s}': not an IPv4 or IPv6 address"))
}

/// The filter form of an address (bpf/tcprtt.bpf.c filter_laddr): IPv6, IPv4 as IPv4-mapped, as two
/// little-endian words.
fn addr_words(a: IpAddr) -> [u64; 2] {
    let v6: Ipv6Addr = match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    [
        u64::from_le_bytes(o[..8].try_into().unwrap_or_default()),
        u64::from_le_bytes(o[8..].try_into().unwrap_or_default()),
    ]
}

/// What the histograms are kept per (bpf/tcprtt.h TCPRTT_BY_*).
#[derive(Clone, Copy, Debug, Default)]
struct By {
    laddr: bool,
    raddr: bool,
    rport: bool,
    process: bool,
}

impl By {
    fn bits(self) -> u8 {
        (self.laddr as u8)
            | (self.raddr as u8) << 1
            | (self.rport as u8) << 2
            | (self.process as u8) << 3
    }
}

/// One histogram: its key, and its counters summed over the CPUs (cumulative, or an interval's).
#[derive(Clone)]
struct Hist {
    key: types::tcprtt_key,
    slots: Vec<u64>,
    sum: u64,
    count: u64,
    owner: types::sock_owner,
}

/// Every histogram in the map, summed over the CPUs, in a stable order (process, addresses, port).
fn read_hists(map: &impl libbpf_rs::MapCore) -> Result<Vec<Hist>> {
    let mut out = Vec::new();
    for (key, per_cpu) in runtime::map_percpu_entries::<types::tcprtt_key, types::tcprtt_hist>(map)?
    {
        let mut h = Hist {
            key,
            slots: vec![0; per_cpu.first().map_or(0, |v| v.slots.len())],
            sum: 0,
            count: 0,
            owner: types::sock_owner::default(),
        };
        for v in &per_cpu {
            for (s, n) in h.slots.iter_mut().zip(v.slots) {
                *s += n;
            }
            h.sum += v.sum;
            h.count += v.count;
            if h.owner.pid == 0 && v.owner.pid != 0 {
                h.owner = v.owner;
            }
        }
        out.push(h);
    }
    out.sort_by_key(|h| {
        let k = &h.key;
        (k.pid, k.family, k.laddr, k.raddr, k.rport)
    });
    Ok(out)
}

/// What came since the last print; histograms with nothing new are left out.
fn take_deltas(d: &mut hist::Deltas, now: Vec<Hist>) -> Vec<Hist> {
    let mut out = Vec::new();
    for mut h in now {
        let mut counters = h.slots.clone();
        counters.extend([h.sum, h.count]);
        d.take(hist::pod_bytes(&h.key), &mut counters);
        h.count = counters.pop().unwrap_or(0);
        h.sum = counters.pop().unwrap_or(0);
        h.slots = counters;
        if h.count > 0 {
            out.push(h);
        }
    }
    out
}

fn owner_name(o: &types::sock_owner) -> String {
    if o.pid == 0 {
        "?".to_string()
    } else {
        format!("{} {}", o.pid, comm(&o.comm))
    }
}

/// The line above each histogram: libbpf-tools' (`All Addresses = ******`, `Local Address = A`,
/// `Remote Address = A`, then `[AVG N]` with -e), with sockray's parts for the other keys.
fn title(h: &Hist, by: By, extension: bool) -> String {
    let k = &h.key;
    let mut parts = Vec::new();
    if by.laddr {
        parts.push(format!("Local Address = {}", ip_addr(k.family, &k.laddr)));
    }
    if by.raddr {
        parts.push(format!("Remote Address = {}", ip_addr(k.family, &k.raddr)));
    }
    if by.rport {
        parts.push(format!("Remote Port = {}", k.rport));
    }
    if by.process {
        parts.push(format!("Process = {}", owner_name(&h.owner)));
    }
    if parts.is_empty() {
        parts.push("All Addresses = ******".to_string());
    }
    if extension {
        parts.push(format!("[AVG {}]", h.sum / h.count.max(1)));
    }
    parts.join(" ")
}

fn json_fields(h: &Hist, by: By, unit: &str, tick: u64) -> Fields {
    let k = &h.key;
    let mut f: Fields = vec![
        ("time_ns", Value::U(wall_now_ns())),
        ("tick", Value::U(tick)),
    ];
    if by.process {
        f.extend(owner_fields(h.owner.pid, h.owner.uid, &h.owner.comm));
    }
    if by.laddr || by.raddr {
        f.push(("ip", Value::U(ip_version(k.family) as u64)));
    }
    if by.laddr {
        f.push(("laddr", Value::Ip(ip_addr(k.family, &k.laddr))));
    }
    if by.raddr {
        f.push(("raddr", Value::Ip(ip_addr(k.family, &k.raddr))));
    }
    if by.rport {
        f.push(("rport", Value::U(k.rport as u64)));
    }
    f.extend([
        ("unit", Value::S(unit.to_string())),
        ("count", Value::U(h.count)),
        ("sum", Value::U(h.sum)),
        ("avg", Value::U(h.sum / h.count.max(1))),
        ("buckets", Value::Json(hist::log2_json(&h.slots))),
    ]);
    f
}

/// How one interval (or the whole run) is printed.
struct Form {
    mode: Mode,
    by: By,
    unit: &'static str,
    timestamp: bool,
    extension: bool,
}

/// Table mode as libbpf-tools prints it (a blank line, `-T`'s time, then each histogram under its
/// title); JSON, one object per histogram.
fn print_tick(printer: &mut Printer, form: &Form, hists: &[Hist], tick: u64) -> Result<()> {
    if form.mode == Mode::Json {
        for h in hists {
            printer.json_record(&json_fields(h, form.by, form.unit, tick))?;
        }
        printer.flush()?;
        return Ok(());
    }
    let mut text = String::from("\n");
    if form.timestamp {
        text.push_str(&format!("{:<8}\n", hms(wall_now_ns())));
    }
    for h in hists {
        text.push_str(&title(h, form.by, form.extension));
        text.push('\n');
        text.push_str(&hist::log2_text(&h.slots, form.unit));
    }
    crate::output::print_block(&text)?;
    Ok(())
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    runtime::set_max_sockets(a.sockets.max_sockets);
    if a.common.ebpf {
        return cli::print_ebpf("tcprtt");
    }
    let by = By {
        laddr: a.byladdr,
        raddr: a.byraddr,
        rport: a.by_rport,
        process: a.by_process,
    };
    let filters = Filters {
        family: a.family.family(),
        lports: a.lport.clone(),
        rports: a.rport.clone(),
        ..Default::default()
    };
    let mode = a.common.mode(false);
    runtime::preflight("tcprtt")?;
    if !by.process {
        // owners are opt-in: without --by-process no socket is walked at start, no state change traced
        runtime::without_owners();
    }
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcprttSkelBuilder,
        &mut storage,
        "tcprtt",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.by = by.bits();
            ro.millis = a.milliseconds as u8;
            if let Some(l) = a.laddr {
                ro.filter_laddr_on = 1;
                ro.filter_laddr = addr_words(l);
            }
            if let Some(r) = a.raddr {
                ro.filter_raddr_on = 1;
                ro.filter_raddr = addr_words(r);
            }
        },
        |prog: &str| {
            !by.process && (prog.starts_with("sockowner_") || prog.starts_with("tcprtt_set_state"))
        }
    );
    cli::debug(format_args!(
        "tcprtt: the smoothed RTT of established sockets at each received segment (tcp:tcp_probe, \
         tcp_rcv_established()'s entry){}",
        if by.process {
            "; owners from the socket-owner records"
        } else {
            ""
        }
    ));

    let obj = skel.object();
    let map = &skel.maps.rtt_hists;
    let form = Form {
        mode,
        by,
        unit: if a.milliseconds { "msecs" } else { "usecs" },
        timestamp: a.timestamp,
        extension: a.extension,
    };
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    runtime::say_ready(a.common.verbose);
    if mode != Mode::Json {
        let mut out = std::io::stdout().lock();
        match a.duration {
            Some(d) => writeln!(out, "Tracing TCP RTT for {d} secs.")?,
            None => writeln!(out, "Tracing TCP RTT... Hit Ctrl-C to end.")?,
        }
        out.flush()?;
    }
    let tick = a.interval.map(Duration::from_secs);
    // with an interval, -d is a number of intervals (the last one may be shorter); without, the run's end
    let max_ticks = match (a.interval, a.duration) {
        (Some(i), Some(d)) => Some(d.div_ceil(i)),
        _ => None,
    };
    let duration = a
        .duration
        .filter(|_| a.interval.is_none())
        .map(Duration::from_secs);
    let mut deltas = hist::Deltas::default();
    runtime::interval_loop(
        obj,
        |_| Ok(()),
        tick,
        max_ticks,
        duration,
        |n, last| {
            let now = take_deltas(&mut deltas, read_hists(map)?);
            // at Ctrl-C or -d's end: what came since the last interval (everything, without one)
            if !last || tick.is_none() || !now.is_empty() {
                print_tick(&mut printer, &form, &now, n)?;
            }
            Ok(())
        },
    )?;
    runtime::report_lost(&mut printer, "tcprtt", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(slots: &[(usize, u64)], sum: u64) -> Hist {
        let mut key = types::tcprtt_key {
            family: 2,
            rport: 443,
            ..Default::default()
        };
        key.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.raddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut s = vec![0u64; 32];
        for &(i, v) in slots {
            s[i] = v;
        }
        Hist {
            key,
            count: s.iter().sum(),
            slots: s,
            sum,
            owner: types::sock_owner::default(),
        }
    }

    #[test]
    fn titles_like_libbpf_tools() {
        let h = hist(&[(14, 4)], 4 * 21_000);
        assert_eq!(title(&h, By::default(), false), "All Addresses = ******");
        assert_eq!(
            title(&h, By::default(), true),
            "All Addresses = ****** [AVG 21000]"
        );
        let b = By {
            laddr: true,
            ..Default::default()
        };
        assert_eq!(title(&h, b, true), "Local Address = 10.0.0.1 [AVG 21000]");
        let b = By {
            raddr: true,
            rport: true,
            process: true,
            ..Default::default()
        };
        assert_eq!(
            title(&h, b, false),
            "Remote Address = 10.0.0.2 Remote Port = 443 Process = ?"
        );
    }

    #[test]
    fn intervals_print_what_came_since() {
        let mut d = hist::Deltas::default();
        let first = take_deltas(&mut d, vec![hist(&[(14, 2)], 40_000)]);
        assert_eq!(first[0].count, 2);
        let second = take_deltas(&mut d, vec![hist(&[(14, 2), (15, 1)], 80_000)]);
        assert_eq!(second[0].slots[14], 0);
        assert_eq!(second[0].slots[15], 1);
        assert_eq!((second[0].count, second[0].sum), (1, 40_000));
        assert!(take_deltas(&mut d, vec![hist(&[(14, 2), (15, 1)], 80_000)]).is_empty());
    }

    #[test]
    fn addresses_as_the_kernel_compares_them() {
        // 10.0.0.1 as ::ffff:10.0.0.1: bytes 8..16 are 00 00 ff ff 0a 00 00 01
        let w = addr_words("10.0.0.1".parse().unwrap());
        assert_eq!(w[0], 0);
        assert_eq!(w[1], 0x0100_000a_ffff_0000);
        let w6 = addr_words("::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(w, w6);
        assert_eq!(addr_words("::1".parse().unwrap()), [0, 1 << 56]);
    }
}
