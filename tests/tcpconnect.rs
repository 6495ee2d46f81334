//! `sockray tcpconnect` against known traffic in a fresh netns: every field of the test's own connects
//! (pid and comm of the forked client, its real local port, addresses, connect()'s result), refused
//! connects (blocking and non-blocking), the SYN_SENT fallback, the filters, `-c` and `-d`, and the
//! table users see. Needs root and BTF; see common::require_bpf.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns", "pid", "comm", "uid", "ip", "saddr", "lport", "daddr", "dport", "ret",
];

/// Rows to this destination port made by this process.
fn rows_to(rows: &[Value], dport: u64, pid: u64) -> Vec<&Value> {
    rows.iter()
        .filter(|r| r["dport"].as_u64() == Some(dport) && r["pid"].as_u64() == Some(pid))
        .collect()
}

/// Rows of any of these processes.
fn rows_of_pids<'a>(rows: &'a [Value], pids: &[u64]) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r["pid"].as_u64().is_some_and(|p| pids.contains(&p)))
        .collect()
}

/// The one row of a connect the generator reported (`lport` is its real local port), checked field by
/// field; `ret` is connect()'s return value.
fn check_row(rows: &[Value], c: &Conn, ret: i64, window: (u64, u64)) -> Value {
    let mine: Vec<&Value> = rows_to(rows, c.rport, c.pid)
        .into_iter()
        .filter(|r| r["lport"].as_u64() == Some(c.lport))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "want one tcpconnect row for {c:?} (pid {}, lport {}), got {mine:#?}; all rows to port {}: {:#?}",
        c.pid,
        c.lport,
        c.rport,
        rows.iter()
            .filter(|r| r["dport"].as_u64() == Some(c.rport))
            .collect::<Vec<_>>()
    );
    let r = mine[0].clone();
    assert_keys(&r, KEYS);
    assert_eq!(u(&r, "pid"), c.pid, "pid: {r}");
    assert_eq!(s(&r, "comm"), c.comm, "comm of the connecting child: {r}");
    assert_eq!(u(&r, "uid"), c.uid, "uid: {r}");
    assert_eq!(u(&r, "ip"), c.family, "ip: {r}");
    // the source address is the one the kernel picked for the connect (the generator's laddr may be
    // the unspecified address after a refused connect: the kernel resets it)
    let want_saddr = if c.family == 4 { "127.0.0.1" } else { "::1" };
    assert_eq!(s(&r, "saddr"), want_saddr, "saddr: {r}");
    assert_eq!(s(&r, "daddr"), c.raddr, "daddr: {r}");
    assert_eq!(u(&r, "dport"), c.rport, "dport: {r}");
    assert_ne!(c.lport, 0);
    assert_eq!(
        u(&r, "lport"),
        c.lport,
        "lport is the client's real local port: {r}"
    );
    assert_eq!(
        r["ret"].as_i64(),
        Some(ret),
        "ret (connect()'s return value): {r}"
    );
    assert_time(&r, window.0, window.1);
    r
}

fn session(addr: &'static str, srv: &'static str, cli: &'static str) -> Session {
    let mut s = Session::new(addr, pick_port(), srv, cli);
    s.client_send = 100;
    s.server_send = 100;
    s.hold_ms = 20;
    s
}

fn connects(
    ns: &Netns,
    addr: &str,
    port: u16,
    comm: &str,
    nonblock: bool,
    count: u32,
) -> Vec<Value> {
    let mut a = vec!["connect", "--addr", addr, "--comm", comm];
    let port = port.to_string();
    let count = count.to_string();
    a.extend(["--port", &port, "--count", &count]);
    if nonblock {
        a.push("--nonblock");
    }
    run_gen(ns, &gen_args(&a))
}

fn session_rows(addr: &'static str, tag: &str) {
    let ns = Netns::new();
    let srv: &'static str = Box::leak(format!("tc-{tag}-srv").into_boxed_str());
    let cli: &'static str = Box::leak(format!("tc-{tag}-cli").into_boxed_str());
    let mut spec = session(addr, srv, cli);
    spec.count = 3;
    let (trace, out, win) = traced_session("tcpconnect", &["-L", "-U", "-t"], &ns, &spec);
    for c in &out.clients {
        check_row(&trace.rows, c, 0, win);
    }
    // the server accepted, it did not connect
    assert!(
        rows_of_pids(&trace.rows, &[out.server_pid]).is_empty(),
        "rows of the server process: {:#?}",
        rows_of_pids(&trace.rows, &[out.server_pid])
    );
    assert_eq!(rows_to(&trace.rows, out.port(), out.client_pid).len(), 3);
}

#[test]
fn v4_connects_of_a_forked_child() {
    if !require_bpf() {
        return;
    }
    session_rows("127.0.0.1", "v4");
}

#[test]
fn v6_connects_of_a_forked_child() {
    if !require_bpf() {
        return;
    }
    session_rows("::1", "v6");
}

/// Refused connects are shown: blocking (ret -111), blocking after bind(), non-blocking (ret -115), on
/// both families, with the real local port.
#[test]
fn refused_connects_are_shown() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let tracer = Tracer::start("tcpconnect", &[]);
    let t0 = now_ns();
    let mut want: Vec<(Conn, i64)> = Vec::new();
    for (addr, tag) in [("127.0.0.1", "4"), ("::1", "6")] {
        let port = pick_port();
        for l in connects(&ns, addr, port, &format!("tc-rb{tag}"), false, 2) {
            assert_eq!(l["ret"].as_i64(), Some(-111), "{l}");
            want.push((Conn::from_json(&l), -111));
        }
        for l in connects(&ns, addr, port, &format!("tc-rn{tag}"), true, 2) {
            assert_eq!(l["ret"].as_i64(), Some(-115), "{l}");
            assert_eq!(l["result"].as_i64(), Some(-111), "{l}");
            want.push((Conn::from_json(&l), -115));
        }
        let p = port.to_string();
        let comm = format!("tc-rf{tag}");
        let lines = run_gen(
            &ns,
            &gen_args(&["refused", "--addr", addr, "--port", &p, "--comm", &comm]),
        );
        want.push((Conn::from_json(&lines[0]), -111));
    }
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    for (c, ret) in &want {
        check_row(&trace.rows, c, *ret, (t0, t1));
    }
}

/// Without the syscall tracepoints (forced here) the event comes from SYN_SENT: right process and
/// addresses, local port 0 (not chosen yet), ret null.
#[test]
fn syn_sent_fallback() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "tc-fb-srv", "tc-fb-cli");
    spec.count = 2;
    let (trace, out, win) = traced_session("tcpconnect", &["--at-syn-sent"], &ns, &spec);
    let mine = rows_to(&trace.rows, out.port(), out.client_pid);
    assert_eq!(mine.len(), 2, "{mine:#?}");
    for r in mine {
        assert_keys(r, KEYS);
        assert_eq!(s(r, "comm"), "tc-fb-cli");
        assert_eq!(u(r, "uid"), out.clients[0].uid);
        assert_eq!(u(r, "ip"), 4);
        assert_eq!(s(r, "saddr"), "127.0.0.1");
        assert_eq!(s(r, "daddr"), "127.0.0.1");
        assert_eq!(u(r, "lport"), 0, "{r}");
        assert!(r["ret"].is_null(), "{r}");
        assert_time(r, win.0, win.1);
    }
    assert!(
        trace.stderr.contains("events at SYN_SENT"),
        "{}",
        trace.stderr
    );
}

/// -p, -P, -u and -4/-6 each keep exactly what they name.
#[test]
fn filters() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut s4 = session("127.0.0.1", "tc-f4-srv", "tc-f4-cli");
    s4.wait_go = true;
    s4.count = 2;
    let mut g = Gen::spawn(&ns, &s4.args());
    let client_pid = u(&g.wait_role("client-ready", Duration::from_secs(10)), "pid");
    let uid = u(&g.wait_role("client-ready", Duration::from_secs(10)), "uid");
    let port4 = s4.port;
    let s6 = session("::1", "tc-f6-srv", "tc-f6-cli");
    let port6 = s6.port;

    let me = std::process::id().to_string();
    let cpid = client_pid.to_string();
    let p4 = port4.to_string();
    let other_port = pick_port().to_string();
    let uid_s = uid.to_string();
    let filters: Vec<(&str, Vec<&str>)> = vec![
        ("pid-client", vec!["-p", &cpid]),
        ("pid-other", vec!["-p", &me]),
        ("port", vec!["-P", &p4]),
        ("port-other", vec!["-P", &other_port]),
        ("uid", vec!["-u", &uid_s]),
        ("uid-other", vec!["-u", "12345"]),
        ("v4", vec!["-4"]),
        ("v6", vec!["-6"]),
    ];
    let tracers: Vec<(&str, Tracer)> = filters
        .iter()
        .map(|(n, a)| (*n, Tracer::start("tcpconnect", a)))
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
            "pid-client" => {
                assert!(
                    rows.iter().all(|r| u(r, "pid") == client_pid),
                    "-p: {rows:#?}"
                );
                for c in &out4.clients {
                    check_row(rows, c, 0, win);
                }
                assert_eq!(mine.len(), 2, "-p {client_pid}: {mine:#?}");
            }
            "port" => {
                assert!(
                    rows.iter().all(|r| u(r, "dport") == port4 as u64),
                    "-P: {rows:#?}"
                );
                for c in &out4.clients {
                    check_row(rows, c, 0, win);
                }
                assert_eq!(mine.len(), 2, "-P {port4}: {mine:#?}");
            }
            "uid" => {
                assert!(rows.iter().all(|r| u(r, "uid") == uid), "-u: {rows:#?}");
                for c in out4.clients.iter().chain(&out6.clients) {
                    check_row(rows, c, 0, win);
                }
            }
            "v4" => {
                assert!(rows.iter().all(|r| u(r, "ip") == 4), "-4: {rows:#?}");
                for c in &out4.clients {
                    check_row(rows, c, 0, win);
                }
                assert!(rows_to(rows, port6 as u64, out6.client_pid).is_empty());
            }
            "v6" => {
                assert!(rows.iter().all(|r| u(r, "ip") == 6), "-6: {rows:#?}");
                for c in &out6.clients {
                    check_row(rows, c, 0, win);
                }
                assert!(rows_to(rows, port4 as u64, out4.client_pid).is_empty());
            }
            "pid-other" | "port-other" | "uid-other" => {
                assert!(
                    mine.is_empty(),
                    "{name}: rows of the test's processes: {mine:#?}"
                );
                if name == "uid-other" {
                    assert!(
                        rows.iter().all(|r| u(r, "uid") == 12345),
                        "-u 12345: {rows:#?}"
                    );
                }
                if name == "pid-other" {
                    assert!(rows.is_empty(), "-p {me} (no connects): {rows:#?}");
                }
            }
            _ => unreachable!(),
        }
    }
}

/// --cgroup: the cgroup the client was moved into shows its connects; an empty sibling shows none.
#[test]
fn cgroup_filter() {
    if !require_bpf() {
        return;
    }
    let (Some(cg), Some(empty)) = (Cgroup::new("tc-in"), Cgroup::new("tc-empty")) else {
        panic!(
            "cannot create cgroup v2 directories (cgroup2 mount: {:?})",
            cgroup2_root()
        );
    };
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "tc-cg-srv", "tc-cg-cli");
    spec.wait_go = true;
    spec.count = 2;
    let mut g = Gen::spawn(&ns, &spec.args());
    let client_pid = u(&g.wait_role("client-ready", Duration::from_secs(10)), "pid");
    cg.add(client_pid);
    let t_in = Tracer::start("tcpconnect", &["--cgroup", &cg.path]);
    let t_empty = Tracer::start("tcpconnect", &["--cgroup", &empty.path]);
    let t0 = now_ns();
    g.go();
    let out = SessionOut::parse(&spec, g.finish(Duration::from_secs(30)));
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let (tin, tempty) = (t_in.stop(), t_empty.stop());
    for c in &out.clients {
        check_row(&tin.rows, c, 0, (t0, t1));
    }
    assert!(
        tin.rows.iter().all(|r| u(r, "pid") == client_pid),
        "only the client is in {}: {:#?}",
        cg.path,
        tin.rows
    );
    assert!(tempty.rows.is_empty(), "empty cgroup: {:#?}", tempty.rows);
}

/// -c counts per (source, destination, port) in the kernel and prints the table at exit.
#[test]
fn count_table() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let tracer = Tracer::start("tcpconnect", &["-c"]);
    let mut spec = session("127.0.0.1", "tc-c-srv", "tc-c-cli");
    spec.count = 4;
    let out = spec.run(&ns);
    let refused_port = pick_port();
    connects(&ns, "::1", refused_port, "tc-c-ref", false, 3);
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let find = |dport: u64| -> Vec<&Value> {
        trace
            .rows
            .iter()
            .filter(|r| r["dport"].as_u64() == Some(dport))
            .collect()
    };
    let r4 = find(out.port());
    assert_eq!(r4.len(), 1, "{:#?}", trace.rows);
    assert_keys(r4[0], &["ip", "saddr", "daddr", "dport", "connects"]);
    assert_eq!(u(r4[0], "ip"), 4);
    assert_eq!(s(r4[0], "saddr"), "127.0.0.1");
    assert_eq!(s(r4[0], "daddr"), "127.0.0.1");
    assert_eq!(u(r4[0], "connects"), 4, "{}", r4[0]);
    let r6 = find(refused_port as u64);
    assert_eq!(r6.len(), 1, "{:#?}", trace.rows);
    assert_eq!(u(r6[0], "ip"), 6);
    assert_eq!(s(r6[0], "saddr"), "::1");
    assert_eq!(s(r6[0], "daddr"), "::1");
    assert_eq!(
        u(r6[0], "connects"),
        3,
        "refused connects count too: {}",
        r6[0]
    );
}

/// The table users see: BCC's columns, -L/-U/-t inserted where BCC puts them, and -c's table.
#[test]
fn table_output() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let mut spec = session("::1", "tc-tab-srv", "tc-tab-cli");
    spec.count = 2;
    let mut out = None;
    let text = traced_text("tcpconnect", &["-t", "-U", "-L"], || {
        out = Some(spec.run(&ns))
    });
    let out = out.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "TIME(s)   UID    PID    COMM         IP SADDR            LPORT  DADDR            DPORT"
    );
    for c in &out.clients {
        let row = format!(
            "{:<6} {:<6} {:<12} {:<2} {:<16} {:<6} {:<16} {}",
            c.uid, c.pid, c.comm, 6, "::1", c.lport, "::1", c.rport
        );
        let hits: Vec<&&str> = lines.iter().filter(|l| l.ends_with(&row)).collect();
        assert_eq!(hits.len(), 1, "want a line ending in {row:?}:\n{text}");
        let time = hits[0].split_whitespace().next().unwrap();
        assert!(time.parse::<f64>().is_ok(), "TIME(s) {time:?}");
        assert_eq!(
            time.split_once('.').unwrap().1.len(),
            3,
            "TIME(s) as %.3f: {time:?}"
        );
    }

    let mut out = None;
    let text = traced_text("tcpconnect", &[], || {
        let mut s = session("127.0.0.1", "tc-tab2-srv", "tc-tab2-cli");
        s.count = 1;
        out = Some(s.run(&ns));
    });
    let out = out.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "PID    COMM         IP SADDR            DADDR            DPORT"
    );
    let c = &out.clients[0];
    let row = format!(
        "{:<6} {:<12} {:<2} {:<16} {:<16} {}",
        c.pid, c.comm, 4, "127.0.0.1", "127.0.0.1", c.rport
    );
    assert!(lines.contains(&row.as_str()), "want {row:?}:\n{text}");

    let mut port = 0;
    let text = traced_text("tcpconnect", &["-c"], || {
        let mut s = session("127.0.0.1", "tc-tab3-srv", "tc-tab3-cli");
        s.count = 2;
        port = s.run(&ns).port();
    });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "");
    assert_eq!(
        lines[1],
        "LADDR                     RADDR                     RPORT                CONNECTS"
    );
    let row = format!("{:<25} {:<25} {:<20} {}", "127.0.0.1", "127.0.0.1", port, 2);
    assert!(lines.contains(&row.as_str()), "want {row:?}:\n{text}");
}

/// Does this kernel have sock:sock_recv_length (Linux 6.3+), -d's preferred hook?
fn has_recv_length() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            std::path::Path::new(t)
                .join("events/sock/sock_recv_length")
                .is_dir()
        })
}

/// -d: the connect to an address a DNS answer returned is named by the query (glibc's resolver, through
/// the netns's resolv.conf, against the generator's own DNS server on 127.0.0.1:53); other connects
/// have none. `env` may force the syscall-tracepoint fallback (SOCKRAY_ATTACH=tracepoint); `via` is the
/// hook the tool must say (with --verbose) it reads answers from.
fn dns_query_of_each_connect(env: &[(&str, &str)], via: &str) {
    let ns = Netns::new();
    let _rc = ns.resolv_conf("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n");
    let name = "svc.sockray-test.example";
    let port = pick_port();
    let plain_port = pick_port();
    let p = port.to_string();
    let tracer = Tracer::start_env("tcpconnect", &["-d"], env);
    let t0 = now_ns();
    let lines = run_gen(
        &ns,
        &gen_args(&[
            "dns-connect",
            "--name",
            name,
            "--answer",
            "127.0.0.77",
            "--port",
            &p,
            "--comm",
            "tc-dns-cli",
        ]),
    );
    let plain = connects(&ns, "127.0.0.1", plain_port, "tc-nodns", false, 1);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    // the syscall fallback's programs run on syscall tracepoints, which Linux 7.x may skip (reported)
    let trace = tracer.stop_with_skips();
    assert!(
        trace.stderr.contains(&format!("DNS answers from {via}")),
        "want DNS answers from {via}; stderr:\n{}",
        trace.stderr
    );
    let l = lines
        .iter()
        .find(|l| l["role"] == "dns-connect")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(
        s(l, "raddr"),
        "127.0.0.77",
        "the generator resolved through its server: {l}"
    );
    let c = Conn::from_json(l);
    let mine: Vec<&Value> = rows_to(&trace.rows, port as u64, c.pid);
    if trace.skipped > 0 && (mine.len() != 1 || mine[0]["query"].is_null()) {
        // never silently: the tool said how many runs the kernel skipped
        eprintln!(
            "{} skipped program run(s) reported: the connect's row or its query may be missing: {mine:?}",
            trace.skipped
        );
        return;
    }
    assert_eq!(mine.len(), 1, "{:#?}", trace.rows);
    let r = mine[0];
    let mut keys = KEYS.to_vec();
    keys.extend(["query", "query_age_ms"]);
    assert_keys(r, &keys);
    assert_eq!(s(r, "comm"), "tc-dns-cli");
    assert_eq!(s(r, "daddr"), "127.0.0.77");
    assert_eq!(u(r, "lport"), c.lport);
    assert_eq!(r["ret"].as_i64(), Some(-111), "nothing listens there: {r}");
    assert_eq!(s(r, "query"), name, "{r}");
    let age = f(r, "query_age_ms");
    assert!((0.0..5000.0).contains(&age), "query_age_ms {age}: {r}");
    assert_time(r, t0, t1);

    let pc = Conn::from_json(&plain[0]);
    let other = rows_to(&trace.rows, plain_port as u64, pc.pid);
    assert_eq!(other.len(), 1, "{:#?}", trace.rows);
    assert!(
        other[0]["query"].is_null(),
        "no DNS answer named 127.0.0.1: {}",
        other[0]
    );
    assert!(other[0]["query_age_ms"].is_null(), "{}", other[0]);
}

/// -d on this kernel's preferred hook: sock_recv_length where it exists (6.3+), else the syscalls.
#[test]
fn dns_query_default_hook() {
    if !require_bpf() {
        return;
    }
    let via = if has_recv_length() && std::env::var_os("SOCKRAY_ATTACH").is_none() {
        "tp_btf/sock_recv_length"
    } else {
        "syscalls:"
    };
    dns_query_of_each_connect(&[], via);
}

/// -d through the fallback of kernels older than 6.3 (syscall tracepoints), forced on any kernel.
#[test]
fn dns_query_syscall_fallback() {
    if !require_bpf() {
        return;
    }
    dns_query_of_each_connect(&[("SOCKRAY_ATTACH", "tracepoint")], "syscalls:");
}

/// The QUERY column as BCC prints it.
#[test]
fn dns_table_column() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let _rc = ns.resolv_conf("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n");
    let name = "tab.sockray-test.example";
    let port = pick_port();
    let p = port.to_string();
    let mut pid = 0;
    let text = traced_text("tcpconnect", &["-d"], || {
        let lines = run_gen(
            &ns,
            &gen_args(&[
                "dns-connect",
                "--name",
                name,
                "--answer",
                "127.0.0.78",
                "--port",
                &p,
                "--comm",
                "tc-dnstab",
            ]),
        );
        pid = lines[0]["pid"].as_u64().unwrap();
    });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "PID    COMM         IP SADDR            DADDR            DPORT  QUERY"
    );
    let row = format!(
        "{:<6} {:<12} {:<2} {:<16} {:<16} {:<6} {}",
        pid, "tc-dnstab", 4, "127.0.0.1", "127.0.0.78", port, name
    );
    assert!(lines.contains(&row.as_str()), "want {row:?}:\n{text}");
}

// ---- a person watching: rows while the tool runs, at a trickle ----

// The client's connect (table columns PID COMM IP SADDR DADDR DPORT).
live_tests!("tcpconnect", "tc", |out: &SessionOut| {
    let c = &out.clients[0];
    vec![
        Want::new("the client's connect")
            .col("pid", 0, c.pid)
            .col("comm", 1, &c.comm)
            .col("ip", 2, c.family)
            .col("daddr", 4, &c.raddr)
            .col("dport", 5, c.rport)
            .json("lport", c.lport),
    ]
});

/// `kill -TERM` and `kill -HUP` end `-c` as Ctrl-C does: the count table is printed.
#[test]
fn count_table_on_sigterm_and_sighup() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    for (sig, srv, cli) in [
        (libc::SIGTERM, "tc-ct-srv", "tc-ct-cli"),
        (libc::SIGHUP, "tc-ch-srv", "tc-ch-cli"),
    ] {
        let ns = Netns::new();
        let tracer = Tracer::launch("tcpconnect", &["-c"], &[], true, Sink::File);
        let mut spec = session("127.0.0.1", srv, cli);
        spec.count = 2;
        let out = spec.run(&ns);
        let trace = tracer.stop_by(sig);
        let row = trace
            .rows
            .iter()
            .find(|r| r["dport"].as_u64() == Some(out.port()))
            .unwrap_or_else(|| panic!("signal {sig}: no count row: {:#?}", trace.rows));
        assert_eq!(u(row, "connects"), 2, "signal {sig}: {row}");
    }
}
