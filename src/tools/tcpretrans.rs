//! tcpretrans: TCP retransmits with the socket's owner; a listener's SYN-ACK retransmits; with -l, tail
//! loss probes; with -c, counts per flow kept in the kernel and printed at exit.
//! Hooks: tcp:tcp_retransmit_skb and tcp:tcp_retransmit_synack (tp_btf, else raw_tp), the socket-owner
//! component's (sock:inet_sock_set_state and its refresh), and for -l fentry/kprobe tcp_send_loss_probe.

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::MapCore as _;
use libbpf_rs::skel::Skel as _;

use crate::attach;
use crate::cli::{self, Common, FamilyArgs, PortArgs, ScopeArgs, SocketTable, load_tool};
use crate::filter::{Filters, parse_id};
use crate::format::{AF_INET, ip_addr, ip_version, owner_fields, tcp_state};
use crate::output::{Col, Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpretrans.skel.rs"));
}
use skel::{TcpretransSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpretrans           # trace TCP retransmits
    tcpretrans -l        # include TLP attempts
    tcpretrans -4        # trace IPv4 family only
    tcpretrans -6        # trace IPv6 family only
    tcpretrans -s        # show the sequence number of each retransmit
    tcpretrans -c        # count retransmits per flow, print the table at exit
    tcpretrans -p 181    # only sockets owned by PID 181
    tcpretrans -L 443    # only local port 443
    tcpretrans --kind    # show what made the kernel retransmit (timeout, fast, probe)
    tcpretrans --json    # one JSON object per retransmit

PID is the process that owns the socket (BCC printed whichever task was on the CPU when the timer
fired, usually another process); 0 when the owner is not known. T: R retransmit, L tail loss probe
(-l), S a listener's SYN-ACK sent again (sockray; its STATE is the request's, NEW_SYN_RECV).
-l needs fentry or a kprobe on tcp_send_loss_probe (there is no tracepoint for loss probes).";

/// Trace TCP retransmits
#[derive(Parser, Debug)]
#[command(name = "tcpretrans", after_help = EXAMPLES)]
struct Args {
    /// display TCP sequence numbers
    #[arg(short = 's', long = "sequence")]
    sequence: bool,
    /// include tail loss probe attempts
    #[arg(short = 'l', long = "lossprobe")]
    lossprobe: bool,
    /// count occurred retransmits per flow
    #[arg(short = 'c', long = "count")]
    count: bool,
    /// trace this PID only (the socket's owner)
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    #[command(flatten)]
    ports: PortArgs,
    #[command(flatten)]
    family: FamilyArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    /// include time column (HH:MM:SS); always shown, as in BCC's tcpretrans
    #[arg(short = 'T', long = "time")]
    time: bool,
    /// include timestamp column (seconds since the first event)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// add a KIND column: timeout (retransmit timer), fast (fast retransmit), probe (loss probe), other
    #[arg(long)]
    kind: bool,
    #[command(flatten)]
    sockets: SocketTable,
    #[command(flatten)]
    common: Common,
}

fn columns(sequence: bool, kind: bool) -> Vec<Col> {
    let mut cols = vec![
        Col::left("PID", "pid", 7),
        Col::left("IP", "ip", 2),
        Col::left("LADDR:LPORT", "laddr_lport", 20),
        Col::left("T>", "t", 2),
        Col::left("RADDR:RPORT", "raddr_rport", 20),
    ];
    if sequence {
        cols.push(Col::left("STATE", "state", 12));
        cols.push(Col::left("SEQ", "seq", 10));
    } else {
        cols.push(Col::left("STATE", "state", 4));
    }
    if kind {
        cols.push(Col::left("KIND", "kind", 0));
    }
    cols
}

/// BCC's letter in the T column.
fn type_letter(t: u8) -> &'static str {
    match t {
        1 => "R",
        2 => "L",
        3 => "S",
        _ => "?",
    }
}

/// What made the kernel send it again, where the kernel lets us tell: a loss probe; the sender's
/// congestion state (icsk_ca_state) at the retransmit: Loss after the retransmit timer fired (a
/// SYN-ACK's resend is always its timer), Recovery in fast retransmit.
fn retrans_kind(t: u8, ca_state: u8) -> &'static str {
    match (t, ca_state) {
        (2, _) => "probe",
        (3, _) => "timeout",
        (_, 4) => "timeout",
        (_, 3) => "fast",
        _ => "other",
    }
}

fn event_fields(e: &types::tcpretrans_event, table: bool) -> Fields {
    let (laddr, raddr) = (ip_addr(e.family, &e.laddr), ip_addr(e.family, &e.raddr));
    let mut f = owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm);
    f.extend([
        ("ip", Value::U(ip_version(e.family) as u64)),
        ("laddr", Value::Ip(laddr)),
        ("lport", Value::U(e.lport as u64)),
        ("raddr", Value::Ip(raddr)),
        ("rport", Value::U(e.rport as u64)),
        ("type", Value::S(type_letter(e.rtype).into())),
        ("state", Value::S(tcp_state(e.state as i32).into())),
        ("seq", Value::U(e.seq as u64)),
        ("kind", Value::S(retrans_kind(e.rtype, e.ca_state).into())),
        ("skaddr", Value::Hex(e.skaddr)),
    ]);
    if table {
        // BCC's joined columns ("127.0.0.1:5000", "R>"), in the table only
        f.extend([
            ("laddr_lport", Value::S(format!("{laddr}:{}", e.lport))),
            ("t", Value::S(format!("{}>", type_letter(e.rtype)))),
            ("raddr_rport", Value::S(format!("{raddr}:{}", e.rport))),
        ]);
    }
    f
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    runtime::set_max_sockets(a.sockets.max_sockets);
    if a.common.ebpf {
        return cli::print_ebpf("tcpretrans");
    }
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        lports: a.ports.localport.clone(),
        rports: a.ports.remoteport.clone(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mode = a.common.mode(false);
    runtime::preflight("tcpretrans")?;
    // newer kernels (6.18): the tracepoint also fires for attempts that sent nothing (its `err` argument)
    let skb_has_err =
        attach::tracepoint_has_field("tcp/tcp_retransmit_skb", "err").unwrap_or(false);

    if a.lossprobe {
        // fentry is otherwise assumed to work where the kernel has BTF, and a refused load retried:
        // for -l the kernel is asked first, so that its answer names the missing hook
        attach::set_strict(true);
    }
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpretransSkelBuilder,
        &mut storage,
        "tcpretrans",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.count_mode = a.count as u8;
            ro.skb_has_err = skb_has_err as u8;
        },
        |prog: &str| !a.lossprobe && prog.starts_with("tcpretrans_tlp__")
    );
    cli::debug(format_args!(
        "tcpretrans: {}",
        if skb_has_err {
            "tcp_retransmit_skb has an err argument: attempts that sent nothing are left out"
        } else {
            "tcp_retransmit_skb has no err argument: it fires for sent retransmits only"
        }
    ));
    if a.count {
        return count_run(&skel, mode, a.common.verbose);
    }

    let _always_there = a.time;
    let mut printer = Printer::new(
        mode,
        columns(a.sequence, a.kind),
        TimeCols {
            // BCC's TIME column is always there; -T is accepted as in the other tools
            hms: true,
            secs: a.timestamp,
        },
    );
    runtime::print_events(
        skel.object(),
        "tcpretrans",
        a.common.verbose,
        &mut printer,
        None,
        |e: &types::tcpretrans_event| Some((e.ts_ns, event_fields(e, mode == Mode::Table))),
    )
}

// ---------------------------------------------------------------------------------------------------
// -c: the count table

#[derive(Clone, Debug, PartialEq)]
struct CountRow {
    family: u16,
    laddr: IpAddr,
    lport: u16,
    raddr: IpAddr,
    rport: u16,
    retransmits: u64,
}

/// BCC's order: the IPv4 flows, then the IPv6 ones, each by count, smallest first (BCC sorts by value,
/// ascending); ties by addresses and ports, so the order is stable.
fn sort_counts(rows: &mut [CountRow]) {
    rows.sort_by(|x, y| {
        (x.family != AF_INET)
            .cmp(&(y.family != AF_INET))
            .then(x.retransmits.cmp(&y.retransmits))
            .then((x.laddr, x.lport, x.raddr, x.rport).cmp(&(y.laddr, y.lport, y.raddr, y.rport)))
    });
}

/// The table BCC's tcpretrans -c prints at exit: a blank line, `%-25s %-25s %-10s` titles, then
/// `%-20s <-> %-20s %10d` rows with the ends as `[addr]#port`.
fn count_table(rows: &[CountRow]) -> String {
    let mut out = format!(
        "\n{:<25} {:<25} {:<10}\n",
        "LADDR:LPORT", "RADDR:RPORT", "RETRANSMITS"
    );
    for r in rows {
        let l = format!("[{}]#{}", r.laddr, r.lport);
        let rr = format!("[{}]#{}", r.raddr, r.rport);
        out.push_str(&format!("{l:<20} <-> {rr:<20} {:>10}\n", r.retransmits));
    }
    out
}

fn count_run(skel: &skel::TcpretransSkel, mode: Mode, verbose: bool) -> Result<()> {
    let obj = skel.object();
    runtime::wait_for_stop(obj, "Tracing retransmits ... Hit Ctrl-C to end", verbose)?;
    let map = &skel.maps.retrans_counts;
    let counts = runtime::map_counts::<types::tcpretrans_count_key>(map)?;
    let mut rows: Vec<CountRow> = counts
        .iter()
        .map(|(k, n)| CountRow {
            family: k.family,
            laddr: ip_addr(k.family, &k.laddr),
            lport: k.lport,
            raddr: ip_addr(k.family, &k.raddr),
            rport: k.rport,
            retransmits: *n,
        })
        .collect();
    sort_counts(&mut rows);
    let lost = runtime::lost_events(obj);
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    if mode == Mode::Json {
        for r in &rows {
            printer.json_record(&vec![
                ("ip", Value::U(ip_version(r.family) as u64)),
                ("laddr", Value::Ip(r.laddr)),
                ("lport", Value::U(r.lport as u64)),
                ("raddr", Value::Ip(r.raddr)),
                ("rport", Value::U(r.rport as u64)),
                ("retransmits", Value::U(r.retransmits)),
            ])?;
        }
    } else {
        crate::output::print_block(&count_table(&rows))?;
    }
    if lost.capacity > 0 {
        // counted per flow, with no record sent: what was lost are retransmits of flows the table had
        // no room for (or socket records, for owners)
        cli::say(format_args!(
            "sockray: tcpretrans: the flow table holds {} flows: retransmits of flows it had no room for \
             are counted in lost_capacity",
            map.max_entries(),
        ));
    }
    runtime::report_lost(&mut printer, "tcpretrans", lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(l: &str, lp: u16, r: &str, rp: u16, n: u64) -> CountRow {
        let laddr: IpAddr = l.parse().unwrap();
        CountRow {
            family: if laddr.is_ipv4() { 2 } else { 10 },
            laddr,
            lport: lp,
            raddr: r.parse().unwrap(),
            rport: rp,
            retransmits: n,
        }
    }

    #[test]
    fn count_table_like_bcc() {
        let mut rows = vec![
            row("::1", 5000, "::1", 41000, 1),
            row("127.0.0.1", 60724, "127.0.0.1", 33142, 3),
            row("127.0.0.1", 60748, "127.0.0.1", 33142, 2),
            row("10.0.0.1", 60734, "10.0.0.2", 33142, 2),
        ];
        sort_counts(&mut rows);
        let t = count_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(
            lines[1],
            "LADDR:LPORT               RADDR:RPORT               RETRANSMITS"
        );
        // BCC's own sample line, byte for byte (tcpretrans-bpfcc -c)
        assert_eq!(
            lines[4],
            "[127.0.0.1]#60724    <-> [127.0.0.1]#33142             3"
        );
        assert_eq!(
            lines[2],
            "[10.0.0.1]#60734     <-> [10.0.0.2]#33142              2"
        );
        assert!(lines[3].starts_with("[127.0.0.1]#60748 "));
        // IPv6 after IPv4, whatever the counts
        assert!(lines[5].starts_with("[::1]#5000 "), "{t}");
        assert_eq!(lines.len(), 6);
        assert_eq!(count_table(&[]).lines().count(), 2);
    }

    #[test]
    fn header_like_bcc() {
        let titles = |s, k| {
            columns(s, k)
                .iter()
                .map(|c| c.title)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            titles(false, false),
            "PID IP LADDR:LPORT T> RADDR:RPORT STATE"
        );
        assert_eq!(
            titles(true, false),
            "PID IP LADDR:LPORT T> RADDR:RPORT STATE SEQ"
        );
        assert!(titles(false, true).ends_with("STATE KIND"));
    }

    #[test]
    fn letters_and_kinds() {
        assert_eq!(type_letter(1), "R");
        assert_eq!(type_letter(2), "L");
        assert_eq!(type_letter(3), "S");
        assert_eq!(retrans_kind(1, 4), "timeout");
        assert_eq!(retrans_kind(1, 3), "fast");
        assert_eq!(retrans_kind(1, 0), "other");
        assert_eq!(retrans_kind(2, 0), "probe");
        assert_eq!(retrans_kind(3, 0xff), "timeout");
    }
}
