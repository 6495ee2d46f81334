//! `sockray tcpcong` against congestion the test makes: a bulk transfer from `a` to a server in `b`
//! across a veth pair whose `b` end goes down for a while and comes back (common::VethPair): the
//! sender's retransmit timer fires into the void, the socket enters loss, and once the link is back it
//! recovers. That connection must show time in loss (or recovery) and at least one change; a transfer
//! on a clean link at the same time only open time and no change. Filters must exclude what they
//! exclude; IPv4 and IPv6; the interval output must appear on its tick. Needs root and BTF; see
//! common::require_bpf.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
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
    "open_ns",
    "disorder_ns",
    "cwr_ns",
    "recovery_ns",
    "loss_ns",
    "changes",
    "state",
    "closed",
];
const STATES: [&str; 5] = ["open", "disorder", "cwr", "recovery", "loss"];
const LIMIT: Duration = Duration::from_secs(40);
/// How long the link is down: several retransmit timeouts (200 ms, then doubling).
const OUTAGE: Duration = Duration::from_millis(1500);

/// tcp:tcp_cong_state_set (Linux 5.19+).
fn has_cong_tracepoint() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            std::path::Path::new(t)
                .join("events/tcp/tcp_cong_state_set")
                .is_dir()
        })
}

/// On a kernel without the tracepoint, with a tracepoint path forced (SOCKRAY_ATTACH in `env` or in
/// the test's own environment, as `cargo xtask vmtest --path raw_tp` sets it): the tool must refuse to
/// start with an error that names the tracepoint and the kernel that has it. True when so (the test
/// has nothing more to check).
fn refused_without_tracepoint(env: &[(&str, &str)]) -> bool {
    let forced = env
        .iter()
        .find(|(k, _)| *k == "SOCKRAY_ATTACH")
        .map(|(_, v)| v.to_string())
        .or_else(|| std::env::var("SOCKRAY_ATTACH").ok())
        .unwrap_or_default();
    if has_cong_tracepoint() || !["raw_tp", "tp_btf", "tracepoint"].contains(&forced.as_str()) {
        return false;
    }
    let out = run_timeout(
        std::process::Command::new(sockray_bin())
            .args(["tcpcong", "1", "1"])
            .env("SOCKRAY_ATTACH", &forced),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("tcp:tcp_cong_state_set") && err.contains("6.1+"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    true
}

/// A transfer from `ns` to a server at `addr` (in `server_ns`, or `ns` itself), started and waiting for
/// its go line: 2 MB in 16 kB writes, 10 ms apart (~1.3 s of sending without an outage).
fn bulk(ns: &Netns, server_ns: Option<&Netns>, addr: &str, port: u16, comm: &str) -> Gen {
    let port = port.to_string();
    let mut a = vec![
        "transfer",
        "--addr",
        addr,
        "--port",
        &port,
        "--send",
        "2000000",
        "--reply",
        "1000",
        "--write-size",
        "16384",
        "--gap-ms",
        "10",
        "--client-comm",
        comm,
        "--server-comm",
        "tg-cong-srv",
        "--wait-go",
    ];
    if let Some(s) = server_ns {
        a.extend(["--server-netns", s.name.as_str()]);
    }
    let mut g = Gen::spawn(ns, &gen_args(&a));
    g.wait_role("client-ready", Duration::from_secs(10));
    g
}

fn role(lines: &[Value], r: &str) -> Value {
    lines
        .iter()
        .find(|l| l["role"] == r)
        .cloned()
        .unwrap_or_else(|| panic!("no {r} line: {lines:?}"))
}

/// The rows of one end of a connection (its local address and port).
fn rows_of<'a>(rows: &'a [Value], end: &Value) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r.get("lport").is_some())
        .filter(|r| u(r, "lport") == u(end, "lport") && s(r, "laddr") == s(end, "laddr"))
        .collect()
}

/// One end's figures summed over its rows (intervals): ns per state, changes.
fn sum(rows: &[&Value]) -> ([u64; 5], u64) {
    let mut d = [0u64; 5];
    let mut changes = 0;
    for r in rows {
        for (i, st) in STATES.iter().enumerate() {
            d[i] += u(r, &format!("{st}_ns"));
        }
        changes += u(r, "changes");
    }
    (d, changes)
}

/// The keys, the connection and the owner of every row of an end.
fn check_rows(rows: &[&Value], end: &Value) {
    assert!(!rows.is_empty(), "no row for {end}");
    for r in rows {
        assert_keys(r, KEYS);
        assert_eq!(s(r, "raddr"), s(end, "raddr"), "{r}");
        assert_eq!(u(r, "rport"), u(end, "rport"), "{r}");
        assert_eq!(u(r, "ip"), u(end, "family"), "{r}");
        assert_eq!(u(r, "pid"), u(end, "pid"), "the socket's owner: {r}");
        assert_eq!(s(r, "comm"), s(end, "comm"), "{r}");
        assert!(STATES.contains(&s(r, "state")), "{r}");
    }
}

/// A bulk transfer whose link goes down for OUTAGE and a clean one at the same time (on loopback in a
/// namespace of its own): the first shows loss/recovery and changes, the second open time only.
fn outage(v6: bool, env: &[(&str, &str)], args: &[&str]) {
    if !require_bpf() || refused_without_tracepoint(env) {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let lo = Netns::new();
    let (addr, lo_addr) = if v6 {
        (VETH_B6, "::1")
    } else {
        (VETH_B4, "127.0.0.1")
    };
    let t = Tracer::start_env("tcpcong", args, env);
    let started = Instant::now();
    let mut lossy = bulk(&pair.a, Some(&pair.b), addr, pick_port(), "tg-cong-loss");
    let mut clean = bulk(&lo, None, lo_addr, pick_port(), "tg-cong-ok");
    lossy.go();
    clean.go();
    std::thread::sleep(Duration::from_millis(300));
    pair.b_down();
    std::thread::sleep(OUTAGE);
    pair.b_up();
    let lossy = lossy.finish(LIMIT);
    let clean = clean.finish(LIMIT);
    let took = started.elapsed();
    std::thread::sleep(SETTLE);
    let trace = t.stop();

    // the hook the kernel and the forced path call for
    let forced = env
        .iter()
        .find(|(k, _)| *k == "SOCKRAY_ATTACH")
        .map(|(_, v)| v.to_string())
        .or_else(|| std::env::var("SOCKRAY_ATTACH").ok())
        .unwrap_or_default();
    let hook = if forced == "fentry" || !has_cong_tracepoint() {
        "fexit/tcp_fastretrans_alert"
    } else if forced == "raw_tp" {
        "raw_tp/tcp_cong_state_set"
    } else {
        "tp_btf/tcp_cong_state_set"
    };
    assert!(
        trace
            .stderr
            .contains(&format!("tcpcong_change: using {hook}")),
        "not {hook}: {}",
        trace.stderr
    );

    let cli = role(&lossy, "client");
    let rows = rows_of(&trace.rows, &cli);
    check_rows(&rows, &cli);
    let (d, changes) = sum(&rows);
    eprintln!("lossy client: {d:?} ns, {changes} changes; rows {rows:?}");
    assert!(
        d[3] + d[4] >= 200_000_000,
        "no time in recovery or loss (at least one retransmit timeout) for the flow whose link went down: {rows:?}"
    );
    assert!(changes >= 1, "{rows:?}");
    // every row's time adds up to the connection's life in the tool: more than the outage, less than the run
    let total: u64 = d.iter().sum();
    assert!(
        total >= OUTAGE.as_nanos() as u64 && total <= took.as_nanos() as u64 + 1_000_000_000,
        "{total} ns in all states, outage {OUTAGE:?}, run {took:?}: {rows:?}"
    );
    assert!(rows.iter().any(|r| r["closed"] == true), "{rows:?}");

    for end in [role(&clean, "client"), role(&clean, "server")] {
        let rows = rows_of(&trace.rows, &end);
        check_rows(&rows, &end);
        let (d, changes) = sum(&rows);
        assert!(
            d[0] >= 100_000_000,
            "open for the transfer's length: {rows:?}"
        );
        assert_eq!(d[1..], [0, 0, 0, 0], "a clean flow is only open: {rows:?}");
        assert_eq!(changes, 0, "{rows:?}");
        for r in &rows {
            assert_eq!(s(r, "state"), "open", "{r}");
        }
    }
}

#[test]
fn outage_v4() {
    outage(false, &[], &[]);
}

#[test]
fn outage_v6() {
    outage(true, &[], &[]);
}

/// The raw_tp alternative of every hook (on every kernel that has tp_btf too), printing every second.
#[test]
fn outage_raw_tp() {
    outage(false, &[("SOCKRAY_ATTACH", "raw_tp")], &["1"]);
}

/// Filters exclude in the kernel: ports with no traffic (-L, -R) and the other family give no row at
/// all, while -L PORT keeps only the server's end and -R PORT only the client's.
#[test]
fn filters_exclude() {
    if !require_bpf() || refused_without_tracepoint(&[]) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let (port, idle) = (pick_port(), pick_port().to_string());
    let p = port.to_string();
    let none_l = Tracer::start("tcpcong", &["-L", &idle]);
    let none_r = Tracer::start("tcpcong", &["-R", &idle]);
    let none_6 = Tracer::start("tcpcong", &["-6", "-L", &p]);
    let server_end = Tracer::start("tcpcong", &["-L", &p]);
    let client_end = Tracer::start("tcpcong", &["-R", &format!("{idle},{port}")]);
    let mut g = bulk(&ns, None, "127.0.0.1", port, "tg-cong-filt");
    g.go();
    let lines = g.finish(LIMIT);
    std::thread::sleep(SETTLE);
    for (t, what) in [
        (none_l, "-L with no traffic"),
        (none_r, "-R with no traffic"),
        (none_6, "-6 with IPv4 traffic"),
    ] {
        let trace = t.stop();
        assert!(trace.rows.is_empty(), "{what}: {:?}", trace.rows);
    }
    let (srv, cli) = (role(&lines, "server"), role(&lines, "client"));
    let rows = server_end.stop().rows;
    assert!(
        rows.iter().all(|r| u(r, "lport") == u(&srv, "lport")),
        "-L {port}: {rows:?}"
    );
    check_rows(&rows_of(&rows, &srv), &srv);
    let rows = client_end.stop().rows;
    assert!(
        rows.iter().all(|r| u(r, "rport") == u(&cli, "rport")),
        "-R {port}: {rows:?}"
    );
    check_rows(&rows_of(&rows, &cli), &cli);
}

/// A person watching: each interval's rows appear on its tick while the tool keeps running (the
/// transfer still going: its connection's open time so far, counted up to the tick), and the intervals
/// add up to the connection's whole life.
#[test]
fn live_intervals() {
    if !require_bpf() || refused_without_tracepoint(&[]) {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start("tcpcong", &["1"]);
    let started = Instant::now();
    let mut g = Gen::spawn(
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
            "tg-cong-live",
            "--wait-go",
        ]),
    );
    let ready = g.wait_role("client-ready", Duration::from_secs(10));
    g.go();
    let pid = u(&ready, "pid");
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let (row, _) = t.wait_line(
            "an interval of the live connection",
            Duration::from_millis(2500),
            |l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v.get("pid")?.as_u64()? == pid && !seen.contains(&v["tick"].as_u64()?))
                    .then_some(v)
            },
        );
        assert_eq!(row["closed"], false, "{row}");
        assert_eq!(s(&row, "state"), "open", "{row}");
        // the open time of a connection alive across the whole interval: about the interval
        if !seen.is_empty() {
            let open = u(&row, "open_ns");
            assert!(
                (800_000_000..=1_300_000_000).contains(&open),
                "an interval's open time: {row}"
            );
        }
        seen.insert(u(&row, "tick"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(3800),
        "the intervals came late: {:?}",
        started.elapsed()
    );
    let lines = g.finish(LIMIT);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(1200));
    let trace = t.stop();
    let cli = role(&lines, "client");
    let rows = rows_of(&trace.rows, &cli);
    check_rows(&rows, &cli);
    assert!(rows.len() >= 3, "{rows:?}");
    let (d, changes) = sum(&rows);
    assert_eq!(changes, 0);
    assert!(
        d[0] >= 3_500_000_000 && d[0] <= took.as_nanos() as u64,
        "the intervals add up to the connection's life (~4 s, the run took {took:?}): {rows:?}"
    );
    assert!(rows.last().unwrap()["closed"] == true, "{rows:?}");
}

/// The table as BCC prints it at Ctrl-C (no interval): its header, the lossy client's row with loss
/// or recovery time and changes; -u: microseconds; --owner: PID and COMM first.
#[test]
fn table_like_bcc() {
    if !require_bpf() || refused_without_tracepoint(&[]) {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let t = Tracer::text("tcpcong", &["-u", "--owner"]);
    let mut g = bulk(&pair.a, Some(&pair.b), VETH_B4, pick_port(), "tg-cong-tab");
    g.go();
    std::thread::sleep(Duration::from_millis(300));
    pair.b_down();
    std::thread::sleep(OUTAGE);
    pair.b_up();
    let lines = g.finish(LIMIT);
    std::thread::sleep(SETTLE);
    let out = t.stop_text();
    let cli = role(&lines, "client");
    assert_eq!(
        out[0],
        "Tracing tcp congestion control status duration... Hit Ctrl-C to end."
    );
    let head = out
        .iter()
        .find(|l| l.starts_with("PID"))
        .unwrap_or_else(|| panic!("no header: {out:?}"));
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        [
            "PID",
            "COMM",
            "LAddrPort",
            "RAddrPort",
            "Open_us",
            "Dod_us",
            "Rcov_us",
            "Cwr_us",
            "Los_us",
            "Chgs"
        ]
    );
    let me = format!("{}/{}", s(&cli, "laddr"), u(&cli, "lport"));
    let row: Vec<&str> = out
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&me.as_str()))
        .unwrap_or_else(|| panic!("no row for {me}: {out:?}"));
    assert_eq!(row[0], u(&cli, "pid").to_string(), "{row:?}");
    assert_eq!(row[1], "tg-cong-tab", "{row:?}");
    assert_eq!(row[3], format!("{}/{}", s(&cli, "raddr"), u(&cli, "rport")));
    let n = |i: usize| row[i].parse::<u64>().unwrap();
    assert!(n(6) + n(8) >= 200_000, "recovery + loss in us: {row:?}");
    assert!(n(9) >= 1, "{row:?}");
}

/// -d: histograms of the periods per state; the loss state's from the outage (at least one period of
/// a retransmit timeout or more, in msecs), the open state's too.
#[test]
fn dist_histograms() {
    if !require_bpf() || refused_without_tracepoint(&[]) {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let t = Tracer::start("tcpcong", &["-d"]);
    let mut g = bulk(&pair.a, Some(&pair.b), VETH_B4, pick_port(), "tg-cong-dist");
    g.go();
    std::thread::sleep(Duration::from_millis(300));
    pair.b_down();
    std::thread::sleep(OUTAGE);
    pair.b_up();
    g.finish(LIMIT);
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    for r in &trace.rows {
        assert_keys(r, &["time_ns", "tick", "state", "unit", "count", "buckets"]);
        assert_eq!(s(r, "unit"), "msecs", "{r}");
    }
    let of = |st: &str| trace.rows.iter().find(|r| r["state"] == st);
    let open = of("open").unwrap_or_else(|| panic!("no open histogram: {:?}", trace.rows));
    assert!(u(open, "count") >= 1, "{open}");
    let bad = [of("loss"), of("recovery")];
    let periods: Vec<&Value> = bad.iter().flatten().copied().collect();
    assert!(
        !periods.is_empty(),
        "no loss or recovery histogram: {:?}",
        trace.rows
    );
    // a period of 200 ms or more (a retransmit timeout) in the loss/recovery histograms
    let long = periods.iter().any(|h| {
        h["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| u(b, "count") > 0 && u(b, "high") >= 200)
    });
    assert!(long, "{periods:?}");
}

/// A connection older than the tool: counted from when the tool first sees it (its first congestion
/// state change, made here by an outage), never from before the tool started; its owner from the
/// socket-owner seeding walk.
#[test]
fn first_seen_mid_life() {
    if !require_bpf() || refused_without_tracepoint(&[]) {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let port = pick_port().to_string();
    let mut lsn = Gen::spawn(
        &pair.b,
        &gen_args(&[
            "listen",
            "--addr",
            VETH_B4,
            "--port",
            &port,
            "--comm",
            "tg-cong-lsn",
            "--hold-ms",
            "20000",
        ]),
    );
    lsn.wait_role("listen", LIMIT);
    let mut cli = Gen::spawn(
        &pair.a,
        &gen_args(&[
            "stall",
            "--addr",
            VETH_B4,
            "--port",
            &port,
            "--comm",
            "tg-cong-old",
            "--send",
            "20000",
        ]),
    );
    let c = cli.wait_role("stall", LIMIT);
    // established well before the tool starts
    std::thread::sleep(Duration::from_millis(500));
    let t = Tracer::start("tcpcong", &[]);
    let started = Instant::now();
    pair.b_down();
    cli.step();
    cli.wait_role("sent", LIMIT);
    std::thread::sleep(OUTAGE);
    pair.b_up();
    cli.finish(LIMIT); // closed with a reset
    let took = started.elapsed();
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    let rows = rows_of(&trace.rows, &c);
    check_rows(&rows, &c);
    let (d, changes) = sum(&rows);
    eprintln!("{d:?} ns, {changes} changes, the tool ran {took:?} of it: {rows:?}");
    assert!(changes >= 1, "{rows:?}");
    assert!(d[2] + d[3] + d[4] > 0, "{rows:?}");
    let total: u64 = d.iter().sum();
    assert!(
        total <= took.as_nanos() as u64 + 100_000_000,
        "{total} ns counted, more than the {took:?} since the tool started: {rows:?}"
    );
    assert!(
        total >= OUTAGE.as_nanos() as u64 * 8 / 10,
        "{total} ns counted, less than the outage: {rows:?}"
    );
}
