//! tcpdrop: TCP packets the kernel dropped, with the socket's owner, the kernel's drop reason by name and
//! the kernel stack that dropped them (BCC's tcpdrop, on the skb:kfree_skb tracepoint).
//! Hooks: skb:kfree_skb (tp_btf, else raw_tp), before Linux 5.17 also tcp_drop() (fentry, else a kprobe),
//! and the socket-owner component's (sock:inet_sock_set_state and its refresh). Reason names from the
//! running kernel's BTF (`enum skb_drop_reason`: the numbers differ between kernels); stacks named from
//! /proc/kallsyms (src/symbolize.rs).

use std::collections::HashMap;
use std::ffi::OsString;
use std::mem::MaybeUninit;

use anyhow::{Result, bail};
use clap::Parser;
use libbpf_rs::skel::Skel as _;
use libbpf_rs::{MapCore as _, MapFlags};

use crate::attach;
use crate::cli::{self, Common, FamilyArgs, PortArgs, ScopeArgs, SocketTable, load_tool};
use crate::dropreason::Reasons;
use crate::filter::{Filters, parse_id};
use crate::format::{ip_addr, ip_version, owner_fields, tcp_state};
use crate::output::{Col, Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;
use crate::symbolize::Symbolizer;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpdrop.skel.rs"));
}
use skel::{TcpdropSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpdrop                      # trace kernel TCP drops
    tcpdrop -4                   # trace IPv4 family only
    tcpdrop -6                   # trace IPv6 family only
    tcpdrop -p 181               # only drops of sockets owned by PID 181
    tcpdrop -L 443               # only drops on local port 443
    tcpdrop --reason NO_SOCKET   # only this drop reason (names as the kernel's, comma-separated)
    tcpdrop --no-stack           # one line per drop, no kernel stack
    tcpdrop --json               # one JSON object per drop, the stack as an array

PID is the process that owns the socket the packet was for (BCC printed whichever task the softirq
interrupted); 0 when no socket wanted it (a SYN to a closed port: NO_SOCKET) or its owner is not known.
REASON is the kernel's drop reason (Linux 5.17+; \"-\" before), named from this kernel's BTF. As BCC,
frees that are no drops (NOT_DROPPED_YET, CONSUMED) and NOT_SPECIFIED are left out unless --reason
names them.";

/// Trace TCP drops by the kernel
#[derive(Parser, Debug)]
#[command(name = "tcpdrop", after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    family: FamilyArgs,
    /// trace this PID only (the socket's owner)
    #[arg(short = 'p', long, value_parser = parse_id)]
    pid: Option<u32>,
    #[command(flatten)]
    ports: PortArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    /// only these drop reasons (comma-separated, e.g. NO_SOCKET,TCP_CSUM; Linux 5.17+)
    #[arg(long, value_name = "NAME[,NAME]", value_delimiter = ',')]
    reason: Vec<String>,
    /// do not collect or print the kernel stack
    #[arg(long = "no-stack")]
    no_stack: bool,
    /// include time column (HH:MM:SS); always shown, as in BCC's tcpdrop
    #[arg(short = 'T', long = "time")]
    time: bool,
    /// include timestamp column (seconds since the first event)
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    #[command(flatten)]
    sockets: SocketTable,
    #[command(flatten)]
    common: Common,
}

/// Bits of the in-kernel reason filter (bpf/tcpdrop.h TCPDROP_REASON_BITS).
const REASON_BITS: usize = 512;

/// Frees that are no drops, and the reason BCC leaves out too (reason <= NOT_SPECIFIED).
const NOT_DROPS: &[&str] = &["NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED"];

/// The in-kernel reason filter: (bitmap, reasons >= REASON_BITS shown) for --reason (`named`), or by
/// default every reason but NOT_DROPS.
fn reason_filter(reasons: &Reasons, named: &[String]) -> Result<([u8; REASON_BITS / 8], bool)> {
    let mut bits = [0u8; REASON_BITS / 8];
    let set = |bits: &mut [u8; REASON_BITS / 8], r: u32| {
        if (r as usize) < REASON_BITS {
            bits[r as usize >> 3] |= 1 << (r & 7);
        }
    };
    if named.is_empty() {
        bits = [0xff; REASON_BITS / 8];
        for n in NOT_DROPS {
            if let Some(r) = reasons.number(n) {
                bits[r as usize >> 3] &= !(1 << (r & 7));
            }
        }
        return Ok((bits, true));
    }
    let mut high = false;
    for n in named.iter().filter(|n| !n.trim().is_empty()) {
        let Some(r) = reasons.number(n) else {
            bail!(
                "--reason {n}: this kernel has no such drop reason (its names: {})",
                reasons.sorted_names().join(", ")
            );
        };
        set(&mut bits, r);
        high |= r as usize >= REASON_BITS;
    }
    Ok((bits, high))
}

fn columns() -> Vec<Col> {
    vec![
        Col::left("PID", "pid", 7),
        Col::left("IP", "ip", 2),
        Col::left("SADDR:SPORT", "saddr_sport", 20),
        Col::literal(">"),
        Col::left("DADDR:DPORT", "daddr_dport", 20),
        Col::left("STATE (FLAGS)", "state_flags", 20),
        Col::left("REASON (CODE)", "reason_code_text", 0),
    ]
}

/// BCC's tcp.flags2str: the flags set, in its order, joined by "|".
fn flags_str(flags: u8) -> String {
    const NAMES: [(&str, u8); 8] = [
        ("FIN", 0x01),
        ("SYN", 0x02),
        ("RST", 0x04),
        ("PSH", 0x08),
        ("ACK", 0x10),
        ("URG", 0x20),
        ("ECE", 0x40),
        ("CWR", 0x80),
    ];
    NAMES
        .iter()
        .filter(|(_, b)| flags & b != 0)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

const NO_REASON: u32 = u32::MAX; // bpf/tcpdrop.h TCPDROP_NO_REASON

fn event_fields(
    e: &types::tcpdrop_event,
    reasons: &Reasons,
    stack: Option<&[String]>,
    table: bool,
) -> Fields {
    let (saddr, daddr) = (ip_addr(e.family, &e.saddr), ip_addr(e.family, &e.daddr));
    let state = (e.state != 0).then(|| tcp_state(e.state as i32));
    let flags = flags_str(e.tcpflags);
    let reason = (e.reason != NO_REASON).then(|| {
        reasons
            .name(e.reason)
            .map_or_else(|| format!("UNKNOWN_{}", e.reason), str::to_string)
    });
    let mut f = owner_fields(e.owner.pid, e.owner.uid, &e.owner.comm);
    f.extend([
        ("ip", Value::U(ip_version(e.family) as u64)),
        ("saddr", Value::Ip(saddr)),
        ("sport", Value::U(e.sport as u64)),
        ("daddr", Value::Ip(daddr)),
        ("dport", Value::U(e.dport as u64)),
        ("state", state.map_or(Value::Null, |s| Value::S(s.into()))),
        ("flags", Value::S(flags.clone())),
        ("reason", reason.clone().map_or(Value::Null, Value::S)),
        (
            "reason_code",
            if e.reason == NO_REASON {
                Value::Null
            } else {
                Value::U(e.reason as u64)
            },
        ),
        (
            "stack",
            match stack {
                Some(frames) => {
                    Value::Json(serde_json::to_string(frames).unwrap_or_else(|_| "[]".into()))
                }
                None => Value::Null,
            },
        ),
        (
            "skaddr",
            if e.skaddr != 0 {
                Value::Hex(e.skaddr)
            } else {
                Value::Null
            },
        ),
        (
            "location",
            // tcp_drop()'s hook has no location of its own: its caller is the stack's first frame
            if e.location != 0 {
                Value::Hex(e.location)
            } else {
                Value::Null
            },
        ),
    ]);
    if table {
        f.extend([
            ("saddr_sport", Value::S(format!("{saddr}:{}", e.sport))),
            ("daddr_dport", Value::S(format!("{daddr}:{}", e.dport))),
            (
                "state_flags",
                Value::S(format!("{} ({flags})", state.unwrap_or("-"))),
            ),
            (
                "reason_code_text",
                Value::S(match reason {
                    Some(r) => format!("{r} ({})", e.reason),
                    None => "-".into(),
                }),
            ),
        ]);
    }
    f
}

/// The frames of a stack in the `stacks` map, innermost first, named; cached per stack id (an id's
/// stack never changes: the map is used without BPF_F_REUSE_STACKID, and user space deletes nothing).
struct Stacks<'a> {
    map: &'a libbpf_rs::Map<'a>,
    symbols: &'a Symbolizer,
    cache: HashMap<i32, Vec<String>>,
}

impl Stacks<'_> {
    fn frames(&mut self, id: i32) -> Option<&[String]> {
        if id < 0 {
            return None;
        }
        if !self.cache.contains_key(&id) {
            let raw = self
                .map
                .lookup(&(id as u32).to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()?;
            let table = self.symbols.table();
            let frames: Vec<String> = raw
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                .take_while(|&a| a != 0)
                .map(|a| table.name(a))
                // the tracing machinery above the function that dropped the packet (this tool's own
                // program, the tracepoint's call into it); without names (no CAP_SYSLOG) it cannot
                // be told apart, and every frame is kept, as an address
                .skip_while(|f| !table.is_empty() && is_tracing_frame(f))
                .collect();
            self.cache.insert(id, frames);
        }
        self.cache.get(&id).map(Vec::as_slice)
    }
}

/// A frame of the tracing machinery: the BPF program and the tracepoint's calls into it.
fn is_tracing_frame(frame: &str) -> bool {
    [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "trace_kfree_skb",
        "0x",
        // fentry's trampoline, a kprobe's handlers (tcp_drop() on kernels before 5.17)
        "bpf_trampoline_",
        "kprobe_",
        "aggr_pre_handler",
        "opt_pre_handler",
        "trace_call_bpf",
        "ftrace_",
        "arch_ftrace_",
        "optimized_callback",
        "exc_int3",
        "asm_exc_int3",
    ]
    .iter()
    .any(|p| frame.starts_with(p))
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    runtime::set_max_sockets(a.sockets.max_sockets);
    if a.common.ebpf {
        return cli::print_ebpf("tcpdrop");
    }
    runtime::preflight("tcpdrop")?;
    // both read on threads while the object opens: kallsyms takes seconds in an emulated guest (parsed
    // only when the first stack is printed), vmlinux BTF a parse (the reason names, needed before load)
    let symbols = (!a.no_stack).then(Symbolizer::start);
    let reasons_thread = std::thread::spawn(Reasons::from_kernel);
    let filters = Filters {
        pid: a.pid,
        family: a.family.family(),
        lports: a.ports.localport.clone(),
        rports: a.ports.remoteport.clone(),
        scope: a.scope.scope(),
        ..Default::default()
    };
    let mode = a.common.mode(false);
    let has_reason = attach::tracepoint_has_field("skb/kfree_skb", "reason").unwrap_or(false);
    let has_rx_sk = attach::tracepoint_has_field("skb/kfree_skb", "rx_sk").unwrap_or(false);
    if !has_reason && !a.reason.is_empty() {
        bail!("--reason: this kernel's skb:kfree_skb tracepoint has no drop reason (Linux 5.17+)");
    }
    let reasons = reasons_thread.join().unwrap_or_default();
    let (bits, high_ok) = reason_filter(&reasons, &a.reason)?;

    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpdropSkelBuilder,
        &mut storage,
        "tcpdrop",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.has_reason = has_reason as u8;
            ro.has_rx_sk = has_rx_sk as u8;
            ro.want_stack = (!a.no_stack) as u8;
            ro.reason_bits = bits;
            ro.reason_high_ok = high_ok as u8;
        },
        // tcp_drop() (fentry, else a kprobe) only where TCP's own drops miss the tracepoint
        |prog: &str| has_reason && prog.starts_with("opt_tcpdrop_tcp_drop__")
    );
    if !has_reason {
        let hooked = skel
            .object()
            .progs()
            .find(|p| {
                p.name()
                    .to_string_lossy()
                    .starts_with("opt_tcpdrop_tcp_drop__")
                    && p.autoload()
            })
            .map(|p| p.name().to_string_lossy().into_owned());
        match hooked {
            Some(p) => cli::debug(format_args!(
                "tcpdrop: TCP's own drops: {p} (tcp_drop() frees without the tracepoint before Linux 5.17)"
            )),
            // said always: an empty screen would otherwise read as "no drops"
            None => eprintln!(
                "tcpdrop: note: this kernel frees what TCP itself drops (old or out-of-window data, a full \
                 receive queue, ...) in tcp_drop(), without the skb:kfree_skb tracepoint (Linux 5.17+ has \
                 it), and tcp_drop() is out of reach here (inlined: no fentry or kprobe on it); those drops \
                 are not shown, the ones freed through kfree_skb() are (a SYN to a closed port, a bad checksum)"
            ),
        }
    }
    cli::debug(format_args!(
        "tcpdrop: skb:kfree_skb {}; the socket: {}; reasons shown: {}",
        if has_reason {
            "has the drop reason (named from vmlinux BTF enum skb_drop_reason)"
        } else {
            "has no drop reason argument (before Linux 5.17): REASON \"-\""
        },
        if has_rx_sk {
            "rx_sk (Linux 6.12+), else skb->sk"
        } else if has_reason {
            "skb->sk"
        } else {
            "skb->sk; TCP's own drops (tcp_drop(), which frees without the tracepoint) from fentry/kprobe tcp_drop with its socket, where one loads"
        },
        if !has_reason {
            "all".to_string()
        } else if a.reason.is_empty() {
            format!("all but {}", NOT_DROPS.join(", "))
        } else {
            a.reason.join(", ")
        }
    ));

    let _always_there = a.time;
    let mut printer = Printer::new(
        mode,
        columns(),
        TimeCols {
            hms: true,
            secs: a.timestamp,
        },
    );
    let obj = skel.object();
    let mut stacks = symbols.as_ref().map(|s| Stacks {
        map: &skel.maps.stacks,
        symbols: s,
        cache: HashMap::new(),
    });
    if let Some(s) = &symbols {
        // rows are live from "ready" on: every row carries its stack, named from kallsyms (read and
        // parsed meanwhile on a thread)
        s.wait(runtime::stopped);
    }
    runtime::say_ready(a.common.verbose);
    printer.header()?;
    let table = mode != Mode::Json;
    let looped = runtime::event_loop(
        obj,
        |data| {
            let Some(e) = runtime::read_event::<types::tcpdrop_event>(data) else {
                return Ok(());
            };
            if !table {
                // the stack is part of the record
                let frames = stacks.as_mut().map(|s| {
                    s.frames(e.stack_id)
                        .map(<[String]>::to_vec)
                        .unwrap_or_default()
                });
                return printer.event(
                    Some(e.ts_ns),
                    &event_fields(&e, &reasons, frames.as_deref(), false),
                );
            }
            printer.event(Some(e.ts_ns), &event_fields(&e, &reasons, None, true))?;
            if let Some(s) = stacks.as_mut() {
                // a stack before the table is there (only when stopped while waiting): the row is out first
                if !s.symbols.is_ready() {
                    crate::output::flush_batch()?;
                }
                let mut text = String::new();
                match s.frames(e.stack_id) {
                    Some(frames) if !frames.is_empty() => {
                        for f in frames {
                            text.push('\t');
                            text.push_str(f);
                            text.push('\n');
                        }
                    }
                    _ => text.push_str("\t[stack not kept: the stack map had no room]\n"),
                }
                text.push('\n');
                printer.table_lines(&text)?;
            }
            Ok(())
        },
        None,
        || Ok(true),
        None,
    );
    looped?;
    runtime::report_lost(&mut printer, "tcpdrop", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons() -> Reasons {
        Reasons::from_members(
            [
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_TCP_CSUM", 10),
                ("SKB_DROP_REASON_MAX", 129),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v)),
        )
    }

    #[test]
    fn names_without_prefix() {
        let r = reasons();
        assert_eq!(r.name(3), Some("NO_SOCKET"));
        assert_eq!(r.name(1), Some("CONSUMED"));
        assert_eq!(r.name(129), None);
        assert_eq!(r.number("no_socket"), Some(3));
        assert_eq!(r.number("SKB_DROP_REASON_TCP_CSUM"), Some(10));
        assert_eq!(r.number("NOPE"), None);
    }

    #[test]
    fn default_filter_leaves_out_what_is_no_drop() {
        let (bits, high) = reason_filter(&reasons(), &[]).unwrap();
        let on = |r: usize| bits[r >> 3] & (1 << (r & 7)) != 0;
        assert!(!on(0) && !on(1) && !on(2));
        assert!(on(3) && on(10) && on(200));
        assert!(high);
        let (bits, high) = reason_filter(&reasons(), &["no_socket".into()]).unwrap();
        let on = |r: usize| bits[r >> 3] & (1 << (r & 7)) != 0;
        assert!(on(3) && !on(10) && !on(2));
        assert!(!high);
        let err = reason_filter(&reasons(), &["BOGUS".into()]).unwrap_err();
        assert!(err.to_string().contains("NO_SOCKET"), "{err}");
    }

    #[test]
    fn tracing_frames_are_left_out() {
        assert!(is_tracing_frame(
            "bpf_prog_d7aeac2d4e896dbe_tcpdrop_drop__btf+0x763"
        ));
        assert!(is_tracing_frame("bpf_trace_run4+0x10d"));
        assert!(is_tracing_frame("__traceiter_kfree_skb+0x90"));
        assert!(!is_tracing_frame("sk_skb_reason_drop+0x90"));
        assert!(!is_tracing_frame("kfree_skb_reason+0x90"));
    }

    #[test]
    fn flags_like_bcc() {
        assert_eq!(flags_str(0x12), "SYN|ACK");
        assert_eq!(flags_str(0x02), "SYN");
        assert_eq!(flags_str(0x18), "PSH|ACK");
        assert_eq!(flags_str(0), "");
    }

    #[test]
    fn header_like_bcc() {
        let titles: Vec<&str> = columns().iter().map(|c| c.title).collect();
        assert_eq!(
            titles.join(" "),
            "PID IP SADDR:SPORT > DADDR:DPORT STATE (FLAGS) REASON (CODE)"
        );
    }
}
