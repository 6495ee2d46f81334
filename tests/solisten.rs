//! `sockray solisten` against listen() calls with known outcomes, in a fresh network namespace: an
//! explicit port, a port the kernel picks (listen() on an unbound socket), a listen() that fails with
//! EADDRINUSE (marked), and listen() calls that are not TCP listens (UDP, a pipe: not shown); IPv4 and
//! IPv6; the namespace inode; the filters; BCC's table. Needs root and BTF; see common::require_bpf.

mod acceptlisten;
mod common;

use std::thread;
use std::time::Duration;

use acceptlisten::{netns_inode, own_netns_inode};
use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns", "pid", "comm", "uid", "netns", "proto", "ip", "backlog", "lport", "laddr", "ret",
];

fn cases_args(addr: &str, comm: &str, backlog: i32, wait_go: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "listen-cases",
        "--addr",
        addr,
        "--port",
        &pick_port().to_string(),
        "--comm",
        comm,
        "--backlog",
        &backlog.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if wait_go {
        a.push("--wait-go".into());
    }
    a
}

/// The generator's lines for each case.
struct Cases {
    lines: Vec<Value>,
    pid: u64,
}

impl Cases {
    fn new(lines: Vec<Value>) -> Cases {
        let pid = u(&lines[0], "pid");
        Cases { lines, pid }
    }

    fn case(&self, name: &str) -> &Value {
        self.lines
            .iter()
            .find(|v| v["role"] == "listen" && v["case"] == name)
            .unwrap_or_else(|| panic!("no {name} case: {:?}", self.lines))
    }
}

/// The rows of the generator's process, checked against what it did: the four TCP listen() calls
/// (explicit, autobind, inuse-first, and the failed inuse), nothing for UDP and the pipe.
fn check_cases(rows: &[Value], cases: &Cases, ns_inode: u64, window: (u64, u64)) {
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| r["pid"].as_u64() == Some(cases.pid))
        .collect();
    let want = ["explicit", "autobind", "inuse-first", "inuse"];
    assert_eq!(
        mine.len(),
        want.len(),
        "one row per TCP listen() ({want:?}), none for UDP or a pipe; rows: {mine:#?}"
    );
    for (name, r) in want.iter().zip(&mine) {
        let c = cases.case(name);
        let who = format!("{name} listen()");
        assert_keys(r, KEYS);
        assert_eq!(s(r, "comm"), s(c, "comm"), "{who}: comm: {r}");
        assert_eq!(u(r, "uid"), u(c, "uid"), "{who}: uid: {r}");
        assert_eq!(
            u(r, "netns"),
            ns_inode,
            "{who}: netns is the namespace's inode: {r}"
        );
        assert_eq!(
            u(r, "netns"),
            u(c, "netns"),
            "{who}: netns as the process sees it: {r}"
        );
        let family = u(c, "family");
        assert_eq!(u(r, "ip"), family, "{who}: ip: {r}");
        let proto = if family == 4 { "TCPv4" } else { "TCPv6" };
        assert_eq!(s(r, "proto"), proto, "{who}: proto: {r}");
        assert_eq!(
            r["backlog"].as_i64(),
            c["backlog"].as_i64(),
            "{who}: backlog as passed to listen(): {r}"
        );
        assert_eq!(
            u(r, "lport"),
            u(c, "lport"),
            "{who}: port (getsockname): {r}"
        );
        assert_ne!(u(r, "lport"), 0, "{who}: port: {r}");
        assert_eq!(
            s(r, "laddr"),
            s(c, "laddr"),
            "{who}: address (getsockname): {r}"
        );
        assert_eq!(r["ret"].as_i64(), c["ret"].as_i64(), "{who}: ret: {r}");
        assert_time(r, window.0, window.1);
    }
    let any = if u(cases.case("explicit"), "family") == 4 {
        "0.0.0.0"
    } else {
        "::"
    };
    assert_eq!(
        s(mine[1], "laddr"),
        any,
        "unbound socket listens on the wildcard"
    );
    assert_eq!(mine[3]["ret"].as_i64(), Some(-(libc::EADDRINUSE as i64)));
}

fn traced_cases(
    args: &[&str],
    ns: &Netns,
    addr: &str,
    comm: &str,
    backlog: i32,
) -> (Vec<Value>, Cases, (u64, u64)) {
    let tracer = Tracer::start("solisten", args);
    let t0 = now_ns();
    let cases = Cases::new(run_gen(ns, &cases_args(addr, comm, backlog, false)));
    let t1 = now_ns();
    thread::sleep(SETTLE);
    (tracer.stop().rows, cases, (t0, t1))
}

#[test]
fn v4_explicit_kernel_picked_and_failed_listens() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let (rows, cases, win) = traced_cases(&[], &ns, "127.0.0.1", "sl-v4", 37);
    check_cases(&rows, &cases, netns_inode(&ns), win);
}

#[test]
fn v6_explicit_kernel_picked_and_failed_listens() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    // above net.core.somaxconn (4096): still shown as passed
    let (rows, cases, win) = traced_cases(&["--show-netns"], &ns, "::1", "sl-v6", 5000);
    check_cases(&rows, &cases, netns_inode(&ns), win);
}

#[test]
fn filters_pid_and_netns() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let inode = netns_inode(&ns);
    let inode_s = inode.to_string();
    let ns_file = format!("/run/netns/{}", ns.name);
    let root = own_netns_inode().to_string();
    let me = std::process::id().to_string();
    let mut g = Gen::spawn(&ns, &cases_args("127.0.0.1", "sl-flt", 11, true));
    let ready = g.wait_role("ready", Duration::from_secs(20));
    let pid = u(&ready, "pid").to_string();
    let tracers = vec![
        ("pid", Tracer::start("solisten", &["-p", &pid])),
        ("netns", Tracer::start("solisten", &["-n", &inode_s])),
        (
            "netns-file",
            Tracer::start("solisten", &["--netns", &ns_file]),
        ),
        ("other-pid", Tracer::start("solisten", &["-p", &me])),
        ("other-netns", Tracer::start("solisten", &["-n", &root])),
    ];
    let t0 = now_ns();
    g.go();
    let cases = Cases::new(g.finish(Duration::from_secs(30)));
    let t1 = now_ns();
    thread::sleep(SETTLE);
    for (name, t) in tracers {
        let rows = t.stop().rows;
        match name {
            "pid" | "netns" | "netns-file" => {
                check_cases(&rows, &cases, inode, (t0, t1));
                assert_eq!(
                    rows.len(),
                    4,
                    "{name}: only the generator's listens: {rows:#?}"
                );
            }
            "other-pid" => assert!(rows.is_empty(), "{name}: {rows:#?}"),
            "other-netns" => assert!(
                rows.iter().all(|r| r["pid"].as_u64() != Some(cases.pid)),
                "{name}: rows of the generator's namespace: {rows:#?}"
            ),
            _ => unreachable!(),
        }
    }
}

/// The table a person sees: BCC's header, --show-netns, -t, and the failure marker.
#[test]
fn table_columns_as_bcc() {
    if !require_bpf() {
        return;
    }
    let ns = Netns::new();
    let inode = netns_inode(&ns);
    let n = inode.to_string();
    let mut g = Gen::spawn(&ns, &cases_args("::1", "sl-tbl", 23, true));
    g.wait_role("ready", Duration::from_secs(20));
    let plain = Tracer::text("solisten", &["-n", &n]);
    let shown = Tracer::text("solisten", &["-n", &n, "--show-netns", "-t"]);
    g.go();
    let cases = Cases::new(g.finish(Duration::from_secs(30)));
    thread::sleep(SETTLE);
    let plain = plain.stop_text();
    let shown = shown.stop_text();

    assert_eq!(plain[0], "PID    COMM         PROTO  BACKLOG  PORT  ADDR");
    assert_eq!(
        shown[0],
        "TIME(s)   PID    COMM         NETNS        PROTO  BACKLOG  PORT  ADDR"
    );
    assert_eq!(plain.len(), 5, "{plain:#?}");
    assert_eq!(shown.len(), 5, "{shown:#?}");
    for (i, name) in ["explicit", "autobind", "inuse-first", "inuse"]
        .iter()
        .enumerate()
    {
        let c = cases.case(name);
        let head = format!("{:<6} {:<12}", cases.pid, "sl-tbl");
        let tail = format!(
            "{:<6} {:<8} {:<5} {}",
            "TCPv6",
            c["backlog"].as_i64().unwrap(),
            u(c, "lport"),
            s(c, "laddr")
        );
        let (want_plain, want_shown) = if *name == "inuse" {
            let t = format!("{tail:<61} failed: EADDRINUSE");
            (format!("{head} {t}"), format!("{head} {inode:<12} {t}"))
        } else {
            (
                format!("{head} {tail}"),
                format!("{head} {inode:<12} {tail}"),
            )
        };
        assert_eq!(plain[1 + i], want_plain, "{name} row");
        let line = &shown[1 + i];
        let (time, rest) = line.split_at(10);
        assert!(
            time.trim_end().parse::<f64>().is_ok(),
            "TIME(s) column: {line:?}"
        );
        assert_eq!(rest, want_shown, "{name} row with --show-netns -t");
    }
}

// ---- a person watching: rows while the tool runs, at a trickle ----

// The server's listen() (table columns PID COMM PROTO BACKLOG PORT ADDR).
live_tests!("solisten", "sl", |out: &SessionOut| {
    let l = &out.listen;
    let proto = format!("TCPv{}", u(l, "family"));
    vec![
        Want::new("the server's listen()")
            .col("pid", 0, u(l, "pid"))
            .col("comm", 1, s(l, "comm"))
            .col("proto", 2, proto)
            .col("lport", 4, u(l, "lport"))
            .col("laddr", 5, s(l, "laddr")),
    ]
});
