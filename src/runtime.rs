//! What every tool does around its own logic: privilege and kernel checks, choosing hooks, load, attach,
//! seeding the socket-owner map, the event loop (ring buffer, SIGINT/SIGTERM, closed pipes), and the
//! lost-event count at exit.

use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::{
    Link, MapCore, MapFlags, MapHandle, Object, OpenObject, PrintLevel, RingBufferBuilder,
};

use crate::attach::{self, Choice, Kind};
use crate::cli::Common;
use crate::output::{Printer, Value, is_closed_pipe};

static STOP: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP: the terminal may be gone, and a write to it fails with EIO.
static HANGUP: AtomicBool = AtomicBool::new(false);
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Milliseconds since the tool started (for --verbose start-up timings).
pub fn since_start_ms() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        HANGUP.store(true, Ordering::SeqCst);
    }
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP end the event loop: the tool then drains the ring buffer, prints what was
/// in it and its summary where the output still exists (a closed terminal is not an error), and exits.
pub fn install_signal_handlers() {
    START.get_or_init(Instant::now);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: on_signal only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

const CAP_SYS_RESOURCE: u32 = 24;
const CAP_SYS_ADMIN: u32 = 21;

fn has_cap(c: u32) -> bool {
    effective_caps() & (1u64 << c) != 0
}
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks what tracing needs before anything is loaded, with a message a person can act on.
pub fn preflight(tool: &str) -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        bail!("needs root, or the capabilities CAP_BPF and CAP_PERFMON (try: sudo {tool})");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): sockray needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Linux 5.4+; most distributions since 2020)"
        );
    }
    ensure_tracefs()?;
    Ok(())
}

/// Classic tracepoints are attached through tracefs; mount it when it is missing and we may. Not an
/// error when it cannot be: typed and raw tracepoints need no tracefs, and a hook that has nothing else
/// says so when it is probed (attach::tracefs_missing).
fn ensure_tracefs() -> Result<()> {
    if attach::tracefs_root().is_some() || attach::tracefs_mount().is_some() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        crate::cli::debug(format_args!(
            "tracefs is not mounted and could not be mounted ({}): classic tracepoints cannot be used",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Routes libbpf's own messages: silent, or to stderr with --verbose.
pub fn libbpf_logging(verbose: bool) {
    if verbose {
        let level = if std::env::var_os("SOCKRAY_LIBBPF_DEBUG").is_some() {
            PrintLevel::Debug
        } else {
            PrintLevel::Info
        };
        libbpf_rs::set_print(Some((level, |_, msg: String| {
            eprint!("libbpf: {:.1} ms: {msg}", since_start_ms()) as ()
        })));
    } else {
        libbpf_rs::set_print(None);
    }
}

/// Everything before load: checks, logging, hook choice (autoload toggles).
pub fn prepare(obj: &mut OpenObject, tool: &str, common: &Common) -> Result<Vec<Choice>> {
    libbpf_logging(common.verbose);
    crate::cli::debug(format_args!("{:.1} ms: opened", since_start_ms()));
    let chosen = attach::choose(obj, tool, common.verbose).map(|c| hold_back_twins(obj, c));
    crate::cli::debug(format_args!("{:.1} ms: hooks chosen", since_start_ms()));
    size_event_ring(obj, tool);
    if let Some(sizes) = MAP_ENTRIES.get() {
        resize_maps(obj, sizes)?;
    }
    if let Some(sizes) = std::env::var_os("SOCKRAY_MAP_ENTRIES") {
        resize_maps(obj, &sizes.to_string_lossy())?;
    }
    if common.verbose && std::env::var_os("SOCKRAY_VERIFIER_STATS").is_some() {
        // the verifier's statistics per program, in libbpf's debug log (with SOCKRAY_LIBBPF_DEBUG)
        for mut prog in obj.progs_mut() {
            prog.set_log_level(4);
        }
    }
    if common.verbose
        && let Some(dir) = std::env::var_os("SOCKRAY_VERIFIER_LOG")
    {
        verifier_logs_to(obj, Path::new(&dir));
    }
    chosen
}

/// `SOCKRAY_MAP_ENTRIES=name=N[,name=N...]`: these maps of the tool's object hold N entries (for the
/// tests, which fill a map on purpose to check that what found no room is counted); for an array of
/// maps, the maps it holds (tcptop's `flows=N,flows_a=N,flows_b=N`).
fn resize_maps(obj: &mut OpenObject, sizes: &str) -> Result<()> {
    let mut map_in_map_sizes: Vec<(String, u32)> = Vec::new();
    let mut sized: Vec<String> = Vec::new();
    for item in sizes.split(',').filter(|s| !s.is_empty()) {
        let (name, n) = item
            .split_once('=')
            .and_then(|(name, n)| Some((name, n.parse::<u32>().ok()?)))
            .ok_or_else(|| anyhow!("SOCKRAY_MAP_ENTRIES: want name=N, got {item:?}"))?;
        let mut map = obj
            .maps_mut()
            .find(|m| m.name() == name)
            .ok_or_else(|| anyhow!("SOCKRAY_MAP_ENTRIES: no map {name:?}"))?;
        if matches!(
            map.map_type(),
            libbpf_rs::MapType::ArrayOfMaps | libbpf_rs::MapType::HashOfMaps
        ) {
            // an array of maps: the size of the maps it holds, to go with the same size given to those
            // maps (named in the same list); its template and those maps are then made here, alike
            // (see below)
            map_in_map_sizes.push((name.to_string(), n));
            continue;
        }
        map.set_max_entries(n)?;
        sized.push(name.to_string());
    }
    for (outer, n) in map_in_map_sizes {
        // the template: like the first other map named (same type, key and value), n entries
        let like = obj
            .maps()
            .find(|m| sized.iter().any(|s| m.name() == s.as_str()))
            .map(|m| (m.map_type(), m.key_size(), m.value_size(), m.map_flags()))
            .ok_or_else(|| {
                anyhow!("SOCKRAY_MAP_ENTRIES: {outer}=N needs the maps it holds sized too")
            })?;
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: like.3,
            ..Default::default()
        };
        let template =
            libbpf_rs::MapHandle::create(like.0, Some("tmpl"), like.1, like.2, n, &opts)?;
        // kept for the process's life: libbpf creates the array of maps at load with it
        let template: &'static libbpf_rs::MapHandle = Box::leak(Box::new(template));
        // The maps it holds are made here too, like the template (no BTF): the kernel compares a map
        // put in a slot with the template, and on some kernels that includes what their BTF says (6.1's
        // timer offset: a libbpf-made map, with BTF, was refused with EINVAL).
        use std::os::fd::AsFd;
        for name in &sized {
            let mut map = obj
                .maps_mut()
                .find(|m| m.name() == name.as_str())
                .ok_or_else(|| anyhow!("SOCKRAY_MAP_ENTRIES: no map {name:?}"))?;
            if (
                map.map_type(),
                map.key_size(),
                map.value_size(),
                map.map_flags(),
            ) != like
            {
                continue;
            }
            let h = libbpf_rs::MapHandle::create(
                like.0,
                Some(name.as_str()),
                like.1,
                like.2,
                n,
                &opts,
            )?;
            let h: &'static libbpf_rs::MapHandle = Box::leak(Box::new(h));
            map.reuse_fd(h.as_fd())?;
        }
        let mut map = obj
            .maps_mut()
            .find(|m| m.name() == outer.as_str())
            .ok_or_else(|| anyhow!("SOCKRAY_MAP_ENTRIES: no map {outer:?}"))?;
        map.set_inner_map_fd(template.as_fd())?;
    }
    Ok(())
}

/// Program name, log buffer, and the file it goes to (SOCKRAY_VERIFIER_LOG).
type VerifierLog = (String, Box<[u8]>, std::path::PathBuf);
static VERIFIER_LOGS: std::sync::Mutex<Vec<VerifierLog>> = std::sync::Mutex::new(Vec::new());

/// `SOCKRAY_VERIFIER_LOG=DIR` (with --verbose): the verifier's full log of each program of the tool's
/// object (its level 2: every instruction it walks, with the states it compares) goes to
/// DIR/<program>.log once loaded, to see where its work (start-up time) goes; the statistics at its end.
fn verifier_logs_to(obj: &mut OpenObject, dir: &Path) {
    use libbpf_rs::AsRawLibbpf;
    let Ok(mut logs) = VERIFIER_LOGS.lock() else {
        return;
    };
    for mut prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let mut buf = vec![0u8; 16 << 20].into_boxed_slice();
        // SAFETY: the buffer is kept (in VERIFIER_LOGS) for the rest of the process, past the load.
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_program__set_log_buf(
                prog.as_libbpf_object().as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len() as _,
            )
        };
        if rc == 0 {
            prog.set_log_level(2 | 4);
            logs.push((name.clone(), buf, dir.join(format!("{name}.log"))));
        }
    }
}

/// Writes the logs that [`verifier_logs_to`] asked for (after the load).
fn write_verifier_logs() {
    let Ok(logs) = VERIFIER_LOGS.lock() else {
        return;
    };
    for (name, buf, path) in logs.iter() {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if end > 0 {
            match std::fs::write(path, &buf[..end]) {
                Ok(()) => {
                    crate::cli::debug(format_args!("{name}: verifier log in {}", path.display()))
                }
                Err(e) => crate::cli::debug(format_args!("{}: {e}", path.display())),
            }
        }
    }
}

/// Before [`prepare`]: leaves out (neither chooses, loads nor attaches) the programs `skip` names, so
/// that a hook only an optional flag needs is not even probed.
pub fn skip_programs(obj: &mut OpenObject, skip: impl Fn(&str) -> bool) {
    for mut prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        if skip(&name) {
            crate::cli::debug(format_args!("{name}: not needed for this run, not loaded"));
            prog.set_autoload(false);
        }
    }
}

/// Does this kernel have the BPF memory allocator (Linux 6.1+), which lets tracing programs of every
/// type use hash maps whose elements are allocated at run time? Read from vmlinux BTF's string table
/// (the type and its functions are named there), not from the version number.
fn kernel_has_bpf_mem_alloc() -> bool {
    match std::fs::read("/sys/kernel/btf/vmlinux") {
        Ok(btf) => memchr::memmem::find(&btf, b"\0bpf_mem_alloc\0").is_some(),
        Err(_) => true,
    }
}

/// The socket-owner slot table's index mask (bpf/common.bpf.h `sock_slot_mask`): all ones, every slot
/// (the table's size is `SOCK_SLOT_BITS` in bpf/sockowner.bpf.h, known only there), or, for tests,
/// `SOCKRAY_SOCK_SLOTS=N` (a power of two) to make sockets share N slots and their records spill into
/// the hash map behind the table (N at or above the table's size: every slot).
pub fn sock_slot_mask() -> u32 {
    slot_mask_of(std::env::var("SOCKRAY_SOCK_SLOTS").ok().as_deref())
}

fn slot_mask_of(setting: Option<&str>) -> u32 {
    setting
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| n.is_power_of_two())
        .map_or(u32::MAX, |n| n - 1)
}

static MAX_SOCKETS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Map sizes a tool's flags set (`name=N[,name=N...]`, as `SOCKRAY_MAP_ENTRIES`, which overrides them).
static MAP_ENTRIES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What the lost-event report tells a user to raise when a table was full.
static CAPACITY_HINT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// A tool's own map sizes (`name=N[,name=N...]`, see [`resize_maps`]) and what to say when one is full
/// (e.g. "raise it with --max-flows N"). Call before the tool loads.
pub fn set_map_entries(sizes: String, hint: &'static str) {
    let _ = MAP_ENTRIES.set(sizes);
    let _ = CAPACITY_HINT.set(hint);
}

/// The room of a per-flow table (tcptop's and tcpsubnet's flows per interval): `flag`, else `floor`, or
/// twice the TCP sockets at start when there are more (at most 1/4 of memory's KiB, 2^28).
pub fn flow_entries(flag: Option<u32>, floor: u64) -> u32 {
    let m = Machine::now();
    sock_map_entries(flag, floor, m.tcp_sockets, m.mem_kib)
}

/// `--max-sockets N` (tools with socket-owner records): the room for records where the kernel cannot
/// keep them with their socket. Call before the tool loads.
pub fn set_max_sockets(n: Option<u32>) {
    if let Some(n) = n {
        let _ = MAX_SOCKETS.set(n);
    }
}

/// The socket-owner component's places for records that find no slot (bpf/sockowner.bpf.h): socket-local
/// storage, when every program the tool runs is a typed (tp_btf) one (others cannot address it); else
/// the hash map `sock_owners`, sized here from the machine (SOCKRAY_NO_SK_STORAGE=1 forces that, for
/// tests). Either way the hash
/// map also takes the seeding walk's records of the sockets that exist at start. Sets the object's
/// `sock_storage_on`; call after the hooks are chosen, before the maps are created.
pub fn place_sock_records(obj: &mut OpenObject, chosen: &[Choice]) -> bool {
    let Some(mut map) = obj.maps_mut().find(|m| m.name() == "sock_owners") else {
        return false;
    };
    let typed_only = chosen
        .iter()
        .all(|c| matches!(c.kind, Kind::TpBtf | Kind::Iter));
    // Tracing programs may use socket-local storage since Linux 5.11, and every tool that runs typed
    // programs only needs sock:sock_recv_length (6.3+) for that: no probe (reading vmlinux BTF to look
    // would cost ~5 ms of start-up). Should the kernel refuse the load all the same, the strict retry
    // (cli::load_tool!) comes here again and leaves it off.
    let storage =
        typed_only && !attach::strict() && std::env::var_os("SOCKRAY_NO_SK_STORAGE").is_none();
    let Machine {
        tcp_sockets: machine,
        mem_kib: mem,
    } = *Machine::now();
    // the size bpf/common.bpf.h declares (SOCK_MAP_ENTRIES) is the floor; with socket-local storage
    // the hash map takes only the seeding walk's records (sockets that exist now, whose slot is taken),
    // and a smaller floor does: its bucket array is allocated and zeroed at start (65,536: ~1 ms)
    // without it, the hash map takes every record that finds no slot, sockets that come after the
    // start too: at least what the kernel itself sized for the machine (net.ipv4.tcp_max_orphans,
    // scaled with memory at boot: 131,072 on a 24 GiB machine), when the map is not preallocated (see
    // prealloc_maps_if_needed, which goes back to the declared floor where it preallocates)
    let declared = u64::from(map.max_entries());
    let floor = if storage {
        SEEDED_ONLY_FLOOR
    } else {
        declared.max(tcp_max_orphans().unwrap_or(0).min(1 << 20))
    };
    let entries = sock_map_entries(MAX_SOCKETS.get().copied(), floor, machine, mem);
    let _ = SOCK_OWNERS_PREALLOCATED.set(sock_map_entries(
        MAX_SOCKETS.get().copied(),
        if storage { SEEDED_ONLY_FLOOR } else { declared },
        machine,
        mem,
    ));
    if let Err(e) = map.set_max_entries(entries) {
        crate::cli::debug(format_args!("sock_owners: cannot size to {entries}: {e}"));
    }
    crate::cli::debug(format_args!(
        "socket records: the slot table, then {}; hash map for {entries} sockets ({} TCP sockets now)",
        if storage {
            "socket-local storage"
        } else {
            "the hash map"
        },
        machine.map_or("?".into(), |n| n.to_string()),
    ));
    storage
}

/// What the machine holds, read once at start: the TCP sockets that exist and the memory, from which
/// the tables that can fill up and the event ring are sized.
#[derive(Clone, Copy)]
struct Machine {
    tcp_sockets: Option<u64>,
    mem_kib: Option<u64>,
}

impl Machine {
    fn now() -> &'static Machine {
        static NOW: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
        NOW.get_or_init(|| Machine {
            tcp_sockets: std::fs::read_to_string("/proc/net/sockstat")
                .ok()
                .and_then(|s| tcp_sockets_allocated(&s)),
            mem_kib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| mem_total_kib(&s)),
        })
    }
}

/// Sizes the event ring buffer (`events`, bpf/common.bpf.h) for the machine: see [`ring_bytes`].
fn size_event_ring(obj: &mut OpenObject, tool: &str) {
    let Some(mut map) = obj.maps_mut().find(|m| m.name() == "events") else {
        return;
    };
    let m = Machine::now();
    let bytes = ring_bytes(
        u64::from(map.max_entries()),
        ring_bytes_per_socket(tool),
        MAX_SOCKETS.get().copied(),
        m.tcp_sockets,
        m.mem_kib,
    );
    if bytes != map.max_entries()
        && let Err(e) = map.set_max_entries(bytes)
    {
        crate::cli::debug(format_args!("events: cannot size the ring to {bytes}: {e}"));
        return;
    }
    crate::cli::debug(format_args!(
        "event ring: {} KiB ({} TCP sockets now)",
        bytes >> 10,
        m.tcp_sockets.map_or("?".into(), |n| n.to_string())
    ));
}

/// Ring-buffer bytes per TCP socket: what the tool records when a socket closes. A server that holds
/// many sockets can close them all at once (a restart, a failover), faster than a reader that shares
/// the CPUs with the closing processes prints them; the ring holds what the reader has not read yet.
/// tcplife and tcptracer write one record per socket as it closes (tcplife's: 120 bytes with its
/// header), tcpstates three (FIN_WAIT1, FIN_WAIT2, CLOSE; CLOSE_WAIT, LAST_ACK, CLOSE); tools whose
/// records are not per socket (retransmits, connects) are sized the same as one record a socket.
/// tcptop and tcpsubnet write no records (their counts are read from maps): the object's floor.
fn ring_bytes_per_socket(tool: &str) -> u64 {
    match tool {
        "tcpstates" => 3 * 128,
        // one struct tcpcong_conn (160 bytes) and its header per connection
        "tcpcong" => 176,
        "tcptop" | "tcpsubnet" => 0,
        _ => 128,
    }
}
/// The ring's largest size, and the share of memory it may take at most (1/128).
const RING_MAX: u64 = 128 << 20;
const RING_MEM_SHARE: u64 = 128;

/// The event ring's size: the object's (`floor`, 1 MiB) on a machine with few sockets, else
/// `per_socket` bytes for each TCP socket that exists now or that `--max-sockets` names, whichever
/// is more; a power of two (the kernel's rule; bpf/common.bpf.h's wake-up marks need a multiple of
/// 128 KiB), at most RING_MAX and 1/RING_MEM_SHARE of memory. Its pages are allocated at start and
/// mapped into the reader (twice: counted twice in its RSS).
fn ring_bytes(
    floor: u64,
    per_socket: u64,
    flag: Option<u32>,
    sockets_now: Option<u64>,
    mem_kib: Option<u64>,
) -> u32 {
    let sockets = sockets_now.unwrap_or(0).max(flag.map_or(0, u64::from));
    let want = sockets
        .saturating_mul(per_socket)
        .max(floor)
        .next_power_of_two();
    let cap = mem_kib
        .map_or(RING_MAX, |k| (k * 1024 / RING_MEM_SHARE).min(RING_MAX))
        .max(floor);
    // the largest power of two at most cap
    let cap = 1u64 << (63 - cap.leading_zeros());
    want.min(cap) as u32
}

/// The hash map's least room when socket-local storage takes the records that find no slot: it then
/// holds only records of sockets that existed at start (seeded; twice their number is its room).
const SEEDED_ONLY_FLOOR: u64 = 4096;

/// The hash map's room: `--max-sockets`, else twice the TCP sockets that exist now (at least `floor`,
/// the size the object declares), at most one per 4 KiB of memory (a TCP socket costs the kernel more).
fn sock_map_entries(
    flag: Option<u32>,
    floor: u64,
    sockets_now: Option<u64>,
    mem_kib: Option<u64>,
) -> u32 {
    if let Some(n) = flag {
        return n.max(1);
    }
    let want = sockets_now
        .unwrap_or(0)
        .saturating_mul(2)
        .max(floor)
        .next_power_of_two();
    let cap = mem_kib.map_or(u64::MAX, |k| (k / 4).max(floor));
    want.min(cap).min(1 << 28) as u32
}

/// `alloc` of the `TCP:` line of /proc/net/sockstat: TCP sockets of both families that exist.
fn tcp_sockets_allocated(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "alloc" {
            return it.next()?.parse().ok();
        }
    }
    None
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `sock_owners`'s size when it is preallocated (no floor from net.ipv4.tcp_max_orphans: every entry
/// would cost its ~90 bytes at start).
static SOCK_OWNERS_PREALLOCATED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// net.ipv4.tcp_max_orphans: the kernel's own figure for how many TCP sockets this machine may hold
/// without a process (scaled with its memory at boot).
fn tcp_max_orphans() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_orphans")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Before the BPF memory allocator (Linux 6.1), the verifier warns once per boot, tainting the kernel
/// ("trace type BPF program uses run-time allocation"), when a kprobe, tracepoint or raw_tp program uses
/// a hash map created with BPF_F_NO_PREALLOC. On such kernels, and only when such a program is to be
/// loaded (tp_btf, fentry and iterators are not concerned), those maps are preallocated instead: more
/// kernel memory (about 90 bytes per entry) for a clean kernel log. Call after every autoload toggle.
/// `SOCKRAY_PREALLOC=1` preallocates them on any kernel (to compare the two allocators' cost).
pub fn prealloc_maps_if_needed(obj: &mut OpenObject) {
    use libbpf_rs::ProgramType as P;
    let classic = obj.progs().any(|p| {
        p.autoload()
            && matches!(
                p.prog_type(),
                P::Kprobe | P::Tracepoint | P::RawTracepoint | P::PerfEvent
            )
    });
    let no_prealloc = libbpf_rs::libbpf_sys::BPF_F_NO_PREALLOC;
    let forced = std::env::var_os("SOCKRAY_PREALLOC").is_some_and(|v| v == "1");
    if !forced
        && (!classic
            || !obj.maps().any(|m| m.map_flags() & no_prealloc != 0)
            || kernel_has_bpf_mem_alloc())
    {
        return;
    }
    for mut m in obj.maps_mut() {
        let flags = m.map_flags();
        // socket-local storage is never preallocated (and is not a hash map)
        if flags & no_prealloc != 0 && m.map_type() != libbpf_rs::MapType::SkStorage {
            let name = m.name().to_string_lossy().into_owned();
            if name == "sock_owners"
                && let Some(&n) = SOCK_OWNERS_PREALLOCATED.get()
                && n < m.max_entries()
                && m.set_max_entries(n).is_ok()
            {
                crate::cli::debug(format_args!("sock_owners: {n} entries, preallocated"));
            }
            match m.set_map_flags(flags & !no_prealloc) {
                Ok(()) => crate::cli::debug(format_args!(
                    "{name}: preallocated (this kernel has no BPF memory allocator)"
                )),
                Err(e) => crate::cli::debug(format_args!("{name}: cannot preallocate: {e}")),
            }
        }
    }
}

/// Explains a load failure; the raw libbpf error stays in the chain.
pub fn load_error(e: libbpf_rs::Error, tool: &str) -> anyhow::Error {
    let msg = e.to_string();
    let hint = if msg.contains("Operation not permitted") || msg.contains("EPERM") {
        match memlock_limit() {
            // not root: before Linux 5.11 every map counts against this user's locked-memory limit
            Some(kib) if !has_cap(CAP_SYS_RESOURCE) => format!(
                " (permission denied by the kernel: kernels before Linux 5.11 count BPF maps against \
                 RLIMIT_MEMLOCK, {kib} KiB here: raise it (ulimit -l unlimited; systemd: \
                 LimitMEMLOCK=infinity) or add CAP_SYS_RESOURCE; else run as root, check \
                 lockdown/SELinux)"
            ),
            _ => " (permission denied by the kernel: run as root, check lockdown/SELinux, or \
                  kernel.unprivileged_bpf_disabled)"
                .to_string(),
        }
    } else {
        " (run with --verbose for libbpf's log)".to_string()
    };
    anyhow!("{tool}: loading the BPF programs failed: {msg}{hint}")
}

/// Classic tracepoints and kprobes are attached through perf events; at kernel.perf_event_paranoid 3
/// (Debian's default, a patch of its kernels) some kernels open them only for CAP_SYS_ADMIN, whatever
/// CAP_PERFMON says (Debian's 5.10). Empty when that is not the case here.
fn perf_paranoid_hint() -> String {
    let level = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match level {
        Some(n) if n > 2 && !has_cap(CAP_SYS_ADMIN) => format!(
            "; kernel.perf_event_paranoid is {n}, at which this kernel may open perf events only for \
             CAP_SYS_ADMIN: set it to 2 (sysctl kernel.perf_event_paranoid=2) or run as root"
        ),
        _ => String::new(),
    }
}

/// This process's locked-memory limit in KiB; None when unlimited.
fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur / 1024)
}

/// Attaches every chosen program (not iterators); the links detach when dropped.
pub fn attach_all(obj: &Object, chosen: &[Choice]) -> Result<Vec<Link>> {
    crate::cli::debug(format_args!("{:.1} ms: loaded", since_start_ms()));
    write_verifier_logs();
    if std::env::var_os("SOCKRAY_BENCH_TOGGLE").is_some() {
        bench_toggle(obj, chosen)?;
        return Ok(Vec::new());
    }
    let mut links = Vec::new();
    for prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let Some(c) = chosen.iter().find(|c| c.prog == name) else {
            continue;
        };
        if c.kind == Kind::Iter {
            continue;
        }
        let link = prog.attach().with_context(|| {
            format!(
                "attaching {}/{} ({}){}",
                c.kind.name(),
                c.target,
                attach::hook_hint(&c.target),
                if matches!(c.kind, Kind::Tracepoint | Kind::Kprobe | Kind::Kretprobe) {
                    perf_paranoid_hint()
                } else {
                    String::new()
                }
            )
        });
        match link {
            Ok(l) => links.push(l),
            Err(e) if c.group.starts_with("sockowner_") || c.group.starts_with("opt_") => {
                crate::cli::debug(format_args!("{name}: optional hook not attached: {e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(links)
}

/// `SOCKRAY_BENCH_TOGGLE=1` (for `cargo xtask bench`, not for users): the programs are attached here, with
/// bpf_raw_tracepoint_open() on their fds (so tp_btf and raw_tp programs only: a tool with others refuses
/// to start), then a thread detaches them on a line `0` on stdin and attaches them again on `1`, saying
/// `sockray: bench detached` / `attached` on stderr when done. The bench so measures one running tracer in
/// short alternating intervals, attached and not, instead of starting and stopping it; the tool keeps
/// running meanwhile.
fn bench_toggle(obj: &Object, chosen: &[Choice]) -> Result<()> {
    use std::io::BufRead;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let mut progs: Vec<(OwnedFd, Option<std::ffi::CString>)> = Vec::new();
    for prog in obj.progs() {
        let name = prog.name().to_string_lossy().into_owned();
        let Some(c) = chosen.iter().find(|c| c.prog == name) else {
            continue;
        };
        let target = match c.kind {
            Kind::Iter => continue,
            Kind::TpBtf => None,
            Kind::RawTp => Some(std::ffi::CString::new(c.target.clone())?),
            k => bail!(
                "SOCKRAY_BENCH_TOGGLE: {name} is a {} program; only tp_btf and raw_tp ones can be toggled",
                k.name()
            ),
        };
        progs.push((prog.as_fd().try_clone_to_owned()?, target));
    }
    let attach = move |progs: &[(OwnedFd, Option<std::ffi::CString>)]| -> Result<Vec<OwnedFd>> {
        let mut links = Vec::new();
        for (fd, target) in progs {
            let name = target.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
            // SAFETY: a valid program fd; name is NULL (tp_btf: the program's own target) or a C string.
            let lfd =
                unsafe { libbpf_rs::libbpf_sys::bpf_raw_tracepoint_open(name, fd.as_raw_fd()) };
            if lfd < 0 {
                bail!(
                    "SOCKRAY_BENCH_TOGGLE: attaching failed: {}",
                    std::io::Error::from_raw_os_error(-lfd)
                );
            }
            // SAFETY: a new fd that nothing else owns.
            links.push(unsafe { OwnedFd::from_raw_fd(lfd) });
        }
        Ok(links)
    };
    let mut links = Some(attach(&progs)?);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            match line.trim() {
                "0" => links = None,
                "1" if links.is_none() => match attach(&progs) {
                    Ok(l) => links = Some(l),
                    Err(e) => {
                        eprintln!("sockray: {e:#}");
                        return;
                    }
                },
                _ => {}
            }
            let state = if links.is_some() {
                "attached"
            } else {
                "detached"
            };
            eprintln!("sockray: bench {state}");
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// socket-owner seeding (bpf/sockseed.bpf.c), loaded beside the tool's own object

mod seedskel {
    include!(concat!(env!("OUT_DIR"), "/sockseed.skel.rs"));
}

/// The socket-owner maps (bpf/sockowner.bpf.h) of a tool, created here before any object loads, so that
/// the tool's object and the seeding object can load at the same time and share them.
pub struct SharedOwnerMaps {
    maps: Vec<(String, MapHandle)>,
}

const SHARED_MAPS: [&str; 3] = ["sock_slots", "sock_owners", "listen_owners"];

impl SharedOwnerMaps {
    /// Creates the maps as the tool's object declares them (after [`prealloc_maps_if_needed`]) and
    /// makes the object use them. None when the tool has no socket-owner maps.
    pub fn create(obj: &mut OpenObject) -> Result<Option<SharedOwnerMaps>> {
        let mut maps = Vec::new();
        for m in obj.maps() {
            let name = m.name().to_string_lossy().into_owned();
            if !SHARED_MAPS.contains(&name.as_str()) {
                continue;
            }
            let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                sz: size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                map_flags: m.map_flags(),
                ..Default::default()
            };
            let h = MapHandle::create(
                m.map_type(),
                Some(&name),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                &opts,
            )
            .with_context(|| format!("creating the map {name}"))?;
            maps.push((name, h));
        }
        if maps.len() != SHARED_MAPS.len() {
            return Ok(None);
        }
        let shared = SharedOwnerMaps { maps };
        shared.reuse_in(obj)?;
        crate::cli::debug(format_args!(
            "{:.1} ms: socket-owner maps created",
            since_start_ms()
        ));
        Ok(Some(shared))
    }

    /// Makes an (other) open object use the shared maps.
    pub fn reuse_in(&self, obj: &mut OpenObject) -> Result<()> {
        reuse_maps(obj, &self.maps)
    }
}

/// Makes `obj` use, for each of its maps named in `maps`, that map (by fd) instead of a new one.
fn reuse_maps(obj: &mut OpenObject, maps: &[(String, impl AsFd)]) -> Result<()> {
    for mut m in obj.maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        if let Some((_, h)) = maps.iter().find(|(n, _)| *n == name) {
            m.reuse_fd(h.as_fd())
                .with_context(|| format!("sharing the map {name}"))?;
        }
    }
    Ok(())
}

static NO_OWNERS: AtomicBool = AtomicBool::new(false);

/// For a run that needs no socket owners (a tool whose owners are opt-in, its owner programs left out):
/// the existing sockets are not walked at start. Call before the tool loads.
pub fn without_owners() {
    NO_OWNERS.store(true, Ordering::Relaxed);
}

/// The seeding iterator, loading on its own thread; [`Seeder::run`] walks the existing sockets once the
/// tool's hooks are attached (so that no socket falls between the walk and the hooks).
pub struct Seeder {
    maps: std::sync::mpsc::Sender<Vec<(String, std::os::fd::OwnedFd)>>,
    go: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Receiver<Result<Duration>>,
}

impl Seeder {
    /// Starts the seeding thread when the tool's object has the socket-owner maps (else None): it opens
    /// the seeding object while the tool creates the maps ([`Seeder::share`]), then loads it. `scope`:
    /// the tool's filter_scope; when set, the variant that records each owner's cgroup or mount
    /// namespace (for --cgroup, --cgroupmap, --mntnsmap; more CO-RE relocations).
    pub fn spawn(obj: &OpenObject, scope: u8) -> Option<Seeder> {
        if NO_OWNERS.load(Ordering::Relaxed) {
            return None;
        }
        let names: Vec<String> = obj
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .collect();
        if !SHARED_MAPS.iter().all(|n| names.iter().any(|m| m == n)) {
            return None;
        }
        let (maps, maps_rx) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut first, mut fallback) = (MaybeUninit::uninit(), MaybeUninit::uninit());
            let mut skel = None;
            let r = Self::seed([&mut first, &mut fallback], &mut skel, scope, maps_rx, wait);
            // said before the object is closed: its teardown is not the tool's wait
            let _ = done_tx.send(r);
            drop(skel);
        });
        Some(Seeder { maps, go, done })
    }

    /// Opens the seeding object with only the program `wanted` to load.
    fn open_variant<'a>(
        storage: &'a mut MaybeUninit<OpenObject>,
        wanted: &str,
        scope: u8,
    ) -> Result<seedskel::OpenSockseedSkel<'a>> {
        use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
        let mut open = seedskel::SockseedSkelBuilder::default().open(storage)?;
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.sock_slot_mask = sock_slot_mask();
            ro.filter_scope = scope;
        }
        if let Some(mut events) = open
            .open_object_mut()
            .maps_mut()
            .find(|m| m.name() == "events")
        {
            // the iterator sends no events: the smallest ring buffer
            events.set_max_entries(4096)?;
        }
        for mut p in open.open_object_mut().progs_mut() {
            let on = p.name() == wanted;
            p.set_autoload(on);
        }
        Ok(open)
    }

    fn seed<'a>(
        [first, fallback]: [&'a mut MaybeUninit<OpenObject>; 2],
        skel: &mut Option<seedskel::SockseedSkel<'a>>,
        scope: u8,
        maps: std::sync::mpsc::Receiver<Vec<(String, std::os::fd::OwnedFd)>>,
        wait: std::sync::mpsc::Receiver<()>,
    ) -> Result<Duration> {
        use libbpf_rs::skel::{OpenSkel as _, Skel as _};
        // the variant with bpf_sock_from_file() (Linux 5.11+: one CO-RE type fewer), else the fallback
        let (wanted, older) = if scope != 0 {
            ("sockseed_cg_file", "sockseed_cg")
        } else {
            ("sockseed_plain_file", "sockseed_plain")
        };
        let mut open = Self::open_variant(first, wanted, scope)?;
        let Ok(fds) = maps.recv() else {
            return Ok(Duration::ZERO); // the tool did not get to create the maps
        };
        reuse_maps(open.open_object_mut(), &fds)?;
        let (loaded, wanted) = match open.load() {
            Ok(s) => (skel.insert(s), wanted),
            Err(e) => {
                crate::cli::debug(format_args!(
                    "seeding: {wanted} not loaded ({e}); loading {older} (before Linux 5.11)"
                ));
                let mut open = Self::open_variant(fallback, older, scope)?;
                reuse_maps(open.open_object_mut(), &fds)?;
                (skel.insert(open.load()?), older)
            }
        };
        crate::cli::debug(format_args!(
            "{:.1} ms: seeding iterator loaded",
            since_start_ms()
        ));
        if wait.recv().is_err() {
            return Ok(Duration::ZERO); // the tool did not get to attach
        }
        let started = Instant::now();
        let prog = loaded
            .object()
            .progs_mut()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| anyhow!("no program {wanted}"))?;
        let link = prog.attach()?;
        let mut it = libbpf_rs::Iter::new(&link)?;
        std::io::copy(&mut it, &mut std::io::sink())?;
        Ok(started.elapsed())
    }

    /// Gives the seeding thread the tool's socket-owner maps, which it loads its object with.
    pub fn share(&self, shared: &SharedOwnerMaps) -> Result<()> {
        let fds = shared
            .maps
            .iter()
            .map(|(n, h)| Ok((n.clone(), h.as_fd().try_clone_to_owned()?)))
            .collect::<Result<_>>()?;
        self.maps
            .send(fds)
            .map_err(|_| anyhow!("the seeding thread is gone"))
    }

    /// Walks the sockets that exist now (call after the tool's hooks are attached) and waits for it.
    /// A seeding that fails leaves those sockets' owners unknown (pid 0): said with --verbose.
    pub fn run(self, verbose: bool) {
        crate::cli::debug(format_args!("{:.1} ms: attached", since_start_ms()));
        let _ = self.go.send(());
        let r = self
            .done
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("the seeding thread panicked")));
        match r {
            Ok(d) if verbose => eprintln!("sockray: seeded socket owners in {d:?}"),
            Ok(_) => {}
            Err(e) if verbose => eprintln!(
                "sockray: cannot seed socket owners ({e:#}); sockets opened before start may show pid 0"
            ),
            Err(_) => {}
        }
    }
}

/// What a run lost: events the ring buffer could not take, program runs the kernel skipped, and
/// sockets whose records found no room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// `bpf_ringbuf_reserve` failed: the reader fell behind (per-CPU counters in `lost_events`).
    pub ringbuf: u64,
    /// The kernel did not run one of our programs because a BPF program was already running on that CPU
    /// (interrupted, or preempted: Linux 7.x preempts programs on syscall tracepoints): each of the
    /// programs' `recursion_misses` is a run never made, so at most that many events are missing.
    pub skipped: u64,
    /// Records a full map could not take: sockets that ended without the record the socket-owner
    /// component should have had for them (bpf/sockowner.bpf.h `sock_rec_lost`), whose rows are shown
    /// with what is not known marked (owner `?`, tcplife's lifespan empty), never as if right; and
    /// the records of a tool's own maps (a handshake, a listener, a syscall in progress: `LOST_CAPACITY`
    /// in bpf/common.bpf.h), whose events are missing or, for a listener, whose connections show `?`.
    pub capacity: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.ringbuf + self.skipped + self.capacity
    }

    /// The stderr lines for a run that lost something; None when nothing was lost.
    pub fn message(&self, tool: &str) -> Option<String> {
        let mut lines = Vec::new();
        if self.ringbuf > 0 {
            lines.push(format!(
                "sockray: {tool}: lost {} events (ring buffer full: the reader fell behind)",
                self.ringbuf
            ));
        }
        if self.skipped > 0 {
            lines.push(format!(
                "sockray: {tool}: the kernel skipped {} runs of its BPF programs (another BPF program was \
                 running on that CPU, or preempted there): up to {} events are missing",
                self.skipped, self.skipped
            ));
        }
        if self.capacity > 0 {
            lines.push(format!(
                "sockray: {tool}: {} records could not be kept (a table was full; {}): their events are \
                 missing, or show what was not known as unknown",
                self.capacity,
                CAPACITY_HINT
                    .get()
                    .copied()
                    .unwrap_or("for sockets, raise it with --max-sockets N")
            ));
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}

/// What `obj` lost so far: its `lost_events` counters, its loaded programs' `recursion_misses` less the
/// runs their nested twins made in their place (`LOST_RESCUED`, see bpf/common.bpf.h), and the state
/// changes no program of its saw at all ([`UnseenCount`]). A twin's own misses are not counted: it is
/// skipped only while it runs already, and when that is outside a nested run its primary runs; when
/// inside one, its primary's miss is counted and not rescued (they are not in `obj`: [`TwinJob`]).
pub fn lost_events(obj: &Object) -> Lost {
    // Each counter read once, in an order where a run between two reads can only make the total
    // larger, never hide a loss: the rescued runs before the misses they rescued, the program's runs
    // and misses before the tracepoint's count (read last, in UnseenCount::unseen).
    let rescued = lost_counter(obj, LOST_RESCUED);
    let runs = lost_counter(obj, STATE_RUNS);
    let misses: Vec<(String, u64)> = obj
        .progs()
        .filter(|p| p.autoload()) // (the twins load in an object of their own, TwinJob)
        .map(|p| {
            (
                p.name().to_string_lossy().into_owned(),
                prog_recursion_misses(p.as_fd()),
            )
        })
        .collect();
    for (name, n) in misses.iter().filter(|(_, n)| *n > 0) {
        crate::cli::debug(format_args!(
            "{name}: the kernel skipped {n} run(s) of this program"
        ));
    }
    if rescued > 0 {
        crate::cli::debug(format_args!("nested twins made {rescued} of those run(s)"));
    }
    let unseen = UNSEEN.get().map_or(0, |u| {
        let m = misses
            .iter()
            .find(|(n, _)| *n == u.prog)
            .map_or(0, |(_, m)| *m);
        u.unseen(runs, m)
    });
    let misses: u64 = misses.iter().map(|(_, n)| n).sum();
    Lost {
        ringbuf: lost_counter(obj, LOST_RINGBUF),
        capacity: capacity_lost(obj) + lost_counter(obj, LOST_CAPACITY),
        skipped: unseen + misses.saturating_sub(rescued),
    }
}

/// The nested twins chosen for the tool's object, which it does not load itself ([`TwinJob`]).
static TWINS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Takes the nested twins out of `chosen` and out of `obj`'s load, and keeps their names for
/// [`TwinJob::take`]: they load in an object of their own once the tool is attached.
fn hold_back_twins(obj: &mut OpenObject, chosen: Vec<Choice>) -> Vec<Choice> {
    let (twins, chosen): (Vec<Choice>, Vec<Choice>) =
        chosen.into_iter().partition(|c| is_twin(&c.prog));
    for mut p in obj.progs_mut() {
        if is_twin(&p.name().to_string_lossy()) {
            p.set_autoload(false);
        }
    }
    *TWINS.lock().unwrap_or_else(|e| e.into_inner()) = twins.into_iter().map(|c| c.prog).collect();
    chosen
}

/// The nested twins of a loaded tool object (bpf/common.bpf.h, SET_STATE_PROG), to load on a thread in
/// a second instance of the same object that shares every map of the first (so the same counters,
/// records and ring), and attach there: the tool's start-up does not wait for their verification. Until
/// they are attached, the runs the kernel skips are counted as skipped, as without them.
pub struct TwinJob {
    progs: Vec<String>,
    /// every map of the tool's object by name, None for one it did not create
    maps: Vec<(String, Option<OwnedFd>)>,
}

impl TwinJob {
    /// The twins held back from `obj`'s load (none under the bench's toggled mode, which detaches and
    /// attaches the tool's own programs and would leave the twins attached).
    pub fn take(obj: &Object) -> Option<TwinJob> {
        let progs = std::mem::take(&mut *TWINS.lock().unwrap_or_else(|e| e.into_inner()));
        if progs.is_empty() || std::env::var_os("SOCKRAY_BENCH_TOGGLE").is_some() {
            return None;
        }
        let maps = obj
            .maps()
            .map(|m| {
                // SAFETY: the map pointer is valid for obj's lifetime; bpf_map__fd only reads it
                let fd = unsafe {
                    libbpf_rs::libbpf_sys::bpf_map__fd(
                        libbpf_rs::AsRawLibbpf::as_libbpf_object(&m).as_ptr(),
                    )
                };
                let owned = (fd >= 0)
                    .then(|| m.as_fd().try_clone_to_owned().ok())
                    .flatten();
                (m.name().to_string_lossy().into_owned(), owned)
            })
            .collect();
        Some(TwinJob { progs, maps })
    }

    /// In the second instance, opened: every map is the tool's (or not created, as there), and only the
    /// twins load.
    pub fn prepare(&self, obj: &mut OpenObject) -> Result<()> {
        for mut p in obj.progs_mut() {
            let on = self.progs.iter().any(|t| *t == *p.name().to_string_lossy());
            p.set_autoload(on);
        }
        for mut m in obj.maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            match self.maps.iter().find(|(n, _)| *n == name) {
                Some((_, Some(fd))) => m
                    .reuse_fd(fd.as_fd())
                    .with_context(|| format!("sharing map {name} with the nested twins"))?,
                Some((_, None)) => m.set_autocreate(false)?,
                None => bail!("the nested twins' object has a map the tool's lacks: {name}"),
            }
        }
        Ok(())
    }

    /// Attaches the twins of the loaded second instance and keeps them attached for the life of the
    /// process (this thread parks).
    pub fn attach_and_hold(self, obj: &Object) -> Result<std::convert::Infallible> {
        let mut links = Vec::new();
        for prog in obj.progs_mut() {
            if prog.autoload() {
                let name = prog.name().to_string_lossy().into_owned();
                links.push(prog.attach().with_context(|| format!("attaching {name}"))?);
            }
        }
        crate::cli::debug(format_args!(
            "{:.1} ms: nested twins attached ({})",
            since_start_ms(),
            self.progs.join(", ")
        ));
        loop {
            std::thread::park();
        }
    }
}

/// A nested twin (`<stem>_nested__<kind>`, bpf/common.bpf.h), which stands in for its primary.
pub fn is_twin(prog: &str) -> bool {
    prog.split_once("__")
        .is_some_and(|(group, _)| group.ends_with("_nested"))
}

/// State changes that reached no program of ours and that the kernel did not count as skipped either.
/// Seen on the 6.18 host: a softirq that runs in the context of a particular task (the VM's agent
/// thread) runs no BPF program at all, for tens of state changes in a row, while ftrace and perf record
/// every one (issue 19). So the tracepoint's own count is kept beside the programs': a counting perf
/// event per CPU on sock:inet_sock_set_state, opened once the state program is attached, against that
/// program's runs (`STATE_RUNS`, counted at its entry) and its `recursion_misses` since then. The
/// programs' side is read after the counters open and before they are read at exit, so a change
/// between two reads counts as made and not seen: at most an over-estimate by the changes of a few
/// microseconds ("up to N events are missing"), never a loss left out (in an earlier order, one
/// change in a burst test went uncounted that way).
pub struct UnseenCount {
    perf: Vec<OwnedFd>,
    prog: String,
    runs0: u64,
    misses0: u64,
}

static UNSEEN: std::sync::OnceLock<UnseenCount> = std::sync::OnceLock::new();

/// The tracepoint whose changes are counted both ways.
const STATE_TRACEPOINT: &str = "sock/inet_sock_set_state";

impl UnseenCount {
    /// After attach: when `obj` has a state program attached (SET_STATE_PROG), opens the counters.
    /// Where perf events cannot be opened, nothing is counted (said with --verbose).
    pub fn start(obj: &Object) {
        // the bench's toggled tracer detaches its programs while the tracepoint keeps firing
        if std::env::var_os("SOCKRAY_BENCH_TOGGLE").is_some() {
            return;
        }
        let Some(prog) = obj.progs().find(|p| {
            p.autoload() && {
                let (_, target) = attach::parse_section(&p.section().to_string_lossy());
                target == "inet_sock_set_state"
            }
        }) else {
            return;
        };
        let name = prog.name().to_string_lossy().into_owned();
        // the counters first, then the programs' side: a change between the two counts as made and
        // not seen (an over-estimate by the changes of a few microseconds), never the other way
        match Self::open_counters() {
            Ok(perf) => {
                let u = UnseenCount {
                    perf,
                    runs0: lost_counter(obj, STATE_RUNS),
                    misses0: prog_recursion_misses(prog.as_fd()),
                    prog: name,
                };
                let _ = UNSEEN.set(u);
            }
            Err(_) if attach::tracefs_unreadable() => crate::cli::say(format_args!(
                "sockray: state changes the kernel skipped are not counted: {}",
                attach::tracefs_missing()
            )),
            Err(e) => crate::cli::debug(format_args!(
                "not counting state changes no program saw: {e:#}"
            )),
        }
    }

    /// A counting perf event on the state tracepoint per online CPU.
    fn open_counters() -> Result<Vec<OwnedFd>> {
        use libbpf_rs::libbpf_sys;
        let root = attach::tracefs_root().ok_or_else(|| anyhow!("tracefs is not mounted"))?;
        let id: u64 = std::fs::read_to_string(format!("{root}/events/{STATE_TRACEPOINT}/id"))?
            .trim()
            .parse()?;
        let cpus = libbpf_rs::num_possible_cpus()?;
        let mut fds = Vec::new();
        for cpu in 0..cpus {
            let attr = libbpf_sys::perf_event_attr {
                type_: libbpf_sys::PERF_TYPE_TRACEPOINT,
                size: size_of::<libbpf_sys::perf_event_attr>() as u32,
                config: id,
                ..Default::default()
            };
            // SAFETY: attr is a valid perf_event_attr of the size it says; the kernel copies it.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    &attr as *const libbpf_sys::perf_event_attr,
                    -1i32,
                    cpu as i32,
                    -1i32,
                    libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                // a possible CPU that is offline has no events to count
                if e.raw_os_error() == Some(libc::ENODEV) {
                    continue;
                }
                return Err(e).context(format!("perf_event_open on CPU {cpu}"));
            }
            // SAFETY: a new file descriptor that nothing else owns
            fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        Ok(fds)
    }

    /// Changes the tracepoint made since [`UnseenCount::start`] that the program neither ran for nor
    /// was counted as skipped for, given its `runs` (STATE_RUNS) and `misses` read just before.
    fn unseen(&self, runs: u64, misses: u64) -> u64 {
        let made: u64 = self
            .perf
            .iter()
            .map(|fd| {
                let mut n = 0u64;
                // SAFETY: reads 8 bytes (the count; read_format 0) into n
                let r = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        (&mut n as *mut u64).cast(),
                        size_of::<u64>(),
                    )
                };
                if r == size_of::<u64>() as isize { n } else { 0 }
            })
            .sum();
        let seen = runs.saturating_sub(self.runs0) + misses.saturating_sub(self.misses0);
        let unseen = made.saturating_sub(seen);
        if unseen > 0 {
            crate::cli::debug(format_args!(
                "{unseen} of {made} state changes reached no program (its runs and skips: {seen})"
            ));
        }
        unseen
    }
}

/// The socket-owner slot table's count of sockets whose records were lost (its header, slot 0).
fn capacity_lost(obj: &Object) -> u64 {
    let Some(map) = obj.maps().find(|m| m.name() == "sock_slots") else {
        return 0;
    };
    match map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(v)) => read_event::<seedskel::types::sock_slots_hdr>(&v).map_or(0, |h| h.lost),
        _ => 0,
    }
}

/// Slots of the `lost_events` per-CPU counters (bpf/common.bpf.h).
const LOST_RINGBUF: u32 = 0;
const LOST_CAPACITY: u32 = 1;
const STATE_RUNS: u32 = 2;
const LOST_RESCUED: u32 = 3;

/// One of the `lost_events` counters, summed over the CPUs.
fn lost_counter(obj: &Object, slot: u32) -> u64 {
    let Some(map) = obj.maps().find(|m| m.name() == "lost_events") else {
        return 0;
    };
    match map.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(per_cpu)) => per_cpu
            .iter()
            .map(|v| {
                v.get(..8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0)
            })
            .sum(),
        _ => 0,
    }
}

/// A loaded program's `recursion_misses` (0 before Linux 5.12, which does not count them).
fn prog_recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    prog_info(fd).map_or(0, |i| i.recursion_misses)
}

/// The kernel's fixed facts and counters of a loaded program (run_cnt and run_time_ns count while
/// BPF statistics are on: `sysctl kernel.bpf_stats_enabled`, or an fd from BPF_ENABLE_STATS).
pub fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<libbpf_rs::libbpf_sys::bpf_prog_info> {
    use libbpf_rs::libbpf_sys;
    use std::os::fd::AsRawFd;
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info is a bpf_prog_info of len bytes with every pointer field zero (nothing is copied out
    // but the fixed fields).
    let rc = unsafe {
        libbpf_sys::bpf_obj_get_info_by_fd(
            fd.as_raw_fd(),
            (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// Copies an event out of ring-buffer bytes into its skeleton type.
pub fn read_event<T: Copy>(data: &[u8]) -> Option<T> {
    if data.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a plain C struct from the skeleton (any bit pattern is valid).
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr() as *const T) })
}

/// The longest a record waits in the ring buffer before it is read, written and flushed: the reader's
/// poll timeout. The BPF side wakes the reader only once per 128 KiB of records (`event_submit` in
/// bpf/common.bpf.h: a wake-up per record costs the traced CPU an irq_work, a self-IPI), so a poll that
/// times out has seen no wake-up, and the records below the next mark would wait for it: at a trickle of
/// events, for ever. So every poll, woken or timed out, ends with a consume of whatever the ring holds.
/// Under a flood nothing changes (the marks wake the reader as before, and a consume of an empty ring
/// reads two positions from shared memory, no system call); at a trickle every record reaches the
/// output within this bound, and an idle tracer wakes 20 times a second.
pub const MAX_EVENT_DELAY: Duration = Duration::from_millis(50);

/// The loop of the interval tools (softirqs, tcpsynbl, tcprtt, tcpcong, tcptop, ...): `on_tick(n, last)`
/// every `every` (none: only at the end) until `count` ticks or the `duration`; then, when it stopped
/// for another reason (Ctrl-C, SIGTERM, SIGHUP, the duration, no interval), once more with `last` set,
/// for what came since the last tick (the tool decides whether a partial interval is printed).
/// `on_event` gets the ring buffer's records, as [`event_loop`]'s.
pub fn interval_loop(
    obj: &Object,
    on_event: impl FnMut(&[u8]) -> std::io::Result<()>,
    every: Option<Duration>,
    count: Option<u64>,
    duration: Option<Duration>,
    mut on_tick: impl FnMut(u64, bool) -> Result<()>,
) -> Result<()> {
    let mut ticks = 0u64;
    let mut counted_out = false;
    event_loop(
        obj,
        on_event,
        every,
        || {
            ticks += 1;
            on_tick(ticks, false)?;
            counted_out = count.is_some_and(|c| ticks >= c);
            Ok(!counted_out)
        },
        duration,
    )?;
    if !counted_out {
        on_tick(ticks + 1, true)?;
    }
    Ok(())
}

/// Polls the `events` ring buffer until SIGINT/SIGTERM/SIGHUP, the optional duration, or a closed
/// pipe; every record is handled, and its output flushed, within [`MAX_EVENT_DELAY`].
/// `on_event` gets each record; `on_tick` runs every `tick` (interval tools), and returns false to stop.
pub fn event_loop(
    obj: &Object,
    mut on_event: impl FnMut(&[u8]) -> std::io::Result<()>,
    tick: Option<Duration>,
    mut on_tick: impl FnMut() -> Result<bool>,
    duration: Option<Duration>,
) -> Result<()> {
    crate::output::widen_stdout_pipe();
    let events = obj.maps().find(|m| m.name() == "events");
    let failure: std::cell::RefCell<Option<std::io::Error>> = std::cell::RefCell::new(None);
    let mut builder = RingBufferBuilder::new();
    if let Some(map) = &events {
        builder.add(map, |data: &[u8]| match on_event(data) {
            Ok(()) => 0,
            Err(e) => {
                *failure.borrow_mut() = Some(e);
                -1
            }
        })?;
    }
    let rb = if events.is_some() {
        Some(builder.build()?)
    } else {
        None
    };
    let failed = |rc: i32, what: &str| -> Result<()> {
        if let Some(e) = failure.borrow_mut().take() {
            return Err(e.into());
        }
        if rc < 0 && rc != -libc::EINTR {
            bail!("{what}: {}", std::io::Error::from_raw_os_error(-rc));
        }
        Ok(())
    };
    let start = Instant::now();
    let end = duration.map(|d| start + d);
    let mut next_tick = tick.map(|t| start + t);
    while !stopped() {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        // wake for the next tick or the end, when sooner than the delay bound
        let wait = [next_tick, end]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .fold(MAX_EVENT_DELAY, Duration::min);
        match &rb {
            Some(rb) => {
                failed(rb.poll_raw(wait), "reading events")?;
                // what arrived below the next wake-up mark (see MAX_EVENT_DELAY)
                failed(rb.consume_raw(), "reading events")?;
            }
            None => std::thread::sleep(wait),
        }
        if let (Some(t), Some(at)) = (tick, next_tick)
            && Instant::now() >= at
        {
            next_tick = Some(at + t);
            if !on_tick()? {
                break;
            }
        }
        crate::output::flush_batch()?;
        if stdout_reader_gone() {
            // `| head -1` is satisfied: stop now, not at the next event
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
        }
    }
    // drain what is already in the buffer
    if let Some(rb) = &rb {
        failed(rb.consume_raw(), "reading events")?;
    }
    crate::output::flush_batch()?;
    Ok(())
}

/// True when stdout is a pipe or socket whose reader has gone away (poll reports an error/hang-up).
fn stdout_reader_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// The end of every run: the lost-event count on stderr (when any) and as the last JSON record.
pub fn report_lost(printer: &mut Printer, tool: &str, lost: Lost) -> Result<()> {
    if let Some(m) = lost.message(tool) {
        crate::cli::say(format_args!("{m}"));
    }
    printer.json_record(&vec![
        ("lost", Value::U(lost.total())),
        ("lost_ringbuf", Value::U(lost.ringbuf)),
        ("lost_skipped", Value::U(lost.skipped)),
        ("lost_capacity", Value::U(lost.capacity)),
    ])?;
    printer.flush()?;
    Ok(())
}

/// Result of a tool's run, with a closed stdout (the reader went away, or the terminal hung up) counted
/// as success.
pub fn finish(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        Err(e) if HANGUP.load(Ordering::SeqCst) && is_io_error(&e) => Ok(()),
        other => other,
    }
}

/// EIO: what a write to a terminal that hung up gives.
fn is_io_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EIO))
    })
}

/// With --verbose, the line that says the tool is attached and its rows are live from now on, with its
/// start-up time (the tests wait for it).
pub fn say_ready(verbose: bool) {
    if verbose {
        crate::cli::say(format_args!(
            "sockray: ready ({:.1} ms after start)",
            since_start_ms()
        ));
    }
}

/// The body of a counting run (`-c`): says it is tracing (stderr, BCC's words), then waits until
/// SIGINT/SIGTERM/SIGHUP; the counts are in the tool's maps.
pub fn wait_for_stop(obj: &Object, tracing: &str, verbose: bool) -> Result<()> {
    crate::cli::say(format_args!("{tracing}"));
    say_ready(verbose);
    event_loop(obj, |_| Ok(()), None, || Ok(true), None)
}

/// Every entry of a counting hash map whose values are `u64` counts, keys as the skeleton type `K`.
pub fn map_counts<K: Copy>(map: &impl MapCore) -> Result<Vec<(K, u64)>> {
    let mut out = Vec::new();
    for key in map.keys() {
        let Some(k) = read_event::<K>(&key) else {
            continue;
        };
        // an entry deleted meanwhile is simply gone
        if let Some(v) = map.lookup(&key, MapFlags::ANY)?
            && let Some(n) = read_event::<u64>(&v)
        {
            out.push((k, n));
        }
    }
    Ok(out)
}

/// Every entry of a per-CPU hash map: its key as the skeleton type `K`, and its value on each CPU as `V`.
pub fn map_percpu_entries<K: Copy, V: Copy>(map: &impl MapCore) -> Result<Vec<(K, Vec<V>)>> {
    let mut out = Vec::new();
    for key in map.keys() {
        let Some(k) = read_event::<K>(&key) else {
            continue;
        };
        // an entry deleted meanwhile is simply gone
        if let Some(per_cpu) = map.lookup_percpu(&key, MapFlags::ANY)? {
            out.push((
                k,
                per_cpu.iter().filter_map(|v| read_event::<V>(v)).collect(),
            ));
        }
    }
    Ok(out)
}

/// The common body of a tool that prints one line per event: says it is ready (--verbose), prints the
/// header, turns each ring-buffer record of type `T` into a row until stopped, then reports lost events.
pub fn print_events<T: Copy>(
    obj: &Object,
    tool: &str,
    verbose: bool,
    printer: &mut Printer,
    duration: Option<Duration>,
    mut row: impl FnMut(&T) -> Option<(u64, crate::output::Fields)>,
) -> Result<()> {
    say_ready(verbose);
    printer.header()?;
    let looped = event_loop(
        obj,
        |data| match read_event::<T>(data).and_then(|e| row(&e)) {
            Some((ts, fields)) => printer.event(Some(ts), &fields),
            None => Ok(()),
        },
        None,
        || Ok(true),
        duration,
    );
    looped?;
    report_lost(printer, tool, lost_events(obj))
}

#[cfg(test)]
mod tests {
    use super::{Lost, is_twin, slot_mask_of};

    #[test]
    fn sock_map_sizing() {
        use super::{mem_total_kib, sock_map_entries, tcp_sockets_allocated};
        let stat = "sockets: used 250\nTCP: inuse 5 orphan 0 tw 2 alloc 120000 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(tcp_sockets_allocated(stat), Some(120_000));
        assert_eq!(tcp_sockets_allocated("UDP: inuse 1\n"), None);
        assert_eq!(
            mem_total_kib("MemTotal:       24576000 kB\n"),
            Some(24_576_000)
        );
        // the flag wins
        assert_eq!(
            sock_map_entries(Some(64), 65_536, Some(1_000_000), None),
            64
        );
        // a quiet machine: the default
        assert_eq!(
            sock_map_entries(None, 65_536, Some(7), Some(24_576_000)),
            65_536
        );
        // with socket-local storage, room for the seeded sockets only
        assert_eq!(
            sock_map_entries(None, super::SEEDED_ONLY_FLOOR, Some(7), Some(24_576_000)),
            4096
        );
        assert_eq!(
            sock_map_entries(None, super::SEEDED_ONLY_FLOOR, Some(5000), Some(24_576_000)),
            16_384
        );
        assert_eq!(sock_map_entries(None, 65_536, None, None), 65_536);
        // a busy one: twice its sockets, rounded up to a power of two
        assert_eq!(
            sock_map_entries(None, 65_536, Some(120_000), Some(24_576_000)),
            262_144
        );
        // never more than one per 4 KiB of memory
        assert_eq!(
            sock_map_entries(None, 65_536, Some(10_000_000), Some(1_048_576)),
            262_144
        );
    }

    #[test]
    fn nested_twins_by_name() {
        assert!(is_twin("tcplife_set_state_nested__btf"));
        assert!(is_twin("tcpstates_set_state_nested__raw"));
        assert!(!is_twin("tcplife_set_state__btf"));
        assert!(!is_twin("sockowner_nested"));
        assert!(!is_twin("nested__btf_x_nested"));
    }

    #[test]
    fn ring_sizing() {
        use super::ring_bytes;
        const MIB: u64 = 1 << 20;
        let mem = Some(24_576_000); // 23.4 GiB
        // a laptop: the object's 1 MiB
        assert_eq!(ring_bytes(MIB, 128, None, Some(300), mem), 1 << 20);
        assert_eq!(ring_bytes(MIB, 128, None, None, None), 1 << 20);
        // a server with 120,000 sockets: 15.4 MB, rounded up; three records a socket: 46 MB
        assert_eq!(ring_bytes(MIB, 128, None, Some(120_000), mem), 16 << 20);
        assert_eq!(ring_bytes(MIB, 384, None, Some(120_000), mem), 64 << 20);
        // --max-sockets for sockets that do not exist yet, the larger of the two
        assert_eq!(
            ring_bytes(MIB, 64, Some(1_000_000), Some(120_000), mem),
            64 << 20
        );
        assert_eq!(ring_bytes(MIB, 128, Some(16), Some(120_000), mem), 16 << 20);
        // at most 128 MiB, and 1/128 of memory, a power of two below it
        assert_eq!(ring_bytes(MIB, 128, Some(u32::MAX), None, mem), 128 << 20);
        assert_eq!(
            ring_bytes(MIB, 128, Some(1_000_000), None, Some(4_000_000)),
            16 << 20
        );
        // never below the object's own
        assert_eq!(
            ring_bytes(MIB, 128, Some(1_000_000), None, Some(1000)),
            1 << 20
        );
    }

    #[test]
    fn slot_mask_setting() {
        assert_eq!(slot_mask_of(None), u32::MAX);
        assert_eq!(slot_mask_of(Some("1")), 0);
        assert_eq!(slot_mask_of(Some("2")), 1);
        assert_eq!(slot_mask_of(Some("16384")), 16383);
        // not a power of two, not a number: every slot
        for bad in ["3", "0", "many", ""] {
            assert_eq!(slot_mask_of(Some(bad)), u32::MAX, "{bad}");
        }
    }

    #[test]
    fn lost_message_names_each_cause() {
        assert_eq!(Lost::default().message("tcplife"), None);
        let l = Lost {
            ringbuf: 2,
            ..Lost::default()
        };
        assert_eq!(
            l.message("tcplife").unwrap(),
            "sockray: tcplife: lost 2 events (ring buffer full: the reader fell behind)"
        );
        let l = Lost {
            ringbuf: 1,
            skipped: 3,
            capacity: 4,
        };
        let m = l.message("tcpstates").unwrap();
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(lines.len(), 3, "{m}");
        assert!(lines[2].starts_with("sockray: tcpstates: 4 records could not be kept"));
        assert!(lines[0].starts_with("sockray: tcpstates: lost 1 events (ring buffer full"));
        assert!(lines[1].starts_with("sockray: tcpstates: the kernel skipped 3 runs"));
        assert!(lines[1].ends_with("up to 3 events are missing"));
    }
}
