//! `sockray tcplife` against known traffic: every field of every row of the test's own sessions, on both
//! ends (the server end must name the server process even though on loopback its softirq work runs in
//! the client), and the filters. Needs root and BTF; see common::require_bpf.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn session(addr: &'static str, srv: &'static str, cli: &'static str) -> Session {
    Session::new(addr, pick_port(), srv, cli)
}

#[test]
fn v4_client_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "tl-v4c-srv", "tl-v4c-cli");
    spec.client_send = 300_000;
    spec.server_send = 120_000;
    spec.hold_ms = 300;
    spec.closer = Closer::Client;
    let (trace, out, win) = traced_session("tcplife", &[], &ns, &spec);
    check_tcplife_session(&trace.rows, &out, win);
}

#[test]
fn v4_server_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "tl-v4s-srv", "tl-v4s-cli");
    spec.client_send = 4096;
    spec.server_send = 1_000_000;
    spec.hold_ms = 300;
    spec.closer = Closer::Server;
    let (trace, out, win) = traced_session("tcplife", &[], &ns, &spec);
    check_tcplife_session(&trace.rows, &out, win);
}

#[test]
fn v6_client_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("::1", "tl-v6c-srv", "tl-v6c-cli");
    spec.client_send = 70_000;
    spec.server_send = 5_000;
    spec.hold_ms = 300;
    spec.closer = Closer::Client;
    let (trace, out, win) = traced_session("tcplife", &[], &ns, &spec);
    check_tcplife_session(&trace.rows, &out, win);
}

#[test]
fn v6_server_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("::1", "tl-v6s-srv", "tl-v6s-cli");
    spec.client_send = 5_000;
    spec.server_send = 70_000;
    spec.hold_ms = 300;
    spec.closer = Closer::Server;
    let (trace, out, win) = traced_session("tcplife", &[], &ns, &spec);
    check_tcplife_session(&trace.rows, &out, win);
}

/// A pre-forked server: the process that listened forks a worker, which accepts the connection.
/// `worker_resets` false: the worker reads; then the client resets the connection, which ends the
/// server's socket in softirq (on loopback, in the client's own context). The server's row must name
/// the worker, which took the socket over when it read from it, not the listener's owner the socket
/// inherited, nor the client.
/// `worker_resets` true: the worker never reads; it replies and closes, and the kernel resets the
/// connection in the worker's own close() (unread data): ESTABLISHED -> CLOSE in process context, in
/// a socket nothing named the worker's before. The server's row must name the worker all the same.
fn prefork(addr: &'static str, comms: [&'static str; 3], worker_resets: bool) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session(addr, comms[0], comms[1]);
    spec.worker_comm = Some(comms[2]);
    spec.client_send = 5000;
    spec.server_send = 7000;
    spec.hold_ms = 200;
    if worker_resets {
        spec.server_unread = true;
        spec.closer = Closer::Server;
    } else {
        spec.reset = true;
        spec.closer = Closer::Client;
    }
    let (trace, out, win) = traced_session("tcplife", &[], &ns, &spec);
    let (c, s) = (&out.clients[0], &out.servers[0]);
    assert_eq!(
        s.comm, comms[2],
        "the generator's server line is the worker's: {s:?}"
    );
    assert_ne!(s.pid, out.server_pid, "the worker is a process of its own");
    // the worker that resets holds the connection for no time at all
    let min_ms = if worker_resets {
        0.0
    } else {
        spec.hold_ms as f64
    };
    check_tcplife_row(&trace.rows, c, min_ms, win);
    check_tcplife_row(&trace.rows, s, min_ms, win);
    let of_listener: Vec<&Value> = rows_with_port(&trace.rows, out.port())
        .into_iter()
        .filter(|r| r["pid"].as_u64() == Some(out.server_pid))
        .collect();
    assert!(
        of_listener.is_empty(),
        "rows naming the listening process: {of_listener:#?}"
    );
}

#[test]
fn v4_prefork_worker_reset_by_client() {
    prefork(
        "127.0.0.1",
        ["tl-pf4-lsn", "tl-pf4-cli", "tl-pf4-wrk"],
        false,
    );
}

#[test]
fn v6_prefork_worker_reset_by_client() {
    prefork("::1", ["tl-pf6-lsn", "tl-pf6-cli", "tl-pf6-wrk"], false);
}

#[test]
fn v4_prefork_worker_resets_in_its_close() {
    prefork(
        "127.0.0.1",
        ["tl-pr4-lsn", "tl-pr4-cli", "tl-pr4-wrk"],
        true,
    );
}

#[test]
fn v6_prefork_worker_resets_in_its_close() {
    prefork("::1", ["tl-pr6-lsn", "tl-pr6-cli", "tl-pr6-wrk"], true);
}

/// A connection reset before its server ever read from it or closed it: nothing in the server's own
/// context named the accepted socket's owner, so the row names the listener's owner (the same
/// process here), looked up when the socket closes.
#[test]
fn reset_before_the_server_touched_the_socket() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "tl-rst-srv", "tl-rst-cli");
    spec.reset = true;
    spec.client_send = 0;
    spec.server_send = 0;
    spec.hold_ms = 100;
    spec.closer = Closer::Client;
    let (trace, out, win) = traced_session("tcplife", &[], &ns, &spec);
    check_tcplife_session(&trace.rows, &out, win);
}

#[test]
fn three_sessions_each_end_attributed() {
    three_sessions(
        &[],
        ["tl-3x4-srv", "tl-3x4-cli", "tl-3x6-srv", "tl-3x6-cli"],
    );
}

/// The same with the socket-owner records of all sockets in two slots of the table (bpf/sockowner.bpf.h):
/// the listener holds one, the sessions' sockets take the other in turn or go to the hash map behind it.
/// (Fails when records in the hash map are lost, and when a claimed slot's record leaks into another's.)
#[test]
fn three_sessions_sharing_two_owner_slots() {
    three_sessions(
        &[("SOCKRAY_SOCK_SLOTS", "2")],
        ["tl-2s4-srv", "tl-2s4-cli", "tl-2s6-srv", "tl-2s6-cli"],
    );
}

fn three_sessions(env: &[(&str, &str)], comms: [&'static str; 4]) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let tracer = Tracer::start_env("tcplife", &[], env);
    let t0 = now_ns();
    let [s4, c4, s6, c6] = comms;
    let mut v4 = session("127.0.0.1", s4, c4);
    v4.count = 3;
    v4.hold_ms = 100;
    v4.client_send = 10_000;
    v4.server_send = 2_500;
    let mut v6 = session("::1", s6, c6);
    v6.count = 3;
    v6.hold_ms = 100;
    v6.closer = Closer::Server;
    let out4 = v4.run(&ns);
    let out6 = v6.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    check_tcplife_session(&trace.rows, &out4, (t0, t1));
    check_tcplife_session(&trace.rows, &out6, (t0, t1));
}

/// A client socket that exists, unconnected, when tcplife starts (its owner is seeded from the
/// process's fds) and connects afterwards: rows like any other session's, on both ends.
#[test]
fn socket_created_before_the_tracer() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("::1", "tl-early-srv", "tl-early-cli");
    spec.wait_go = true;
    spec.socket_early = true;
    spec.hold_ms = 200;
    let mut g = Gen::spawn(&ns, &spec.args());
    g.wait_role("client-ready", Duration::from_secs(10));
    let tracer = Tracer::start("tcplife", &[]);
    let t0 = now_ns();
    g.go();
    let lines = g.finish(Duration::from_secs(30));
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let out = SessionOut::parse(&spec, lines);
    assert!(!out.clients.is_empty(), "the generator reported no session");
    for (c, sv) in out.clients.iter().zip(&out.servers) {
        // the connect() was seen: its SYN is not counted as sent data (the byte count is exact)
        let r = check_tcplife_row(&trace.rows, c, spec.hold_ms as f64, (t0, t1));
        assert_eq!(u(&r, "tx_bytes"), c.sent, "client's tx_bytes: {r}");
        assert_eq!(u(&r, "rx_bytes"), c.received, "client's rx_bytes: {r}");
        check_tcplife_row(&trace.rows, sv, spec.hold_ms as f64, (t0, t1));
    }
}

#[test]
fn refused_connect_has_a_row_with_no_bytes() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let tracer = Tracer::start("tcplife", &[]);
    let t0 = now_ns();
    let port = pick_port().to_string();
    let mut refused = Vec::new();
    for (addr, comm) in [("127.0.0.1", "tl-ref4"), ("::1", "tl-ref6")] {
        let args: Vec<String> = ["refused", "--addr", addr, "--port", &port, "--comm", comm]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let lines = run_gen(&ns, &args);
        assert_eq!(lines.len(), 1, "{lines:?}");
        refused.push(Conn::from_json(&lines[0]));
    }
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    for c in &refused {
        assert_ne!(
            c.lport, 0,
            "the generator binds before connecting, so it knows its port: {c:?}"
        );
        let mine = rows_of(&trace.rows, c);
        assert_eq!(
            mine.len(),
            1,
            "want one row for the refused connect {c:?}: {mine:#?}"
        );
        let r = mine[0];
        assert_keys(r, TCPLIFE_KEYS);
        assert_eq!(u(r, "pid"), c.pid, "refused connect owner pid: {r}");
        assert_eq!(s(r, "comm"), c.comm, "refused connect owner comm: {r}");
        assert_eq!(u(r, "uid"), c.uid);
        assert_eq!(u(r, "ip"), c.family);
        assert_eq!(u(r, "tx_bytes"), 0, "{r}");
        assert_eq!(u(r, "rx_bytes"), 0, "{r}");
        assert_eq!(u(r, "tx_kb"), 0, "{r}");
        assert_eq!(u(r, "rx_kb"), 0, "{r}");
        let ms = f(r, "ms");
        assert!((0.0..=MAX_MS).contains(&ms), "ms {ms}: {r}");
        assert_time(r, t0, t1);
        assert_skaddr(r);
    }
    // the refusing end (no socket at all) has no row
    let p: u64 = port.parse().unwrap();
    let from_port: Vec<&Value> = trace
        .rows
        .iter()
        .filter(|r| r["lport"].as_u64() == Some(p))
        .collect();
    assert!(
        from_port
            .iter()
            .all(|r| !refused.iter().any(|c| r["rport"].as_u64() == Some(c.lport))),
        "{from_port:#?}"
    );
}

#[test]
fn filter_local_ports() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let (p, q) = (pick_port(), pick_port());
    let specs: Vec<Session> = [
        (p, "tl-L1-srv", "tl-L1-cli"),
        (q, "tl-L2-srv", "tl-L2-cli"),
        (pick_port(), "tl-L3-srv", "tl-L3-cli"),
    ]
    .into_iter()
    .map(|(port, srv, cli)| {
        let mut s = Session::new("127.0.0.1", port, srv, cli);
        s.hold_ms = 50;
        s
    })
    .collect();
    let filter = format!("{p},{q}");
    let tracer = Tracer::start("tcplife", &["-L", &filter]);
    let t0 = now_ns();
    let outs: Vec<SessionOut> = specs.iter().map(|s| s.run(&ns)).collect();
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    for r in &trace.rows {
        let lp = u(r, "lport");
        assert!(
            lp == p as u64 || lp == q as u64,
            "-L {filter} printed a row with lport {lp}: {r}"
        );
    }
    for (i, out) in outs.iter().enumerate() {
        for (c, sv) in out.clients.iter().zip(&out.servers) {
            assert!(
                rows_of(&trace.rows, c).is_empty(),
                "-L {filter}: client row shown"
            );
            if i < 2 {
                check_tcplife_row(&trace.rows, sv, out.spec.hold_ms as f64, (t0, t1));
            } else {
                assert!(
                    rows_of(&trace.rows, sv).is_empty(),
                    "-L {filter}: row of port {} shown",
                    out.port()
                );
            }
        }
    }
}

#[test]
fn filter_remote_ports() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let (p, q) = (pick_port(), pick_port());
    let specs: Vec<Session> = [
        (p, "tl-D1-srv", "tl-D1-cli"),
        (q, "tl-D2-srv", "tl-D2-cli"),
        (pick_port(), "tl-D3-srv", "tl-D3-cli"),
    ]
    .into_iter()
    .map(|(port, srv, cli)| {
        let mut s = Session::new("::1", port, srv, cli);
        s.hold_ms = 50;
        s
    })
    .collect();
    let filter = format!("{p},{q}");
    let tracer = Tracer::start("tcplife", &["-D", &filter]);
    let t0 = now_ns();
    let outs: Vec<SessionOut> = specs.iter().map(|s| s.run(&ns)).collect();
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    for r in &trace.rows {
        let rp = u(r, "rport");
        assert!(
            rp == p as u64 || rp == q as u64,
            "-D {filter} printed a row with rport {rp}: {r}"
        );
    }
    for (i, out) in outs.iter().enumerate() {
        for (c, sv) in out.clients.iter().zip(&out.servers) {
            assert!(
                rows_of(&trace.rows, sv).is_empty(),
                "-D {filter}: server row shown"
            );
            if i < 2 {
                check_tcplife_row(&trace.rows, c, out.spec.hold_ms as f64, (t0, t1));
            } else {
                assert!(
                    rows_of(&trace.rows, c).is_empty(),
                    "-D {filter}: row to port {} shown",
                    out.port()
                );
            }
        }
    }
}

fn family_filter(flag: &str, want: u64) {
    let ns = Netns::new();
    let tracer = Tracer::start("tcplife", &[flag]);
    let t0 = now_ns();
    let mut s4 = session("127.0.0.1", "tl-f4-srv", "tl-f4-cli");
    s4.hold_ms = 50;
    let mut s6 = session("::1", "tl-f6-srv", "tl-f6-cli");
    s6.hold_ms = 50;
    let out4 = s4.run(&ns);
    let out6 = s6.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    for r in &trace.rows {
        assert_eq!(
            u(r, "ip"),
            want,
            "{flag} printed a row of the other family: {r}"
        );
    }
    let (shown, hidden) = if want == 4 {
        (&out4, &out6)
    } else {
        (&out6, &out4)
    };
    check_tcplife_session(&trace.rows, shown, (t0, t1));
    for c in hidden.clients.iter().chain(&hidden.servers) {
        assert!(rows_of(&trace.rows, c).is_empty(), "{flag}: {c:?} shown");
    }
}

#[test]
fn filter_ipv4_only() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    family_filter("-4", 4);
}

#[test]
fn filter_ipv6_only() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    family_filter("-6", 6);
}

/// `-p` names the owning process: with the client's pid only client rows, with the server's only server
/// rows (the server end is owned by the server even where its packets are handled in the client's
/// context), with a pid that owns no socket nothing at all (but still the final lost record).
#[test]
fn filter_pid() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "tl-p-srv", "tl-p-cli");
    spec.hold_ms = 100;
    spec.count = 2;
    spec.wait_go = true;
    let mut g = Gen::spawn(&ns, &spec.args());
    let server_pid = u(
        &g.wait_role("server-listen", Duration::from_secs(10)),
        "pid",
    );
    let client_pid = u(&g.wait_role("client-ready", Duration::from_secs(10)), "pid");
    let me = std::process::id().to_string();
    let by_client = Tracer::start("tcplife", &["-p", &client_pid.to_string()]);
    let by_server = Tracer::start("tcplife", &["-p", &server_pid.to_string()]);
    let by_nobody = Tracer::start("tcplife", &["-p", &me]);
    let t0 = now_ns();
    g.go();
    let lines = g.finish(Duration::from_secs(30));
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let (tc, ts, tn) = (by_client.stop(), by_server.stop(), by_nobody.stop());
    let out = SessionOut::parse(&spec, lines);
    assert_eq!((out.client_pid, out.server_pid), (client_pid, server_pid));

    for r in &tc.rows {
        assert_eq!(
            u(r, "pid"),
            client_pid,
            "-p {client_pid} printed another process's row: {r}"
        );
    }
    for r in &ts.rows {
        assert_eq!(
            u(r, "pid"),
            server_pid,
            "-p {server_pid} printed another process's row: {r}"
        );
    }
    for (c, sv) in out.clients.iter().zip(&out.servers) {
        check_tcplife_row(&tc.rows, c, spec.hold_ms as f64, (t0, t1));
        check_tcplife_row(&ts.rows, sv, spec.hold_ms as f64, (t0, t1));
    }
    assert!(
        tn.rows.is_empty(),
        "-p {me} (a process without sockets) printed rows: {:#?}",
        tn.rows
    );
}

/// `sockray tcplife | head -1`: once the reader has gone, the tool ends by itself (exit 0, nothing on
/// stderr), also when no further event comes that would hit the closed pipe.
#[test]
fn closed_pipe_after_header_ends_the_tool() {
    if !require_bpf() {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(sockray_bin())
        .args(["tcplife", "-L", "1"]) // a port nothing uses: no event will come
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sockray tcplife");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    out.read_line(&mut header).expect("read header");
    assert!(header.starts_with("PID"), "header: {header:?}");
    drop(out); // `head -1` exits
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    if status.is_none() {
        kill_by_pid(&mut child, libc::SIGKILL);
        let _ = child.wait();
        panic!("sockray tcplife kept running after its stdout reader went away");
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.unwrap().success(), "exit {status:?}, stderr: {err}");
    assert!(err.trim().is_empty(), "stderr: {err}");
}

// ---- a person watching: rows while the tool runs, at a trickle ----

/// Both ends of one session: (table columns PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS).
fn live_wants(out: &SessionOut) -> Vec<Want> {
    let (c, s) = (&out.clients[0], &out.servers[0]);
    vec![
        Want::new("the client's row")
            .col("pid", 0, c.pid)
            .col("comm", 1, &c.comm)
            .col("lport", 3, c.lport)
            .col("rport", 5, c.rport)
            .json("tx_bytes", c.sent)
            .json("rx_bytes", c.received),
        Want::new("the server's row")
            .col("pid", 0, s.pid)
            .col("comm", 1, &s.comm)
            .col("lport", 3, s.lport)
            .col("rport", 5, s.rport)
            .json("tx_bytes", s.sent)
            .json("rx_bytes", s.received),
    ]
}

live_tests!("tcplife", "tl", live_wants);

/// CSV (`-s`, into a file): PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS.
#[test]
fn live_csv_rows_into_a_file() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let comms = ("tl-lc-srv", "tl-lc-cli");
    watch_sessions("tcplife", &["-s"], false, Sink::File, "::1", comms, |out| {
        let c = &out.clients[0];
        vec![
            Want::new("the client's CSV row")
                .col("pid", 0, c.pid)
                .col("ip", 2, 6)
                .col("laddr", 3, "::1")
                .col("lport", 4, c.lport)
                .col("rport", 6, c.rport),
        ]
    });
}

/// `kill -TERM` and `kill -HUP` end the tool as Ctrl-C does: the rows still in the ring buffer are
/// printed (into a file, as when it runs under nohup or `>> log`), then the lost record; exit 0.
#[test]
fn sigterm_and_sighup_print_the_rows_in_flight() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    for (sig, srv, cli) in [
        (libc::SIGTERM, "tl-term-srv", "tl-term-cli"),
        (libc::SIGHUP, "tl-hup-srv", "tl-hup-cli"),
    ] {
        let ns = Netns::new();
        let tracer = Tracer::launch("tcplife", &[], &[], true, Sink::File);
        let spec = session("127.0.0.1", srv, cli);
        let t0 = now_ns();
        let out = spec.run(&ns);
        let t1 = now_ns();
        // at once: no time for the rows to be read before the signal
        check_tcplife_session(&tracer.stop_by(sig).rows, &out, (t0, t1));
    }
}

/// Closing the terminal it prints on (a terminal window closed, an ssh session gone) hangs it up: the
/// tool ends with status 0 and no panic, though its output has nowhere to go.
#[test]
fn closing_its_terminal_ends_it_cleanly() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let tracer = Tracer::launch("tcplife", &[], &[], false, Sink::Pty);
    let out = session("::1", "tl-tty-srv", "tl-tty-cli").run(&ns);
    for w in live_wants(&out) {
        tracer.expect_want(false, &w);
    }
    let (status, stderr) = tracer.hang_up();
    assert!(
        status.success(),
        "exit status {status} after its terminal hung up; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}
