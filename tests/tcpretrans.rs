//! `sockray tcpretrans` against retransmits the kernel really makes: two network namespaces joined by a
//! veth pair, whose traffic one side is made to lose (its end taken down, or its replies sent to a MAC
//! address nobody has). Every row is checked (owner, addresses, ports, state, type) and the number of
//! rows against the kernel's own `RetransSegs` counter of each namespace. Needs root and BTF; see
//! common::require_bpf.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(10);

const KEYS: &[&str] = &[
    "time_ns", "pid", "comm", "uid", "ip", "laddr", "lport", "raddr", "rport", "type", "state",
    "seq", "kind", "skaddr",
];

fn addrs(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        (VETH_A6, VETH_B6)
    } else {
        (VETH_A4, VETH_B4)
    }
}

/// A listener in `b` that never accepts, held for `hold_ms`.
fn listener(pair: &VethPair, addr: &str, port: u16, comm: &str, hold_ms: u64) -> (Gen, Value) {
    let mut g = Gen::spawn(
        &pair.b,
        &gen_args(&[
            "listen",
            "--addr",
            addr,
            "--port",
            &port.to_string(),
            "--comm",
            comm,
            "--hold-ms",
            &hold_ms.to_string(),
        ]),
    );
    let l = g.wait_role("listen", LIMIT);
    (g, l)
}

/// A client in `a` (testgen `stall`): connected (or, `syn`, only its SYN sent), waiting for go.
fn stall(pair: &VethPair, addr: &str, port: u16, comm: &str, send: u64, syn: bool) -> (Gen, Value) {
    let port = port.to_string();
    let send = send.to_string();
    let mut args = vec![
        "stall", "--addr", addr, "--port", &port, "--comm", comm, "--send", &send,
    ];
    if syn {
        args.push("--syn");
    }
    let mut g = Gen::spawn(&pair.a, &gen_args(&args));
    let c = g.wait_role("stall", LIMIT);
    (g, c)
}

/// The rows of the client's connection (as the client sees it).
fn client_rows<'a>(rows: &'a [Value], c: &Value) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| {
            r["lport"] == c["lport"] && r["rport"] == c["rport"] && r["laddr"] == c["laddr"]
        })
        .collect()
}

/// The rows of the listener's side of the client's connection.
fn server_rows<'a>(rows: &'a [Value], c: &Value) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| {
            r["lport"] == c["rport"] && r["rport"] == c["lport"] && r["raddr"] == c["laddr"]
        })
        .collect()
}

/// Every row names the process, the ends, the state and the type it should. `seeded_by`: the rows of a
/// socket that existed before the tracer started (its owner from the start-up walk) and the instant the
/// tracer said it was ready (see `Trace::ready_ns`); a row before it may show the owner unknown.
fn check_rows_seeded(
    rows: &[&Value],
    owner: &Value,
    c: &Value,
    server_side: bool,
    typ: &str,
    state: &str,
    seeded_by: Option<u64>,
) {
    let seq0 = rows.first().map(|r| u(r, "seq"));
    for r in rows {
        assert_keys(r, KEYS);
        assert_skaddr(r);
        let walking = seeded_by.is_some_and(|ready| u(r, "time_ns") < ready);
        if !(walking && u(r, "pid") == 0 && s(r, "comm") == "?") {
            assert_eq!(r["pid"], owner["pid"], "owner pid: {r}");
            assert_eq!(r["comm"], owner["comm"], "owner comm: {r}");
        }
        assert_eq!(u(r, "ip"), u(c, "family"), "{r}");
        let (l, rr) = if server_side {
            (("raddr", "rport"), ("laddr", "lport"))
        } else {
            (("laddr", "lport"), ("raddr", "rport"))
        };
        assert_eq!(r[l.0], c["laddr"], "{r}");
        assert_eq!(r[l.1], c["lport"], "{r}");
        assert_eq!(r[rr.0], c["raddr"], "{r}");
        assert_eq!(r[rr.1], c["rport"], "{r}");
        assert_eq!(s(r, "type"), typ, "{r}");
        assert_eq!(s(r, "state"), state, "{r}");
        assert_eq!(s(r, "kind"), "timeout", "{r}");
        // the timer resends the same first unacknowledged segment each time
        assert_eq!(Some(u(r, "seq")), seq0, "{r}");
    }
}

/// [`check_rows_seeded`] for sockets the tracer saw begin: every row names the owner.
fn check_rows(
    rows: &[&Value],
    owner: &Value,
    c: &Value,
    server_side: bool,
    typ: &str,
    state: &str,
) {
    check_rows_seeded(rows, owner, c, server_side, typ, state, None);
}

/// Data in flight when the peer's end goes down: the client's retransmit timer resends it.
fn data_lost(v6: bool, comm: &str, env: &[(&str, &str)]) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let (_, srv) = addrs(v6);
    let port = pick_port();
    let tracer = Tracer::start_env("tcpretrans", &[], env);
    let (lsn, _) = listener(&pair, srv, port, "tr-lsn", 4000);
    let (mut cli, c) = stall(&pair, srv, port, comm, 20_000, false);
    let before = tcp_counter(&pair.a, "RetransSegs");
    pair.b_down();
    cli.step();
    cli.wait_role("sent", LIMIT);
    wait_counter(&pair.a, "RetransSegs", before + 2, Duration::from_secs(5));
    cli.finish(LIMIT); // a reset: no retransmit after this
    let delta = tcp_counter(&pair.a, "RetransSegs") - before;
    assert_eq!(tcp_counter(&pair.a, "TCPRetransFail"), 0);
    lsn.finish(LIMIT);
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let rows = client_rows(&trace.rows, &c);
    check_rows(&rows, &c, &c, false, "R", "ESTABLISHED");
    assert_eq!(
        rows.len() as u64,
        delta,
        "rows against the namespace's RetransSegs; rows: {rows:?}"
    );
    assert!(
        server_rows(&trace.rows, &c).is_empty(),
        "the server side sent nothing again"
    );
}

#[test]
fn data_in_flight_when_the_peer_goes_down_v4() {
    data_lost(false, "tr-d4-cli", &[]);
}

#[test]
fn data_in_flight_when_the_peer_goes_down_v6() {
    data_lost(true, "tr-d6-cli", &[]);
}

#[test]
fn data_in_flight_raw_tp_path() {
    data_lost(false, "tr-dr-cli", &[("SOCKRAY_ATTACH", "raw_tp")]);
}

/// A handshake whose SYN-ACKs are lost: the client resends its SYN, the listener its SYN-ACK. Returns
/// the listener's and the client's lines and how many retransmits each namespace's kernel counted.
struct Handshake {
    lsn: Value,
    cli: Value,
    a_delta: u64,
    b_delta: u64,
}

/// `on_client` runs once the client's SYN is out, before any retransmit (e.g. to start a tracer that
/// filters on its pid: the socket exists then, and the tracer's start-up walk finds its owner).
fn lost_handshake(
    pair: &VethPair,
    v6: bool,
    comms: (&str, &str),
    on_client: impl FnOnce(&Value, u16),
) -> Handshake {
    let (_, srv) = addrs(v6);
    let port = pick_port();
    pair.lose_b_to_a();
    let (a0, b0) = (
        tcp_counter(&pair.a, "RetransSegs"),
        tcp_counter(&pair.b, "RetransSegs"),
    );
    let (lsn_gen, lsn) = listener(pair, srv, port, comms.0, 20_000);
    let (cli_gen, cli) = stall(pair, srv, port, comms.1, 0, true);
    on_client(&cli, port);
    // retransmits from now on, once a tracer started by on_client is ready (its start-up may outlast
    // the first SYN timeout, 1 s, in an emulated guest): each side's next one
    let (a1, b1) = (
        tcp_counter(&pair.a, "RetransSegs"),
        tcp_counter(&pair.b, "RetransSegs"),
    );
    wait_counter(&pair.a, "RetransSegs", a1, LIMIT);
    wait_counter(&pair.b, "RetransSegs", b1, LIMIT);
    cli_gen.finish(LIMIT);
    drop(lsn_gen); // the listener is killed: its requests go with it
    Handshake {
        lsn,
        cli,
        a_delta: tcp_counter(&pair.a, "RetransSegs") - a0,
        b_delta: tcp_counter(&pair.b, "RetransSegs") - b0,
    }
}

fn handshake(v6: bool, comms: (&str, &str)) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let tracer = Tracer::start("tcpretrans", &[]);
    let h = lost_handshake(&pair, v6, comms, |_, _| {});
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let cr = client_rows(&trace.rows, &h.cli);
    check_rows(&cr, &h.cli, &h.cli, false, "R", "SYN_SENT");
    assert_eq!(
        cr.len() as u64,
        h.a_delta,
        "client rows against RetransSegs: {cr:?}"
    );
    let sr = server_rows(&trace.rows, &h.cli);
    check_rows(&sr, &h.lsn, &h.cli, true, "S", "NEW_SYN_RECV");
    assert_eq!(
        sr.len() as u64,
        h.b_delta,
        "listener rows against RetransSegs: {sr:?}"
    );
}

#[test]
fn lost_synacks_v4() {
    handshake(false, ("tr-h4-lsn", "tr-h4-cli"));
}

#[test]
fn lost_synacks_v6() {
    handshake(true, ("tr-h6-lsn", "tr-h6-cli"));
}

#[test]
fn syn_into_a_downed_link_v6() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    pair.b_down();
    let port = pick_port();
    let tracer = Tracer::start("tcpretrans", &[]);
    let before = tcp_counter(&pair.a, "RetransSegs");
    let (cli, c) = stall(&pair, VETH_B6, port, "tr-syn-cli", 0, true);
    wait_counter(&pair.a, "RetransSegs", before, Duration::from_secs(5));
    cli.finish(LIMIT);
    let delta = tcp_counter(&pair.a, "RetransSegs") - before;
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let rows = client_rows(&trace.rows, &c);
    check_rows(&rows, &c, &c, false, "R", "SYN_SENT");
    assert_eq!(rows.len() as u64, delta);
}

/// A filtered run of the lost handshake: which sides' rows it shows. `args` makes the tracer's flags
/// from the client's line and the listening port; the tracer starts once the client's SYN is out.
fn filtered(
    args: impl FnOnce(&Value, u16) -> Vec<String>,
    v6: bool,
    comms: (&str, &str),
    want_client: bool,
    want_server: bool,
) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let mut tracer = None;
    let mut flags = Vec::new();
    let h = lost_handshake(&pair, v6, comms, |c, port| {
        flags = args(c, port);
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        tracer = Some(Tracer::start("tcpretrans", &f));
    });
    assert!(h.a_delta > 0 && h.b_delta > 0, "both sides retransmitted");
    std::thread::sleep(SETTLE);
    let trace = tracer.unwrap().stop();
    let (cr, sr) = (
        client_rows(&trace.rows, &h.cli),
        server_rows(&trace.rows, &h.cli),
    );
    // both sockets existed when the tracer started: their owners come from its start-up walk, and a
    // retransmit while it walked (an emulated guest's start takes seconds) may show none
    let seeded = Some(trace.ready_ns);
    if want_client {
        check_rows_seeded(&cr, &h.cli, &h.cli, false, "R", "SYN_SENT", seeded);
        assert!(
            !cr.is_empty(),
            "{flags:?}: no client rows (client {}, RetransSegs +{} / +{}); rows: {:?}; stderr:\n{}",
            h.cli,
            h.a_delta,
            h.b_delta,
            trace.rows,
            trace.stderr
        );
    } else {
        assert!(cr.is_empty(), "{flags:?} shows the client's rows: {cr:?}");
    }
    if want_server {
        check_rows_seeded(&sr, &h.lsn, &h.cli, true, "S", "NEW_SYN_RECV", seeded);
        assert!(
            !sr.is_empty(),
            "{flags:?}: no listener rows (client {}, RetransSegs +{} / +{}); rows: {:?}; stderr:\n{}",
            h.cli,
            h.a_delta,
            h.b_delta,
            trace.rows,
            trace.stderr
        );
    } else {
        assert!(sr.is_empty(), "{flags:?} shows the listener's rows: {sr:?}");
    }
    // nothing else passes the filter either (the tracer sees the whole host)
    for r in &trace.rows {
        match flags[0].as_str() {
            "-p" => assert_eq!(r["pid"], h.cli["pid"], "-p shows another process: {r}"),
            "-L" => assert_eq!(
                r["lport"].to_string(),
                flags[1],
                "-L shows another port: {r}"
            ),
            "-D" => assert_eq!(
                r["rport"].to_string(),
                flags[1],
                "-D shows another port: {r}"
            ),
            "-4" => assert_eq!(u(r, "ip"), 4, "{r}"),
            "-6" => assert_eq!(u(r, "ip"), 6, "{r}"),
            _ => {}
        }
    }
}

fn flags(f: &[&str]) -> Vec<String> {
    f.iter().map(|s| s.to_string()).collect()
}

#[test]
fn filter_pid_keeps_the_owner_only() {
    let args = |c: &Value, _| flags(&["-p", &c["pid"].to_string()]);
    filtered(args, false, ("tr-p-lsn", "tr-p-cli"), true, false);
}

/// -L PORT (the listening port) shows the listener's side only
#[test]
fn filter_local_port() {
    let args = |_: &Value, port: u16| flags(&["-L", &port.to_string()]);
    filtered(args, false, ("tr-L-lsn", "tr-L-cli"), false, true);
}

/// -D PORT (the listening port) shows the client's side only
#[test]
fn filter_remote_port() {
    let args = |_: &Value, port: u16| flags(&["-D", &port.to_string()]);
    filtered(args, true, ("tr-D-lsn", "tr-D-cli"), true, false);
}

#[test]
fn filter_family_excludes_the_other() {
    // IPv6 traffic, -4: nothing of it
    filtered(
        |_, _| flags(&["-4"]),
        true,
        ("tr-4-lsn", "tr-4-cli"),
        false,
        false,
    );
}

#[test]
fn filter_family_keeps_its_own() {
    filtered(
        |_, _| flags(&["-6"]),
        true,
        ("tr-6-lsn", "tr-6-cli"),
        true,
        true,
    );
}

/// --cgroup: the client, moved into a cgroup before the tracer starts (its socket's owner, cgroup
/// included, comes from the start-up walk), shows its rows; the listener, outside, none.
#[test]
fn filter_cgroup_keeps_its_processes() {
    if !require_bpf() {
        return;
    }
    let Some(cg) = Cgroup::new("tr-cg") else {
        panic!(
            "cannot create a cgroup v2 directory (cgroup2 mount: {:?})",
            cgroup2_root()
        );
    };
    let args = |c: &Value, _| {
        cg.add(u(c, "pid"));
        flags(&["--cgroup", &cg.path])
    };
    filtered(args, false, ("tr-cg-lsn", "tr-cg-cli"), true, false);
}

/// -c: the kernel counts per flow; the table's numbers are the namespaces' own counts.
#[test]
fn count_per_flow_json() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let tracer = Tracer::start("tcpretrans", &["-c"]);
    let h = lost_handshake(&pair, false, ("tr-c-lsn", "tr-c-cli"), |_, _| {});
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let flow = |lport: &Value, rport: &Value| -> Vec<&Value> {
        trace
            .rows
            .iter()
            .filter(|r| r["lport"] == *lport && r["rport"] == *rport)
            .collect()
    };
    let c = flow(&h.cli["lport"], &h.cli["rport"]);
    assert_eq!(c.len(), 1, "one record per flow: {c:?}");
    assert_keys(
        c[0],
        &["ip", "laddr", "lport", "raddr", "rport", "retransmits"],
    );
    assert_eq!(u(c[0], "retransmits"), h.a_delta, "{}", c[0]);
    assert_eq!(c[0]["laddr"], h.cli["laddr"]);
    let sv = flow(&h.cli["rport"], &h.cli["lport"]);
    assert_eq!(sv.len(), 1, "{sv:?}");
    assert_eq!(u(sv[0], "retransmits"), h.b_delta, "{}", sv[0]);
}

#[test]
fn count_table_like_bcc() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let tracer = Tracer::text("tcpretrans", &["-c"]);
    let h = lost_handshake(&pair, false, ("tr-ct-lsn", "tr-ct-cli"), |_, _| {});
    std::thread::sleep(SETTLE);
    let lines = tracer.stop_text();
    let at = lines
        .iter()
        .position(|l| l == "LADDR:LPORT               RADDR:RPORT               RETRANSMITS")
        .unwrap_or_else(|| panic!("no BCC header: {lines:?}"));
    assert_eq!(lines[at - 1], "", "a blank line before the table");
    let want_cli = format!(
        "{:<20} <-> {:<20} {:>10}",
        format!("[{}]#{}", VETH_A4, h.cli["lport"]),
        format!("[{}]#{}", VETH_B4, h.cli["rport"]),
        h.a_delta
    );
    assert!(lines.contains(&want_cli), "{want_cli:?} not in {lines:?}");
    let want_srv = format!(
        "{:<20} <-> {:<20} {:>10}",
        format!("[{}]#{}", VETH_B4, h.cli["rport"]),
        format!("[{}]#{}", VETH_A4, h.cli["lport"]),
        h.b_delta
    );
    assert!(lines.contains(&want_srv), "{want_srv:?} not in {lines:?}");
}

#[test]
fn table_with_sequence_numbers() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    let tracer = Tracer::text("tcpretrans", &["-s"]);
    let h = lost_handshake(&pair, false, ("tr-s-lsn", "tr-s-cli"), |_, _| {});
    std::thread::sleep(SETTLE);
    let lines = tracer.stop_text();
    assert_eq!(
        lines[0],
        "TIME     PID     IP LADDR:LPORT          T> RADDR:RPORT          STATE        SEQ"
    );
    let ends = format!("{}:{}", VETH_A4, h.cli["lport"]);
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(3) == Some(&ends.as_str()))
        .collect();
    assert_eq!(rows.len() as u64, h.a_delta, "{lines:?}");
    for f in rows {
        assert_eq!(f.len(), 8, "{f:?}");
        assert_eq!(f[1], h.cli["pid"].to_string());
        assert_eq!(f[2], "4");
        assert_eq!(f[4], "R>");
        assert_eq!(f[5], format!("{}:{}", VETH_B4, h.cli["rport"]));
        assert_eq!(f[6], "SYN_SENT");
        assert!(f[7].parse::<u32>().is_ok(), "{f:?}");
    }
    // the listener's SYN-ACK resends, with sockray's S type
    let lsn_ends = format!("{}:{}", VETH_B4, h.cli["rport"]);
    let lsn_pid = h.lsn["pid"].to_string();
    assert!(
        lines.iter().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&lsn_ends.as_str())
                && f[1] == lsn_pid
                && f[4] == "S>"
                && f[6] == "NEW_SYN_RECV"
        }),
        "{lines:?}"
    );
}

/// -l: tail loss probes have no tracepoint. Where the kernel refuses fentry and has no kprobes (this
/// host), the tool must say which hook and which kernel features are missing, and fail.
#[test]
fn lossprobe_needs_fentry_or_kprobes() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let mut child = std::process::Command::new(sockray_bin())
        .args(["tcpretrans", "-l"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sockray");
    match wait_timeout(&mut child, Duration::from_secs(5)) {
        Some(st) => {
            let out = child.wait_with_output().expect("output");
            let err = String::from_utf8_lossy(&out.stderr);
            // with kprobes, -l must work
            assert!(
                !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists(),
                "this kernel has kprobes, yet -l failed: {err}"
            );
            assert_eq!(st.code(), Some(1), "{err}");
            for word in ["tcp_send_loss_probe", "fentry", "kprobe", "no tracepoint"] {
                assert!(
                    err.contains(word),
                    "the error does not name {word:?}: {err}"
                );
            }
            assert!(!err.contains("panicked"), "{err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
        None => {
            // this kernel has a way: the tool runs, and stops cleanly
            kill_by_pid(&mut child, libc::SIGINT);
            let st = wait_timeout(&mut child, STOP_TIMEOUT).expect("exit after SIGINT");
            assert!(st.success(), "{st}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// a person watching: each retransmit's row while the tool keeps running

fn live(json: bool, sink: Sink, v6: bool, tag: &str) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new();
    pair.lose_b_to_a();
    let (_, srv) = addrs(v6);
    let port = pick_port();
    let (lsn_gen, _) = listener(&pair, srv, port, &format!("{tag}-lsn"), 8000);
    let comm = format!("{tag}-cli");
    watch("tcpretrans", &[], json, sink, 2, || {
        let before = tcp_counter(&pair.a, "RetransSegs");
        let (cli, c) = stall(&pair, srv, port, &comm, 0, true);
        // the SYN's retransmit timer fires about a second later
        wait_counter(&pair.a, "RetransSegs", before, Duration::from_secs(5));
        cli.finish(LIMIT);
        vec![
            Want::new("the client's SYN retransmit")
                .col("pid", 1, &c["pid"])
                .table(3, format!("{}:{}", s(&c, "laddr"), c["lport"]))
                .table(4, "R>")
                .table(5, format!("{}:{}", srv, port))
                .col("state", 6, "SYN_SENT")
                .json("lport", &c["lport"])
                .json("comm", &comm)
                .json("type", "R"),
        ]
    });
    drop(lsn_gen);
}

#[test]
fn live_rows_on_a_terminal() {
    live(false, Sink::Pty, false, "tr-pty");
}

#[test]
fn live_rows_json_in_a_pipe() {
    live(true, Sink::Pipe, true, "tr-jsn");
}

#[test]
fn live_rows_into_a_file() {
    live(false, Sink::File, false, "tr-fil");
}
