//! `cargo xtask bench`: sockray against Debian's libbpf-tools, measured in one run on this machine.
//!
//! - start-up: time from spawn to the first line on stdout (the header, printed once the probes are
//!   attached; libbpf-tools run under `stdbuf -oL` so their header is not stuck in a stdio buffer),
//!   median of several starts, not pinned to a CPU (sockray loads its socket-owner seeding object on a
//!   second thread);
//! - peak RSS (VmHWM) of the tracer during the load run;
//! - loopback connection rate (connect/accept/close per second, a bounded generator in a fresh network
//!   namespace per run, pinned to the last CPU) with no tracer and with each tracer attached, rounds
//!   interleaved, median rate; every tracer run sits between two runs without a tracer, and its
//!   slowdown is 1 - rate(tracer)/mean(rate of those two), the median over the rounds (so drift of
//!   the machine's speed during the bench, which on a shared VM is several percent, cancels out),
//!   with the range of the rounds' slowdowns beside it (`--rounds N` for more rounds);
//!   The rate runs are made with kernel.bpf_stats_enabled off, as users run the tools;
//! - BPF run time per connection (`run_time_ns` of the tracer's programs) in one more load run per
//!   tracer with kernel.bpf_stats_enabled on; the tracer's CPU time per 1,000 connections (from attached
//!   to exit: its start-up is not counted);
//! - sockray's lost-event count (its `{"lost": N}` record) at that rate.
//!
//! Figures are ratios against baselines run in the same invocation; nothing here asserts timings.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use std::{env, fs, thread};

/// Connections per load run, starts per start-up measurement, interleaved load rounds.
const CONNS: u32 = 20_000;
const STARTS: usize = 5;
pub const ROUNDS: usize = 5;

/// The tools the bench knows (`--tool`), each measured against libbpf-tools' tool of the same name.
pub const TOOLS: [&str; 3] = ["tcplife", "tcpstates", "tcpconnect"];

unsafe extern "C" {
    safe fn kill(pid: i32, sig: i32) -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    safe fn sysconf(name: i32) -> i64;
}

const SC_NPROCESSORS_ONLN: i32 = 84;

/// CPUs online (not `available_parallelism`, which counts this process's affinity mask: after
/// `pin_to_cpu0` that is 1, and the load generator would have landed on the tracers' CPU).
fn online_cpus() -> usize {
    usize::try_from(sysconf(SC_NPROCESSORS_ONLN))
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Keeps the bench's own threads (the readers of the tracers' output) on CPU 0 with the tracers, off the
/// load generator's CPU.
fn pin_to_cpu0() {
    let mask = [1u64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY: a valid cpu_set_t-sized mask for this thread; threads started later inherit it.
    unsafe {
        sched_setaffinity(0, size_of_val(&mask), mask.as_ptr());
    }
}
const SIGINT: i32 = 2;

/// One tracer configuration: a name for the table and the command line (None: no tracer).
struct Tracer {
    name: String,
    argv: Option<Vec<String>>,
    /// sockray prints `{"lost":N,...}` last with --json
    sockray: bool,
}

fn tracers(sockray: &Path, tools: &[String]) -> Vec<Tracer> {
    let mut v = vec![Tracer {
        name: "none".into(),
        argv: None,
        sockray: false,
    }];
    for tool in TOOLS {
        // each sockray tool measured, with libbpf-tools' tool of that name beside it
        if !tools.iter().any(|t| t == tool) {
            continue;
        }
        v.push(Tracer {
            name: format!("sockray {tool}"),
            argv: Some(vec![
                sockray.display().to_string(),
                tool.into(),
                "--json".into(),
            ]),
            sockray: true,
        });
        let libbpf = Path::new("/usr/sbin").join(tool);
        if libbpf.exists() {
            v.push(Tracer {
                name: format!("libbpf-tools {tool}"),
                argv: Some(vec![
                    "stdbuf".into(),
                    "-oL".into(),
                    libbpf.display().to_string(),
                ]),
                sockray: false,
            });
        }
    }
    v
}

/// A started tracer: its process, a channel of stdout lines, and the last line kept at exit.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: thread::JoinHandle<Option<String>>,
}

/// Starts a tracer. `pinned`: on CPU 0, as in the load runs, where the load generator has the last CPU
/// to itself (see `load_run`); start-up is measured unpinned, as people run the tools.
fn start(argv: &[String], pinned: bool) -> Result<Running, String> {
    // (this process is pinned to CPU 0, see `pin_to_cpu0`: "unpinned" must undo that for the child)
    let cpus = if pinned {
        "0".to_string()
    } else {
        format!("0-{}", online_cpus() - 1)
    };
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpus]).args(argv);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv.join(" ")))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    // reads in large chunks, remembers only the first line (readiness) and the last one
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut lines = Lines::default();
        let mut first_sent = false;
        loop {
            let k = match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            lines.feed(&buf[..k]);
            if !first_sent && let Some(first) = &lines.first {
                let _ = tx.send(String::from_utf8_lossy(first).into_owned());
                first_sent = true;
            }
        }
        lines.last.map(|l| String::from_utf8_lossy(&l).into_owned())
    });
    Ok(Running {
        child,
        lines: rx,
        reader,
    })
}

/// Time the kernel spent running a process's BPF programs so far, in ns: the sum of `run_time_ns` over
/// the BPF program fds in /proc/PID/fdinfo (counted while kernel.bpf_stats_enabled is 1). Exact and
/// immune to scheduling noise, and the same measure for sockray and libbpf-tools.
fn bpf_run_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let Ok(info) = fs::read_to_string(e.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("run_time_ns:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Sets kernel.bpf_stats_enabled for a while, restores it after.
struct BpfStats(Option<String>);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn set(on: bool) -> BpfStats {
        let old = fs::read_to_string(Self::PATH).ok();
        let _ = fs::write(Self::PATH, if on { "1" } else { "0" });
        BpfStats(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(Self::PATH, old.trim());
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // fields after the command name (which may contain spaces) start at the last ')'
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

impl Running {
    /// Waits for the first stdout line (the tracer is attached); returns how long since `t0`.
    fn ready(&mut self, t0: Instant) -> Result<Duration, String> {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => Ok(t0.elapsed()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err("it printed nothing within 30 s".into()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("it exited before printing its header".into())
            }
        }
    }

    fn peak_rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// SIGINT, wait (bounded), and the last stdout line.
    fn stop(mut self) -> Option<String> {
        kill(self.child.id() as i32, SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.reader.join().ok().flatten();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().ok().flatten()
    }
}

/// The first and the last complete line of a stream fed in chunks, in time proportional to the input
/// (the tracer prints one line per connection: the bench's reader must not slow the load down).
#[derive(Default)]
struct Lines {
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    partial: Vec<u8>,
}

impl Lines {
    fn feed(&mut self, chunk: &[u8]) {
        let Some(end) = chunk.iter().rposition(|&b| b == b'\n') else {
            self.partial.extend_from_slice(chunk);
            return;
        };
        // the line that `partial` continues, up to the chunk's first newline
        let joined = |partial: &[u8], upto: usize| [partial, &chunk[..upto]].concat();
        if self.first.is_none() {
            let nl = chunk.iter().position(|&b| b == b'\n').unwrap_or(end);
            self.first = Some(joined(&self.partial, nl));
        }
        self.last = Some(match chunk[..end].iter().rposition(|&b| b == b'\n') {
            Some(nl) => chunk[nl + 1..end].to_vec(),
            None => joined(&self.partial, end),
        });
        self.partial.clear();
        self.partial.extend_from_slice(&chunk[end + 1..]);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A fresh network namespace for one load run, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(n: usize) -> Result<Netns, String> {
        let name = format!("sockray-bench-{}-{n}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !ok(&["netns", "add", &name]) || !ok(&["-n", &name, "link", "set", "lo", "up"]) {
            return Err(format!(
                "cannot create network namespace {name} (needs root and iproute2)"
            ));
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs the load generator (this binary, `__load N`) in a fresh netns; returns connections per second.
fn load_run(n: usize) -> Result<f64, String> {
    let ns = Netns::new(n)?;
    let exe = env::current_exe().map_err(|e| e.to_string())?;
    // pinned to one CPU: cross-CPU wake-ups between the generator's client and server threads made the
    // unpinned rate swing 3x between identical runs; the tracer's user space runs on the other CPU(s)
    let cpu = (online_cpus() - 1).to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "taskset", "-c", &cpu])
        .arg(exe)
        .args(["__load", &CONNS.to_string()])
        .output()
        .map_err(|e| format!("load generator: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "load generator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .map_err(|e| format!("load generator output: {e}"))
}

/// `__load N`: N sequential loopback connections: the client connects and sends 1 byte, the server
/// accepts, reads it and closes, the client reads EOF and closes. Lock-step, so the accept queue never
/// overflows (an overflow drops SYNs and the 1 s retransmit would dominate the figure). Prints
/// connections per second. Bounded by N and by socket time-outs.
pub fn load(args: &[std::ffi::OsString]) -> Result<(), String> {
    let n: u32 = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or("__load N")?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 1];
            let _ = s.read(&mut buf);
        }
    });
    let t0 = Instant::now();
    for _ in 0..n {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut s, b"x").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
        let _ = s.shutdown(Shutdown::Both);
    }
    let _ = server.join();
    println!("{:.1}", n as f64 / t0.elapsed().as_secs_f64());
    Ok(())
}

/// Per configuration, the slowdown of each of its runs against the mean of the baseline runs (index 0)
/// just before and after it.
fn paired_slowdowns(history: &[(usize, f64)], configs: usize) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new(); configs];
    for (k, &(i, rate)) in history.iter().enumerate() {
        if i == 0 {
            continue;
        }
        let before = history[..k].iter().rev().find(|(c, _)| *c == 0);
        let after = history[k + 1..].iter().find(|(c, _)| *c == 0);
        let base: Vec<f64> = before.into_iter().chain(after).map(|(_, r)| *r).collect();
        if !base.is_empty() {
            let mean = base.iter().sum::<f64>() / base.len() as f64;
            out[i].push(1.0 - rate / mean);
        }
    }
    out
}

fn lost_of(last: Option<String>) -> Option<u64> {
    let line = last?;
    let rest = line.trim().strip_prefix("{\"lost\":")?;
    let n = rest.split([',', '}']).next()?;
    n.trim().parse().ok()
}

/// Starts a tracer pinned to CPU 0 and waits until it is attached: its header, or for sockray's --json
/// (no header) the same settle time.
fn start_attached(t: &Tracer, argv: &[String]) -> Result<Running, String> {
    let mut r = start(argv, true)?;
    if t.sockray {
        thread::sleep(Duration::from_millis(300));
    } else {
        r.ready(Instant::now())?;
    }
    Ok(r)
}

/// Adds a sockray run's `{"lost": N}` (its last line) to the tracer's count.
fn add_lost(lost: &mut Option<u64>, t: &Tracer, last: Option<String>) -> Result<(), String> {
    if t.sockray {
        let n = lost_of(last)
            .ok_or_else(|| format!("{}: no {{\"lost\": N}} record at exit", t.name))?;
        *lost = Some(lost.unwrap_or(0) + n);
    }
    Ok(())
}

/// The whole benchmark; `sockray` is the release binary, `tools` what it offers.
pub fn run(sockray: &Path, tools: &[String], rounds: usize) -> Result<(), String> {
    let mut configs = tracers(sockray, tools);
    pin_to_cpu0();
    println!(
        "sockray bench: {CONNS} loopback connections per run, {rounds} rounds, {STARTS} starts per tool"
    );

    // start-up (table form: time to the header line)
    let mut startup: Vec<(String, f64)> = Vec::new();
    for t in configs.iter().filter(|t| t.argv.is_some()) {
        let mut argv = t.argv.clone().unwrap_or_default();
        argv.retain(|a| a != "--json");
        let mut times = Vec::new();
        for _ in 0..STARTS {
            let t0 = Instant::now();
            let mut r = start(&argv, false)?;
            match r.ready(t0) {
                Ok(d) => times.push(d.as_secs_f64() * 1000.0),
                Err(e) => {
                    println!("{}: does not run on this kernel ({e}); left out", t.name);
                    r.stop();
                    break;
                }
            }
            r.stop();
        }
        if times.len() == STARTS {
            startup.push((t.name.clone(), median(times)));
        }
    }
    configs.retain(|t| t.argv.is_none() || startup.iter().any(|(n, _)| *n == t.name));

    // load rounds, interleaved so drift hits every configuration alike
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut rss: Vec<u64> = vec![0; configs.len()];
    let mut cpu: Vec<f64> = vec![0.0; configs.len()];
    let mut bpf_ns: Vec<u64> = vec![0; configs.len()];
    // the rates are measured as users run the tools: without kernel.bpf_stats_enabled, which itself
    // costs two clock reads per program run (BPF time is measured in runs of its own, below)
    let _stats = BpfStats::set(false);
    let mut lost: Vec<Option<u64>> = vec![None; configs.len()];
    let mut run_no = 0;
    // every tracer run between two baseline runs: none, t1, none, t2, none, ...
    let mut sequence: Vec<usize> = Vec::new();
    for _ in 0..rounds {
        for i in 1..configs.len() {
            sequence.extend([0, i]);
        }
    }
    sequence.push(0);
    let mut history: Vec<(usize, f64)> = Vec::new();
    for &i in &sequence {
        let t = &configs[i];
        run_no += 1;
        let running = match &t.argv {
            Some(argv) => Some(start_attached(t, argv)?),
            None => None,
        };
        // the tracer's CPU time is counted from here: its start-up (loading, verifying) is not per connection
        let cpu_at_start = running.as_ref().map_or(0.0, |r| cpu_seconds(r.child.id()));
        let rate = load_run(run_no)?;
        rates[i].push(rate);
        history.push((i, rate));
        if let Some(r) = running {
            thread::sleep(Duration::from_millis(300));
            rss[i] = rss[i].max(r.peak_rss_kib());
            cpu[i] += cpu_seconds(r.child.id()) - cpu_at_start;
            add_lost(&mut lost[i], t, r.stop())?;
        }
    }
    let slowdowns = paired_slowdowns(&history, configs.len());

    // BPF run time per connection: one more load run per tracer with kernel.bpf_stats_enabled
    {
        let _on = BpfStats::set(true);
        for (i, t) in configs.iter().enumerate() {
            let Some(argv) = &t.argv else { continue };
            run_no += 1;
            let r = start_attached(t, argv)?;
            load_run(run_no)?;
            thread::sleep(Duration::from_millis(300));
            bpf_ns[i] = bpf_run_ns(r.child.id());
            add_lost(&mut lost[i], t, r.stop())?;
        }
    }

    println!();
    println!(
        "{:<24} {:>11} {:>13} {:>10} {:>9} {:>13} {:>12} {:>10} {:>6}",
        "TRACER",
        "START(ms)",
        "PEAK_RSS(MiB)",
        "CONN/s",
        "SLOWDOWN",
        "ROUNDS_RANGE",
        "BPF_NS/CONN",
        "CPU_MS/1K",
        "LOST"
    );
    for (i, t) in configs.iter().enumerate() {
        let st = startup
            .iter()
            .find(|(n, _)| *n == t.name)
            .map(|(_, ms)| format!("{ms:.1}"))
            .unwrap_or("-".into());
        let mem = if t.argv.is_some() {
            format!("{:.1}", rss[i] as f64 / 1024.0)
        } else {
            "-".into()
        };
        let rate = median(rates[i].clone());
        let (slow, range) = if i == 0 || slowdowns[i].is_empty() {
            ("-".into(), "-".into())
        } else {
            let s = &slowdowns[i];
            let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (
                format!("{:.1}%", median(s.clone()) * 100.0),
                format!("{:.1}..{:.1}", lo * 100.0, hi * 100.0),
            )
        };
        let lo = lost[i].map(|n| n.to_string()).unwrap_or("-".into());
        let conns = (CONNS as usize * rounds) as f64;
        let (kns, ucpu) = if t.argv.is_some() {
            (
                format!("{:.0}", bpf_ns[i] as f64 / CONNS as f64),
                format!("{:.1}", cpu[i] * 1e6 / conns),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:<24} {st:>11} {mem:>13} {rate:>10.0} {slow:>9} {range:>13} {kns:>12} {ucpu:>10} {lo:>6}",
            t.name
        );
    }
    println!();
    for tool in TOOLS {
        let find = |n: &str| configs.iter().position(|t| t.name == n);
        let (Some(s), Some(l)) = (
            find(&format!("sockray {tool}")),
            find(&format!("libbpf-tools {tool}")),
        ) else {
            continue;
        };
        let st = |n: &str| {
            startup
                .iter()
                .find(|(x, _)| x == n)
                .map(|(_, v)| *v)
                .unwrap_or(f64::NAN)
        };
        println!(
            "{tool}: start-up sockray/libbpf-tools = {:.2}, peak RSS sockray/libbpf-tools = {:.2}",
            st(&configs[s].name) / st(&configs[l].name),
            rss[s] as f64 / rss[l].max(1) as f64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_line_of_chunks() {
        let mut l = Lines::default();
        l.feed(b"hea");
        assert_eq!((l.first.as_deref(), l.last.as_deref()), (None, None));
        l.feed(b"der\nrow1\nro");
        assert_eq!(l.first.as_deref(), Some(&b"header"[..]));
        assert_eq!(l.last.as_deref(), Some(&b"row1"[..]));
        l.feed(b"w2");
        l.feed(b"\n{\"lost\":0}\n");
        assert_eq!(l.first.as_deref(), Some(&b"header"[..]));
        assert_eq!(l.last.as_deref(), Some(&b"{\"lost\":0}"[..]));
        l.feed(b"a\nb");
        l.feed(b"c\n");
        assert_eq!(l.last.as_deref(), Some(&b"bc"[..]));
    }

    #[test]
    fn slowdowns_against_neighbouring_baselines() {
        // none 100, t1 90, none 110, t2 50, none 90
        let h = [(0, 100.0), (1, 90.0), (0, 110.0), (2, 50.0), (0, 90.0)];
        let s = paired_slowdowns(&h, 3);
        assert!(s[0].is_empty());
        assert_eq!(s[1].len(), 1);
        assert!((s[1][0] - (1.0 - 90.0 / 105.0)).abs() < 1e-12);
        assert!((s[2][0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn online_cpus_ignores_this_process_affinity() {
        let before = online_cpus();
        assert!(before >= 1);
        pin_to_cpu0();
        assert_eq!(online_cpus(), before);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn lost_record_is_parsed() {
        assert_eq!(lost_of(Some("{\"lost\":0}".into())), Some(0));
        assert_eq!(lost_of(Some("{\"lost\":1234}\n".into())), Some(1234));
        assert_eq!(lost_of(Some("{\"pid\":1}".into())), None);
        assert_eq!(lost_of(None), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_read() {
        // burn a little CPU so the counter is above zero
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
