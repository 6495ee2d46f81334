//! `cargo xtask bench`: sockray against Debian's libbpf-tools, measured in one run on this machine.
//!
//! - start-up as users see it: each tracer in table form with its stdin and stdout on a new
//!   pseudo-terminal (where a C tool's stdout is line buffered, as on a user's terminal: no wrapper on
//!   either side), started directly (its CPU affinity set between fork and exec), not pinned to a CPU
//!   (sockray loads its socket-owner seeding object on a second thread), timed from spawn to its first
//!   line there (the header, printed once the probes are attached); `--starts N` (11 by default) timed
//!   starts per tracer after an untimed one, the tracers taking turns (sockray tcplife, libbpf-tools
//!   tcplife, sockray tcpstates, ...), shown as median, quartiles and range. `--startup-only` stops
//!   there;
//! - peak RSS (VmHWM) of the tracer during the load run;
//! - loopback connection rate (connect/accept/close per second) with no tracer and with each tracer
//!   attached (sockray's with `--json` into a pipe, any other's on a pty, whose header says it is
//!   attached): one bounded load generator runs through the whole measurement, in a network namespace
//!   of its own, pinned to the last CPU, and reports the time of every 250th connection; tracers come
//!   and go on CPU 0, each traced interval (300 ms, from 100 ms after the tracer says it is attached)
//!   between two 300 ms intervals without a tracer. A traced interval's slowdown is
//!   1 - rate(traced)/mean(rate of those two), and the figure is the median over the steady rounds
//!   (those two within 3% of each other: the VM's speed did not step during the round; all rounds if
//!   fewer than 5 are steady) of `--rounds N` (20 by default), with their range beside it. Short
//!   intervals close together, because this VM's speed moves in steps of ±15% every few seconds
//!   (neighbours on the host): consecutive seconds agree within ~2%, runs a minute apart do not.
//!   The rates are measured with kernel.bpf_stats_enabled off, as users run the tools;
//! - the same slowdown measured toggled, for sockray's tracers: one tracer started once with
//!   SOCKRAY_BENCH_TOGGLE, its programs detached and attached in alternation (200 ms intervals, 3x
//!   `--rounds` attached ones), so that no process start or exit falls between a traced interval and
//!   its neighbours: more rounds fit between two of the VM's speed steps, and the figure is tighter;
//! - BPF run time per connection (`run_time_ns` of the tracer's programs) in one more traced interval
//!   per tracer with kernel.bpf_stats_enabled on; the tracer's CPU time per 1,000 connections, within the
//!   traced intervals (its start-up is not counted);
//! - sockray's lost-event count (its `{"lost": N}` record) over all of its runs.
//!
//! `--load transfer` replaces the connection flood with one loopback connection carrying 1 KiB writes
//! (the worst case for a hook per send, receive or segment: tcptop, tcpsubnet, tcprtt, measured under
//! it by default), marked every 10,000 writes; rates and BPF time are then per write.
//!
//! `--load packets` replaces it with a UDP packet flood over a veth pair between two namespaces of the
//! bench (64-byte datagrams from the first to the second, marked every 10,000): the load of netqtop,
//! which runs in the first namespace watching its end of the pair.
//!
//! Figures are ratios against baselines run in the same invocation; nothing here asserts timings.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use std::{env, fs, thread};

/// Pause after a tracer's exit before the next start: the kernel frees a BPF object's programs and
/// maps after an RCU grace period, off the next start's clock.
const STARTUP_GAP: Duration = Duration::from_millis(100);

/// What `cargo xtask bench` was asked for.
pub struct Options {
    /// traced intervals per tracer
    pub rounds: usize,
    /// other tracer command lines to measure
    pub extra: Vec<String>,
    /// print every interval's rate
    pub verbose: bool,
    /// timed starts per tracer
    pub starts: usize,
    /// the start-up measurement only
    pub startup_only: bool,
    /// what the load generator does while the tracers come and go
    pub load: Load,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rounds: 20,
            extra: Vec::new(),
            verbose: false,
            starts: 11,
            startup_only: false,
            load: Load::Connections,
        }
    }
}

/// The tools the bench knows (`--tool`), each measured against libbpf-tools' tool of the same name.
pub const TOOLS: [&str; 12] = [
    "tcplife",
    "tcpstates",
    "tcpconnect",
    "tcpretrans",
    "tcpsynbl",
    "tcptop",
    "tcpsubnet",
    "tcprtt",
    "tcpcong",
    "netqtop",
    "sofdsnoop",
    "softirqs",
];

/// The tools on the packet path (a hook per packet of a device), measured by default under the veth
/// packet flood (`--load packets`), and only there.
pub const PACKET_TOOLS: [&str; 1] = ["netqtop"];

/// The tools on the data path (a hook per send, receive or segment), measured by default under the
/// transfer load (`--load transfer`); the others by default under the connection flood.
pub const DATA_PATH_TOOLS: [&str; 3] = ["tcptop", "tcpsubnet", "tcprtt"];

/// The load a tool is measured under by default: the one that runs its hooks most often without giving
/// it anything to show (sofdsnoop: sendmsg/recvmsg on a Unix socket without control messages).
pub fn default_load(tool: &str) -> Load {
    if DATA_PATH_TOOLS.contains(&tool) {
        Load::Transfer
    } else if PACKET_TOOLS.contains(&tool) || tool == "softirqs" {
        // softirqs: every packet of the flood raises net_rx (and net_tx) softirqs
        Load::Packets
    } else if tool == "sofdsnoop" {
        Load::UnixMsg
    } else {
        Load::Connections
    }
}

/// The tools with a `--walk` mode (sockets' counters walked each interval), measured beside the default.
pub const WALK_TOOLS: [&str; 2] = ["tcptop", "tcpsubnet"];

/// The load the tracers are measured under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// sequential loopback connections (connect, 1 byte, accept, read, close): per-connection hooks
    Connections,
    /// one loopback connection carrying 1 KiB writes (the worst case for per-send hooks)
    Transfer,
    /// 64-byte UDP datagrams over a veth pair between two namespaces (per-packet device hooks)
    Packets,
    /// sendmsg() of 64 bytes and recvmsg() of them over a Unix socketpair, without control messages
    /// (what sofdsnoop's hooks must let pass cheaply)
    UnixMsg,
}

impl Load {
    pub fn parse(s: &str) -> Option<Load> {
        match s {
            "conn" | "connections" => Some(Load::Connections),
            "transfer" | "xfer" => Some(Load::Transfer),
            "packets" | "veth" => Some(Load::Packets),
            "unixmsg" => Some(Load::UnixMsg),
            _ => None,
        }
    }

    /// `__load`'s argument
    fn arg(self) -> &'static str {
        match self {
            Load::Connections => "conn",
            Load::Transfer => "transfer",
            Load::Packets => "packets",
            Load::UnixMsg => "unixmsg",
        }
    }

    /// Operations per mark: ~25 ms at this machine's rate (~10,000 connections/s; ~400,000 writes/s),
    /// fine enough for intervals of half a second.
    fn mark_every(self) -> u32 {
        match self {
            Load::Connections => 250,
            Load::Transfer | Load::Packets | Load::UnixMsg => 10_000,
        }
    }

    /// the unit of the rate and of the per-operation figures
    fn unit(self) -> &'static str {
        match self {
            Load::Connections => "CONN",
            Load::Transfer => "WRITE",
            Load::Packets => "PKT",
            Load::UnixMsg => "MSG",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Load::Connections => "a running loopback connection load",
            Load::Transfer => "a running loopback transfer in 1 KiB writes",
            Load::Packets => "a running UDP packet flood over a veth pair",
            Load::UnixMsg => "sendmsg()/recvmsg() over a Unix socketpair, no control messages",
        }
    }
}

unsafe extern "C" {
    safe fn kill(pid: i32, sig: i32) -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    safe fn sysconf(name: i32) -> i64;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    // in glibc's libc.so.6 since 2.34 (libutil before)
    fn openpty(
        master: *mut i32,
        slave: *mut i32,
        name: *mut u8,
        termios: *const u8,
        winsize: *const Winsize,
    ) -> i32;
}

#[repr(C)]
struct Winsize {
    rows: u16,
    cols: u16,
    xpixel: u16,
    ypixel: u16,
}

/// A new pseudo-terminal (default termios, as a terminal emulator's: line discipline, echo, ONLCR) of
/// 50x200 cells: its master and slave ends.
fn open_pty() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    let size = Winsize {
        rows: 50,
        cols: 200,
        xpixel: 0,
        ypixel: 0,
    };
    // SAFETY: valid out-pointers; no name buffer, default termios
    let rc = unsafe {
        openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(format!("openpty: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: two fds just opened, owned by nothing else
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    })
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

const CLOCK_MONOTONIC: i32 = 1;

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
        let mut argv = vec![
            sockray.display().to_string(),
            tool.into(),
            "--json".into(),
            "--verbose".into(),
        ];
        if PACKET_TOOLS.contains(&tool) {
            // in the flood's first namespace, watching its end of the veth pair
            let (ns, dev) = PacketLink::names();
            argv.splice(0..0, ["ip".into(), "netns".into(), "exec".into(), ns]);
            argv.extend(["-n".into(), dev]);
        }
        v.push(Tracer {
            name: format!("sockray {tool}"),
            argv: Some(argv),
            sockray: true,
        });
        if WALK_TOOLS.contains(&tool) {
            // issue 15's design (b): the same counts from a socket walk per interval, no data-path hook
            v.push(Tracer {
                name: format!("sockray {tool} --walk"),
                argv: Some(vec![
                    sockray.display().to_string(),
                    tool.into(),
                    "--walk".into(),
                    "--json".into(),
                    "--verbose".into(),
                ]),
                sockray: true,
            });
        }
        let libbpf = Path::new("/usr/sbin").join(tool);
        if libbpf.exists() {
            v.push(Tracer {
                name: format!("libbpf-tools {tool}"),
                argv: Some(vec![libbpf.display().to_string()]),
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
    /// toggled (see [`start_toggled`]): its stdin, and its "sockray: bench attached/detached" lines
    toggle: Option<(std::process::ChildStdin, mpsc::Receiver<bool>)>,
}

/// Starts a tracer. `pinned`: on CPU 0, as in the load runs, where the load generator has the last CPU
/// to itself (see `Generator::start`); start-up is measured unpinned, as people run the tools. `pty`:
/// its stdin and stdout on a new pseudo-terminal, as on a user's terminal (and a C tool's stdout line
/// buffered, as there), else stdout into a pipe.
fn start(argv: &[String], pinned: bool, pty: bool) -> Result<Running, String> {
    start_with(argv, pinned, false, pty)
}

/// Starts a sockray tracer pinned to CPU 0 with SOCKRAY_BENCH_TOGGLE: its programs can then be detached
/// and attached again while it runs ([`Running::switch`]).
fn start_toggled(argv: &[String]) -> Result<Running, String> {
    start_with(argv, true, true, false)
}

fn start_with(argv: &[String], pinned: bool, toggled: bool, pty: bool) -> Result<Running, String> {
    use std::os::unix::process::CommandExt;
    let (exe, args) = argv.split_first().ok_or("an empty command line")?;
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if toggled {
        cmd.env("SOCKRAY_BENCH_TOGGLE", "1");
    }
    // the CPUs it may run on, set in the child before exec (this process is pinned to CPU 0, see
    // `pin_to_cpu0`: "unpinned" must undo that), so that no wrapper's exec is timed with the tool
    let mut mask = [0u64; 16];
    for cpu in 0..if pinned { 1 } else { online_cpus().min(1024) } {
        mask[cpu / 64] |= 1 << (cpu % 64);
    }
    // SAFETY: sched_setaffinity is async-signal-safe; the mask is a copy owned by the closure
    unsafe {
        cmd.pre_exec(move || {
            if sched_setaffinity(0, size_of_val(&mask), mask.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let master = if pty {
        let (master, slave) = open_pty()?;
        let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(|e| format!("pty: {e}"));
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(slave));
        Some(master)
    } else {
        cmd.stdin(if toggled {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped());
        None
    };
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv.join(" ")))?;
    // the slave's last copies in this process (kept by `cmd`): closed, so that the master reads EIO
    // once the tracer is gone
    drop(cmd);
    let mut out: Box<dyn Read + Send> = match master {
        Some(m) => Box::new(fs::File::from(m)),
        None => Box::new(child.stdout.take().ok_or("no stdout")?),
    };
    let err = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    // sockray --verbose says when it is attached ("sockray: ready ...") on stderr, also with --json,
    // which has no header line
    let ready_tx = tx.clone();
    let (ack_tx, ack_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            if line.starts_with("sockray: ready") {
                let _ = ready_tx.send(line);
            } else if let Some(state) = line.strip_prefix("sockray: bench ") {
                let _ = ack_tx.send(state == "attached");
            }
        }
    });
    let toggle = if toggled {
        Some((child.stdin.take().ok_or("no stdin")?, ack_rx))
    } else {
        None
    };
    // reads in large chunks, remembers only the first line (readiness) and the last one (a pty's
    // master reads EIO, not EOF, once the slave is closed)
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
        toggle,
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
    /// Waits for the first stdout line or sockray's "ready" (the tracer is attached); returns how long
    /// since `t0`.
    fn ready(&mut self, t0: Instant) -> Result<Duration, String> {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => Ok(t0.elapsed()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err("it printed nothing within 30 s".into()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("it exited before printing its header".into())
            }
        }
    }

    /// A toggled tracer's programs attached (`on`) or detached; returns once it says it is done.
    fn switch(&mut self, on: bool) -> Result<(), String> {
        let (stdin, acks) = self.toggle.as_mut().ok_or("not a toggled tracer")?;
        std::io::Write::write_all(stdin, if on { b"1\n" } else { b"0\n" })
            .and_then(|()| std::io::Write::flush(stdin))
            .map_err(|e| format!("toggling: {e}"))?;
        match acks.recv_timeout(Duration::from_secs(5)) {
            Ok(state) if state == on => Ok(()),
            Ok(_) => Err("toggling: it says the other state".into()),
            Err(_) => Err("toggling: no answer (SOCKRAY_BENCH_TOGGLE not supported?)".into()),
        }
    }

    fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    /// SIGINT, wait (bounded), and the last stdout line.
    fn stop(self) -> Option<String> {
        stop_process(self.child, Duration::from_secs(10));
        self.reader.join().ok().flatten()
    }
}

/// A process's peak RSS (VmHWM) so far, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// SIGINT to a process this bench started, and its exit awaited (SIGKILL after `limit`).
pub(crate) fn stop_process(mut child: Child, limit: Duration) {
    kill(child.id() as i32, SIGINT);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
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
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new() -> Result<Netns, String> {
        let name = format!("sockray-bench-{}", std::process::id());
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

/// The packet flood's link (`--load packets`): namespaces `sockray-bench-PID` (the generator, 10.99.0.1)
/// and `sockray-bench-PID-b` (10.99.0.2) joined by a veth pair, the neighbour entry permanent (no ARP),
/// IPv6 off; made before the start-up runs (netqtop looks the device up at start), deleted on drop.
pub(crate) struct PacketLink {
    _a: Netns,
    _b: Netns,
}

impl PacketLink {
    /// The first namespace and its device.
    fn names() -> (String, String) {
        let pid = std::process::id();
        (
            format!("sockray-bench-{pid}"),
            format!("sbq{}a", pid % 1_000_000),
        )
    }

    fn new() -> Result<PacketLink, String> {
        let a = Netns::new()?;
        let b = Netns(format!("{}-b", a.0));
        let (_, dev_a) = Self::names();
        let dev_b = dev_a.replace('a', "b");
        let mac_b = "02:00:00:00:99:02";
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &b.0],
            vec![
                "link", "add", &dev_a, "netns", &a.0, "type", "veth", "peer", "name", &dev_b,
                "netns", &b.0,
            ],
            vec!["-n", &b.0, "link", "set", &dev_b, "address", mac_b],
            vec!["-n", &a.0, "addr", "add", "10.99.0.1/24", "dev", &dev_a],
            vec!["-n", &b.0, "addr", "add", "10.99.0.2/24", "dev", &dev_b],
            vec!["-n", &a.0, "link", "set", &dev_a, "up"],
            vec!["-n", &b.0, "link", "set", &dev_b, "up"],
            vec![
                "-n",
                &a.0,
                "neigh",
                "replace",
                "10.99.0.2",
                "lladdr",
                mac_b,
                "dev",
                &dev_a,
                "nud",
                "permanent",
            ],
        ];
        for args in &steps {
            let ok = Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(format!("packet link: ip {} failed", args.join(" ")));
            }
        }
        for ns in [&a.0, &b.0] {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .arg("net.ipv6.conf.all.disable_ipv6=1")
                .status();
        }
        Ok(PacketLink { _a: a, _b: b })
    }
}

/// The monotonic clock in ns: CLOCK_MONOTONIC, the same clock in the bench and in the generator.
fn mono_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC always exists
    unsafe {
        clock_gettime(CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The load generator, running for the whole rate measurement: this binary's `__load W MAX_S` in a
/// network namespace of its own, pinned to the last CPU, reporting the time of every W-th connection.
struct Generator {
    child: Child,
    /// the times (mono_ns) at which it had made 0, W, 2W, ... connections (or writes)
    marks: thread::JoinHandle<Vec<u64>>,
    every: u32,
    /// its own namespace (the packet flood's is the [`PacketLink`]'s)
    _ns: Option<Netns>,
}

impl Generator {
    fn start(max_s: u64, load: Load) -> Result<Generator, String> {
        let ns = match load {
            Load::Packets => None,
            _ => Some(Netns::new()?),
        };
        let ns_name = ns
            .as_ref()
            .map_or_else(|| PacketLink::names().0, |n| n.0.clone());
        let exe = env::current_exe().map_err(|e| e.to_string())?;
        // pinned to one CPU: cross-CPU wake-ups between the generator's client and server threads made
        // the unpinned rate swing 3x between identical runs; the tracers' user space runs on CPU 0
        let cpu = (online_cpus() - 1).to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns_name, "taskset", "-c", &cpu])
            .arg(exe)
            .args([
                "__load",
                &load.mark_every().to_string(),
                &max_s.to_string(),
                load.arg(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("load generator: {e}"))?;
        let out = child.stdout.take().ok_or("load generator: no stdout")?;
        let marks = thread::spawn(move || {
            std::io::BufRead::lines(std::io::BufReader::new(out))
                .map_while(Result::ok)
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .collect()
        });
        Ok(Generator {
            child,
            marks,
            every: load.mark_every(),
            _ns: ns,
        })
    }

    /// Closes its stdin (it stops after the connection in progress) and returns its marks.
    fn stop(mut self) -> Result<Marks, String> {
        drop(self.child.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let marks = self
            .marks
            .join()
            .map_err(|_| "load generator reader panicked")?;
        if !status.success() {
            return Err(format!("load generator failed ({status})"));
        }
        Ok(Marks(marks, self.every))
    }
}

/// The generator's marks: the times at which it had made 0, W, 2W, ... operations; and W.
struct Marks(Vec<u64>, u32);

impl Marks {
    /// Operations made within [a, b) (whole windows of W only) and the seconds they took.
    fn within(&self, a: u64, b: u64) -> Option<(u64, f64)> {
        let first = self.0.iter().position(|&t| t >= a)?;
        let last = self.0.iter().rposition(|&t| t <= b)?;
        (last > first).then(|| {
            (
                (last - first) as u64 * self.1 as u64,
                (self.0[last] - self.0[first]) as f64 / 1e9,
            )
        })
    }
}

/// `__load W MAX_S`: sequential loopback connections until stdin closes (or MAX_S seconds): the client
/// connects and sends 1 byte, the server accepts, reads it and closes, the client reads EOF and closes.
/// Lock-step, so the accept queue never overflows (an overflow drops SYNs and the 1 s retransmit would
/// dominate the figure). Prints the time (CLOCK_MONOTONIC ns) at the start and after every W
/// connections. Bounded by MAX_S and by socket time-outs.
pub fn load(args: &[std::ffi::OsString]) -> Result<(), String> {
    let arg = |i: usize| {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&v| v > 0)
            .ok_or("__load W MAX_S")
    };
    let (every, max_s) = (arg(0)?, arg(1)?);
    let kind = args.get(2).and_then(|a| a.to_str());
    let transfer = kind == Some("transfer");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        // stdin closed: the bench is done
        thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    if kind == Some("packets") {
        return packet_load(every, max_s, &stop);
    }
    if kind == Some("unixmsg") {
        return unixmsg_load(every, max_s, &stop);
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if transfer {
        return transfer_load(listener, every, max_s, &stop);
    }
    thread::spawn(move || {
        loop {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 1];
            let _ = s.read(&mut buf);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(max_s);
    println!("{}", mono_ns());
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut s, b"x").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
        let _ = s.shutdown(Shutdown::Both);
        n += 1;
        if n.is_multiple_of(every) {
            println!("{}", mono_ns());
        }
    }
    // the server thread is blocked in accept(): leave without joining it
    std::process::exit(0)
}

/// `__load W MAX_S packets`: 64-byte UDP datagrams from 10.99.0.1 to 10.99.0.2 (the [`PacketLink`]),
/// as fast as one thread sends them, until stdin closes (or MAX_S seconds); prints the time at the start
/// and after every W datagrams. Nothing listens there: the far end drops them (its ICMP errors are
/// rate-limited by the kernel).
fn packet_load(every: u64, max_s: u64, stop: &std::sync::atomic::AtomicBool) -> Result<(), String> {
    let s = std::net::UdpSocket::bind("10.99.0.1:0").map_err(|e| e.to_string())?;
    let to: std::net::SocketAddr = "10.99.0.2:9".parse().map_err(|e| format!("{e}"))?;
    let buf = [b'x'; 64];
    let deadline = Instant::now() + Duration::from_secs(max_s);
    println!("{}", mono_ns());
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        // a full socket buffer (ENOBUFS) or an ICMP error reported back: not sent, not counted
        if s.send_to(&buf, to).is_ok() {
            n += 1;
            if n.is_multiple_of(every) {
                println!("{}", mono_ns());
            }
        }
    }
    Ok(())
}

/// `__load W MAX_S unixmsg`: sendmsg() of 64 bytes on one end of a Unix stream socketpair, recvmsg()
/// of them on the other, by one thread, no control messages; until stdin closes (or MAX_S seconds);
/// prints the time at the start and after every W messages (a sendmsg and its recvmsg).
fn unixmsg_load(
    every: u64,
    max_s: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let (a, b) = (
        std::os::fd::AsRawFd::as_raw_fd(&a),
        std::os::fd::AsRawFd::as_raw_fd(&b),
    );
    let mut out = [b'x'; 64];
    let mut back = [0u8; 64];
    let mut iov_out = Iovec {
        base: out.as_mut_ptr(),
        len: out.len(),
    };
    let mut iov_back = Iovec {
        base: back.as_mut_ptr(),
        len: back.len(),
    };
    let send_hdr = Msghdr::over(&mut iov_out);
    let mut recv_hdr = Msghdr::over(&mut iov_back);
    let deadline = Instant::now() + Duration::from_secs(max_s);
    println!("{}", mono_ns());
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        // SAFETY: msghdrs over live buffers, on our own sockets
        let (s, r) = unsafe { (sendmsg(a, &send_hdr, 0), recvmsg(b, &mut recv_hdr, 0)) };
        if s != 64 || r != 64 {
            return Err(format!(
                "sendmsg/recvmsg: {}",
                std::io::Error::last_os_error()
            ));
        }
        n += 1;
        if n.is_multiple_of(every) {
            println!("{}", mono_ns());
        }
    }
    Ok(())
}

#[repr(C)]
struct Iovec {
    base: *mut u8,
    len: usize,
}

/// struct msghdr (x86_64), without name or control messages
#[repr(C)]
struct Msghdr {
    name: *mut u8,
    namelen: u32,
    iov: *mut Iovec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
}

impl Msghdr {
    fn over(iov: &mut Iovec) -> Msghdr {
        Msghdr {
            name: std::ptr::null_mut(),
            namelen: 0,
            iov,
            iovlen: 1,
            control: std::ptr::null_mut(),
            controllen: 0,
            flags: 0,
        }
    }
}

unsafe extern "C" {
    fn sendmsg(fd: i32, msg: *const Msghdr, flags: i32) -> isize;
    fn recvmsg(fd: i32, msg: *mut Msghdr, flags: i32) -> isize;
}

/// `__load W MAX_S transfer`: one loopback connection, the client writing 1 KiB at a time (one write()
/// each) until stdin closes (or MAX_S seconds), the server reading 64 KiB at a time; prints the time at
/// the start and after every W writes.
fn transfer_load(
    listener: TcpListener,
    every: u64,
    max_s: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = vec![0u8; 65536];
        while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
    });
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let chunk = [b'x'; 1024];
    let deadline = Instant::now() + Duration::from_secs(max_s);
    println!("{}", mono_ns());
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        std::io::Write::write_all(&mut s, &chunk).map_err(|e| e.to_string())?;
        n += 1;
        if n.is_multiple_of(every) {
            println!("{}", mono_ns());
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    let _ = server.join();
    Ok(())
}

/// A round is steady when its two intervals without a tracer agree within this fraction of their mean:
/// the VM's speed did not step during it (a step of ~15% in one of three intervals makes a round say
/// -25..+30% whatever the tracer costs).
const STEADY: f64 = 0.03;

/// Steady rounds needed for the figure to be theirs alone; with fewer, all rounds count.
const MIN_STEADY: usize = 5;

/// One traced interval against its neighbours without a tracer.
#[derive(Clone, Copy, Debug)]
struct Round {
    slowdown: f64,
    steady: bool,
}

/// Per configuration, the slowdown of each of its runs against the mean of the baseline runs (index 0)
/// just before and after it, and whether that round was steady.
fn paired_slowdowns(history: &[(usize, f64)], configs: usize) -> Vec<Vec<Round>> {
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
            let steady = base.len() == 2 && (base[0] - base[1]).abs() <= STEADY * mean;
            out[i].push(Round {
                slowdown: 1.0 - rate / mean,
                steady,
            });
        }
    }
    out
}

/// The slowdowns that make the figure: the steady rounds', or all when fewer than MIN_STEADY are.
fn counted(rounds: &[Round]) -> Vec<f64> {
    let steady: Vec<f64> = rounds
        .iter()
        .filter(|r| r.steady)
        .map(|r| r.slowdown)
        .collect();
    if steady.len() >= MIN_STEADY {
        steady
    } else {
        rounds.iter().map(|r| r.slowdown).collect()
    }
}

fn lost_of(last: Option<String>) -> Option<u64> {
    let line = last?;
    let rest = line.trim().strip_prefix("{\"lost\":")?;
    let n = rest.split([',', '}']).next()?;
    n.trim().parse().ok()
}

/// Starts a tracer pinned to CPU 0 and waits until it is attached: its header, or sockray's "ready"
/// (--verbose; --json has no header).
fn start_attached(t: &Tracer, argv: &[String]) -> Result<Running, String> {
    // sockray --json into a pipe (its lost-event record read at exit, "ready" on stderr); any other
    // tracer's header on a pty, where its stdout is line buffered as on a user's terminal
    let mut r = start(argv, true, !t.sockray)?;
    r.ready(Instant::now())
        .map_err(|e| format!("{}: {e}", t.name))?;
    Ok(r)
}

/// The load before the first interval (the generator's own start), without a tracer, with a tracer
/// attached, the tracer's settling after attach (its start-up work, e.g. sockray's socket seeding), and
/// after its exit.
const WARM_UP: Duration = Duration::from_millis(1000);
const SPAN: Duration = Duration::from_millis(300);
const SETTLE: Duration = Duration::from_millis(100);
const GAP: Duration = Duration::from_millis(50);

/// One measured interval of the running load: without a tracer, or with one attached.
struct Interval {
    config: usize,
    /// start and end (mono_ns)
    a: u64,
    b: u64,
    /// the tracer's CPU time (user + system) and its BPF programs' run time within
    cpu_s: f64,
    bpf_ns: u64,
}

impl Interval {
    /// Measures an interval of configuration `config` (`t`): no tracer, or t started, settled, measured,
    /// stopped (its peak RSS and lost events noted).
    fn run(
        t: &Tracer,
        config: usize,
        rss: &mut u64,
        lost: &mut Option<u64>,
    ) -> Result<Interval, String> {
        let Some(argv) = &t.argv else {
            let a = mono_ns();
            thread::sleep(SPAN);
            return Ok(Interval {
                config,
                a,
                b: mono_ns(),
                cpu_s: 0.0,
                bpf_ns: 0,
            });
        };
        let r = start_attached(t, argv)?;
        thread::sleep(SETTLE);
        let pid = r.child.id();
        let (cpu0, ns0) = (cpu_seconds(pid), bpf_run_ns(pid));
        let a = mono_ns();
        thread::sleep(SPAN);
        let b = mono_ns();
        let (cpu1, ns1) = (cpu_seconds(pid), bpf_run_ns(pid));
        *rss = (*rss).max(r.peak_rss_kib());
        add_lost(lost, t, r.stop())?;
        thread::sleep(GAP);
        Ok(Interval {
            config,
            a,
            b,
            cpu_s: cpu1 - cpu0,
            bpf_ns: ns1.saturating_sub(ns0),
        })
    }
}

/// Toggled rounds (sockray tracers): one tracer started once, its programs detached and attached in
/// alternation (SOCKRAY_BENCH_TOGGLE), each interval TOGGLE_SPAN long from TOGGLE_SETTLE after the tracer
/// said it switched. No process start or exit between the intervals, so they can be short and close
/// together: more rounds fall between two of the VM's speed steps.
const TOGGLE_SPAN: Duration = Duration::from_millis(200);
const TOGGLE_SETTLE: Duration = Duration::from_millis(20);
/// Toggled rounds per `--rounds` round (a toggled round takes a third of the time).
const TOGGLE_ROUNDS: usize = 3;

/// Runs a sockray tracer's toggled rounds: U T U T ... U (U detached, T attached). None when the tracer
/// cannot be toggled (said on stdout).
fn toggled_run(
    t: &Tracer,
    config: usize,
    rounds: usize,
    lost: &mut Option<u64>,
) -> Result<Option<Vec<Interval>>, String> {
    let Some(argv) = &t.argv else {
        return Ok(None);
    };
    let mut r = start_toggled(argv)?;
    if let Err(e) = r.ready(Instant::now()) {
        // e.g. a tool with classic tracepoint programs, which SOCKRAY_BENCH_TOGGLE refuses
        println!("{}: not toggled ({e})", t.name);
        r.stop();
        return Ok(None);
    }
    thread::sleep(SETTLE);
    let mut out = Vec::new();
    for k in 0..=2 * rounds {
        let on = k % 2 == 1;
        if let Err(e) = r.switch(on) {
            println!("{}: not toggled ({e})", t.name);
            r.stop();
            return Ok(None);
        }
        thread::sleep(TOGGLE_SETTLE);
        let a = mono_ns();
        thread::sleep(TOGGLE_SPAN);
        out.push(Interval {
            config: if on { config } else { 0 },
            a,
            b: mono_ns(),
            cpu_s: 0.0,
            bpf_ns: 0,
        });
    }
    add_lost(lost, t, r.stop())?;
    Ok(Some(out))
}

/// A tracer's figure, steady-round count and range, formatted for the tables.
fn summary(rounds: &[Round]) -> (String, String, String) {
    if rounds.is_empty() {
        return ("-".into(), "-".into(), "-".into());
    }
    let s = counted(rounds);
    let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let n_steady = rounds.iter().filter(|r| r.steady).count();
    (
        format!("{:.1}%", median(s) * 100.0),
        format!("{n_steady}/{}", rounds.len()),
        format!("{:.1}..{:.1}", lo * 100.0, hi * 100.0),
    )
}

/// Adds a sockray run's `{"lost": N}` (its last line) to the tracer's count.
fn add_lost(lost: &mut Option<u64>, t: &Tracer, last: Option<String>) -> Result<(), String> {
    if t.sockray {
        let n = lost_of(last.clone())
            .ok_or_else(|| format!("{}: no {{\"lost\": N}} record at exit", t.name))?;
        if n > 0 {
            // by cause (ring buffer, skipped runs, full tables), to know where to look
            eprintln!("bench: {}: {}", t.name, last.unwrap_or_default().trim());
        }
        *lost = Some(lost.unwrap_or(0) + n);
    }
    Ok(())
}

/// Start-up as users see it: each tracer (table form: no --json, no --verbose) started on a
/// pseudo-terminal, unpinned, and timed from spawn to its first line there (the header, printed once
/// its probes are attached), then stopped. The tracers take turns, one start each per turn (sockray
/// tcplife, libbpf-tools tcplife, sockray tcpstates, ...), so that a change of the machine's speed falls
/// on all of them alike; one untimed start of each first (page cache). A tracer that prints no header
/// (does not run on this kernel) is left out. Returns each tracer's times in ms.
fn startup_times(configs: &[Tracer], starts: usize) -> Vec<(String, Vec<f64>)> {
    let mut out: Vec<(String, Vec<String>, Vec<f64>)> = configs
        .iter()
        .filter_map(|t| {
            let mut argv = t.argv.clone()?;
            argv.retain(|a| a != "--json" && a != "--verbose");
            if argv.iter().any(|a| PACKET_TOOLS.contains(&a.as_str())) {
                // netqtop prints nothing before its first interval (as BCC's): a 1 ms one, so that
                // its first line comes as soon as it is attached
                argv.extend(["-i".into(), "0.001".into()]);
            }
            Some((t.name.clone(), argv, Vec::new()))
        })
        .collect();
    let mut failed: Vec<String> = Vec::new();
    for turn in 0..=starts {
        for (name, argv, times) in &mut out {
            if failed.contains(name) {
                continue;
            }
            let t0 = Instant::now();
            let ready = start(argv, false, true).and_then(|mut r| {
                let d = r.ready(t0);
                r.stop();
                d
            });
            match ready {
                Ok(d) if turn > 0 => times.push(d.as_secs_f64() * 1000.0),
                Ok(_) => {}
                Err(e) => {
                    println!("{name}: does not run on this kernel ({e}); left out");
                    failed.push(name.clone());
                }
            }
            thread::sleep(STARTUP_GAP);
        }
    }
    out.into_iter()
        .filter(|(n, _, _)| !failed.contains(n))
        .map(|(n, _, v)| (n, v))
        .collect()
}

/// Minimum, first quartile, median, third quartile and maximum (nearest rank); zeros when empty.
fn quartiles(v: &[f64]) -> (f64, f64, f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let Some(&last) = v.last() else {
        return (0.0, 0.0, 0.0, 0.0, 0.0);
    };
    let at = |q: usize| v[(q * (v.len() - 1) + 2) / 4];
    (v[0], at(1), at(2), at(3), last)
}

/// The start-up table: median, quartiles and range of each tracer, and sockray's median against
/// libbpf-tools' for each tool.
fn print_startup(startup: &[(String, Vec<f64>)], starts: usize) {
    println!(
        "\nStart-up (ms from spawn to the header on a pty; {starts} alternating starts per tracer)"
    );
    println!(
        "{:<24} {:>8} {:>13} {:>13}",
        "TRACER", "MEDIAN", "QUARTILES", "RANGE"
    );
    for (name, v) in startup {
        let (lo, q1, med, q3, hi) = quartiles(v);
        println!(
            "{name:<24} {med:>8.1} {:>13} {:>13}",
            format!("{q1:.1}..{q3:.1}"),
            format!("{lo:.1}..{hi:.1}")
        );
    }
    let med = |n: &str| {
        startup
            .iter()
            .find(|(x, _)| x == n)
            .map(|(_, v)| quartiles(v).2)
    };
    for tool in TOOLS {
        if let (Some(s), Some(l)) = (
            med(&format!("sockray {tool}")),
            med(&format!("libbpf-tools {tool}")),
        ) {
            println!(
                "{tool}: start-up sockray/libbpf-tools = {:.2} (medians)",
                s / l
            );
        }
    }
}

/// The whole benchmark; `sockray` is the release binary, `tools` what it offers.
pub fn run(sockray: &Path, tools: &[String], opts: &Options) -> Result<(), String> {
    let rounds = opts.rounds;
    let mut configs = tracers(sockray, tools);
    // other command lines to compare (attached when they print a line, or sockray's "ready")
    for cmd in &opts.extra {
        let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        let Some(exe) = argv.first() else { continue };
        let base = Path::new(exe)
            .file_name()
            .map_or(exe.clone(), |b| b.to_string_lossy().into_owned());
        let name = [base]
            .iter()
            .chain(&argv[1..])
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        // another sockray build (its exe named sockray*, with --json): its lost events counted, and
        // toggled if it can be
        let sockray = name.starts_with("sockray") && argv.iter().any(|a| a == "--json");
        configs.push(Tracer {
            name: name.chars().take(24).collect(),
            argv: Some(argv),
            sockray,
        });
    }
    pin_to_cpu0();
    // the packet flood's link exists before the start-up runs: netqtop looks its device up at start
    let _link = match opts.load {
        Load::Packets => Some(PacketLink::new()?),
        _ => None,
    };
    if opts.startup_only {
        println!(
            "sockray bench: start-up only, {} starts per tracer",
            opts.starts
        );
    } else {
        println!(
            "sockray bench: {rounds} traced intervals of {} ms per tracer under {}, {} starts per tracer",
            SPAN.as_millis(),
            opts.load.describe(),
            opts.starts
        );
    }

    let startup = startup_times(&configs, opts.starts);
    print_startup(&startup, opts.starts);
    configs.retain(|t| t.argv.is_none() || startup.iter().any(|(n, _)| *n == t.name));
    if opts.startup_only {
        return Ok(());
    }
    let startup: Vec<(String, f64)> = startup
        .into_iter()
        .map(|(n, v)| (n, quartiles(&v).1))
        .collect();

    // the load runs through all of it; tracers come and go, each traced interval between two
    // intervals without a tracer: none, t1, none, t2, none, ...
    let mut sequence: Vec<usize> = Vec::new();
    for _ in 0..rounds {
        for i in 1..configs.len() {
            sequence.extend([0, i]);
        }
    }
    sequence.push(0);
    let tracer_runs = (configs.len() - 1) * (rounds + 1);
    let toggle_rounds = TOGGLE_ROUNDS * rounds;
    let toggled_s = configs.iter().filter(|t| t.sockray).count() * (toggle_rounds + 1);
    let max_s = 60 + 5 * (sequence.len() + tracer_runs) as u64 + toggled_s as u64;
    let mut rss: Vec<u64> = vec![0; configs.len()];
    let mut lost: Vec<Option<u64>> = vec![None; configs.len()];
    let mut intervals: Vec<Interval> = Vec::new();
    let mut bpf_intervals: Vec<Interval> = Vec::new();
    let generator = Generator::start(max_s, opts.load)?;
    thread::sleep(WARM_UP);
    {
        // the rates are measured as users run the tools: without kernel.bpf_stats_enabled, which
        // itself costs two clock reads per program run (BPF time is measured in runs of its own, below)
        let _stats = BpfStats::set(false);
        for &i in &sequence {
            intervals.push(Interval::run(&configs[i], i, &mut rss[i], &mut lost[i])?);
        }
    }
    {
        // BPF run time per connection: one more traced interval per tracer with kernel.bpf_stats_enabled
        let _on = BpfStats::set(true);
        for (i, t) in configs.iter().enumerate().skip(1) {
            bpf_intervals.push(Interval::run(t, i, &mut rss[i], &mut lost[i])?);
        }
    }
    // toggled rounds of each sockray tracer (not with bpf_stats: as users run the tools)
    let mut toggled: Vec<Option<Vec<Interval>>> = Vec::new();
    {
        let _stats = BpfStats::set(false);
        for (i, t) in configs.iter().enumerate() {
            toggled.push(if t.sockray {
                toggled_run(t, i, toggle_rounds, &mut lost[i])?
            } else {
                None
            });
        }
    }
    let marks = generator.stop()?;

    let stalled = || "an interval without a whole window of operations: the generator stalled";
    let unit = opts.load.unit();
    let mut cpu: Vec<f64> = vec![0.0; configs.len()];
    let mut conns: Vec<u64> = vec![0; configs.len()];
    let mut history: Vec<(usize, f64)> = Vec::new();
    for iv in &intervals {
        let (n, secs) = marks.within(iv.a, iv.b).ok_or_else(stalled)?;
        history.push((iv.config, n as f64 / secs));
        cpu[iv.config] += iv.cpu_s;
        conns[iv.config] += n;
    }
    let mut bpf_ns: Vec<f64> = vec![0.0; configs.len()];
    for iv in &bpf_intervals {
        let (n, _) = marks.within(iv.a, iv.b).ok_or_else(stalled)?;
        bpf_ns[iv.config] = iv.bpf_ns as f64 / n as f64;
    }
    let slowdowns = paired_slowdowns(&history, configs.len());
    if opts.verbose {
        println!("\nINTERVAL {:<24} {unit}/s", "TRACER");
        for (k, (i, r)) in history.iter().enumerate() {
            println!("{k:>8} {:<24} {r:.0}", configs[*i].name);
        }
    }

    println!();
    println!(
        "{:<24} {:>11} {:>13} {:>10} {:>9} {:>7} {:>13} {:>12} {:>10} {:>6}",
        "TRACER",
        "START(ms)",
        "PEAK_RSS(MiB)",
        format!("{unit}/s"),
        "SLOWDOWN",
        "STEADY",
        "ROUNDS_RANGE",
        format!("BPF_NS/{unit}"),
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
        let rate = median(
            history
                .iter()
                .filter(|(c, _)| *c == i)
                .map(|(_, r)| *r)
                .collect(),
        );
        let (slow, steady, range) = if i == 0 {
            ("-".into(), "-".into(), "-".into())
        } else {
            summary(&slowdowns[i])
        };
        let lo = lost[i].map(|n| n.to_string()).unwrap_or("-".into());
        let (kns, ucpu) = if t.argv.is_some() {
            (
                format!("{:.0}", bpf_ns[i]),
                format!("{:.1}", cpu[i] * 1e6 / conns[i].max(1) as f64),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:<24} {st:>11} {mem:>13} {rate:>10.0} {slow:>9} {steady:>7} {range:>13} {kns:>12} {ucpu:>10} {lo:>6}",
            t.name
        );
    }
    println!(
        "\nSLOWDOWN: median over the steady rounds (STEADY: the rounds whose two intervals without a tracer agree \
         within {:.0}%; all rounds when fewer than {MIN_STEADY} are), ROUNDS_RANGE over the same rounds.",
        STEADY * 100.0
    );
    if toggled.iter().any(Option::is_some) {
        println!(
            "\nToggled: one running tracer, its programs detached and attached in alternation, {toggle_rounds} \
             attached intervals of {} ms each between two detached ones (SOCKRAY_BENCH_TOGGLE)",
            TOGGLE_SPAN.as_millis()
        );
        println!(
            "{:<24} {:>9} {:>7} {:>13}",
            "TRACER", "SLOWDOWN", "STEADY", "ROUNDS_RANGE"
        );
        for (i, t) in configs.iter().enumerate() {
            let Some(ivs) = &toggled[i] else { continue };
            let mut hist = Vec::new();
            for iv in ivs {
                let (n, secs) = marks.within(iv.a, iv.b).ok_or_else(stalled)?;
                hist.push((iv.config, n as f64 / secs));
            }
            let (slow, steady, range) = summary(&paired_slowdowns(&hist, configs.len())[i]);
            println!("{:<24} {slow:>9} {steady:>7} {range:>13}", t.name);
        }
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
    fn connections_within_an_interval_count_whole_windows() {
        let w = 250;
        // marks at 0, 100, 200, 300, 400 ms
        let m = Marks((0..5).map(|k| k * 100_000_000).collect(), 250);
        // [50, 350] ms holds the windows 100-200 and 200-300
        assert_eq!(m.within(50_000_000, 350_000_000), Some((2 * w, 0.2)));
        // bounds on marks count the windows they close
        assert_eq!(m.within(0, 400_000_000), Some((4 * w, 0.4)));
        // no whole window
        assert_eq!(m.within(120_000_000, 250_000_000), None);
        assert_eq!(m.within(500_000_000, 600_000_000), None);
    }

    #[test]
    fn slowdowns_against_neighbouring_baselines() {
        // none 100, t1 90, none 110, t2 50, none 90
        let h = [(0, 100.0), (1, 90.0), (0, 110.0), (2, 50.0), (0, 90.0)];
        let s = paired_slowdowns(&h, 3);
        assert!(s[0].is_empty());
        assert_eq!(s[1].len(), 1);
        assert!((s[1][0].slowdown - (1.0 - 90.0 / 105.0)).abs() < 1e-12);
        assert!((s[2][0].slowdown - 0.5).abs() < 1e-12);
        // 100 vs 110 and 110 vs 90: the VM's speed stepped
        assert!(!s[1][0].steady && !s[2][0].steady);
        // 100 and 102 agree within 3%
        let h = [(0, 100.0), (1, 95.0), (0, 102.0)];
        assert!(paired_slowdowns(&h, 2)[1][0].steady);
    }

    #[test]
    fn figure_from_steady_rounds_when_there_are_enough() {
        let r = |slowdown, steady| Round { slowdown, steady };
        let mut rounds = vec![r(0.30, false), r(-0.20, false)];
        rounds.extend((0..MIN_STEADY).map(|k| r(0.05 + k as f64 * 0.001, true)));
        let c = counted(&rounds);
        assert_eq!(c.len(), MIN_STEADY);
        assert!(c.iter().all(|&x| (0.05..0.06).contains(&x)));
        // too few steady rounds: all count
        assert_eq!(counted(&rounds[..3]).len(), 3);
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
    fn quartiles_by_nearest_rank() {
        let v: Vec<f64> = (0..11).rev().map(f64::from).collect();
        assert_eq!(quartiles(&v), (0.0, 3.0, 5.0, 8.0, 10.0));
        assert_eq!(quartiles(&[2.0]), (2.0, 2.0, 2.0, 2.0, 2.0));
        assert_eq!(quartiles(&[]), (0.0, 0.0, 0.0, 0.0, 0.0));
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
        // burn a little CPU so the counter is above zero (black_box: an optimised build would otherwise
        // compute the sum in closed form and burn nothing)
        // The kernel samples CPU time in ticks: a short burn may be charged none, so burn until it is
        // (a reader that always says 0 still fails, after 5 s)
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds(std::process::id()) == 0.0 && start.elapsed().as_secs() < 5 {
            for i in 0..20_000_000u64 {
                x = x.wrapping_add(std::hint::black_box(i) * i);
            }
        }
        assert!(x > 0);
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
