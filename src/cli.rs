//! Flags every tool has, and the tool-running glue shared by all tools.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser};

/// `--json`, `--ebpf`, `--verbose`: on every tool.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    /// Print one JSON object per line (stable field names, full addresses)
    #[arg(long)]
    pub json: bool,
    /// Print the BPF C program this tool loads, and exit
    #[arg(long)]
    pub ebpf: bool,
    /// Say which kernel hooks were chosen, and libbpf's messages, on stderr
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl Common {
    /// The output form: `--json` wins, then CSV where the tool offers `-s`, else BCC's columns.
    pub fn mode(&self, csv: bool) -> crate::output::Mode {
        use crate::output::Mode;
        if self.json {
            Mode::Json
        } else if csv {
            Mode::Csv
        } else {
            Mode::Table
        }
    }
}

/// `--max-sockets`: tools that keep a record per socket (socket-owner component).
#[derive(Args, Debug, Clone, Default)]
pub struct SocketTable {
    /// room for this many sockets' records in the hash map (where the kernel cannot keep them with the
    /// socket: before Linux 6.3, or with the raw_tp path), and an event ring sized for N sockets closing
    /// at once (at most 128 MiB); default: from the TCP sockets at start
    #[arg(long = "max-sockets", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets: Option<u32>,
}

/// Which processes, by where they run: `--cgroup PATH`, and BCC's `--cgroupmap` / `--mntnsmap`.
#[derive(Args, Debug, Clone, Default)]
pub struct ScopeArgs {
    /// trace only processes in this cgroup v2 directory (e.g. /sys/fs/cgroup/system.slice/nginx.service)
    #[arg(long = "cgroup", value_name = "PATH", value_parser = crate::filter::cgroup_id,
          conflicts_with_all = ["cgroupmap", "mntnsmap"])]
    pub cgroup: Option<u64>,
    /// trace cgroups in this BPF map only (a pinned hash map whose keys are cgroup v2 ids, as BCC's)
    #[arg(long = "cgroupmap", value_name = "MAP", conflicts_with = "mntnsmap")]
    pub cgroupmap: Option<std::path::PathBuf>,
    /// trace mount namespaces in this BPF map only (a pinned hash map whose keys are mount namespace
    /// ids, as BCC's)
    #[arg(long = "mntnsmap", value_name = "MAP")]
    pub mntnsmap: Option<std::path::PathBuf>,
}

impl ScopeArgs {
    pub fn scope(&self) -> crate::filter::Scope {
        use crate::filter::Scope;
        match (&self.cgroup, &self.cgroupmap, &self.mntnsmap) {
            (Some(id), _, _) => Scope::Cgroup(*id),
            (_, Some(p), _) => Scope::CgroupSet(p.clone()),
            (_, _, Some(p)) => Scope::MntnsSet(p.clone()),
            _ => Scope::Any,
        }
    }
}

/// BCC's `-L` / `-D` port lists (tcplife, tcpstates; sockray's tcpretrans and tcpdrop; tcpcong with
/// `-R` for the remote ports, as BCC's).
#[derive(Args, Debug, Clone, Default)]
pub struct PortArgs {
    /// comma-separated list of local ports to trace (ranges too: 8000-8010)
    #[arg(short = 'L', long = "localport", value_parser = crate::filter::parse_ports)]
    pub localport: Option<crate::filter::PortList>,
    /// comma-separated list of remote ports to trace (ranges too)
    #[arg(short = 'D', long = "remoteport", value_parser = crate::filter::parse_ports)]
    pub remoteport: Option<crate::filter::PortList>,
}

/// BCC's `-4` / `-6` (one or the other).
#[derive(Args, Debug, Clone, Default)]
pub struct FamilyArgs {
    /// trace IPv4 family only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// trace IPv6 family only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

impl FamilyArgs {
    /// AF_INET, AF_INET6, or None for both.
    pub fn family(&self) -> Option<u16> {
        match (self.ipv4, self.ipv6) {
            (true, false) => Some(crate::format::AF_INET),
            (false, true) => Some(crate::format::AF_INET6),
            _ => None,
        }
    }
}

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// A --verbose diagnostic on stderr.
pub fn debug(args: std::fmt::Arguments) {
    if VERBOSE.load(Ordering::Relaxed) {
        say(format_args!("sockray: {args}"));
    }
}

/// A line on stderr that never panics (unlike `eprintln!`): after SIGHUP the terminal may be gone, and
/// what is said at exit must not turn into a panic there.
pub fn say(args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

/// Parses a tool's flags; `--help` and usage errors are printed by clap, which exits (0 or 2).
pub fn parse<T: Parser>(args: Vec<OsString>) -> T {
    T::try_parse_from(args).unwrap_or_else(|e| e.exit())
}

/// The BPF C source a tool loads (embedded at build time), for `--ebpf`.
pub fn ebpf_source(tool: &str) -> Option<&'static str> {
    crate::EBPF_SOURCES
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, s)| *s)
}

/// Prints `--ebpf` output.
pub fn print_ebpf(tool: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let src = ebpf_source(tool).ok_or_else(|| anyhow::anyhow!("no BPF program for {tool}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(src.as_bytes())?;
    // the socket-owner seeding iterator is an object of its own, loaded with the tool's
    if src.contains("---- bpf/sockowner.bpf.h ----")
        && let Some(seed) = ebpf_source("sockseed")
    {
        out.write_all(seed.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Opens a tool's skeleton, writes the filters (and any tool-specific rodata) into it, chooses hooks,
/// loads, attaches and seeds the socket-owner map. Evaluates to `(skel, links)`.
///
/// With a seventh argument, `$skip: impl Fn(&str) -> bool`, the programs it names are neither loaded
/// nor attached (e.g. hooks only an optional flag needs).
macro_rules! load_tool {
    ($builder:ty, $storage:expr, $tool:expr, $common:expr, $filters:expr, $setup:expr) => {
        $crate::cli::load_tool!($builder, $storage, $tool, $common, $filters, $setup, |_: &str| false)
    };
    ($builder:ty, $storage:expr, $tool:expr, $common:expr, $filters:expr, $setup:expr, $skip:expr) => {{
        use libbpf_rs::skel::{OpenSkel as _, Skel as _, SkelBuilder as _};
        $crate::runtime::preflight($tool)?;
        $crate::cli::set_verbose($common.verbose);
        // Hooks are chosen optimistically first (BTF-based kinds assumed to work where the kernel has
        // BTF); if the kernel then refuses the load, probe strictly and load once more.
        let (mut open, mut chosen) =
            $crate::cli::open_prepared!($builder, $storage, $tool, $common, $filters, $setup, $skip);
        // the socket-owner seeding object loads on a second thread meanwhile, sharing the owner maps
        // (the thread opens its object while the maps are created)
        let mut seeder = $crate::runtime::Seeder::spawn(open.open_object(), $filters.scope.code());
        let shared = $crate::runtime::SharedOwnerMaps::create(open.open_object_mut())?;
        if let (Some(seeder), Some(s)) = (&seeder, &shared) {
            seeder.share(s)?;
        }
        let skel = match open.load() {
            Ok(skel) => skel,
            Err(e) if !$crate::attach::strict() => {
                $crate::cli::debug(format_args!("load failed ({e}); probing hooks strictly and retrying"));
                $crate::attach::set_strict(true);
                let storage = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
                let (mut open, strict_chosen) =
                    $crate::cli::open_prepared!($builder, storage, $tool, $common, $filters, $setup, $skip);
                // the owner maps and the seeding object again, as this load sizes them (without
                // socket-local storage the hash map takes every record that finds no slot); the first
                // seeding thread ends when its Seeder is dropped
                drop(shared);
                seeder = $crate::runtime::Seeder::spawn(open.open_object(), $filters.scope.code());
                let shared = $crate::runtime::SharedOwnerMaps::create(open.open_object_mut())?;
                if let (Some(seeder), Some(s)) = (&seeder, &shared) {
                    seeder.share(s)?;
                }
                chosen = strict_chosen;
                open.load().map_err(|e| $crate::runtime::load_error(e, $tool))?
            }
            Err(e) => return Err($crate::runtime::load_error(e, $tool)),
        };
        $crate::filter::fill_scope_map(skel.object())?;
        let links = $crate::runtime::attach_all(skel.object(), &chosen)?;
        $crate::runtime::UnseenCount::start(skel.object());
        if let Some(seeder) = seeder {
            seeder.run($common.verbose);
        }
        // the nested twins of the state programs load on a thread of their own, sharing the maps
        if let Some(job) = $crate::runtime::TwinJob::take(skel.object()) {
            std::thread::spawn(move || {
                let mut storage = std::mem::MaybeUninit::uninit();
                let r = (|| -> anyhow::Result<std::convert::Infallible> {
                    let mut open = <$builder>::default().open(&mut storage)?;
                    job.prepare(open.open_object_mut())?;
                    let twins = open.load()?;
                    job.attach_and_hold(twins.object())
                })();
                let Err(e) = r;
                $crate::cli::debug(format_args!("nested twins not loaded: {e:#}"));
            });
        }
        (skel, links)
    }};
}
pub(crate) use load_tool;

/// Part of [`load_tool!`]: opens the skeleton, writes rodata, chooses hooks. Evaluates to `(open, chosen)`.
macro_rules! open_prepared {
    ($builder:ty, $storage:expr, $tool:expr, $common:expr, $filters:expr, $setup:expr, $skip:expr) => {{
        let mut open = <$builder>::default().open($storage)?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow::anyhow!("no rodata"))?;
        $crate::filter::apply_filters!(&mut *ro, $filters);
        ($setup)(ro);
        $filters.scope.prepare_scope_map(open.open_object_mut())?;
        $crate::runtime::skip_programs(open.open_object_mut(), $skip);
        let chosen = $crate::runtime::prepare(open.open_object_mut(), $tool, $common)?;
        let storage = $crate::runtime::place_sock_records(open.open_object_mut(), &chosen);
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.sock_storage_on = storage as u8;
        }
        $crate::runtime::prealloc_maps_if_needed(open.open_object_mut());
        (open, chosen)
    }};
}
pub(crate) use open_prepared;
