//! Attach strategy: for every hook a tool needs, pick the best kind the running kernel offers, by probing
//! the kernel (never by version number), and switch the other alternatives off before load.
//!
//! Convention in `bpf/*.bpf.c`: alternatives for one hook are programs named `<stem>__<kind>`
//! (e.g. `tcplife_set_state__btf`, `tcplife_set_state__raw`); a program without `__` stands alone.
//! Preference: tp_btf > raw_tp > tracepoint > fentry/fexit > kprobe/kretprobe. A group may hold several
//! programs of one kind: they are taken together, when the kernel has all of them (e.g. the
//! socket-owner refresh: one tp_btf program, or else two syscall tracepoints).
//! Programs named `sockowner_*` or `opt_*` are optional: when the kernel offers none of their kinds they
//! are switched off (said with --verbose) instead of failing the tool. `iter/` programs are run by the
//! runtime, not attached.
//!
//! `SOCKRAY_ATTACH=tracepoint|tp_btf|raw_tp|fentry|kprobe` forces a path where a hook has it (tests use this
//! to exercise every fallback on kernels that have them).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Result, bail};
use libbpf_rs::OpenObject;
use libbpf_rs::libbpf_sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    TpBtf,
    RawTp,
    Tracepoint,
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
    Iter,
    Other,
}

impl Kind {
    fn rank(self) -> u8 {
        match self {
            Kind::TpBtf => 0,
            Kind::RawTp => 1,
            Kind::Tracepoint => 2,
            Kind::Fentry | Kind::Fexit => 3,
            Kind::Kprobe | Kind::Kretprobe => 4,
            Kind::Iter | Kind::Other => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::TpBtf => "tp_btf",
            Kind::RawTp => "raw_tp",
            Kind::Tracepoint => "tracepoint",
            Kind::Fentry => "fentry",
            Kind::Fexit => "fexit",
            Kind::Kprobe => "kprobe",
            Kind::Kretprobe => "kretprobe",
            Kind::Iter => "iter",
            Kind::Other => "other",
        }
    }

    /// Does a forced path (`SOCKRAY_ATTACH`) name this kind?
    fn in_path(self, path: &str) -> bool {
        match path {
            "tracepoint" => matches!(self, Kind::TpBtf | Kind::RawTp | Kind::Tracepoint),
            "tp_btf" => self == Kind::TpBtf,
            "raw_tp" => self == Kind::RawTp,
            "fentry" => matches!(self, Kind::Fentry | Kind::Fexit),
            "kprobe" => matches!(self, Kind::Kprobe | Kind::Kretprobe),
            _ => false,
        }
    }
}

/// A program's hook, from its ELF section name.
pub fn parse_section(sec: &str) -> (Kind, String) {
    let (head, target) = sec.split_once('/').unwrap_or((sec, ""));
    let kind = match head {
        "tp_btf" => Kind::TpBtf,
        "raw_tp" | "raw_tracepoint" => Kind::RawTp,
        "tp" | "tracepoint" => Kind::Tracepoint,
        "fentry" => Kind::Fentry,
        "fexit" => Kind::Fexit,
        "kprobe" => Kind::Kprobe,
        "kretprobe" => Kind::Kretprobe,
        "iter" => Kind::Iter,
        _ => Kind::Other,
    };
    (kind, target.to_string())
}

/// The kernel feature behind a hook, for error messages.
pub fn hook_hint(target: &str) -> &'static str {
    let name = target.rsplit('/').next().unwrap_or(target);
    match name {
        "inet_sock_set_state" => "tracepoint sock:inet_sock_set_state, Linux 4.16+",
        "sock_send_length" | "sock_recv_length" => {
            "tracepoint sock:sock_send_length/sock_recv_length, Linux 6.3+"
        }
        "tcp_cong_state_set"
        | "tcp_fastretrans_alert"
        | "tcp_enter_cwr"
        | "tcp_enter_loss"
        | "tcp_enter_recovery"
        | "tcp_process_tlp_ack" => {
            "tracepoint tcp:tcp_cong_state_set, Linux 5.19+ (of the test matrix, 6.1+); else fexit \
             (BPF trampolines, allowed by the kernel) on tcp_fastretrans_alert, tcp_enter_cwr, \
             tcp_enter_loss, tcp_enter_recovery and tcp_process_tlp_ack"
        }
        "kfree_skb" => "tracepoint skb:kfree_skb (drop reasons: Linux 5.17+)",
        "tcp_retransmit_skb" | "tcp_retransmit_synack" => {
            "tracepoints tcp:tcp_retransmit_skb/tcp_retransmit_synack, Linux 4.16+"
        }
        "tcp_send_loss_probe" => {
            "tail loss probes have no tracepoint: fentry (BPF trampolines, Linux 5.5+, allowed by the \
             kernel) or a kprobe (CONFIG_KPROBES) on the kernel function tcp_send_loss_probe"
        }
        n if n.starts_with("sys_e") => "syscall tracepoints (CONFIG_FTRACE_SYSCALLS)",
        _ => "a kernel hook this tool needs",
    }
}

pub fn tracefs_root() -> Option<&'static str> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|p| Path::new(p).join("events").is_dir())
}

/// Where tracefs is mounted, from the mount table (readable by every user, unlike tracefs itself, whose
/// root is mode 700 by default): None when it is not mounted.
pub fn tracefs_mount() -> Option<String> {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    AT.get_or_init(|| {
        let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mount_of_type(&table, "tracefs")
    })
    .clone()
}

/// The first mount point of a file-system type in /proc/self/mountinfo's text.
fn mount_of_type(mountinfo: &str, fstype: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some(fstype))
            .then(|| left.split_whitespace().nth(4).map(str::to_string))
            .flatten()
    })
}

/// Is tracefs mounted but unreadable by this user (a user with CAP_BPF+CAP_PERFMON only: its root is
/// mode 700)? Then classic tracepoints cannot be attached, though the kernel has them.
pub fn tracefs_unreadable() -> bool {
    tracefs_root().is_none() && tracefs_mount().is_some()
}

/// Why a classic tracepoint cannot be used here for want of tracefs (its id, which perf_event_open
/// needs, is read there; typed and raw tracepoints need no tracefs).
pub fn tracefs_missing() -> String {
    match tracefs_mount() {
        Some(at) => format!(
            "tracefs ({at}) is not readable by this user (uid {}): a classic tracepoint's id is read \
             there; run as root, or add CAP_DAC_READ_SEARCH",
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() }
        ),
        None => "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)".into(),
    }
}

/// The kernel's BTF, loaded once per process (~4 ms), for questions tracefs would answer where tracefs
/// cannot be read. None when the kernel has none.
fn vmlinux_btf() -> Option<&'static VmlinuxBtf> {
    static BTF: std::sync::OnceLock<Option<VmlinuxBtf>> = std::sync::OnceLock::new();
    BTF.get_or_init(|| {
        // SAFETY: libbpf's loader; an error comes back as a null or an encoded negative pointer.
        let btf = unsafe { libbpf_sys::btf__load_vmlinux_btf() };
        let failed = btf.is_null() || (-4096..0).contains(&(btf as isize));
        (!failed).then_some(VmlinuxBtf(btf))
    })
    .as_ref()
}

/// vmlinux BTF, kept for the process's life (never freed; read only).
struct VmlinuxBtf(*mut libbpf_sys::btf);
// SAFETY: the BTF is only read after it is loaded (libbpf's BTF queries do not mutate it).
unsafe impl Send for VmlinuxBtf {}
// SAFETY: as above.
unsafe impl Sync for VmlinuxBtf {}

impl VmlinuxBtf {
    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        let name = CString::new(name).ok()?;
        // SAFETY: a valid BTF and NUL-terminated name.
        let id = unsafe { libbpf_sys::btf__find_by_name_kind(self.0, name.as_ptr(), kind) };
        (id > 0).then_some(id as u32)
    }

    /// The member names of the struct with this id.
    fn members(&self, id: u32) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: the type pointer is valid while the BTF lives (for ever); a struct's btf_type is
        // followed by vlen btf_member records (the BTF format), and names are NUL-terminated strings
        // of the BTF.
        unsafe {
            let t = libbpf_sys::btf__type_by_id(self.0, id);
            if t.is_null() {
                return out;
            }
            let vlen = ((*t).info & 0xffff) as usize;
            let members = t.add(1).cast::<libbpf_sys::btf_member>();
            for i in 0..vlen {
                let m = members.add(i).read_unaligned();
                let name = libbpf_sys::btf__name_by_offset(self.0, m.name_off);
                if !name.is_null() {
                    out.push(
                        std::ffi::CStr::from_ptr(name)
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out
    }
}

/// Does the kernel have a tracepoint of this name (the event, without its category)? tracefs when it
/// can be read, else vmlinux BTF (every tracepoint has a `btf_trace_<name>` type there).
pub fn tracepoint_in_kernel(name: &str) -> bool {
    tracefs_has(name).unwrap_or_else(|| {
        vmlinux_btf().is_some_and(|b| {
            b.find(&format!("btf_trace_{name}"), libbpf_sys::BTF_KIND_TYPEDEF)
                .is_some()
        })
    })
}

/// Loads a two-instruction tracing program against a BTF id: the kernel's own answer to
/// "can I use tp_btf / fentry on this target".
fn probe_tracing(target: &str, attach_type: libbpf_sys::bpf_attach_type) -> Result<(), String> {
    let name = CString::new(target).map_err(|_| "bad name".to_string())?;
    // SAFETY: plain C call with a valid NUL-terminated string.
    let id = unsafe { libbpf_sys::libbpf_find_vmlinux_btf_id(name.as_ptr(), attach_type) };
    if id < 0 {
        return Err(format!("no BTF type for {target} in this kernel"));
    }
    // r0 = 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let opts = libbpf_sys::bpf_prog_load_opts {
        sz: size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: attach_type,
        attach_btf_id: id as u32,
        ..Default::default()
    };
    let mut opts = opts;
    // SAFETY: insns outlive the call; opts is a properly sized, initialised struct.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_TRACING,
            std::ptr::null(),
            license.as_ptr(),
            insns.as_ptr() as *const libbpf_sys::bpf_insn,
            2,
            &mut opts,
        )
    };
    if fd < 0 {
        return Err(format!(
            "the kernel refused the program: {}",
            std::io::Error::from_raw_os_error(-fd)
        ));
    }
    // SAFETY: fd is a file descriptor we own.
    unsafe { libc::close(fd) };
    Ok(())
}

/// /proc/kallsyms, read once per process (the kernel formats ~100,000 lines on every read: ~50 ms on
/// our 6.18 host, seconds in an emulated guest; kprobe probes ask it once per target). None when it
/// cannot be read.
pub fn kallsyms() -> Option<&'static str> {
    static TEXT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| std::fs::read_to_string("/proc/kallsyms").ok())
        .as_deref()
}

/// Is there a kernel function of this name? The kernel's own lookup (a BPF syscall program, Linux
/// 5.16+: see ksym), else a scan of /proc/kallsyms.
fn kallsyms_has(func: &str) -> bool {
    crate::ksym::kernel_has(func).unwrap_or_else(|| {
        kallsyms().is_some_and(|s| s.lines().any(|l| l.split_whitespace().nth(2) == Some(func)))
    })
}

/// Strict probing loads a test program for BTF-based kinds (costs a parse of the kernel's BTF, ~4 ms);
/// by default they are assumed to work where the kernel has BTF, and a failed load retries strictly
/// (see `cli::load_tool!`).
static STRICT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_strict(strict: bool) {
    STRICT.store(strict, std::sync::atomic::Ordering::Relaxed);
}

pub fn strict() -> bool {
    STRICT.load(std::sync::atomic::Ordering::Relaxed)
}

/// The tracefs category of the tracepoints sockray uses (a tp_btf/raw_tp section names only the event).
fn known_category(name: &str) -> Option<&'static str> {
    Some(match name {
        "inet_sock_set_state"
        | "sock_send_length"
        | "sock_recv_length"
        | "sock_exceed_buf_limit"
        | "inet_sk_error_report"
        | "sock_rcvqueue_full" => "sock",
        "kfree_skb" | "consume_skb" => "skb",
        "softirq_entry" | "softirq_exit" | "softirq_raise" => "irq",
        "net_dev_start_xmit"
        | "net_dev_xmit"
        | "netif_receive_skb"
        | "netif_rx"
        | "napi_gro_receive_entry" => "net",
        n if n.starts_with("tcp_") => "tcp",
        n if n.starts_with("sys_enter_") || n.starts_with("sys_exit_") => "syscalls",
        _ => return None,
    })
}

/// Does tracefs list a tracepoint of this name (in any category)? None when tracefs is not mounted.
/// A known name costs one stat; another one a walk over every category (~3 ms).
fn tracefs_has(name: &str) -> Option<bool> {
    let events = Path::new(tracefs_root()?).join("events");
    if let Some(cat) = known_category(name) {
        return Some(events.join(cat).join(name).is_dir());
    }
    let cats = std::fs::read_dir(events).ok()?;
    Some(cats.flatten().any(|cat| cat.path().join(name).is_dir()))
}

fn probe_uncached(kind: Kind, target: &str) -> Result<(), String> {
    let btf_kind = matches!(kind, Kind::TpBtf | Kind::Fentry | Kind::Fexit);
    if btf_kind && !strict() && forced_path().is_none() {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err("this kernel has no BTF".into());
        }
        // cheap checks only; the kernel's own verdict comes at load (then a strict retry)
        // (where tracefs cannot be read, the load decides: a BTF parse here would cost ~5 ms)
        if kind == Kind::TpBtf && tracefs_has(target) == Some(false) {
            return Err(format!("no tracepoint {target} in this kernel"));
        }
        return Ok(());
    }
    match kind {
        Kind::TpBtf => probe_tracing(target, libbpf_sys::BPF_TRACE_RAW_TP),
        Kind::Fentry => probe_tracing(target, libbpf_sys::BPF_TRACE_FENTRY),
        Kind::Fexit => probe_tracing(target, libbpf_sys::BPF_TRACE_FEXIT),
        Kind::RawTp => {
            let name = CString::new(target).map_err(|_| "bad name".to_string())?;
            // SAFETY: plain C call with a valid NUL-terminated string.
            let id = unsafe {
                libbpf_sys::libbpf_find_vmlinux_btf_id(name.as_ptr(), libbpf_sys::BPF_TRACE_RAW_TP)
            };
            let in_tracefs = tracefs_has(target).unwrap_or(false);
            if id >= 0 || in_tracefs {
                Ok(())
            } else {
                Err(format!("no tracepoint {target} in this kernel"))
            }
        }
        Kind::Tracepoint => match tracefs_root() {
            None => Err(tracefs_missing()),
            Some(root) if Path::new(root).join("events").join(target).is_dir() => Ok(()),
            Some(_) => Err(format!("no tracepoint {target} in this kernel")),
        },
        Kind::Kprobe | Kind::Kretprobe => {
            if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                Err("this kernel has no kprobes (CONFIG_KPROBES)".into())
            } else if !kallsyms_has(target) {
                Err(format!("no kernel function {target} to probe"))
            } else {
                Ok(())
            }
        }
        Kind::Iter | Kind::Other => Ok(()),
    }
}

/// Does the classic tracepoint `category/name` have a field of this name? Read from its format file in
/// tracefs (one small read, no BTF parse): how a tool learns that a tracepoint gained an argument
/// (e.g. tcp_retransmit_skb's `err`, which 6.18 has and older kernels lack). None when tracefs or the tracepoint is missing.
/// Where tracefs cannot be read (a user with CAP_BPF+CAP_PERFMON only), the kernel's BTF answers: the
/// record a tracepoint defined by its own TRACE_EVENT writes is `struct trace_event_raw_<name>`.
pub fn tracepoint_has_field(tracepoint: &str, field: &str) -> Option<bool> {
    if let Some(root) = tracefs_root() {
        let path = Path::new(root)
            .join("events")
            .join(tracepoint)
            .join("format");
        let text = std::fs::read_to_string(path).ok()?;
        return Some(format_has_field(&text, field));
    }
    let btf = vmlinux_btf()?;
    let name = tracepoint.rsplit('/').next().unwrap_or(tracepoint);
    let id = btf.find(
        &format!("trace_event_raw_{name}"),
        libbpf_sys::BTF_KIND_STRUCT,
    )?;
    let has = btf.members(id).iter().any(|m| m == field);
    crate::cli::debug(format_args!(
        "{tracepoint}: field {field} {} (from BTF: tracefs not readable)",
        if has { "present" } else { "absent" }
    ));
    Some(has)
}

/// Is `field` among the fields a tracepoint format file declares (`field:TYPE NAME;` or `NAME[N];`)?
fn format_has_field(format: &str, field: &str) -> bool {
    format.lines().any(|l| {
        let Some(decl) = l.trim().strip_prefix("field:") else {
            return false;
        };
        let decl = decl.split(';').next().unwrap_or("");
        let name = decl.rsplit([' ', '*']).next().unwrap_or("");
        name.split('[').next() == Some(field)
    })
}

type ProbeCache = HashMap<(Kind, String), Result<(), String>>;
static PROBES: Mutex<Option<ProbeCache>> = Mutex::new(None);

/// Can a program of this kind attach to target here? Cached per process.
pub fn probe(kind: Kind, target: &str) -> Result<(), String> {
    let key = (kind, format!("{}{target}", if strict() { "!" } else { "" }));
    if let Some(r) = PROBES
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return r;
    }
    let r = probe_uncached(kind, target);
    if let Ok(mut m) = PROBES.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, r.clone());
    }
    r
}

/// What was picked for one hook.
#[derive(Clone, Debug)]
pub struct Choice {
    pub group: String,
    pub prog: String,
    pub kind: Kind,
    pub target: String,
}

struct Candidate {
    prog: String,
    kind: Kind,
    target: String,
}

/// Can a classic tracepoint program call `bpf_task_pt_regs` (Linux 5.15+)? Probed by loading a tiny
/// program, once.
pub fn has_task_pt_regs() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: a libbpf probe with no options; it loads and closes a throw-away program.
        let rc = unsafe {
            libbpf_sys::libbpf_probe_bpf_helper(
                libbpf_sys::BPF_PROG_TYPE_TRACEPOINT,
                libbpf_sys::BPF_FUNC_task_pt_regs,
                std::ptr::null(),
            )
        };
        rc == 1
    })
}

/// The attach path forced with SOCKRAY_ATTACH (tests), if any.
pub fn forced_path() -> Option<String> {
    std::env::var("SOCKRAY_ATTACH")
        .ok()
        .filter(|s| !s.is_empty())
}

fn optional(group: &str) -> bool {
    group.starts_with("sockowner_") || group.starts_with("opt_")
}

/// Of a group's candidates (in order of preference), the programs of the best kind all of whose programs
/// `probe` accepts: one program per kind as a rule, but a fallback may need several hooks where the
/// preferred kind needs one. Empty when no kind is complete, with why.
fn pick_kind<'a>(
    pool: &[&'a Candidate],
    probe: impl Fn(Kind, &str) -> Result<(), String>,
) -> (Vec<&'a Candidate>, Vec<String>) {
    let mut why = Vec::new();
    let mut kinds: Vec<Kind> = pool.iter().map(|c| c.kind).collect();
    kinds.dedup();
    for kind in kinds {
        let of_kind: Vec<&Candidate> = pool.iter().copied().filter(|c| c.kind == kind).collect();
        let failed: Vec<String> = of_kind
            .iter()
            .filter_map(|c| {
                probe(c.kind, &c.target)
                    .err()
                    .map(|e| format!("{}/{}: {e}", c.kind.name(), c.target))
            })
            .collect();
        if failed.is_empty() {
            return (of_kind, why);
        }
        why.extend(failed);
    }
    (Vec::new(), why)
}

/// Picks one program per hook, switches autoload off for the rest (programs already off are left out). Returns what was chosen (iterators
/// included, with kind Iter), in program order.
pub fn choose(obj: &mut OpenObject, tool: &str, verbose: bool) -> Result<Vec<Choice>> {
    let forced = forced_path();
    if let Some(f) = &forced
        && !["tracepoint", "tp_btf", "raw_tp", "fentry", "kprobe"].contains(&f.as_str())
    {
        bail!("SOCKRAY_ATTACH={f}: expected tracepoint, tp_btf, raw_tp, fentry or kprobe");
    }

    let mut groups: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for prog in obj.progs() {
        // left out by the tool before (runtime::skip_programs): neither chosen nor probed
        if !prog.autoload() {
            continue;
        }
        let name = prog.name().to_string_lossy().into_owned();
        let (kind, target) = parse_section(&prog.section().to_string_lossy());
        let group = name
            .split_once("__")
            .map(|(g, _)| g.to_string())
            .unwrap_or_else(|| name.clone());
        if !groups.contains_key(&group) {
            order.push(group.clone());
        }
        groups.entry(group).or_default().push(Candidate {
            prog: name,
            kind,
            target,
        });
    }

    let mut enabled: HashMap<String, bool> = HashMap::new();
    let mut chosen = Vec::new();
    for group in &order {
        let cands = &mut groups.get_mut(group).expect("group");
        cands.sort_by_key(|c| c.kind.rank());
        let pool: Vec<&Candidate> = match &forced {
            Some(f) if cands.iter().any(|c| c.kind.in_path(f)) => {
                cands.iter().filter(|c| c.kind.in_path(f)).collect()
            }
            _ => cands.iter().collect(),
        };
        let (pick, why) = pick_kind(&pool, probe);
        for c in cands.iter() {
            enabled.insert(c.prog.clone(), pick.iter().any(|p| p.prog == c.prog));
        }
        if pick.is_empty() {
            if optional(group) {
                if verbose {
                    eprintln!(
                        "sockray: {tool}: {group}: not available, continuing without it ({})",
                        why.join("; ")
                    );
                }
                continue;
            }
            let target = cands.first().map(|c| c.target.as_str()).unwrap_or("");
            if tracefs_unreadable() && cands.iter().any(|c| c.kind == Kind::Tracepoint) {
                bail!(
                    "{group} needs the classic tracepoint {}, and {}{}",
                    cands
                        .iter()
                        .filter(|c| c.kind == Kind::Tracepoint)
                        .map(|c| c.target.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    tracefs_missing(),
                    if cands.iter().all(|c| c.kind == Kind::Tracepoint) {
                        String::new()
                    } else {
                        format!(" (the other hooks: {})", why.join("; "))
                    }
                );
            }
            bail!(
                "this kernel lacks the hook {group} needs ({}): {}",
                hook_hint(target),
                why.join("; ")
            );
        }
        for c in pick {
            // (a nested twin takes its primary's kind: said once, for the primary)
            if verbose && c.kind != Kind::Iter && !group.ends_with("_nested") {
                eprintln!(
                    "sockray: {tool}: {group}: using {}/{}",
                    c.kind.name(),
                    c.target
                );
            }
            chosen.push(Choice {
                group: group.clone(),
                prog: c.prog.clone(),
                kind: c.kind,
                target: c.target.clone(),
            });
        }
    }
    for mut prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        if let Some(&on) = enabled.get(&name) {
            prog.set_autoload(on);
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections() {
        assert_eq!(
            parse_section("tp_btf/inet_sock_set_state"),
            (Kind::TpBtf, "inet_sock_set_state".into())
        );
        assert_eq!(
            parse_section("raw_tp/tcp_probe"),
            (Kind::RawTp, "tcp_probe".into())
        );
        assert_eq!(
            parse_section("tracepoint/syscalls/sys_exit_accept4"),
            (Kind::Tracepoint, "syscalls/sys_exit_accept4".into())
        );
        assert_eq!(
            parse_section("kretprobe/inet_csk_accept"),
            (Kind::Kretprobe, "inet_csk_accept".into())
        );
        assert_eq!(parse_section("iter/task_file").0, Kind::Iter);
    }

    #[test]
    fn preference_and_forcing() {
        assert!(Kind::TpBtf.rank() < Kind::RawTp.rank());
        assert!(Kind::Tracepoint.rank() < Kind::Fentry.rank());
        assert!(Kind::Fexit.rank() < Kind::Kprobe.rank());
        assert!(Kind::RawTp.in_path("tracepoint"));
        assert!(!Kind::RawTp.in_path("tp_btf"));
        assert!(Kind::Kretprobe.in_path("kprobe"));
        assert!(!Kind::Kprobe.in_path("fentry"));
    }

    #[test]
    fn categories_of_known_tracepoints() {
        assert_eq!(known_category("inet_sock_set_state"), Some("sock"));
        assert_eq!(known_category("tcp_retransmit_skb"), Some("tcp"));
        assert_eq!(known_category("sys_exit_recvfrom"), Some("syscalls"));
        assert_eq!(known_category("something_else"), None);
    }

    #[test]
    fn a_group_takes_every_program_of_its_best_complete_kind() {
        let c = |prog: &str, kind, target: &str| Candidate {
            prog: prog.into(),
            kind,
            target: target.into(),
        };
        let cands = [
            c("refresh__recv", Kind::TpBtf, "sock_recv_length"),
            c(
                "refresh__accept4",
                Kind::Tracepoint,
                "syscalls/sys_exit_accept4",
            ),
            c(
                "refresh__accept",
                Kind::Tracepoint,
                "syscalls/sys_exit_accept",
            ),
        ];
        let pool: Vec<&Candidate> = cands.iter().collect();
        let names = |v: Vec<&Candidate>| v.iter().map(|c| c.prog.clone()).collect::<Vec<_>>();
        // everything there: the preferred program alone
        let (pick, _) = pick_kind(&pool, |_, _| Ok(()));
        assert_eq!(names(pick), ["refresh__recv"]);
        // no tp_btf: both tracepoints, together
        let (pick, why) = pick_kind(&pool, |k, _| {
            (k != Kind::TpBtf).then_some(()).ok_or("no".to_string())
        });
        assert_eq!(names(pick), ["refresh__accept4", "refresh__accept"]);
        assert_eq!(why, ["tp_btf/sock_recv_length: no"]);
        // one of the two missing: neither (half a fallback is not one), and why names it
        let (pick, why) = pick_kind(&pool, |k, t| {
            (k == Kind::Tracepoint && t.ends_with("accept4"))
                .then_some(())
                .ok_or("no".to_string())
        });
        assert!(pick.is_empty());
        assert_eq!(
            why,
            [
                "tp_btf/sock_recv_length: no",
                "tracepoint/syscalls/sys_exit_accept: no"
            ]
        );
    }

    #[test]
    fn tracepoint_format_fields() {
        let f = "name: tcp_retransmit_skb\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n\nprint fmt: \"err=%d\", REC->err\n";
        assert!(format_has_field(f, "err"));
        assert!(format_has_field(f, "skbaddr"));
        assert!(format_has_field(f, "saddr_v6"));
        assert!(!format_has_field(f, "saddr"));
        assert!(!format_has_field(f, "rr"));
        assert!(!format_has_field(
            &f.replace("int err;", "int state;"),
            "err"
        ));
    }

    #[test]
    fn tracefs_in_the_mount_table() {
        let t = "22 28 0:7 / /sys/kernel/debug rw,nosuid - debugfs debugfs rw\n\
                 31 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:12 - tracefs tracefs rw\n";
        assert_eq!(
            mount_of_type(t, "tracefs").as_deref(),
            Some("/sys/kernel/tracing")
        );
        assert_eq!(
            mount_of_type(t, "debugfs").as_deref(),
            Some("/sys/kernel/debug")
        );
        assert_eq!(mount_of_type(t, "bpf"), None);
    }

    #[test]
    fn hints_name_the_feature() {
        assert!(hook_hint("tcp_send_loss_probe").contains("no tracepoint"));
        assert!(hook_hint("inet_sock_set_state").contains("4.16"));
        assert!(hook_hint("syscalls/sys_exit_accept4").contains("FTRACE_SYSCALLS"));
    }
}
