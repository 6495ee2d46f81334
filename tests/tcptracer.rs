//! `sockray tcptracer` against known traffic in a fresh network namespace: for every connection one C
//! row naming the connecting client, one A row naming the accepting server, and one X row for each end
//! naming that end's own process (never the peer, although on loopback the peer's task runs the final
//! state change), with local SADDR/SPORT and remote DADDR/DPORT; IPv4 and IPv6, either side closing
//! first; the filters (-p, -4/-6, -N, --cgroup) keep exactly what they name; the tables are BCC's.
//! Needs root and BTF; see common::require_bpf.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns", "type", "pid", "comm", "uid", "ip", "saddr", "sport", "daddr", "dport", "netns",
];

/// The inode number of a network namespace file (what -N takes and the netns field shows).
fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

fn ns_inode(ns: &Netns) -> u64 {
    inode(&format!("/run/netns/{}", ns.name))
}

fn session(addr: &'static str, srv: &'static str, cli: &'static str, closer: Closer) -> Session {
    let mut s = Session::new(addr, pick_port(), srv, cli);
    s.client_send = 500;
    s.server_send = 700;
    s.hold_ms = 30;
    s.closer = closer;
    s.count = 3;
    s
}

/// Rows of one connection end: its family and 4-tuple as that end sees it, in namespace `netns`.
fn end_rows<'a>(rows: &'a [Value], c: &Conn, netns: u64) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| {
            r["netns"].as_u64() == Some(netns)
                && r["ip"].as_u64() == Some(c.family)
                && r["saddr"].as_str() == Some(c.laddr.as_str())
                && r["sport"].as_u64() == Some(c.lport)
                && r["daddr"].as_str() == Some(c.raddr.as_str())
                && r["dport"].as_u64() == Some(c.rport)
        })
        .collect()
}

/// The rows of one connection end are exactly `types` (in this order), each field checked: the end's
/// own process, its addresses (local as saddr/sport, remote as daddr/dport), namespace and time.
fn check_end(rows: &[Value], c: &Conn, types: &[&str], netns: u64, window: (u64, u64)) {
    let who = format!(
        "{} {}:{} -> {}:{}",
        c.role, c.laddr, c.lport, c.raddr, c.rport
    );
    let mut mine = end_rows(rows, c, netns);
    mine.sort_by_key(|r| u(r, "time_ns")); // stable: ties keep output order
    let got: Vec<&str> = mine.iter().map(|r| s(r, "type")).collect();
    assert_eq!(got, types, "{who}: event types; rows: {mine:#?}");
    for r in &mine {
        assert_keys(r, KEYS);
        let t = s(r, "type");
        assert_eq!(
            u(r, "pid"),
            c.pid,
            "{who} {t}: pid must be this end's own process: {r}"
        );
        assert_eq!(s(r, "comm"), c.comm, "{who} {t}: comm: {r}");
        assert_eq!(u(r, "uid"), c.uid, "{who} {t}: uid: {r}");
        assert_eq!(u(r, "netns"), netns, "{who} {t}: netns: {r}");
        assert_time(r, window.0, window.1);
    }
}

/// Every connection of a session: C and X for the client end, A and X for the server end, and no
/// other row on the session's port in its namespace.
fn check_session(rows: &[Value], out: &SessionOut, netns: u64, window: (u64, u64)) {
    for (c, sv) in out.clients.iter().zip(&out.servers) {
        check_end(rows, c, &["connect", "close"], netns, window);
        check_end(rows, sv, &["accept", "close"], netns, window);
    }
    let port = out.port();
    let on_port: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["netns"].as_u64() == Some(netns)
                && (r["sport"].as_u64() == Some(port) || r["dport"].as_u64() == Some(port))
        })
        .collect();
    assert_eq!(
        on_port.len(),
        4 * out.clients.len(),
        "rows on port {port} in the test's namespace (no listener row, no duplicates): {on_port:#?}"
    );
}

fn rows_of_pids<'a>(rows: &'a [Value], pids: &[u64]) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r["pid"].as_u64().is_some_and(|p| pids.contains(&p)))
        .collect()
}

fn traced(ns: &Netns, spec: &Session) {
    let (trace, out, win) = traced_session("tcptracer", &[], ns, spec);
    check_session(&trace.rows, &out, ns_inode(ns), win);
}

#[test]
fn v4_client_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    traced(
        &ns,
        &session("127.0.0.1", "tt-4c-srv", "tt-4c-cli", Closer::Client),
    );
}

#[test]
fn v4_server_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    traced(
        &ns,
        &session("127.0.0.1", "tt-4s-srv", "tt-4s-cli", Closer::Server),
    );
}

#[test]
fn v6_client_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    traced(
        &ns,
        &session("::1", "tt-6c-srv", "tt-6c-cli", Closer::Client),
    );
}

#[test]
fn v6_server_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    traced(
        &ns,
        &session("::1", "tt-6s-srv", "tt-6s-cli", Closer::Server),
    );
}

/// Connections made before the tracer started: their closes still name each end's own process (the
/// owners come from the walk over every process's sockets at start).
#[test]
fn closes_of_connections_older_than_the_tracer() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("::1", "tt-old-srv", "tt-old-cli", Closer::Client);
    spec.count = 1;
    spec.hold_ms = 0;
    spec.close_on_go = true;
    let t0 = now_ns();
    let mut g = Gen::spawn(&ns, &spec.args());
    // the connection is open (both ends hold it) before the tracer starts, and closes on go
    g.wait_role("client-connected", Duration::from_secs(30));
    let tracer = Tracer::start("tcptracer", &["-6"]);
    g.go();
    let out = SessionOut::parse(&spec, g.finish(Duration::from_secs(90)));
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let ino = ns_inode(&ns);
    for (c, sv) in out.clients.iter().zip(&out.servers) {
        check_end(&trace.rows, c, &["close"], ino, (t0, t1));
        check_end(&trace.rows, sv, &["close"], ino, (t0, t1));
    }
}

/// -p, -4/-6, -N and --cgroup, each on the same traffic: an IPv4 session whose processes are known
/// before the tracers start (the client waits for "go"), then an IPv6 session.
#[test]
fn filters() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let (Some(cg), Some(empty)) = (Cgroup::new("tt-in"), Cgroup::new("tt-empty")) else {
        panic!(
            "cannot create cgroup v2 directories (cgroup2 mount: {:?})",
            cgroup2_root()
        );
    };
    let ns = Netns::new();
    let ino = ns_inode(&ns);
    let root_ino = inode("/proc/self/ns/net");
    assert_ne!(ino, root_ino);

    let mut s4 = session("127.0.0.1", "tt-f4-srv", "tt-f4-cli", Closer::Client);
    s4.wait_go = true;
    s4.count = 2;
    let s6 = session("::1", "tt-f6-srv", "tt-f6-cli", Closer::Server);
    let mut g = Gen::spawn(&ns, &s4.args());
    let server_pid = u(
        &g.wait_role("server-listen", Duration::from_secs(10)),
        "pid",
    );
    let client_pid = u(&g.wait_role("client-ready", Duration::from_secs(10)), "pid");
    cg.add(client_pid);

    // BCC's pinned id maps: the client's cgroup; the generator's mount namespace (`ip netns exec`
    // makes one of its own), and this test's
    let cg_set = PinnedIds::new("tt-cg", &[cgroup_id_of(&cg.path)]);
    let gen_mntns = mntns_of(server_pid);
    let my_mntns = mntns_of(std::process::id() as u64);
    assert_ne!(gen_mntns, my_mntns, "ip netns exec makes a mount namespace");
    assert_eq!(mntns_of(client_pid), gen_mntns);
    let mnt_gen = PinnedIds::new("tt-mnt", &[gen_mntns]);
    let mnt_mine = PinnedIds::new("tt-mnt-mine", &[my_mntns]);
    let me = std::process::id().to_string();
    let spid = server_pid.to_string();
    let ino_s = ino.to_string();
    let root_s = root_ino.to_string();
    // SAFETY: geteuid never fails.
    let my_uid = unsafe { libc::geteuid() }.to_string();
    let filters: Vec<(&str, Vec<&str>)> = vec![
        ("pid-server", vec!["-p", &spid]),
        ("pid-other", vec!["-p", &me]),
        ("v4", vec!["-4"]),
        ("v6", vec!["-6"]),
        ("netns", vec!["-N", &ino_s]),
        ("netns-other", vec!["-N", &root_s]),
        ("cgroup-client", vec!["--cgroup", &cg.path]),
        ("cgroup-empty", vec!["--cgroup", &empty.path]),
        ("uid-mine", vec!["-u", &my_uid]),
        ("cgroupmap-client", vec!["--cgroupmap", &cg_set.path]),
        ("mntnsmap-gen", vec!["-M", &mnt_gen.path]),
        ("mntnsmap-mine", vec!["--mntnsmap", &mnt_mine.path]),
        ("uid-other", vec!["-u", "12345"]),
    ];
    let tracers: Vec<(&str, Tracer)> = filters
        .iter()
        .map(|(n, a)| (*n, Tracer::start("tcptracer", a)))
        .collect();
    let t0 = now_ns();
    g.go();
    let out4 = SessionOut::parse(&s4, g.finish(Duration::from_secs(30)));
    let out6 = s6.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let win = (t0, t1);
    assert_eq!((out4.server_pid, out4.client_pid), (server_pid, client_pid));
    let ours = [
        out4.client_pid,
        out4.server_pid,
        out6.client_pid,
        out6.server_pid,
    ];
    let conns = out4.clients.len() + out6.clients.len();

    for (name, t) in tracers {
        let trace = t.stop();
        let rows = &trace.rows;
        let mine = rows_of_pids(rows, &ours);
        match name {
            "pid-server" => {
                assert!(
                    rows.iter().all(|r| u(r, "pid") == server_pid),
                    "-p {server_pid}: {rows:#?}"
                );
                for sv in &out4.servers {
                    check_end(rows, sv, &["accept", "close"], ino, win);
                }
                assert_eq!(rows.len(), 2 * out4.servers.len(), "-p: {rows:#?}");
            }
            "uid-mine" => {
                assert!(
                    rows.iter().all(|r| u(r, "uid").to_string() == my_uid),
                    "-u {my_uid}: {rows:#?}"
                );
                check_session(rows, &out4, ino, win);
                check_session(rows, &out6, ino, win);
            }
            "pid-other" | "cgroup-empty" | "uid-other" => {
                assert!(rows.is_empty(), "{name}: {rows:#?}");
            }
            "v4" => {
                assert!(rows.iter().all(|r| u(r, "ip") == 4), "-4: {rows:#?}");
                check_session(rows, &out4, ino, win);
                assert!(
                    rows_of_pids(rows, &[out6.client_pid, out6.server_pid]).is_empty(),
                    "-4 shows the IPv6 session: {rows:#?}"
                );
            }
            "v6" => {
                assert!(rows.iter().all(|r| u(r, "ip") == 6), "-6: {rows:#?}");
                check_session(rows, &out6, ino, win);
                assert!(
                    rows_of_pids(rows, &[out4.client_pid, out4.server_pid]).is_empty(),
                    "-6 shows the IPv4 session: {rows:#?}"
                );
            }
            "netns" => {
                assert!(
                    rows.iter().all(|r| u(r, "netns") == ino),
                    "-N {ino}: {rows:#?}"
                );
                check_session(rows, &out4, ino, win);
                check_session(rows, &out6, ino, win);
                assert_eq!(rows.len(), 4 * conns, "-N {ino}: {rows:#?}");
            }
            "netns-other" => {
                assert!(
                    rows.iter().all(|r| u(r, "netns") == root_ino),
                    "-N {root_ino}: {rows:#?}"
                );
                assert!(
                    mine.is_empty(),
                    "-N {root_ino}: rows of the test: {mine:#?}"
                );
            }
            "mntnsmap-gen" => {
                // only the IPv4 generator's processes run in its mount namespace (the IPv6 session's
                // `ip netns exec` makes another, whose id may or may not reuse the first's once that
                // is gone: its rows are not asserted either way)
                assert!(
                    rows.iter().all(|r| ours.contains(&u(r, "pid"))),
                    "--mntnsmap: rows of other processes: {rows:#?}"
                );
                check_session(rows, &out4, ino, win);
                let v4 = rows_of_pids(rows, &[out4.client_pid, out4.server_pid]);
                assert_eq!(v4.len(), 4 * out4.clients.len(), "--mntnsmap: {rows:#?}");
            }
            "mntnsmap-mine" => {
                assert!(mine.is_empty(), "--mntnsmap (the test's): {mine:#?}");
            }
            "cgroup-client" | "cgroupmap-client" => {
                assert!(
                    rows.iter().all(|r| u(r, "pid") == client_pid),
                    "only the client is in {}: {rows:#?}",
                    cg.path
                );
                for c in &out4.clients {
                    check_end(rows, c, &["connect", "close"], ino, win);
                }
                assert_eq!(rows.len(), 2 * out4.clients.len(), "{name}: {rows:#?}");
            }
            _ => unreachable!(),
        }
    }
}

/// The tables a person sees: BCC's header and columns, and -v's long form with TIME(ns) and NETNS.
#[test]
fn table_output() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let ino = ns_inode(&ns);
    let ino_s = ino.to_string();

    let mut out = None;
    let text = traced_text("tcptracer", &["-N", &ino_s, "-U"], || {
        let mut s = session("127.0.0.1", "tt-tab-srv", "tt-tab-cli", Closer::Client);
        s.count = 1;
        out = Some(s.run(&ns));
    });
    let out = out.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "UID    T  PID    COMM             IP SADDR            DADDR            SPORT  DPORT"
    );
    let (c, sv) = (&out.clients[0], &out.servers[0]);
    let row = |t: &str, e: &Conn| {
        format!(
            "{:<6} {:<2} {:<6} {:<16} {:<2} {:<16} {:<16} {:<6} {}",
            e.uid, t, e.pid, e.comm, 4, e.laddr, e.raddr, e.lport, e.rport
        )
    };
    let want = [row("C", c), row("A", sv), row("X", c), row("X", sv)];
    for w in &want {
        assert_eq!(
            lines.iter().filter(|l| **l == w.as_str()).count(),
            1,
            "want the line {w:?} once:\n{text}"
        );
    }
    assert_eq!(lines.len(), 1 + want.len(), "{text}");

    let mut out = None;
    let text = traced_text("tcptracer", &["-v", "-t"], || {
        let mut s = session("::1", "tt-tabv-srv", "tt-tabv-cli", Closer::Server);
        s.count = 1;
        out = Some(s.run(&ns));
    });
    let out = out.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "TIME(ns)       TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS"
    );
    let (c, sv) = (&out.clients[0], &out.servers[0]);
    let row = |t: &str, e: &Conn| {
        format!(
            "{:<12} {:<6} {:<16} {:<2} {:<16} {:<16} {:<6} {:<6} {}",
            t, e.pid, e.comm, 6, e.laddr, e.raddr, e.lport, e.rport, ino
        )
    };
    for w in [
        row("connect", c),
        row("accept", sv),
        row("close", c),
        row("close", sv),
    ] {
        let hits: Vec<&&str> = lines
            .iter()
            .filter(|l| l.len() == 15 + w.len() && l.ends_with(&w))
            .collect();
        assert_eq!(hits.len(), 1, "want one line ending in {w:?}:\n{text}");
        let time = &hits[0][..15];
        assert!(
            time.ends_with(' ') && time.trim().parse::<u64>().is_ok(),
            "TIME(ns) as whole nanoseconds in 14 columns: {:?}",
            hits[0]
        );
    }
}

// ---- a person watching: rows while the tool runs, at a trickle ----

// Connect, accept and both closes (table columns T PID COMM IP SADDR DADDR SPORT DPORT).
live_tests!("tcptracer", "tt", |out: &SessionOut| {
    let (c, s) = (&out.clients[0], &out.servers[0]);
    let row = |what: &str, t: &str, e: &Conn| {
        let kind = match t {
            "C" => "connect",
            "A" => "accept",
            _ => "close",
        };
        Want::new(what)
            .table(0, t)
            .json("type", kind)
            .col("pid", 1, e.pid)
            .col("comm", 2, &e.comm)
            .col("sport", 6, e.lport)
            .col("dport", 7, e.rport)
    };
    vec![
        row("the client's connect", "C", c),
        row("the server's accept", "A", s),
        row("the client's close", "X", c),
        row("the server's close", "X", s),
    ]
});

/// --cgroupmap/--mntnsmap given something that is not a pinned hash map of ids: a one-line error
/// naming the flag and the path.
#[test]
fn scope_map_errors() {
    if !require_bpf() {
        return;
    }
    let ids = PinnedIds::new("tt-err", &[]);
    let run = |args: &[&str]| {
        let o = std::process::Command::new(sockray_bin())
            .arg("tcptracer")
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = run(&["--cgroupmap", "/nonexistent/map"]);
    assert!(
        err.contains("--cgroupmap /nonexistent/map: not a pinned BPF map"),
        "{err}"
    );
    let err = run(&["--mntnsmap", "/etc/hostname"]);
    assert!(
        err.contains("--mntnsmap /etc/hostname: not a pinned BPF map"),
        "{err}"
    );
    let err = run(&["--cgroupmap", &ids.path, "--mntnsmap", &ids.path]);
    assert!(err.contains("cannot be used with"), "{err}");
}
