//! `sockray tcpsubnet` against known traffic: a client in one namespace sending known byte counts to a
//! server at the other end of a veth pair (sockray-testgen `transfer --server-netns`), IPv4 and IPv6,
//! summed per subnet over the intervals: exact, the first matching subnet in the order given taking
//! each flow; BCC's -J and units; BCC's default list. Needs root and BTF; see common::require_bpf.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

/// Runs testgen `transfer` from a to a server in b; returns the (server, client) lines.
fn veth_transfer(v: &VethPair, addr: &str, send: u64, reply: u64) -> (Value, Value) {
    let (send, reply) = (send.to_string(), reply.to_string());
    let lines = run_gen(
        &v.a,
        &gen_args(&[
            "transfer",
            "--addr",
            addr,
            "--server-netns",
            &v.b.name,
            "--send",
            &send,
            "--reply",
            &reply,
            "--write-size",
            "1000",
        ]),
    );
    let role = |r: &str| lines.iter().find(|l| l["role"] == r).cloned().unwrap();
    (role("server"), role("client"))
}

/// tx_bytes summed per subnet over every interval (sockray's --json).
fn sums(rows: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in rows {
        assert_keys(r, &["time_ns", "tick", "subnet", "tx_bytes"]);
        assert!(u(r, "tx_bytes") > 0, "{r}");
        *m.entry(s(r, "subnet").to_string()).or_default() += u(r, "tx_bytes");
    }
    m
}

/// A subnet's sum against what was sent: exact, or, when the kernel skipped `skipped` runs of the
/// send hook (Linux 7.x runs it preemptibly; a run finding it preempted on its CPU is skipped and
/// counted), no more than what was sent.
fn assert_sum(m: &BTreeMap<String, u64>, subnet: &str, sent: u64, skipped: u64) {
    let got = m.get(subnet).copied().unwrap_or(0);
    if skipped == 0 {
        assert_eq!(got, sent, "{subnet}: {m:?}");
    } else {
        assert!(got <= sent, "{subnet}: {m:?}");
        eprintln!("{skipped} skipped run(s): {subnet} {got} of {sent}");
    }
}

#[test]
fn two_subnets_over_a_veth_pair() {
    two_subnets(false);
}

/// --walk (the sockets' counters, walked each interval in both namespaces): the same exact sums.
#[test]
fn walk_two_subnets_over_a_veth_pair() {
    two_subnets(true);
}

fn two_subnets(walk: bool) {
    if !length_hooks_run("tcpsubnet") {
        return;
    }
    let _serial = serial();
    let v = VethPair::new();
    // the client's flows go to 10.77.0.2 (the /32), the server's replies to 10.77.0.1 (the /24)
    let mut args = vec!["10.77.0.2/32,10.77.0.0/24,fd77::/64", "-i", "1"];
    if walk {
        args.push("--walk");
    }
    let t = Tracer::start("tcpsubnet", &args);
    let (s4, c4) = veth_transfer(&v, VETH_B4, 300_000, 12_345);
    let (s6, c6) = veth_transfer(&v, VETH_B6, 70_000, 777);
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    let m = sums(&trace.rows);
    let k = trace.skipped;
    assert_sum(&m, "10.77.0.2/32", u(&c4, "sent"), k);
    assert_sum(&m, "10.77.0.0/24", u(&s4, "sent"), k);
    assert_sum(&m, "fd77::/64", u(&c6, "sent") + u(&s6, "sent"), k);
    assert!(m.len() == 3 || k > 0, "{m:?}");
}

/// BCC's -J: an object per interval with the date and time, values in the unit of -f (bits here).
#[test]
fn bcc_json_in_bits() {
    if !length_hooks_run("tcpsubnet") {
        return;
    }
    let _serial = serial();
    let v = VethPair::new();
    let t = Tracer::text("tcpsubnet", &["-J", "-f", "b", "fd77::/64,10.77.0.0/24"]);
    let (s4, c4) = veth_transfer(&v, VETH_B4, 40_000, 1_000);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let lines = t.stop_text();
    let mut bits = 0;
    let mut objects = 0;
    for l in &lines {
        let j: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        assert!(j["date"].is_string() && j["time"].is_string(), "{j}");
        objects += 1;
        if let Some(b) = j["10.77.0.0/24"].as_u64() {
            bits += b;
        }
        assert!(j.get("fd77::/64").is_none(), "{j}");
    }
    assert!(objects >= 1, "{lines:?}");
    assert_eq!(bits, 8 * (u(&c4, "sent") + u(&s4, "sent")), "{lines:?}");
}

/// No list: BCC's; loopback traffic counts in 127.0.0.1/32 (the host's own loopback traffic may add).
#[test]
fn default_subnets() {
    if !length_hooks_run("tcpsubnet") {
        return;
    }
    let _serial = serial();
    let ns = Netns::new();
    let t = Tracer::start("tcpsubnet", &[]);
    let lines = run_gen(
        &ns,
        &gen_args(&[
            "transfer",
            "--addr",
            "127.0.0.1",
            "--send",
            "500000",
            "--reply",
            "500",
        ]),
    );
    std::thread::sleep(SETTLE);
    let trace = t.stop_with_skips();
    let m = sums(&trace.rows);
    let sent: u64 = lines.iter().filter_map(|l| l["sent"].as_u64()).sum();
    // at least what the generator sent (other loopback traffic may add), unless runs were skipped
    assert!(
        m.get("127.0.0.1/32").copied().unwrap_or(0) >= sent || trace.skipped > 0,
        "{m:?}"
    );
    for k in m.keys() {
        assert!(
            [
                "127.0.0.1/32",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "0.0.0.0/0"
            ]
            .contains(&k.as_str()),
            "{m:?}"
        );
    }
}

/// A person watching: each interval's line for the subnet appears on its tick while the tool keeps
/// running, at a trickle of 100 bytes every 100 ms across the veth pair, and the intervals add up to
/// every byte the client sent.
#[test]
fn live_intervals_at_a_trickle() {
    if !length_hooks_run("tcpsubnet") {
        return;
    }
    let _serial = serial();
    let v = VethPair::new();
    let t = Tracer::start("tcpsubnet", &["10.77.0.2/32", "-i", "1"]);
    let started = std::time::Instant::now();
    let g = Gen::spawn(
        &v.a,
        &gen_args(&[
            "transfer",
            "--addr",
            VETH_B4,
            "--server-netns",
            &v.b.name,
            "--send",
            "4000",
            "--write-size",
            "100",
            "--gap-ms",
            "100",
            "--client-comm",
            "ts-trickle",
        ]),
    );
    // two intervals of the client's bytes while it still sends (it takes ~4 s)
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let (tick, _) = t.wait_line(
            "an interval of the trickle",
            std::time::Duration::from_millis(2500),
            |l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["subnet"] == "10.77.0.2/32" && !seen.contains(&v["tick"].as_u64()?))
                    .then(|| v["tick"].as_u64())?
            },
        );
        seen.insert(tick);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(3800),
        "the intervals came late: {:?}",
        started.elapsed()
    );
    let lines = g.finish(std::time::Duration::from_secs(30));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let trace = t.stop_with_skips();
    let cli = lines.iter().find(|l| l["role"] == "client").unwrap();
    let m = sums(&trace.rows);
    assert_sum(&m, "10.77.0.2/32", u(cli, "sent"), trace.skipped);
    assert_eq!(u(cli, "sent"), 4000);
}
