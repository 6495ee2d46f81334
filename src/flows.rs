//! Bytes per flow, counted in the kernel (bpf/tcptop.bpf.c): the machinery tcptop and tcpsubnet share.
//! The BPF programs add into whichever of two hash maps the one-slot array of maps `flows` points at;
//! [`FlowCounter::take`] points it at the other (the kernel returns from that update only after an RCU
//! grace period, when no program can still be writing into the old one), then drains the old one. No
//! count is lost between the read and the clear, and the entries of flows that ended are freed each
//! interval.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapFlags};

/// `--max-flows`: tcptop's and tcpsubnet's room for flows per interval.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FlowTable {
    /// room for this many flows (process and both ends) per interval (--walk: and sockets whose last
    /// counters are kept); a flow that finds no room is counted (lost_capacity); default: 16,384, or
    /// twice the TCP sockets at start when there are more
    #[arg(long = "max-flows", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: Option<u32>,
}

/// The flow table's default room (bpf/tcptop.bpf.c's `max_entries`).
const FLOWS_FLOOR: u64 = 16_384;

impl FlowTable {
    /// Sizes both flow maps (and the array of maps' template) before the tool loads.
    /// `walk`: --walk's object, whose last-seen counters per socket (walk_seen) are sized the same.
    pub fn apply(&self, walk: bool) {
        let n = crate::runtime::flow_entries(self.max_flows, FLOWS_FLOOR);
        let seen = if walk {
            format!(",walk_seen={n}")
        } else {
            String::new()
        };
        crate::runtime::set_map_entries(
            format!("flows={n},flows_a={n},flows_b={n}{seen}"),
            "raise it with --max-flows N",
        );
    }
}

pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcptop.skel.rs"));
}
pub use skel::{TcptopSkelBuilder, types};

/// `--walk`'s object (bpf/tcpwalk.bpf.c): the same flow maps, filled from the sockets' own counters.
pub mod walkskel {
    include!(concat!(env!("OUT_DIR"), "/tcpwalk.skel.rs"));
}

/// The number of tcp_recvmsg's parameters in the running kernel's BTF (5 since Linux 5.19, 6 before),
/// for the fallback that reads its return value (bpf/tcptop.bpf.c); 0 when not known, or when the
/// kernel has sock:sock_recv_length (6.3+), which is used instead.
pub fn recvmsg_nargs() -> u32 {
    if crate::attach::tracepoint_in_kernel("sock_recv_length") {
        return 0;
    }
    // SAFETY: libbpf's BTF API: the loaded BTF is freed before return, the type pointers it gives are
    // read only while it lives.
    unsafe {
        let btf = libbpf_sys::btf__load_vmlinux_btf();
        if btf.is_null() || (btf as isize) < 0 && (btf as isize) > -4096 {
            return 0;
        }
        let id = libbpf_sys::btf__find_by_name_kind(
            btf,
            c"tcp_recvmsg".as_ptr(),
            libbpf_sys::BTF_KIND_FUNC,
        );
        let mut n = 0;
        if id > 0 {
            let func = libbpf_sys::btf__type_by_id(btf, id as u32);
            if !func.is_null() {
                let proto = libbpf_sys::btf__type_by_id(btf, (*func).__bindgen_anon_1.type_);
                if !proto.is_null() {
                    n = (*proto).info & 0xffff;
                }
            }
        }
        libbpf_sys::btf__free(btf);
        crate::cli::debug(format_args!("tcp_recvmsg has {n} parameters (BTF)"));
        n
    }
}

/// One flow's counts over an interval.
#[derive(Clone, Copy)]
pub struct Flow {
    pub key: types::tcptop_key,
    pub val: types::tcptop_val,
}

/// Which of the two inner maps the programs write into.
pub struct FlowCounter {
    active_b: bool,
}

impl FlowCounter {
    pub fn new() -> FlowCounter {
        // the object starts with flows_a in the slot (bpf/tcptop.bpf.c)
        FlowCounter { active_b: false }
    }

    /// Everything counted since the last call, and the retired map emptied.
    pub fn take(&mut self, maps: &skel::TcptopMaps) -> Result<Vec<Flow>> {
        self.take_from(&maps.flows, &maps.flows_a, &maps.flows_b)
    }

    /// [`take`](Self::take) for either object's maps: the slot and its two inner maps.
    pub fn take_from<M: MapCore>(
        &mut self,
        slot: &impl MapCore,
        a: &M,
        b: &M,
    ) -> Result<Vec<Flow>> {
        let fd = if self.active_b { a } else { b }.as_fd().as_raw_fd() as u32;
        // waits for every program that may still hold the retired map (synchronize_rcu in the kernel)
        slot.update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .context("switching the flow maps")?;
        self.active_b = !self.active_b;
        if self.active_b { drain(a) } else { drain(b) }
    }
}

/// tcptop's and tcpsubnet's counting, loaded: the send/recv hooks (the default), or `--walk`'s socket
/// walk (bpf/tcpwalk.bpf.c), whose iterator runs once at start (the baselines) and before each read.
pub enum Counting<'obj> {
    Hooks {
        skel: skel::TcptopSkel<'obj>,
        _links: Vec<libbpf_rs::Link>,
    },
    Walk {
        skel: walkskel::TcpwalkSkel<'obj>,
        _links: Vec<libbpf_rs::Link>,
        delta: libbpf_rs::Link,
    },
}

/// Runs an iterator link's program over every TCP socket once, in every network namespace: a tcp
/// iterator walks the namespace of the thread that creates it, so this thread enters each namespace a
/// process is in (found by /proc/PID/ns/net, each once) to create one, and comes back. A namespace
/// that no process is in (bind-mounted only) holds no socket of a process; its sessions are still
/// counted at their CLOSE.
fn run_walk(link: &libbpf_rs::Link) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let drain = |it: &mut libbpf_rs::Iter| -> Result<()> {
        std::io::copy(it, &mut std::io::sink()).context("walking the TCP sockets")?;
        Ok(())
    };
    let started = std::time::Instant::now();
    let own = std::fs::File::open("/proc/thread-self/ns/net").context("this thread's netns")?;
    let mut seen = std::collections::HashSet::new();
    seen.insert(own.metadata()?.ino());
    drain(&mut libbpf_rs::Iter::new(link).context("starting the socket walk")?)?;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let path = std::path::Path::new("/proc").join(&name).join("ns/net");
        // a process that exited meanwhile, or a kernel thread: nothing to walk
        let md = match std::fs::metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    not_walked("see another user's process's /proc/PID/ns/net: CAP_SYS_PTRACE");
                }
                continue;
            }
        };
        if !seen.insert(md.ino()) {
            continue;
        }
        let ns = match std::fs::File::open(&path) {
            Ok(ns) => ns,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    not_walked("open /proc/PID/ns/net of another user's process: CAP_SYS_PTRACE");
                }
                continue;
            }
        };
        // SAFETY: setns on open namespace files; this thread only, and back to its own before return
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                not_walked("enter another network namespace (setns): CAP_SYS_ADMIN");
            }
            continue;
        }
        let it = libbpf_rs::Iter::new(link);
        // SAFETY: as above
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!(
                "returning to the tool's network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        drain(&mut it.context("starting the socket walk")?)?;
    }
    crate::cli::debug(format_args!(
        "walked the TCP sockets of {} network namespaces in {:?}",
        seen.len(),
        started.elapsed()
    ));
    Ok(())
}

/// Says once (stderr) that the sockets of other network namespaces are not walked, for want of the
/// capability `what` names: their bytes are counted only when they close.
fn not_walked(what: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        crate::cli::say(format_args!(
            "sockray: --walk: the sockets of other network namespaces are not all walked (to {what}); \
             their bytes are counted when they close"
        ));
    }
}

impl<'obj> Counting<'obj> {
    /// Loads and attaches tool's counting (`walk`: the socket walk), the filters in the kernel;
    /// `send_only`: the send hooks only (tcpsubnet).
    pub fn load(
        storage: &'obj mut std::mem::MaybeUninit<libbpf_rs::OpenObject>,
        walk: bool,
        send_only: bool,
        tool: &str,
        common: &crate::cli::Common,
        filters: &crate::filter::Filters,
    ) -> Result<Counting<'obj>> {
        use crate::cli::load_tool;
        if !walk {
            let nargs = recvmsg_nargs();
            let (skel, links) = load_tool!(
                TcptopSkelBuilder,
                storage,
                tool,
                common,
                filters,
                |ro: &mut types::rodata| ro.recvmsg_nargs = nargs,
                |prog: &str| send_only && prog.starts_with("tcptop_recv")
            );
            return Ok(Counting::Hooks {
                skel,
                _links: links,
            });
        }
        let (skel, links) = load_tool!(
            walkskel::TcpwalkSkelBuilder,
            storage,
            tool,
            common,
            filters,
            |_: &mut walkskel::types::rodata| {},
            // no hook on the data path, nor on every syscall: the socket-owner refresh is left out,
            // both its per-recv hook (6.3+) and its alternative, the accept() syscall tracepoints
            // (enabling any syscall tracepoint puts every syscall of the machine on the slow path:
            // 7.3% of the bench's transfer, against 0.5% without). An accepted socket is then its
            // listener's owner's until its process closes or shuts it down (which names it).
            |prog: &str| prog.starts_with("sockowner_refresh")
        );
        let base = skel
            .progs
            .tcpwalk_base
            .attach()
            .context("attaching the socket walk (iter/tcp, Linux 5.9+)")?;
        let delta = skel
            .progs
            .tcpwalk_delta
            .attach()
            .context("attaching the socket walk (iter/tcp, Linux 5.9+)")?;
        // the baselines: every socket's counters now (the socket owners are seeded by then)
        run_walk(&base)?;
        Ok(Counting::Walk {
            skel,
            _links: links,
            delta,
        })
    }

    pub fn object(&self) -> &libbpf_rs::Object {
        use libbpf_rs::skel::Skel as _;
        match self {
            Counting::Hooks { skel, .. } => skel.object(),
            Counting::Walk { skel, .. } => skel.object(),
        }
    }

    /// The flows since the last call (walk mode: the sockets walked first).
    pub fn take(&self, counter: &mut FlowCounter) -> Result<Vec<Flow>> {
        match self {
            Counting::Hooks { skel, .. } => counter.take(&skel.maps),
            Counting::Walk { skel, delta, .. } => {
                run_walk(delta)?;
                let m = &skel.maps;
                counter.take_from(&m.flows, &m.flows_a, &m.flows_b)
            }
        }
    }
}

impl Default for FlowCounter {
    fn default() -> Self {
        Self::new()
    }
}

fn parse(k: &[u8], v: &[u8]) -> Option<Flow> {
    Some(Flow {
        key: crate::runtime::read_event(k)?,
        val: crate::runtime::read_event(v)?,
    })
}

/// Reads and deletes every entry of a map no program writes into any more: in batches (Linux 5.6+),
/// else one key at a time.
fn drain(map: &impl MapCore) -> Result<Vec<Flow>> {
    const BATCH: u32 = 1024;
    let ks = map.key_size() as usize;
    let vs = map.value_size() as usize;
    let mut out = Vec::new();
    let mut keys = vec![0u8; ks * BATCH as usize];
    let mut vals = vec![0u8; vs * BATCH as usize];
    let mut token = vec![0u8; ks];
    let mut first = true;
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    loop {
        let mut count = BATCH;
        let mut next = vec![0u8; ks];
        // SAFETY: buffers sized for BATCH keys and values; the tokens are key-sized.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_and_delete_batch(
                map.as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    token.as_mut_ptr().cast()
                },
                next.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                vals.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        // libbpf returns -errno
        let err = if rc < 0 { -rc } else { 0 };
        if err != 0 && err != libc::ENOENT {
            if first && out.is_empty() {
                // no batch operations here: one key at a time
                return drain_by_key(map);
            }
            return Err(std::io::Error::from_raw_os_error(err)).context("reading the flow map");
        }
        for i in 0..count as usize {
            if let Some(f) = parse(&keys[i * ks..(i + 1) * ks], &vals[i * vs..(i + 1) * vs]) {
                out.push(f);
            }
        }
        if err == libc::ENOENT {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

fn drain_by_key(map: &impl MapCore) -> Result<Vec<Flow>> {
    let keys: Vec<Vec<u8>> = map.keys().collect();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(v) = map.lookup(&k, MapFlags::ANY)?
            && let Some(f) = parse(&k, &v)
        {
            out.push(f);
        }
        let _ = map.delete(&k);
    }
    Ok(out)
}
