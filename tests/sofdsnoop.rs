//! `sockray sofdsnoop` against file descriptors passed over a Unix socketpair (`sockray-testgen
//! fd-pass`): per round one message with one fd (a regular file) and one with three (a UDP socket, the
//! file, a pipe), from a thread of the parent to a forked child with a name of its own. Each fd must be
//! shown once sent and once received, with the right thread, socket, fd number and name (the
//! generator reads /proc/self/fd for the truth); the filters must leave the other process out in the
//! kernel; rows must arrive while the tool runs; -d must end it. Needs root and BTF (common::require_bpf).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "time_ns", "pid", "comm", "uid", "action", "tid", "socket", "sock_fd", "sock_ino", "fd",
    "name", "ino", "index", "count",
];

fn gen_args(extra: &[&str]) -> Vec<String> {
    let mut a = vec!["fd-pass".to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The generator's messages: (pid, tid, sock_fd, sock name, [(fd, name)]) per "sent" / "received" line.
struct Msg {
    pid: u64,
    tid: u64,
    comm: String,
    sock_fd: u64,
    sock: String,
    fds: Vec<(u64, String)>,
}

fn msgs(lines: &[Value], role: &str) -> Vec<Msg> {
    lines
        .iter()
        .filter(|v| v["role"] == role)
        .map(|v| Msg {
            pid: u(v, "pid"),
            tid: u(v, "tid"),
            comm: s(v, "comm").to_string(),
            sock_fd: u(v, "sock_fd"),
            sock: s(v, "sock").to_string(),
            fds: v["fds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (u(f, "fd"), s(f, "name").to_string()))
                .collect(),
        })
        .collect()
}

/// The rows of one action and process, checked one by one against the generator's messages in order:
/// every fd of every message, on its own row, with its place in the message.
fn check_rows(rows: &[Value], action: &str, want: &[Msg]) {
    let pid = want[0].pid;
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == action && u(r, "pid") == pid)
        .collect();
    let n: usize = want.iter().map(|m| m.fds.len()).sum();
    assert_eq!(
        mine.len(),
        n,
        "{action}: one row per fd of pid {pid}; rows: {mine:#?}"
    );
    let mut it = mine.into_iter();
    for m in want {
        for (i, (fd, name)) in m.fds.iter().enumerate() {
            let r = it.next().unwrap();
            let who = format!("{action} fd {fd} ({name})");
            assert_keys(r, KEYS);
            assert_eq!(u(r, "tid"), m.tid, "{who}: tid: {r}");
            assert_eq!(s(r, "comm"), m.comm, "{who}: comm: {r}");
            assert_eq!(u(r, "fd"), *fd, "{who}: fd: {r}");
            assert_eq!(s(r, "name"), name, "{who}: name: {r}");
            assert_eq!(u(r, "sock_fd"), m.sock_fd, "{who}: socket fd: {r}");
            assert_eq!(
                format!("socket:[{}]", u(r, "sock_ino")),
                m.sock,
                "{who}: socket: {r}"
            );
            assert_eq!(
                s(r, "socket"),
                format!("{}:{}", m.sock_fd, m.sock),
                "{who}: SOCKET column: {r}"
            );
            assert_eq!(u(r, "index"), i as u64, "{who}: index: {r}");
            assert_eq!(u(r, "count"), m.fds.len() as u64, "{who}: count: {r}");
        }
    }
}

/// Every fd sent and received, by sendmsg()/recvmsg() or sendmmsg()/recvmmsg().
fn sent_and_received(mmsg: bool) {
    if !require_bpf() {
        return;
    }
    let _g = serial();
    let ns = Netns::new();
    let t = Tracer::start("sofdsnoop", &[]);
    let mut extra = vec!["--rounds", "2"];
    if mmsg {
        extra.push("--mmsg");
    }
    let lines = run_gen(&ns, &gen_args(&extra));
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    let sent = msgs(&lines, "sent");
    let received = msgs(&lines, "received");
    assert_eq!(sent.len(), 4, "{lines:?}");
    assert_eq!(received.len(), 4, "{lines:?}");
    assert_ne!(sent[0].pid, sent[0].tid, "the parent sends from a thread");
    check_rows(&trace.rows, "SEND", &sent);
    check_rows(&trace.rows, "RECV", &received);
    // the names: a path, a socket, a pipe, and the same objects on both sides
    let names: Vec<&str> = sent[1].fds.iter().map(|f| f.1.as_str()).collect();
    assert!(names[0].starts_with("socket:["), "{names:?}");
    assert!(names[1].starts_with('/'), "{names:?}");
    assert!(names[2].starts_with("pipe:["), "{names:?}");
    let rnames: Vec<&str> = received[1].fds.iter().map(|f| f.1.as_str()).collect();
    assert_eq!(names, rnames);
}

#[test]
fn sendmsg_and_recvmsg_show_every_fd_with_its_name() {
    sent_and_received(false);
}

#[test]
fn sendmmsg_and_recvmmsg_show_every_fd_with_its_name() {
    sent_and_received(true);
}

/// With a filter, only the rows it picks, and only those reached user space: the kernel dropped the
/// rest (the tool's --verbose count of records read equals its rows).
fn filtered(args: impl Fn(&Value) -> Vec<String>, keep: &str) {
    if !require_bpf() {
        return;
    }
    let _g = serial();
    let ns = Netns::new();
    let mut g = Gen::spawn(&ns, &gen_args(&["--wait-go"]));
    let ready = g.wait_role("ready", Duration::from_secs(10));
    let a = args(&ready);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let t = Tracer::start("sofdsnoop", &a);
    g.go();
    let lines = g.finish(Duration::from_secs(30));
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    let (action, want) = if keep == "sender" {
        ("SEND", msgs(&lines, "sent"))
    } else {
        ("RECV", msgs(&lines, "received"))
    };
    check_rows(&trace.rows, action, &want);
    assert_eq!(
        trace.rows.len(),
        4,
        "{a:?}: only the {keep}'s rows: {:#?}",
        trace.rows
    );
    assert!(
        trace
            .stderr
            .contains("sofdsnoop: 4 records from the kernel"),
        "{a:?}: the kernel sent only the rows shown; stderr:\n{}",
        trace.stderr
    );
}

#[test]
fn pid_filter_keeps_the_sender_only() {
    filtered(|r| vec!["-p".into(), u(r, "pid").to_string()], "sender");
}

#[test]
fn tid_filter_keeps_the_sending_thread_only() {
    filtered(|r| vec!["-t".into(), u(r, "tid").to_string()], "sender");
}

#[test]
fn tid_filter_of_the_child_keeps_the_receiver_only() {
    filtered(
        |r| vec!["-t".into(), u(r, "child_pid").to_string()],
        "receiver",
    );
}

#[test]
fn name_filter_matches_part_of_the_comm() {
    // the child is tg-fdrecv, the parent tg-fdsend
    filtered(|_| vec!["-n".into(), "fdrec".into()], "receiver");
}

/// Rows arrive while the tool keeps running, one round a second (three rounds), in BCC's table.
#[test]
fn live_rows_at_a_trickle() {
    if !require_bpf() {
        return;
    }
    let _g = serial();
    let ns = Netns::new();
    let t = Tracer::text("sofdsnoop", &["-T"]);
    let mut g = Gen::spawn(
        &ns,
        &gen_args(&[
            "--rounds",
            "3",
            "--interval-ms",
            "1000",
            "--comm",
            "tg-live",
        ]),
    );
    let ready = g.wait_role("ready", Duration::from_secs(10));
    let child = u(&ready, "child_pid").to_string();
    let header = t.lines_now();
    assert_eq!(
        header.first().map(String::as_str),
        Some("TIME(s)        ACTION TID    COMM             SOCKET                    FD    NAME"),
        "BCC's header with -T"
    );
    for round in 0..3u64 {
        // each round: 4 fds received by the child; all of them so far, before the next round
        let want = 4 * (round + 1);
        let mut seen = 0;
        let start = Instant::now();
        while seen < want {
            seen = t
                .wait_line(
                    &format!("{want} RECV rows of the child (round {round})"),
                    LIVE_WITHIN + Duration::from_secs(2),
                    {
                        let mut n = 0;
                        let child = child.clone();
                        move |l: &str| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            if f.len() >= 7 && f[1] == "RECV" && f[2] == child {
                                n += 1;
                            }
                            (n >= want).then_some(n)
                        }
                    },
                )
                .0;
            assert!(start.elapsed() < Duration::from_secs(10));
        }
    }
    let lines = g.finish(Duration::from_secs(30));
    let trace = t.stop_text();
    let sent = msgs(&lines, "sent");
    // a SEND line as BCC prints it: TIME(s) ACTION TID COMM SOCKET FD NAME
    let m = &sent[1];
    let line = trace
        .iter()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"SEND") && f.get(5) == Some(&m.fds[2].0.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("no SEND line of fd {}: {trace:#?}", m.fds[2].0));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[2], m.tid.to_string(), "{line}");
    assert_eq!(f[3], "tg-live", "{line}");
    assert_eq!(f[4], format!("{}:{}", m.sock_fd, m.sock), "{line}");
    assert_eq!(f[6], m.fds[2].1, "{line}");
    assert!(
        f[0].contains('.') && f[0].split('.').nth(1).unwrap().len() == 9,
        "{line}"
    );
}

/// -d N: the tool ends by itself after N seconds, with exit 0.
#[test]
fn duration_ends_it() {
    if !require_bpf() {
        return;
    }
    let _g = serial();
    let out = run_timeout(
        Command::new(sockray_bin()).args(["sofdsnoop", "-d", "1", "--json"]),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("{\"lost\":0,"), "{stdout}");
}

/// A message with more fds than the walk takes (64 of a control message): the first 64 shown on each
/// side, each with the message's count, and the rest counted and said at exit.
#[test]
fn fds_beyond_the_bound_are_counted() {
    if !require_bpf() {
        return;
    }
    let _g = serial();
    let ns = Netns::new();
    let t = Tracer::start("sofdsnoop", &[]);
    let lines = run_gen(&ns, &gen_args(&["--many", "70"]));
    std::thread::sleep(SETTLE);
    let trace = t.stop();
    let sent = msgs(&lines, "sent");
    let received = msgs(&lines, "received");
    assert_eq!(sent[0].fds.len(), 70, "{lines:?}");
    assert_eq!(received[0].fds.len(), 70, "{lines:?}");
    for (action, m) in [("SEND", &sent[0]), ("RECV", &received[0])] {
        let rows: Vec<&Value> = trace
            .rows
            .iter()
            .filter(|r| r["action"] == action && u(r, "pid") == m.pid)
            .collect();
        assert_eq!(rows.len(), 64, "{action}: the first 64 fds: {rows:#?}");
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(u(r, "index"), i as u64, "{r}");
            assert_eq!(u(r, "count"), 70, "{r}");
            assert_eq!(u(r, "fd"), m.fds[i].0, "{r}");
            assert_eq!(s(r, "name"), m.fds[i].1, "{r}");
        }
    }
    assert!(
        trace
            .stderr
            .contains("sofdsnoop: not shown: 12 fds beyond the 64th of a control message"),
        "stderr:\n{}",
        trace.stderr
    );
}

/// The table of calls in progress full (one entry: the child's recvmsg() waiting for the next
/// message holds it): a call that finds no room is counted in lost_capacity, one per message whose
/// rows are missing, never dropped silently.
#[test]
fn calls_that_find_no_room_are_counted() {
    if !require_bpf() {
        return;
    }
    let _g = serial();
    let ns = Netns::new();
    let t = Tracer::start_env("sofdsnoop", &[], &[("SOCKRAY_MAP_ENTRIES", "calls=1")]);
    let lines = run_gen(&ns, &gen_args(&["--rounds", "2"]));
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_capacity();
    let sent = msgs(&lines, "sent");
    let received = msgs(&lines, "received");
    // messages shown: their first fd's row (index 0), per side
    let shown = |action: &str, pid: u64| {
        trace
            .rows
            .iter()
            .filter(|r| r["action"] == action && u(r, "pid") == pid && u(r, "index") == 0)
            .count() as u64
    };
    let missing = (sent.len() as u64 - shown("SEND", sent[0].pid))
        + (received.len() as u64 - shown("RECV", received[0].pid));
    assert_eq!(
        trace.capacity, missing,
        "one lost_capacity per message not shown; rows: {:#?}\nstderr:\n{}",
        trace.rows, trace.stderr
    );
    if missing > 0 {
        assert!(
            trace.stderr.contains(
                "records could not be kept (a table was full; the calls in progress that may pass fds"
            ),
            "{}",
            trace.stderr
        );
    }
}
