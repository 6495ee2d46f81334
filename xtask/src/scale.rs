//! `cargo xtask bench --scale`: a server's worth of sockets. `sockray-testgen hold` opens N loopback
//! connections (2N sockets) from several client processes to pre-forked servers in a fresh network
//! namespace, holds them all, then closes them at a given rate; once without a tracer, once with
//! `sockray tcplife --json --max-sockets 2N` writing to a file, as a person would run it on such a
//! server. Reported: the time to open and to close them with and without the tool, the session ends
//! it printed against the 2N there were, what it said it lost (by cause), its peak RSS, and the
//! kernel memory of its BPF maps (`memlock` of each map, once) with every socket open.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{Netns, peak_rss_kib, stop_process};

/// What `--scale` was asked for.
pub struct ScaleOptions {
    /// connections held at once (twice as many sockets)
    pub conns: u32,
    /// connections closed per second (0: all at once)
    pub close_rate: u32,
}

impl Default for ScaleOptions {
    fn default() -> ScaleOptions {
        ScaleOptions {
            conns: 500_000,
            close_rate: 25_000,
        }
    }
}

/// One run: without a tracer, or with tcplife.
struct Run {
    hold_s: f64,
    close_s: f64,
    /// the traced run's figures
    traced: Option<Traced>,
}

struct Traced {
    rows: u64,
    lost: String,
    peak_rss_kib: u64,
    map_kib: u64,
}

pub fn run(sockray: &Path, testgen: &Path, opts: &ScaleOptions) -> Result<(), String> {
    println!(
        "sockray bench --scale: {} connections ({} sockets) held, then closed at {}",
        opts.conns,
        2 * u64::from(opts.conns),
        if opts.close_rate == 0 {
            "once".to_string()
        } else {
            format!("{} a second", opts.close_rate)
        }
    );
    let plain = one_run(None, testgen, opts)?;
    let traced = one_run(Some(sockray), testgen, opts)?;
    let t = traced.traced.as_ref().ok_or("no traced figures")?;
    println!();
    println!(
        "{:<16} {:>8} {:>9} {:>12} {:>10} {:>10}  LOST",
        "TRACER", "HOLD(s)", "CLOSE(s)", "ROWS", "RSS(MiB)", "MAPS(MiB)"
    );
    println!(
        "{:<16} {:>8.1} {:>9.1} {:>12} {:>10} {:>10}  -",
        "none", plain.hold_s, plain.close_s, "-", "-", "-"
    );
    println!(
        "{:<16} {:>8.1} {:>9.1} {:>12} {:>10.1} {:>10.1}  {}",
        "sockray tcplife",
        traced.hold_s,
        traced.close_s,
        format!("{}/{}", t.rows, 2 * u64::from(opts.conns)),
        t.peak_rss_kib as f64 / 1024.0,
        t.map_kib as f64 / 1024.0,
        t.lost
    );
    println!(
        "\nROWS: session ends printed (of the sockets there were); LOST: the tool's own lost record; \
         MAPS: its BPF maps' kernel memory with every socket open"
    );
    Ok(())
}

fn one_run(sockray: Option<&Path>, testgen: &Path, opts: &ScaleOptions) -> Result<Run, String> {
    let ns = Netns::new()?;
    let out = std::env::temp_dir().join(format!("sockray-scale-{}.json", std::process::id()));
    let mut tracer = match sockray {
        Some(exe) => Some(start_tracer(exe, &out, 2 * opts.conns)?),
        None => None,
    };
    let t0 = Instant::now();
    let mut hold = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(testgen)
        .args(["hold", "--addr", "127.0.0.1", "--wait-go"])
        .args(["--conns", &opts.conns.to_string()])
        .args(["--close-rate", &opts.close_rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("sockray-testgen hold: {e}"))?;
    let stdout = hold.stdout.take().ok_or("hold: no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // its lines until {"role":"held"}: every connection is open
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("\"role\":\"held\"") => break,
            Some(Ok(_)) => {}
            _ => {
                let _ = hold.kill();
                let _ = hold.wait();
                return Err("hold ended before it held every connection".into());
            }
        }
    }
    let hold_s = t0.elapsed().as_secs_f64();
    let map_kib = tracer.as_ref().map_or(0, |t| bpf_map_kib(t.id()));
    let t1 = Instant::now();
    let mut stdin = hold.stdin.take().ok_or("hold: no stdin")?;
    stdin.write_all(b"go\n").map_err(|e| format!("hold: {e}"))?;
    drop(stdin);
    for _ in lines.by_ref() {}
    let status = hold.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("sockray-testgen hold failed ({status})"));
    }
    wait_closed(&ns, Duration::from_secs(120));
    let close_s = t1.elapsed().as_secs_f64();
    let traced = match tracer.take() {
        Some(t) => Some(finish_tracer(t, &out, map_kib)?),
        None => None,
    };
    let _ = fs::remove_file(&out);
    println!(
        "{}: held after {hold_s:.1} s, closed {close_s:.1} s later",
        if sockray.is_some() {
            "tcplife"
        } else {
            "no tracer"
        }
    );
    Ok(Run {
        hold_s,
        close_s,
        traced,
    })
}

/// tcplife --json into a file, as a person would keep its output; returns once it is attached.
fn start_tracer(exe: &Path, out: &Path, sockets: u32) -> Result<Child, String> {
    let file = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut child = Command::new(exe)
        .args(["tcplife", "--json", "--verbose", "--max-sockets"])
        .arg(sockets.to_string())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sockray tcplife: {e}"))?;
    let err = child.stderr.take().ok_or("tcplife: no stderr")?;
    let mut err = BufReader::new(err).lines();
    let ready = err
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("sockray: ready"));
    if !ready {
        let _ = child.wait();
        return Err("sockray tcplife exited before it was ready".into());
    }
    // the rest of its stderr (the verbose log) is not needed; keep the pipe drained
    std::thread::spawn(move || for _ in err {});
    Ok(child)
}

fn finish_tracer(t: Child, out: &Path, map_kib: u64) -> Result<Traced, String> {
    let peak_rss_kib = peak_rss_kib(t.id());
    stop_process(t, Duration::from_secs(60));
    let text = fs::read(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut rows = 0;
    let mut lost = "no lost record".to_string();
    for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if l.starts_with(b"{\"lost\"") {
            lost = String::from_utf8_lossy(l).into_owned();
        } else {
            rows += 1;
        }
    }
    Ok(Traced {
        rows,
        lost,
        peak_rss_kib,
        map_kib,
    })
}

/// Kernel memory of a process's BPF maps: the sum of `memlock` over its maps, each map once (a map the
/// tool shares between its objects, as with its nested twins, is reached through several fds).
fn bpf_map_kib(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let field = |info: &str, name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let maps: std::collections::BTreeMap<u64, u64> = dir
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| Some((field(&info, "map_id:")?, field(&info, "memlock:")?)))
        .collect();
    maps.values().sum::<u64>() / 1024
}

/// Waits (bounded) until no TCP socket of the namespace is open or closing: `inuse` of its
/// /proc/net/sockstat (sockets in the namespace's tables; time-wait ones are not) is 0.
fn wait_closed(ns: &Netns, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "cat", "/proc/net/sockstat"])
            .output();
        let inuse = out.ok().and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let mut it = line.split_whitespace();
            it.find(|w| *w == "inuse")?;
            it.next()?.parse::<u64>().ok()
        });
        match inuse {
            Some(0) | None => return,
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
