//! `sockray netqtop` on a veth pair between two namespaces of the test: UDP datagrams of known sizes
//! sent each way, one size for each of BCC's buckets (the link's MTU raised so that 5,000- and
//! 20,000-byte datagrams go as one frame each), IPv6 off so that nothing else crosses the link. The
//! tool runs in the first namespace (`ip netns exec`) and watches its end: every queue's packets and
//! bytes are checked against the interface's own counters (`ip -s link` before and after) and against
//! what was sent, bucket by bucket. Both ends usually have the same ifindex (each namespace numbers its
//! own devices), so the far end's packets, counted too, would show: the namespace filter is tested as
//! well. Needs root and BTF; see common::require_bpf.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// UDP payloads, one per bucket: frames of 52, 342, 1242, 5042 and 20042 bytes (+ UDP, IPv4 and
/// Ethernet headers: 42 bytes).
const PAYLOADS: [usize; 5] = [10, 300, 1200, 5000, 20000];
const HEADERS: u64 = 42;
const BUCKETS: [&str; 6] = [
    "size_0_64",
    "size_64_512",
    "size_512_2k",
    "size_2k_16k",
    "size_16k_64k",
    "size_64k_up",
];

/// Runs `f` on a thread that entered `ns`'s network namespace (sockets it makes belong there).
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open namespace file, for this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

fn sh_ok(ns: &Netns, cmd: &str) {
    let out = run_timeout(&mut ns.exec(&["sh", "-c", cmd]), Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair made quiet (no IPv6: no router solicitations, no MLD) with a 60,000-byte MTU.
fn quiet_pair() -> VethPair {
    let p = VethPair::new();
    for (ns, dev) in [(&p.a, &p.dev_a), (&p.b, &p.dev_b)] {
        sh_ok(
            ns,
            &format!(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.{dev}.disable_ipv6=1 && \
                 ip link set {dev} mtu 60000"
            ),
        );
    }
    // whatever the link sent while it came up is over before the tool starts
    thread::sleep(Duration::from_millis(200));
    p
}

/// The interface's counters (`ip -s link`): (tx packets, tx bytes, rx packets, rx bytes), and drops.
fn link_stats(ns: &Netns, dev: &str) -> ([u64; 4], u64) {
    let out = run_timeout(
        Command::new("ip").args(["-n", &ns.name, "-s", "-j", "link", "show", dev]),
        Duration::from_secs(10),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -s -j link");
    let st = &v[0]["stats64"];
    (
        [
            u(&st["tx"], "packets"),
            u(&st["tx"], "bytes"),
            u(&st["rx"], "packets"),
            u(&st["rx"], "bytes"),
        ],
        u(&st["tx"], "dropped") + u(&st["rx"], "dropped"),
    )
}

fn ifindex(ns: &Netns, dev: &str) -> u64 {
    let out = run_timeout(
        Command::new("ip").args(["-n", &ns.name, "-j", "link", "show", dev]),
        Duration::from_secs(10),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    u(&v[0], "ifindex")
}

/// Sends `count` datagrams of each payload size from `from` (in `from_ns`) to `to` (in `to_ns`), a
/// socket bound there (so that no ICMP error comes back). Paced: the veth's receive backlog never fills.
fn send_sizes(from_ns: &Netns, from: &str, to_ns: &Netns, to: &str, count: usize) {
    let to = to.to_string();
    let rx = in_ns(to_ns, move || {
        UdpSocket::bind(format!("{to}:0")).expect("bind the receiver")
    });
    let dest: SocketAddr = rx.local_addr().unwrap();
    let from = from.to_string();
    in_ns(from_ns, move || {
        let s = UdpSocket::bind(format!("{from}:0")).expect("bind the sender");
        for &size in &PAYLOADS {
            let buf = vec![7u8; size];
            for _ in 0..count {
                assert_eq!(s.send_to(&buf, dest).expect("send"), size);
                thread::sleep(Duration::from_micros(200));
            }
        }
    });
    // the last datagrams through the receiving side's backlog before the socket goes
    thread::sleep(Duration::from_millis(50));
    drop(rx);
}

/// The tool's rows summed per direction: (packets, bytes, buckets) and the queues seen.
#[derive(Debug, Default)]
struct Dir {
    packets: u64,
    bytes: u64,
    buckets: [u64; 6],
    queues: Vec<u64>,
}

fn sum_rows(rows: &[Value], dir: &str) -> Dir {
    let mut d = Dir::default();
    for r in rows
        .iter()
        .filter(|r| r.get("dir").and_then(Value::as_str) == Some(dir))
    {
        assert_keys(
            r,
            &[
                "time_ns",
                "tick",
                "nic",
                "ifindex",
                "dir",
                "queue",
                "beyond",
                "packets",
                "bytes",
                "avg_size",
                "size_0_64",
                "size_64_512",
                "size_512_2k",
                "size_2k_16k",
                "size_16k_64k",
                "size_64k_up",
                "secs",
                "bps",
                "pps",
            ],
        );
        let buckets: Vec<u64> = BUCKETS.iter().map(|b| u(r, b)).collect();
        assert_eq!(buckets.iter().sum::<u64>(), u(r, "packets"), "{r}");
        assert_eq!(
            u(r, "avg_size"),
            u(r, "bytes") / u(r, "packets").max(1),
            "{r}"
        );
        d.packets += u(r, "packets");
        d.bytes += u(r, "bytes");
        for (a, b) in d.buckets.iter_mut().zip(&buckets) {
            *a += b;
        }
        if u(r, "packets") > 0 {
            assert_eq!(r["beyond"], Value::Bool(false), "{r}");
            d.queues.push(u(r, "queue"));
        }
    }
    d
}

/// What `count` datagrams of each payload make: (packets, bytes, buckets).
fn expected(count: u64) -> (u64, u64, [u64; 6]) {
    let bytes = PAYLOADS.iter().map(|&p| (p as u64 + HEADERS) * count).sum();
    (
        count * PAYLOADS.len() as u64,
        bytes,
        [count, count, count, count, count, 0],
    )
}

/// Sends 20 datagrams of each size from a to b and 10 from b to a, the tool watching a's end; checks
/// both directions against `ip -s link` and against what was sent.
fn counts_against_link(env: &[(&str, &str)]) {
    let p = quiet_pair();
    let (ia, ib) = (ifindex(&p.a, &p.dev_a), ifindex(&p.b, &p.dev_b));
    eprintln!("ifindex: {} {ia}, {} {ib}", p.dev_a, p.dev_b);
    let t = Tracer::launch_in(
        Some(&p.a),
        "netqtop",
        &["-n", &p.dev_a, "-i", "1"],
        env,
        true,
        Sink::Pipe,
    );
    let (s0, d0) = link_stats(&p.a, &p.dev_a);
    send_sizes(&p.a, VETH_A4, &p.b, VETH_B4, 20);
    send_sizes(&p.b, VETH_B4, &p.a, VETH_A4, 10);
    let (s1, d1) = link_stats(&p.a, &p.dev_a);
    thread::sleep(SETTLE);
    let trace = t.stop();
    assert_eq!(d0, d1, "the link dropped packets");
    let (tx, rx) = (sum_rows(&trace.rows, "tx"), sum_rows(&trace.rows, "rx"));
    eprintln!("tx {tx:?}\nrx {rx:?}\nip -s link: {s0:?} -> {s1:?}");
    assert!(
        trace.rows.iter().any(|r| r.get("dir").is_some()),
        "no rows: {:?}",
        trace.rows
    );
    for r in trace.rows.iter().filter(|r| r.get("dir").is_some()) {
        assert_eq!(s(r, "nic"), p.dev_a, "{r}");
        assert_eq!(u(r, "ifindex"), ia, "{r}");
    }
    // the interface's own counters
    assert_eq!(
        (tx.packets, tx.bytes),
        (s1[0] - s0[0], s1[1] - s0[1]),
        "TX against ip -s link"
    );
    assert_eq!(
        (rx.packets, rx.bytes),
        (s1[2] - s0[2], s1[3] - s0[3]),
        "RX against ip -s link"
    );
    // what was sent, size by size
    let (pk, by, bu) = expected(20);
    assert_eq!((tx.packets, tx.bytes, tx.buckets), (pk, by, bu), "TX");
    let (pk, by, bu) = expected(10);
    assert_eq!((rx.packets, rx.bytes, rx.buckets), (pk, by, bu), "RX");
    // veth has a queue per possible CPU each way
    let ncpu = num_cpus();
    for q in tx.queues.iter().chain(&rx.queues) {
        assert!(*q < ncpu as u64, "queue {q} of {ncpu}");
    }
}

fn num_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit(['-', ',']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        })
        .unwrap_or(1)
}

#[test]
fn counts_match_ip_link_and_sizes() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    counts_against_link(&[]);
}

/// The raw_tp path (what a kernel without tp_btf takes), counted as exactly.
#[test]
fn raw_tp_path_counts_alike() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    counts_against_link(&[("SOCKRAY_ATTACH", "raw_tp")]);
}

/// Intervals come while the tool keeps running, at a trickle of one datagram every 100 ms, each
/// interval with what came since the one before (not the total so far).
#[test]
fn live_intervals_while_it_runs() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let p = quiet_pair();
    let t = Tracer::launch_in(
        Some(&p.a),
        "netqtop",
        &["-n", &p.dev_a, "-i", "1"],
        &[],
        true,
        Sink::Pipe,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rx = in_ns(&p.b, || UdpSocket::bind(format!("{VETH_B4}:0")).unwrap());
    let dest = rx.local_addr().unwrap();
    let st = Arc::clone(&stop);
    let a_path = format!("/run/netns/{}", p.a.name);
    let trickle = thread::spawn(move || {
        let file = std::fs::File::open(&a_path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open namespace file, for this thread only.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let s = UdpSocket::bind(format!("{VETH_A4}:0")).unwrap();
        let mut n = 0u64;
        // bounded: 15 s at most
        while !st.load(Ordering::Relaxed) && n < 150 {
            s.send_to(&[1u8; 300], dest).unwrap();
            n += 1;
            thread::sleep(Duration::from_millis(100));
        }
        n
    });
    let started = Instant::now();
    let mut ticks = std::collections::BTreeMap::new();
    while ticks.len() < 3 {
        let (r, _) = t.wait_line("an interval's TX row", Duration::from_millis(2500), |l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["dir"] == "tx" && u(&v, "packets") > 0 && !ticks.contains_key(&u(&v, "tick")))
                .then_some(v)
        });
        ticks.insert(u(&r, "tick"), r);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = trickle.join().unwrap();
    drop(rx);
    let trace = t.stop();
    assert!(
        elapsed < Duration::from_millis(4500),
        "three intervals took {elapsed:?}"
    );
    // an interval is a second's worth (~10 datagrams), not the total so far
    for r in ticks.values() {
        let n = u(r, "packets");
        assert!((3..=20).contains(&n), "an interval with {n} packets: {r}");
        assert_eq!(u(r, "size_64_512"), n, "342-byte frames: {r}");
        assert_eq!(u(r, "bytes"), n * 342, "{r}");
    }
    let total: u64 = sum_rows(&trace.rows, "tx").packets;
    assert_eq!(total, sent, "every datagram in some interval");
}

/// The table as people read it: BCC's TX and RX tables, -t's BPS and PPS, the dashes; redrawn (the
/// screen cleared) on a terminal only.
#[test]
fn table_like_bcc() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let p = quiet_pair();
    let t = Tracer::launch_in(
        Some(&p.a),
        "netqtop",
        &["-n", &p.dev_a, "-t", "-i", "1", "2"],
        &[],
        false,
        Sink::Pipe,
    );
    send_sizes(&p.a, VETH_A4, &p.b, VETH_B4, 4);
    thread::sleep(Duration::from_millis(2300));
    let lines = t.stop_text();
    let text = lines.join("\n");
    assert!(
        !text.contains("\x1b[H\x1b[2J"),
        "a pipe is not cleared: {text:?}"
    );
    let header = " QueueID    avg_size   [0, 64)    [64, 512)  [512, 2K)  [2K, 16K)  [16K, 64K) BPS        PPS";
    assert_eq!(
        lines.iter().filter(|l| *l == header).count(),
        4,
        "TX and RX twice: {text}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "TX").count(),
        2,
        "two intervals: {text}"
    );
    assert_eq!(lines.iter().filter(|l| *l == "RX").count(), 2, "{text}");
    assert_eq!(
        lines.iter().filter(|l| **l == "-".repeat(95)).count(),
        2,
        "{text}"
    );
    // the interval with the datagrams: 4 of each size, 5 buckets of 4 in the TX Total
    let total = lines
        .iter()
        .find(|l| l.starts_with(" Total") && l.split_whitespace().nth(2) == Some("4"))
        .unwrap_or_else(|| panic!("no TX total with the datagrams: {text}"));
    let f: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(&f[2..7], &["4", "4", "4", "4", "4"], "{total}");
    // average (52+342+1242+5042+20042)/5 = 5344 bytes: BCC's 5.22K
    assert_eq!(f[1], "5.22K", "{total}");
    // a date line above each TX, as asctime()
    let at = lines.iter().position(|l| l == "TX").unwrap();
    assert_eq!(lines[at - 1].split_whitespace().count(), 5, "{text}");

    let t = Tracer::launch_in(
        Some(&p.a),
        "netqtop",
        &["-n", &p.dev_a, "-i", "1"],
        &[],
        false,
        Sink::Pty,
    );
    thread::sleep(Duration::from_millis(1500));
    let text = t.stop_text().join("\n");
    assert!(
        text.contains("\x1b[H\x1b[2J"),
        "a terminal is redrawn: {text:?}"
    );
}

/// A NIC that does not exist: a clear error, a non-zero exit, no panic (before any BPF is loaded).
#[test]
fn missing_nic_is_an_error() {
    for args in [
        &["-n", "srnosuch0"][..],
        &["-n", "srnosuch0", "-t", "-i", "1"],
    ] {
        let out = run_timeout(
            Command::new(sockray_bin()).arg("netqtop").args(args),
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("\"srnosuch0\" does not exist"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    for bad in [
        &["-n", "thisnameiswaytoolong"][..],
        &["-i", "1"],
        &["-n", "lo", "-i", "0"],
        &["-n", "lo", "-i", "x"],
    ] {
        let out = run_timeout(
            Command::new(sockray_bin()).arg("netqtop").args(bad),
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} succeeded");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A veth pair with 4 queues each way and 8 flows (sockets) from a to b: the TX queue is picked per
/// flow, so several queues carry packets, and every one is counted in its own row. Then the same with
/// netqtop entered into the namespace by `nsenter --net` alone: sysfs shows the host's devices, not
/// this one's queues, so netqtop keeps one slot and counts the packets of the higher queues together
/// (`>=1`, "beyond": true), none lost.
#[test]
fn queues_each_and_beyond() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let (a, b) = (Netns::new(), Netns::new());
    let n = std::process::id() % 100_000;
    let (dev_a, dev_b) = (format!("srqa{n}"), format!("srqb{n}"));
    let ip = |args: &[&str]| {
        let out = run_timeout(Command::new("ip").args(args), Duration::from_secs(10));
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&[
        "link",
        "add",
        &dev_a,
        "netns",
        &a.name,
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "type",
        "veth",
        "peer",
        "name",
        &dev_b,
        "netns",
        &b.name,
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
    ]);
    for (ns, dev, addr) in [(&a, &dev_a, VETH_A4), (&b, &dev_b, VETH_B4)] {
        sh_ok(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev,
        ]);
        ip(&["-n", &ns.name, "link", "set", dev, "up"]);
    }
    // no ARP: b's MAC, permanent
    ip(&[
        "-n",
        &b.name,
        "link",
        "set",
        &dev_b,
        "address",
        "02:00:00:00:77:02",
    ]);
    ip(&[
        "-n",
        &a.name,
        "neigh",
        "replace",
        VETH_B4,
        "lladdr",
        "02:00:00:00:77:02",
        "dev",
        &dev_a,
        "nud",
        "permanent",
    ]);
    thread::sleep(Duration::from_millis(200));
    let flows = |count: usize| {
        let rx = in_ns(&b, || UdpSocket::bind(format!("{VETH_B4}:0")).unwrap());
        let dest = rx.local_addr().unwrap();
        in_ns(&a, move || {
            for _ in 0..8 {
                let s = UdpSocket::bind(format!("{VETH_A4}:0")).unwrap();
                for _ in 0..count {
                    s.send_to(&[3u8; 100], dest).unwrap();
                    thread::sleep(Duration::from_micros(200));
                }
            }
        });
        thread::sleep(Duration::from_millis(50));
        drop(rx);
    };
    let ns_path = format!("/run/netns/{}", a.name);
    let nsenter = format!("--net={ns_path}");
    for wrapped in [false, true] {
        let args = ["-n", dev_a.as_str(), "-i", "1"];
        let t = if wrapped {
            Tracer::launch_wrapped(
                &["nsenter", &nsenter],
                "netqtop",
                &args,
                &[],
                true,
                Sink::Pipe,
            )
        } else {
            Tracer::launch_in(Some(&a), "netqtop", &args, &[], true, Sink::Pipe)
        };
        let (s0, _) = link_stats(&a, &dev_a);
        flows(10);
        let (s1, _) = link_stats(&a, &dev_a);
        thread::sleep(SETTLE);
        let trace = t.stop();
        let tx: Vec<&Value> = trace
            .rows
            .iter()
            .filter(|r| r["dir"] == "tx" && u(r, "packets") > 0)
            .collect();
        let total: u64 = tx.iter().map(|r| u(r, "packets")).sum();
        assert_eq!(total, 80, "8 flows of 10: {tx:?}");
        assert_eq!(total, s1[0] - s0[0], "ip -s link");
        assert_eq!(
            tx.iter().map(|r| u(r, "bytes")).sum::<u64>(),
            s1[1] - s0[1],
            "ip -s link"
        );
        let mut queues: Vec<(u64, bool)> = tx
            .iter()
            .map(|r| (u(r, "queue"), r["beyond"] == Value::Bool(true)))
            .collect();
        queues.sort();
        queues.dedup();
        eprintln!("wrapped {wrapped}: TX queues {queues:?}");
        if wrapped {
            // one slot: queue 0, and the others together as ">= 1"
            assert!(
                queues
                    .iter()
                    .all(|&(q, beyond)| (q, beyond) == (0, false) || (q, beyond) == (1, true)),
                "{queues:?}"
            );
            assert!(
                queues.contains(&(1, true)),
                "no packet of a queue above 0: {tx:?}"
            );
        } else {
            assert!(queues.len() >= 2, "8 flows on one of 4 queues: {tx:?}");
            assert!(
                queues.iter().all(|&(q, beyond)| q < 4 && !beyond),
                "{queues:?}"
            );
            // every queue of the interface has its row, BCC's way, used or not
            for q in 0..4 {
                assert!(
                    trace
                        .rows
                        .iter()
                        .any(|r| r["dir"] == "tx" && u(r, "queue") == q),
                    "no row of TX queue {q}"
                );
            }
        }
    }
}
