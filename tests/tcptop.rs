//! `sockray tcptop` against known traffic: processes with known names moving known byte counts both
//! ways in a namespace of their own (sockray-testgen `transfer`: write(), sendfile(), splice()), each
//! flow's RX/TX summed over the intervals against what each side says it sent and received (exactly:
//! the counts are what the calls returned), the filters, the intervals while the tool keeps running, the
//! count argument and the screen. Needs root and BTF; see common::require_bpf.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns", "tick", "pid", "comm", "uid", "ip", "laddr", "lport", "raddr", "rport", "rx_bytes",
    "tx_bytes", "rx_kb", "tx_kb", "rx_calls", "tx_calls",
];

/// --walk's fields: no calls (nothing per call is seen), bytes sent again instead.
const KEYS_WALK: &[&str] = &[
    "time_ns",
    "tick",
    "pid",
    "comm",
    "uid",
    "ip",
    "laddr",
    "lport",
    "raddr",
    "rport",
    "rx_bytes",
    "tx_bytes",
    "rx_kb",
    "tx_kb",
    "retrans_bytes",
];

/// Whether the test can run: --walk needs no length tracepoints (its hooks are the state change and the
/// socket iterator), so it runs on every path, the forced raw_tp one before Linux 6.3 included.
fn can_run(walk: bool) -> bool {
    if walk {
        require_bpf()
    } else {
        length_hooks_run("tcptop")
    }
}

/// The tool's arguments, with --walk first when walk.
fn with_walk<'a>(walk: bool, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = if walk { vec!["--walk"] } else { vec![] };
    v.extend_from_slice(args);
    v
}

/// Runs testgen `transfer` in ns; returns its (server, client) lines.
fn transfer(ns: &Netns, args: &[&str]) -> (Value, Value) {
    let mut a = vec!["transfer"];
    a.extend_from_slice(args);
    let lines = run_gen(ns, &gen_args(&a));
    let role = |r: &str| {
        lines
            .iter()
            .find(|v| v["role"] == r)
            .cloned()
            .unwrap_or_else(|| panic!("no {r} line: {lines:?}"))
    };
    (role("server"), role("client"))
}

/// The rows of one side's flow (its pid and local port).
fn rows_of_side<'a>(rows: &'a [Value], side: &Value) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r.get("pid").is_some() && u(r, "pid") == u(side, "pid"))
        .filter(|r| u(r, "lport") == u(side, "lport"))
        .collect()
}

/// Checks one side's flow: every row's fields, and RX/TX summed over the intervals against what the
/// side moved. Returns the number of intervals it appeared in.
///
/// `skipped`: program runs the kernel skipped in this trace (Linux 7.x runs these hooks preemptibly,
/// and a run that finds the same program preempted on its CPU is skipped and counted). Each one is
/// a send or receive call not counted, so with skips the sums may fall short (never exceed); without
/// them they must be exact.
fn check_side(rows: &[Value], side: &Value, skipped: u64) -> usize {
    let mine = rows_of_side(rows, side);
    if mine.is_empty() && skipped > 0 {
        eprintln!("no row for {side}, with {skipped} skipped run(s)");
        return 0;
    }
    assert!(!mine.is_empty(), "no row for {side}: {rows:?}");
    let (mut rx, mut tx, mut retrans) = (0, 0, 0);
    let mut ticks = BTreeSet::new();
    for r in &mine {
        if r.get("retrans_bytes").is_some() {
            assert_keys(r, KEYS_WALK);
            // loopback loses nothing, but a slow (emulated) machine can time out and send again:
            // what was resent is part of what was sent
            retrans += u(r, "retrans_bytes");
        } else {
            assert_keys(r, KEYS);
        }
        assert_eq!(s(r, "comm"), s(side, "comm"), "{r}");
        assert_eq!(u(r, "uid"), u(side, "uid"), "{r}");
        assert_eq!(u(r, "ip"), u(side, "family"), "{r}");
        assert_eq!(s(r, "laddr"), s(side, "laddr"), "{r}");
        assert_eq!(s(r, "raddr"), s(side, "raddr"), "{r}");
        assert_eq!(u(r, "rport"), u(side, "rport"), "{r}");
        assert_eq!(u(r, "rx_kb"), u(r, "rx_bytes") / 1024, "{r}");
        assert_eq!(u(r, "tx_kb"), u(r, "tx_bytes") / 1024, "{r}");
        assert!(u(r, "rx_bytes") + u(r, "tx_bytes") > 0, "an empty row: {r}");
        assert!(
            ticks.insert(u(r, "tick")),
            "two rows in one interval: {mine:?}"
        );
        rx += u(r, "rx_bytes");
        tx += u(r, "tx_bytes");
    }
    if skipped == 0 {
        assert_eq!(rx, u(side, "received"), "RX of {side}: {mine:?}");
        assert_eq!(tx, u(side, "sent"), "TX of {side}: {mine:?}");
    } else {
        assert!(rx <= u(side, "received"), "RX of {side}: {mine:?}");
        assert!(tx <= u(side, "sent"), "TX of {side}: {mine:?}");
        eprintln!(
            "{skipped} skipped run(s): RX {rx} of {}, TX {tx} of {}",
            u(side, "received"),
            u(side, "sent")
        );
    }
    assert!(retrans <= tx, "more resent than sent by {side}: {mine:?}");
    ticks.len()
}

fn both_ways_env(addr: &str, how: &str, env: &[(&str, &str)]) {
    both_ways_mode(addr, how, env, false);
}

/// Known byte counts each way; walk: with --walk (counted from the sockets' counters: the same exact
/// payload bytes, attributed to each socket's owner).
fn both_ways_mode(addr: &str, how: &str, env: &[(&str, &str)], walk: bool) {
    if !can_run(walk) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start_env("tcptop", &with_walk(walk, &["1"]), env);
    let (srv, cli) = transfer(
        &ns,
        &[
            "--addr",
            addr,
            "--send",
            "1000000",
            "--reply",
            "123457",
            "--write-size",
            "1000",
            "--how",
            how,
            "--server-comm",
            "tt-srv",
            "--client-comm",
            "tt-cli",
        ],
    );
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    assert_eq!(u(&cli, "sent"), 1_000_000);
    check_side(&trace.rows, &srv, trace.skipped);
    check_side(&trace.rows, &cli, trace.skipped);
    if walk {
        return;
    }
    // the client's sends, one call each (a sendfile or splice of 1000 bytes is one sendmsg too on
    // Linux 6.5+; before, the fallback's tcp_sendpage runs once per page, a piece may span two)
    let calls: u64 = rows_of_side(&trace.rows, &cli)
        .iter()
        .map(|r| u(r, "tx_calls"))
        .sum();
    let mine = rows_of_side(&trace.rows, &cli);
    if how == "write" || has_length_tracepoints() {
        assert_eq!(calls, 1000, "{mine:?}");
    } else {
        assert!((1000..=2000).contains(&calls), "{mine:?}");
    }
}

#[test]
fn v4_bytes_both_ways() {
    both_ways_env("127.0.0.1", "write", &[]);
}

#[test]
fn v6_bytes_both_ways() {
    both_ways_env("::1", "write", &[]);
}

#[test]
fn walk_v4_bytes_both_ways() {
    both_ways_mode("127.0.0.1", "write", &[], true);
}

#[test]
fn walk_v6_bytes_both_ways() {
    both_ways_mode("::1", "write", &[], true);
}

/// --walk on the raw_tp path (its CLOSE hook then reads the socket with helpers).
#[test]
fn walk_raw_tp_path() {
    both_ways_mode(
        "127.0.0.1",
        "sendfile",
        &[("SOCKRAY_ATTACH", "raw_tp")],
        true,
    );
}

/// --walk: sessions that open and close between two walks (a 10 s interval, stopped after the
/// transfers) are counted at their CLOSE, every byte, both families.
#[test]
fn walk_session_within_one_interval() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start("tcptop", &["--walk", "10"]);
    let (s4, c4) = transfer(
        &ns,
        &["--addr", "127.0.0.1", "--send", "300000", "--reply", "4321"],
    );
    let (s6, c6) = transfer(&ns, &["--addr", "::1", "--send", "77777", "--reply", "999"]);
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    for side in [&s4, &c4, &s6, &c6] {
        check_side(&trace.rows, side, trace.skipped);
    }
    // all of it in the one interval that Ctrl-C ended: no walk saw these sessions
    for r in &trace.rows {
        assert_eq!(u(r, "tick"), 1, "{r}");
    }
}

/// --walk: a connection older than the tool is its owners' (seeded at start) and counted from the
/// start only: the bytes sent before are not in its rows.
#[test]
fn walk_older_connection_counted_from_start() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut g = Gen::spawn(
        &ns,
        &gen_args(&[
            "transfer",
            "--addr",
            "127.0.0.1",
            "--send",
            "500000",
            "--pre-send",
            "200000",
            "--reply",
            "30000",
            "--wait-go",
            "--server-comm",
            "tw-old-srv",
            "--client-comm",
            "tw-old-cli",
        ]),
    );
    let ready = g.wait_role("client-ready", Duration::from_secs(10));
    assert_eq!(u(&ready, "pre_sent"), 200_000, "{ready}");
    // the first bytes received and acked well before the tool starts
    std::thread::sleep(SETTLE);
    let t = Tracer::start("tcptop", &["--walk", "1"]);
    g.go();
    let lines = g.finish(Duration::from_secs(30));
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    let role = |r: &str| lines.iter().find(|v| v["role"] == r).unwrap().clone();
    let (mut srv, mut cli) = (role("server"), role("client"));
    assert_eq!(u(&cli, "lport"), u(&ready, "lport"));
    // what moved while the tool ran
    cli["sent"] = (u(&cli, "sent") - 200_000).into();
    srv["received"] = (u(&srv, "received") - 200_000).into();
    check_side(&trace.rows, &srv, trace.skipped);
    check_side(&trace.rows, &cli, trace.skipped);
}

#[test]
fn sendfile_counted() {
    both_ways_env("127.0.0.1", "sendfile", &[]);
}

#[test]
fn splice_counted() {
    both_ways_env("::1", "splice", &[]);
}

/// The raw_tp path; on a kernel without the length tracepoints (before 6.3), an error that names them.
#[test]
fn raw_tp_path() {
    if !length_hooks_run("tcptop") {
        return;
    }
    if has_length_tracepoints() {
        both_ways_env("127.0.0.1", "write", &[("SOCKRAY_ATTACH", "raw_tp")]);
    } else {
        assert_lacks_length_hooks("tcptop", &[("SOCKRAY_ATTACH", "raw_tp")]);
    }
}

/// -p: only the client's flow, though the server moves as many bytes.
#[test]
fn pid_filter() {
    pid_filter_mode(false);
}

/// --walk -p: the filter on the socket's owner, in the kernel.
#[test]
fn walk_pid_filter() {
    pid_filter_mode(true);
}

fn pid_filter_mode(walk: bool) {
    if !can_run(walk) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut g = Gen::spawn(
        &ns,
        &gen_args(&[
            "transfer",
            "--addr",
            "127.0.0.1",
            "--send",
            "50000",
            "--reply",
            "70000",
            "--wait-go",
            "--client-comm",
            "tt-pid-cli",
        ]),
    );
    let ready = g.wait_role("client-ready", Duration::from_secs(10));
    let pid = u(&ready, "pid").to_string();
    let t = Tracer::start("tcptop", &with_walk(walk, &["-p", &pid, "1"]));
    g.go();
    let lines = g.finish(Duration::from_secs(30));
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    let cli = lines.iter().find(|v| v["role"] == "client").unwrap();
    check_side(&trace.rows, cli, trace.skipped);
    for r in &trace.rows {
        assert_eq!(u(r, "pid").to_string(), pid, "another process: {r}");
    }
}

/// -4 and -6: the other family's flows are not counted.
fn family_filter(flag: &str, want: u64) {
    family_filter_mode(flag, want, false);
}

fn family_filter_mode(flag: &str, want: u64, walk: bool) {
    if !can_run(walk) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start("tcptop", &with_walk(walk, &[flag, "1"]));
    let (s4, c4) = transfer(
        &ns,
        &["--addr", "127.0.0.1", "--send", "4444", "--reply", "44"],
    );
    let (s6, c6) = transfer(&ns, &["--addr", "::1", "--send", "6666", "--reply", "66"]);
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    let (keep, gone) = if want == 4 {
        ([s4, c4], [s6, c6])
    } else {
        ([s6, c6], [s4, c4])
    };
    for side in &keep {
        check_side(&trace.rows, side, trace.skipped);
    }
    for side in &gone {
        assert!(
            rows_of_side(&trace.rows, side).is_empty(),
            "{:?}",
            trace.rows
        );
    }
    for r in &trace.rows {
        assert_eq!(u(r, "ip"), want, "{r}");
    }
}

#[test]
fn ipv4_only() {
    family_filter("-4", 4);
}

#[test]
fn ipv6_only() {
    family_filter("-6", 6);
}

#[test]
fn walk_ipv4_only() {
    family_filter_mode("-4", 4, true);
}

/// A person watching: each interval's rows appear on its tick while the tool keeps running, at a
/// trickle of 100 bytes every 100 ms, and the intervals add up to every byte.
#[test]
fn live_intervals_at_a_trickle() {
    live_intervals(false);
}

#[test]
fn walk_live_intervals_at_a_trickle() {
    live_intervals(true);
}

fn live_intervals(walk: bool) {
    if !can_run(walk) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start("tcptop", &with_walk(walk, &["1"]));
    let started = Instant::now();
    let g = Gen::spawn(
        &ns,
        &gen_args(&[
            "transfer",
            "--addr",
            "127.0.0.1",
            "--send",
            "4000",
            "--write-size",
            "100",
            "--gap-ms",
            "100",
            "--client-comm",
            "tt-trickle",
        ]),
    );
    // two intervals with the client's bytes while it still sends (it takes ~4 s)
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let (tick, _) = t.wait_line(
            "an interval of the trickle",
            Duration::from_millis(2500),
            |l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["comm"] == "tt-trickle" && !seen.contains(&v["tick"].as_u64()?))
                    .then(|| v["tick"].as_u64())?
            },
        );
        seen.insert(tick);
    }
    assert!(
        started.elapsed() < Duration::from_millis(3800),
        "the intervals came late: {:?}",
        started.elapsed()
    );
    let lines = g.finish(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1200));
    let trace = t.stop_with_skips();
    let cli = lines.iter().find(|v| v["role"] == "client").unwrap();
    let srv = lines.iter().find(|v| v["role"] == "server").unwrap();
    assert!(check_side(&trace.rows, cli, trace.skipped) >= 3);
    check_side(&trace.rows, srv, trace.skipped);
}

/// `tcptop 1 2`: two intervals, then it exits by itself, with the lost record last.
#[test]
fn count_ends_the_run() {
    if !length_hooks_run("tcptop") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let out = run_timeout(
        std::process::Command::new(sockray_bin()).args(["tcptop", "--json", "1", "2"]),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{out:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["lost"], 0, "{text}");
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if let Some(tick) = v["tick"].as_u64() {
            assert!(tick == 1 || tick == 2, "{v}");
        }
    }
}

/// The screen in a pipe: BCC's header and `addr:port` columns, KiB, no clear codes; on a terminal the
/// screen is cleared each interval unless -C.
#[test]
fn table_in_a_pipe_and_on_a_terminal() {
    if !length_hooks_run("tcptop") {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::text("tcptop", &["1"]);
    let (srv, cli) = transfer(
        &ns,
        &[
            "--addr",
            "127.0.0.1",
            "--send",
            "204800",
            "--reply",
            "10240",
            "--client-comm",
            "tt-table-cli",
        ],
    );
    std::thread::sleep(Duration::from_millis(1300));
    let lines = t.stop_text();
    let text = lines.join("\n");
    assert!(!text.contains('\x1b'), "clear codes in a pipe: {text}");
    assert!(
        lines[0].starts_with("Tracing... Output every 1 secs"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" loadavg: ")),
        "no summary line: {text}"
    );
    assert!(
        lines.iter().any(|l| l
            == "PID    COMM         LADDR                 RADDR                  RX_KB  TX_KB")
    );
    let ep = |side: &Value, a: &str, p: &str| format!("{}:{}", s(side, a), u(side, p));
    let row = |side: &Value, rx: u64, tx: u64| {
        format!(
            "{:<6} {:<12} {:<21} {:<21} {:>6} {:>6}",
            u(side, "pid"),
            s(side, "comm"),
            ep(side, "laddr", "lport"),
            ep(side, "raddr", "rport"),
            rx,
            tx
        )
    };
    assert!(lines.contains(&row(&cli, 10, 200)), "{text}");
    assert!(lines.contains(&row(&srv, 200, 10)), "{text}");

    // a terminal: cleared each interval; -C: not
    for (args, cleared) in [(&["1"][..], true), (&["-C", "1"][..], false)] {
        let t = Tracer::launch("tcptop", args, &[], false, Sink::Pty);
        std::thread::sleep(Duration::from_millis(2300));
        let text = t.stop_text().join("\n");
        assert_eq!(
            text.contains("\x1b[H\x1b[2J"),
            cleared,
            "{args:?}: {text:?}"
        );
    }
}

/// --max-flows: a table with room for one flow an interval, and a transfer's two flows (and whatever
/// else the host sends) in it: never two rows in one interval, what found no room counted
/// (lost_capacity) with the flag to raise named, and no shown flow with more than it moved.
#[test]
fn full_flow_table_is_counted() {
    full_flow_table(false);
}

/// --walk --max-flows 1: the flow table and the last-seen counters (walk_seen) have room for one:
/// what found none is counted, never a flow shown with more than it moved.
#[test]
fn walk_full_tables_are_counted() {
    full_flow_table(true);
}

fn full_flow_table(walk: bool) {
    if !can_run(walk) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start("tcptop", &with_walk(walk, &["--max-flows", "1", "1"]));
    let (srv, cli) = transfer(
        &ns,
        &[
            "--addr",
            "127.0.0.1",
            "--send",
            "200000",
            "--reply",
            "1000",
            "--write-size",
            "1000",
        ],
    );
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_capacity();
    assert!(
        trace.capacity > 0,
        "two flows, room for one, nothing counted: {:?}; stderr:\n{}",
        trace.rows,
        trace.stderr
    );
    assert!(trace.stderr.contains("--max-flows"), "{}", trace.stderr);
    let mut ticks = BTreeSet::new();
    for r in &trace.rows {
        assert!(
            ticks.insert(u(r, "tick")),
            "two rows in one interval of a table with room for one: {:?}",
            trace.rows
        );
    }
    for side in [&srv, &cli] {
        let mine = rows_of_side(&trace.rows, side);
        let rx: u64 = mine.iter().map(|r| u(r, "rx_bytes")).sum();
        let tx: u64 = mine.iter().map(|r| u(r, "tx_bytes")).sum();
        assert!(
            rx <= u(side, "received") && tx <= u(side, "sent"),
            "{side}: {mine:?}"
        );
    }
}
