//! `sockray tcprtt` against round-trip times the test makes: a client and a server in two namespaces
//! joined by a link that delays every packet 10 ms each way (common::DelayLine), so that every RTT the
//! kernel measures between them is at least 20 ms and the histograms' mass must sit in the slots from
//! 16384 us (16 ms) up. Each histogram is checked bucket by bucket against that range, its keys
//! (addresses, remote port, the owning process) against what the generator's processes did, and the
//! filters against traffic they must exclude. Needs root and BTF; see common::require_bpf.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ONE_WAY: Duration = Duration::from_millis(10);
/// The lowest value of the slot that holds 20 ms (2 x ONE_WAY) in usecs: no RTT sample can be smaller.
const LOW_US: u64 = 16_384;
/// The highest value allowed: the round trip plus a delayed ACK (up to 40 ms) and a slow machine
/// (emulated kernels), within 2^17 us.
const HIGH_US: u64 = 131_071;

const SRV: &str = "tg-rtt-srv";
const CLI: &str = "tg-rtt-cli";

/// One session across the delay line: the server in `b`, the client in `a`, 20 kB each way.
fn session(line: &DelayLine, addr: &'static str, port: u16) -> Session {
    let mut s = Session::new(addr, port, SRV, CLI);
    s.client_send = 20_000;
    s.server_send = 20_000;
    s.hold_ms = 100;
    s.client_netns = Some(line.a.name.clone());
    s
}

/// (low, high, count) of each bucket.
fn buckets(h: &Value) -> Vec<(u64, u64, u64)> {
    h["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets array: {h}"))
        .iter()
        .map(|b| (u(b, "low"), u(b, "high"), u(b, "count")))
        .collect()
}

/// A histogram's counts all within [low, high] (its buckets' ranges), its totals consistent; returns
/// its count.
fn check_mass(h: &Value, low: u64, high: u64) -> u64 {
    let b = buckets(h);
    let total: u64 = b.iter().map(|x| x.2).sum();
    assert!(total > 0, "an empty histogram printed: {h}");
    assert_eq!(u(h, "count"), total, "{h}");
    for (lo, hi, n) in &b {
        if *n > 0 {
            assert!(
                *lo >= low && *hi <= high,
                "{n} RTTs in {lo} -> {hi}, outside {low} -> {high}: {h}"
            );
        }
    }
    assert_eq!(u(h, "avg"), u(h, "sum") / total, "{h}");
    assert!(
        (low..=high).contains(&u(h, "avg")),
        "average {} outside {low} -> {high}: {h}",
        u(h, "avg")
    );
    total
}

/// The histograms of a trace whose address keys are in the delay line's subnet.
fn ours<'a>(rows: &'a [Value], a: &str, b: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| [a, b].contains(&r["laddr"].as_str().unwrap_or("")))
        .collect()
}

/// Every key at once (-b -B --by-rport --by-process) and -e: one histogram per end of the connection,
/// each with its addresses, remote port and owner, all its RTTs at or above the link's round trip.
/// `sig` ends the run (SIGINT, SIGTERM: the same final histograms).
fn every_key(addr_a: &'static str, addr_b: &'static str, env: &[(&str, &str)], sig: libc::c_int) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let t = Tracer::start_env(
        "tcprtt",
        &["-b", "-B", "--by-rport", "--by-process", "-e"],
        env,
    );
    let out = session(&line, addr_b, port).run(&line.b);
    std::thread::sleep(SETTLE);
    let trace = t.stop_by(sig);
    let rows = ours(&trace.rows, addr_a, addr_b);
    assert_eq!(rows.len(), 2, "one histogram per end: {rows:?}");
    let (c, s) = (&out.clients[0], &out.servers[0]);
    for (end, conn) in [(addr_a, c), (addr_b, s)] {
        let h = rows
            .iter()
            .find(|r| r["laddr"] == end)
            .unwrap_or_else(|| panic!("no histogram for {end}: {rows:?}"));
        eprintln!("{end}: {h}");
        assert_keys(
            h,
            &[
                "time_ns", "tick", "pid", "comm", "uid", "ip", "laddr", "raddr", "rport", "unit",
                "count", "sum", "avg", "buckets",
            ],
        );
        assert_eq!(s_(h, "raddr"), conn.raddr, "{h}");
        assert_eq!(u(h, "rport"), conn.rport, "{h}");
        assert_eq!(u(h, "pid"), conn.pid, "the socket's owner: {h}");
        assert_eq!(s_(h, "comm"), conn.comm, "{h}");
        assert_eq!(u(h, "ip"), conn.family, "{h}");
        assert_eq!(s_(h, "unit"), "usecs", "{h}");
        let n = check_mass(h, LOW_US, HIGH_US);
        // 20 kB each way in segments of at most a few kB, and their ACKs
        assert!(n >= 5, "{n} segments received by {end}? {h}");
    }
}

fn s_<'a>(row: &'a Value, k: &str) -> &'a str {
    s(row, k)
}

#[test]
fn every_key_v4() {
    every_key(DELAY_A4, DELAY_B4, &[], libc::SIGINT);
}

/// Ended by SIGTERM.
#[test]
fn every_key_v6() {
    every_key(DELAY_A6, DELAY_B6, &[], libc::SIGTERM);
}

/// The raw_tp alternative of every hook (on every kernel that has tp_btf too).
#[test]
fn every_key_raw_tp() {
    every_key(
        DELAY_A4,
        DELAY_B4,
        &[("SOCKRAY_ATTACH", "raw_tp")],
        libc::SIGINT,
    );
}

/// Filters exclude in the kernel: a port with no traffic (-p, -P) and the other family give no
/// histogram at all, while -a keeps only the server's end (its process, by --by-process) and -p the
/// connection's port; run at the same time over one session.
#[test]
fn filters_exclude() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let (port, idle) = (pick_port(), pick_port().to_string());
    let p = port.to_string();
    let none_l = Tracer::start("tcprtt", &["-p", &idle]);
    let none_r = Tracer::start("tcprtt", &["-P", &idle]);
    let none_6 = Tracer::start("tcprtt", &["-6", "-p", &p]);
    let server_end = Tracer::start("tcprtt", &["-a", DELAY_B4, "--by-process"]);
    let port_end = Tracer::start("tcprtt", &["-p", &p, "-A", DELAY_A4]);
    let out = session(&line, DELAY_B4, port).run(&line.b);
    std::thread::sleep(SETTLE);
    for (t, what) in [
        (none_l, "-p with no traffic"),
        (none_r, "-P with no traffic"),
        (none_6, "-6 with IPv4 traffic"),
    ] {
        let trace = t.stop();
        assert!(trace.rows.is_empty(), "{what}: {:?}", trace.rows);
    }
    let rows = server_end.stop().rows;
    assert_eq!(
        rows.len(),
        1,
        "-a {DELAY_B4}: the server's end only: {rows:?}"
    );
    assert_eq!(u(&rows[0], "pid"), out.server_pid, "{}", rows[0]);
    assert_eq!(s(&rows[0], "comm"), SRV, "{}", rows[0]);
    check_mass(&rows[0], LOW_US, HIGH_US);
    let rows = port_end.stop().rows;
    assert_eq!(rows.len(), 1, "-p {port} -A {DELAY_A4}: {rows:?}");
    assert!(
        rows[0].get("pid").is_none(),
        "no owner unless asked: {}",
        rows[0]
    );
    check_mass(&rows[0], LOW_US, HIGH_US);
}

/// The table as people read it: -m (msecs), -T, -e, the client's end only (-a): libbpf-tools' title
/// with the average, then the histogram, every counted RTT in the rows from 16 ms.
#[test]
fn table_in_msecs() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let text = traced_text("tcprtt", &["-m", "-T", "-e", "-a", DELAY_A4], || {
        session(&line, DELAY_B4, port).run(&line.b);
    });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Tracing TCP RTT... Hit Ctrl-C to end.", "{text}");
    let title = lines
        .iter()
        .position(|l| l.starts_with("All Addresses = ****** [AVG "))
        .unwrap_or_else(|| panic!("no title: {text}"));
    let avg: u64 = lines[title]
        .trim_start_matches("All Addresses = ****** [AVG ")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", lines[title]));
    assert!((20..=131).contains(&avg), "average {avg} ms: {text}");
    // the time (-T) right before
    let hms = lines[title - 1];
    assert!(
        hms.len() == 8 && hms.as_bytes()[2] == b':' && hms.as_bytes()[5] == b':',
        "no HH:MM:SS before the title: {text}"
    );
    assert_eq!(
        lines[title + 1],
        "     msecs               : count    distribution",
        "{text}"
    );
    let rows = table_rows(&lines, title);
    assert!(
        rows.iter().all(|&(lo, n)| n == 0 || lo >= 16),
        "RTTs below 16 ms: {text}"
    );
    assert!(rows.iter().map(|r| r.1).sum::<u64>() >= 5, "{text}");
}

/// A person watching: with -i 1 each interval's histogram appears as the interval ends, while the tool
/// keeps running, at a trickle (one connection that sent its data and waits).
#[test]
fn live_intervals_appear_while_it_runs() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let t = Tracer::start("tcprtt", &["-i", "1", "-a", DELAY_A4]);
    let mut s = session(&line, DELAY_B4, port);
    s.close_on_go = true;
    let mut g = Gen::spawn(&line.b, &s.args());
    g.wait_role("client-connected", Duration::from_secs(20));
    let since = Instant::now();
    let row = t.expect_row("an interval's histogram", Duration::from_secs(3), |r| {
        r["count"].as_u64().is_some_and(|n| n > 0)
    });
    assert!(since.elapsed() < Duration::from_millis(2500), "{row}");
    check_mass(&row, LOW_US, HIGH_US);
    assert!(u(&row, "tick") >= 1, "{row}");
    g.go();
    g.finish(Duration::from_secs(30));
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    // every interval's row is for the one connection's client end
    for r in &trace.rows {
        check_mass(r, LOW_US, HIGH_US);
    }
    let ticks: Vec<u64> = trace.rows.iter().map(|r| u(r, "tick")).collect();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
}

/// -d ends the run by itself, with the histogram of the whole run.
#[test]
fn duration_ends_the_run() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let t = Tracer::launch(
        "tcprtt",
        &["-d", "3", "-a", DELAY_A4],
        &[],
        true,
        Sink::Pipe,
    );
    let started = Instant::now();
    session(&line, DELAY_B4, port).run(&line.b);
    let (row, _) = t.wait_line("the run's histogram", Duration::from_secs(10), |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        v.get("buckets").is_some().then_some(v)
    });
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "printed before -d's end: {row}"
    );
    check_mass(&row, LOW_US, HIGH_US);
    t.wait_line("the lost record", Duration::from_secs(5), |l| {
        l.contains("\"lost\"").then_some(())
    });
}

/// --by-process names the socket's owner, never the task the segment's softirq interrupted (here the
/// test's own thread that carries the packets): a pre-forked server whose worker accepts and reads;
/// segments that arrive before the worker's first read count for the process that listened (the
/// socket's owner until then), the rest for the worker.
#[test]
fn by_process_names_the_worker() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let t = Tracer::start("tcprtt", &["--by-process", "-a", DELAY_B4]);
    let mut s = session(&line, DELAY_B4, port);
    s.worker_comm = Some("tg-rtt-wrk");
    let out = s.run(&line.b);
    std::thread::sleep(SETTLE);
    let rows = t.stop().rows;
    let worker = &out.servers[0];
    assert_eq!(worker.comm, "tg-rtt-wrk");
    assert_ne!(worker.pid, out.server_pid);
    for r in &rows {
        let pid = u(r, "pid");
        assert!(
            pid == worker.pid || pid == out.server_pid,
            "a histogram for neither the worker nor its parent: {r}"
        );
        let want = if pid == worker.pid { "tg-rtt-wrk" } else { SRV };
        assert_eq!(s_(r, "comm"), want, "{r}");
        check_mass(r, LOW_US, HIGH_US);
    }
    assert!(
        rows.iter().any(|r| u(r, "pid") == worker.pid),
        "no histogram for the worker: {rows:?}"
    );
}

/// Histograms the table has no room for are counted (lost_capacity), not dropped silently: a table of
/// one histogram, two remote ports.
#[test]
fn full_table_is_counted() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let t = Tracer::start_env(
        "tcprtt",
        &["--by-rport", "-a", DELAY_A4],
        &[("SOCKRAY_MAP_ENTRIES", "rtt_hists=1")],
    );
    // the client's end (-a): its remote port, then a second connection's
    session(&line, DELAY_B4, port).run(&line.b);
    let t2 = pick_port();
    session(&line, DELAY_B4, t2).run(&line.b);
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_capacity();
    assert_eq!(trace.rows.len(), 1, "{:?}", trace.rows);
    assert_eq!(u(&trace.rows[0], "rport"), port as u64, "{}", trace.rows[0]);
    assert!(
        trace.capacity > 0,
        "the second port's segments were not counted as lost: {}",
        trace.stderr
    );
}

/// The histogram rows under the title at `title`: (low, count) of each, up to the first other line.
fn table_rows(lines: &[&str], title: usize) -> Vec<(u64, u64)> {
    lines[title + 2..]
        .iter()
        .map(|row| row.split_whitespace().collect::<Vec<_>>())
        .take_while(|f| f.len() >= 5 && f[1] == "->")
        .map(|f| (f[0].parse().unwrap(), f[4].parse().unwrap()))
        .collect()
}

/// sockray's keys in the table: the client's end by local address and process, with the average.
#[test]
fn table_by_address_and_process() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let line = DelayLine::new(ONE_WAY);
    let port = pick_port();
    let mut out = None;
    let text = traced_text(
        "tcprtt",
        &["-b", "--by-process", "-e", "-a", DELAY_A4],
        || out = Some(session(&line, DELAY_B4, port).run(&line.b)),
    );
    eprintln!("{text}");
    let out = out.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let head = format!(
        "Local Address = {DELAY_A4} Process = {} {CLI} [AVG ",
        out.client_pid
    );
    let title = lines
        .iter()
        .position(|l| l.starts_with(&head))
        .unwrap_or_else(|| panic!("no title {head:?}: {text}"));
    let avg: u64 = lines[title][head.len()..]
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", lines[title]));
    assert!((LOW_US..=HIGH_US).contains(&avg), "average {avg}: {text}");
    assert_eq!(
        lines[title + 1],
        "     usecs               : count    distribution",
        "{text}"
    );
    let rows = table_rows(&lines, title);
    assert!(rows.iter().all(|&(lo, n)| n == 0 || lo >= LOW_US), "{text}");
    assert!(rows.iter().map(|r| r.1).sum::<u64>() >= 5, "{text}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("Local Address = "))
            .count(),
        1,
        "the client's end only (-a): {text}"
    );
}
