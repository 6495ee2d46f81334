//! `sockray softirqs` against loads the test makes: a loopback flood (UDP datagrams to 127.0.0.1, each
//! one a net_rx softirq on the sending CPU) and a timer load (receives with a 1 ms SO_RCVTIMEO and no
//! sender: each one arms a timer_list timer, expired in the timer softirq). Counts (-C) are checked
//! against /proc/softirqs, which the kernel counts where irq:softirq_entry fires: read before the
//! tool starts and after it exits (an upper bound), after it is ready and before it is stopped (a lower
//! bound), per vector and per CPU. Times are checked against libbpf-tools' softirqs on the same load in
//! the same run (on this host, where /usr/sbin/softirqs is installed). Needs root and BTF; see
//! common::require_bpf.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NET_RX: usize = 3;
const TIMER: usize = 1;
const LOAD: Duration = Duration::from_secs(2);

/// /proc/softirqs: counts[vec][cpu] (rows in vector order, as the kernel prints them).
fn proc_softirqs() -> Vec<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/softirqs").expect("/proc/softirqs");
    text.lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|n| n.parse().unwrap_or(0))
                .collect()
        })
        .collect()
}

fn diff(a: &[Vec<u64>], b: &[Vec<u64>], vec: usize, cpu: Option<usize>) -> u64 {
    let (a, b) = (&a[vec], &b[vec]);
    match cpu {
        Some(c) => b[c] - a[c],
        None => b.iter().sum::<u64>() - a.iter().sum::<u64>(),
    }
}

/// The loads: a UDP flood over loopback and a timer load, running until dropped (or `stop`).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Load {
    fn start(flood: bool, timers: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if flood {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let to = rx.local_addr().unwrap();
            let s = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                let buf = [7u8; 64];
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    if tx.send_to(&buf, to).is_ok() {
                        n += 1;
                    }
                }
                n
            }));
            let s = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 128];
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    if rx.recv(&mut buf).is_ok() {
                        n += 1;
                    }
                }
                n
            }));
        }
        if timers {
            let s = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                // SO_RCVTIMEO: the wait is schedule_timeout(), a timer_list timer
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(1)))
                    .unwrap();
                let mut buf = [0u8; 16];
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let _ = sock.recv(&mut buf);
                    n += 1;
                }
                n
            }));
        }
        Load { stop, threads }
    }

    /// Stops the load; what each thread did (datagrams sent, received; timed-out receives).
    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap()).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The JSON rows of one tick, by vector.
fn by_vec(rows: &[Value]) -> BTreeMap<usize, Value> {
    rows.iter()
        .filter(|r| r.get("vec").is_some())
        .map(|r| (u(r, "vec") as usize, r.clone()))
        .collect()
}

/// How many of `lo` entries /proc/softirqs counted the tool may not have seen. Never more than the
/// kernel counted (the upper bound is exact); but on Linux 6.18 (this host) BPF programs on
/// irq:softirq_entry, tp_btf and raw_tp alike, do not run for a few softirqs that /proc/softirqs and
/// ftrace's own ring both count (mostly rcu and sched on an idle CPU: ~0.5/s; no recursion miss is
/// reported for them). The loads' vectors (net_rx, timer) must be within 1% (+3); the others 20% (+5).
fn slack(vec: usize, lo: u64) -> u64 {
    if vec == NET_RX || vec == TIMER {
        lo / 100 + 3
    } else {
        lo / 5 + 5
    }
}

/// `-C --per-cpu` (optionally `-c CPU`, a forced path) on the flood and the timer load: every
/// vector's and every CPU's count between /proc/softirqs' lower and upper bounds.
fn counts_against_proc(extra: &[&str], env: &[(&str, &str)], cpu: Option<usize>) {
    let p0 = proc_softirqs();
    let mut args = vec!["-C", "--per-cpu"];
    args.extend_from_slice(extra);
    let t = Tracer::start_env("softirqs", &args, env);
    let p1 = proc_softirqs();
    let load = Load::start(true, true);
    thread::sleep(LOAD);
    let did = load.stop();
    let p2 = proc_softirqs();
    let trace = t.stop();
    let p3 = proc_softirqs();
    let rows = by_vec(&trace.rows);
    let ncpu = p0[0].len();
    assert!(
        did[0] > 1000 && did[2] > 20,
        "the load did too little: {did:?}"
    );
    for vec in 0..p0.len() {
        let (lo, hi) = (diff(&p1, &p2, vec, cpu), diff(&p0, &p3, vec, cpu));
        let got = rows.get(&vec).map_or(0, |r| u(r, "count"));
        if got < lo {
            eprintln!(
                "vector {vec}: {got} counted, /proc/softirqs {lo}..{hi}: {} unseen",
                lo - got
            );
        }
        assert!(
            lo.saturating_sub(slack(vec, lo)) <= got && got <= hi,
            "vector {vec}: {got} counted, /proc/softirqs says {lo}..{hi}; rows: {:?}",
            trace.rows
        );
        let Some(r) = rows.get(&vec) else { continue };
        assert!(r.get("total_ns").is_none(), "-C has no time: {r}");
        let cpus = r["cpus"].as_array().expect("--per-cpu: cpus");
        let sum: u64 = cpus.iter().map(|c| u(c, "count")).sum();
        assert_eq!(sum, got, "the CPUs' counts add up to the total: {r}");
        for c in cpus {
            let n = u(c, "cpu") as usize;
            assert!(n < ncpu, "{r}");
            if let Some(only) = cpu {
                assert_eq!(n, only, "-c {only}: another CPU's count: {r}");
            }
            let (lo, hi) = (diff(&p1, &p2, vec, Some(n)), diff(&p0, &p3, vec, Some(n)));
            assert!(
                lo.saturating_sub(slack(vec, lo)) <= u(c, "count") && u(c, "count") <= hi,
                "vector {vec} CPU {n}: /proc/softirqs says {lo}..{hi}: {r}"
            );
        }
    }
    let net_rx = rows.get(&NET_RX).map_or(0, |r| u(r, "count"));
    // with -c, the CPU may have run few of them; without, every datagram raised one (or a batch)
    if cpu.is_none() {
        assert!(net_rx > 500, "net_rx {net_rx} for {} datagrams", did[0]);
        assert!(
            rows.get(&TIMER).map_or(0, |r| u(r, "count")) > 20,
            "timer softirqs for {} timed-out receives: {:?}",
            did[2],
            trace.rows
        );
    }
}

#[test]
fn counts_match_proc_softirqs() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    counts_against_proc(&[], &[], None);
}

#[test]
fn one_cpu_counted_in_the_kernel() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let last = proc_softirqs()[0].len() - 1;
    counts_against_proc(&["-c", &last.to_string()], &[], Some(last));
}

/// The raw_tp path (what a kernel without tp_btf takes), counted as exactly.
#[test]
fn raw_tp_path_counts_alike() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    counts_against_proc(&[], &[("SOCKRAY_ATTACH", "raw_tp")], None);
}

/// Times: each vector's time and count, the CPUs' parts adding up; -d's histograms hold every run.
#[test]
fn times_and_histograms() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let t = Tracer::start("softirqs", &["-d", "--per-cpu"]);
    let load = Load::start(true, true);
    let began = Instant::now();
    thread::sleep(LOAD);
    let did = load.stop();
    let wall = began.elapsed();
    let trace = t.stop();
    let rows = by_vec(&trace.rows);
    let ncpu = proc_softirqs()[0].len() as u64;
    let net_rx = rows
        .get(&NET_RX)
        .unwrap_or_else(|| panic!("no net_rx row for {did:?}: {:?}", trace.rows));
    for r in rows.values() {
        let (count, total) = (u(r, "count"), u(r, "total_ns"));
        assert_eq!(s(r, "unit"), "usecs", "{r}");
        assert_eq!(u(r, "total"), total / 1000, "{r}");
        assert!(
            total < (wall.as_nanos() as u64 + 1_000_000_000) * ncpu,
            "more time than the CPUs had: {r}"
        );
        let buckets: u64 = r["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| u(b, "count"))
            .sum();
        assert_eq!(buckets, count, "every run in the histogram: {r}");
        let cpus = r["cpus"].as_array().unwrap();
        assert_eq!(cpus.iter().map(|c| u(c, "count")).sum::<u64>(), count);
        assert_eq!(cpus.iter().map(|c| u(c, "total_ns")).sum::<u64>(), total);
    }
    // runs whose entry was not seen, said (left out of the times)
    let um = trace
        .rows
        .iter()
        .find_map(|r| r.get("unmatched_exits").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no unmatched_exits record: {:?}", trace.rows));
    eprintln!("runs whose entry was not seen: {um}");
    // a run of net_rx handles at least one datagram: more than 100 ns
    assert!(
        u(net_rx, "count") > 100 && u(net_rx, "avg_ns") > 100,
        "{net_rx}"
    );
}

/// The table as people read it: BCC's header and rows, `-d`'s titles.
#[test]
fn table_like_bcc() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let t = Tracer::text("softirqs", &["-T"]);
    let load = Load::start(true, false);
    thread::sleep(Duration::from_millis(500));
    load.stop();
    let lines = t.stop_text();
    assert_eq!(
        lines[0], "Tracing soft irq event time... Hit Ctrl-C to end.",
        "{lines:?}"
    );
    let h = lines
        .iter()
        .position(|l| l == "SOFTIRQ          TOTAL_usecs")
        .unwrap_or_else(|| panic!("no BCC header: {lines:?}"));
    assert_eq!(lines[h - 1].len(), 8, "-T's HH:MM:SS above it: {lines:?}");
    assert!(
        lines[h + 1..]
            .iter()
            .any(|l| l.starts_with("net_rx ") && l.len() == 28),
        "a net_rx row, %-16s %11d: {lines:?}"
    );
    let t = Tracer::text("softirqs", &["-d", "-N"]);
    let load = Load::start(true, false);
    thread::sleep(Duration::from_millis(500));
    load.stop();
    let lines = t.stop_text();
    let at = lines
        .iter()
        .position(|l| l == "softirq = net_rx")
        .unwrap_or_else(|| panic!("no net_rx histogram: {lines:?}"));
    assert!(lines[at + 1].starts_with("     nsecs "), "{lines:?}");
}

/// Intervals come while the tool keeps running, each with what came since the one before.
#[test]
fn live_intervals() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let t = Tracer::start("softirqs", &["-C", "1"]);
    let started = Instant::now();
    let load = Load::start(true, false);
    let mut ticks = BTreeMap::new();
    while ticks.len() < 2 {
        let (r, _) = t.wait_line("an interval's net_rx", Duration::from_millis(2500), |l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["softirq"] == "net_rx" && !ticks.contains_key(&u(&v, "tick"))).then_some(v)
        });
        ticks.insert(u(&r, "tick"), u(&r, "count"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(3800),
        "the intervals came late: {:?}",
        started.elapsed()
    );
    let did = load.stop();
    // an interval is a second's worth, not the total so far: far from double the one before
    let counts: Vec<u64> = ticks.values().copied().collect();
    assert!(counts.iter().all(|&c| c > 100), "{counts:?} for {did:?}");
    t.stop();
}

/// libbpf-tools' softirqs, started beside ours on the same load: the same time per vector within a
/// few percent (both in nanoseconds: libbpf-tools truncates each run to whole usecs without -N).
#[test]
fn totals_match_libbpf_tools() {
    if !require_bpf() {
        return;
    }
    let theirs = "/usr/sbin/softirqs";
    if !std::path::Path::new(theirs).exists() {
        eprintln!("note: no {theirs} (libbpf-tools) here: the comparison is made where it is");
        return;
    }
    let _serial = serial();
    // under software emulation (the vmtest guests) libbpf-tools' totals run above ours
    let emulated = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("QEMU"));
    // both start while the machine is idle: libbpf-tools counts a run whose entry it did not see from
    // time 0 (its start slot is zero), which only a softirq running at its attach can make
    let mut lt = Command::new(theirs)
        .arg("-N")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn libbpf-tools softirqs");
    let ours = Tracer::text("softirqs", &["-N"]);
    // libbpf-tools says nothing when attached: give it the time ours took and some
    thread::sleep(Duration::from_millis(500));
    let load = Load::start(true, true);
    thread::sleep(LOAD);
    let did = load.stop();
    thread::sleep(Duration::from_millis(100));
    let mine = ours.stop_text();
    kill_by_pid(&mut lt, libc::SIGINT);
    let st = wait_timeout(&mut lt, STOP_TIMEOUT).expect("libbpf-tools softirqs did not exit");
    let out = lt.wait_with_output().unwrap();
    let theirs_text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        st.success() || st.code() == Some(0) || st.signal_ok(),
        "libbpf-tools: {st}"
    );
    let parse = |lines: &[&str]| -> BTreeMap<String, u64> {
        lines
            .iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 2).then(|| Some((f[0].to_string(), f[1].parse().ok()?)))?
            })
            .collect()
    };
    let mine_map = parse(&mine.iter().map(String::as_str).collect::<Vec<_>>());
    let theirs_map = parse(&theirs_text.lines().collect::<Vec<_>>());
    eprintln!("ours: {mine_map:?}\nlibbpf-tools: {theirs_map:?}\nload: {did:?}");
    for name in ["net_rx", "timer"] {
        let (a, b) = (
            *mine_map.get(name).unwrap_or(&0),
            *theirs_map.get(name).unwrap_or(&0),
        );
        assert!(a > 0 && b > 0, "{name}: ours {a}, libbpf-tools {b}");
        let off = (a as f64 - b as f64).abs() / b as f64;
        if emulated {
            // Under software emulation a BPF program costs as much as a short softirq handler, and each
            // tracer's window holds the other's programs (attached to the same tracepoints, run in
            // turn): the timer's few-usec runs came out 54% apart either way on guests (6.1: ours
            // 11.3 ms, libbpf-tools 7.3; 5.10: ours 14.7, libbpf-tools 53.6, which also times a run
            // whose entry it did not see from the last entry it saw). The flood's net_rx, longer runs,
            // stays within 20% there (6.6% seen); on real hardware both within 5%.
            eprintln!("note: {name}: ours {a} ns, libbpf-tools {b} ns under emulation");
            if name == "net_rx" {
                assert!(off < 0.2, "{name}: ours {a} ns, libbpf-tools {b} ns");
            }
            continue;
        }
        // net_rx (~1 s of runs) came within 0.4% in 10 runs here; the timer's ~250 runs of a few usecs
        // (~1.5 ms in all) within 0.4-5.4%: each tracer's window holds one of the other's programs
        let tolerance = if name == "timer" { 0.10 } else { 0.05 };
        assert!(
            off < tolerance,
            "{name}: ours {a} ns, libbpf-tools {b} ns ({:.1}% apart)\nours:\n{}\nlibbpf-tools:\n{theirs_text}",
            off * 100.0,
            mine.join("\n")
        );
    }
}

trait SignalOk {
    fn signal_ok(&self) -> bool;
}

impl SignalOk for std::process::ExitStatus {
    fn signal_ok(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.signal() == Some(libc::SIGINT)
    }
}
