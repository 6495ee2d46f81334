//! `sockray serve`: the fleet view. Loads its BPF programs once (bpf/serve.bpf.c: counters kept in
//! kernel maps, no record per event) and serves them on `/metrics` in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::skel::Skel as _;
use libbpf_rs::{MapCore, MapFlags, Object};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::cli::{self, Common, load_tool};
use crate::dropreason::Reasons;
use crate::filter::Filters;
use crate::format::comm;
use crate::http::{self, Request, Response};
use crate::{attach, hist, runtime};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/serve.skel.rs"));
}
use skel::{ServeSkelBuilder, types};

const ABOUT: &str = "Serve TCP metrics (connections, failures, connect latency, bytes, retransmits, drops) \
for Prometheus, counted in the kernel";

const EXAMPLES: &str = "examples:
    sockray serve                           # http://127.0.0.1:9879/metrics
    sockray serve --listen 0.0.0.0:9879     # for a Prometheus server on another machine
    sockray serve --max-series 50000        # a larger series budget

Prometheus scrape config:
    scrape_configs:
      - job_name: sockray
        static_configs:
          - targets: ['127.0.0.1:9879']

Labels: comm (the socket owner's name), role (client: it called connect(); server: accepted from
a listener), port (the service port: the remote one for a client, the local one for a server).
Label sets beyond the budget are counted under role=\"other\".";

/// The series one label set of `series` can make at most: opened, 4 failure kinds, closed, 2 byte
/// counters, 4 retransmit kinds, the histogram's 12 buckets, +Inf, sum and count; and one drop entry.
const SERIES_PER_SET: u32 = 28;

/// Serve TCP metrics for Prometheus
#[derive(Parser, Debug)]
#[command(name = "serve", about = ABOUT, after_help = EXAMPLES)]
struct Args {
    /// address and port to serve /metrics on (default: loopback only; names of processes and their
    /// ports are sensitive)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9879")]
    listen: SocketAddr,
    /// at most this many time series; label sets beyond it are counted under role="other"
    #[arg(long = "max-series", value_name = "N", default_value_t = 20000,
          value_parser = clap::value_parser!(u32).range(100..=10_000_000))]
    max_series: u32,
    /// Print the BPF C program this command loads, and exit
    #[arg(long)]
    ebpf: bool,
    /// Say which kernel hooks were chosen, and libbpf's messages, on stderr
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// The flags, as `-h` shows them.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// How long a scrape's body is served again to other scrapers (a flood of requests costs one map read
/// per period, not one per request).
const REUSE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Prometheus,
    OpenMetrics,
}

const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn format_of(accept: &str) -> Format {
    if accept.contains("application/openmetrics-text") {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.ebpf {
        return cli::print_ebpf("serve");
    }
    // the port first: an address in use is said before anything is loaded
    let listener = http::bind(a.listen)?;
    let sets = (a.max_series / SERIES_PER_SET).max(2);
    runtime::set_map_entries(
        format!("series={sets},drops={sets}"),
        "raise the budget with --max-series N",
    );
    let common = Common {
        json: false,
        ebpf: false,
        verbose: a.verbose,
    };
    let filters = Filters::default();
    let reasons = std::thread::spawn(Reasons::from_kernel);
    let skb_has_err =
        attach::tracepoint_has_field("tcp/tcp_retransmit_skb", "err").unwrap_or(false);
    let has_reason = attach::tracepoint_has_field("skb/kfree_skb", "reason").unwrap_or(false);
    let has_rx_sk = attach::tracepoint_has_field("skb/kfree_skb", "rx_sk").unwrap_or(false);

    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        ServeSkelBuilder,
        &mut storage,
        "serve",
        &common,
        &filters,
        |ro: &mut types::rodata| {
            ro.skb_has_err = skb_has_err as u8;
            ro.has_reason = has_reason as u8;
            ro.has_rx_sk = has_rx_sk as u8;
        }
    );
    let obj = skel.object();
    // the set everything beyond the budget is counted in: made before any event can need it
    let other = types::serve_key {
        role: ROLE_OTHER,
        ..Default::default()
    };
    map(obj, "series")?
        .update(
            &hist::pod_bytes(&other),
            &hist::pod_bytes(&types::serve_val::default()),
            MapFlags::NO_EXIST,
        )
        .context("creating the `other` series")?;
    // BPF run time per program: counted while this fd is open (none where the kernel refuses)
    // SAFETY: a plain syscall wrapper; the fd it returns is ours to close.
    let stats_fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME)
    };
    if stats_fd < 0 {
        cli::debug(format_args!(
            "serve: BPF run-time statistics are off (BPF_ENABLE_STATS: {})",
            std::io::Error::from_raw_os_error(-stats_fd)
        ));
    }
    let reasons = reasons.join().unwrap_or_default();

    let (tx, rx): (SyncSender<Scrape>, Receiver<Scrape>) = sync_channel(http::QUEUE);
    let handler = Arc::new(move |req: &Request| handle(req, &tx));
    http::spawn(listener, handler).context("starting the HTTP threads")?;
    cli::say(format_args!(
        "sockray serve: serving http://{}/metrics (Ctrl-C to end)",
        a.listen
    ));
    runtime::say_ready(a.verbose);

    let started = Instant::now();
    let mut cache: Vec<(Format, Instant, Arc<String>)> = Vec::new();
    while !runtime::stopped() {
        let Ok(job) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        cache.retain(|(_, at, _)| at.elapsed() < REUSE);
        let body = match cache.iter().find(|(f, _, _)| *f == job.format) {
            Some((_, _, b)) => Arc::clone(b),
            None => {
                let snap = Snapshot::read(obj, &reasons, sets, started.elapsed())?;
                let b = Arc::new(snap.encode(job.format)?);
                cache.push((job.format, Instant::now(), Arc::clone(&b)));
                b
            }
        };
        let _ = job.reply.send(body);
    }
    if stats_fd >= 0 {
        // SAFETY: our own fd from bpf_enable_stats
        unsafe { libc::close(stats_fd) };
    }
    Ok(())
}

/// A request for the metrics, answered by the main thread (which holds the BPF object).
struct Scrape {
    format: Format,
    reply: SyncSender<Arc<String>>,
}

fn handle(req: &Request, tx: &SyncSender<Scrape>) -> Response {
    match req.path.as_str() {
        "/metrics" => {
            let format = format_of(&req.accept);
            let (reply, answer) = sync_channel(1);
            if tx.try_send(Scrape { format, reply }).is_err() {
                return Response::text(503, "busy\n");
            }
            match answer.recv_timeout(Duration::from_secs(10)) {
                Ok(body) => Response {
                    status: 200,
                    content_type: match format {
                        Format::Prometheus => PROMETHEUS_TYPE,
                        Format::OpenMetrics => OPENMETRICS_TYPE,
                    },
                    body: body.as_bytes().to_vec(),
                },
                Err(_) => Response::text(503, "the metrics were not read in time\n"),
            }
        }
        "/" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: INDEX.as_bytes().to_vec(),
        },
        _ => Response::text(404, "not found: /metrics has the metrics\n"),
    }
}

const INDEX: &str = "<html><head><title>sockray</title></head><body>\n\
<h1>sockray serve</h1>\n\
<p><a href=\"/metrics\">/metrics</a>: TCP connections opened and failed, connect latency, bytes of \
ended sessions, retransmits and drops, by owning process, role and service port; counted in the \
kernel. Prometheus text format, or OpenMetrics when asked for.</p>\n</body></html>\n";

fn map<'a>(obj: &'a Object, name: &str) -> Result<libbpf_rs::Map<'a>> {
    obj.maps()
        .find(|m| m.name() == name)
        .with_context(|| format!("no map {name}"))
}

const ROLE_CLIENT: u8 = 0;
const ROLE_SERVER: u8 = 1;
const ROLE_OTHER: u8 = 2;
const FAIL_KINDS: [&str; 4] = ["refused", "timed_out", "unreachable", "other"];
const RETRANS_KINDS: [&str; 4] = ["timeout", "fast", "other", "synack"];
const NO_REASON: u32 = 0xffff_ffff;
const DROP_REASONS: u32 = 512;
/// Connect latency buckets exported: the upper bounds 2^k microseconds of the kernel's log2 slots
/// (slot i: [2^i, 2^(i+1)) us), every other one from 16 us to 67 s; +Inf is the count.
const LAT_BOUNDS_LOG2: [u32; 12] = [4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26];

/// The labels of a label set: comm, role, port (the `other` set: role="other" alone).
fn set_labels(comm_raw: &[i8], role: u8, port: u16) -> Vec<(&'static str, String)> {
    match role {
        ROLE_OTHER => vec![("role", "other".to_string())],
        _ => vec![
            ("comm", comm_label(comm_raw)),
            (
                "role",
                if role == ROLE_CLIENT {
                    "client"
                } else {
                    "server"
                }
                .to_string(),
            ),
            ("port", port.to_string()),
        ],
    }
}

/// The owner's name; "?" when it is not known (as the tools print it).
fn comm_label(raw: &[i8]) -> String {
    let s = comm(raw);
    if s.is_empty() { "?".to_string() } else { s }
}

/// What one scrape read from the kernel.
#[derive(Debug, Default)]
struct Snapshot {
    series: Vec<(types::serve_key, types::serve_val)>,
    drops: Vec<(Vec<(&'static str, String)>, u64)>,
    folded: [u64; 2],
    sets: u32,
    lost: runtime::Lost,
    progs: Vec<(String, u64, u64, u64)>,
    uptime: Duration,
}

impl Snapshot {
    fn read(obj: &Object, reasons: &Reasons, sets: u32, uptime: Duration) -> Result<Snapshot> {
        let mut s = Snapshot {
            sets,
            uptime,
            ..Default::default()
        };
        let series = map(obj, "series")?;
        for key in series.keys() {
            let (Some(k), Ok(Some(v))) = (
                runtime::read_event::<types::serve_key>(&key),
                series.lookup(&key, MapFlags::ANY),
            ) else {
                continue;
            };
            if let Some(v) = runtime::read_event::<types::serve_val>(&v) {
                s.series.push((k, v));
            }
        }
        let reason_name = |r: u32| -> String {
            if r == NO_REASON {
                "unknown".to_string()
            } else {
                reasons
                    .name(r)
                    .map(str::to_string)
                    .unwrap_or_else(|| r.to_string())
            }
        };
        let mut drops: BTreeMap<Vec<(&'static str, String)>, u64> = BTreeMap::new();
        for (k, n) in runtime::map_counts::<types::serve_drop_key>(&map(obj, "drops")?)? {
            let mut l = if k.port == 0 && k.comm[0] == 0 {
                vec![("role", "none".to_string())] // no socket
            } else {
                set_labels(&k.comm, k.role, k.port)
            };
            l.push(("reason", reason_name(k.reason)));
            *drops.entry(l).or_default() += n;
        }
        let other = map(obj, "other_drops")?;
        for idx in 0..=DROP_REASONS {
            if let Ok(Some(v)) = other.lookup(&idx.to_ne_bytes(), MapFlags::ANY)
                && let Some(n) = runtime::read_event::<u64>(&v)
                && n > 0
            {
                let r = if idx == DROP_REASONS { NO_REASON } else { idx };
                let l = vec![("role", "other".to_string()), ("reason", reason_name(r))];
                *drops.entry(l).or_default() += n;
            }
        }
        s.drops = drops.into_iter().collect();
        let stats = map(obj, "serve_stats")?;
        for (i, f) in s.folded.iter_mut().enumerate() {
            if let Ok(Some(v)) = stats.lookup(&(i as u32).to_ne_bytes(), MapFlags::ANY) {
                *f = runtime::read_event::<u64>(&v).unwrap_or(0);
            }
        }
        s.lost = runtime::lost_events(obj);
        use std::os::fd::AsFd;
        for p in obj.progs().filter(|p| p.autoload()) {
            if let Some(i) = runtime::prog_info(p.as_fd()) {
                s.progs.push((
                    p.name().to_string_lossy().into_owned(),
                    i.run_cnt,
                    i.run_time_ns,
                    i.recursion_misses,
                ));
            }
        }
        Ok(s)
    }

    fn encode(self, format: Format) -> Result<String> {
        let mut registry = Registry::with_prefix("sockray");
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            }
        }
        .map_err(|_| anyhow::anyhow!("encoding the metrics failed"))?;
        Ok(out)
    }
}

/// A counter family from (labels, value) pairs (the callers leave out what is zero where that is noise).
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> std::fmt::Result {
    let rows: Vec<_> = rows.into_iter().collect();
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in &rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let labels = |k: &types::serve_key| set_labels(&k.comm, k.role, k.port);
        let sets = &self.series;
        counters(
            &mut enc,
            "tcp_connections_opened",
            "TCP connections established: by connect() (role client) or accepted from a listener \
             (role server), by owning process and service port",
            None,
            sets.iter()
                .filter(|(_, v)| v.opened > 0)
                .map(|(k, v)| (labels(k), v.opened)),
        )?;
        counters(
            &mut enc,
            "tcp_connect_failures",
            "connect() attempts that ended without a connection, by reason (refused: reset by the \
             peer; timed_out: no answer; unreachable: ICMP error; other: given up)",
            None,
            sets.iter().flat_map(|(k, v)| {
                FAIL_KINDS
                    .iter()
                    .zip(v.failed)
                    .filter(|(_, n)| *n > 0)
                    .map(move |(why, n)| {
                        let mut l = labels(k);
                        l.push(("reason", why.to_string()));
                        (l, n)
                    })
            }),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "tcp_connect_duration",
                "time from a connect()'s SYN to the connection's establishment",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (k, v) in sets.iter().filter(|(k, _)| k.role != ROLE_SERVER) {
                let count: u64 = v.lat_slots.iter().sum();
                if count == 0 {
                    continue;
                }
                // each bucket's own count (the encoder makes them cumulative): slots lo..b
                let mut buckets = Vec::new();
                let mut lo = 0;
                for b in LAT_BOUNDS_LOG2 {
                    let b = b as usize;
                    buckets.push(((1u64 << b) as f64 / 1e6, v.lat_slots[lo..b].iter().sum()));
                    lo = b;
                }
                buckets.push((f64::INFINITY, v.lat_slots[lo..].iter().sum()));
                let l = labels(k);
                m.encode_family(&l)?
                    .encode_histogram::<Vec<(&str, String)>>(
                        v.lat_sum_ns as f64 / 1e9,
                        count,
                        &buckets,
                        None,
                    )?;
            }
        }
        counters(
            &mut enc,
            "tcp_sessions_closed",
            "TCP sessions that ended (whose bytes the session byte counters count)",
            None,
            sets.iter()
                .filter(|(_, v)| v.closed > 0)
                .map(|(k, v)| (labels(k), v.closed)),
        )?;
        counters(
            &mut enc,
            "tcp_session_sent",
            "payload bytes acknowledged by the peer, counted when the session ends",
            Some(&Unit::Bytes),
            sets.iter()
                .filter(|(_, v)| v.closed > 0)
                .map(|(k, v)| (labels(k), v.tx_bytes)),
        )?;
        counters(
            &mut enc,
            "tcp_session_received",
            "payload bytes received, counted when the session ends",
            Some(&Unit::Bytes),
            sets.iter()
                .filter(|(_, v)| v.closed > 0)
                .map(|(k, v)| (labels(k), v.rx_bytes)),
        )?;
        counters(
            &mut enc,
            "tcp_retransmits",
            "TCP segments sent again, by kind (timeout: the retransmit timer; fast: duplicate ACKs or \
             SACK; synack: a listener's SYN-ACK; other)",
            None,
            sets.iter().flat_map(|(k, v)| {
                RETRANS_KINDS
                    .iter()
                    .zip(v.retrans)
                    .filter(|(_, n)| *n > 0)
                    .map(move |(kind, n)| {
                        let mut l = labels(k);
                        l.push(("kind", kind.to_string()));
                        (l, n)
                    })
            }),
        )?;
        counters(
            &mut enc,
            "tcp_drops",
            "TCP packets the kernel dropped, by reason (the kernel's enum skb_drop_reason); role \
             none: no socket (e.g. a segment for a closed port)",
            None,
            self.drops.iter().cloned(),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "label_sets",
                "label sets kept in the kernel, and the budget (from --max-series)",
                None,
                MetricType::Gauge,
            )?;
            let kept = sets.iter().filter(|(k, _)| k.role != ROLE_OTHER).count() as i64;
            let dropsets = self.drops.len() as i64;
            for (table, v) in [
                ("series", kept),
                ("drops", dropsets),
                ("budget", self.sets as i64),
            ] {
                ConstGauge::new(v).encode(m.encode_family(&[("table", table)])?)?;
            }
        }
        counters(
            &mut enc,
            "folded_events",
            "events of label sets beyond the budget, counted under role=\"other\"",
            None,
            [
                (vec![("table", "series".to_string())], self.folded[0]),
                (vec![("table", "drops".to_string())], self.folded[1]),
            ],
        )?;
        counters(
            &mut enc,
            "lost_events",
            "events not counted: skipped (the kernel did not run a program: another BPF program was \
             running on that CPU), capacity (a table was full)",
            None,
            [
                (vec![("cause", "skipped".to_string())], self.lost.skipped),
                (vec![("cause", "capacity".to_string())], self.lost.capacity),
            ],
        )?;
        counters(
            &mut enc,
            "bpf_program_runs",
            "runs of sockray's BPF programs (while the kernel's BPF statistics are on)",
            None,
            self.progs
                .iter()
                .map(|(p, n, _, _)| (vec![("program", p.clone())], *n)),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "bpf_program_run",
                "time spent in sockray's BPF programs",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for (p, _, ns, _) in &self.progs {
                ConstCounter::new(*ns as f64 / 1e9)
                    .encode(m.encode_family(&[("program", p.as_str())])?)?;
            }
        }
        {
            let m = enc.encode_descriptor(
                "uptime",
                "time since sockray serve started",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(self.uptime.as_secs_f64()).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut k = types::serve_key {
            port: 80,
            role: ROLE_CLIENT,
            ..Default::default()
        };
        for (d, c) in k.comm.iter_mut().zip(b"curl") {
            *d = *c as i8;
        }
        let mut v = types::serve_val {
            opened: 3,
            closed: 2,
            tx_bytes: 100,
            rx_bytes: 2000,
            lat_sum_ns: 3_000_000,
            ..Default::default()
        };
        v.failed[0] = 1;
        v.lat_slots[9] = 3; // 512..1023 us
        v.retrans[1] = 5;
        Snapshot {
            series: vec![(k, v)],
            drops: vec![(
                vec![
                    ("role", "none".to_string()),
                    ("reason", "NO_SOCKET".to_string()),
                ],
                7,
            )],
            sets: 714,
            ..Default::default()
        }
    }

    #[test]
    fn prometheus_text() {
        let t = snapshot().encode(Format::Prometheus).unwrap();
        for want in [
            "sockray_tcp_connections_opened_total{comm=\"curl\",role=\"client\",port=\"80\"} 3",
            "sockray_tcp_connect_failures_total{comm=\"curl\",role=\"client\",port=\"80\",reason=\"refused\"} 1",
            "# TYPE sockray_tcp_connect_duration_seconds histogram",
            "sockray_tcp_connect_duration_seconds_bucket{comm=\"curl\",role=\"client\",port=\"80\",le=\"0.000256\"} 0",
            "sockray_tcp_connect_duration_seconds_bucket{comm=\"curl\",role=\"client\",port=\"80\",le=\"0.001024\"} 3",
            "sockray_tcp_connect_duration_seconds_bucket{comm=\"curl\",role=\"client\",port=\"80\",le=\"+Inf\"} 3",
            "sockray_tcp_connect_duration_seconds_sum{comm=\"curl\",role=\"client\",port=\"80\"} 0.003",
            "sockray_tcp_session_sent_bytes_total{comm=\"curl\",role=\"client\",port=\"80\"} 100",
            "sockray_tcp_retransmits_total{comm=\"curl\",role=\"client\",port=\"80\",kind=\"fast\"} 5",
            "sockray_tcp_drops_total{role=\"none\",reason=\"NO_SOCKET\"} 7",
            "sockray_label_sets{table=\"budget\"} 714",
        ] {
            assert!(t.contains(want), "{want} not in:\n{t}");
        }
        assert!(!t.contains("# EOF"), "{t}");
    }

    #[test]
    fn openmetrics_text() {
        let t = snapshot().encode(Format::OpenMetrics).unwrap();
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert!(
            t.contains("# TYPE sockray_tcp_connections_opened counter"),
            "{t}"
        );
        assert!(
            t.contains("# UNIT sockray_tcp_connect_duration_seconds seconds"),
            "{t}"
        );
    }

    #[test]
    fn accept_header() {
        assert_eq!(
            format_of("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            Format::OpenMetrics
        );
        assert_eq!(format_of("text/plain"), Format::Prometheus);
        assert_eq!(format_of(""), Format::Prometheus);
    }
}
