//! `sockray tcpstates` against known traffic: the exact state sequence of every socket of the test's own
//! sessions (client, accepted server socket, listener), each transition attributed to the process that
//! owns the socket, and the filters. Needs root and BTF; see common::require_bpf.

mod common;

use common::*;
use std::time::Duration;

fn session(addr: &'static str, srv: &'static str, cli: &'static str) -> Session {
    Session::new(addr, pick_port(), srv, cli)
}

fn one(addr: &'static str, closer: Closer, srv: &'static str, cli: &'static str) {
    let ns = Netns::new();
    let mut spec = session(addr, srv, cli);
    spec.client_send = 20_000;
    spec.server_send = 50_000;
    spec.hold_ms = 300;
    spec.closer = closer;
    let (trace, out, win) = traced_session("tcpstates", &[], &ns, &spec);
    check_tcpstates_session(&trace.rows, &out, win);
}

#[test]
fn v4_client_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    one("127.0.0.1", Closer::Client, "ts-v4c-srv", "ts-v4c-cli");
}

#[test]
fn v4_server_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    one("127.0.0.1", Closer::Server, "ts-v4s-srv", "ts-v4s-cli");
}

#[test]
fn v6_client_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    one("::1", Closer::Client, "ts-v6c-srv", "ts-v6c-cli");
}

#[test]
fn v6_server_closes_first() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    one("::1", Closer::Server, "ts-v6s-srv", "ts-v6s-cli");
}

/// A pre-forked server's worker accepts, replies without reading the request and closes: the kernel
/// resets the connection in the worker's own close() (unread data), ESTABLISHED -> CLOSE in process
/// context, on a socket nothing had named the worker's (it was its listener's until then). That change
/// belongs to the worker; the client's end, reset in softirq, to the client.
fn worker_resets(addr: &'static str, comms: [&'static str; 3]) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session(addr, comms[0], comms[1]);
    spec.worker_comm = Some(comms[2]);
    spec.server_unread = true;
    spec.closer = Closer::Server;
    let (trace, out, _) = traced_session("tcpstates", &[], &ns, &spec);
    let all = lives(&trace.rows);
    let (c, s_) = (&out.clients[0], &out.servers[0]);
    assert_ne!(s_.pid, out.server_pid, "the worker is a process of its own");
    for (end, want) in [
        (
            s_,
            seq(&[
                ("LISTEN", "SYN_RECV"),
                ("SYN_RECV", "ESTABLISHED"),
                ("ESTABLISHED", "CLOSE"),
            ]),
        ),
        (
            c,
            seq(&[
                ("CLOSE", "SYN_SENT"),
                ("SYN_SENT", "ESTABLISHED"),
                ("ESTABLISHED", "CLOSE"),
            ]),
        ),
    ] {
        let life = life_of(
            &all, end.family, &end.laddr, end.lport, &end.raddr, end.rport,
        );
        assert_eq!(
            life.transitions(),
            want,
            "{} end: {:#?}",
            end.role,
            life.rows
        );
        let last = life.rows.last().unwrap();
        assert_eq!(
            (u(last, "pid"), s(last, "comm")),
            (end.pid, end.comm.as_str()),
            "{} end's reset belongs to its own process: {last}",
            end.role
        );
    }
}

#[test]
fn v4_prefork_worker_resets_in_its_close() {
    worker_resets("127.0.0.1", ["ts-pr4-lsn", "ts-pr4-cli", "ts-pr4-wrk"]);
}

#[test]
fn v6_prefork_worker_resets_in_its_close() {
    worker_resets("::1", ["ts-pr6-lsn", "ts-pr6-cli", "ts-pr6-wrk"]);
}

#[test]
fn three_sessions_each_socket_attributed() {
    three_sessions(
        &[],
        ["ts-3x4-srv", "ts-3x4-cli", "ts-3x6-srv", "ts-3x6-cli"],
    );
}

/// The same with the socket-owner records of all sockets in one slot of the table (bpf/sockowner.bpf.h):
/// the listener holds it, so every session's records are in the hash map behind it.
#[test]
fn three_sessions_sharing_one_owner_slot() {
    three_sessions(
        &[("SOCKRAY_SOCK_SLOTS", "1")],
        ["ts-1s4-srv", "ts-1s4-cli", "ts-1s6-srv", "ts-1s6-cli"],
    );
}

fn three_sessions(env: &[(&str, &str)], comms: [&'static str; 4]) {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let tracer = Tracer::start_env("tcpstates", &[], env);
    let t0 = now_ns();
    let [s4, c4, s6, c6] = comms;
    let mut v4 = session("127.0.0.1", s4, c4);
    v4.count = 3;
    v4.hold_ms = 100;
    v4.closer = Closer::Server;
    let mut v6 = session("::1", s6, c6);
    v6.count = 3;
    v6.hold_ms = 100;
    v6.closer = Closer::Client;
    let out4 = v4.run(&ns);
    let out6 = v6.run(&ns);
    let t1 = now_ns();
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    check_tcpstates_session(&trace.rows, &out4, (t0, t1));
    check_tcpstates_session(&trace.rows, &out6, (t0, t1));
}

#[test]
fn filter_local_port() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "ts-L-srv", "ts-L-cli");
    spec.hold_ms = 100;
    spec.count = 2;
    let port = spec.port.to_string();
    let (trace, out, win) = traced_session("tcpstates", &["-L", &port], &ns, &spec);
    for r in &trace.rows {
        assert_eq!(
            u(r, "lport"),
            spec.port as u64,
            "-L {port} printed another local port: {r}"
        );
    }
    let all = lives(&trace.rows);
    for (c, sv) in out.clients.iter().zip(&out.servers) {
        check_tcpstates_conn(&all, sv, false, spec.hold_ms as f64, win);
        assert!(
            rows_of(&trace.rows, c).is_empty(),
            "-L {port}: client rows shown"
        );
    }
    check_tcpstates_listener(&all, &out, win);
}

#[test]
fn filter_remote_port() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let mut spec = session("::1", "ts-D-srv", "ts-D-cli");
    spec.hold_ms = 100;
    spec.count = 2;
    spec.closer = Closer::Server;
    let port = spec.port.to_string();
    let (trace, out, win) = traced_session("tcpstates", &["-D", &port], &ns, &spec);
    for r in &trace.rows {
        assert_eq!(
            u(r, "rport"),
            spec.port as u64,
            "-D {port} printed another remote port: {r}"
        );
    }
    let all = lives(&trace.rows);
    for (c, sv) in out.clients.iter().zip(&out.servers) {
        // the whole client life, CLOSE->SYN_SENT included (its remote port is set before the state)
        check_tcpstates_conn(&all, c, true, spec.hold_ms as f64, win);
        assert!(
            rows_of(&trace.rows, sv).is_empty(),
            "-D {port}: server rows shown"
        );
    }
    let lport = out.port();
    assert!(
        !trace.rows.iter().any(
            |r| r["lport"].as_u64() == Some(lport) && r["pid"].as_u64() == Some(out.server_pid)
        ),
        "-D {port}: listener or server rows shown"
    );
}

fn family_filter(flag: &str, want: u64) {
    let ns = Netns::new();
    let tracer = Tracer::start("tcpstates", &[flag]);
    let t0 = now_ns();
    let mut s4 = session("127.0.0.1", "ts-f4-srv", "ts-f4-cli");
    s4.hold_ms = 50;
    let mut s6 = session("::1", "ts-f6-srv", "ts-f6-cli");
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
    check_tcpstates_session(&trace.rows, shown, (t0, t1));
    let hidden_pids = [Some(hidden.server_pid), Some(hidden.client_pid)];
    assert!(
        !rows_with_port(&trace.rows, hidden.port())
            .iter()
            .any(|r| hidden_pids.contains(&r["pid"].as_u64())),
        "{flag}: rows of the other family's session shown"
    );
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

// ---- a person watching: rows while the tool runs, at a trickle ----

// Each end's last change, to CLOSE (table columns SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT
// OLDSTATE -> NEWSTATE MS).
live_tests!("tcpstates", "ts", |out: &SessionOut| {
    let (c, s) = (&out.clients[0], &out.servers[0]);
    vec![
        Want::new("the client's change to CLOSE")
            .col("pid", 1, c.pid)
            .col("comm", 2, &c.comm)
            .col("lport", 4, c.lport)
            .col("rport", 6, c.rport)
            .col("newstate", 9, "CLOSE"),
        Want::new("the server's change to CLOSE")
            .col("pid", 1, s.pid)
            .col("comm", 2, &s.comm)
            .col("lport", 4, s.lport)
            .col("rport", 6, s.rport)
            .col("newstate", 9, "CLOSE"),
    ]
});

/// BCC's `-Y`: each state change also goes to the systemd journal, in its native protocol (here a
/// socket of the test's own standing in for journald's), with BCC's fields and message; the rows are
/// printed as well.
#[test]
fn journal_entries_match_the_rows() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("sockray-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("socket");
    let journald = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    journald
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let ns = Netns::new();
    let mut spec = session("::1", "ts-Y-srv", "ts-Y-cli");
    spec.hold_ms = 100;
    let port = spec.port.to_string();
    let tracer = Tracer::start_env(
        "tcpstates",
        &["-Y", "-L", &port],
        &[("SOCKRAY_JOURNAL_SOCKET", path.to_str().unwrap())],
    );
    let out = spec.run(&ns);
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = journald.recv(&mut buf) {
        entries.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!trace.rows.is_empty(), "no rows: {}", trace.stderr);
    assert_eq!(
        entries.len(),
        trace.rows.len(),
        "one journal entry per row: {entries:#?}\nrows: {:#?}",
        trace.rows
    );
    let sv = &out.servers[0];
    for (e, r) in entries.iter().zip(&trace.rows) {
        let field = |k: &str| {
            e.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {e:?}"))
                .to_string()
        };
        assert_eq!(field("SYSLOG_IDENTIFIER"), "tcpstates");
        assert_eq!(field("PRIORITY"), "5");
        assert_eq!(field("OBJECT_TCP_SOURCE_PORT"), port);
        assert_eq!(
            field("OBJECT_TCP_OLD_STATE"),
            r["oldstate"].as_str().unwrap()
        );
        assert_eq!(
            field("OBJECT_TCP_NEW_STATE"),
            r["newstate"].as_str().unwrap()
        );
        assert_eq!(field("OBJECT_PID"), u(r, "pid").to_string());
        assert_eq!(field("OBJECT_IPV6_SOURCE_ADDRESS"), "::1");
        let msg = field("MESSAGE");
        assert!(
            msg.contains(&format!(
                "::1 {port} → {} {} {} → {}",
                r["raddr"].as_str().unwrap(),
                u(r, "rport"),
                r["oldstate"].as_str().unwrap(),
                r["newstate"].as_str().unwrap()
            )),
            "message {msg:?} for row {r}"
        );
    }
    // the accepted socket's changes name the server process
    let est = trace
        .rows
        .iter()
        .find(|r| u(r, "rport") == sv.rport && r["newstate"] == "ESTABLISHED")
        .expect("the server end's ESTABLISHED");
    assert_eq!(u(est, "pid"), sv.pid, "{est}");
}

/// `-Y` where no journal listens: a clear error, before tracing.
#[test]
fn journal_missing_is_an_error() {
    if !require_bpf() {
        return;
    }
    let out = std::process::Command::new(sockray_bin())
        .args(["tcpstates", "-Y"])
        .env("SOCKRAY_JOURNAL_SOCKET", "/nonexistent/journal/socket")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("-Y: cannot reach the systemd journal at /nonexistent/journal/socket"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `-Y` against a real systemd-journald (the machine's, or one started here when none runs): the
/// entries are in the journal, queryable by their fields (`journalctl -o json OBJECT_TCP_SOURCE_PORT=...`),
/// one per row, with BCC's fields.
#[test]
fn journal_entries_in_a_real_journal() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let journald = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("systemd-journald (Debian's systemd package; `cargo xtask test` installs it)");
    let socket = "/run/systemd/journal/socket";
    let reachable = || {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(socket))
            .is_ok()
    };
    // the machine's journald, or ours for the test's length (ended by its PID)
    let mut ours = None;
    if !reachable() {
        std::fs::create_dir_all("/run/systemd/journal").unwrap();
        ours = Some(
            std::process::Command::new(journald)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start systemd-journald"),
        );
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !reachable() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let stop_ours = |ours: &mut Option<std::process::Child>| {
        if let Some(mut c) = ours.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    assert!(reachable(), "systemd-journald did not open {socket}");

    let ns = Netns::new();
    let mut spec = session("127.0.0.1", "ts-Yj-srv", "ts-Yj-cli");
    spec.hold_ms = 50;
    let port = spec.port.to_string();
    let tracer = Tracer::start("tcpstates", &["-Y", "-L", &port]);
    let _out = spec.run(&ns);
    std::thread::sleep(SETTLE);
    let trace = tracer.stop();
    assert!(!trace.rows.is_empty(), "no rows: {}", trace.stderr);

    // journald writes as it receives; read until the entries are all there (bounded)
    let query = || -> Vec<serde_json::Value> {
        let o = std::process::Command::new("journalctl")
            .args([
                "--no-pager",
                "-o",
                "json",
                "SYSLOG_IDENTIFIER=tcpstates",
                &format!("OBJECT_TCP_SOURCE_PORT={port}"),
            ])
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut entries = query();
    while entries.len() < trace.rows.len() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        entries = query();
    }
    stop_ours(&mut ours);
    assert_eq!(
        entries.len(),
        trace.rows.len(),
        "journal entries for port {port}: {entries:#?}\nrows: {:#?}",
        trace.rows
    );
    for (e, r) in entries.iter().zip(&trace.rows) {
        assert_eq!(e["OBJECT_TCP_OLD_STATE"], r["oldstate"], "{e}");
        assert_eq!(e["OBJECT_TCP_NEW_STATE"], r["newstate"], "{e}");
        assert_eq!(e["OBJECT_IPV4_SOURCE_ADDRESS"], "127.0.0.1", "{e}");
        assert_eq!(e["PRIORITY"], "5", "{e}");
        assert_eq!(e["OBJECT_PID"], u(r, "pid").to_string(), "{e}");
    }
}
