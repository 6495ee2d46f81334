//! netqtop: packets, bytes and packet sizes per TX and RX queue of one network interface, every
//! interval (BCC's netqtop: `-n NIC -i INTERVAL -t`): average size, BCC's five size buckets, with `-t`
//! bytes and packets per second. Redrawn in place on a terminal, as tcptop.
//! Hooks: net:net_dev_start_xmit and net:netif_receive_skb (tp_btf, else raw_tp). The interface filter
//! (its ifindex and network namespace) runs in the kernel; counting is in a per-CPU array, per queue,
//! read every interval (differences in user space).

use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, load_tool};
use crate::filter::Filters;
use crate::format::wall_now_ns;
use crate::output::{Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/netqtop.skel.rs"));
}
use skel::{NetqtopSkelBuilder, types};

/// bpf/netqtop.h
const BUCKETS: usize = 6;
/// Queue indices given a slot of their own per direction, at most (the kernel's own limit for veth and
/// the like is 4096); a packet of a higher index is counted in one more slot, shown as `>=N`.
const MAX_QUEUES: u32 = 4096;

const EXAMPLES: &str = "examples:
    netqtop -n eth0              # per-queue packet sizes of eth0, every second
    netqtop -n eth0 -i 5         # every 5 seconds
    netqtop -n eth0 -t           # with BPS and PPS (bytes, packets per second) per queue
    netqtop -n eth0 -i 1 10      # 1 second summaries, 10 times, then exit
    netqtop -n eth0 --json       # one JSON object per queue, direction and interval
    ip netns exec NS netqtop -n veth0   # an interface of another network namespace

TX counts packets as the driver gets them (net:net_dev_start_xmit, on the queue the stack
chose), RX as they enter the stack (net:netif_receive_skb, on the queue the driver recorded;
0 when it records none). Sizes are frame lengths with the link-layer header, as veth and most
drivers count them for `ip -s link` (BCC's RX sizes leave the header out); a GSO packet counts
once, at its full size. Only the interface's packets are counted, filtered in the kernel by its
index and network namespace (netqtop's own).";

/// Per-queue packet statistics of one network interface.
#[derive(Parser, Debug)]
#[command(name = "netqtop", after_help = EXAMPLES)]
struct Args {
    /// the network interface
    #[arg(
        short = 'n',
        long = "name",
        value_name = "NAME",
        required_unless_present = "ebpf"
    )]
    name: Option<String>,
    /// output interval, in seconds
    #[arg(
        short = 'i',
        long = "interval",
        default_value_t = 1.0,
        value_name = "INTERVAL"
    )]
    interval: f64,
    /// show throughput: BPS (bytes per second) and PPS (packets per second)
    #[arg(short = 't', long = "throughput")]
    throughput: bool,
    /// number of outputs (sockray; default: until Ctrl-C)
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    common: Common,
}

/// One queue's counters (cumulative, or an interval's).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Counts {
    packets: u64,
    bytes: u64,
    buckets: [u64; BUCKETS],
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
    }

    fn since(&self, prev: &Counts) -> Counts {
        let mut d = Counts {
            packets: self.packets.saturating_sub(prev.packets),
            bytes: self.bytes.saturating_sub(prev.bytes),
            buckets: [0; BUCKETS],
        };
        for (i, b) in d.buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(prev.buckets[i]);
        }
        d
    }

    /// BCC's bucket of a packet of `len` bytes (the kernel's, in user space: for the tests).
    #[cfg(test)]
    fn bucket(len: u64) -> usize {
        [64u64, 512, 2048, 16384, 65536]
            .iter()
            .position(|&lim| len < lim)
            .unwrap_or(BUCKETS - 1)
    }
}

/// The interface: its index and network namespace, its queues.
#[derive(Debug)]
struct Nic {
    name: String,
    ifindex: u32,
    netns: u64,
    tx: u32,
    rx: u32,
}

/// The queues of `name` in sysfs (`tx-N`, `rx-N`), when sysfs shows this network namespace's devices
/// (its `ifindex` file says the same index).
fn sysfs_queues(name: &str, ifindex: u32) -> Option<(u32, u32)> {
    let base = std::path::Path::new("/sys/class/net").join(name);
    let idx: u32 = std::fs::read_to_string(base.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if idx != ifindex {
        return None;
    }
    let (mut tx, mut rx) = (0, 0);
    for e in std::fs::read_dir(base.join("queues")).ok()?.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("tx-") {
            tx += 1;
        } else if n.starts_with("rx-") {
            rx += 1;
        }
    }
    Some((tx, rx))
}

fn find_nic(name: &str) -> Result<Nic> {
    if name.is_empty() || name.len() > 15 || name.contains('/') {
        bail!("{name:?} is no network interface name (at most 15 bytes, no '/')");
    }
    let c = CString::new(name).context("interface name")?;
    // SAFETY: a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!(
            "network interface {name:?} does not exist in this network namespace (`ip link` lists them; \
             for one in another namespace: ip netns exec NS sockray netqtop -n {name})"
        );
    }
    let netns = std::fs::metadata("/proc/self/ns/net")
        .context("/proc/self/ns/net")?
        .ino();
    // a sysfs mounted for another namespace (nsenter --net) shows no queues of ours: one each, and
    // packets of higher queues are counted all the same (see MAX_QUEUES)
    let (tx, rx) = sysfs_queues(name, ifindex).unwrap_or((1, 1));
    Ok(Nic {
        name: name.to_string(),
        ifindex,
        netns,
        tx: tx.max(1),
        rx: rx.max(1),
    })
}

/// The slots per direction in the kernel: the interface's queues, and one for higher indices.
fn slots(nic: &Nic) -> u32 {
    nic.tx.max(nic.rx).min(MAX_QUEUES)
}

/// Every slot's counters summed over the CPUs, indexed as the kernel's array.
fn read_slots(map: &impl libbpf_rs::MapCore) -> Result<Vec<Counts>> {
    let mut entries = runtime::map_percpu_entries::<u32, types::netqtop_queue>(map)?;
    entries.sort_by_key(|(k, _)| *k);
    Ok(entries
        .into_iter()
        .map(|(_, cpus)| {
            let mut c = Counts::default();
            for q in &cpus {
                c.add(&Counts {
                    packets: q.packets,
                    bytes: q.bytes,
                    buckets: q.buckets,
                });
            }
            c
        })
        .collect())
}

/// One row of a direction's table: a queue (or `>=N`, the indices beyond the kernel's slots).
#[derive(Debug, Clone)]
struct Row {
    queue: u32,
    beyond: bool,
    c: Counts,
}

/// An interval's rows of one direction: queues 0..shown-1 always (as BCC), others that had packets.
fn dir_rows(delta: &[Counts], dir: usize, nq: u32, shown: u32) -> Vec<Row> {
    let per = nq as usize + 1;
    let part = delta.get(dir * per..(dir + 1) * per).unwrap_or(&[]);
    let mut rows = Vec::new();
    for (q, c) in part.iter().enumerate() {
        let beyond = q == nq as usize;
        if (q as u32) < shown || c.packets > 0 {
            rows.push(Row {
                queue: q as u32,
                beyond,
                c: *c,
            });
        }
    }
    rows
}

/// BCC's to_str(): above 1000000 in MiB with 2 decimals and `M`, above 1000 in KiB and `K`, floats
/// rounded to 2 decimals (printed as Python prints them: `0.0`, `62.5`), integers as they are.
fn to_str(num: f64, float: bool) -> String {
    let py = |x: f64| {
        let r = (x * 100.0).round() / 100.0;
        if r.fract() == 0.0 {
            format!("{r:.1}")
        } else {
            format!("{r}")
        }
    };
    if num > 1_000_000.0 {
        format!("{}M", py(num / (1024.0 * 1024.0)))
    } else if num > 1000.0 {
        format!("{}K", py(num / 1024.0))
    } else if float {
        py(num)
    } else {
        format!("{}", num as u64)
    }
}

/// BCC's average: a float when there were packets, the integer 0 when none.
fn avg_str(c: &Counts) -> String {
    if c.packets == 0 {
        "0".to_string()
    } else {
        to_str(c.bytes as f64 / c.packets as f64, true)
    }
}

const HEADERS: [&str; 7] = [
    "QueueID",
    "avg_size",
    "[0, 64)",
    "[64, 512)",
    "[512, 2K)",
    "[2K, 16K)",
    "[16K, 64K)",
];

/// One direction's table, BCC's `%-11s` columns (trailing blanks trimmed). A `[64K, ...)` column
/// (packets BCC counts in no bucket) comes when the interval had such packets.
fn table_text(rows: &[Row], throughput: bool, secs: f64) -> String {
    let big = rows.iter().any(|r| r.c.buckets[5] > 0);
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut h: Vec<String> = HEADERS.iter().map(|s| s.to_string()).collect();
    if big {
        h.push("[64K, ...)".into());
    }
    if throughput {
        h.push("BPS".into());
        h.push("PPS".into());
    }
    cells.push(h);
    let line = |label: String, c: &Counts| {
        let mut l = vec![label, avg_str(c)];
        let n = if big { BUCKETS } else { BUCKETS - 1 };
        l.extend(c.buckets[..n].iter().map(|&b| to_str(b as f64, false)));
        if throughput {
            l.push(to_str(c.bytes as f64 / secs, true));
            l.push(to_str(c.packets as f64 / secs, true));
        }
        l
    };
    let mut total = Counts::default();
    for r in rows {
        total.add(&r.c);
        let label = if r.beyond {
            format!(">={}", r.queue)
        } else {
            r.queue.to_string()
        };
        cells.push(line(label, &r.c));
    }
    cells.push(line("Total".into(), &total));
    let mut t = String::new();
    for l in cells {
        let mut s = String::from(" ");
        for c in l {
            let _ = write!(s, "{c:<11}");
        }
        t.push_str(s.trim_end());
        t.push('\n');
    }
    t
}

/// The local time as Python's asctime() (`Sun Nov 22 01:52:37 2026`).
fn asctime() -> String {
    let mut t: libc::time_t = 0;
    let mut tm = MaybeUninit::<libc::tm>::zeroed();
    let mut buf = [0u8; 64];
    // SAFETY: time, localtime_r and strftime with valid pointers and the buffer's length.
    let n = unsafe {
        libc::time(&mut t);
        libc::localtime_r(&t, tm.as_mut_ptr());
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%a %b %e %H:%M:%S %Y".as_ptr(),
            tm.as_ptr(),
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The whole screen of one interval: date, TX table, RX table, BCC's dashes.
fn screen(tx: &[Row], rx: &[Row], throughput: bool, secs: f64, clear: bool) -> String {
    let mut s = String::new();
    if clear {
        s.push_str("\x1b[H\x1b[2J");
    }
    let _ = writeln!(s, "{}", asctime());
    s.push_str("TX\n");
    s.push_str(&table_text(tx, throughput, secs));
    s.push_str("\nRX\n");
    s.push_str(&table_text(rx, throughput, secs));
    s.push_str(&"-".repeat(if throughput { 95 } else { 77 }));
    s.push('\n');
    s
}

const BUCKET_FIELDS: [&str; BUCKETS] = [
    "size_0_64",
    "size_64_512",
    "size_512_2k",
    "size_2k_16k",
    "size_16k_64k",
    "size_64k_up",
];

fn json_fields(nic: &Nic, dir: &str, r: &Row, tick: u64, secs: f64, time_ns: u64) -> Fields {
    let mut f: Fields = vec![
        ("time_ns", Value::U(time_ns)),
        ("tick", Value::U(tick)),
        ("nic", Value::S(nic.name.clone())),
        ("ifindex", Value::U(nic.ifindex as u64)),
        ("dir", Value::S(dir.to_string())),
        ("queue", Value::U(r.queue as u64)),
        ("beyond", Value::Json(r.beyond.to_string())),
        ("packets", Value::U(r.c.packets)),
        ("bytes", Value::U(r.c.bytes)),
        ("avg_size", Value::U(r.c.bytes / r.c.packets.max(1))),
    ];
    for (name, n) in BUCKET_FIELDS.iter().zip(r.c.buckets) {
        f.push((name, Value::U(n)));
    }
    f.push(("secs", Value::F(secs, 3)));
    f.push(("bps", Value::F(r.c.bytes as f64 / secs, 1)));
    f.push(("pps", Value::F(r.c.packets as f64 / secs, 1)));
    f
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    if a.common.ebpf {
        return cli::print_ebpf("netqtop");
    }
    if !(a.interval.is_finite() && a.interval > 0.0) {
        bail!("print interval must be a positive number of seconds");
    }
    let nic = find_nic(a.name.as_deref().unwrap_or_default())?;
    let nq = slots(&nic);
    let mode = a.common.mode(false);
    runtime::preflight("netqtop")?;
    runtime::without_owners();
    runtime::set_map_entries(format!("queues={}", 2 * (nq + 1)), "");
    let filters = Filters::default();
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        NetqtopSkelBuilder,
        &mut storage,
        "netqtop",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.filter_ifindex = nic.ifindex;
            ro.filter_netns = nic.netns as u32;
            ro.nqueues = nq;
        }
    );
    cli::debug(format_args!(
        "netqtop: {} (ifindex {}, netns {}): {} TX and {} RX queues, {nq} slots a direction in a per-CPU \
         array (higher queue indices counted together)",
        nic.name, nic.ifindex, nic.netns, nic.tx, nic.rx
    ));
    let obj = skel.object();
    let map = &skel.maps.queues;
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    let clear = mode != Mode::Json && crate::output::stdout_is_tty();
    // the counters start at zero (a new map): everything after the attach is in the first interval,
    // packets between "ready" and the first read too
    let mut printed: Vec<Counts> = Vec::new();
    let mut since = Instant::now();
    runtime::say_ready(a.common.verbose);
    let take = |printed: &mut Vec<Counts>, since: &mut Instant| -> Result<(Vec<Counts>, f64)> {
        let now = read_slots(map)?;
        let secs = since.elapsed().as_secs_f64().max(1e-3);
        *since = Instant::now();
        let delta = now
            .iter()
            .enumerate()
            .map(|(i, c)| c.since(printed.get(i).unwrap_or(&Counts::default())))
            .collect();
        *printed = now;
        Ok((delta, secs))
    };
    let print = |printer: &mut Printer, delta: &[Counts], secs: f64, tick: u64| -> Result<()> {
        let tx = dir_rows(delta, 0, nq, nic.tx);
        let rx = dir_rows(delta, 1, nq, nic.rx);
        if mode == Mode::Json {
            let now = wall_now_ns();
            for (dir, rows) in [("tx", &tx), ("rx", &rx)] {
                for r in rows {
                    printer.json_record(&json_fields(&nic, dir, r, tick, secs, now))?;
                }
            }
            printer.flush()?;
        } else {
            crate::output::print_block(&screen(&tx, &rx, a.throughput, secs, clear))?;
        }
        Ok(())
    };
    let every = Some(Duration::from_secs_f64(a.interval));
    runtime::interval_loop(
        obj,
        |_| Ok(()),
        every,
        a.count,
        None,
        |n, last| {
            // at Ctrl-C, SIGTERM, SIGHUP: with --json, what came since the last interval, so that the
            // intervals add up to everything counted (the screen is not redrawn for a part of one)
            if last && mode != Mode::Json {
                return Ok(());
            }
            let (delta, secs) = take(&mut printed, &mut since)?;
            print(&mut printer, &delta, secs, n)
        },
    )?;
    runtime::report_lost(&mut printer, "netqtop", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(sizes: &[u64]) -> Counts {
        let mut c = Counts::default();
        for &s in sizes {
            c.packets += 1;
            c.bytes += s;
            c.buckets[Counts::bucket(s)] += 1;
        }
        c
    }

    #[test]
    fn buckets_like_bcc() {
        assert_eq!(Counts::bucket(0), 0);
        assert_eq!(Counts::bucket(63), 0);
        assert_eq!(Counts::bucket(64), 1);
        assert_eq!(Counts::bucket(511), 1);
        assert_eq!(Counts::bucket(512), 2);
        assert_eq!(Counts::bucket(2047), 2);
        assert_eq!(Counts::bucket(2048), 3);
        assert_eq!(Counts::bucket(16383), 3);
        assert_eq!(Counts::bucket(16384), 4);
        assert_eq!(Counts::bucket(65535), 4);
        assert_eq!(Counts::bucket(65536), 5);
    }

    #[test]
    fn numbers_as_bcc_prints_them() {
        assert_eq!(to_str(0.0, false), "0");
        assert_eq!(to_str(999.0, false), "999");
        assert_eq!(to_str(1000.0, false), "1000");
        assert_eq!(to_str(1001.0, false), "0.98K");
        assert_eq!(to_str(2048.0, false), "2.0K");
        assert_eq!(to_str(1_500_000.0, false), "1.43M");
        assert_eq!(to_str(0.0, true), "0.0");
        assert_eq!(to_str(62.0, true), "62.0");
        assert_eq!(to_str(62.666, true), "62.67");
        assert_eq!(avg_str(&Counts::default()), "0");
        assert_eq!(avg_str(&counts(&[62, 63])), "62.5");
    }

    #[test]
    fn table_like_bcc() {
        let rows = vec![Row {
            queue: 0,
            beyond: false,
            c: Counts::default(),
        }];
        assert_eq!(
            table_text(&rows, false, 1.0),
            " QueueID    avg_size   [0, 64)    [64, 512)  [512, 2K)  [2K, 16K)  [16K, 64K)\n \
             0          0          0          0          0          0          0\n \
             Total      0          0          0          0          0          0\n"
        );
        let rows = vec![
            Row {
                queue: 0,
                beyond: false,
                c: counts(&[62, 1042]),
            },
            Row {
                queue: 1,
                beyond: false,
                c: counts(&[100_000]),
            },
        ];
        let t = table_text(&rows, true, 2.0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            " QueueID    avg_size   [0, 64)    [64, 512)  [512, 2K)  [2K, 16K)  [16K, 64K) [64K, ...) BPS        PPS"
        );
        assert_eq!(
            lines[1],
            " 0          552.0      1          0          1          0          0          0          552.0      1.0"
        );
        assert_eq!(
            lines[3],
            " Total      32.91K     1          0          1          0          0          1          49.37K     1.5"
        );
    }

    #[test]
    fn intervals_are_differences_and_rows_keep_bcc_queues() {
        let a = counts(&[62, 62]);
        let b = counts(&[62, 62, 1042]);
        assert_eq!(b.since(&a), counts(&[1042]));
        // nq 2: slots tx0 tx1 tx>=2 rx0 rx1 rx>=2
        let mut delta = vec![Counts::default(); 6];
        delta[2] = counts(&[62]);
        delta[4] = counts(&[100]);
        let tx = dir_rows(&delta, 0, 2, 1);
        assert_eq!(
            tx.iter().map(|r| (r.queue, r.beyond)).collect::<Vec<_>>(),
            vec![(0, false), (2, true)]
        );
        assert!(table_text(&tx, false, 1.0).contains("\n >=2        62.0"));
        let rx = dir_rows(&delta, 1, 2, 1);
        assert_eq!(
            rx.iter().map(|r| r.queue).collect::<Vec<_>>(),
            vec![0, 1],
            "queue 1 had packets"
        );
    }
}
