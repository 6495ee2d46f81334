//! `sockray tcpsynbl` against accept queues the kernel really fills: a listener in a namespace of its
//! own that never accepts, with more clients than its backlog, so that the kernel drops handshakes
//! (its ListenOverflows counter moves: SYNs dropped, or with TCP_DEFER_ACCEPT the handshake's last step),
//! and a listener that accepts at once. Each histogram is checked bucket by bucket against what the
//! clients did, its overflows against the namespace's ListenOverflows, its owner against the server
//! process. Needs root and BTF; see common::require_bpf.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns",
    "tick",
    "pid",
    "comm",
    "uid",
    "netns",
    "ip",
    "laddr",
    "lport",
    "backlog_max",
    "count",
    "overflows",
    "buckets",
];

struct Run {
    listen: Value,
    clients: Vec<Value>,
    end: Value,
    /// ListenOverflows of the namespace, before and after
    overflows: u64,
    passive_opens: u64,
}

/// Runs testgen `backlog` in ns (extra flags in `args`) and measures the namespace's counters around it.
fn backlog_run(
    ns: &Netns,
    addr: &str,
    port: u16,
    backlog: u32,
    clients: u32,
    args: &[&str],
) -> Run {
    let ovf0 = tcp_counter(ns, "ListenOverflows");
    let po0 = tcp_counter(ns, "PassiveOpens");
    let (port, backlog, clients) = (port.to_string(), backlog.to_string(), clients.to_string());
    let mut a = vec![
        "backlog",
        "--addr",
        addr,
        "--port",
        &port,
        "--backlog",
        &backlog,
        "--clients",
        &clients,
    ];
    a.extend_from_slice(args);
    let lines = run_gen(ns, &gen_args(&a));
    let role =
        |r: &str| -> Vec<Value> { lines.iter().filter(|v| v["role"] == r).cloned().collect() };
    Run {
        listen: role("backlog-listen").remove(0),
        clients: role("backlog-client"),
        end: role("backlog-end").remove(0),
        overflows: tcp_counter(ns, "ListenOverflows") - ovf0,
        passive_opens: tcp_counter(ns, "PassiveOpens") - po0,
    }
}

/// The histograms of port in a trace's rows.
fn hists_of(rows: &[Value], port: u64) -> Vec<&Value> {
    rows.iter().filter(|r| u(r, "lport") == port).collect()
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

/// The one histogram of the run's listener: its owner, address, backlog_max and totals.
fn check_hist<'a>(rows: &'a [Value], run: &Run, addr: &str) -> &'a Value {
    let port = u(&run.listen, "lport");
    let hs = hists_of(rows, port);
    assert_eq!(hs.len(), 1, "one histogram for port {port}: {rows:?}");
    let h = hs[0];
    assert_keys(h, KEYS);
    assert_eq!(u(h, "pid"), u(&run.listen, "pid"), "{h}");
    assert_eq!(s(h, "comm"), s(&run.listen, "comm"), "{h}");
    assert_eq!(s(h, "laddr"), addr, "{h}");
    assert_eq!(u(h, "ip"), u(&run.listen, "family"), "{h}");
    assert_eq!(u(h, "backlog_max"), u(&run.listen, "backlog_max"), "{h}");
    let total: u64 = buckets(h).iter().map(|b| b.2).sum();
    assert_eq!(u(h, "count"), total, "{h}");
    // every handshake the kernel dropped for the full queue, no more
    assert_eq!(
        u(h, "overflows"),
        run.overflows,
        "overflows against the namespace's ListenOverflows: {h}"
    );
    // every connection the listener took, and every dropped handshake
    assert_eq!(u(h, "count"), run.passive_opens + run.overflows, "{h}");
    h
}

/// A listener with backlog 2 that never accepts, 6 clients one after another: 3 wait in the queue
/// (the kernel takes backlog + 1), the 3 others' SYNs are dropped, and retried while the clients wait.
fn syn_overflow(addr: &str) {
    syn_overflow_env(addr, &[]);
}

fn syn_overflow_env(addr: &str, env: &[(&str, &str)]) -> Option<Trace> {
    if !require_bpf() {
        return None;
    }
    let _serial = serial();
    let ns = Netns::new();
    let port = pick_port();
    let t = Tracer::start_env("tcpsynbl", &["-L", &port.to_string()], env);
    let run = backlog_run(&ns, addr, port, 2, 6, &["--hold-ms", "1500"]);
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    let up: Vec<bool> = run.clients.iter().map(|c| c["connected"] == true).collect();
    assert_eq!(
        up,
        [true, true, true, false, false, false],
        "{:?}",
        run.clients
    );
    assert_eq!(u(&run.end, "queued"), 3);
    assert_eq!(run.passive_opens, 3);
    assert!(
        run.overflows >= 3,
        "the kernel dropped no SYN? {}",
        run.overflows
    );
    let h = check_hist(&trace.rows, &run, addr);
    // queue lengths 0 and 1, then 2; each dropped SYN found 3 waiting
    assert_eq!(
        buckets(h),
        [(0, 1, 2), (2, 3, 1 + run.overflows)],
        "{h}; overflows {}",
        run.overflows
    );
    Some(trace)
}

#[test]
fn syn_dropped_for_a_full_queue_v4() {
    syn_overflow("127.0.0.1");
}

#[test]
fn syn_dropped_for_a_full_queue_v6() {
    syn_overflow("::1");
}

/// The fallbacks that find tcp_rcv_state_process where the kernel's lookup does not load (src/ksym.rs):
/// the walk of the kernel's symbols (iter/ksym), and /proc/kallsyms. Where SYN drops are seen another
/// way (fentry or kprobe on tcp_conn_request) the address is not looked up at all.
#[test]
fn syn_dropped_with_each_way_to_find_the_function() {
    for (way, said) in [
        ("walk", "from the kernel (ksymwalk)"),
        ("kallsyms", "from /proc/kallsyms"),
    ] {
        let Some(trace) = syn_overflow_env("127.0.0.1", &[("SOCKRAY_KSYM", way)]) else {
            return;
        };
        if trace.stderr.contains("skb:consume_skb called from") {
            assert!(
                trace.stderr.contains(said),
                "SOCKRAY_KSYM={way}: {}",
                trace.stderr
            );
        }
    }
}

/// TCP_DEFER_ACCEPT, backlog 4: 2 clients send at once (2 queued), 4 more complete their handshakes
/// without a child socket, then send: 3 more fit (5 = backlog + 1), the last finds the queue full at
/// the handshake's last step (syn_recv_sock), as often as it retransmits its byte.
#[test]
fn last_ack_dropped_for_a_full_queue() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let port = pick_port();
    let t = Tracer::start("tcpsynbl", &["-L", &port.to_string()]);
    let run = backlog_run(
        &ns,
        "127.0.0.1",
        port,
        4,
        6,
        &["--defer-accept", "--early", "2", "--hold-ms", "1500"],
    );
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    assert!(
        run.clients.iter().all(|c| c["connected"] == true),
        "a SYN was dropped: {:?}",
        run.clients
    );
    assert_eq!(u(&run.end, "queued"), 5);
    assert_eq!(run.passive_opens, 5);
    assert!(run.overflows >= 1, "no overflow at the last ACK");
    let h = check_hist(&trace.rows, &run, "127.0.0.1");
    assert_eq!(
        buckets(h),
        [(0, 1, 2), (2, 3, 2), (4, 7, 1 + run.overflows)],
        "{h}"
    );
}

/// A listener that accepts each connection before the next comes: the queue is empty at every one.
#[test]
fn accepting_listener_stays_at_0_to_1() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let port = pick_port();
    let t = Tracer::start("tcpsynbl", &["-L", &port.to_string()]);
    let run = backlog_run(&ns, "::1", port, 16, 5, &["--accept"]);
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    assert_eq!(u(&run.end, "accepted"), 5);
    assert_eq!(run.overflows, 0);
    let h = check_hist(&trace.rows, &run, "::1");
    assert_eq!(buckets(h), [(0, 1, 5)], "{h}");
    assert_eq!(u(h, "backlog_max"), 16);
}

/// -L, -p, -4/-6 exclude what they should (the same traffic seen by a tracer that includes it).
#[test]
fn filters() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let port = pick_port();
    let p = port.to_string();
    let other = (port + 1).to_string();
    let with = Tracer::start("tcpsynbl", &["-4", "-L", &p]);
    let other_port = Tracer::start("tcpsynbl", &["-L", &other]);
    let other_pid = Tracer::start("tcpsynbl", &["-p", "1", "-L", &p]);
    let v6 = Tracer::start("tcpsynbl", &["-6", "-L", &p]);
    let run = backlog_run(&ns, "127.0.0.1", port, 2, 4, &["--hold-ms", "300"]);
    std::thread::sleep(SETTLE);
    let with = with.stop();
    check_hist(&with.rows, &run, "127.0.0.1");
    for (what, t) in [("-L other", other_port), ("-p 1", other_pid), ("-6", v6)] {
        let rows = t.stop().rows;
        assert!(
            hists_of(&rows, port as u64).is_empty(),
            "{what} showed port {port}: {rows:?}"
        );
    }
}

/// Without an interval the histograms come at SIGTERM as at Ctrl-C: libbpf-tools' text.
#[test]
fn summary_on_sigterm_and_sigint() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let port = pick_port();
        let t = Tracer::text("tcpsynbl", &["-L", &port.to_string()]);
        let run = backlog_run(&ns, "127.0.0.1", port, 2, 3, &[]);
        std::thread::sleep(SETTLE);
        let lines = t.stop_text_by(sig);
        let text = lines.join("\n");
        assert_eq!(
            lines[0], "Tracing SYN backlog size. Ctrl-C to end.",
            "{text}"
        );
        let title = format!(
            "backlog_max = 2  listener 127.0.0.1:{port}  pid {} tg-bl-srv  overflows 0",
            u(&run.listen, "pid")
        );
        let at = lines
            .iter()
            .position(|l| *l == title)
            .unwrap_or_else(|| panic!("signal {sig}: no {title:?} in:\n{text}"));
        assert_eq!(
            lines[at + 1..at + 4],
            [
                "     backlog             : count    distribution",
                "         0 -> 1          : 2        |****************************************|",
                "         2 -> 3          : 1        |********************                    |",
            ],
            "signal {sig}:\n{text}"
        );
    }
}

/// `tcpsynbl 1 2`: two one-second summaries, then it exits by itself.
#[test]
fn interval_and_count_end_by_themselves() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let out = run_timeout(
        std::process::Command::new(sockray_bin()).args(["tcpsynbl", "-T", "-L", "1", "1", "2"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // the banner, then per tick a blank line and -T's HH:MM:SS
    assert_eq!(lines.len(), 5, "{text}");
    for l in [lines[2], lines[4]] {
        let f: Vec<&str> = l.split(':').collect();
        assert!(f.len() == 3 && f.iter().all(|x| x.len() == 2), "{text}");
    }
}

/// Interval mode while it keeps running: each round's listener shows up at the next tick (within
/// the interval, 1 s, and the delay bound), while the tool goes on; then SIGINT ends it cleanly.
fn live(json: bool, sink: Sink, addr: &'static str) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::launch("tcpsynbl", &["1"], &[], json, sink);
    let within = Duration::from_secs(1) + LIVE_WITHIN;
    for _ in 0..2 {
        let port = pick_port();
        let run = backlog_run(&ns, addr, port, 8, 2, &["--accept"]);
        let pid = u(&run.listen, "pid");
        let what = format!("the histogram of port {port}");
        if json {
            let row = t.expect_row(&what, within, |r| {
                r["lport"] == port && r["pid"] == pid && r["backlog_max"] == 8
            });
            assert_keys(&row, KEYS);
            assert_eq!(u(&row, "overflows"), 0, "{row}");
        } else {
            let ep = if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            };
            let pid = pid.to_string();
            t.expect_line(&what, within, |f| {
                f.len() == 10 && f[0] == "backlog_max" && f[2] == "8" && f[4] == ep && f[6] == pid
            });
        }
    }
    if json {
        t.stop();
    } else {
        t.stop_text();
    }
}

#[test]
fn live_ticks_on_a_terminal() {
    live(false, Sink::Pty, "127.0.0.1");
}

#[test]
fn live_ticks_json_in_a_pipe() {
    live(true, Sink::Pipe, "::1");
}
