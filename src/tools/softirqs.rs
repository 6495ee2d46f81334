//! softirqs: time spent in each softirq vector (BCC's and libbpf-tools' softirqs): totals per vector
//! (`SOFTIRQ TOTAL_usecs`), event counts (`-C`), log2 histograms of each run's time (`-d`), one CPU
//! (`-c`), and what both lack: each CPU's share side by side (`--per-cpu`), the question behind RSS/RPS
//! tuning (on which CPUs does net_rx run?).
//! Hooks: irq:softirq_entry / irq:softirq_exit (tp_btf, else raw_tp); `-C` needs only the entry. All
//! counting is in a per-CPU array in the kernel; user space reads it every interval.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, load_tool};
use crate::filter::Filters;
use crate::format::{hms, wall_now_ns};
use crate::hist;
use crate::output::{Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/softirqs.skel.rs"));
}
use skel::{SoftirqsSkelBuilder, types};

/// bpf/softirqs.h
const VECS: usize = 16;
const MODE_TIME: u8 = 0;
const MODE_COUNT: u8 = 1;
const MODE_DIST: u8 = 2;

const EXAMPLES: &str = "examples:
    softirqs              # sum soft irq event time
    softirqs -C           # show the number of soft irq events
    softirqs -d           # show soft irq event time as histograms
    softirqs 1 10         # print 1 second summaries, 10 times
    softirqs -NT 1        # 1s summaries, nanoseconds, and timestamps
    softirqs -c 1         # sum soft irq event time on CPU 1 only
    softirqs --per-cpu 1  # each CPU's time in a column of its own, every second
    softirqs --json 5     # one JSON object per softirq vector, every 5 seconds

A softirq's time runs from irq:softirq_entry to irq:softirq_exit on its CPU: the vector's handler
(net_rx_action, run_timer_softirq, ...), wherever it ran (on an interrupt's exit, in ksoftirqd, at
local_bh_enable). Totals are summed over the CPUs (over one with -c); --per-cpu shows each CPU's
share too. -C counts entries, as /proc/softirqs does. Without an interval: one summary at Ctrl-C.";

/// Summarize soft irq event time as histograms.
#[derive(Parser, Debug)]
#[command(name = "softirqs", after_help = EXAMPLES)]
struct Args {
    /// include timestamp on output
    #[arg(short = 'T', long = "timestamp")]
    timestamp: bool,
    /// output in nanoseconds
    #[arg(short = 'N', long = "nanoseconds")]
    nanoseconds: bool,
    /// show the number of soft irq events
    #[arg(short = 'C', long = "events", conflicts_with_all = ["dist", "nanoseconds"])]
    events: bool,
    /// show distributions as histograms
    #[arg(short = 'd', long = "dist", visible_alias = "distributed")]
    dist: bool,
    /// trace this CPU only (the filter runs in the kernel)
    #[arg(short = 'c', long = "cpu", value_name = "CPU")]
    cpu: Option<u32>,
    /// each CPU's figure in a column of its own (with -d: a histogram per vector and CPU) (sockray)
    #[arg(long = "per-cpu")]
    per_cpu: bool,
    /// output interval, in seconds (default: print once, at Ctrl-C)
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    interval: Option<u64>,
    /// number of outputs
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    common: Common,
}

/// The kernel's names (softirq_to_name[] in kernel/softirq.c), lower case as BCC prints them.
const NAMES: [&str; 10] = [
    "hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer", "rcu",
];

fn vec_name(v: usize) -> String {
    NAMES
        .get(v)
        .map_or_else(|| format!("vec{v}"), |n| n.to_string())
}

/// One CPU's counters (cumulative, or an interval's).
#[derive(Clone, Default)]
struct Cpu {
    unmatched: u64,
    count: [u64; VECS],
    time_ns: [u64; VECS],
    slots: Vec<Vec<u64>>,
}

impl Cpu {
    fn from_kernel(c: &types::softirqs_cpu) -> Cpu {
        Cpu {
            unmatched: c.unmatched,
            count: c.count,
            time_ns: c.time_ns,
            slots: c.slots.iter().map(|s| s.to_vec()).collect(),
        }
    }

    /// What came since `prev` (counters only grow).
    fn since(&self, prev: &Cpu) -> Cpu {
        let sub = |a: &[u64; VECS], b: &[u64; VECS]| {
            let mut o = [0u64; VECS];
            for (i, v) in o.iter_mut().enumerate() {
                *v = a[i].saturating_sub(b[i]);
            }
            o
        };
        Cpu {
            unmatched: self.unmatched.saturating_sub(prev.unmatched),
            count: sub(&self.count, &prev.count),
            time_ns: sub(&self.time_ns, &prev.time_ns),
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(v, s)| {
                    s.iter()
                        .enumerate()
                        .map(|(i, n)| {
                            n.saturating_sub(
                                prev.slots.get(v).and_then(|p| p.get(i)).map_or(0, |p| *p),
                            )
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// Every CPU's counters, indexed by CPU number (the possible CPUs).
fn read_cpus(map: &impl libbpf_rs::MapCore) -> Result<Vec<Cpu>> {
    let entries = runtime::map_percpu_entries::<u32, types::softirqs_cpu>(map)?;
    Ok(entries
        .into_iter()
        .next()
        .map(|(_, per_cpu)| per_cpu.iter().map(Cpu::from_kernel).collect())
        .unwrap_or_default())
}

/// One vector's figures in an interval: summed over the CPUs, and each CPU's.
struct Row {
    vec: usize,
    count: u64,
    time_ns: u64,
    slots: Vec<u64>,
    cpus: Vec<(usize, u64, u64, Vec<u64>)>, // (cpu, count, time_ns, slots) of the CPUs that ran it
}

/// The vectors that ran in the interval (count > 0), in vector order.
fn rows(cpus: &[Cpu]) -> Vec<Row> {
    let mut out = Vec::new();
    for v in 0..VECS {
        let mut r = Row {
            vec: v,
            count: 0,
            time_ns: 0,
            slots: vec![
                0;
                cpus.first()
                    .and_then(|c| c.slots.get(v))
                    .map_or(0, Vec::len)
            ],
            cpus: Vec::new(),
        };
        for (n, c) in cpus.iter().enumerate() {
            let slots = c.slots.get(v).cloned().unwrap_or_default();
            for (s, x) in r.slots.iter_mut().zip(&slots) {
                *s += x;
            }
            r.count += c.count[v];
            r.time_ns += c.time_ns[v];
            if c.count[v] > 0 {
                r.cpus.push((n, c.count[v], c.time_ns[v], slots));
            }
        }
        if r.count > 0 {
            out.push(r);
        }
    }
    out
}

/// How an interval is printed.
struct Form {
    mode: Mode,
    kind: u8,
    nanos: bool,
    timestamp: bool,
    per_cpu: bool,
    /// the CPUs shown as columns with --per-cpu: every possible CPU, or the one of -c
    columns: Vec<usize>,
}

impl Form {
    fn unit(&self) -> &'static str {
        if self.kind == MODE_COUNT {
            "count"
        } else if self.nanos {
            "nsecs"
        } else {
            "usecs"
        }
    }

    /// The figure a table shows for (count, time_ns).
    fn value(&self, count: u64, time_ns: u64) -> u64 {
        if self.kind == MODE_COUNT {
            count
        } else if self.nanos {
            time_ns
        } else {
            time_ns / 1000
        }
    }
}

/// BCC's table (`%-16s %11s`), largest first, with --per-cpu one `%11d` column per CPU.
fn table_text(form: &Form, rows: &[Row]) -> String {
    let mut t = format!("{:<16} {:>11}", "SOFTIRQ", format!("TOTAL_{}", form.unit()));
    if form.per_cpu {
        for c in &form.columns {
            let _ = write!(t, " {:>11}", format!("CPU{c}"));
        }
    }
    t.push('\n');
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| (std::cmp::Reverse(form.value(r.count, r.time_ns)), r.vec));
    for r in sorted {
        let _ = write!(
            t,
            "{:<16} {:>11}",
            vec_name(r.vec),
            form.value(r.count, r.time_ns)
        );
        if form.per_cpu {
            for c in &form.columns {
                let v = r
                    .cpus
                    .iter()
                    .find(|x| x.0 == *c)
                    .map_or(0, |x| form.value(x.1, x.2));
                let _ = write!(t, " {v:>11}");
            }
        }
        t.push('\n');
    }
    t
}

/// `-d`: libbpf-tools' `softirq = net_rx`, the histogram, a blank line; vector order. With --per-cpu,
/// one more per CPU that ran the vector (`softirq = net_rx cpu = 1`).
fn hist_text(form: &Form, rows: &[Row]) -> String {
    let mut t = String::new();
    for r in rows {
        let _ = writeln!(t, "softirq = {}", vec_name(r.vec));
        t.push_str(&hist::log2_text(&r.slots, form.unit()));
        t.push('\n');
        if form.per_cpu {
            for (cpu, _, _, slots) in &r.cpus {
                let _ = writeln!(t, "softirq = {} cpu = {cpu}", vec_name(r.vec));
                t.push_str(&hist::log2_text(slots, form.unit()));
                t.push('\n');
            }
        }
    }
    t
}

fn json_fields(form: &Form, r: &Row, tick: u64) -> Fields {
    let mut f: Fields = vec![
        ("time_ns", Value::U(wall_now_ns())),
        ("tick", Value::U(tick)),
        ("vec", Value::U(r.vec as u64)),
        ("softirq", Value::S(vec_name(r.vec))),
        ("count", Value::U(r.count)),
    ];
    if form.kind != MODE_COUNT {
        f.push(("total_ns", Value::U(r.time_ns)));
        f.push(("unit", Value::S(form.unit().to_string())));
        f.push(("total", Value::U(form.value(r.count, r.time_ns))));
        f.push(("avg_ns", Value::U(r.time_ns / r.count.max(1))));
    }
    if form.kind == MODE_DIST {
        f.push(("buckets", Value::Json(hist::log2_json(&r.slots))));
    }
    if form.per_cpu {
        let mut s = String::from("[");
        for (i, (cpu, count, time_ns, slots)) in r.cpus.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{{\"cpu\":{cpu},\"count\":{count}");
            if form.kind != MODE_COUNT {
                let _ = write!(s, ",\"total_ns\":{time_ns}");
            }
            if form.kind == MODE_DIST {
                let _ = write!(s, ",\"buckets\":{}", hist::log2_json(slots));
            }
            s.push('}');
        }
        s.push(']');
        f.push(("cpus", Value::Json(s)));
    }
    f
}

fn print_tick(printer: &mut Printer, form: &Form, rows: &[Row], tick: u64) -> Result<()> {
    if form.mode == Mode::Json {
        for r in rows {
            printer.json_record(&json_fields(form, r, tick))?;
        }
        printer.flush()?;
        return Ok(());
    }
    let mut text = String::from("\n");
    if form.timestamp {
        let _ = writeln!(text, "{:<8}", hms(wall_now_ns()));
    }
    if form.kind == MODE_DIST {
        text.push_str(&hist_text(form, rows));
    } else {
        text.push_str(&table_text(form, rows));
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
    if a.common.ebpf {
        return cli::print_ebpf("softirqs");
    }
    let possible = libbpf_rs::num_possible_cpus()?;
    if let Some(c) = a.cpu
        && c as usize >= possible
    {
        bail!(
            "invalid CPU {c}: this machine's CPUs are 0-{}",
            possible.saturating_sub(1)
        );
    }
    let kind = if a.events {
        MODE_COUNT
    } else if a.dist {
        MODE_DIST
    } else {
        MODE_TIME
    };
    let mode = a.common.mode(false);
    runtime::preflight("softirqs")?;
    runtime::without_owners();
    let filters = Filters::default();
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        SoftirqsSkelBuilder,
        &mut storage,
        "softirqs",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.mode = kind;
            ro.nanos = a.nanoseconds as u8;
            ro.filter_cpu = a.cpu.map_or(-1, |c| c as i32);
        },
        // -C counts entries only: no exit hook, no clock read
        |prog: &str| kind == MODE_COUNT && prog.starts_with("softirqs_exit")
    );
    cli::debug(format_args!(
        "softirqs: {} (irq:softirq_entry{}), in a per-CPU array; {}",
        if kind == MODE_COUNT {
            "entries counted per vector"
        } else {
            "each run's time per vector"
        },
        if kind == MODE_COUNT {
            ""
        } else {
            " to irq:softirq_exit"
        },
        match a.cpu {
            Some(c) => format!("CPU {c} only"),
            None => format!("{possible} CPUs"),
        }
    ));

    let obj = skel.object();
    let map = &skel.maps.stats;
    let form = Form {
        mode,
        kind,
        nanos: a.nanoseconds,
        timestamp: a.timestamp,
        per_cpu: a.per_cpu,
        columns: match a.cpu {
            Some(c) => vec![c as usize],
            None => (0..possible).collect(),
        },
    };
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    runtime::say_ready(a.common.verbose);
    if mode != Mode::Json {
        let mut out = std::io::stdout().lock();
        if kind == MODE_COUNT {
            writeln!(out, "Tracing soft irq events... Hit Ctrl-C to end.")?;
        } else {
            writeln!(out, "Tracing soft irq event time... Hit Ctrl-C to end.")?;
        }
        out.flush()?;
    }
    let tick = a.interval.map(Duration::from_secs);
    let mut printed: Vec<Cpu> = Vec::new();
    let take = |printed: &mut Vec<Cpu>| -> Result<Vec<Row>> {
        let now = read_cpus(map)?;
        let delta: Vec<Cpu> = now
            .iter()
            .enumerate()
            .map(|(i, c)| match printed.get(i) {
                Some(p) => c.since(p),
                None => c.clone(),
            })
            .collect();
        *printed = now;
        Ok(rows(&delta))
    };
    runtime::interval_loop(
        obj,
        |_| Ok(()),
        tick,
        a.count,
        None,
        |n, last| {
            let r = take(&mut printed)?;
            // at Ctrl-C: what came since the last interval (everything, without one)
            if !last || tick.is_none() || !r.is_empty() {
                print_tick(&mut printer, &form, &r, n)?;
            }
            Ok(())
        },
    )?;
    // runs whose entry was not seen: one per CPU may have begun before the attach; more are entries
    // the kernel did not run the program for
    let unmatched: u64 = read_cpus(map)?.iter().map(|c| c.unmatched).sum();
    if kind != MODE_COUNT {
        cli::debug(format_args!(
            "softirqs: {unmatched} runs left out of the times, their entry not seen"
        ));
        printer.json_record(&vec![("unmatched_exits", Value::U(unmatched))])?;
    }
    runtime::report_lost(&mut printer, "softirqs", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(v: usize, count: u64, time_ns: u64) -> Cpu {
        let mut c = Cpu {
            slots: vec![vec![0; 32]; VECS],
            ..Default::default()
        };
        c.count[v] = count;
        c.time_ns[v] = time_ns;
        c.slots[v][3] = count;
        c
    }

    fn form(kind: u8, per_cpu: bool) -> Form {
        Form {
            mode: Mode::Table,
            kind,
            nanos: false,
            timestamp: false,
            per_cpu,
            columns: vec![0, 1],
        }
    }

    #[test]
    fn table_like_bcc() {
        let cpus = vec![cpu(3, 10, 88_188_000), cpu(1, 5, 2_615_999)];
        let t = table_text(&form(MODE_TIME, false), &rows(&cpus));
        assert_eq!(
            t,
            "SOFTIRQ          TOTAL_usecs\nnet_rx                 88188\ntimer                   2615\n"
        );
        let t = table_text(&form(MODE_COUNT, true), &rows(&cpus));
        assert_eq!(
            t,
            "SOFTIRQ          TOTAL_count        CPU0        CPU1\n\
             net_rx                    10          10           0\n\
             timer                      5           0           5\n"
        );
    }

    #[test]
    fn intervals_are_differences() {
        let a = cpu(3, 10, 1000);
        let b = cpu(3, 15, 1600);
        let d = b.since(&a);
        assert_eq!((d.count[3], d.time_ns[3], d.slots[3][3]), (5, 600, 5));
        assert!(rows(&[a.since(&a)]).is_empty());
    }

    #[test]
    fn histograms_titled_like_libbpf_tools() {
        let t = hist_text(&form(MODE_DIST, false), &rows(&[cpu(3, 2, 20_000)]));
        assert!(t.starts_with("softirq = net_rx\n     usecs "), "{t}");
        assert!(t.contains("         8 -> 15         : 2 "), "{t}");
        assert!(t.ends_with("|\n\n"), "{t}");
        assert_eq!(vec_name(12), "vec12");
    }
}
