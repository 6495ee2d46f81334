//! tcpconnect: every active TCP open (each connect that sent a SYN, refused ones too), with the process
//! that made it, the addresses, the local port and connect(2)'s result.
//! Hooks: sock:inet_sock_set_state CLOSE -> SYN_SENT (tp_btf, else raw_tp) in the connecting task, then
//! syscalls:sys_exit_connect in the same thread (local port assigned, result known). Without syscall
//! tracepoints the event is sent at SYN_SENT, with LPORT 0. `-c` counts in the kernel; `-d` adds
//! sock:sock_recv_length (Linux 6.3+; else the recvfrom/recvmsg syscall tracepoints) to read DNS answers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use anyhow::{Result, bail};
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::attach::{self, Kind};
use crate::cli::{self, Common, FamilyArgs, ScopeArgs, load_tool};
use crate::filter::{Filters, PortList, parse_id, parse_ports};
use crate::format::{ip_addr, ip_version, owner_fields};
use crate::output::{Col, Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpconnect.skel.rs"));
}
use skel::{TcpconnectSkelBuilder, types};

const KIND_CONNECT: u32 = 1;
const KIND_DNS: u32 = 2;

const EXAMPLES: &str = "examples:
    tcpconnect           # trace all TCP connect()s
    tcpconnect -t        # include timestamps
    tcpconnect -d        # include the DNS query that resolved each destination
    tcpconnect -p 181    # only trace PID 181
    tcpconnect -P 80     # only trace port 80
    tcpconnect -P 80,81  # only trace ports 80 and 81
    tcpconnect -4        # only trace IPv4 family
    tcpconnect -6        # only trace IPv6 family
    tcpconnect -U        # include UID
    tcpconnect -u 1000   # only trace UID 1000
    tcpconnect -c        # count connects per source address and destination address/port
    tcpconnect -L        # include LPORT on output
    tcpconnect --cgroup /sys/fs/cgroup/system.slice/nginx.service  # only this cgroup
    tcpconnect --cgroupmap mappath  # only trace cgroups in this BPF map
    tcpconnect --mntnsmap mappath   # only trace mount namespaces in the map
    tcpconnect --json    # one JSON object per connect, with connect()'s result as ret

Every connect that sent a SYN is shown, refused or unanswered ones too; with --json, ret is what
connect() returned: 0, -115 (EINPROGRESS: non-blocking), -111 (ECONNREFUSED), -110 (ETIMEDOUT)...
A connect is printed when connect() returns: a blocking connect to a host that does not answer shows
up when it gives up (its time stamp is still the moment the SYN was sent). Connects made outside
connect() (TCP Fast Open sendmsg, io_uring, kernel sockets) are printed at once, with LPORT 0 and
ret null.

-d reads DNS answers as processes receive them (UDP from port 53 on a connected socket: glibc's
resolver, also through systemd-resolved's 127.0.0.53 stub) and names each destination with the
last query that returned its address. Not seen: DNS over TCP, DNS over TLS/HTTPS, answers a
process gets without a DNS packet (nscd, systemd-resolved via nss-resolve/varlink, /etc/hosts),
unconnected UDP resolvers (e.g. musl), and answers longer than 512 bytes beyond that point.
On Linux 6.3+ the answers come from sock:sock_recv_length (read, recvfrom, recvmsg); on older
kernels from the recvfrom and recvmsg syscall tracepoints (glibc's resolver uses recvfrom; answers
read with read() are not seen there), which every such syscall on the machine then passes through.

--cgroup takes the cgroup directory itself; --cgroupmap and --mntnsmap (BCC's, -C/-M as libbpf-tools)
a pinned BPF hash map whose keys are the cgroup v2 ids or mount namespace ids to trace, read as it
changes (e.g. bpftool map create /sys/fs/bpf/cg type hash key 8 value 8 entries 128 name cgroupset).";

/// Trace TCP connects
#[derive(Parser, Debug)]
#[command(
    name = "tcpconnect", after_help = EXAMPLES,
    // libbpf-tools' -C/-M
    mut_arg("cgroupmap", |a| a.short('C')),
    mut_arg("mntnsmap", |a| a.short('M')),
)]
struct Args {
    /// include timestamp on output (seconds since the first event)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    /// trace this PID only
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    /// comma-separated list of destination ports to trace (ranges: 8000-8010)
    #[arg(short = 'P', long = "port", value_name = "PORT", value_parser = parse_ports)]
    port: Option<PortList>,
    #[command(flatten)]
    family: FamilyArgs,
    /// include LPORT on output
    #[arg(short = 'L', long = "lport")]
    lport: bool,
    /// include UID on output
    #[arg(short = 'U', long = "print-uid")]
    print_uid: bool,
    /// trace this UID only
    #[arg(short = 'u', long, value_parser = parse_id)]
    uid: Option<u32>,
    /// count connects per source address and destination address/port; print the table at exit
    #[arg(short = 'c', long, conflicts_with = "dns")]
    count: bool,
    /// include the likely DNS query of each destination (QUERY column)
    #[arg(short = 'd', long)]
    dns: bool,
    #[command(flatten)]
    scope: ScopeArgs,
    /// send events at SYN_SENT (LPORT 0, ret null), as without syscall tracepoints (for testing)
    #[arg(long = "at-syn-sent", hide = true)]
    at_syn_sent: bool,
    #[command(flatten)]
    common: Common,
}

fn columns(uid: bool, lport: bool, dns: bool) -> Vec<Col> {
    let mut cols = Vec::new();
    if uid {
        cols.push(Col::left("UID", "uid", 6));
    }
    cols.extend([
        Col::left("PID", "pid", 6),
        Col::cut("COMM", "comm", 12),
        Col::left("IP", "ip", 2),
        Col::left("SADDR", "saddr", 16),
    ]);
    if lport {
        cols.push(Col::left("LPORT", "lport", 6));
    }
    cols.extend([
        Col::left("DADDR", "daddr", 16),
        Col::left("DPORT", "dport", 6),
    ]);
    if dns {
        cols.push(Col::left("QUERY", "query", 0));
    }
    cols
}

fn connect_fields(e: &types::tcpconnect_event) -> Fields {
    let mut f = owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm);
    f.extend([
        ("ip", Value::U(ip_version(e.family) as u64)),
        ("saddr", Value::Ip(ip_addr(e.family, &e.saddr))),
        ("lport", Value::U(e.lport as u64)),
        ("daddr", Value::Ip(ip_addr(e.family, &e.daddr))),
        ("dport", Value::U(e.dport as u64)),
        (
            "ret",
            if e.ret_known != 0 {
                Value::I(e.ret as i64)
            } else {
                Value::Null
            },
        ),
    ]);
    f
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.common.ebpf {
        return cli::print_ebpf("tcpconnect");
    }
    let filters = Filters {
        pid: a.pid,
        uid: a.uid,
        family: a.family.family(),
        rports: a.port.clone(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mode = a.common.mode(false);

    // the hooks that depend on the kernel, probed after the privilege/tracefs checks
    runtime::preflight("tcpconnect")?;
    let syscall_hooks = !a.at_syn_sent
        && ["syscalls/sys_enter_connect", "syscalls/sys_exit_connect"]
            .iter()
            .all(|tp| attach::probe(Kind::Tracepoint, tp).is_ok());
    let dns_path = if a.dns { Some(dns_path()?) } else { None };
    let dns_btf = dns_path == Some(DnsPath::RecvLength);

    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpconnectSkelBuilder,
        &mut storage,
        "tcpconnect",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.emit_at_syn_sent = !syscall_hooks as u8;
            ro.count_mode = a.count as u8;
            ro.dns_on = a.dns as u8;
        },
        |prog: &str| {
            (prog == "opt_dns_recv" && !dns_btf)
                || (prog.starts_with("opt_dnssys_") && dns_path != Some(DnsPath::Syscalls))
                || (!syscall_hooks && (prog == "opt_enter_connect" || prog == "opt_exit_connect"))
        }
    );
    if syscall_hooks {
        cli::debug(format_args!(
            "tcpconnect: local port and result from syscalls:sys_exit_connect"
        ));
    } else if !a.at_syn_sent && attach::tracefs_unreadable() {
        cli::say(format_args!(
            "sockray: tcpconnect: events at SYN_SENT, without local port or result (LPORT 0): the \
             syscall tracepoints they come from are classic ones, and {}",
            attach::tracefs_missing()
        ));
    } else {
        cli::debug(format_args!(
            "tcpconnect: no syscall tracepoints: events at SYN_SENT, LPORT 0, ret unknown"
        ));
    }

    match dns_path {
        Some(DnsPath::RecvLength) => cli::debug(format_args!(
            "tcpconnect: DNS answers from tp_btf/sock_recv_length"
        )),
        Some(DnsPath::Syscalls) => cli::debug(format_args!(
            "tcpconnect: DNS answers from syscalls:sys_exit_recvfrom/sys_exit_recvmsg"
        )),
        None => {}
    }

    if a.count {
        return count_run(&skel, mode, a.common.verbose);
    }

    let mut printer = Printer::new(
        mode,
        columns(a.print_uid, a.lport, a.dns),
        TimeCols {
            hms: false,
            secs: a.timestamp,
        },
    )
    .with_secs_decimals(3); // BCC's %-9.3f
    let mut dns_cache = dns::Cache::new(10240, 24 * 3600 * 1_000_000_000);
    let obj = skel.object();
    if a.common.verbose {
        eprintln!("sockray: ready");
    }
    printer.header()?;
    runtime::event_loop(
        obj,
        |data| {
            let kind = data
                .get(..4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            match kind {
                KIND_CONNECT => {
                    let Some(e) = runtime::read_event::<types::tcpconnect_event>(data) else {
                        return Ok(());
                    };
                    let mut f = connect_fields(&e);
                    if a.dns {
                        let daddr = ip_addr(e.family, &e.daddr);
                        let (text, name, age) = dns::query_column(&dns_cache, daddr, e.ts_ns);
                        // the column shows BCC's text; JSON has the name (or null) and its age
                        let query = match (mode, name) {
                            (Mode::Table, _) => Value::S(text),
                            (_, Some(n)) => Value::S(n),
                            (_, None) => Value::Null,
                        };
                        f.push(("query", query));
                        f.push((
                            "query_age_ms",
                            age.map(|ms| Value::F(ms, 3)).unwrap_or(Value::Null),
                        ));
                    }
                    printer.event(Some(e.ts_ns), &f)
                }
                KIND_DNS => {
                    if let Some(e) = runtime::read_event::<types::tcpconnect_dns_event>(data) {
                        let len = (e.len as usize).min(e.data.len());
                        if let Some(ans) = dns::parse_response(&e.data[..len]) {
                            for addr in ans.addrs {
                                dns_cache.insert(addr, ans.name.clone(), e.ts_ns);
                            }
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        },
        None,
        || Ok(true),
        None,
    )?;
    runtime::report_lost(&mut printer, "tcpconnect", runtime::lost_events(obj))
}

/// Where `-d` reads DNS answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DnsPath {
    /// sock:sock_recv_length (Linux 6.3+): only socket receives pay for it
    RecvLength,
    /// syscalls:sys_enter/exit_recvfrom and recvmsg: older kernels (every such syscall pays)
    Syscalls,
}

/// The DNS hook of this kernel: sock_recv_length where the kernel has it (and no other path is forced
/// with SOCKRAY_ATTACH), else the syscall tracepoints.
fn dns_path() -> Result<DnsPath> {
    let btf_allowed = attach::forced_path().is_none_or(|f| f == "tp_btf");
    if btf_allowed && attach::probe(Kind::TpBtf, "sock_recv_length").is_ok() {
        return Ok(DnsPath::RecvLength);
    }
    let tps = [
        "syscalls/sys_enter_recvfrom",
        "syscalls/sys_exit_recvfrom",
        "syscalls/sys_enter_recvmsg",
        "syscalls/sys_exit_recvmsg",
    ];
    let missing: Vec<String> = tps
        .iter()
        .filter_map(|tp| {
            attach::probe(Kind::Tracepoint, tp)
                .err()
                .map(|e| format!("{tp}: {e}"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(DnsPath::Syscalls);
    }
    bail!(
        "-d needs the tracepoint sock:sock_recv_length (Linux 6.3+) or the syscall tracepoints of \
         recvfrom and recvmsg (CONFIG_FTRACE_SYSCALLS); this kernel has neither: {}",
        missing.join("; ")
    )
}

// ---------------------------------------------------------------------------------------------------
// -c: the count table

#[derive(Clone, Debug, PartialEq)]
struct CountRow {
    family: u16,
    saddr: IpAddr,
    daddr: IpAddr,
    dport: u16,
    connects: u64,
}

/// BCC's order: IPv4 rows, then IPv6 rows, each by count (largest first); ties by address and port.
fn sort_counts(rows: &mut [CountRow]) {
    rows.sort_by(|x, y| {
        (x.family != crate::format::AF_INET)
            .cmp(&(y.family != crate::format::AF_INET))
            .then(y.connects.cmp(&x.connects))
            .then(x.saddr.cmp(&y.saddr))
            .then(x.daddr.cmp(&y.daddr))
            .then(x.dport.cmp(&y.dport))
    });
}

/// The table BCC's tcpconnect -c prints at exit (`%-25s %-25s %-20s %-10d`), after a blank line.
fn count_table(rows: &[CountRow]) -> String {
    let mut out = format!(
        "\n{:<25} {:<25} {:<20} {}\n",
        "LADDR", "RADDR", "RPORT", "CONNECTS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<25} {:<25} {:<20} {}\n",
            r.saddr.to_string(),
            r.daddr.to_string(),
            r.dport,
            r.connects
        ));
    }
    out
}

fn count_run(skel: &skel::TcpconnectSkel, mode: Mode, verbose: bool) -> Result<()> {
    let obj = skel.object();
    runtime::wait_for_stop(obj, "Tracing connect ... Hit Ctrl-C to end", verbose)?;
    let mut rows: Vec<CountRow> =
        runtime::map_counts::<types::tcpconnect_count_key>(&skel.maps.conn_counts)?
            .into_iter()
            .map(|(k, n)| CountRow {
                family: k.family,
                saddr: ip_addr(k.family, &k.saddr),
                daddr: ip_addr(k.family, &k.daddr),
                dport: k.dport,
                connects: n,
            })
            .collect();
    sort_counts(&mut rows);

    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    if mode == Mode::Json {
        for r in &rows {
            printer.json_record(&vec![
                ("ip", Value::U(ip_version(r.family) as u64)),
                ("saddr", Value::Ip(r.saddr)),
                ("daddr", Value::Ip(r.daddr)),
                ("dport", Value::U(r.dport as u64)),
                ("connects", Value::U(r.connects)),
            ])?;
        }
    } else {
        crate::output::print_block(&count_table(&rows))?;
    }
    runtime::report_lost(&mut printer, "tcpconnect", runtime::lost_events(obj))
}

// ---------------------------------------------------------------------------------------------------
// -d: DNS answers

mod dns {
    use super::*;

    /// What a DNS response says: the question's name and the A/AAAA addresses among the answers.
    #[derive(Debug, PartialEq)]
    pub struct Answer {
        pub name: String,
        pub addrs: Vec<IpAddr>,
    }

    fn u16_at(p: &[u8], i: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]))
    }

    /// A (possibly compressed) domain name at `pos`: its text (no trailing dot; "." for the root) and
    /// the position after it in the message.
    fn read_name(p: &[u8], mut pos: usize) -> Option<(String, usize)> {
        let mut name = String::new();
        let mut end = None;
        let mut jumps = 0;
        let mut total = 0usize;
        loop {
            let len = *p.get(pos)? as usize;
            match len & 0xc0 {
                0xc0 => {
                    let target = ((len & 0x3f) << 8) | *p.get(pos + 1)? as usize;
                    end.get_or_insert(pos + 2);
                    jumps += 1;
                    if jumps > 32 || target >= p.len() {
                        return None;
                    }
                    pos = target;
                }
                0x00 => {
                    if len == 0 {
                        let after = end.unwrap_or(pos + 1);
                        if name.is_empty() {
                            name.push('.');
                        }
                        return Some((name, after));
                    }
                    let label = p.get(pos + 1..pos + 1 + len)?;
                    total += len + 1;
                    if total > 255 {
                        return None;
                    }
                    if !name.is_empty() {
                        name.push('.');
                    }
                    for &b in label {
                        match b {
                            b'.' | b'\\' => {
                                name.push('\\');
                                name.push(b as char);
                            }
                            0x21..=0x7e => name.push(b as char),
                            _ => name.push_str(&format!("\\{b:03}")),
                        }
                    }
                    pos += 1 + len;
                }
                _ => return None, // 0x40/0x80: extended label types, obsolete
            }
        }
    }

    /// Parses a DNS response (as BCC: a response with one question and at least one answer) into its
    /// question name and A/AAAA addresses. Tolerates a message cut short (keeps the complete records).
    pub fn parse_response(p: &[u8]) -> Option<Answer> {
        let flags = u16_at(p, 2)?;
        let qr = flags & 0x8000 != 0;
        let opcode = (flags >> 11) & 0xf;
        let rcode = flags & 0xf;
        if !qr || opcode != 0 || rcode != 0 {
            return None;
        }
        if u16_at(p, 4)? != 1 {
            return None;
        }
        let ancount = u16_at(p, 6)?;
        if ancount == 0 {
            return None;
        }
        let (name, mut pos) = read_name(p, 12)?;
        pos += 4; // QTYPE, QCLASS
        let mut addrs = Vec::new();
        for _ in 0..ancount {
            let Some((_, after)) = read_name(p, pos) else {
                break;
            };
            pos = after;
            let (Some(rtype), Some(class), Some(rdlen)) =
                (u16_at(p, pos), u16_at(p, pos + 2), u16_at(p, pos + 8))
            else {
                break;
            };
            pos += 10;
            let Some(rdata) = p.get(pos..pos + rdlen as usize) else {
                break;
            };
            pos += rdlen as usize;
            if class != 1 {
                continue;
            }
            match (rtype, rdata.len()) {
                (1, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(rdata).ok()?)),
                (28, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(rdata).ok()?)),
                _ => {}
            }
        }
        if addrs.is_empty() {
            return None;
        }
        Some(Answer { name, addrs })
    }

    /// address -> (name, time of the answer), bounded; entries older than `ttl_ns` are not used.
    pub struct Cache {
        map: HashMap<IpAddr, (String, u64)>,
        cap: usize,
        ttl_ns: u64,
    }

    impl Cache {
        pub fn new(cap: usize, ttl_ns: u64) -> Cache {
            Cache {
                map: HashMap::new(),
                cap,
                ttl_ns,
            }
        }

        pub fn insert(&mut self, addr: IpAddr, name: String, ts_ns: u64) {
            if self.map.len() >= self.cap
                && !self.map.contains_key(&addr)
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(a, _)| *a)
            {
                self.map.remove(&oldest);
            }
            self.map.insert(addr, (name, ts_ns));
        }

        /// The name that resolved addr and the answer's time, if it is fresh enough at `now_ns`.
        pub fn get(&self, addr: &IpAddr, now_ns: u64) -> Option<(&str, u64)> {
            let (name, ts) = self.map.get(addr)?;
            (now_ns.saturating_sub(*ts) <= self.ttl_ns).then_some((name.as_str(), *ts))
        }
    }

    /// BCC's QUERY column text ("No DNS Query", or the name with " (N.NNNms)" when the answer came
    /// more than 100 ms before the connect), the name, and the answer's age in ms.
    pub fn query_column(
        cache: &Cache,
        daddr: IpAddr,
        connect_ns: u64,
    ) -> (String, Option<String>, Option<f64>) {
        // an IPv4-mapped destination was resolved as its IPv4 address
        let lookup = match daddr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .filter(|v4| cache.get(v4, connect_ns).is_some())
                .unwrap_or(daddr),
            v4 => v4,
        };
        match cache.get(&lookup, connect_ns) {
            None => ("No DNS Query".to_string(), None, None),
            Some((name, ts)) => {
                let age_ms = connect_ns.saturating_sub(ts) as f64 / 1e6;
                let text = if age_ms > 100.0 {
                    format!("{name} ({age_ms:.3}ms)")
                } else {
                    name.to_string()
                };
                (text, Some(name.to_string()), Some(age_ms))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dns::*;
    use super::*;

    /// A response for `name` with the given answer records (type, rdata), the owner name compressed.
    fn response(id: u16, name: &str, answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend(id.to_be_bytes());
        p.extend(0x8180u16.to_be_bytes()); // QR, RD, RA, NOERROR
        p.extend(1u16.to_be_bytes());
        p.extend((answers.len() as u16).to_be_bytes());
        p.extend(0u16.to_be_bytes());
        p.extend(0u16.to_be_bytes());
        for label in name.split('.') {
            p.push(label.len() as u8);
            p.extend(label.as_bytes());
        }
        p.push(0);
        p.extend(1u16.to_be_bytes()); // QTYPE A
        p.extend(1u16.to_be_bytes()); // IN
        for (t, rdata) in answers {
            p.extend([0xc0, 12]); // pointer to the question name
            p.extend(t.to_be_bytes());
            p.extend(1u16.to_be_bytes());
            p.extend(300u32.to_be_bytes());
            p.extend((rdata.len() as u16).to_be_bytes());
            p.extend(rdata);
        }
        p
    }

    fn cname(target_first_label: &str) -> Vec<u8> {
        // "<label>" + pointer to the question name
        let mut v = vec![target_first_label.len() as u8];
        v.extend(target_first_label.as_bytes());
        v.extend([0xc0, 12]);
        v
    }

    #[test]
    fn a_and_aaaa_answers() {
        let v6: [u8; 16] = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let p = response(
            7,
            "www.example.com",
            &[
                (5, cname("edge")),
                (1, vec![192, 0, 2, 10]),
                (1, vec![192, 0, 2, 11]),
                (28, v6.to_vec()),
                (16, b"\x04text".to_vec()),
            ],
        );
        let a = parse_response(&p).unwrap();
        assert_eq!(a.name, "www.example.com");
        let want: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "192.0.2.11".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        assert_eq!(a.addrs, want);
    }

    #[test]
    fn queries_errors_and_empty_answers_are_ignored() {
        let mut q = response(1, "example.com", &[(1, vec![10, 0, 0, 1])]);
        q[2] &= 0x7f; // QR = 0: a query
        assert_eq!(parse_response(&q), None);
        let mut nx = response(1, "example.com", &[(1, vec![10, 0, 0, 1])]);
        nx[3] = 0x83; // NXDOMAIN
        assert_eq!(parse_response(&nx), None);
        assert_eq!(parse_response(&response(1, "example.com", &[])), None);
        assert_eq!(
            parse_response(&response(1, "example.com", &[(5, cname("x"))])),
            None
        );
        assert_eq!(parse_response(&[0u8; 5]), None);
        assert_eq!(parse_response(&[]), None);
    }

    #[test]
    fn truncated_message_keeps_complete_records() {
        let p = response(
            2,
            "a.example",
            &[(1, vec![10, 0, 0, 1]), (1, vec![10, 0, 0, 2])],
        );
        let cut = &p[..p.len() - 2];
        let a = parse_response(cut).unwrap();
        assert_eq!(a.addrs, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn pointer_loops_and_odd_labels() {
        // the question name points at itself
        let mut p = response(3, "x", &[(1, vec![10, 0, 0, 1])]);
        p[12] = 0xc0;
        p[13] = 12;
        assert_eq!(parse_response(&p), None);
        let odd = response(4, "we\\ird", &[(1, vec![10, 0, 0, 3])]);
        assert_eq!(parse_response(&odd).unwrap().name, "we\\\\ird");
    }

    #[test]
    fn cache_is_bounded_and_ages() {
        let mut c = Cache::new(2, 1000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let d: IpAddr = "10.0.0.3".parse().unwrap();
        c.insert(a, "a".into(), 100);
        c.insert(b, "b".into(), 200);
        c.insert(d, "d".into(), 300); // evicts the oldest: a
        assert_eq!(c.get(&a, 300), None);
        assert_eq!(c.get(&b, 300), Some(("b", 200)));
        assert_eq!(c.get(&d, 1300), Some(("d", 300)));
        assert_eq!(c.get(&d, 1301), None); // older than the TTL
    }

    #[test]
    fn query_column_like_bcc() {
        let mut c = Cache::new(16, u64::MAX);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        c.insert(a, "example.com".into(), 1_000_000_000);
        let (t, q, age) = query_column(&c, a, 1_050_000_000);
        assert_eq!(
            (t.as_str(), q.as_deref(), age),
            ("example.com", Some("example.com"), Some(50.0))
        );
        let (t, _, _) = query_column(&c, a, 1_250_000_000);
        assert_eq!(t, "example.com (250.000ms)");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            query_column(&c, mapped, 1_000_000_000).1.as_deref(),
            Some("example.com")
        );
        let (t, q, age) = query_column(&c, "192.0.2.2".parse().unwrap(), 0);
        assert_eq!((t.as_str(), q, age), ("No DNS Query", None, None));
    }

    #[test]
    fn count_table_like_bcc() {
        let row = |s: &str, d: &str, port, n| CountRow {
            family: if s.contains(':') { 10 } else { 2 },
            saddr: s.parse().unwrap(),
            daddr: d.parse().unwrap(),
            dport: port,
            connects: n,
        };
        let mut rows = vec![
            row("::1", "::1", 443, 9),
            row("127.0.0.1", "127.0.0.1", 80, 2),
            row("10.0.0.1", "10.0.0.2", 22, 5),
        ];
        sort_counts(&mut rows);
        let t = count_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(
            lines[1],
            "LADDR                     RADDR                     RPORT                CONNECTS"
        );
        assert_eq!(
            lines[2],
            "10.0.0.1                  10.0.0.2                  22                   5"
        );
        assert_eq!(
            lines[3],
            "127.0.0.1                 127.0.0.1                 80                   2"
        );
        assert_eq!(
            lines[4],
            "::1                       ::1                       443                  9"
        );
        assert_eq!(lines.len(), 5);
        assert_eq!(count_table(&[]).lines().count(), 2);
    }

    #[test]
    fn columns_like_bcc() {
        let titles = |u, l, d| columns(u, l, d).iter().map(|c| c.title).collect::<Vec<_>>();
        assert_eq!(
            titles(false, false, false),
            ["PID", "COMM", "IP", "SADDR", "DADDR", "DPORT"]
        );
        assert_eq!(
            titles(true, true, true),
            [
                "UID", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT", "QUERY"
            ]
        );
    }
}
