//! tcpcong: per TCP connection, the time spent in each congestion state (open, disorder, cwr, recovery,
//! loss) and the number of changes (BCC's tcpcong), kept in the kernel (bpf/tcpcong.bpf.c) and printed
//! every interval, or at Ctrl-C without one; `-d`: log2 histograms of the periods per state.
//! Hooks: tcp:tcp_cong_state_set (Linux 5.19+; tp_btf, else raw_tp), else fexit on the functions BCC's
//! tcpcong hooks without it; sock:inet_sock_set_state for a connection's start and end and the
//! socket-owner component's upkeep.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use libbpf_rs::MapFlags;
use libbpf_rs::skel::Skel as _;

use crate::cli::{self, Common, FamilyArgs, PortArgs, SocketTable, load_tool};
use crate::filter::Filters;
use crate::format::{AF_INET6, comm, hms, ip_addr, ip_version, owner_fields, wall_now_ns};
use crate::hist;
use crate::output::{Fields, Mode, Printer, TimeCols, Value};
use crate::runtime;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcpcong.skel.rs"));
}
use skel::{TcpcongSkelBuilder, types};

const EXAMPLES: &str = "examples:
    tcpcong                 # show tcp congestion status duration
    tcpcong 1 10            # show 1 second summaries, 10 times
    tcpcong -L 3000-3006 1  # 1s summaries, local port 3000-3006
    tcpcong -R 5000-5005 1  # 1s summaries, remote port 5000-5005
    tcpcong -uT 1           # 1s summaries, microseconds, and timestamps
    tcpcong -d              # show the duration as histograms
    tcpcong --owner 1       # with the process owning each socket (PID, COMM)
    tcpcong --json 1        # one JSON object per connection per interval (ns, owner)

Open/Dod(disorder)/Rcov(recovery)/Cwr/Los(loss): the time each connection spent in that congestion
state in the interval (without one: since the tool started), the state it is still in counted up to
the print; Chgs: the state changes. A connection is counted from its handshake's end, or, when it
began before the tool, from its first state change. Without tcp:tcp_cong_state_set (Linux before
5.19) the changes are seen after the kernel functions that make them (BCC's fallback). -L/-R also
take lists (80,443,3000-3006). -d: a histogram per state of how long each period in it lasted
(periods that ended).";

/// Summarize tcp socket congestion control status duration
#[derive(Parser, Debug)]
#[command(
    name = "tcpcong",
    after_help = EXAMPLES,
    // BCC's -R for the remote ports
    mut_arg("remoteport", |a| a.short('R')),
)]
struct Args {
    #[command(flatten)]
    ports: PortArgs,
    /// include timestamp on output
    #[arg(short = 'T', long = "timestamp")]
    timestamp: bool,
    /// show distributions as histograms
    #[arg(short = 'd', long = "dist")]
    dist: bool,
    /// output in microseconds
    #[arg(short = 'u', long = "microseconds")]
    microseconds: bool,
    /// PID and COMM columns: the process owning each socket (sockray)
    #[arg(long = "owner")]
    owner: bool,
    #[command(flatten)]
    family: FamilyArgs,
    /// output interval, in seconds
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    interval: Option<u64>,
    /// number of outputs
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    outputs: Option<u64>,
    #[command(flatten)]
    sockets: SocketTable,
    #[command(flatten)]
    common: Common,
}

const STATES: usize = 5;
/// BCC's names (enum tcp_ca_state order).
const STATE_NAMES: [&str; STATES] = ["open", "disorder", "cwr", "recovery", "loss"];

/// CLOCK_MONOTONIC now: bpf_ktime_get_ns()'s clock.
fn ktime_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One connection's figures over an interval.
#[derive(Clone)]
struct Row {
    conn: types::tcpcong_conn,
    dur_ns: [u64; STATES],
    changes: u64,
}

/// A connection's identity across ticks: its socket's address and when the tool first saw it (an
/// address is reused by later sockets).
type Id = (u64, u64);

/// What was printed of each connection so far (cumulative), to print only what came since.
#[derive(Default)]
struct Accounts {
    printed: HashMap<Id, ([u64; STATES], u64, u64)>, // (durations, changes, tick last seen live)
    closed: Vec<types::tcpcong_conn>,
}

/// A record's totals up to `now`: the periods that ended, plus the current state's time until now
/// (nothing for a closed record: its last period ended at its close).
fn totals(c: &types::tcpcong_conn, now: u64) -> ([u64; STATES], u64) {
    let mut d = c.dur_ns;
    if c.closed == 0 && (c.state as usize) < STATES {
        d[c.state as usize] += now.saturating_sub(c.since_ns);
    }
    (d, c.changes)
}

impl Accounts {
    /// The interval's rows, from the live records (read at `now`) and the records of connections that
    /// closed since the last tick.
    fn take(&mut self, live: Vec<types::tcpcong_conn>, now: u64, tick: u64) -> Vec<Row> {
        let closed = std::mem::take(&mut self.closed);
        let closed_ids: HashSet<Id> = closed.iter().map(|c| (c.sk, c.first_ns)).collect();
        let mut out = Vec::new();
        for c in live.iter().chain(closed.iter()) {
            let id = (c.sk, c.first_ns);
            if c.closed == 0 && closed_ids.contains(&id) {
                // read live just before its close record arrived: the close record has it all
                continue;
            }
            let (mut d, mut changes) = totals(c, now);
            let cum = (d, changes);
            if let Some((pd, pc, _)) = self.printed.get(&id) {
                for (v, p) in d.iter_mut().zip(pd) {
                    *v = v.saturating_sub(*p);
                }
                changes = changes.saturating_sub(*pc);
            }
            if c.closed != 0 {
                self.printed.remove(&id);
            } else {
                self.printed.insert(id, (cum.0, cum.1, tick));
            }
            if changes > 0 || d.iter().any(|&v| v > 0) {
                out.push(Row {
                    conn: *c,
                    dur_ns: d,
                    changes,
                });
            }
        }
        // connections gone without a close record (lost) are forgotten after a tick's grace (their
        // record may still have been in the ring buffer at this tick)
        self.printed.retain(|_, v| v.2 + 1 >= tick);
        out.sort_by_key(|r| {
            let c = &r.conn;
            (c.family, c.lport, c.laddr, c.raddr, c.rport, c.first_ns)
        });
        out
    }
}

/// Every live record, each read whole (seq even and unchanged across the read), each once (a walk
/// over a hash map that loses a key meanwhile starts again from its first key).
fn read_live(map: &impl libbpf_rs::MapCore) -> Result<Vec<types::tcpcong_conn>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for key in map.keys() {
        if !seen.insert(key.clone()) {
            continue;
        }
        for _ in 0..8 {
            let Some(v) = map.lookup(&key, MapFlags::ANY)? else {
                break; // closed meanwhile: its close record comes through the ring buffer
            };
            let Some(c) = runtime::read_event::<types::tcpcong_conn>(&v) else {
                break;
            };
            if c.seq % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let again = map
                .lookup(&key, MapFlags::ANY)?
                .and_then(|v| runtime::read_event::<types::tcpcong_conn>(&v));
            if again.is_some_and(|a| a.seq == c.seq) {
                out.push(c);
                break;
            }
        }
    }
    Ok(out)
}

/// The -d histograms, summed over the CPUs: one per state.
fn read_hists(map: &impl libbpf_rs::MapCore) -> Result<Vec<Vec<u64>>> {
    let slots = |h: &types::tcpcong_hist| h.slots.to_vec();
    let mut sum = vec![vec![0u64; 32]; STATES];
    if let Some(per_cpu) = map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)? {
        for v in per_cpu {
            if let Some(h) = runtime::read_event::<types::tcpcong_hist>(&v) {
                for (i, n) in slots(&h).into_iter().enumerate() {
                    sum[i / 32][i % 32] += n;
                }
            }
        }
    }
    Ok(sum)
}

struct Form {
    mode: Mode,
    micros: bool,
    timestamp: bool,
    owner: bool,
    dist: bool,
}

impl Form {
    fn unit_div(&self) -> u64 {
        if self.micros { 1_000 } else { 1_000_000 }
    }
}

/// BCC's `addr/port`.
fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> String {
    format!("{}/{port}", ip_addr(family, addr))
}

fn owner_cols(c: &types::tcpcong_conn) -> String {
    let (pid, name) = if c.owner.pid == 0 {
        ("?".to_string(), "?".to_string())
    } else {
        (
            c.owner.pid.to_string(),
            comm(&c.owner.comm).chars().take(15).collect(),
        )
    };
    format!("{pid:<7} {name:<15} ")
}

/// One table (IPv4 or IPv6) as BCC prints it: its header only when it has rows.
fn table(rows: &[&Row], v6: bool, form: &Form) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let w = if v6 { 32 } else { 21 };
    let (l, r) = if v6 {
        ("LAddrPort6", "RAddrPort6")
    } else {
        ("LAddrPort", "RAddrPort")
    };
    let u = if form.micros { "us" } else { "ms" };
    let mut s = String::new();
    if form.owner {
        s.push_str(&format!("{:<7} {:<15} ", "PID", "COMM"));
    }
    s.push_str(&format!(
        "{l:<w$} {r:<w$} {:<7} {:<6} {:<7} {:<7} {:<6} {:<5}\n",
        format!("Open_{u}"),
        format!("Dod_{u}"),
        format!("Rcov_{u}"),
        format!("Cwr_{u}"),
        format!("Los_{u}"),
        "Chgs"
    ));
    let div = form.unit_div();
    for row in rows {
        let c = &row.conn;
        if form.owner {
            s.push_str(&owner_cols(c));
        }
        let d = |i: usize| row.dur_ns[i] / div;
        s.push_str(&format!(
            "{:<w$} {:<w$} {:<7} {:<6} {:<7} {:<7} {:<6} {:<5}\n",
            endpoint(c.family, &c.laddr, c.lport),
            endpoint(c.family, &c.raddr, c.rport),
            d(0),
            d(1),
            d(3),
            d(2),
            d(4),
            row.changes
        ));
    }
    s
}

fn json_fields(row: &Row, tick: u64, time_ns: u64) -> Fields {
    let c = &row.conn;
    let mut f: Fields = vec![("time_ns", Value::U(time_ns)), ("tick", Value::U(tick))];
    f.extend(owner_fields(c.owner.pid, c.owner.uid, &c.owner.comm));
    f.extend([
        ("ip", Value::U(ip_version(c.family) as u64)),
        ("laddr", Value::Ip(ip_addr(c.family, &c.laddr))),
        ("lport", Value::U(c.lport as u64)),
        ("raddr", Value::Ip(ip_addr(c.family, &c.raddr))),
        ("rport", Value::U(c.rport as u64)),
        ("open_ns", Value::U(row.dur_ns[0])),
        ("disorder_ns", Value::U(row.dur_ns[1])),
        ("cwr_ns", Value::U(row.dur_ns[2])),
        ("recovery_ns", Value::U(row.dur_ns[3])),
        ("loss_ns", Value::U(row.dur_ns[4])),
        ("changes", Value::U(row.changes)),
        (
            "state",
            Value::S(
                STATE_NAMES
                    .get(c.state as usize)
                    .copied()
                    .unwrap_or("?")
                    .to_string(),
            ),
        ),
        ("closed", Value::Json((c.closed != 0).to_string())),
    ]);
    f
}

fn print_tick(
    printer: &mut Printer,
    form: &Form,
    rows: &[Row],
    hists: &[Vec<u64>],
    tick: u64,
) -> Result<()> {
    let unit = if form.micros { "usecs" } else { "msecs" };
    if form.mode == Mode::Json {
        let now = wall_now_ns();
        if form.dist {
            for (i, h) in hists.iter().enumerate() {
                let count: u64 = h.iter().sum();
                if count > 0 {
                    printer.json_record(&vec![
                        ("time_ns", Value::U(now)),
                        ("tick", Value::U(tick)),
                        ("state", Value::S(STATE_NAMES[i].to_string())),
                        ("unit", Value::S(unit.to_string())),
                        ("count", Value::U(count)),
                        ("buckets", Value::Json(hist::log2_json(h))),
                    ])?;
                }
            }
        } else {
            for r in rows {
                printer.json_record(&json_fields(r, tick, now))?;
            }
        }
        printer.flush()?;
        return Ok(());
    }
    let mut text = String::from("\n");
    if form.timestamp {
        text.push_str(&format!("{:<8}\n", hms(wall_now_ns())));
    }
    if form.dist {
        for (i, h) in hists.iter().enumerate() {
            if h.iter().any(|&n| n > 0) {
                text.push_str(&format!("\ntcp_congest_state = {}\n", STATE_NAMES[i]));
                text.push_str(&hist::log2_text(h, unit));
            }
        }
    } else {
        let (v6, v4): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.conn.family == AF_INET6);
        text.push_str(&table(&v4, false, form));
        text.push_str(&table(&v6, true, form));
    }
    crate::output::print_block(&text)?;
    Ok(())
}

/// The flags, as `-h` shows them (for the man pages and shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let a: Args = cli::parse(argv);
    runtime::set_max_sockets(a.sockets.max_sockets);
    if a.common.ebpf {
        return cli::print_ebpf("tcpcong");
    }
    let filters = Filters {
        family: a.family.family(),
        lports: a.ports.localport.clone(),
        rports: a.ports.remoteport.clone(),
        ..Default::default()
    };
    let mode = a.common.mode(false);
    let mut storage = MaybeUninit::uninit();
    let (skel, _links) = load_tool!(
        TcpcongSkelBuilder,
        &mut storage,
        "tcpcong",
        &a.common,
        &filters,
        |ro: &mut types::rodata| {
            ro.dist = a.dist as u8;
            ro.micros = a.microseconds as u8;
        }
    );
    cli::debug(format_args!(
        "tcpcong: congestion state changes per connection (tcp:tcp_cong_state_set, or after BCC's \
         functions), connections' start and end from sock:inet_sock_set_state, owners from the \
         socket-owner records"
    ));
    let obj = skel.object();
    let form = Form {
        mode,
        micros: a.microseconds,
        timestamp: a.timestamp,
        owner: a.owner,
        dist: a.dist,
    };
    let mut printer = Printer::new(mode, Vec::new(), TimeCols::default());
    runtime::say_ready(a.common.verbose);
    if mode != Mode::Json {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Tracing tcp congestion control status duration... Hit Ctrl-C to end."
        )?;
        out.flush()?;
    }
    let accounts = std::cell::RefCell::new(Accounts::default());
    let mut deltas = hist::Deltas::default();
    let mut interval_print = |ticks: u64| -> Result<()> {
        let now = ktime_now();
        let live = read_live(&skel.maps.conns)?;
        let rows = accounts.borrow_mut().take(live, now, ticks);
        let mut hists = Vec::new();
        if form.dist {
            for (i, mut h) in read_hists(&skel.maps.hists)?.into_iter().enumerate() {
                deltas.take(vec![i as u8], &mut h);
                hists.push(h);
            }
        }
        print_tick(&mut printer, &form, &rows, &hists, ticks)
    };
    let tick = a.interval.map(Duration::from_secs);
    // at Ctrl-C, SIGTERM, SIGHUP: what came since the last interval too (everything, without one), as BCC
    runtime::interval_loop(
        obj,
        |data| {
            if let Some(c) = runtime::read_event::<types::tcpcong_conn>(data) {
                accounts.borrow_mut().closed.push(c);
            }
            Ok(())
        },
        tick,
        a.outputs,
        None,
        |n, _| interval_print(n),
    )?;
    runtime::report_lost(&mut printer, "tcpcong", runtime::lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(
        sk: u64,
        state: u32,
        since: u64,
        dur: [u64; STATES],
        changes: u64,
    ) -> types::tcpcong_conn {
        let mut c = types::tcpcong_conn {
            sk,
            first_ns: 1,
            since_ns: since,
            dur_ns: dur,
            changes,
            state,
            family: 2,
            lport: 40000,
            rport: 5001,
            ..Default::default()
        };
        c.laddr[..4].copy_from_slice(&[10, 77, 0, 1]);
        c.raddr[..4].copy_from_slice(&[10, 77, 0, 2]);
        c
    }

    #[test]
    fn the_current_state_counts_up_to_the_tick_and_intervals_add_up() {
        let mut acc = Accounts::default();
        // in open since 1_000, nothing ended yet: at 5_000, 4_000 of open
        let rows = acc.take(vec![conn(7, 0, 1_000, [0; 5], 0)], 5_000, 1);
        assert_eq!(rows[0].dur_ns, [4_000, 0, 0, 0, 0]);
        // went to loss at 6_000 (open's period ended with 5_000), still there at 9_000
        let rows = acc.take(vec![conn(7, 4, 6_000, [5_000, 0, 0, 0, 0], 1)], 9_000, 2);
        assert_eq!(rows[0].dur_ns, [1_000, 0, 0, 0, 3_000]);
        assert_eq!(rows[0].changes, 1);
        // closed at 10_000 in loss: the close record has everything
        let mut closed = conn(7, 4, 10_000, [5_000, 0, 0, 0, 4_000], 1);
        closed.closed = 1;
        acc.closed.push(closed);
        // read live just before: left out for the close record
        let rows = acc.take(vec![conn(7, 4, 6_000, [5_000, 0, 0, 0, 0], 1)], 9_500, 3);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].dur_ns, [0, 0, 0, 0, 1_000]);
        assert_eq!(rows[0].changes, 0);
        assert!(acc.printed.is_empty());
        // nothing more
        assert!(acc.take(vec![], 11_000, 4).is_empty());
    }

    #[test]
    fn a_connection_closed_within_an_interval_is_in_it() {
        let mut acc = Accounts::default();
        let mut c = conn(9, 0, 3_000, [2_000, 0, 0, 0, 0], 0);
        c.closed = 1;
        acc.closed.push(c);
        let rows = acc.take(vec![], 5_000, 1);
        assert_eq!(rows[0].dur_ns, [2_000, 0, 0, 0, 0]);
    }

    #[test]
    fn table_like_bcc() {
        let form = Form {
            mode: Mode::Table,
            micros: false,
            timestamp: false,
            owner: false,
            dist: false,
        };
        let r = Row {
            conn: conn(1, 0, 0, [0; 5], 0),
            dur_ns: [884_000_000, 12_000_000, 507_000_000, 102_000_000, 0],
            changes: 2721,
        };
        let t = table(&[&r], false, &form);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "LAddrPort             RAddrPort             Open_ms Dod_ms Rcov_ms Cwr_ms  Los_ms Chgs "
        );
        assert_eq!(
            lines[1],
            "10.77.0.1/40000       10.77.0.2/5001        884     12     102     507     0      2721 "
        );
        assert_eq!(table(&[], true, &form), "");
    }
}
