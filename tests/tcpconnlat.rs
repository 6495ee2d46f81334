//! `sockray tcpconnlat` against known traffic in a fresh netns: every field of the test's own connects
//! (pid and comm of the forked client, its real local port, addresses), a latency that matches what
//! the client measured (a handshake slowed to ~1 s by a full accept queue), failed handshakes not
//! shown, `min_ms`, the filters, and the table users see. Needs root and BTF; see common::require_bpf.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns", "pid", "comm", "uid", "ip", "saddr", "lport", "daddr", "dport", "lat_ms",
];

fn rows_to(rows: &[Value], dport: u64, pid: u64) -> Vec<&Value> {
    rows.iter()
        .filter(|r| r["dport"].as_u64() == Some(dport) && r["pid"].as_u64() == Some(pid))
        .collect()
}

fn rows_of_pids<'a>(rows: &'a [Value], pids: &[u64]) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r["pid"].as_u64().is_some_and(|p| pids.contains(&p)))
        .collect()
}

/// The one row of this client connection, checked field by field; latency within `lat` (ms).
fn check_row(rows: &[Value], c: &Conn, lat: (f64, f64), window: (u64, u64)) -> Value {
    let mine: Vec<&Value> = rows_to(rows, c.rport, c.pid)
        .into_iter()
        .filter(|r| r["lport"].as_u64() == Some(c.lport))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "want one tcpconnlat row for {c:?}, got {mine:#?}"
    );
    let r = mine[0].clone();
    assert_keys(&r, KEYS);
    assert_eq!(u(&r, "pid"), c.pid, "pid of the connecting process: {r}");
    assert_eq!(s(&r, "comm"), c.comm, "comm of the connecting child: {r}");
    assert_eq!(u(&r, "uid"), c.uid, "uid: {r}");
    assert_eq!(u(&r, "ip"), c.family, "ip: {r}");
    assert_eq!(s(&r, "saddr"), c.laddr, "saddr: {r}");
    assert_eq!(
        u(&r, "lport"),
        c.lport,
        "lport is the client's real local port: {r}"
    );
    assert_eq!(s(&r, "daddr"), c.raddr, "daddr: {r}");
    assert_eq!(u(&r, "dport"), c.rport, "dport: {r}");
    let ms = f(&r, "lat_ms");
    assert!(
        ms > lat.0 && ms < lat.1,
        "lat_ms {ms}, want ({}, {}): {r}",
        lat.0,
        lat.1
    );
    assert_time(&r, window.0, window.1);
    r
}

/// On loopback a handshake takes microseconds; 1 s is the sanity bound.
const LOOPBACK: (f64, f64) = (0.0, 1000.0);

fn session(addr: &'static str, srv: &'static str, cli: &'static str) -> Session {
    let mut s = Session::new(addr, pick_port(), srv, cli);
    s.client_send = 100;
    s.server_send = 100;
    s.hold_ms = 20;
    s
}

fn session_rows(addr: &'static str, srv: &'static str, cli: &'static str) {
    let ns = Netns::new();
    let mut spec = session(addr, srv, cli);
    spec.count = 3;
    let (trace, out, win) = traced_session("tcpconnlat", &["-L", "-t"], &ns, &spec);
    for c in &out.clients {
        check_row(&trace.rows, c, LOOPBACK, win);
    }
    assert_eq!(rows_to(&trace.rows, out.port(), out.client_pid).len(), 3);
    assert!(
        rows_of_pids(&trace.rows, &[out.server_pid]).is_empty(),
        "the server made no connects: {:#?}",
        trace.rows
    );
}

#[test]
fn v4_latency_of_a_forked_child() {
    if !require_bpf() {
        return;
    }
    session_rows("127.0.0.1", "tl-v4-srv", "tl-v4-cli");
}

#[test]
fn v6_latency_of_a_forked_child() {
    if !require_bpf() {
        return;
    }
    session_rows("::1", "tl-v6-srv", "tl-v6-cli");
}

fn slow(ns: &Netns, addr: &str, srv: &str, cli: &str) -> (Conn, Conn, f64) {
    let lines = run_gen(
        ns,
        &gen_args(&[
            "slow-handshake",
            "--addr",
            addr,
            "--port",
            "0",
            "--server-comm",
            srv,
            "--client-comm",
            cli,
            "--accept-delay-ms",
            "300",
        ]),
    );
    let get = |role: &str| {
        lines
            .iter()
            .find(|l| l["role"] == role)
            .unwrap_or_else(|| panic!("no {role} line: {lines:?}"))
    };
    let client = get("client");
    let measured = f(client, "connect_ms");
    (
        Conn::from_json(get("filler")),
        Conn::from_json(client),
        measured,
    )
}

/// A handshake whose first SYN the server's full accept queue dropped: ~1 s until the retransmitted
/// SYN is answered. The latency matches what the client measured around connect(); with min_ms 500
/// only that one is shown, with min_ms 5000 none.
#[test]
fn slow_handshake_latency_and_min_ms() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let all = Tracer::start("tcpconnlat", &[]);
    let over_500 = Tracer::start("tcpconnlat", &["500"]);
    let over_5000 = Tracer::start("tcpconnlat", &["5000"]);
    let t0 = now_ns();
    let (filler4, slow4, measured4) = slow(&ns, "127.0.0.1", "tl-slow-srv", "tl-slow4");
    let (filler6, slow6, measured6) = slow(&ns, "::1", "tl-slow-srv", "tl-slow6");
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let (all, over_500, over_5000) = (all.stop(), over_500.stop(), over_5000.stop());
    let win = (t0, t1);
    for (filler, slow, measured) in [(filler4, slow4, measured4), (filler6, slow6, measured6)] {
        assert!(
            measured > 900.0,
            "the client's connect took {measured} ms: no SYN was dropped?"
        );
        check_row(&all.rows, &filler, LOOPBACK, win);
        let r = check_row(&all.rows, &slow, (measured - 50.0, measured + 1.0), win);
        let r500 = check_row(&over_500.rows, &slow, (500.0, measured + 1.0), win);
        // two tracers, two clock reads at each end: the same handshake within 1 ms (0.1 ms was too
        // tight under software emulation: 0.114 ms seen on a TCG guest)
        assert!(
            (f(&r, "lat_ms") - f(&r500, "lat_ms")).abs() < 1.0,
            "{r} vs {r500}"
        );
        assert!(
            rows_to(&over_500.rows, filler.rport, filler.pid)
                .iter()
                .all(|x| u(x, "lport") != filler.lport),
            "min_ms 500 showed the fast connect"
        );
        assert!(
            rows_of_pids(&over_5000.rows, &[slow.pid]).is_empty(),
            "min_ms 5000: {:#?}",
            over_5000.rows
        );
    }
    for r in &over_500.rows {
        assert!(f(r, "lat_ms") >= 500.0, "min_ms 500 printed {r}");
    }
    for r in &over_5000.rows {
        assert!(f(r, "lat_ms") >= 5000.0, "min_ms 5000 printed {r}");
    }
}

/// Refused connects (blocking and non-blocking) are failed handshakes, not latencies: no rows.
#[test]
fn refused_connects_print_nothing() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let tracer = Tracer::start("tcpconnlat", &[]);
    let mut pids = Vec::new();
    for (addr, tag) in [("127.0.0.1", "4"), ("::1", "6")] {
        let port = pick_port().to_string();
        for nb in [false, true] {
            let comm = format!("tl-ref{tag}{}", if nb { "n" } else { "b" });
            let mut a = vec![
                "connect", "--addr", addr, "--port", &port, "--comm", &comm, "--count", "2",
            ];
            if nb {
                a.push("--nonblock");
            }
            for l in run_gen(&ns, &gen_args(&a)) {
                assert_eq!(l["result"].as_i64(), Some(-111), "{l}");
                pids.push(u(&l, "pid"));
            }
        }
    }
    // and a connect that succeeds in the same trace is shown
    let mut spec = session("127.0.0.1", "tl-ok-srv", "tl-ok-cli");
    spec.count = 1;
    let t0 = now_ns();
    let out = spec.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let shown = rows_of_pids(&trace.rows, &pids);
    assert!(shown.is_empty(), "refused connects printed: {shown:#?}");
    check_row(&trace.rows, &out.clients[0], LOOPBACK, (t0, t1));
}

/// -p, -4, -6 and --cgroup keep exactly what they name.
#[test]
fn filters() {
    if !require_bpf() {
        return;
    }
    let (Some(cg), Some(empty)) = (Cgroup::new("tl-in"), Cgroup::new("tl-empty")) else {
        panic!(
            "cannot create cgroup v2 directories (cgroup2 mount: {:?})",
            cgroup2_root()
        );
    };
    let ns = Netns::new();
    let mut s4 = session("127.0.0.1", "tl-f4-srv", "tl-f4-cli");
    s4.wait_go = true;
    s4.count = 2;
    let mut g = Gen::spawn(&ns, &s4.args());
    let client_pid = u(&g.wait_role("client-ready", Duration::from_secs(10)), "pid");
    cg.add(client_pid);
    let s6 = session("::1", "tl-f6-srv", "tl-f6-cli");

    let me = std::process::id().to_string();
    let cpid = client_pid.to_string();
    let filters: Vec<(&str, Vec<&str>)> = vec![
        ("pid-client", vec!["-p", &cpid]),
        ("pid-other", vec!["-p", &me]),
        ("v4", vec!["-4"]),
        ("v6", vec!["-6"]),
        ("cgroup", vec!["--cgroup", &cg.path]),
        ("cgroup-empty", vec!["--cgroup", &empty.path]),
    ];
    let tracers: Vec<(&str, Tracer)> = filters
        .iter()
        .map(|(n, a)| (*n, Tracer::start("tcpconnlat", a)))
        .collect();
    let t0 = now_ns();
    g.go();
    let out4 = SessionOut::parse(&s4, g.finish(Duration::from_secs(30)));
    let out6 = s6.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let win = (t0, t1);
    let ours = [
        out4.client_pid,
        out4.server_pid,
        out6.client_pid,
        out6.server_pid,
    ];
    for (name, t) in tracers {
        let trace = t.stop();
        let rows = &trace.rows;
        let mine = rows_of_pids(rows, &ours);
        match name {
            "pid-client" | "cgroup" => {
                assert!(
                    rows.iter().all(|r| u(r, "pid") == client_pid),
                    "{name}: {rows:#?}"
                );
                for c in &out4.clients {
                    check_row(rows, c, LOOPBACK, win);
                }
                assert_eq!(mine.len(), 2, "{name}: {mine:#?}");
            }
            "v4" => {
                assert!(rows.iter().all(|r| u(r, "ip") == 4), "-4: {rows:#?}");
                for c in &out4.clients {
                    check_row(rows, c, LOOPBACK, win);
                }
                assert!(rows_of_pids(rows, &[out6.client_pid]).is_empty());
            }
            "v6" => {
                assert!(rows.iter().all(|r| u(r, "ip") == 6), "-6: {rows:#?}");
                for c in &out6.clients {
                    check_row(rows, c, LOOPBACK, win);
                }
                assert!(rows_of_pids(rows, &[out4.client_pid]).is_empty());
            }
            "pid-other" | "cgroup-empty" => {
                assert!(rows.is_empty(), "{name}: {rows:#?}");
            }
            _ => unreachable!(),
        }
    }
}

/// The table users see: BCC's columns (-L inserts LPORT after SADDR, -t prepends TIME(s)).
#[test]
fn table_output() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    for (flags, lport) in [(vec![], false), (vec!["-L", "-t"], true)] {
        let mut out = None;
        let text = traced_text("tcpconnlat", &flags, || {
            let mut s = session("127.0.0.1", "tl-tab-srv", "tl-tab-cli");
            s.count = 2;
            out = Some(s.run(&ns));
        });
        let out = out.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let header = if lport {
            "TIME(s)   PID    COMM         IP SADDR            LPORT  DADDR            DPORT LAT(ms)"
        } else {
            "PID    COMM         IP SADDR            DADDR            DPORT LAT(ms)"
        };
        assert_eq!(lines[0], header);
        for c in &out.clients {
            let head = if lport {
                format!(
                    "{:<6} {:<12} {:<2} {:<16} {:<6} {:<16} {:<5} ",
                    c.pid, c.comm, 4, c.laddr, c.lport, c.raddr, c.rport
                )
            } else {
                format!(
                    "{:<6} {:<12} {:<2} {:<16} {:<16} {:<5} ",
                    c.pid, c.comm, 4, c.laddr, c.raddr, c.rport
                )
            };
            let hits: Vec<&&str> = lines.iter().filter(|l| l.contains(&head)).collect();
            if lport {
                assert_eq!(hits.len(), 1, "want a line with {head:?}:\n{text}");
            } else {
                // without LPORT both connects of the client look alike
                assert_eq!(hits.len(), 2, "want two lines with {head:?}:\n{text}");
            }
            for h in hits {
                let lat = h.rsplit(' ').next().unwrap();
                let (_, decimals) = lat.split_once('.').expect("LAT(ms) has decimals");
                assert_eq!(decimals.len(), 2, "LAT(ms) {lat:?} as %.2f");
                assert!(lat.parse::<f64>().unwrap() < 1000.0);
                if lport {
                    let t = h.split_whitespace().next().unwrap();
                    assert!(t.parse::<f64>().is_ok(), "TIME(s) {t:?}");
                    assert_eq!(
                        t.split_once('.').unwrap().1.len(),
                        3,
                        "TIME(s) as %.3f: {t:?}"
                    );
                }
            }
        }
    }
}

// ---- a person watching: rows while the tool runs, at a trickle ----

// The client's handshake (table columns PID COMM IP SADDR DADDR DPORT LAT(ms)).
live_tests!("tcpconnlat", "tl", |out: &SessionOut| {
    let c = &out.clients[0];
    vec![
        Want::new("the client's handshake latency")
            .col("pid", 0, c.pid)
            .col("comm", 1, &c.comm)
            .col("daddr", 4, &c.raddr)
            .col("dport", 5, c.rport)
            .json("lport", c.lport),
    ]
});

/// A handshake that finds no room in the table of handshakes in progress is counted, never dropped
/// silently: the table made to hold one (`SOCKRAY_MAP_ENTRIES=starts=1`), and that one place taken by a
/// connect whose SYN goes out of a veth with a fixed neighbour and is never answered; meanwhile five
/// loopback connections: none can be shown, and lost_capacity counts them (at least them: the tracer
/// sees the host's connects too). Once the pending connect is abandoned (SYN_SENT -> CLOSE frees its
/// place), a connection is shown again.
#[test]
fn a_full_handshake_table_is_counted() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    for cmd in [
        &[
            "link", "add", "sr-va", "type", "veth", "peer", "name", "sr-vb",
        ][..],
        &["addr", "add", "10.201.0.1/24", "dev", "sr-va"],
        &["link", "set", "sr-va", "up"],
        &["link", "set", "sr-vb", "up"],
        &[
            "neigh",
            "add",
            "10.201.0.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "sr-va",
            "nud",
            "permanent",
        ],
    ] {
        let out = run_timeout(
            std::process::Command::new("ip")
                .args(["-n", &ns.name])
                .args(cmd),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "ip {cmd:?}: {out:?}");
    }
    let tracer = Tracer::start_env("tcpconnlat", &[], &[("SOCKRAY_MAP_ENTRIES", "starts=1")]);
    let mut pending = Gen::spawn(
        &ns,
        &gen_args(&[
            "connect",
            "--addr",
            "10.201.0.2",
            "--port",
            "9",
            "--comm",
            "tcl-pend",
            "--pending-ms",
            "1500",
        ]),
    );
    let p = pending.wait_role("connect", Duration::from_secs(10));
    assert_eq!(
        p["ret"].as_i64(),
        Some(-(libc::EINPROGRESS as i64)),
        "the SYN is out, unanswered: {p}"
    );
    let mut spec = session("127.0.0.1", "tcl-full-srv", "tcl-full-cli");
    spec.count = 5;
    let blocked = spec.run(&ns);
    pending.finish(Duration::from_secs(10));
    let mut spec = session("127.0.0.1", "tcl-free-srv", "tcl-free-cli");
    spec.count = 1;
    let t0 = now_ns();
    let freed = spec.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop_with_capacity();
    assert!(
        rows_of_pids(&trace.rows, &[blocked.client_pid]).is_empty(),
        "no handshake of the full table's time shown: {:#?}",
        trace.rows
    );
    assert!(
        trace.capacity >= 5,
        "the five handshakes that found no room are counted: lost_capacity {}; stderr:\n{}",
        trace.capacity,
        trace.stderr
    );
    assert!(
        trace.stderr.contains("records could not be kept"),
        "said on stderr:\n{}",
        trace.stderr
    );
    check_row(&trace.rows, &freed.clients[0], LOOPBACK, (t0, t1));
}
