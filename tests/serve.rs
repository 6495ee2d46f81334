//! `sockray serve`: known traffic in a namespace, then the metrics as a scraper reads them (the
//! Prometheus text format, checked by `promtool check metrics`, and OpenMetrics), as a real Prometheus
//! server stores them (its HTTP API), and what the HTTP side does with bad requests, idle clients and a
//! port in use; a series budget folds what is beyond it and loses nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn serve(port: u16, extra: &[&str]) -> Tracer {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    Tracer::text("serve", &args)
}

/// Connections, refused connects, bytes of ended sessions, connect latency and drops of known traffic,
/// IPv4 and IPv6, as a scraper reads them; the text passes promtool's check.
#[test]
fn counts_known_traffic() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let port = pick_port();
    let t = serve(port, &[]);
    let ns = Netns::new();
    let mut s4 = Session::new("127.0.0.1", 0, "sv-srv", "sv-cli");
    s4.count = 5;
    s4.hold_ms = 0;
    let o4 = s4.run(&ns);
    let mut s6 = Session::new("::1", 0, "sv6-srv", "sv6-cli");
    s6.count = 2;
    s6.hold_ms = 0;
    let o6 = s6.run(&ns);
    let closed = pick_port().to_string();
    for _ in 0..3 {
        run_gen(
            &ns,
            &gen_args(&[
                "refused",
                "--addr",
                "127.0.0.1",
                "--port",
                &closed,
                "--comm",
                "sv-ref",
            ]),
        );
    }
    let p4 = o4.port();
    let p6 = o6.port();
    let cli4 = format!("{{comm=\"sv-cli\",role=\"client\",port=\"{p4}\"}}");
    let srv4 = format!("{{comm=\"sv-srv\",role=\"server\",port=\"{p4}\"}}");
    let m = scrape_until(port, |m| {
        val(m, &format!("sockray_tcp_sessions_closed_total{cli4}")) >= 5.0
            && val(m, &format!("sockray_tcp_sessions_closed_total{srv4}")) >= 5.0
    });
    let dump = format!("{m:#?}");
    assert_eq!(
        val(&m, &format!("sockray_tcp_connections_opened_total{cli4}")),
        5.0,
        "{dump}"
    );
    assert_eq!(
        val(&m, &format!("sockray_tcp_connections_opened_total{srv4}")),
        5.0,
        "{dump}"
    );
    assert_eq!(
        val(&m, &format!("sockray_tcp_sessions_closed_total{cli4}")),
        5.0,
        "{dump}"
    );
    let sent: u64 = o4.clients.iter().map(|c| c.sent).sum();
    let received: u64 = o4.clients.iter().map(|c| c.received).sum();
    assert_eq!(sent, 5 * 3000);
    assert_eq!(
        val(&m, &format!("sockray_tcp_session_sent_bytes_total{cli4}")),
        sent as f64,
        "{dump}"
    );
    assert_eq!(
        val(
            &m,
            &format!("sockray_tcp_session_received_bytes_total{cli4}")
        ),
        received as f64,
        "{dump}"
    );
    assert_eq!(
        val(&m, &format!("sockray_tcp_session_sent_bytes_total{srv4}")),
        received as f64,
        "{dump}"
    );
    assert_eq!(
        val(
            &m,
            &format!("sockray_tcp_session_received_bytes_total{srv4}")
        ),
        sent as f64,
        "{dump}"
    );
    // connect latency: every connect in the histogram, loopback well under a second
    let h = format!("comm=\"sv-cli\",role=\"client\",port=\"{p4}\"");
    assert_eq!(
        val(
            &m,
            &format!("sockray_tcp_connect_duration_seconds_count{{{h}}}")
        ),
        5.0,
        "{dump}"
    );
    assert_eq!(
        val(
            &m,
            &format!("sockray_tcp_connect_duration_seconds_bucket{{{h},le=\"+Inf\"}}")
        ),
        5.0,
        "{dump}"
    );
    assert_eq!(
        val(
            &m,
            &format!("sockray_tcp_connect_duration_seconds_bucket{{{h},le=\"1.048576\"}}")
        ),
        5.0,
        "{dump}"
    );
    let sum = val(
        &m,
        &format!("sockray_tcp_connect_duration_seconds_sum{{{h}}}"),
    );
    assert!(sum > 0.0 && sum < 5.0, "{dump}");
    // the server side has no connect latency
    assert!(
        !m.keys()
            .any(|k| k.starts_with("sockray_tcp_connect_duration_seconds_count{comm=\"sv-srv\"")),
        "{dump}"
    );
    // IPv6, its own port
    assert_eq!(
        val(
            &m,
            &format!(
                "sockray_tcp_connections_opened_total{{comm=\"sv6-cli\",role=\"client\",port=\"{p6}\"}}"
            )
        ),
        2.0,
        "{dump}"
    );
    assert_eq!(
        val(
            &m,
            &format!(
                "sockray_tcp_connections_opened_total{{comm=\"sv6-srv\",role=\"server\",port=\"{p6}\"}}"
            )
        ),
        2.0,
        "{dump}"
    );
    // refused: by the closed port, never counted as opened
    assert_eq!(
        val(
            &m,
            &format!(
                "sockray_tcp_connect_failures_total{{comm=\"sv-ref\",role=\"client\",port=\"{closed}\",reason=\"refused\"}}"
            )
        ),
        3.0,
        "{dump}"
    );
    assert!(
        !m.keys()
            .any(|k| k.contains("comm=\"sv-ref\"") && k.contains("opened")),
        "{dump}"
    );
    // the SYNs to the closed port were dropped for want of a socket (at least those three)
    let no_socket: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("sockray_tcp_drops_total{role=\"none\""))
        .map(|(_, v)| v)
        .sum();
    assert!(no_socket >= 3.0, "{dump}");
    assert_eq!(
        val(&m, "sockray_lost_events_total{cause=\"capacity\"}"),
        0.0,
        "{dump}"
    );

    // the text as Prometheus' own checker reads it
    let (_, body) = get(port, "/metrics", "text/plain");
    promtool_check(&body);
    // OpenMetrics when asked for, as Prometheus asks
    let (status, om) = get(
        port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE sockray_tcp_connections_opened counter"),
        "{om}"
    );
    t.stop_text();
}

/// `promtool check metrics` on a body: no error, no lint problem.
fn promtool_check(body: &str) {
    let Some(promtool) = tool_or_ci("promtool") else {
        return;
    };
    let mut c = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A program's path; None (a note) when it is missing, a failure under CI (`cargo xtask test` installs
/// Debian's prometheus package).
fn tool_or_ci(name: &str) -> Option<String> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return Some(p);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is not installed (cargo xtask test installs Debian's prometheus package)");
    }
    eprintln!("note: {name} not installed; that part of the test is skipped");
    None
}

/// A real Prometheus server scrapes serve every second; its query API shows the test's traffic.
#[test]
fn prometheus_scrapes_it() {
    if !require_bpf() {
        return;
    }
    let Some(prometheus) = tool_or_ci("prometheus") else {
        return;
    };
    let _serial = serial();
    let port = pick_port();
    let prom_port = pick_port();
    let t = serve(port, &[]);
    let dir = std::env::temp_dir().join(format!("sockray-prom-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sockray\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus");

    let ns = Netns::new();
    let mut s = Session::new("127.0.0.1", 0, "sp-srv", "sp-cli");
    s.count = 4;
    s.hold_ms = 0;
    let o = s.run(&ns);
    let p = o.port();
    let sent: u64 = o.clients.iter().map(|c| c.sent).sum();
    let queries = [
        (
            format!(
                "sockray_tcp_connections_opened_total{{comm=\"sp-cli\",role=\"client\",port=\"{p}\"}}"
            ),
            4.0,
        ),
        (
            format!(
                "sockray_tcp_connections_opened_total{{comm=\"sp-srv\",role=\"server\",port=\"{p}\"}}"
            ),
            4.0,
        ),
        (
            format!(
                "sockray_tcp_session_sent_bytes_total{{comm=\"sp-cli\",role=\"client\",port=\"{p}\"}}"
            ),
            sent as f64,
        ),
        (
            format!(
                "sum(sockray_tcp_connect_duration_seconds_count{{comm=\"sp-cli\",port=\"{p}\"}})"
            ),
            4.0,
        ),
    ];
    let until = Instant::now() + Duration::from_secs(60);
    let last = loop {
        let got = queries
            .iter()
            .map(|(q, _)| prom_query(prom_port, q))
            .collect::<Vec<_>>();
        if got
            .iter()
            .zip(&queries)
            .all(|(got, (_, want))| *got == Some(*want))
            || Instant::now() > until
        {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    kill_by_pid(&mut prom, libc::SIGTERM);
    let _ = wait_timeout(&mut prom, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    for (got, (q, want)) in last.iter().zip(&queries) {
        assert_eq!(*got, Some(*want), "{q}: all answers {last:?}");
    }
    t.stop_text();
}

/// The value of an instant query (the first sample), None when there is none yet.
fn prom_query(port: u16, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /api/v1/query?query={enc} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n")?.1;
    // chunked or not: the JSON object is between the first '{' and the last '}'
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// What the HTTP side answers to what is not a scrape, and that idle clients hold no more than the
/// bounded workers (the metrics are served again once they time out).
#[test]
fn http_abuse() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let port = pick_port();
    let t = serve(port, &[]);
    assert_eq!(get(port, "/nope", "*/*").0, 404);
    assert_eq!(get(port, "/", "*/*").0, 200);
    assert_eq!(get(port, "/metrics?x=1", "*/*").0, 200);
    assert_eq!(
        http(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    assert_eq!(http(port, "\x16\x03\x01 not http\r\n\r\n").0, 400);
    let (status, body) = http(port, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20000));
    assert_eq!(http(port, &huge).0, 431);
    // 100 clients that connect and send nothing
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let threads = std::fs::read_to_string(format!("/proc/{}/status", t.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .map(|n| n.trim().parse::<u32>().unwrap())
        })
        .unwrap();
    // the main thread, the acceptor, 4 workers and what libbpf and the twins' loader started
    assert!(threads <= 12, "{threads} threads with 100 idle clients");
    drop(idle);
    // once they are gone (or timed out), a scrape is served
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(port, "/metrics", "text/plain");
        if status == 200 {
            assert!(body.contains("sockray_uptime_seconds"), "{body}");
            break;
        }
        assert!(
            Instant::now() < until,
            "no scrape served after idle clients: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    t.stop_text();
}

/// A port in use: a clear error naming it, before anything is loaded.
#[test]
fn port_in_use() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = run_timeout(
        Command::new(sockray_bin()).args(["serve", "--listen", &format!("127.0.0.1:{port}")]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A budget of a few label sets and connections of many process names: the sets beyond it are
/// counted under role="other", so that every connection is counted once, none lost.
#[test]
fn series_budget_folds() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let port = pick_port();
    // 100 series: 3 label sets (one of them this server's own, from the scrapes)
    let t = serve(port, &["--max-series", "100"]);
    let ns = Netns::new();
    let names = ["sf-a", "sf-b", "sf-c", "sf-d", "sf-e", "sf-f"];
    let mut ports = Vec::new();
    for n in names {
        let mut s = Session::new("127.0.0.1", 0, "sf-srv", n);
        s.count = 2;
        s.hold_ms = 0;
        ports.push(s.run(&ns).port());
    }
    let m = scrape_until(port, |m| {
        val(m, "sockray_folded_events_total{table=\"series\"}") > 0.0
    });
    let dump = format!("{m:#?}");
    assert_eq!(
        val(&m, "sockray_label_sets{table=\"budget\"}"),
        3.0,
        "{dump}"
    );
    assert!(
        val(&m, "sockray_label_sets{table=\"series\"}") <= 3.0,
        "{dump}"
    );
    assert!(
        val(&m, "sockray_folded_events_total{table=\"series\"}") > 0.0,
        "{dump}"
    );
    // every client connection: under its own labels, or in `other`
    let own: f64 = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| {
            val(&m, &format!("sockray_tcp_connections_opened_total{{comm=\"{n}\",role=\"client\",port=\"{p}\"}}"))
        })
        .sum();
    let other = val(&m, "sockray_tcp_connections_opened_total{role=\"other\"}");
    assert!(own < 12.0, "the budget kept them all: {dump}");
    assert!(own + other >= 12.0, "connections missing: {dump}");
    t.stop_text();
}

/// A person watching a dashboard: one connection at a time, each one in the next scrape while serve
/// keeps running (the counters follow a trickle, not only a flood).
#[test]
fn counters_follow_a_trickle() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let port = pick_port();
    let t = serve(port, &[]);
    let ns = Netns::new();
    let mut expected_bytes = 0;
    // the sum over this client's series (each session listens on a port of its own)
    let sum = |m: &BTreeMap<String, f64>, metric: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(&format!("{metric}{{comm=\"st-cli\",role=\"client\"")))
            .map(|(_, v)| v)
            .sum()
    };
    for i in 1..=3u32 {
        let mut s = Session::new("127.0.0.1", 0, "st-srv", "st-cli");
        s.hold_ms = 0;
        let o = s.run(&ns);
        expected_bytes += o.clients[0].sent;
        let m = scrape_until(port, |m| {
            sum(m, "sockray_tcp_sessions_closed_total") >= i as f64
        });
        let dump = format!("{m:#?}");
        assert_eq!(
            sum(&m, "sockray_tcp_connections_opened_total"),
            i as f64,
            "{dump}"
        );
        assert_eq!(
            sum(&m, "sockray_tcp_sessions_closed_total"),
            i as f64,
            "{dump}"
        );
        assert_eq!(
            sum(&m, "sockray_tcp_session_sent_bytes_total"),
            expected_bytes as f64,
            "{dump}"
        );
        let p = o.port();
        let key = format!("{{comm=\"st-cli\",role=\"client\",port=\"{p}\"}}");
        assert_eq!(
            val(&m, &format!("sockray_tcp_connections_opened_total{key}")),
            1.0,
            "{dump}"
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    t.stop_text();
}
