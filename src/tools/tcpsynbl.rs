//! tcpsynbl: a log2 histogram of a listener's accept-queue length at each new connection, one per
//! listener and backlog_max, with the handshakes the kernel drops for a full queue counted at the length
//! it found; printed at exit, or every interval (libbpf-tools' form, which includes BCC's).
//! Hooks (bpf/tcpsynbl.bpf.c says what each measures): sock:inet_sock_set_state (the child cloned from
//! its listener); skb:kfree_skb TCP_LISTEN_OVERFLOW, else fentry/kprobe tcp_v4/v6_syn_recv_sock;
//! skb:consume_skb from tcp_rcv_state_process, else fentry/kprobe tcp_conn_request.

use std::ffi::OsString;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::MapFlags;
use libbpf_rs::skel::Skel as _;

use crate::attach;
use crate::cli::{self, Common, FamilyArgs, load_tool};
use crate::filter::{Filters, PortList, parse_id, parse_ports};
use crate::format::{comm, hms, ip_addr, ip_version, owner_fields, wall_now_ns};
use crate::hist;
use crate::ksym;
use crate::output::{Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpsynbl.skel.rs"));
}
use skel::{TcpsynblSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpsynbl              # summarize TCP SYN backlog as a histogram
    tcpsynbl 1 10         # print 1 second summaries, 10 times
    tcpsynbl -T 1         # 1s summaries with timestamps
    tcpsynbl -4           # trace IPv4 family only
    tcpsynbl -6           # trace IPv6 family only
    tcpsynbl -L 80        # only listeners on port 80
    tcpsynbl -p 181       # only listeners of PID 181
    tcpsynbl --json 5     # one JSON object per histogram, every 5 seconds

One histogram per listener and backlog_max (BCC and libbpf-tools merge listeners with the same
backlog_max): the backlog is the listener's accept-queue length as a connection joins it. Handshakes
the kernel drops because the queue is full (more than backlog_max waiting: a SYN, or the last ACK)
are counted too, at the length found (backlog_max + 1 or more): the 'overflows' of each histogram,
the kernel's ListenOverflows. PID/COMM: the process that called listen().";

/// Summarize TCP SYN backlog as a histogram
#[derive(Parser, Debug)]
#[command(name = "tcpsynbl", after_help = EXAMPLES)]
struct Args {
    /// include a timestamp (HH:MM:SS) before each interval's histograms
    #[arg(short = 'T', long = "timestamp")]
    timestamp: bool,
    #[command(flatten)]
    family: FamilyArgs,
    /// only listeners owned by this PID (the process that called listen())
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// comma-separated list of local (listening) ports (ranges: 8000-8010)
    #[arg(short = 'L', long = "localport", value_parser = parse_ports)]
    localport: Option<PortList>,
    /// output interval, in seconds (default: print once, at Ctrl-C)
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    interval: Option<u64>,
    /// number of outputs (with an interval)
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    common: Common,
}

/// SKB_DROP_REASON_TCP_LISTEN_OVERFLOW's number in this kernel, from skb:kfree_skb's print format in
/// tracefs (`{ 40, "TCP_LISTEN_OVERFLOW" }` on 6.18): Linux 6.15+ drops the handshake's last ACK with it
/// when the accept queue is full. None: no such reason here.
fn listen_overflow_reason() -> Option<u32> {
    let Some(root) = attach::tracefs_root() else {
        // tracefs not readable by this user (CAP_BPF+CAP_PERFMON only): vmlinux BTF's
        // `enum skb_drop_reason`, which the tracepoint's symbols are made from
        use libbpf_rs::btf::{Btf, types::Enum};
        let btf = Btf::from_vmlinux().ok()?;
        let e = btf.type_by_name::<Enum>("skb_drop_reason")?;
        return e
            .iter()
            .find(|m| {
                m.name
                    .is_some_and(|n| n.as_encoded_bytes() == b"SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
            })
            .map(|m| m.value as u32);
    };
    let text = std::fs::read_to_string(format!("{root}/events/skb/kfree_skb/format")).ok()?;
    reason_number(&text, "TCP_LISTEN_OVERFLOW")
}

/// The number `__print_symbolic` gives `name` in a tracepoint format's print fmt.
fn reason_number(format: &str, name: &str) -> Option<u32> {
    let quoted = format!("\"{name}\" }}");
    let end = format.find(&quoted)?;
    let head = &format[..end];
    let open = head.rfind('{')?;
    head[open + 1..]
        .trim()
        .trim_end_matches(',')
        .trim()
        .parse()
        .ok()
}

/// One histogram as read from the kernel: its key and its slots plus overflow count (cumulative).
#[derive(Clone)]
struct Hist {
    key: types::tcpsynbl_key,
    slots: Vec<u64>,
    overflows: u64,
    owner: types::sock_owner,
}

/// Every histogram in the map, cumulative since the start, in a stable order (netns, family, port,
/// address, backlog_max).
fn read_hists(map: &impl libbpf_rs::MapCore) -> Result<Vec<Hist>> {
    let mut out = Vec::new();
    for key in map.keys() {
        let (Some(k), Some(v)) = (
            runtime::read_event::<types::tcpsynbl_key>(&key),
            map.lookup(&key, MapFlags::ANY)?,
        ) else {
            continue;
        };
        let Some(h) = runtime::read_event::<types::tcpsynbl_hist>(&v) else {
            continue;
        };
        out.push(Hist {
            key: k,
            slots: h.slots.to_vec(),
            overflows: h.overflows,
            owner: h.owner,
        });
    }
    out.sort_by_key(|h| {
        (
            h.key.netns,
            h.key.family,
            h.key.lport,
            h.key.laddr,
            h.key.backlog_max,
        )
    });
    Ok(out)
}

/// What came since the last print: each histogram less what was printed before (hist::Deltas, its
/// slots and overflows); histograms with nothing new are left out.
#[derive(Default)]
struct Deltas {
    printed: hist::Deltas,
}

impl Deltas {
    fn take(&mut self, now: Vec<Hist>) -> Vec<Hist> {
        let mut out = Vec::new();
        for mut h in now {
            let mut counters = h.slots.clone();
            counters.push(h.overflows);
            self.printed.take(hist::pod_bytes(&h.key), &mut counters);
            h.overflows = counters.pop().unwrap_or(0);
            h.slots = counters;
            if h.slots.iter().any(|&v| v > 0) {
                out.push(h);
            }
        }
        out
    }
}

/// The line above each histogram: libbpf-tools' `backlog_max = N`, then what sockray adds.
fn title(h: &Hist) -> String {
    let k = &h.key;
    let addr = ip_addr(k.family, &k.laddr);
    let ep = if addr.is_ipv6() {
        format!("[{addr}]:{}", k.lport)
    } else {
        format!("{addr}:{}", k.lport)
    };
    let who = if h.owner.pid == 0 {
        "?".to_string()
    } else {
        format!("{} {}", h.owner.pid, comm(&h.owner.comm))
    };
    format!(
        "backlog_max = {}  listener {ep}  pid {who}  overflows {}",
        k.backlog_max, h.overflows
    )
}

fn json_fields(h: &Hist, tick: u64) -> crate::output::Fields {
    let k = &h.key;
    let mut f: crate::output::Fields = vec![("time_ns", Value::U(wall_now_ns()))];
    f.push(("tick", Value::U(tick)));
    f.extend(owner_fields(h.owner.pid, h.owner.uid, &h.owner.comm));
    f.extend([
        ("netns", Value::U(k.netns as u64)),
        ("ip", Value::U(ip_version(k.family) as u64)),
        ("laddr", Value::Ip(ip_addr(k.family, &k.laddr))),
        ("lport", Value::U(k.lport as u64)),
        ("backlog_max", Value::U(k.backlog_max as u64)),
        ("count", Value::U(h.slots.iter().sum())),
        ("overflows", Value::U(h.overflows)),
        ("buckets", Value::Json(hist::log2_json(&h.slots))),
    ]);
    f
}

/// Prints one interval (or the whole run): table mode as libbpf-tools does (a blank line, `-T`'s
/// time, then each histogram under its title); JSON, one object per histogram.
fn print_tick(
    printer: &mut Printer,
    mode: Mode,
    timestamp: bool,
    hists: &[Hist],
    tick: u64,
) -> Result<()> {
    if mode == Mode::Json {
        for h in hists {
            printer.json_record(&json_fields(h, tick))?;
        }
        printer.flush()?;
        return Ok(());
    }
    let mut text = String::from("\n");
    if timestamp {
        text.push_str(&format!("{:<8}\n", hms(wall_now_ns())));
    }
    for h in hists {
        text.push_str(&title(h));
        text.push('\n');
        text.push_str(&hist::log2_text(&h.slots, "backlog"));
    }
    crate::output::print_block(&text)?;
    Ok(())
}

/// What each hook group measures, for --verbose; and a warning (always) for a kind of overflow this
/// kernel gives no hook for.
fn describe_hooks(obj: &libbpf_rs::Object, reason: Option<u32>, range: Option<(u64, u64)>) {
    let loaded: Vec<String> = obj
        .progs()
        .filter(|p| p.autoload())
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    let has = |group: &str| loaded.iter().find(|n| n.starts_with(group)).cloned();
    if let Some(p) = has("tcpsynbl_state") {
        cli::debug(format_args!(
            "tcpsynbl: new connections ({p}): sock:inet_sock_set_state LISTEN -> SYN_RECV, the child \
             socket just cloned from its listener, whose sk_ack_backlog it still carries"
        ));
    }
    match has("opt_synbl_ack") {
        Some(p) if p.ends_with("__btf") || p.ends_with("__raw") => cli::debug(format_args!(
            "tcpsynbl: last ACKs dropped for a full accept queue ({p}): skb:kfree_skb with reason \
             TCP_LISTEN_OVERFLOW ({}), the listener its rx_sk",
            reason.unwrap_or(0)
        )),
        Some(p) => cli::debug(format_args!(
            "tcpsynbl: last ACKs dropped for a full accept queue ({p}): tcp_v4/v6_syn_recv_sock (BCC's \
             hook) with the listener's queue full"
        )),
        None => cli::say(format_args!(
            "sockray: tcpsynbl: this kernel has no hook for handshakes dropped at their last ACK for a \
             full accept queue (skb:kfree_skb's TCP_LISTEN_OVERFLOW: Linux 6.15+; or fentry/kprobes on \
             tcp_v4_syn_recv_sock): those overflows are not counted"
        )),
    }
    match has("opt_synbl_syn") {
        Some(p) if p.ends_with("__btf") || p.ends_with("__raw") => match range {
            Some((lo, hi)) => cli::debug(format_args!(
                "tcpsynbl: SYNs dropped for a full accept queue ({p}): skb:consume_skb called from \
                 tcp_rcv_state_process ({lo:x}-{hi:x}), a SYN whose listener's queue is full"
            )),
            None => cli::say(format_args!(
                "sockray: tcpsynbl: tcp_rcv_state_process's address was not found (in the kernel, nor \
                 in /proc/kallsyms: hidden without CAP_SYSLOG?): SYNs dropped for a full accept queue \
                 are not counted"
            )),
        },
        Some(p) => cli::debug(format_args!(
            "tcpsynbl: SYNs dropped for a full accept queue ({p}): tcp_conn_request with the listener's \
             queue full"
        )),
        None => cli::say(format_args!(
            "sockray: tcpsynbl: this kernel has no hook for SYNs dropped for a full accept queue \
             (skb:consume_skb with its call site: Linux 6.3+; or fentry/kprobes on tcp_conn_request): \
             those overflows are not counted"
        )),
    }
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.common.ebpf {
        cli::print_ebpf("tcpsynbl")?;
        // the objects that find tcp_rcv_state_process's text (see ksym)
        for obj in ["ksymrange", "ksymwalk"] {
            if let Some(src) = cli::ebpf_source(obj) {
                std::io::stdout().lock().write_all(src.as_bytes())?;
            }
        }
        return Ok(());
    }
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        lports: a.localport.clone(),
        ..Default::default()
    };
    let mode = a.common.mode(false);
    runtime::preflight("tcpsynbl")?;
    let reason = listen_overflow_reason();
    let consume_site = attach::tracepoint_has_field("skb/consume_skb", "location").unwrap_or(false);
    // the function's text (the kernel's own lookup, ~1 ms; else a walk of its symbols, else
    // /proc/kallsyms: see ksym) on another thread while the object loads
    cli::set_verbose(a.common.verbose);
    runtime::libbpf_logging(a.common.verbose);
    let range_thread =
        consume_site.then(|| std::thread::spawn(|| ksym::function_range("tcp_rcv_state_process")));

    let mut storage = MaybeUninit::uninit();
    let (mut skel, _links) = load_tool!(
        TcpsynblSkelBuilder,
        &mut storage,
        "tcpsynbl",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.reason_listen_overflow = reason.unwrap_or(0);
        },
        |prog: &str| {
            // the socket-owner refresh hooks name the owners of connections; only listeners' are needed
            prog.starts_with("sockowner_")
                || (reason.is_none() && matches!(prog, "opt_synbl_ack__btf" | "opt_synbl_ack__raw"))
                || (!consume_site && matches!(prog, "opt_synbl_syn__btf" | "opt_synbl_syn__raw"))
        }
    );
    let range = range_thread.and_then(|t| t.join().ok().flatten());
    if let (Some((lo, hi)), Some(bss)) = (range, skel.maps.bss_data.as_deref_mut()) {
        bss.rcv_state_lo = lo;
        bss.rcv_state_hi = hi;
    }
    describe_hooks(skel.object(), reason, range);

    let obj = skel.object();
    let map = &skel.maps.synbl_hists;
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    runtime::say_ready(a.common.verbose);
    if mode != Mode::Json {
        let mut out = std::io::stdout().lock();
        writeln!(out, "Tracing SYN backlog size. Ctrl-C to end.")?;
        out.flush()?;
    }
    let mut deltas = Deltas::default();
    let tick = a.interval.map(Duration::from_secs);
    runtime::interval_loop(
        obj,
        |_| Ok(()),
        tick,
        a.count,
        None,
        |n, last| {
            let now = deltas.take(read_hists(map)?);
            // at Ctrl-C: what came since the last interval (everything, without one)
            if !last || tick.is_none() || !now.is_empty() {
                print_tick(&mut printer, mode, a.timestamp, &now, n)?;
            }
            Ok(())
        },
    )?;
    runtime::report_lost(&mut printer, "tcpsynbl", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_from_the_format() {
        let f = "print fmt: \"reason: %s\", __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, { 39, \"TCP_RFC7323_TSECR\" }, { 40, \"TCP_LISTEN_OVERFLOW\" }, { 41, \"TCP_OLD_SEQUENCE\" })";
        assert_eq!(reason_number(f, "TCP_LISTEN_OVERFLOW"), Some(40));
        assert_eq!(reason_number(f, "NOT_SPECIFIED"), Some(2));
        assert_eq!(reason_number(f, "TCP_LISTEN"), None);
        assert_eq!(reason_number("no reasons", "TCP_LISTEN_OVERFLOW"), None);
    }

    fn hist(port: u16, slots: &[(usize, u64)], overflows: u64) -> Hist {
        let mut key = types::tcpsynbl_key {
            family: 2,
            lport: port,
            backlog_max: 4,
            ..Default::default()
        };
        key.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut s = vec![0u64; 32];
        for &(i, v) in slots {
            s[i] = v;
        }
        Hist {
            key,
            slots: s,
            overflows,
            owner: types::sock_owner::default(),
        }
    }

    #[test]
    fn intervals_print_what_came_since() {
        let mut d = Deltas::default();
        let first = d.take(vec![hist(80, &[(0, 2)], 0), hist(81, &[], 0)]);
        assert_eq!(first.len(), 1, "an empty histogram is not printed");
        assert_eq!(first[0].slots[0], 2);
        let second = d.take(vec![hist(80, &[(0, 2), (2, 3)], 1)]);
        assert_eq!(second[0].slots[0], 0);
        assert_eq!(second[0].slots[2], 3);
        assert_eq!(second[0].overflows, 1);
        // nothing new: nothing printed
        assert!(d.take(vec![hist(80, &[(0, 2), (2, 3)], 1)]).is_empty());
    }

    #[test]
    fn titles_start_like_libbpf_tools() {
        let mut h = hist(8080, &[(0, 1)], 3);
        h.owner.pid = 42;
        for (i, b) in b"nginx".iter().enumerate() {
            h.owner.comm[i] = *b as _;
        }
        assert_eq!(
            title(&h),
            "backlog_max = 4  listener 127.0.0.1:8080  pid 42 nginx  overflows 3"
        );
        h.owner.pid = 0;
        assert!(title(&h).contains("pid ?"));
    }
}
