//! `sockray tcpaccept` against known traffic in a fresh network namespace: every accepted connection is
//! one row naming the accepting server process (never the client, although on loopback the handshake
//! runs in the client's context), with the right addresses and the listener's backlog; several threads
//! blocked in accept() lose nothing; the filters exclude what they should; the table is BCC's.
//! Needs root and BTF; see common::require_bpf.

mod acceptlisten;
mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use acceptlisten::Cgroup;
use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns",
    "pid",
    "comm",
    "uid",
    "ip",
    "raddr",
    "rport",
    "laddr",
    "lport",
    "backlog",
    "backlog_max",
];

#[derive(Clone)]
struct Spec {
    addr: &'static str,
    server_comm: &'static str,
    client_comm: &'static str,
    threads: u32,
    count: u32,
    backlog: u32,
    queue_first: bool,
    wait_go: bool,
}

impl Spec {
    fn new(addr: &'static str, server_comm: &'static str, client_comm: &'static str) -> Spec {
        Spec {
            addr,
            server_comm,
            client_comm,
            threads: 1,
            count: 1,
            backlog: 64,
            queue_first: false,
            wait_go: false,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "accept".into(),
            "--addr".into(),
            self.addr.into(),
            "--port".into(),
            pick_port().to_string(),
            "--server-comm".into(),
            self.server_comm.into(),
            "--client-comm".into(),
            self.client_comm.into(),
            "--threads".into(),
            self.threads.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--backlog".into(),
            self.backlog.to_string(),
        ];
        if self.queue_first {
            a.push("--queue-first".into());
        }
        if self.wait_go {
            a.push("--wait-go".into());
        }
        a
    }
}

/// What the generator reported.
struct Run {
    spec: Spec,
    listen: Value,
    server_pid: u64,
    client_pid: u64,
    /// accepted connections, as the server saw them
    servers: Vec<Value>,
    /// the client's sockets
    clients: Vec<Value>,
}

impl Run {
    fn parse(spec: &Spec, lines: Vec<Value>) -> Run {
        let listen = lines
            .iter()
            .find(|v| v["role"] == "server-listen")
            .cloned()
            .unwrap_or_else(|| panic!("no server-listen line: {lines:?}"));
        let of = |role: &str| -> Vec<Value> {
            lines
                .iter()
                .filter(|v| v["role"] == role)
                .cloned()
                .collect()
        };
        let servers = of("server");
        let clients = of("client");
        assert_eq!(
            servers.len(),
            spec.count as usize,
            "server lines: {lines:?}"
        );
        assert_eq!(
            clients.len(),
            spec.count as usize,
            "client lines: {lines:?}"
        );
        let server_pid = u(&listen, "pid");
        let client_pid = u(&clients[0], "pid");
        assert_ne!(server_pid, client_pid);
        Run {
            spec: spec.clone(),
            listen,
            server_pid,
            client_pid,
            servers,
            clients,
        }
    }

    fn port(&self) -> u64 {
        u(&self.listen, "lport")
    }

    /// The rows of this run's listener (by local address and port).
    fn rows<'a>(&self, rows: &'a [Value]) -> Vec<&'a Value> {
        let laddr = s(&self.listen, "laddr");
        rows.iter()
            .filter(|r| r["lport"].as_u64() == Some(self.port()) && r["laddr"] == laddr)
            .collect()
    }
}

fn run_accept(ns: &Netns, spec: &Spec) -> Run {
    Run::parse(spec, run_gen(ns, &spec.args()))
}

/// Start the server, wait until its threads are blocked in accept(), call `between` (e.g. start
/// tracers that need the server's pid), then let the client connect; returns the finished run.
fn run_accept_gated(ns: &Netns, spec: &Spec, between: impl FnOnce(u64, u64)) -> Run {
    let mut spec = spec.clone();
    spec.wait_go = true;
    let mut g = Gen::spawn(ns, &spec.args());
    let ready = g.wait_role("server-ready", Duration::from_secs(20));
    between(u(&ready, "server_pid"), u(&ready, "lport"));
    g.go();
    Run::parse(&spec, g.finish(Duration::from_secs(30)))
}

/// Every row of the run, field by field: one per accepted connection, each naming the server.
/// Is the running kernel older than major.minor?
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) < (major, minor)
}

/// `exact_backlog`: the queue length after each accept is known (queue-first runs).
///
/// A connection may lack its row only when the kernel reported skipping one of the tool's program runs
/// (`trace.skipped`, see [`Tracer::stop_with_skips`]): never silently.
fn check_rows(trace: &Trace, run: &Run, window: (u64, u64), exact_backlog: bool) {
    let rows = &trace.rows;
    let mine = run.rows(rows);
    let missing: Vec<&Value> = run
        .servers
        .iter()
        .filter(|c| !mine.iter().any(|r| r["rport"] == c["rport"]))
        .collect();
    assert!(
        missing.len() as u64 <= trace.skipped
            && mine.len() + missing.len() == run.spec.count as usize,
        "want one row per accepted connection ({}; the kernel reported {} skipped program runs), \
         got {mine:#?}; accepts without a row: {missing:#?}; stderr:\n{}",
        run.spec.count,
        trace.skipped,
        trace.stderr
    );
    let family = u(&run.listen, "family");
    let mut seen = BTreeSet::new();
    for r in &mine {
        assert_keys(r, KEYS);
        let rport = u(r, "rport");
        assert!(
            seen.insert(rport),
            "two rows for client port {rport}: {mine:#?}"
        );
        let client = run
            .clients
            .iter()
            .find(|c| u(c, "lport") == rport)
            .unwrap_or_else(|| panic!("row for a connection the client did not make: {r}"));
        let server = run
            .servers
            .iter()
            .find(|c| u(c, "rport") == rport)
            .unwrap_or_else(|| panic!("row for a connection the server did not accept: {r}"));
        assert_eq!(
            u(r, "pid"),
            run.server_pid,
            "pid must be the accepting server, not the client ({}): {r}",
            run.client_pid
        );
        assert_eq!(s(r, "comm"), run.spec.server_comm, "comm: {r}");
        assert_eq!(u(r, "uid"), u(&run.listen, "uid"), "uid: {r}");
        assert_eq!(u(r, "ip"), family, "ip: {r}");
        assert_eq!(s(r, "laddr"), s(server, "laddr"), "laddr: {r}");
        assert_eq!(u(r, "lport"), u(server, "lport"), "lport: {r}");
        assert_eq!(
            s(r, "raddr"),
            s(client, "laddr"),
            "raddr is the client's address: {r}"
        );
        assert_eq!(rport, u(client, "lport"), "rport is the client's port: {r}");
        if r["backlog_max"].is_null() && kernel_before(5, 15) {
            // a thread already blocked in accept() when the tracer started: its listening fd is read
            // from the syscall's saved registers, which needs bpf_task_pt_regs (Linux 5.15); before
            // that the backlog is unknown and must say so (null), never a made-up number
            assert!(r["backlog"].is_null(), "backlog without backlog_max: {r}");
        } else {
            assert_eq!(
                u(r, "backlog_max"),
                run.spec.backlog as u64,
                "backlog_max is listen()'s backlog: {r}"
            );
            let q = u(r, "backlog");
            if exact_backlog {
                assert_eq!(
                    q,
                    u(server, "backlog_after"),
                    "backlog: the accept queue after this accept, as TCP_INFO saw it: {r} / {server}"
                );
            } else {
                assert!(
                    q < run.spec.count as u64,
                    "backlog {q} above the connections made: {r}"
                );
            }
        }
        assert_time(r, window.0, window.1);
    }
    assert!(
        rows.iter()
            .all(|r| r["pid"].as_u64() != Some(run.client_pid)),
        "a row names the client, which accepted nothing"
    );
}

fn traced(tool_args: &[&str], ns: &Netns, spec: &Spec) -> (Trace, Run, (u64, u64)) {
    let tracer = Tracer::start("tcpaccept", tool_args);
    let t0 = now_ns();
    let run = run_accept(ns, spec);
    let t1 = now_ns();
    thread::sleep(SETTLE);
    (tracer.stop_with_skips(), run, (t0, t1))
}

#[test]
fn v4_threads_blocked_in_accept_lose_nothing() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut spec = Spec::new("127.0.0.1", "ta-v4-srv", "ta-v4-cli");
    spec.threads = 4;
    spec.count = 24;
    spec.backlog = 32;
    let (trace, run, win) = traced(&[], &ns, &spec);
    check_rows(&trace, &run, win, false);
}

#[test]
fn v6_threads_blocked_in_accept_lose_nothing() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut spec = Spec::new("::1", "ta-v6-srv", "ta-v6-cli");
    spec.threads = 3;
    spec.count = 12;
    spec.backlog = 20;
    let (trace, run, win) = traced(&[], &ns, &spec);
    check_rows(&trace, &run, win, false);
}

#[test]
fn backlog_is_the_queue_after_each_accept() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    for (addr, srv, cli) in [
        ("127.0.0.1", "ta-q4-srv", "ta-q4-cli"),
        ("::1", "ta-q6-srv", "ta-q6-cli"),
    ] {
        let mut spec = Spec::new(addr, srv, cli);
        spec.count = 5;
        spec.backlog = 7;
        spec.queue_first = true;
        let (trace, run, win) = traced(&[], &ns, &spec);
        check_rows(&trace, &run, win, true);
        // the client queued all 5 before the first accept: 4, 3, 2, 1, 0 left
        let mut qs: Vec<u64> = run
            .rows(&trace.rows)
            .iter()
            .map(|r| u(r, "backlog"))
            .collect();
        qs.sort_unstable();
        assert_eq!(qs, vec![0, 1, 2, 3, 4], "{addr}: backlog after each accept");
    }
}

/// Threads already blocked in accept() when the tracer starts: their entry was never seen, the
/// listener is found from the syscall's saved registers.
#[test]
fn accepts_blocked_before_the_tracer_started() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut spec = Spec::new("127.0.0.1", "ta-pre-srv", "ta-pre-cli");
    spec.threads = 3;
    spec.count = 6;
    spec.backlog = 13;
    let mut tracer = None;
    let mut t0 = 0;
    let run = run_accept_gated(&ns, &spec, |_, _| {
        tracer = Some(Tracer::start("tcpaccept", &[]));
        t0 = now_ns();
    });
    let t1 = now_ns();
    thread::sleep(SETTLE);
    let trace = tracer.unwrap().stop_with_skips();
    check_rows(&trace, &run, (t0, t1), false);
}

#[test]
fn filters_pid_port_family_cgroup() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let empty = Cgroup::new();
    let server_cg = Cgroup::new();
    let mut spec = Spec::new("::1", "ta-flt-srv", "ta-flt-cli");
    spec.threads = 2;
    spec.count = 4;
    spec.backlog = 9;
    let me = std::process::id().to_string();
    let mut tracers: Vec<(&str, Tracer)> = Vec::new();
    let mut t0 = 0;
    let run = run_accept_gated(&ns, &spec, |server_pid, port| {
        server_cg.add(server_pid);
        let pid = server_pid.to_string();
        let port_s = port.to_string();
        let other_port = (port + 1).to_string();
        let list = format!("{},{}", port - 1, port);
        let cg = server_cg.path_str().to_string();
        tracers.push((
            "match",
            Tracer::start(
                "tcpaccept",
                &["-p", &pid, "-P", &list, "-6", "--cgroup", &cg],
            ),
        ));
        tracers.push(("port", Tracer::start("tcpaccept", &["-P", &port_s])));
        tracers.push(("other-pid", Tracer::start("tcpaccept", &["-p", &me])));
        tracers.push((
            "other-port",
            Tracer::start("tcpaccept", &["-P", &other_port]),
        ));
        tracers.push(("ipv4", Tracer::start("tcpaccept", &["-4"])));
        tracers.push((
            "empty-cgroup",
            Tracer::start("tcpaccept", &["--cgroup", empty.path_str()]),
        ));
        t0 = now_ns();
    });
    let t1 = now_ns();
    thread::sleep(SETTLE);
    for (name, t) in tracers {
        let trace = t.stop_with_skips();
        let ours: Vec<&Value> = trace
            .rows
            .iter()
            .filter(|r| r["pid"].as_u64() == Some(run.server_pid))
            .collect();
        match name {
            "match" => {
                check_rows(&trace, &run, (t0, t1), false);
                assert_eq!(
                    trace.rows.len(),
                    run.spec.count as usize,
                    "{name}: {:#?}",
                    trace.rows
                );
            }
            "port" => {
                check_rows(&trace, &run, (t0, t1), false);
                assert!(
                    trace.rows.iter().all(|r| u(r, "lport") == run.port()),
                    "-P {}: rows of other ports: {:#?}",
                    run.port(),
                    trace.rows
                );
            }
            "other-pid" | "empty-cgroup" => {
                assert!(trace.rows.is_empty(), "{name}: rows: {:#?}", trace.rows)
            }
            "other-port" | "ipv4" => {
                assert!(ours.is_empty(), "{name}: rows of the server: {ours:#?}");
                if name == "ipv4" {
                    assert!(
                        trace.rows.iter().all(|r| u(r, "ip") == 4),
                        "-4 printed IPv6 rows: {:#?}",
                        trace.rows
                    );
                }
            }
            _ => unreachable!(),
        }
    }
}

/// The table a person sees: BCC's header and columns, -T time, -B backlog.
#[test]
fn table_columns_as_bcc() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut spec = Spec::new("127.0.0.1", "ta-tbl-srv", "ta-tbl-cli");
    spec.count = 3;
    spec.backlog = 5;
    spec.queue_first = true;
    let mut tracers = Vec::new();
    let run = run_accept_gated(&ns, &spec, |_, port| {
        let p = port.to_string();
        tracers.push(Tracer::text("tcpaccept", &["-P", &p]));
        tracers.push(Tracer::text("tcpaccept", &["-P", &p, "-B", "-T"]));
    });
    thread::sleep(SETTLE);
    let plain = tracers.remove(0).stop_text();
    let timed = tracers.remove(0).stop_text();

    assert_eq!(
        plain[0],
        "PID     COMM         IP RADDR            RPORT LADDR            LPORT"
    );
    assert_eq!(
        timed[0],
        "TIME     PID     COMM         IP RADDR            RPORT LADDR            LPORT BACKLOG"
    );
    assert_eq!(plain.len(), 1 + spec.count as usize, "{plain:#?}");
    assert_eq!(timed.len(), 1 + spec.count as usize, "{timed:#?}");
    for (i, server) in run.servers.iter().enumerate() {
        let want = format!(
            "{:<7} {:<12} {:<2} {:<16} {:<5} {:<16} {}",
            run.server_pid,
            spec.server_comm,
            4,
            s(server, "raddr"),
            u(server, "rport"),
            s(server, "laddr"),
            u(server, "lport"),
        );
        assert_eq!(plain[1 + i], want, "row {i}");
        let line = &timed[1 + i];
        let (time, rest) = line.split_at(9);
        let b = time.as_bytes();
        assert!(
            b.len() == 9 && b[2] == b':' && b[5] == b':' && b[8] == b' ',
            "TIME column HH:MM:SS: {line:?}"
        );
        let backlog = format!(
            "{}/{}",
            u(server, "backlog_after"),
            u(server, "backlog_max")
        );
        assert_eq!(rest, format!("{want} {backlog}"), "row {i} with -T -B");
    }
}

// ---- a person watching: rows while the tool runs, at a trickle ----

// The server's accept (table columns PID COMM IP RADDR RPORT LADDR LPORT).
live_tests!("tcpaccept", "ta", |out: &SessionOut| {
    let s = &out.servers[0];
    vec![
        Want::new("the server's accept")
            .col("pid", 0, s.pid)
            .col("comm", 1, &s.comm)
            .col("raddr", 3, &s.raddr)
            .col("rport", 4, s.rport)
            .col("lport", 6, s.lport),
    ]
});
